// A federated run recorded in its output folder, and the simulated run
// itself (`dtrain fl JOB`, docs/federated.md). FlRunRecorder is what the
// simulation and the deployed server (`dtrain fl-server`) share:
//
//   <output>/metrics.jsonl     {"event":"begin",...}, one {"event":"round",...}
//                              per round, {"event":"end",...} (JSON lines,
//                              the format of train/callbacks.h; obs's reader
//                              skips "round" events, so `dtrain plot` and the
//                              dashboard still read the file);
//   <output>/tensorboard/      with train.tensorboard: per round (the step is
//                              the round) fl/train_loss, fl/participated,
//                              fl/dropped, fl/partial, fl/rejected,
//                              fl/bytes_up, fl/bytes_down, fl/round_seconds,
//                              and test/loss, test/accuracy when evaluated;
//   <output>/checkpoints/      ckpt-<round>.dtc: fl::to_checkpoint() stamped
//                              with the job's identity (job name, model
//                              fingerprint, seed, fl.clients), the newest
//                              train.keep_checkpoints kept (io/checkpoint.h);
//   <output>/model.safetensors the final global weights as the model's
//                              state_dict (what `dtrain eval` reads).
//
// Progress: one line per round to `out` ("round 12/100: 10 clients (1
// dropped, 2 partial), train loss 0.231, test accuracy 97.12%, 0.84 s") and
// a summary line at the end ("reached 97.00% at round 87 (target 97.00%)"
// or "final test accuracy 96.50% after 100 rounds").
//
// Resume: load_latest() returns the newest checkpoint that reads back intact,
// is finite and was written by this job (same job name, model structure,
// seed and fl.clients; at most fl.rounds rounds), or nullopt; refused files
// are moved to checkpoints/rejected/ with a warning (io::CheckpointDirectory).
// job.force_resume accepts another job's identity, with a warning.
//
// Ownership: the recorder holds a copy of the job and owns its files; `out`
// and `logger` are the caller's and must outlive it (run_fl's locals, or the
// server's). Thread safety: one thread at a time (the round loop's).
// Errors: dtrain::Error (io::FileError, CheckpointError) when a file cannot
// be written; ConfigError naming the key for a bad fl setting (run_fl).
// Blocking: file I/O and fsync per checkpoint; run_fl runs the whole job.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <optional>
#include <ostream>
#include <string>

#include "core/log.h"
#include "fl/server_state.h"
#include "fl/simulation.h"
#include "io/checkpoint.h"
#include "train/fl_job.h"
#include "train/job_config.h"

namespace dtrain::obs {
class EventFileWriter;
}

namespace dtrain::train {

// What the "begin" event records.
struct FlRunStart {
  std::string mode = "simulation";  // simulation | server
  int64_t start_round = 0;          // rounds already done (resumed), else 0
  int64_t parameters = 0;           // floats in the flat model
  int64_t train_samples = 0;
  int64_t test_samples = 0;
};

// The end of a run, as finish() reports it.
struct FlRunSummary {
  int64_t rounds = 0;                    // rounds completed
  std::optional<fl::Evaluation> test;    // the final global model's, when evaluated
  std::optional<int64_t> reached_round;  // first round at or above fl.target_accuracy
  double seconds = 0.0;                  // wall time since begin()
  std::string weights_path;              // <output>/model.safetensors
  std::string line;                      // the summary line printed
};

class FlRunRecorder {
 public:
  // `make_model` builds the job's model (its structure names the tensors of
  // model.safetensors and gives the checkpoint's fingerprint). `out` may be
  // null (no progress lines). Creates the output folder; opens
  // metrics.jsonl for appending.
  FlRunRecorder(const JobConfig& job, const fl::ModelFactory& make_model, std::ostream* out,
                Logger& logger);
  ~FlRunRecorder();
  FlRunRecorder(const FlRunRecorder&) = delete;
  FlRunRecorder& operator=(const FlRunRecorder&) = delete;

  // The newest valid server state of this job in <output>/checkpoints (see
  // above), or nullopt (then a line says why when files were there).
  std::optional<fl::ServerState> load_latest();
  // Moves the checkpoints of an earlier run aside to
  // <output>/checkpoints/earlier-run/ (a run with job.resume = false), so
  // that they cannot be mistaken for this run's.
  void set_aside_checkpoints();
  // What a run starts from: load_latest() unless job.resume is false, then
  // set_aside_checkpoints() and nullopt.
  std::optional<fl::ServerState> resume_or_set_aside();

  // The "begin" event (and a first progress line). A resumed run (start_round
  // > 0) with a target looks up in metrics.jsonl whether an earlier round
  // already reached it.
  void begin(const FlRunStart& start);
  // A round: its progress line, its "round" event, its TensorBoard scalars.
  void on_round(const fl::RoundReport& report);
  // DP-FedAvg's budget stop: the message as a progress line and a
  // "privacy_stop" event.
  void privacy_stop(const std::string& message);
  // Writes the state as checkpoint ckpt-<state.round>.dtc and prunes.
  void checkpoint(const fl::ServerState& state);
  // The first round at or above fl.target_accuracy, as this run saw it or,
  // after begin() of a resumed run, as metrics.jsonl recorded it.
  std::optional<int64_t> reached_round() const { return reached_round_; }
  // The round of the last checkpoint() (0: none yet in this run).
  int64_t last_checkpoint_round() const { return last_checkpoint_round_; }
  // Writes the final weights to <output>/model.safetensors, the "end"
  // event and the summary line. `test`: the final model's evaluation when
  // known (else the last evaluated round's, if any).
  FlRunSummary finish(const fl::ServerState& state, std::optional<fl::Evaluation> test);
  // The end of a run (simulated or deployed): privacy_stop(budget_stop)
  // when the budget stopped it (non-empty), the last round's checkpoint
  // when fl.checkpoint_every is on and its grid missed that round (so a
  // later run with more rounds continues from it), then finish().
  FlRunSummary conclude(const fl::ServerState& state, std::optional<fl::Evaluation> test,
                        const std::string& budget_stop);

  const std::string& checkpoint_dir() const { return checkpoint_dir_; }

 private:
  void write_event(const std::string& json_line);
  io::CheckpointDirectory directory();

  JobConfig job_;
  fl::ModelFactory make_model_;
  std::ostream* out_;
  Logger& logger_;
  std::string checkpoint_dir_;
  std::string model_fingerprint_;
  std::unique_ptr<std::ofstream> metrics_;
  std::unique_ptr<obs::EventFileWriter> tensorboard_;
  double started_ = 0.0;  // unix seconds at begin()
  int64_t last_round_ = 0;
  int64_t last_checkpoint_round_ = 0;
  std::optional<fl::Evaluation> last_test_;
  std::optional<int64_t> reached_round_;
  double reached_accuracy_ = 0.0;  // the test accuracy of reached_round_
};

// Progress line of one round, without the newline.
std::string format_round_line(const fl::RoundReport& report, int64_t rounds);

// The "begin" event's figures of `fl_job` in `mode`, after `resume` (if any).
FlRunStart fl_run_start(const FlJob& fl_job, const std::optional<fl::ServerState>& resume,
                        const std::string& mode);

struct FlRunOptions {
  std::ostream* out = nullptr;  // progress lines; nullptr: none
  Logger* logger = nullptr;     // nullptr: Logger::stderr_logger()
};

// `dtrain fl JOB` in one process: load_fl_job, resume (unless job.resume is
// false), fl::run_simulation with a recorder, the final weights. The caller
// holds the output folder's lock. Returns 0.
int run_fl(const JobConfig& job, const FlRunOptions& options);

}  // namespace dtrain::train
