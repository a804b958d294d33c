#include "cli/launcher.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <climits>
#include <filesystem>
#include <system_error>
#include <utility>

#include "cli/supervisor.h"
#include "cli/worker_process.h"
#include "comm/wire/key_file.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "io/file_system.h"

extern char** environ;

namespace dtrain::cli {

namespace {

std::string failure_report_path(const std::string& status_dir, int slot) {
  return fmt::format("{}/failure-{}", status_dir, slot);
}

using process::above_stdio;
using process::ExecImage;
using process::Fd;
using process::signal_name;
using process::SignalForwarding;
using process::spawn_worker;
using process::throw_errno;
using process::Worker;
using process::WorkerSet;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

}  // namespace

// Nothing listened on the port, so it is immediately bindable again (no TIME_WAIT).
int pick_free_port(const std::string& host) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  if (inet_pton(AF_INET, host.c_str(), &address.sin_addr) != 1) {
    throw UsageError(fmt::format(
        "launcher: coordinator host '{}' is not an IPv4 address (e.g. 127.0.0.1)", host));
  }
  Fd socket_fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!socket_fd.is_open()) throw_errno("socket");
  if (bind(socket_fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    throw_errno(fmt::format("bind {}:0 (looking for a free coordinator port)", host));
  }
  socklen_t length = sizeof address;
  if (getsockname(socket_fd.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    throw_errno("getsockname");
  }
  return ntohs(address.sin_port);
}

std::string WorkerExit::describe() const {
  if (exited) return fmt::format("exited with code {}", code);
  return fmt::format("was killed by signal {} ({})", signal, signal_name(signal));
}

Launcher::Launcher(LaunchOptions options, std::ostream& out, std::ostream& err, Logger& logger)
    : options_(std::move(options)), out_(out), err_(err), logger_(logger) {
  if (options_.argv.empty() || options_.argv[0].empty()) {
    throw UsageError("launcher: the worker command line is empty (argv[0] must be a path)");
  }
  if (options_.workers < 1) {
    throw UsageError(
        fmt::format("launcher: workers is {}; it must be at least 1", options_.workers));
  }
  if (options_.stop_grace.count() < 0 || options_.output_drain_timeout.count() < 0) {
    throw UsageError(fmt::format(
        "launcher: stop_grace ({} ms) and output_drain_timeout ({} ms) must not be negative",
        options_.stop_grace.count(), options_.output_drain_timeout.count()));
  }
  if (options_.elastic &&
      (options_.elastic->essential_slots < 0 ||
       options_.elastic->essential_slots > options_.workers ||
       options_.elastic->first_worker_slot < 0 ||
       options_.elastic->first_worker_slot > options_.elastic->essential_slots ||
       options_.elastic->min_workers < 1 ||
       options_.elastic->min_workers > options_.workers - options_.elastic->first_worker_slot ||
       options_.elastic->max_restarts < 0)) {
    throw UsageError(fmt::format(
        "launcher: elastic essential_slots {} must be in 0..{}, first_worker_slot {} in 0..{}, "
        "min_workers {} in 1..{} (the workers) and max_restarts {} must not be negative",
        options_.elastic->essential_slots, options_.workers, options_.elastic->first_worker_slot,
        options_.elastic->essential_slots, options_.elastic->min_workers,
        options_.workers - options_.elastic->first_worker_slot, options_.elastic->max_restarts));
  }
  const bool placed = options_.first_rank != 0 || options_.world_size != 0;
  if (placed && (options_.first_rank < 0 || options_.elastic ||
                 options_.first_rank + options_.workers > options_.world_size)) {
    throw UsageError(fmt::format(
        "launcher: ranks {}..{} must fit a world of {} workers, without elastic mode",
        options_.first_rank, options_.first_rank + options_.workers - 1, options_.world_size));
  }
  if (options_.coordinator_port < 0 || options_.coordinator_port > 65535) {
    throw UsageError(fmt::format("launcher: coordinator port {} is outside 0..65535",
                                 options_.coordinator_port));
  }
}

LaunchResult Launcher::run(Deadline deadline) {
  const auto started = Clock::now();
  LaunchResult result;
  std::map<std::string, std::string> environment = options_.environment;
  environment["DTRAIN_WORLD_SIZE"] =
      std::to_string(options_.world_size != 0 ? options_.world_size : options_.workers);
  if (options_.coordinator) {
    const int port = options_.coordinator_port != 0 ? options_.coordinator_port
                                                    : pick_free_port(options_.coordinator_host);
    result.coordinator = fmt::format("{}:{}", options_.coordinator_host, port);
    environment["DTRAIN_COORDINATOR"] = result.coordinator;
  } else {
    environment.erase("DTRAIN_COORDINATOR");
  }
  provide_job_secret(environment);
  std::vector<int> started_per_slot(static_cast<size_t>(options_.workers), 0);
  // Reports of an earlier attempt (run_with_restarts) must not blame anyone now.
  for (int slot = 0; slot < options_.workers && !options_.status_dir.empty(); ++slot) {
    std::error_code ignored;
    std::filesystem::remove(failure_report_path(options_.status_dir, slot), ignored);
  }

  const Fd devnull = above_stdio(open("/dev/null", O_RDONLY | O_CLOEXEC));
  SignalForwarding signals;  // before the first fork: a signal can only arrive once it is caught
  WorkerSet workers;         // declared after `signals`: reaped before the handlers go
  auto start = [&](int rank) {
    environment["DTRAIN_RANK"] = std::to_string(options_.first_rank + rank);
    environment["DTRAIN_LOCAL_RANK"] = std::to_string(rank);
    if (options_.elastic) {
      int& started = started_per_slot[static_cast<size_t>(rank)];
      environment["DTRAIN_RESTART_COUNT"] = std::to_string(started++);
      if (options_.elastic->on_worker_starting) options_.elastic->on_worker_starting(rank);
    }
    spawn_worker(workers, rank, ExecImage(options_.argv, environment), devnull.get());
    if (options_.on_process_started) options_.on_process_started(rank, workers.all().back().pid);
  };
  for (int rank = 0; rank < options_.workers; ++rank) start(rank);
  std::vector<const Worker*> started_workers;
  for (const Worker& w : workers.all()) started_workers.push_back(&w);
  logger_.info("started {} worker(s), {}: rank {}", options_.workers,
               options_.coordinator ? "coordinator " + result.coordinator : "no coordinator",
               list_ranks(started_workers));
  if (options_.on_started) options_.on_started(result.coordinator);

  Supervisor supervisor(workers, signals, options_, out_, err_, logger_);
  if (options_.elastic) {
    supervisor.set_respawn([&](int slot, double since_failure_s) {
      start(slot);
      const Worker& w = workers.all().back();
      if (options_.elastic->slot_name) {
        logger_.info("started {} again (pid {}) {:.3f} s after its failure was noticed",
                     options_.elastic->slot_name(slot), w.pid, since_failure_s);
      } else {
        logger_.info(
            "started a new worker for slot {} (pid {}); it joins the group at the next "
            "step boundary",
            slot, w.pid);
      }
    });
  }
  supervisor.run(deadline);

  for (const Worker& w : workers.all()) result.workers.push_back(w.status);
  result.first_failed_rank = supervisor.first_failed_rank();
  result.failure = supervisor.failure();
  result.failed_at = supervisor.failed_at();
  result.interrupted_by = supervisor.interrupted_by();
  if (supervisor.timed_out()) {
    throw TimeoutError(-1, "launcher",
                       std::chrono::duration_cast<milliseconds>(Clock::now() - started),
                       fmt::format("{} worker(s) to exit", options_.workers));
  }
  if (supervisor.first_failure()) {
    const WorkerExit& failed = *supervisor.first_failure();
    result.exit_code = failed.exited ? failed.code : 1;
  } else if (result.interrupted_by != 0) {
    result.exit_code = 128 + result.interrupted_by;
  }
  return result;
}

LaunchResult run_with_restarts(const LaunchOptions& options, int max_restarts, std::ostream& out,
                               std::ostream& err, Logger& logger, Deadline deadline) {
  if (max_restarts < 0) {
    throw UsageError(
        fmt::format("launcher: max_restarts is {}; it must be at least 0", max_restarts));
  }
  LaunchResult result = Launcher(options, out, err, logger).run(deadline);
  for (int restart = 1; restart <= max_restarts; ++restart) {
    if (!result.first_failed_rank || result.interrupted_by != 0) break;
    const WorkerExit failed = result.workers[static_cast<size_t>(*result.first_failed_rank)];
    logger.warn("{}; restarting the job from its last checkpoint (restart {} of {})",
                result.failure.empty() ? fmt::format("worker rank {} (pid {}) {}", failed.rank,
                                                     failed.pid, failed.describe())
                                       : result.failure,
                restart, max_restarts);
    const Clock::time_point failed_at = result.failed_at.value_or(Clock::now());
    LaunchOptions again = options;
    again.on_started = [&](const std::string& coordinator) {
      logger.info(
          "restart {} of {}: the workers were started {:.3f} s after worker rank {} failed "
          "(recovery until their start; training resumes from the checkpoint next)",
          restart, max_restarts, std::chrono::duration<double>(Clock::now() - failed_at).count(),
          failed.rank);
      if (options.on_started) options.on_started(coordinator);
    };
    result = Launcher(std::move(again), out, err, logger).run(deadline);
  }
  return result;
}

std::string random_job_secret() { return comm::wire::new_job_secret(); }

void provide_job_secret(std::map<std::string, std::string>& env, const std::string& key_file) {
  if (!key_file.empty()) env["DTRAIN_KEY_FILE"] = key_file;
  const auto named = env.find("DTRAIN_KEY_FILE");
  if (named != env.end() && !named->second.empty()) {
    env.erase("DTRAIN_JOB_SECRET");
  } else if (env["DTRAIN_JOB_SECRET"].empty()) {
    env["DTRAIN_JOB_SECRET"] = random_job_secret();
  }
}

void write_failure_report(const std::string& status_dir, int slot,
                          const FailureReport& report) noexcept {
  try {
    std::string message = report.message;
    std::replace(message.begin(), message.end(), '\n', ' ');
    io::write_file_atomic(io::default_file_system(), failure_report_path(status_dir, slot),
                          fmt::format("{}\n{}\n", report.culprit, message));
  } catch (...) {
    // Lost: the launcher then blames the worker that exited (see the header).
  }
}

std::optional<FailureReport> read_failure_report(const std::string& status_dir, int slot) {
  const std::string path = failure_report_path(status_dir, slot);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  const std::string text = io::read_regular_file(path, 64 * 1024, "a worker's failure report");
  const size_t eol = text.find('\n');
  if (eol == std::string::npos) return std::nullopt;
  FailureReport report;
  const std::string culprit = text.substr(0, eol);
  const auto [end, ec2] =
      std::from_chars(culprit.data(), culprit.data() + culprit.size(), report.culprit);
  if (ec2 != std::errc() || end != culprit.data() + culprit.size()) return std::nullopt;
  report.message = text.substr(eol + 1);
  while (!report.message.empty() && report.message.back() == '\n') report.message.pop_back();
  return report;
}

std::map<std::string, std::string> current_environment() {
  std::map<std::string, std::string> env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string_view text(*entry);
    const size_t equals = text.find('=');
    if (equals == std::string_view::npos) continue;
    env.emplace(std::string(text.substr(0, equals)), std::string(text.substr(equals + 1)));
  }
  return env;
}

std::string self_executable() {
  std::array<char, PATH_MAX> path{};
  const ssize_t n = readlink("/proc/self/exe", path.data(), path.size() - 1);
  if (n <= 0) throw_errno("readlink /proc/self/exe");
  return std::string(path.data(), static_cast<size_t>(n));
}

}  // namespace dtrain::cli
