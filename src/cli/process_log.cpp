#include "cli/process_log.h"

#include <fmt/format.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/error.h"

namespace dtrain::cli {

ProcessLog::ProcessLog(std::string path, int servers, Logger& logger)
    : path_(std::move(path)), servers_(servers), logger_(logger), out_(path_, std::ios::app) {
  if (!out_) throw Error(fmt::format("cannot open the process log {} for appending", path_));
}

void ProcessLog::write(nlohmann::json event) {
  event["time"] =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::lock_guard lock(mutex_);
  if (failed_) return;
  out_ << event.dump() << '\n';
  out_.flush();
  if (!out_) {
    failed_ = true;
    logger_.warn("cannot write the process log {}; the dashboard's worker states stop here", path_);
  }
}

void ProcessLog::started(int slot, pid_t pid) {
  bool again = false;
  {
    std::lock_guard lock(mutex_);
    again = !seen_.insert(slot).second;
  }
  write(nlohmann::json{
      {"event", again ? "restart" : "start"}, {"slot", slot}, {"pid", pid}, {"role", role(slot)}});
}

void ProcessLog::ended(const WorkerExit& exit) {
  nlohmann::json event{
      {"event", "exit"}, {"slot", exit.rank}, {"pid", exit.pid}, {"role", role(exit.rank)}};
  if (exit.exited) {
    event["status"] = exit.code;
  } else {
    event["signal"] = exit.signal;
  }
  write(std::move(event));
}

void ProcessLog::reformed(uint32_t generation, const std::vector<int>& members) {
  write(nlohmann::json{{"event", "reform"}, {"generation", generation}, {"members", members}});
}

void ProcessLog::job_end(int status) {
  write(nlohmann::json{{"event", "job_end"}, {"status", status}});
}

void ProcessLog::attach(LaunchOptions& options) {
  options.on_process_started = [this, before = std::move(options.on_process_started)](int slot,
                                                                                      pid_t pid) {
    started(slot, pid);
    if (before) before(slot, pid);
  };
  options.on_process_exited =
      [this, before = std::move(options.on_process_exited)](const WorkerExit& exit) {
        ended(exit);
        if (before) before(exit);
      };
  options.on_generation = [this, before = std::move(options.on_generation)](
                              uint32_t generation, const std::vector<int>& slots) {
    reformed(generation, slots);
    if (before) before(generation, slots);
  };
}

}  // namespace dtrain::cli
