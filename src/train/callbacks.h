// Callbacks: what the training loop reports, and the reporters the command
// line uses: a progress bar for terminals, plain periodic lines otherwise,
// and metrics as JSON lines in the output folder.
//
// The loop calls every callback on its own thread, in order; a callback must
// not throw except for I/O failures (dtrain::Error), which stop training.
// Reporters write to the std::ostream they were given (owned by the caller,
// alive as long as the reporter), never to stdout directly.
#pragma once

#include <chrono>
#include <cstdint>
#include <fstream>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace dtrain::train {

struct RunInfo {
  std::string job_name;
  std::string strategy;
  int64_t workers = 1;
  int64_t epochs = 0;
  int64_t steps_per_epoch = 0;
  int64_t start_step = 0;  // > 0 when resumed
  int64_t parameters = 0;
  int64_t train_samples = 0;
  int64_t test_samples = 0;
};

struct StepInfo {
  int64_t step = 0;           // global step, 1-based after the update
  int64_t epoch = 0;          // 1-based
  int64_t step_in_epoch = 0;  // 1-based
  int64_t steps_per_epoch = 0;
  double lr = 0.0;
  double loss = 0.0;      // mean over the samples since the last report
  double accuracy = 0.0;  // same window
  double samples_per_s = 0.0;
  // What this process sent per update over the same window (0: nothing or
  // not counted), and dense bytes / sent bytes (0: unknown).
  double bytes_per_step = 0.0;
  double compression_ratio = 0.0;
  // Every worker's rows of this step's global batch, in rank order (empty
  // with one worker); they differ under dynamic batches.
  std::vector<int64_t> split;
  // The strategy's own figures (Strategy::report_metrics(), e.g. gossip's
  // "consensus_distance"): at report steps (every log_every_steps) what it
  // measured since the last report; empty on other steps and when it
  // measured nothing new.
  std::vector<std::pair<std::string, double>> extra;
};

// The convergence guard rescued the run (train/convergence_guard.h).
struct GuardEvent {
  int64_t step = 0;           // the update that diverged
  int64_t restored_step = 0;  // the snapshot's
  std::string reason;         // "the loss is not finite", "the loss rose ..."
  std::string from;           // the setting that diverged
  std::string to;             // the setting it continues with
  int64_t hold_steps = 0;
};

// One of the strategy's extra models evaluated on the test set at an
// epoch's end (Strategy::extra_eval_models(), e.g. gossip's "worker0").
struct ModelEval {
  std::string name;
  double test_loss = 0.0;
  double test_accuracy = 0.0;
};

struct EpochInfo {
  int64_t epoch = 0;
  int64_t step = 0;
  double train_loss = 0.0;
  double train_accuracy = 0.0;
  double test_loss = 0.0;
  double test_accuracy = 0.0;
  double samples_per_s = 0.0;    // training only, excluding evaluation
  double seconds = 0.0;          // wall time of the epoch including evaluation
  std::vector<ModelEval> extra;  // beside model()'s test_loss/test_accuracy
  // DP-SGD ([privacy]): epsilon spent so far at `delta`, by the Balle et al.
  // and the classic conversions (privacy/rdp_accountant.h).
  std::optional<double> epsilon;
  std::optional<double> epsilon_classic;
  double delta = 0.0;
};

struct Summary {
  int64_t epochs = 0;
  int64_t steps = 0;
  double test_loss = 0.0;
  double test_accuracy = 0.0;
  double best_test_accuracy = 0.0;
  double samples_per_s = 0.0;
  double seconds = 0.0;
  std::string weights_path;
};

class Callback {
 public:
  virtual ~Callback() = default;
  virtual void on_train_begin(const RunInfo&) {}
  virtual void on_step_end(const StepInfo&) {}
  virtual void on_epoch_end(const EpochInfo&) {}
  virtual void on_train_end(const Summary&) {}
  virtual void on_message(const std::string&) {}
  virtual void on_guard(const GuardEvent&) {}
};

// A single line redrawn in place ("\r"): epoch, step, loss, accuracy, samples/s,
// and the strategy's figures as last reported.
class ProgressBar : public Callback {
 public:
  explicit ProgressBar(std::ostream& out) : out_(out) {}
  void on_train_begin(const RunInfo& info) override;
  void on_step_end(const StepInfo& info) override;
  void on_epoch_end(const EpochInfo& info) override;
  void on_train_end(const Summary& summary) override;
  void on_message(const std::string& message) override;

 private:
  std::ostream& out_;
  std::chrono::steady_clock::time_point last_draw_{};
  bool line_open_ = false;
  std::string figures_;  // the last StepInfo::extra, formatted
};

// One line every log_every_steps steps and one per epoch.
class PlainProgress : public Callback {
 public:
  PlainProgress(std::ostream& out, int64_t log_every_steps)
      : out_(out), log_every_steps_(log_every_steps) {}
  void on_train_begin(const RunInfo& info) override;
  void on_step_end(const StepInfo& info) override;
  void on_epoch_end(const EpochInfo& info) override;
  void on_train_end(const Summary& summary) override;
  void on_message(const std::string& message) override;

 private:
  std::ostream& out_;
  int64_t log_every_steps_;
};

// Appends one JSON object per report to `path` ({"event":"step",...}); every
// object carries "time", the wall-clock time of the report in seconds since
// the Unix epoch (what plots against wall time and the live page read).
// Step events carry the strategy's figures (StepInfo::extra) each as its own
// key (e.g. "consensus_distance"; "strategy_<name>" should a name be one of
// the event's keys); epoch events carry "test_accuracy_<name>" and
// "test_loss_<name>" for each extra model (EpochInfo::extra, e.g. worker0).
// Throws dtrain::Error when the file cannot be opened or written.
class JsonLinesWriter : public Callback {
 public:
  JsonLinesWriter(const std::string& path, int64_t log_every_steps);
  void on_train_begin(const RunInfo& info) override;
  void on_step_end(const StepInfo& info) override;
  void on_epoch_end(const EpochInfo& info) override;
  void on_train_end(const Summary& summary) override;
  void on_guard(const GuardEvent& event) override;

 private:
  void write(nlohmann::json line);
  std::string path_;
  std::ofstream out_;
  int64_t log_every_steps_;
};

// "1:23" or "1:02:03"
std::string format_duration(double seconds);

}  // namespace dtrain::train
