// Strategy: how one training step turns a batch into a parameter update.
// The trainer calls the same interface whatever the distribution: `local`
// (one model), `mirrored` (replicas on threads in one process), and, across
// processes, `allreduce`, `ps`, `gossip` and `federated`.
//
// A step: the strategy receives this process's share of the global batch,
// runs forward and backward, aggregates gradients with the sample-weighted
// mean  g = sum_i n_i g_i / sum_i n_i  (which equals one worker training on
// the union of the batches), and applies one optimizer update.
//
// Ownership: a strategy owns its model replicas and its optimizer (or knows
// where it lives: ps servers); model() returns a reference valid for the
// strategy's lifetime.
// Thread safety: one thread calls a strategy at a time.
// Errors: UsageError for bad batches (shapes, empty); dtrain::Error kinds
// from the layers; strategies across processes add CommError/TimeoutError.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "autograd/variable.h"
#include "nn/module.h"
#include "nn/optimizer.h"
#include "strategy/compute_timer.h"
#include "strategy/elastic.h"
#include "tensor/state_dict.h"
#include "tensor/tensor.h"

namespace dtrain::strategy {

// What a step saw: sums, so that windows and workers add up exactly.
struct StepStats {
  double loss_sum = 0.0;  // sum over samples of the per-sample loss
  int64_t correct = 0;    // samples whose arg-max prediction equals the target
  int64_t samples = 0;

  StepStats& operator+=(const StepStats& o) {
    loss_sum += o.loss_sum;
    correct += o.correct;
    samples += o.samples;
    return *this;
  }
};

// What a process sent for its last update, for the progress line and the
// metrics: the bytes it handed to the network (headers included; 0 when the
// update sent nothing or the strategy does not count), and what the same
// update would have sent uncompressed (0: unknown), so that
// dense_bytes / bytes_sent is the compression ratio.
struct CommStats {
  uint64_t bytes_sent = 0;
  uint64_t dense_bytes = 0;
};

// The mean loss of a batch: model output [N, C] and N targets -> scalar.
using LossFn = std::function<Variable(const Variable& output, std::span<const int64_t> targets)>;
// Builds one more replica of the model (same architecture; its weights are
// overwritten from the primary's).
using ModelFactory = std::function<std::unique_ptr<nn::Module>()>;
// Builds the optimizer over a model's parameters.
using OptimizerFactory =
    std::function<std::unique_ptr<nn::Optimizer>(std::vector<Variable> parameters)>;

// Counts the samples whose arg-max over the last dimension equals the target.
int64_t count_correct(const Tensor& output, std::span<const int64_t> targets);

// Throws NumericError naming the first parameter of `model` (its dotted
// name) whose gradient, dense or row-sparse, holds a NaN or an infinity:
// an update from it would make the weights non-finite. One pass over the
// gradients; strategies call it before their optimizer step.
void check_finite_gradients(const nn::Module& model);

// Multiplies every parameter's gradient of `model` by `scale`, giving a
// dense zero gradient to a parameter that has none and folding row-sparse
// ones (step_on_gradients()' step 3 on one process).
void scale_gradients(nn::Module& model, float scale);

// Throws UsageError unless `inputs` has one row per target. With
// `allow_empty` a share of 0 rows is valid (inputs then may be undefined):
// a worker of a distributed step that got no rows still joins it.
void check_batch(const Tensor& inputs, std::span<const int64_t> targets, bool allow_empty);

class Strategy {
 public:
  virtual ~Strategy() = default;

