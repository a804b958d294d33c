// Trainer: the training loop of a job. Epochs of shuffled batches from the
// training set go through a Strategy; the learning rate follows the job's
// schedule; the test set is evaluated after every epoch; callbacks report;
// checkpoints are written atomically and a run resumes from the newest valid
// one, continuing exactly where it stopped (same batches, same RNG streams).
//
// Checkpoints: every train.checkpoint_every_steps steps, when
// train.checkpoint_every_seconds have passed since the last one (checked
// after each step), and at the end of each epoch. The training thread copies
// the model and optimizer state into memory; a CheckpointWriter thread writes
// it while training goes on, one write at a time (a checkpoint due while the
// previous one is still being written waits for it). A step's checkpoint is
// handed over before the step is reported to the callbacks, so with a
// checkpoint every step, once step N is reported ckpt-(N-1) is on disk. fit()
// waits for the last write before writing the final weights; a failed
// background write is thrown (CheckpointError) by the next checkpoint or at
// the end of fit().
//
// Several processes: each gets its rows of every global batch of B rows
// (the same shuffled order on all, from the job's seed), the range
// Strategy::row_range() names: [B r / W, B (r + 1) / W) by default, the
// current shares under dynamic batch sizing. So W processes train exactly as
// one on the global batch and every sample is used once per epoch; a
// process whose share is empty still joins the step (the strategy gives it
// weight 0). Only rank 0 evaluates and writes checkpoints and the final
// weights (after Strategy::fetch_model(); the optimizer state comes from
// Strategy::optimizer_state(), which for ps lives on the servers); every
// rank resumes from the same checkpoint, which does not depend on W. When
// the split is not the static one, rank 0 reports each epoch's last split
// ("rows per worker ...").
//
// The strategy's own reports: at each report step (every log_every_steps)
// the chief asks Strategy::report_metrics() for StepInfo::extra (what it
// measured since the last report; other steps carry none); at each epoch's
// end it evaluates every
// Strategy::extra_eval_models() model like model() (EpochInfo::extra).
//
// Partitions (job.data.partition): each worker trains on its own part of the
// training set, a PartitionedEpoch (train/partitioned_epoch.h): its share of
// B rows per step from its part, until every worker used its whole part (the
// epoch). The checkpoint also records every worker's position in its part
// (metadata "part_consumed"); a run resumed with another worker count starts
// the interrupted epoch afresh.
//
// A process that joins a job under way (Strategy::joined_at_step(): a
// restarted ps worker) starts at the step the job is at, in its epoch, and
// does not resume from a checkpoint.
//
// Elastic mode (Strategy::elastic(), strategy/elastic.h): a CommError from a step does
// not end fit(); the group re-forms and training continues from the position
// the new group agrees on (the failed step is redone on the new group's
// shares of the same global batch); a joining worker is admitted at a step
// boundary. Rank and world size are read again after every re-formation, and
// a process that becomes rank 0 starts writing checkpoints.
//
// DP-SGD (job.privacy.enabled, a strategy that sums gradients: local or
// allreduce): each step is DpSgd::step (train/dp_sgd.h: a Poisson batch of
// its own, clipping, noise, Strategy::step_on_gradients), not the strategy's
// train_step; no ordinary batch is loaded, an epoch is its count of steps
// (the batches of batch_size it would have had).
// Every epoch reports epsilon (EpochInfo::epsilon); checkpoints carry the
// accountant's state; with privacy.target_epsilon the run ends, reporting
// why, before a step that would exceed it (a normal end: the epoch is
// evaluated and the final weights written).
//
// Ownership: the strategy, logger and callbacks are owned by the caller and
// must outlive fit(). Thread safety: one thread calls fit().
// Errors: dtrain::Error kinds from the layers, the data and the files;
// CheckpointError when no checkpoint can be written.
// Blocking: fit() runs the whole job.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "core/log.h"
#include "data/dataset.h"
#include "nn/module.h"
#include "optim/lr_schedule.h"
#include "strategy/strategy.h"
#include "train/callbacks.h"
#include "train/checkpoint_writer.h"
#include "train/chief_output_lock.h"
#include "train/convergence_guard.h"
#include "train/dp_sgd.h"
#include "train/epoch_batches.h"
#include "train/job_config.h"

namespace dtrain::train {

struct EvalResult {
  double loss = 0.0;      // mean cross entropy
  double accuracy = 0.0;  // fraction in [0, 1]
  int64_t samples = 0;
};

// Evaluates `model` (in eval mode, without recording a graph) on `data`.
EvalResult evaluate(nn::Module& model, const data::TensorDataset& data, int64_t batch_size);

class Trainer {
 public:
  Trainer(const JobConfig& job, strategy::Strategy& strategy, Logger& logger);

