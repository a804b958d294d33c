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
// /tmp), passed as DTRAIN_RUN_DIR and removed after the run: the processes'
// ipc sockets live there (a ps job's servers listen on server-s), so a
// killed process leaves nothing in /tmp. Every process gets DTRAIN_LAUNCH_ID
// (random, one per launch).
//
// Blocking: for the job's lifetime. Errors: what Launcher::run throws;
// std::system_error when the private folder cannot be made.
// Thread safety: one call at a time per process (the Launcher's signals).
#pragma once

#include <ostream>

#include "cli/launcher.h"
#include "core/log.h"
#include "train/job_config.h"
#include "train/run_job.h"

namespace dtrain::cli {

// `base` holds the command line and the environment; the plan and the job
// set the rest. Returns the job's exit code.
int launch_job(const train::JobConfig& job, const train::LaunchPlan& plan, LaunchOptions base,
               std::ostream& out, std::ostream& err, Logger& logger);

}  // namespace dtrain::cli
