// ProcessLog: the launcher's record of a run's processes for the live
// dashboard (src/obs/dashboard_server.h), appended to <output>/processes.jsonl,
// one JSON object per event, each with "time" (unix seconds):
//   {"event":"start"|"restart","slot","pid","role":"worker"|"server"}
//     (restart: a later process for a slot that ran before, in elastic
//     mode or after a restart of the whole job)
//   {"event":"exit","slot","pid","role","status"}  (a normal exit), or with
//     "signal" instead of "status" (killed)
//   {"event":"reform","generation","members":[slots by rank]}  (elastic mode:
//     every generation the coordinator forms, the first one included)
//   {"event":"job_end","status"}  (the launcher's exit code)
// Written lines are flushed at once, so a reader sees each whole event.
//
// Thread safety: every method may be called from any thread (the elastic
// coordinator reports generations from its own). Errors: the constructor
// throws dtrain::Error naming the file when it cannot open it; a later
// write failure is logged once on `logger` and the events are dropped (the
// job goes on: this file is for people, not for the job). `logger` is the
// caller's and outlives the log. Blocking: one small write per event.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <fstream>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <set>
#include <string>
#include <vector>

#include "cli/launcher.h"
#include "core/log.h"

namespace dtrain::cli {

class ProcessLog {
 public:
  // Slots [0, servers) are servers (a ps job), the others workers.
  ProcessLog(std::string path, int servers, Logger& logger);
  ProcessLog(const ProcessLog&) = delete;
  ProcessLog& operator=(const ProcessLog&) = delete;

  void started(int slot, pid_t pid);
  void ended(const WorkerExit& exit);
  void reformed(uint32_t generation, const std::vector<int>& members);
  void job_end(int status);

  // Wires started/ended/reformed into `options`, keeping callbacks already
  // there. The log must outlive the launch.
  void attach(LaunchOptions& options);

 private:
  void write(nlohmann::json event);
  std::string role(int slot) const { return slot < servers_ ? "server" : "worker"; }

  std::string path_;
  int servers_;
  Logger& logger_;
  std::mutex mutex_;
  std::ofstream out_;
  std::set<int> seen_;
  bool failed_ = false;
};

}  // namespace dtrain::cli
