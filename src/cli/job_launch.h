// Launching a job of several processes on this machine (`dtrain train
// --workers N` for a strategy whose plan has several processes,
// train::LaunchPlan), and supervising it the way the job asks:
//  - elastic mode (train.elastic): the survivors of a failure re-form, a
//    replacement joins (cli/elastic_launch.h);
//  - a plan that replaces failed processes in place (a ps job): the
//    servers and the chief are essential, other workers may be lost while
//    train.min_workers run;
//  - otherwise restart mode: a failure stops the job, which starts again
//    from its last checkpoint while train.max_restarts remain.
// Every run gets a private folder (mkdtemp, mode 0700, under TMPDIR or
// /tmp; cli/private_dir.h), passed as DTRAIN_RUN_DIR and DTRAIN_SOCKET_DIR
// and removed after the run: the processes'
// ipc sockets live there (a ps job's servers listen on server-s), so a
// killed process leaves nothing in /tmp. Every process gets DTRAIN_LAUNCH_ID
// (random, one per launch).
//
// Blocking: for the job's lifetime. Errors: what Launcher::run throws;
// std::system_error when the private folder cannot be made.
// Thread safety: one call at a time per process (the Launcher's signals).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "cli/launcher.h"
#include "core/log.h"
#include "train/job_config.h"
#include "train/run_job.h"

namespace dtrain::cli {

// The most processes a job may start on this machine unless the user raises
// the cap (--max-local-workers): 8 per online CPU core (at least 64), and no
// more than the open-file limit allows (each process holds about 16
// descriptors of the launcher and of its peers). Forking beyond what the
// machine can run only ends in an out-of-memory kill or "too many open files".
struct ProcessCap {
  int64_t limit = 0;
  std::string why;  // "8 per CPU core on 2 cores", ...
};
ProcessCap local_process_cap();

// UsageError (exit 2) when `plan` starts more processes than `cap`, naming
// the flag that raises it.
void check_process_cap(const train::LaunchPlan& plan, int64_t workers, const ProcessCap& cap);

// `base` holds the command line and the environment; the plan and the job
// set the rest. Returns the job's exit code.
int launch_job(const train::JobConfig& job, const train::LaunchPlan& plan, LaunchOptions base,
               std::ostream& out, std::ostream& err, Logger& logger);

}  // namespace dtrain::cli
