// The deployed federated job (`dtrain fl-server JOB`, `dtrain fl-client JOB
// --client-id k`): the job's data, model and split (train/fl_job.h), then
// an fl::FlServer or an fl::FlClient on them.
//
// The server records its run exactly as the simulation does
// (train/run_fl.h's FlRunRecorder, mode "server"): metrics.jsonl, progress
// lines, a checkpoint after every fl.checkpoint_every rounds, the final
// model. Unless job.resume is false it resumes from the newest valid
// checkpoint in the output folder, so a killed and restarted server goes on
// after its last checkpointed round (the clients re-join it by themselves).
// With DP-FedAvg the server reports epsilon per round, checkpoints its
// accountant (a restarted server continues it) and stops before a round
// that would exceed fl.dp_target_epsilon as the simulation does: the
// message as a progress line and a "privacy_stop" event, the last round
// checkpointed, the model saved, the clients told kDone, exit 0.
// A client loads the same job (same seed: the same split and initial model)
// and trains on its part, parts[client].
//
// Ownership: values; `out` and the loggers are the caller's. Thread safety:
// one call per thread. Errors: ConfigError for a bad [fl] table or a client
// id outside [0, fl.clients); what the server and the client throw
// (fl/fl_server.h, fl/fl_client.h). Blocking: the whole job.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>

#include "comm/wire/auth.h"
#include "core/log.h"
#include "train/job_config.h"

namespace dtrain::train {

struct FlServerRunOptions {
  std::string server;           // bind address; empty: job.fl.server
  std::ostream* out = nullptr;  // progress lines
  Logger* logger = nullptr;     // nullptr: Logger::stderr_logger()
  // Called after each round was recorded and checkpointed (test hooks).
  std::function<void(int64_t round)> after_round;
  // Called once the server listens, with its address (real port).
  std::function<void(const std::string& endpoint)> on_listening;
};

// Returns 0 when every round ran.
int run_fl_server(const JobConfig& job, const comm::JobAuth& auth,
                  const FlServerRunOptions& options);

struct FlClientRunOptions {
  int64_t client = 0;
  std::string server;  // "tcp://HOST:PORT"; empty: job.fl.server
  Logger* logger = nullptr;
  std::chrono::milliseconds heartbeat_interval{1000};
  // Silence from the server after which the client gives up (default: a
  // restarted server has time to come back).
  std::chrono::milliseconds server_timeout{60000};
  // Called with the round of each task before training (test hooks).
  std::function<void(int64_t round)> on_task;
};

// Returns 0 when the server said the job is done.
int run_fl_client(const JobConfig& job, const comm::JobAuth& auth,
                  const FlClientRunOptions& options);

}  // namespace dtrain::train
