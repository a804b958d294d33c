// TensorBoardCallback: the training loop's reports as TensorBoard event files
// (obs/event_file_writer.h) under <output>/tensorboard (docs/observability.md):
//
//   tensorboard/             the chief's scalars, every log_every_steps steps:
//                            train/loss, train/accuracy, train/lr,
//                            train/samples_per_s, comm/bytes_per_step and
//                            comm/compression_ratio (when nonzero),
//                            batch/share_worker<r> (dynamic batches: worker r's
//                            rows / the global batch), strategy/<name> (the
//                            strategy's figures, e.g. consensus_distance); at
//                            each epoch's end test/loss, test/accuracy,
//                            epoch/samples_per_s, test/loss_<name> and
//                            test/accuracy_<name> (extra models: worker0);
//                            guard/rescues (the convergence guard's count) at
//                            each rescued step
//   tensorboard/worker-<r>/  every worker's own (the chief's too):
//                            throughput/samples_per_s (what its trainer
//                            reports) and, with several workers,
//                            throughput/own_samples_per_s (that rate times its
//                            share of the step's rows); TensorBoard overlays
//                            the worker-<r> runs in one chart
//   tensorboard/histograms/  the chief's, every histogram_every_steps steps
//                            (0: none): weights/<name> and grads/<name> for
//                            every parameter of the model (dense gradients
//                            only); a separate run so that the scalars load fast
//
// Steps are the global steps of metrics.jsonl and the values the same
// numbers (as float32); each report is flushed to the files at once, so
// TensorBoard follows the run live.
//
// Ownership: owns its writers; `model` is the strategy's model(), which the
// strategy owns and keeps alive as long as the trainer runs (the callback is
// destroyed before it, in train_worker). Thread safety: the trainer calls it
// from its one thread. Throws io::FileError (a dtrain::Error) naming the file
// when a folder or file cannot be created (constructor) or written (every
// report). Blocks only for the writes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "nn/module.h"
#include "obs/event_file_writer.h"
#include "train/callbacks.h"

namespace dtrain::train {

struct TensorBoardOptions {
  std::string folder;                 // <output>/tensorboard
  int64_t worker = 0;                 // this worker's index: worker-<worker>/
  bool chief = false;                 // writes the scalars and histograms
  int64_t log_every_steps = 100;      // train.log_every_steps (0: no step scalars)
  int64_t histogram_every_steps = 0;  // train.histogram_every_steps (0: off)
  bool batch_shares = false;          // distributed.dynamic_batch: batch/share_worker<r>
};

class TensorBoardCallback : public Callback {
 public:
  TensorBoardCallback(const TensorBoardOptions& options, nn::Module& model);

  void on_step_end(const StepInfo& info) override;
  void on_epoch_end(const EpochInfo& info) override;
  void on_guard(const GuardEvent& event) override;
  void on_train_end(const Summary& summary) override;

 private:
  void write_histograms(int64_t step, double wall_time);

  TensorBoardOptions options_;
  nn::Module& model_;
  std::unique_ptr<obs::EventFileWriter> scalars_;     // chief only
  std::unique_ptr<obs::EventFileWriter> worker_;      // every worker
  std::unique_ptr<obs::EventFileWriter> histograms_;  // chief, histogram_every_steps > 0
  int64_t rescues_ = 0;
};

}  // namespace dtrain::train
