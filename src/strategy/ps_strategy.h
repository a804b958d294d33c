// PsStrategy: one worker of a parameter-server job (ps-lite's worker loop,
// over ps::Client). The servers hold the authoritative parameters and the
// optimizer state; this worker holds a replica of the model that it refreshes
// from them after every step.
//
// Roles: S server processes run ps::Server; N worker processes each run one
// PsStrategy. rank() and world_size() are this worker's index w and N (not
// the job's global rank S + w): the trainer slices every global batch by
// them, and only worker 0 reports and writes files.
//
// Construction: every worker calls Client::init() with the model's dense
// parameters and the specs of its embedding tables; the first init a server
// receives sets the initial values (every worker builds the model from the
// job's seed, so they agree), later ones only check the specs. Then every
// worker pulls, so all replicas start from the servers' values.
//
// A step (train_step):
//  1. forward on this worker's n_i rows; an nn::Embedding's lookup hook pulls
//     the batch's unique rows of its table from the servers first;
//  2. backward of the MEAN loss over the n_i rows;
//  3. push the embedding rows' gradients (only the rows the batch touched):
//     the worker's mean gradient, at the version this worker last pulled. In
//     `sync` the servers hold them and apply them when that version closes,
//     with the dense update: per row sum_i n_i g_i / sum_i n_i over the
//     workers of the version (the global batch's mean gradient, so one
//     process and N workers take the same step); in `async`/`ssp` they are
//     applied at once;
//  4. push the dense gradients with n_i (a worker without rows pushes zeros
//     with n_i = 0; a parameter without a gradient pushes zeros) at the
//     version this worker last pulled, with the learning rate the trainer
//     set for this step (set_learning_rate, from the schedule) and this worker's loss
//     sum and correct count. In `sync` the servers form
//     g = sum_i n_i g_i / sum_i n_i (summed in worker-index order, so runs
//     are bit-reproducible) and apply one update per version; in
//     `async`/`ssp` each push is applied at once. A model without dense
//     parameters still pushes (an empty gradient) in `sync`: it closes the
//     version;
//  5. pull the dense parameters into the model: in `sync` the next version
//     (waits for every worker's push), in `async` the current one, in `ssp`
//     whatever the staleness bound allows (the servers park the pull).
//     Steps 3, 4 and 5 are one request and one reply per server
//     (ps::Client::push_step: the rows, the dense push and the pull in one
//     message, taken in that order); with compression the rows go first
//     and steps 4 and 5 are one round trip (push_and_pull). With
//     PsOptions::overlap each server's request (the same one) leaves during
//     step 2, as soon as its range of the gradient is final
//     (strategy/ps_overlap.h), and train_step() returns once server 0's
//     reply (the first layers and the step's totals) is in: the other
//     servers' replies are copied in by the next forward, before the first
//     layer that needs them (a Sequential model's forward pre-hook; another
//     model waits for all before forward). Every public call that reads
//     the parameters, the servers or the version (model(), version(),
//     client(), the state and checkpoint calls, finish()) first takes the
//     replies still in flight (sync_params()).
// The version advances by one per step in `sync`.
//
// Statistics (step_totals): in `sync` the pull of step 5 brings server 0's
// sums over the workers of the version just closed (loss sum, correct,
// samples), so step_totals() is the job's exact figure for the step on every
// worker (with backup workers: over the workers whose pushes the version
// took). In `async`/`ssp` there is no per-step job total: step_totals()
// returns THIS worker's sums multiplied by N, the loss and accuracy of this
// worker's rows (a uniform sample of the global batch), the sample count
// exact when the global batch divides evenly by N.
//
// Dynamic batch sizing (options.dynamic_batch, `sync` only): each worker
// times its forward and backward (slowdown included) and pushes the seconds
// with its gradient; the servers keep every worker's samples and seconds of
// the version and server 0 returns all N pairs with the pull that waits for
// the next version (StepTotals::workers). Every worker therefore feeds the
// same observations, once per version, to its own BatchBalancer
// (strategy/batch_balancer.h) and computes the same split; batch_split()
// answers from it and the trainer slices the next global batch with it. The
// update stays the global batch's: the servers weight each gradient by its
// samples. Shares are runtime state: they start equal at construction and
// after sync_replicas() (a resumed run). Needs every worker in every
// version: with backup workers a worker whose push came late would skip an
// observation and split differently (the CLI refuses the combination).
//
// The compute time of a step is accounted through the Strategy's
// ComputeTimer (strategy/compute_timer.h): a slowdown or a modelled time for
// tests and benchmarks, in any consistency.
//
// Row-sparse parameters: every nn::Embedding in the model is a sparse table
// on the servers, keyed by row index; its rows start as N(0, init_std^2)
// drawn by the servers (PsOptions::embedding_init_std), not from the
// worker's table. The local table is a cache of the rows the last batch
// touched; fetch_model() pulls every row (rank 0, before evaluation and
// saving). In eval mode the lookup hook does nothing.
//
// Compression (options.compression, strategy/compression.h,
// docs/parameter-server.md "Compressed pushes" and "Local SGD"): the first
// `start_step` updates push dense gradients; from then on every push is
// compressed by the client's compressor (ps/compressed_push.h), its step
// counting the updates since start_step. With local SGD (local_steps H > 1,
// `sync` only, no embedding tables, no dynamic batch sizing) each worker,
// after start_step, takes H plain-SGD steps (p -= lr * g, the lr of each
// step) on its own copy without talking to the servers, then pushes
// (anchor - p) / lr, anchor being the parameters of its last pull, with the
// samples (and loss and correct counts) of those H steps, and pulls. With a
// plain-SGD server optimizer (no momentum, no weight decay; the job refuses
// anything else) the servers then move by the sample-weighted mean of the
// workers' movements: model averaging (Lin et al. 2020). A round whose last
// lr is 0 pushes zeros. During local SGD step_totals() is this worker's sums
// times N, as in async (the versions only close once per round).
//
// Checkpoints: optimizer_state() assembles the servers' whole state
// (Client::pull_state): the dense optimizer buffers in Optimizer::state_dict
// layout (so, for a model without embeddings, a ps checkpoint resumes under
// allreduce and the reverse), the sparse rows and their buffers under
// "ps.sparse.", the servers' version in metadata "ps.version". On resume the
// trainer loads model() and calls load_optimizer_state() on every worker,
// then sync_replicas(): worker 0 replaces the servers' state with the
// checkpoint's (Client::load_state), every other worker waits until the
// servers reach the checkpoint's version and pulls. With compression active
// the state also carries metadata "compress/method", "compress/workers" (N)
// and "compress/step" (updates taken), from which every worker continues
// counting. Each worker's compressor arrays (its residuals) are its
// rank_state(), which every worker writes beside the checkpoint
// (train/trainer.h) and gets back on resume; one written for another N is
// dropped (fresh residuals, one warning line).
//
// Errors: UsageError for batches whose rows and targets differ, an embedding
// weight with a dense gradient, gradient accumulation, dynamic batch sizing
// outside `sync`; TimeoutError naming the
// server and the operation when a server does not answer within the
// client's timeout; CommError with the server's reason for a refused request.
// After a CommError the step is lost: the owner stops the worker (ft restarts
// it; a restarted worker rejoins through init()). A worker the servers had
// declared dead (stopped past the heartbeat timeout, then resumed) gets
// LeftGroup (strategy/elastic.h): the job went on without it.
// Ownership: owns the model and the ps::Client; the optimizer lives with the
// servers. The Logger must outlive it.
// Thread safety: one thread calls the strategy at a time.
// Blocking: construction, train_step(), fetch_model(), optimizer_state() and
// sync_replicas() block on the servers, each call bounded by the client's
// timeout.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "comm/wire/auth.h"
#include "core/log.h"
#include "nn/embedding.h"
#include "ps/client.h"
#include "ps/server.h"
#include "strategy/batch_balancer.h"
#include "strategy/compression.h"
#include "strategy/ps_overlap.h"
#include "strategy/ps_row_prefetch.h"
#include "strategy/row_index.h"
#include "strategy/strategy.h"