  void add_callback(Callback& callback) { callbacks_.push_back(&callback); }
  // Elastic jobs whose hosts share the output folder (train/chief_output_lock.h):
  // `lock` follows this process's role, taken before rank 0 writes anything and
  // released (after the last write) when a re-formation makes it another rank.
  // Null: none (the launcher or this process holds the folder's lock for the
  // run). `lock` must outlive fit().
  void set_output_lock(ChiefOutputLock* lock) { output_lock_ = lock; }
  // Records this process's timeline into `trace` (core/trace.h; null: off):
  // sets the sink's step before each update, and records the batch wait
  // ("data"), each step, the layers' forward (an nn::Sequential model),
  // evaluation and checkpoint writes. `trace` must outlive the trainer.
  void set_trace(TraceSink* trace) { trace_ = trace; }

  // Trains for job.train.epochs (or max_steps), resuming from the output
  // folder's newest valid checkpoint when job.resume. Writes the final
  // weights to <output>/model.safetensors.
  Summary fit(const data::TensorDataset& train, const data::TensorDataset& test);

  int64_t steps_per_epoch(int64_t train_samples) const;

 private:
  struct Position {
    int64_t step = 0;            // updates applied so far
    int64_t epoch = 0;           // 0-based epoch in progress
    int64_t batch_in_epoch = 0;  // batches of `epoch` already trained on
  };
  // The shape of the run, fixed before the first step.
  struct RunPlan {
    bool partitioned = false;
    std::vector<std::vector<int64_t>> parts;  // partitioned: one per worker
    int64_t per_epoch = 0;                    // steps of an epoch at equal shares
    int64_t planned_steps = 0;                // per_epoch x epochs: the schedule's horizon
    int64_t total_steps = 0;                  // where training stops (max_steps, or no bound)
  };
  // Running sums of a window of steps.
  struct Window {
    strategy::StepStats stats;
    double seconds = 0.0;
    int64_t updates = 0;
    double bytes = 0.0;        // sent by this process
    double dense_bytes = 0.0;  // what dense updates would have sent
    void add(const strategy::StepStats& s, double dt, const strategy::CommStats& comm) {
      stats += s;
      seconds += dt;
      ++updates;
      bytes += static_cast<double>(comm.bytes_sent);
      dense_bytes += static_cast<double>(comm.dense_bytes);
    }
  };
  // The convergence guard's last good state (in memory).
  struct Snapshot {
    int64_t step = -1;
    StateDict model;
    StateDict optimizer;
    StateDict rank;
  };
  // How an epoch's steps ended.
  struct EpochEnd {
    bool run_over = false;   // the run's last step was taken
    bool reformed = false;   // elastic: the group re-formed; go on from `position`
    bool exhausted = false;  // the epoch's batches are used up
    Window steps;            // the steps taken (this stretch of the epoch)
    std::vector<int64_t> last_split;
    std::chrono::steady_clock::time_point started;
  };

