// GossipStrategy: one worker of a decentralized job (docs/gossip.md). Every
// worker keeps its own model and, after each local step, averages it with a
// few neighbours of a gossip topology (strategy/gossip_topology.h) over a
// comm::PeerLink; there is no server and no global barrier.
//
// Models. `own_` is this worker's working model (with its optimizer): it
// trains and gossips. `average_` is model(): what the chief (rank 0)
// evaluates, checkpoints and writes; fetch_model() fills it with the mean of
// every reachable worker's own model. Both start from make_model() (the same
// initial weights on every worker). Checkpoints hold that average (a
// documented choice: one model per checkpoint, readable by every strategy);
// on resume sync_replicas() copies it into own_ on every worker, so all
// start again from the average.
//
// Parameters on the wire: one flat float32 vector (host byte order, the
// job's hosts share it) of own_'s parameters then its float buffers, in
// state_dict order; a payload of another size is a DataError naming the peer.
//
// Synchronous D-PSGD (mode kSync; Lian et al. 2017, adapt-then-combine), step t:
//  1. forward and backward on own_, the optimizer step (x_i <- x_i - lr g_i);
//  2. post x_i to every out-neighbour of step t on (kModelChannel, t);
//  3. receive every in-neighbour's x_j of step t (deadline: the timeout);
//  4. x_i <- W_t[i][i] x_i + sum_j W_t[i][j] x_j with the row of
//     Topology::row(i, t, mixed), `mixed` marking the neighbours whose
//     message arrived: a neighbour that died (PeerLostError) or did not
//     answer in time (TimeoutError) is dropped, its weight moves to the
//     diagonal, one line says so, and training goes on.
// A peer that comes back (a replacement: PeerEvent::kJoined), or that was
// dropped for a timeout, is pending: it gets this worker's models again, and
// each step waits for its message at most `rejoin_wait` (never the whole
// timeout); it is mixed in again from the first step at which its message of
// that step arrives. A replacement treats all its neighbours as pending at
// first. Waiting only on peers mixed in the step before, each of which posts
// before it receives, keeps the steps deadlock-free as in plain D-PSGD.
//
// Compressed synchronous gossip, CHOCO-SGD (options.compression set; Koloskova,
// Stich, Jaggi 2019, Algorithm 2). Every worker keeps a public copy x^_i of
// its model and one x^_j of each in-neighbour's, all equal at the start
// (the common initial model; sync_replicas() sets them all to the model it
// sets, which every worker shares after a resume). Step t:
//  1. the local step, as above;
//  2. q_i = Q(x_i - x^_i), each tensor through the compressor (error
//     feedback off: x^ is the memory); tensors it does not compress
//     (compresses() false) and every tensor before compression.start_step
//     go dense (exact); q_i is posted to every out-neighbour;
//  3. x^_i += q_i; x^_j += q_j for each in-neighbour whose q_j arrived
//     (sender and receivers decode the same bytes, so the copies agree);
//  4. x_i += gamma_c sum_j W_t[i][j] (x^_j - x^_i) over the row of the
//     neighbours whose q_j arrived (gamma_c: options.consensus_step; 1
//     before start_step, where this step is D-PSGD's exactly).
// A neighbour whose q_j did not arrive (dead or late) has a stale copy from
// then on: it is dropped for good (no pending state, no rejoin), and a
// replacement (options.replacement) is refused: its neighbours' copies of
// it would not match its own. Dynamic topologies (one-peer-exponential) are
// refused too: the copies need fixed neighbours.
//
// Asynchronous AD-PSGD (mode kAsync; Lian et al. 2018), step t:
//  1. under the model mutex: forward, backward and the optimizer step;
//  2. pick one partner j: uniformly among the in-neighbours of step t not
//     known dead, from a generator seeded by (seed, rank, t);
//     one-peer-exponential: out_neighbours(i, t)[0];
//  3. s = a copy of x_i; r = link.call(j, kAverage, s); j's handler, under
//     j's model mutex, sets x_j <- (x_j + s) / 2 and replies the new x_j;
//  4. under the mutex, x_i <- x_i + (r - s): if a third worker averaged with
//     x_i meanwhile, its change is kept and the sum of all models is still
//     preserved (proof at the code).
// Deadlock freedom: a handler waits only for its own worker's model mutex,
// and a worker holds that mutex only for local computation (steps 1 and 4),
// never across a network wait; a call waits only for its partner's handler.
// So every chain of waits is call -> handler -> mutex held by a local
// computation, which ends without waiting on anyone: the wait-for graph has
// no cycle, and every call finishes or hits its deadline. A dead partner is
// dropped (one line) and another is picked the next step.
//
// Handlers (services) every worker answers, set in the constructor before a
// peer can call: kAverage (above), kFetchModel (reply: the worker's step and
// own_'s parameters, read under the mutex), kDone (the chief has fetched the
// final model: finish() may leave).
//
// The chief: fetch_model() calls kFetchModel on every worker not known dead
// (sequentially, each with the timeout; in sync mode it waits, polling,
// until each has finished as many steps as the chief, so that the average is
// of one step), sets average_ to the mean of the models that answered
// (its own included) and measures the consensus distance
// mean_i |x_i - x_mean|^2 over them; it does the same every
// `consensus_every` steps (0: only when the trainer fetches) for
// report_metrics(). extra_eval_models() gives a copy of the chief's own model
// as "worker0".
//
// A replacement (options.replacement: the launcher started this process in
// place of a failed one) asks a neighbour (then any worker) for its model and
// step through kFetchModel, starts from them (its optimizer state fresh), and
// joined_at_step() tells the trainer where to continue. Workers count steps
// as the trainer does: a checkpoint's optimizer state carries the count
// (metadata "gossip.steps"), which a resume restores on every worker.
//
// finish(): a non-chief worker waits, at most the timeout, until the chief
// has called kDone (after its final fetch_model()) or left or died, still
// answering calls; then it leaves. The chief calls kDone on every worker not
// known dead, waits (at most the timeout) until they have left, then
// `exit_grace` more for their processes to end (their links linger delivering
// their last frames), and leaves last: the launcher ends the job when the
// chief's process ends and signals whoever still runs.
//
// Statistics: step_totals() is this worker's sums times the world size (no
// exchange of statistics: the loss and accuracy of this worker's rows, a
// uniform sample of the batch). last_comm() is the bytes the link sent for
// the last step's gossip; dense_bytes is what uncompressed gossip would
// have sent (the same without compression; under CHOCO the link's bytes
// with each message's payload replaced by the model's 4 bytes per float).
//
// Ownership: owns both models, the optimizer and the link; the Logger must
// outlive it. The destructor leaves the link, waits until no handler or
// listener call runs (they pass a gate shared with the link's copies of
// them, closed there: one that starts later returns at once), and destroys
// the link before the models its handler reads.
// Thread safety: one thread calls the strategy at a time (strategy.h); the
// link's handler and listener run on the link's thread, synchronised by
// the model mutex and the peers' mutex.
// Errors: UsageError for bad batches; DataError for a payload of the wrong
// size; CommError/TimeoutError only where no worker can be dropped instead
// (a replacement that finds no worker to copy). Blocking: each step waits at
// most the timeout per neighbour (sync) or per call (async).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "comm/peer/peer_link.h"
#include "compress/compressor.h"
#include "core/log.h"
#include "strategy/compression.h"
#include "strategy/gossip_topology.h"
#include "strategy/strategy.h"