namespace dtrain::strategy {

struct PsOptions {
  // Must match the servers' (ServerOptions::consistency).
  ps::Consistency consistency = ps::Consistency::kSync;
  // Standard deviation of a new embedding row (drawn by the servers);
  // nn::Embedding's own initialisation is N(0, 1).
  float embedding_init_std = 1.0f;
  // fetch_model() pulls an embedding table in requests of at most this many
  // rows.
  int64_t fetch_rows_per_request = 65536;
  // Dynamic batch sizing (needs consistency kSync); off by default.
  BatchBalancerOptions dynamic_batch;
  // The learning rate until the first set_learning_rate().
  float learning_rate = 0.01f;
  // Names this launch of the job (DTRAIN_LAUNCH_ID); optimizer_state()
  // records it (ps::kCheckpointLaunchKey) so that a replacement server takes
  // only this run's checkpoints. Empty: not recorded.
  std::string launch_id;
  // Sync without dynamic batch sizing: a worker whose push the last closed
  // version did not count (declared dead) gets no rows; the live workers
  // split the global batch equally among themselves in index order, so the
  // job keeps training on every sample (logged when the set changes). A
  // restarted worker counts itself in at once; the others count it from the
  // first version that took its push, so for that one version their rows
  // overlap. Turn off with backup workers, whose late pushes are dropped on
  // purpose.
  bool reshard_lost_workers = true;
  // Compressed pushes and local SGD (inactive by default). ConfigError
  // naming compression.local_steps for local SGD outside sync, with
  // embedding tables or with dynamic batch sizing.
  CompressionSettings compression;
  // Timeline (core/trace.h): forward, backward (per autograd node), push
  // and pull. Null: off. Must outlive the strategy.
  TraceSink* trace = nullptr;
  // Pushes overlapped with backward (strategy/ps_overlap.h,
  // docs/parameter-server.md "Pushes overlapped with backward"): each
  // server's request of step 3-5 leaves as soon as its range of the
  // gradient is final, during backward; the servers get the same requests,
  // so the result is bit-identical. Used in `sync` for models without
  // embedding tables and without compression (or local SGD) or dynamic
  // batch sizing; elsewhere the option is ignored (logged once). The
  // overlapped pushes carry compute_s 0 (not measured).
  bool overlap = false;
  // The next step's embedding rows ride with this step's pull
  // (strategy/ps_row_prefetch.h) when the trainer hands over the next
  // inputs (Strategy::prefetch): no round trip of their own before the
  // next forward. Bit-identical in `sync`. Not with compressed pushes (or
  // local SGD), whose pulls are separate calls.
  bool prefetch_rows = true;
};

class PsStrategy : public Strategy {
 public:
  // Connects a ps::Client with `client_options` (worker index, N, the
  // servers' endpoints, timeout) and initialises the servers as described
  // above; blocks until every server answered. Throws UsageError for a null
  // model or bad options, TimeoutError/CommError from the servers.
  PsStrategy(std::unique_ptr<nn::Module> model, ps::ClientOptions client_options,
             const comm::JobAuth& auth, Logger& logger, PsOptions options = {},
             LossFn loss = cross_entropy_loss());
  // Removes the lookup hooks. Without finish() the servers take the worker
  // for crashed once its heartbeats stop.
  ~PsStrategy() override;
  PsStrategy(const PsStrategy&) = delete;
  PsStrategy& operator=(const PsStrategy&) = delete;