  RunPlan plan_run(const data::TensorDataset& train) const;
  // Where training starts: the running group's position (elastic or a
  // restarted ps worker), the newest valid checkpoint, or step 0. A chief
  // takes output_lock_ (when set) first.
  Position starting_position(const RunPlan& plan, const data::TensorDataset& train);
  // Loads the newest checkpoint that is this job's (its identity, steps and
  // epochs within the job's); false (and "starting afresh" when files were
  // refused) when there is none.
  bool resume(Position& position, const RunPlan& plan, const data::TensorDataset& train);
  // A fresh run (job.resume false) on the chief: checkpoints of an earlier
  // run in the output folder are moved to <output>/earlier-run/ (replacing
  // those an even earlier run left there), so that they neither shadow this
  // run's (pruning keeps the highest steps; a later resume takes the newest)
  // nor get lost at once.
  void set_aside_earlier_checkpoints();
  // resume's second half: the guard's level, the privacy accountant and the
  // partitions' consumed counts from `c`'s metadata (CheckpointError naming
  // `path` when one does not decode).
  void restore_extras(const io::Checkpoint& c, const std::string& path);
  // Rank 0 writes the checkpoints; in elastic mode rank and world size change
  // with the group, and a process that becomes rank 0 starts writing (after
  // taking output_lock_); one that stops being rank 0 finishes its last write
  // and releases output_lock_.
  void take_group_role();
  // Trains the rest of `position`'s epoch.
  // The next batch of `batches`, the trace's step set to the update it feeds;
  // with `batches` null (DP-SGD), an empty StepBatch for each of the epoch's
  // plan.per_epoch steps, loading nothing.
  std::optional<StepBatch> next_batch(EpochBatches* batches, const Position& position,
                                      const RunPlan& plan);
  EpochEnd run_epoch(const data::TensorDataset& train, data::DataLoader& loader,
                     const RunPlan& plan, Position& position);
  // The batches of `position`'s epoch (resumed where it stopped).
  EpochBatches epoch_batches(const data::TensorDataset& train, data::DataLoader& loader,
                             const RunPlan& plan, Position& position);
  // Hands the strategy this process's rows of the next batch of `batches`
  // when it wants them (Strategy::prefetch; not under DP-SGD or with
  // gradient accumulation); nothing at the epoch's end.
  void look_ahead(EpochBatches* batches);
  // One update from this process's rows of `batch` (micro-batches of them
  // with gradient accumulation): the step's totals over every process, or
  // nullopt when it failed and the group re-formed (elastic; `position` is
  // then the group's). NumericError naming the step for a non-finite loss
  // or gradient.
  std::optional<strategy::StepStats> run_step(const StepBatch& batch, Position& position);
  // After the update of `position.step`: checkpoint, report, re-form when a
  // worker waits. Returns whether the group re-formed.
  bool after_step(Position& position, float lr, const RunPlan& plan, bool last_step,
                  const std::vector<int64_t>& split);
  // Evaluates, checkpoints and reports the end of an epoch (or of the run's
  // last stretch of one).
  void end_epoch(const data::TensorDataset& test, const EpochEnd& end, Position& position,
                 Summary& summary);
  // Snapshots the state on this thread and hands it to writer_. Throws
  // NumericError (writing nothing) when the state is not finite.
  void save_checkpoint(const Position& position);
  // Whether a checkpoint is due after `step` by step count or elapsed time.
  bool checkpoint_due(int64_t step) const;
  void report(const std::string& message);
  // The parts of job.data.partition for this job's workers.
  std::vector<std::vector<int64_t>> make_parts(const data::TensorDataset& train) const;
  // Elastic mode: re-forms the group after `cause`; updates `position`.
  void reform(Position& position, const std::string& cause);
  // The convergence guard after update `step` with totals `stats`: rescues
  // a diverged run, snapshots a healthy one, relaxes an expired fallback.
  // Returns whether the update counts as healthy.
  bool guard_update(int64_t step, const strategy::StepStats& stats);
  // A rank other than the chief writes its Strategy::rank_state() (nothing
  // when empty) to <output>/rank-<r>/ckpt-<step>.dtc, at the checkpoints
  // every rank knows of: every checkpoint_every_steps steps and at epoch
  // ends. The chief's goes into the checkpoint itself (section
  // "rank_state").
  void save_rank_state(const Position& position);
  // This rank's state for checkpoint `c` (its section, or its own file of
  // the same step); nullopt when there is none.
  std::optional<StateDict> find_rank_state(const io::Checkpoint& c) const;
  void take_snapshot(int64_t step);

  const JobConfig& job_;
  strategy::Strategy& strategy_;
  Logger& logger_;
  std::vector<Callback*> callbacks_;
  strategy::ElasticMembership* elastic_ = nullptr;  // the strategy's, during fit()
  std::unique_ptr<optim::LrSchedule> schedule_;
  int64_t rank_ = 0;
  int64_t world_ = 1;
  bool chief_ = true;
  std::chrono::steady_clock::time_point last_checkpoint_;  // when save_checkpoint last ran
  // Partitioned training: every worker's position in its part (saved with
  // each checkpoint), and the positions a resumed run continues from.
  std::vector<int64_t> part_consumed_;
  std::vector<int64_t> resumed_part_consumed_;
  Window window_;                            // since the last report (log_every_steps)
  std::unique_ptr<ConvergenceGuard> guard_;  // compression.guard
  Snapshot snapshot_;
  std::unique_ptr<CheckpointWriter> rank_writer_;  // ranks > 0 with a rank_state()
  std::unique_ptr<CheckpointWriter> writer_;       // rank 0, during fit(); last: joined first
  ChiefOutputLock* output_lock_ = nullptr;         // set_output_lock()
  TraceSink* trace_ = nullptr;                     // set_trace()
  std::unique_ptr<DpSgd> dp_;                      // [privacy] enabled, during fit()
};

}  // namespace dtrain::train
