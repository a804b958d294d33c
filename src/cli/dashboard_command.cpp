#include "cli/dashboard_command.h"

#include <fmt/format.h>
#include <fmt/ostream.h>
#include <signal.h>

#include <cerrno>
#include <filesystem>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/file_system.h"

namespace dtrain::cli {

namespace {

void print_url(const obs::DashboardServer& server, const std::string& run_dir, std::ostream& out) {
  fmt::print(out, "dashboard: {} (run folder {})\n", server.url(), run_dir);
  out << std::flush;
}

}  // namespace

std::unique_ptr<obs::DashboardServer> start_dashboard(const std::string& output,
                                                      const std::string& job_file, int port,
                                                      const std::string& host, std::ostream& out) {
  io::FileSystem& fs = io::default_file_system();
  fs.create_directories(output);
  io::write_file_atomic(fs, output + "/job.toml",
                        io::read_regular_file(job_file, 1 << 20, "the job file"));
  obs::DashboardOptions o;
  o.run_dir = output;
  o.host = host;
  o.port = port;
  auto server = std::make_unique<obs::DashboardServer>(o);
  print_url(*server, output, out);
  return server;
}

int run_serve(const ServeOptions& options, std::ostream& out) {
  std::error_code ec;
  if (!std::filesystem::is_directory(options.run_dir, ec)) {
    throw UsageError(
        fmt::format("dtrain serve: {} is not a folder (give a run's output folder, "
                    "the job's output or --output)",
                    options.run_dir));
  }
  // Blocked before the server's threads start, so that they inherit the
  // mask and the signal reaches sigwait below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigset_t previous;
  pthread_sigmask(SIG_BLOCK, &stop_signals, &previous);
  int received = 0;
  {
    obs::DashboardOptions o;
    o.run_dir = options.run_dir;
    o.host = options.host;
    o.port = options.port;
    o.job_file = options.job_file;
    obs::DashboardServer server(o);
    print_url(server, options.run_dir, out);
    // Waiting for the user's Ctrl-C is the command's purpose: no deadline.
    while (sigwait(&stop_signals, &received) != 0) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  fmt::print(out, "dashboard: stopped ({})\n", received == SIGINT ? "SIGINT" : "SIGTERM");
  return 0;
}

}  // namespace dtrain::cli