  std::string name() const override { return "ps"; }
  int64_t replicas() const override { return num_workers_; }
  int64_t rank() const override { return worker_; }
  int64_t world_size() const override { return num_workers_; }
  // The replies still in flight are taken first (sync_params()).
  nn::Module& model() override {
    sync_params();
    return *model_;
  }
  // Pushes carry it to the servers, whose optimizers apply it.
  void set_learning_rate(float lr) override;
  float learning_rate() const { return lr_; }

  // `inputs` [n_i, ...] and n_i targets (n_i may be 0; `inputs` may then be
  // undefined). In `sync` every worker calls it once per step.
  StepStats train_step(const Tensor& inputs, std::span<const int64_t> targets) override;
  StepStats step_totals(const StepStats& local) const override;
  // The balancer's split (the static one unless dynamic batch sizing is on
  // and shares changed).
  // Workers lost in sync (PsOptions::reshard_lost_workers) get 0 rows.
  std::vector<int64_t> batch_split(int64_t batch_rows) const override;
  const BatchBalancer& batch_balancer() const { return balancer_; }
  // For tests: set_shares() with the same weights on every worker.
  BatchBalancer& batch_balancer() { return balancer_; }

  // PsOptions::prefetch_rows: the model has embedding tables and pushes
  // are not compressed.
  bool wants_next_inputs() const override;
  void prefetch(const Tensor& next_inputs) override { row_prefetch_.set_next_inputs(next_inputs); }
  // The look-ahead's counts (hits, misses).
  const PsRowPrefetch& row_prefetch() const { return row_prefetch_; }

