// The launcher side of elastic mode (docs/elastic.md): runs an allreduce job
// of N workers under the local Launcher in elastic mode and hosts the
// elastic coordinator (comm/rendezvous/elastic_rendezvous.h) in this process, so that
// it outlives any worker. The launcher's view of its workers (started,
// ended, stopping) is passed on to the coordinator; each worker gets
// DTRAIN_ELASTIC_COORDINATOR and joins through it.
//
// Blocking: for the job's lifetime, bounded by `deadline`. Errors: what
// Launcher::run throws; UsageError for min_workers outside 1..N or negative
// max_restarts. `out`, `err` and `logger` as for Launcher.
#pragma once

#include <ostream>

#include "cli/launcher.h"
#include "core/deadline.h"
#include "core/log.h"

namespace dtrain::cli {

// `options` as for Launcher (workers = N slots); `job_name` names the job on
// the wire (its id and, with DTRAIN_JOB_SECRET, the key).
LaunchResult run_elastic_job(LaunchOptions options, const std::string& job_name, int min_workers,
                             int max_restarts, std::ostream& out, std::ostream& err, Logger& logger,
                             Deadline deadline);

}  // namespace dtrain::cli
