// ElasticWorker: one worker process of an elastic allreduce job
// (docs/elastic.md), started by the local launcher with --elastic.
//
// It is the Strategy the Trainer trains with (every call is forwarded to the
// AllReduceStrategy of the current group) and the trainer's
// train::ElasticMembership: on re-formation it snapshots the model and
// optimizer state, drops its strategy and communicator, joins the next
// generation at the launcher's elastic coordinator
// (comm/rendezvous/elastic_rendezvous.h), builds a new ZmqTransport, Communicator and
// AllReduceStrategy for its new rank and world size, and adopts the state of
// the new rank 0 (model, optimizer state, training position), which rank 0
// sends to every other member point to point (safetensors bytes). Between
// steps rank 0 polls the coordinator for waiting new workers and one
// one-float allreduce (max) tells every member whether to re-form.
//
// Logs (Logger, warn level so every rank shows them): each failure noticed
// and each re-formation with the time it took.
//
// Ownership: owns the coordinator connection, the communicator and the
// strategy; the job config and the logger must outlive it.
// Thread safety: one thread (the trainer's).
// Errors: the constructor and reform() throw TimeoutError when no group
// forms within `rendezvous_timeout`, CommError when the coordinator refuses
// this worker (left out, the job stopping), JobFinished when the job ended
// training while this worker waited to join.
// Blocking: the constructor and reform() until a group has formed and
// agreed on its state; reform_due() for one tiny allreduce.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "comm/collectives/communicator.h"
#include "comm/rendezvous/elastic_rendezvous.h"
#include "comm/rendezvous/launch_env.h"
#include "core/error.h"
#include "core/log.h"
#include "strategy/allreduce_strategy.h"
#include "tensor/state_dict.h"
#include "train/callbacks.h"
#include "train/elastic.h"
#include "train/job_config.h"

namespace dtrain::cli {

// The job finished training while this worker waited to join: nothing to do.
class JobFinished : public Error {
 public:
  using Error::Error;
};

struct ElasticWorkerOptions {
  int slot = 0;             // DTRAIN_RANK given by the launcher
  int slots = 1;            // DTRAIN_WORLD_SIZE given by the launcher
  std::string coordinator;  // DTRAIN_ELASTIC_COORDINATOR
  std::string secret;       // DTRAIN_JOB_SECRET
  std::string listen_host = "127.0.0.1";
  std::string advertise_host;
  // Bound on forming one group (joining, endpoints, state), including the
  // wait of a new worker for the running ones to reach a step boundary.
  std::chrono::milliseconds rendezvous_timeout{60000};
};

class ElasticWorker final : public strategy::Strategy, public train::ElasticMembership {
 public:
  // Joins the first generation this worker can (blocks; see the header).
  ElasticWorker(const train::JobConfig& job, ElasticWorkerOptions options, Logger& logger);
  ~ElasticWorker() override;
  ElasticWorker(const ElasticWorker&) = delete;
  ElasticWorker& operator=(const ElasticWorker&) = delete;

  // strategy::Strategy, forwarded to the current group's strategy.
  std::string name() const override { return "allreduce"; }
  int64_t replicas() const override { return inner_->replicas(); }
  int64_t rank() const override { return inner_->rank(); }
  int64_t world_size() const override { return inner_->world_size(); }
  nn::Module& model() override { return inner_->model(); }
  optim::Optimizer& optimizer() override { return inner_->optimizer(); }
  strategy::StepStats train_step(const Tensor& inputs, std::span<const int64_t> targets) override {
    return inner_->train_step(inputs, targets);
  }
  int64_t accumulation_steps() const override { return inner_->accumulation_steps(); }
  strategy::StepStats step_totals(const strategy::StepStats& local) const override {
    return inner_->step_totals(local);
  }
  void sync_replicas() override { inner_->sync_replicas(); }

  // train::ElasticMembership.
  bool joined_running_group(train::TrainingPosition& position) override;
  bool reform_due() override;
  void reform(train::TrainingPosition& position, const std::string& cause) override;

  uint32_t generation() const { return generation_; }

 private:
  // What a member carries from one group to the next.
  struct HeldState {
    StateDict model;
    StateDict optimizer;
    train::TrainingPosition position;
  };

  // Joins generations until one forms with its state agreed; `member_of`:
  // the generation this worker is a member of (nullopt: new).
  void form(std::optional<uint32_t> member_of);
  void build(const comm::ElasticGeneration& membership, Deadline deadline);
  // Rank 0 sends held_ to every member; the others receive it. Then every
  // member loads it.
  void sync_state();

  const train::JobConfig& job_;
  ElasticWorkerOptions options_;
  Logger& logger_;
  comm::JobAuth auth_;
  comm::ElasticRendezvousClient client_;
  std::optional<HeldState> held_;  // set while it is the group's state
  bool joined_running_ = false;    // the first group formed had trained before
  uint32_t generation_ = 0;
  std::string failure_;  // a CommError seen by reform_due()
  std::unique_ptr<comm::Communicator> comm_;
  std::unique_ptr<strategy::AllReduceStrategy> inner_;  // after comm_: destroyed first
};

// A worker process of an elastic job (DTRAIN_ELASTIC_COORDINATOR set by the
// launcher): its ElasticWorker, once it has joined a group; nullptr when the
// job finished training while it waited to join (logged). `launch` gives the
// slot (rank) and slots (world size); `env` the coordinator, the job secret
// (DTRAIN_JOB_SECRET) and DTRAIN_LISTEN_HOST / DTRAIN_ADVERTISE_HOST.
// Throws what the ElasticWorker constructor throws.
std::unique_ptr<ElasticWorker> join_elastic_job(const train::JobConfig& job,
                                                const comm::LaunchInfo& launch,
                                                const std::map<std::string, std::string>& env,
                                                Logger& logger);

// Test hook of the elastic tests (cli/test_hooks.h has the kill switch):
// DTRAIN_TEST_JOIN_GATE=FIFO in `env` makes a replacement worker
// (DTRAIN_RESTART_COUNT > 0) read one line from that FIFO before it joins,
// so that a test chooses when it joins (the test's own deadline bounds that
// wait); join_elastic_job honours it.

}  // namespace dtrain::cli