  void fetch_model() override;
  StateDict optimizer_state() override;
  // Keeps `state` for sync_replicas(); checks its metadata.
  void load_optimizer_state(const StateDict& state) override;
  void sync_replicas() override;

  // Tells the servers this worker is done (a server stops once every worker
  // is done or dead). Afterwards only destruction is allowed.
  void finish() override;

  // The servers' version this worker last pulled (the replies still in
  // flight taken first).
  uint64_t version() {
    sync_params();
    return version_;
  }
  // Updates this worker has taken (pushes, and local SGD steps): the next
  // update's index, which decides dense warm-up, compression and rounds.
  int64_t updates() const { return updates_; }
  // Bytes of the frames this worker's client sent to the servers
  // (ps::Client::bytes_sent()).
  uint64_t bytes_sent() const { return client_->bytes_sent(); }
  // The last update's push and pull requests (0 for a local SGD step that
  // sent nothing), against the gradient floats a dense push carries.
  CommStats last_comm() const override { return last_comm_; }
  // This worker's compressor state (each worker's residuals are its own).
  StateDict rank_state() const override;
  void load_rank_state(const std::optional<StateDict>& state) override;
  bool reduces_communication() const override { return options_.compression.active(); }
  std::string communication() const override { return options_.compression.describe(); }
  // A restarted worker: the step its servers say the job (sync) or this
  // worker index (async/ssp) is at; nullopt in a new job.
  std::optional<int64_t> joined_at_step() const override;
  const PsOptions& options() const { return options_; }
  ps::Client& client() {
    sync_params();
    return *client_;
  }
  // Whether pushes overlap backward (PsOptions::overlap, where it applies),
  // and the overlap's counts (null when they do not).
  const PsOverlap* overlap() const { return overlap_.get(); }

 protected:
  // The barrier before anything reads the parameters outside forward: takes
  // the overlapped step's replies still in flight (a no-op without one).
  // Virtual so that a strategy holding a server (ColocatedPsStrategy) can
  // report that server's own failure when a reply it owed never comes.
  virtual void sync_params();

 private:
  struct Table {
    nn::Embedding* module = nullptr;  // owned by model_
    size_t param = 0;                 // index into params_
  };
  // One table's gradient rows of a step: the rows the batch touched,
  // coalesced, and their keys.
  struct RowGrads {
    size_t table = 0;
    std::vector<uint64_t> keys;
    Tensor values;
  };

