// The launcher side of a parameter-server job (`dtrain train --strategy ps
// --servers S --workers N`): S + N processes of the same command line under
// the local Launcher (global rank g < S is server g, S + w is worker w),
// supervised so that the job survives the failures the ps design absorbs
// (docs/parameter-server.md "Failure semantics"):
//  - The servers' endpoints are fixed before the start: "ipc://DIR/server-s"
//    in a private folder (mode 0700, under the TMPDIR of options.environment,
//    else /tmp) made for the run and removed after it,
//    passed as DTRAIN_PS_ENDPOINTS (cli/ps_job.h). There is no rendezvous,
//    and a process started again for server s binds the same address, where
//    the workers' connections find it by themselves.
//  - A server, or worker 0 (the chief: it writes the checkpoints, the metrics
//    and the final model), that fails is started again while restarts remain
//    (`max_restarts` over the whole job); a replacement server restores its
//    shard from the run's newest checkpoint, a restarted worker continues at
//    the job's current step. With no restart left the job stops, naming it.
//  - Another worker that fails is started again while restarts remain;
//    otherwise the job continues without it (the servers declare it dead
//    after distributed.heartbeat_timeout_ms) as long as at least
//    `min_workers` workers (all of them counted) run.
// Every process gets DTRAIN_LAUNCH_ID (random, one per run): the workers
// record it in their checkpoints so that a replacement server restores only
// this run's (or, when the job resumes, any of the folder's).
//
// Blocking: for the job's lifetime, bounded by `deadline`. Errors: what
// Launcher::run throws; UsageError for servers outside 1..slots-1,
// min_workers outside 1..N or negative max_restarts; std::system_error when
// the private folder cannot be made. `out`, `err` and `logger` as for
// Launcher.
#pragma once

#include <ostream>

#include "cli/launcher.h"
#include "core/deadline.h"
#include "core/log.h"

namespace dtrain::cli {

// `options` as for Launcher with workers = S + N slots (options.elastic is
// set here).
LaunchResult run_ps_job(LaunchOptions options, int servers, int min_workers, int max_restarts,
                        std::ostream& out, std::ostream& err, Logger& logger, Deadline deadline);

}  // namespace dtrain::cli
