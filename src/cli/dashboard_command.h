// The live dashboard from the command line (src/obs/dashboard_server.h):
// `dtrain train JOB --dashboard PORT` runs it in the process that runs or
// launches the job, for the job's lifetime; `dtrain serve RUN_DIR` runs it
// over a finished or running run's folder until SIGINT or SIGTERM.
// Both print one line with the URL to open (the token in it) on `out`.
//
// Errors: UsageError for a RUN_DIR that is not a folder; what
// obs::DashboardServer throws (CommError for a busy port). Blocking:
// run_serve() until a signal; start_dashboard() binds and returns.
// Thread safety: one call at a time per process (run_serve() blocks
// SIGINT and SIGTERM in the calling thread and its server's threads).
#pragma once

#include <memory>
#include <optional>
#include <ostream>
#include <string>

#include "obs/dashboard_server.h"

namespace dtrain::cli {

struct ServeOptions {
  std::string run_dir;
  int port = 0;  // 0: a free one
  std::string host = "127.0.0.1";
  std::string job_file;  // empty: <run_dir>/job.toml
};

// The dashboard for a job about to run in `output`: copies `job_file` to
// <output>/job.toml (so that `dtrain serve` shows it later), starts the
// server and prints its URL on `out`.
std::unique_ptr<obs::DashboardServer> start_dashboard(const std::string& output,
                                                      const std::string& job_file, int port,
                                                      const std::string& host, std::ostream& out);

// `dtrain serve`: returns 0 after SIGINT or SIGTERM.
int run_serve(const ServeOptions& options, std::ostream& out);

}  // namespace dtrain::cli