  virtual std::string name() const = 0;
  // Model replicas taking part in a step, over all processes.
  virtual int64_t replicas() const = 0;
  // This process's rank among the processes of the job, and their number.
  // The trainer gives rank r of W the rows [B r / W, B (r + 1) / W) of each
  // global batch of B rows; only rank 0 reports and writes files.
  virtual int64_t rank() const { return 0; }
  virtual int64_t world_size() const { return 1; }
  // The rows of every process in a global batch of `batch_rows`, summing to
  // it. Default: the static split above; a strategy with dynamic batch
  // sizing (docs/allreduce-strategy.md) answers with its current shares,
  // the same on every process.
  virtual std::vector<int64_t> batch_split(int64_t batch_rows) const;
  // This process's rows [first, second) of a global batch: its place in
  // batch_split(), so the processes' ranges tile the batch.
  std::pair<int64_t, int64_t> row_range(int64_t batch_rows) const;
  // The authoritative model: evaluate and save this one.
  virtual nn::Module& model() = 0;
  // The learning rate of the next updates (the trainer sets it before each
  // step, following the job's schedule).
  virtual void set_learning_rate(float lr) = 0;

  // One synchronous step on `inputs` [N, ...] and N targets: forward,
  // backward, aggregation, one update. Returns the step's statistics.
  virtual StepStats train_step(const Tensor& inputs, std::span<const int64_t> targets) = 0;

  // Stepping on gradients the caller computes (DP-SGD, train/dp_sgd.h:
  // clipped per-sample sums plus noise) instead of the strategy's forward
  // and backward. sums_gradients() says whether step_on_gradients() is
  // available (local and allreduce; not ps, gossip or mirrored, whose
  // updates are not one sum over the workers' gradients).
  //
  // step_on_gradients(local_gradients, scale), collective over the job's
  // processes (each calls it once per update):
  //  1. zeroes every parameter's gradient;
  //  2. calls local_gradients(), which leaves in model()'s parameter
  //     gradients this process's contribution (a SUM, not a mean) and
  //     returns this process's StepStats (samples may be 0);
  //  3. sums every parameter's gradient over all processes, plainly: no
  //     weighting by samples; a parameter without a gradient (dense or
  //     row-sparse) counts as zeros, and every parameter gets one;
  //  4. multiplies the sum by `scale`, checks that it is finite
  //     (NumericError, alike on every process) and applies one optimizer
  //     update, even when no process had samples.
  // Returns local_gradients()'s StepStats; step_totals() then gives the sum
  // over the processes. Hooks of the strategy do not fire inside
  // local_gradients(). Default: UsageError (sums_gradients() is false);
  // implementations throw UsageError where their configuration does not
  // allow a plain sum (gradient accumulation, compression, local SGD,
  // dynamic batch sizing), and CommError/TimeoutError as train_step() does.
  virtual bool sums_gradients() const { return false; }
  virtual StepStats step_on_gradients(const std::function<StepStats()>& local_gradients,
                                      float scale);

  // Look-ahead: when wants_next_inputs() is true, the trainer calls
  // prefetch() before train_step() with this process's inputs of the NEXT
  // step, sliced by the split it knows now (not at an epoch's last step,
  // the run's last, or with gradient accumulation). The strategy may start
  // fetching what that step needs (ps: its embedding rows ride with this
  // step's pull); results must not change: a next step whose inputs differ
  // from these (a split that changed meanwhile) fetches as it would have
  // without. The tensor stays valid until that step. Default: no look-ahead.
  virtual bool wants_next_inputs() const { return false; }
  virtual void prefetch(const Tensor& /*next_inputs*/) {}

  // train_step() calls per update: the trainer splits this process's rows of
  // each global batch into that many micro-batches (gradient accumulation).
  virtual int64_t accumulation_steps() const { return 1; }

  // The statistics of the last step summed over every process, given what
  // train_step() returned on this one.
  virtual StepStats step_totals(const StepStats& local) const { return local; }

  // After model() or the optimizer state was replaced (loading a checkpoint),
  // brings every replica back in line with it.
  virtual void sync_replicas() {}