namespace dtrain::strategy {

enum class GossipMode { kSync, kAsync };

// "sync" or "async"; UsageError otherwise.
GossipMode parse_gossip_mode(std::string_view name);

struct GossipOptions {
  GossipMode mode = GossipMode::kSync;
  gossip::TopologyKind topology = gossip::TopologyKind::kRing;
  // Steps between the chief's consensus measurements; 0: only at fetch_model().
  int64_t consensus_every = 100;
  // Deadline of every exchange with one peer.
  std::chrono::milliseconds timeout{60000};
  // Sync: how long a step waits for a pending peer's message (see above).
  std::chrono::milliseconds rejoin_wait{50};
  // How long the chief stays after its workers' goodbyes (finish(); tests
  // with threads as workers need none).
  std::chrono::milliseconds exit_grace{3000};
  // Seeds the choice of AD-PSGD partners.
  uint64_t seed = 1;
  // This process replaces a failed worker: copy a neighbour's model.
  bool replacement = false;
  // Set (a compressing method): CHOCO-SGD (sync mode, a fixed topology, no
  // replacement; UsageError otherwise). Its codec's error_feedback and
  // momentum are ignored (x^ is the memory).
  std::optional<CompressionSettings> compression;
  // CHOCO's consensus step gamma_c, in (0, 1].
  double consensus_step = 1.0;
};

// CHOCO's default consensus step for a codec: 1 for fp16/bf16 (nearly
// exact); min(0.5, 5 x density) for top-k and random-k (at density 0.01,
// 0.5 and 0.1 diverged on MNIST, 0.05 did not: docs/gossip.md); 0.5 for the
// others.
double default_consensus_step(const compress::Options& codec);

class GossipStrategy : public Strategy {
 public:
  // Channels and services on the link.
  static constexpr uint32_t kModelChannel = 1;
  static constexpr uint32_t kAverage = 1;
  static constexpr uint32_t kFetchModel = 2;
  static constexpr uint32_t kDone = 3;

