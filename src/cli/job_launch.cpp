#include "cli/job_launch.h"

#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <string>
#include <utility>

#include "cli/elastic_launch.h"
#include "cli/private_dir.h"
#include "core/error.h"

namespace dtrain::cli {

namespace {

int clamp_int(int64_t value) { return static_cast<int>(std::min<int64_t>(value, INT_MAX)); }

}  // namespace

ProcessCap local_process_cap() {
  const long cores = std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
  ProcessCap cap{std::max<int64_t>(64, 8 * static_cast<int64_t>(cores)),
                 fmt::format("8 per CPU core on {} core(s), at least 64", cores)};
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY) {
    const auto by_files = static_cast<int64_t>(files.rlim_cur / 16);
    if (by_files < cap.limit) {
      cap = {std::max<int64_t>(1, by_files),
             fmt::format("the open-file limit of {} (ulimit -n) at 16 per process",
                         static_cast<uint64_t>(files.rlim_cur))};
    }
  }
  return cap;
}

void check_process_cap(const train::LaunchPlan& plan, int64_t workers, const ProcessCap& cap) {
  if (plan.processes <= cap.limit) return;
  throw UsageError(fmt::format(
      "--workers {} would start {} processes on this machine, more than it can run: the cap is "
      "{} ({}); pass --max-local-workers N to raise it, or run the job on several machines "
      "(mpirun, srun)",
      workers, plan.processes, cap.limit, cap.why));
}

int launch_job(const train::JobConfig& job, const train::LaunchPlan& plan, LaunchOptions base,
               std::ostream& out, std::ostream& err, Logger& logger) {
  const auto tmpdir = base.environment.find("TMPDIR");
  const PrivateDir run_dir(tmpdir == base.environment.end() ? "" : tmpdir->second, "dtrain-run",
                           "the run's socket folder");
  base.workers = plan.processes;
  base.environment["DTRAIN_RUN_DIR"] = run_dir.path();
  base.environment["DTRAIN_SOCKET_DIR"] = run_dir.path();
  base.status_dir = run_dir.path();
  base.environment["DTRAIN_LAUNCH_ID"] = random_job_secret().substr(0, 16);
  const int max_restarts = clamp_int(job.train.max_restarts);
  if (job.train.elastic) {
    return run_elastic_job(std::move(base), job.name, plan.min_workers, max_restarts, out, err,
                           logger, Deadline::never())
        .exit_code;
  }
  if (plan.replace_failed) {
    LaunchOptions::Elastic e;
    e.essential_slots = plan.essential_slots;
    e.first_worker_slot = plan.servers;
    e.min_workers = plan.min_workers;
    e.max_restarts = max_restarts;
    e.slot_name = plan.slot_name;
    e.takeover_replicas = plan.takeover_replicas;
    base.elastic = std::move(e);
    logger.info(
        "{} job: {} process(es), {} of them servers, at least {} worker(s) running, up "
        "to {} restart(s) of failed processes{}; run folder {}",
        job.name, plan.processes, plan.servers, plan.min_workers, max_restarts,
        plan.takeover_replicas > 0
            ? fmt::format(", a dead server's range taken over by one of its {} backup(s)",
                          plan.takeover_replicas)
            : "",
        run_dir.path());
    return Launcher(std::move(base), out, err, logger).run(Deadline::never()).exit_code;
  }
  return run_with_restarts(base, max_restarts, out, err, logger, Deadline::never()).exit_code;
}

}  // namespace dtrain::cli