  // train_step() without translating a left-out worker's error.
  StepStats step(const Tensor& inputs, std::span<const int64_t> targets);
  void pull_dense(uint64_t min_version);
  // PsOptions::overlap: whether it applies (logged when asked for and not).
  bool overlap_applies() const;
  // Builds overlap_ and, for a Sequential model, its forward pre-hook.
  void start_overlap();
  // An overlapped step's end: the replies and the pulled parameters, as
  // push_dense_and_pull() ends (`bytes_before`: the client's count before
  // the step).
  void finish_overlapped(uint64_t bytes_before);
  // What every pull is followed by: the job's totals of the step, the live
  // workers, local SGD's anchor.
  void after_pull();
  // Aligns this worker's timeline to server 0's clock (ps workers share no
  // communicator, so server 0 is the reference every worker can reach).
  void align_trace_clock();
  // Pushes `grads` from mine.samples samples (with mine's loss and correct
  // counts and `compute_s`) at version_, then pulls (sync: the next version)
  // and, with dynamic batch sizing, feeds the version's per-worker steps to
  // the balancer.
  // `rows` go with the push (ps::Client::push_step: one request per server)
  // and are taken before the dense gradient.
  void push_dense_and_pull(const std::vector<Tensor>& grads, const StepStats& mine,
                           double compute_s, ps::PushCompression compression = {},
                           std::span<const RowGrads> rows = {});
  // Local SGD: one plain-SGD step of this worker's copy with `grads`; at the
  // round's end, pushes the round's movement divided by lr and pulls.
  void local_sgd_step(const std::vector<Tensor>& grads, const StepStats& mine, double compute_s,
                      bool round_ends);
  // The updates taken once the servers are at sync version `version`.
  int64_t updates_at_version(uint64_t version) const;
  // optimizer_state()'s "compress/" metadata, and its loading.
  void save_compression(StateDict& out) const;
  void load_compression(const StateDict& state);
  // Sync: the live workers from the last pull's totals (reshard_lost_workers).
  void track_live_workers();
  void pull_rows(size_t table, std::span<const int64_t> indices);
  // The tables' row gradients of this step (none without samples);
  // UsageError for a table with a dense gradient.
  std::vector<RowGrads> row_grads(int64_t samples);
  StateDict dense_state() const;

  std::unique_ptr<nn::Module> model_;
  std::vector<Variable> params_;
  float lr_;  // of the next pushes
  PsOptions options_;
  LossFn loss_;
  std::unique_ptr<ps::Client> client_;
  int64_t worker_ = 0;
  int64_t num_workers_ = 1;

  std::vector<Table> tables_;
  // By table: the last training lookup's indices, pulled as their unique
  // rows; the backward's gradient rows are summed through it.
  std::vector<RowIndex> lookups_;
  PsRowPrefetch row_prefetch_{{}};  // the next step's rows (PsOptions::prefetch_rows)
  std::vector<size_t> dense_;       // indices into params_ of the dense parameters
  std::vector<Tensor> dense_data_;  // their tensors (aliases), in init order
  std::vector<Tensor> zero_grads_;  // zeros of each dense shape, pushed when there is no gradient
  uint64_t version_ = 0;
  uint64_t joined_step_ = 0;  // Client::joined_step() after init
  // Sync: the job-wide totals that came with the last pull (server 0's sums
  // of the version that pull waited for).
  ps::StepTotals job_totals_;
  // The checkpoint's optimizer state between load_optimizer_state() and
  // sync_replicas().
  std::unique_ptr<StateDict> pending_state_;
  BatchBalancer balancer_;
  // By worker index, whether it gets rows; empty while every worker does.
  std::vector<bool> live_;
  int64_t updates_ = 0;  // updates() above
  // Local SGD: the dense parameters of the last pull, and the open round's
  // sums (samples, loss, correct, compute seconds).
  std::vector<Tensor> anchor_;
  StepStats round_;
  double round_compute_s_ = 0.0;
  bool last_step_local_ = false;  // step_totals(): the last step did not close a version
  // The checkpoint's update count between load_optimizer_state() and
  // sync_replicas().
  std::optional<int64_t> pending_updates_;
  Logger* logger_ = nullptr;  // outlives this strategy (constructor contract)
  CommStats last_comm_;
  // The overlap's replies are taken by the model's forward pre-hook (a
  // Sequential model).
  bool layer_waits_ = false;
  // options_.overlap where it applies (null otherwise); last member: its
  // hooks are removed before the model and the client go.
  std::unique_ptr<PsOverlap> overlap_;
};

}  // namespace dtrain::strategy
