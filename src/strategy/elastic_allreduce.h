// ElasticAllReduce: one worker process of an elastic allreduce job
// (docs/elastic.md), started by the local launcher with --elastic.
//
// It is the Strategy the Trainer trains with (every call is forwarded to the
// AllReduceStrategy of the current group) and the trainer's
// ElasticMembership (strategy/elastic.h): on re-formation it snapshots the model and
// optimizer state, drops its strategy and communicator, joins the next
// generation at the launcher's elastic coordinator
// (comm/rendezvous/elastic_rendezvous.h), builds a new ZmqTransport, Communicator and
// AllReduceStrategy for its new rank and world size, and adopts the state of
// the new rank 0 (model, optimizer state, training position), which rank 0
// sends to every other member point to point (safetensors bytes). Between
// steps rank 0 polls the coordinator for waiting new workers and one
// one-float allreduce (max) tells every member whether to re-form.
// The generations come from the launcher's coordinator, or, with
// options.etcd, from the job's state in etcd (comm/rendezvous/etcd_rendezvous.h),
// through one interface (comm/rendezvous/elastic_group_rendezvous.h).
//
// Logs (Logger, warn level so every rank shows them): each failure noticed
// and each re-formation with the time it took.
//
// Ownership: owns the coordinator connection, the communicator and the
// strategy; the job config and the logger must outlive it.
// Thread safety: one thread (the trainer's).
// Errors: the constructor and reform() throw TimeoutError when no group
// forms within `rendezvous_timeout`, CommError when the coordinator refuses
// this worker (the job stopping), JobFinished when the job ended training
// while this worker waited to join, LeftGroup when the group went on
// without it (it was silent too long).
// Blocking: the constructor and reform() until a group has formed and
// agreed on its state; reform_due() for one tiny allreduce.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "comm/collectives/communicator.h"
#include "comm/rendezvous/elastic_rendezvous.h"
#include "comm/rendezvous/etcd_rendezvous.h"
#include "core/error.h"
#include "core/log.h"
#include "strategy/allreduce_strategy.h"
#include "strategy/elastic.h"
#include "tensor/state_dict.h"

namespace dtrain::strategy {

struct ElasticAllReduceOptions {
  std::string job_name;     // names the job on the wire
  int slot = 0;             // DTRAIN_RANK given by the launcher
  int slots = 1;            // DTRAIN_WORLD_SIZE given by the launcher
  std::string coordinator;  // DTRAIN_ELASTIC_COORDINATOR
  // Set: the generations are formed in etcd (its slot is this worker's
  // slot; `coordinator` and `slots` are unused); unset: at `coordinator`.
  std::optional<comm::EtcdRendezvousOptions> etcd;
  std::string secret;    // DTRAIN_JOB_SECRET
  bool encrypt = false;  // security.encrypt: CURVE on every link
  std::string listen_host = "127.0.0.1";
  std::string advertise_host;
  // Where each group's transport binds its ipc socket (DTRAIN_RUN_DIR: the
  // launcher's private folder of the run, removed when the run ends, so a
  // killed member leaves no socket file behind). Empty: the transport's
  // default (/tmp).
  std::string ipc_dir;
  // Bound on forming one group (joining, endpoints, state), including the
  // wait of a new worker for the running ones to reach a step boundary; and
  // on every collective of a group.
  std::chrono::milliseconds rendezvous_timeout{60000};
  // A member silent this long is dropped (the transport's heartbeat timeout).
  std::chrono::milliseconds heartbeat_timeout{5000};
  AllReduceOptions allreduce;
};

class ElasticAllReduce final : public Strategy, public ElasticMembership {
 public:
  // Joins the first generation this worker can (blocks; see the header).
  // The factories build each group's model (its weights are then replaced
  // by the group's) and optimizer.
  ElasticAllReduce(ElasticAllReduceOptions options, ModelFactory make_model,
                   OptimizerFactory make_optimizer, LossFn loss, Logger& logger);
  ~ElasticAllReduce() override;
  ElasticAllReduce(const ElasticAllReduce&) = delete;
  ElasticAllReduce& operator=(const ElasticAllReduce&) = delete;

  // Strategy, forwarded to the current group's strategy.
  std::string name() const override { return "allreduce"; }
  // (Each throws InternalError once the worker left the job and has no
  // group; the trainer never calls it then.)
  int64_t replicas() const override { return group().replicas(); }
  int64_t rank() const override { return group().rank(); }
  int64_t world_size() const override { return group().world_size(); }
  nn::Module& model() override { return group().model(); }
  void set_learning_rate(float lr) override { group().set_learning_rate(lr); }
  StateDict optimizer_state() override { return group().optimizer_state(); }
  void load_optimizer_state(const StateDict& state) override {
    group().load_optimizer_state(state);
  }
  // Remembers the rank a CommError names, reported as silent when the
  // group re-forms.
  StepStats train_step(const Tensor& inputs, std::span<const int64_t> targets) override;
  int64_t accumulation_steps() const override { return group().accumulation_steps(); }
  StepStats step_totals(const StepStats& local) const override {
    return group().step_totals(local);
  }
  void sync_replicas() override { group().sync_replicas(); }
  ElasticMembership* elastic() override { return this; }
  // Compression, as the current group's strategy has it: a re-formed group
  // starts its compressor afresh (the residuals belong to the old group),
  // at the guard's level.
  CommStats last_comm() const override { return group().last_comm(); }
  bool reduces_communication() const override { return group().reduces_communication(); }
  void set_communication_level(int level) override {
    level_ = level;
    group().set_communication_level(level);
  }
  std::string communication() const override { return group().communication(); }
  StateDict rank_state() const override { return group().rank_state(); }
  void load_rank_state(const std::optional<StateDict>& state) override {
    group().load_rank_state(state);
  }

  // ElasticMembership.
  bool joined_running_group(TrainingPosition& position) override;
  bool reform_due() override;
  void reform(TrainingPosition& position, const std::string& cause) override;

  uint32_t generation() const { return generation_; }

 private:
  // What a member carries from one group to the next.
  struct HeldState {
    StateDict model;
    StateDict optimizer;
    TrainingPosition position;
  };

  // Joins generations until one forms with its state agreed; `member_of`:
  // the generation this worker is a member of (nullopt: new).
  void form(std::optional<uint32_t> member_of);
  // Records a failure of the group: its text and the slot it names.
  void note_failure(const CommError& e);
  // The current group's strategy; InternalError when there is none.
  AllReduceStrategy& group() const;
  int level_ = 0;  // the convergence guard's, given to every new group
  void build(const comm::ElasticGeneration& membership, Deadline deadline);
  // Rank 0 sends held_ to every member; the others receive it. Then every
  // member loads it.
  void sync_state();

  ElasticAllReduceOptions options_;
  ModelFactory make_model_;
  OptimizerFactory make_optimizer_;
  LossFn loss_;
  Logger& logger_;
  comm::JobAuth auth_;
  std::unique_ptr<comm::ElasticGroupRendezvous> client_;
  std::optional<HeldState> held_;  // set while it is the group's state
  bool joined_running_ = false;    // the first group formed had trained before
  uint32_t generation_ = 0;
  std::string failure_;             // a CommError seen by reform_due() or train_step()
  std::optional<int> suspect_;      // the slot that failure named, reported on the next join
  std::vector<int> slots_by_rank_;  // of the current generation
  std::unique_ptr<comm::Communicator> comm_;
  std::unique_ptr<strategy::AllReduceStrategy> inner_;  // after comm_: destroyed first
};

}  // namespace dtrain::strategy