  GossipStrategy(std::unique_ptr<comm::PeerLink> link, const ModelFactory& make_model,
                 const OptimizerFactory& make_optimizer, const GossipOptions& options, LossFn loss,
                 Logger& logger);
  GossipStrategy(const GossipStrategy&) = delete;
  GossipStrategy& operator=(const GossipStrategy&) = delete;
  ~GossipStrategy() override;

  std::string name() const override { return "gossip"; }
  int64_t replicas() const override { return world_; }
  int64_t rank() const override { return rank_; }
  int64_t world_size() const override { return world_; }
  nn::Module& model() override { return *average_; }
  void set_learning_rate(float lr) override { optimizer_->set_lr(lr); }
  StepStats train_step(const Tensor& inputs, std::span<const int64_t> targets) override;
  StepStats step_totals(const StepStats& local) const override;
  void sync_replicas() override;
  void fetch_model() override;
  // The chief's optimizer state, with this worker's step count in metadata
  // "gossip.steps" (other strategies ignore it); loading it back sets the
  // count, so that after a resume every worker counts the trainer's steps.
  StateDict optimizer_state() override;
  void load_optimizer_state(const StateDict& state) override;
  std::optional<int64_t> joined_at_step() const override { return joined_step_; }
  CommStats last_comm() const override { return last_comm_; }
  std::vector<std::pair<std::string, double>> report_metrics() override;
  std::vector<std::pair<std::string, nn::Module*>> extra_eval_models() override;
  void finish() override;

  // For tests and reports.
  const gossip::Topology& topology() const { return topology_; }
  // Steps this worker has finished (the replacement's count starts at the
  // step it joined at).
  int64_t steps() const { return steps_; }
  // A copy of own_'s flat parameters (read under the model mutex).
  std::vector<float> own_parameters() const;
  // The row the last sync step mixed with.
  const gossip::MixingRow& last_row() const { return last_row_; }
  // The last consensus distance measured, and over how many workers.
  std::optional<double> consensus_distance() const { return consensus_; }
  int consensus_workers() const { return consensus_workers_; }

 private:
  // What this worker knows of a peer (see the file comment).
  enum class PeerState { kActive, kPending, kDead };
  struct Peer {
    PeerState state = PeerState::kActive;
    uint64_t generation = 0;  // kJoined events heard
    bool mixing = true;       // in the mixing (a drop was logged otherwise)
    std::string reason;       // why it was dropped last
  };

  std::vector<std::byte> serve(int from, uint32_t service, std::span<const std::byte> request);
  void hear(int peer, comm::PeerEvent event, const std::string& reason);
  void join_running_job();