  // Checkpoints. The trainer calls fetch_model() on rank 0 before it
  // evaluates or saves model(): a strategy that keeps parameters elsewhere
  // (ps: on the servers, row-sparse tables only partly present on a worker)
  // makes model() hold all of their current values; it may block on that.
  virtual void fetch_model() {}
  // The optimizer state a checkpoint holds, and loading one back (on resume,
  // before sync_replicas()): the local optimizer's, or, where the state
  // lives elsewhere (ps: with the servers' shards), gathered and restored
  // there. load_optimizer_state throws UsageError for a state that does not
  // fit.
  virtual StateDict optimizer_state() = 0;
  virtual void load_optimizer_state(const StateDict& state) = 0;

  // State private to this process that resuming must give back to this
  // same rank: a compressor's error-feedback residuals and warm starts,
  // which differ from worker to worker. Every rank writes its own with the
  // checkpoints (train/trainer.h); empty when there is none.
  // load_rank_state() gives it back on resume (after load_optimizer_state):
  // this rank's state from the same checkpoint, or nullopt when there is
  // none (then the strategy starts it afresh and says so).
  virtual StateDict rank_state() const { return {}; }
  virtual void load_rank_state(const std::optional<StateDict>& /*state*/) {}

  // A process that joined a job already under way (a restarted ps worker:
  // its servers kept the job's state) reports the global step the job is at;
  // the trainer continues from there instead of from a checkpoint. nullopt
  // for a process that starts the job.
  virtual std::optional<int64_t> joined_at_step() const { return std::nullopt; }

  // The strategy's elastic group (strategy/elastic.h), or nullptr when the
  // group is fixed: then a CommError from a step ends training.
  virtual ElasticMembership* elastic() { return nullptr; }

  // What this process sent for the last update (CommStats above).
  virtual CommStats last_comm() const { return {}; }

  // Figures beside the step statistics, for the chief's reports (the
  // progress line, metrics.jsonl's step events, TensorBoard): (name, value)
  // pairs measured since the last report, e.g. gossip's
  // ("consensus_distance", mean_i |x_i - x_mean|^2). Called on the chief
  // after a step, at each report; empty when there is nothing new.
  virtual std::vector<std::pair<std::string, double>> report_metrics() { return {}; }
  // Models the chief evaluates beside model() at each epoch's end, by name
  // (gossip: ("worker0", the chief's own model) beside the average);
  // reported as test_accuracy_<name> and test_loss_<name>. Pointers valid
  // until the next call into the strategy.
  virtual std::vector<std::pair<std::string, nn::Module*>> extra_eval_models() { return {}; }

  // The convergence guard's lever (train/convergence_guard.h): whether this
  // strategy reduces its communication (compression, local SGD) in a way
  // the guard may weaken, and weakening it: level 0 is the job's setting,
  // each level one step weaker (CompressionSettings::weakened), dense at
  // the last. Called between updates, alike on every worker.
  virtual bool reduces_communication() const { return false; }
  virtual void set_communication_level(int /*level*/) {}
  // A one-line description of the current setting ("powersgd rank 4").
  virtual std::string communication() const { return "dense"; }

  // After training: tells whoever waits for this worker that it is done (ps:
  // the servers stop once every worker is done). Afterwards only model() and
  // destruction are allowed.
  virtual void finish() {}

  // How this process's compute time is accounted (strategy/compute_timer.h):
  // measured by default; the job's assembly installs a slowdown or a
  // modelled time (tests, benchmarks). A strategy that measures compute time
  // reports account_compute()'s result.
  void set_compute_timer(std::unique_ptr<ComputeTimer> timer) { timer_ = std::move(timer); }

 protected:
  // The seconds to report for forward and backward of `rows` rows measured at
  // `measured_s` (the installed timer may sleep).
  double account_compute(double measured_s, int64_t rows) {
    return timer_ ? timer_->account(measured_s, rows) : measured_s;
  }

 private:
  std::unique_ptr<ComputeTimer> timer_;
};

// The loss used by default: cross entropy over class logits.
LossFn cross_entropy_loss();

}  // namespace dtrain::strategy