  // Local forward, backward and update; the model mutex is held except while
  // the compute timer sleeps.
  StepStats local_step(const Tensor& inputs, std::span<const int64_t> targets);
  void gossip_sync(int64_t t);
  // gossip_sync's parts: x_i <- x_i + gamma_c sum_j w_ij (x^_j - x^_i)
  // (CHOCO); x_i <- the row's weighted sum of `models` (a row naming a
  // neighbour whose model did not arrive, one-peer's skip, becomes the
  // identity row); the log lines for neighbours dropped or mixed in again.
  void mix_choco(std::vector<float>& mine, const gossip::MixingRow& row, int64_t t) const;
  void mix_models(std::vector<float>& mine, gossip::MixingRow& row,
                  const std::vector<std::pair<int, std::vector<float>>>& models, int64_t t) const;
  void report_mixing(const std::vector<int>& ins, const std::vector<bool>& mixed,
                     const gossip::MixingRow& row, int64_t t);
  // CHOCO: this step's message q_i (added to x^_i), and adding a message to
  // a copy (DataError naming `from` and `what` when malformed).
  std::vector<std::byte> choco_message(std::span<const float> mine, int64_t t);
  void choco_add(std::span<const std::byte> message, std::vector<float>& copy, int from, int64_t t,
                 const std::string& what) const;
  // The job's settings as CHOCO uses them (no error feedback, no momentum).
  CompressionSettings choco_settings() const;
  // Every public copy set to own_'s parameters (under the model mutex).
  void reset_public_copies();
  void gossip_async(int64_t t);
  // Gathers every reachable worker's model into average_ and measures the
  // consensus distance; `wait_for_step`: sync mode's wait (see above).
  void gather(bool wait_for_step);

  // The flat vector under the model mutex, and writing one back.
  std::vector<float> pack_own() const;
  void unpack_own(std::span<const float> flat);
  std::vector<float> to_floats(const std::vector<std::byte>& bytes, int peer,
                               const std::string& what) const;

  Peer peer(int p) const;
  // Every worker not known dead (this one included).
  std::vector<bool> known_alive() const;
  void set_state(int p, PeerState state, uint64_t generation);
  void drop(int p, const std::string& reason, uint64_t generation, bool lost);
  std::string drop_reason(int p) const;
  std::string describe_row(const gossip::MixingRow& row) const;

  GossipOptions options_;
  Logger& logger_;
  int rank_ = 0;
  int world_ = 1;
  gossip::Topology topology_;
  LossFn loss_;
  ModelFactory make_model_;

  // own_ and its flat tensors (parameters, then buffers) are guarded by
  // model_mutex_ against the handler.
  mutable std::mutex model_mutex_;
  std::unique_ptr<nn::Module> own_;
  std::unique_ptr<nn::Optimizer> optimizer_;
  std::vector<Tensor> own_tensors_;
  size_t flat_size_ = 0;
  std::unique_ptr<nn::Module> average_;
  std::unique_ptr<nn::Module> own_copy_;  // extra_eval_models()'s snapshot

  int64_t steps_ = 0;  // read by the handler: guarded by model_mutex_
  std::optional<int64_t> joined_step_;
  CommStats last_comm_;
  // CHOCO (empty without): the compressor over own_'s tensors, their
  // layouts, x^_i, and x^_j of every in-neighbour j (indexed by rank; empty
  // for the others); the last step's payload bytes posted and their dense
  // equivalent.
  std::unique_ptr<compress::Compressor> compressor_;
  std::vector<compress::TensorLayout> layouts_;
  std::vector<float> public_self_;
  std::vector<std::vector<float>> public_copies_;
  uint64_t payload_sent_ = 0;
  uint64_t payload_dense_ = 0;
  gossip::MixingRow last_row_;
  std::optional<double> consensus_;
  int consensus_workers_ = 0;
  bool consensus_reported_ = true;

  mutable std::mutex peers_mutex_;
  std::condition_variable done_cv_;
  std::condition_variable left_cv_;  // a worker left or was lost (the chief's finish())
  std::vector<Peer> peers_;
  bool done_ = false;  // the chief said kDone, left or died
  // What the handler and listener pass through: they hold it by shared_ptr
  // (the link may keep a copy of them, and run one, after this strategy is
  // gone), and the destructor closes it and waits until none runs.
  struct Gate {
    std::mutex mutex;
    std::condition_variable idle;
    int running = 0;
    bool closed = false;
    // Enters unless closed; then exit() must follow.
    bool enter();
    void exit();
    void close();
  };
  std::shared_ptr<Gate> gate_ = std::make_shared<Gate>();

  // Declared last: destroyed first, while the models its handler reads live.
  std::unique_ptr<comm::PeerLink> link_;
};

}  // namespace dtrain::strategy
