#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <numeric>
#include <tuple>

#include <fmt/format.h>

#include "autograd/functions.h"
#include "core/error.h"
#include "data/loader.h"
#include "data/partition.h"
#include "data/sampler.h"
#include "io/checkpoint.h"
#include "io/file_system.h"
#include "io/safetensors.h"
#include "train/partitioned_epoch.h"

namespace dtrain::train {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Running sums of a window of steps.
struct Window {
  strategy::StepStats stats;
  double seconds = 0.0;
  void reset() { *this = {}; }
  double loss() const { return stats.samples ? stats.loss_sum / double(stats.samples) : 0.0; }
  double accuracy() const { return stats.samples ? double(stats.correct) / double(stats.samples) : 0.0; }
  double rate() const { return seconds > 0 ? double(stats.samples) / seconds : 0.0; }
};

std::string join(const std::vector<int64_t>& values, const char* separator) {
  return fmt::format("{}", fmt::join(values, separator));
}

std::vector<int64_t> parse_counts(const std::string& text) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (start < text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    out.push_back(std::stoll(text.substr(start, comma - start)));
    start = comma + 1;
  }
  return out;
}

std::string metadata_at(const io::Checkpoint& c, const std::string& key, const std::string& path) {
  auto it = c.metadata.find(key);
  if (it == c.metadata.end()) throw CheckpointError(path, c.step, "missing metadata '" + key + "'");
  return it->second;
}

}  // namespace

EvalResult evaluate(nn::Module& model, const data::TensorDataset& dataset, int64_t batch_size) {
  if (batch_size < 1) throw UsageError(fmt::format("evaluate: batch size {} < 1", batch_size));
  const bool was_training = model.is_training();
  model.eval();
  NoGradGuard no_grad;
  double loss_sum = 0.0;
  int64_t correct = 0;
  for (int64_t start = 0; start < dataset.size(); start += batch_size) {
    const int64_t rows = std::min(batch_size, dataset.size() - start);
    const data::TensorDataset part = dataset.slice(start, rows);
    Variable output = model.forward(Variable(part.features()));
    loss_sum += double(cross_entropy(output, part.labels()).item()) * double(rows);
    correct += strategy::count_correct(output.data(), part.labels());
  }
  model.train(was_training);
  EvalResult result;
  result.samples = dataset.size();
  if (result.samples > 0) {
    result.loss = loss_sum / double(result.samples);
    result.accuracy = double(correct) / double(result.samples);
  }
  return result;
}

Trainer::Trainer(const JobConfig& job, strategy::Strategy& strategy, Logger& logger)
    : job_(job), strategy_(strategy), logger_(logger) {}

int64_t Trainer::steps_per_epoch(int64_t train_samples) const {
  return data::DataLoader::batch_count(train_samples, job_.train.batch_size, job_.train.drop_last);
}

void Trainer::report(const std::string& message) {
  if (callbacks_.empty()) logger_.info("{}", message);
  for (Callback* c : callbacks_) c->on_message(message);
}

void Trainer::set_aside_earlier_checkpoints() {
  io::FileSystem& fs = io::default_file_system();
  const io::CheckpointDirectory dir(job_.output, std::max<int64_t>(1, job_.train.keep_checkpoints),
                                    fs, logger_);
  std::vector<int64_t> steps;
  try {
    steps = dir.steps();
  } catch (const std::exception&) {
    return;  // not a readable folder: the first checkpoint write reports it
  }
  if (steps.empty()) return;
  // One folder, so that repeated fresh runs do not pile up copies: the
  // checkpoints an even earlier run left there go first.
  const std::string aside = job_.output + "/earlier-run";
  const io::CheckpointDirectory previous(aside, 1, fs, logger_);
  for (int64_t step : previous.steps()) fs.remove_file(previous.path_for(step));
  fs.create_directories(aside);
  for (int64_t step : steps) {
    const std::string path = dir.path_for(step);
    fs.rename_file(path, aside + path.substr(path.rfind('/')));
  }
  fs.sync_directory(job_.output);
  logger_.warn("training afresh (no resume): moved {} checkpoint(s) of an earlier run (steps {} "
               "to {}) from {} to {}",
               steps.size(), steps.front(), steps.back(), job_.output, aside);
}

bool Trainer::resume(Position& position) {
  io::CheckpointDirectory dir(job_.output, std::max<int64_t>(1, job_.train.keep_checkpoints),
                              io::default_file_system(), logger_);
  std::optional<io::CheckpointDirectory::Found> found = dir.load_latest();
  if (!found) return false;
  const io::Checkpoint& c = found->checkpoint;
  const std::string batch_size = metadata_at(c, "batch_size", found->path);
  if (batch_size != std::to_string(job_.train.batch_size)) {
    throw CheckpointError(found->path, c.step,
                          fmt::format("written with batch size {}, the job now has {}; resume with "
                                      "the same batch size or train afresh with --no-resume",
                                      batch_size, job_.train.batch_size));
  }
  try {
    strategy_.model().load_state_dict(c.section("model"), true);
    strategy_.load_optimizer_state(c.section("optimizer"));
  } catch (const UsageError& e) {
    throw CheckpointError(found->path, c.step,
                          fmt::format("does not fit this job's model: {}", e.what()));
  }
  strategy_.sync_replicas();
  position.step = c.step;
  position.epoch = c.epoch;
  position.batch_in_epoch = std::stoll(metadata_at(c, "batch_in_epoch", found->path));
  resumed_part_consumed_.clear();
  if (auto it = c.metadata.find("part_consumed"); it != c.metadata.end()) {
    try {
      resumed_part_consumed_ = parse_counts(it->second);
    } catch (const std::exception&) {
      throw CheckpointError(found->path, c.step,
                            fmt::format("metadata part_consumed '{}' is not a list of counts",
                                        it->second));
    }
  }
  report(position.epoch >= job_.train.epochs
             ? fmt::format("resumed from {}: the run had finished (step {})", found->path, c.step)
             : fmt::format("resumed from {} at step {}: epoch {}, batch {}", found->path, c.step,
                           c.epoch + 1, position.batch_in_epoch + 1));
  return true;
}

void Trainer::save_checkpoint(const Position& position) {
  // The snapshot owns copies of the tensors: training continues while the
  // writer thread encodes and writes it.
  io::Checkpoint c;
  c.step = position.step;
  c.epoch = position.epoch;
  c.metadata["batch_in_epoch"] = std::to_string(position.batch_in_epoch);
  c.metadata["batch_size"] = std::to_string(job_.train.batch_size);
  c.metadata["job"] = job_.name;
  c.metadata["seed"] = std::to_string(job_.seed);
  if (!part_consumed_.empty()) c.metadata["part_consumed"] = join(part_consumed_, ",");
  strategy_.fetch_model();
  c.add_section("model", strategy_.model().state_dict().clone());
  c.add_section("optimizer", strategy_.optimizer_state().clone());
  last_checkpoint_ = Clock::now();
  writer_->submit(std::move(c));
}

void Trainer::reform(Position& position, const std::string& cause) {
  strategy::TrainingPosition p{position.step, position.epoch, position.batch_in_epoch};
  elastic_->reform(p, cause);
  position.step = p.step;
  position.epoch = p.epoch;
  position.batch_in_epoch = p.batch_in_epoch;
}

bool Trainer::checkpoint_due(int64_t step) const {
  const int64_t every_steps = job_.train.checkpoint_every_steps;
  const double every_seconds = job_.train.checkpoint_every_seconds;
  return (every_steps > 0 && step % every_steps == 0) ||
         (every_seconds > 0 && seconds_since(last_checkpoint_) >= every_seconds);
}

std::vector<std::vector<int64_t>> Trainer::make_parts(const data::TensorDataset& train) const {
  data::PartitionOptions p;
  p.kind = job_.data.partition;
  p.workers = strategy_.world_size();
  p.seed = job_.seed;
  p.classes_per_worker = job_.data.classes_per_worker;
  p.alpha = job_.data.dirichlet_alpha;
  p.quantity_sigma = job_.data.quantity_sigma;
  return data::partition(train.labels(), train.num_classes(), p);
}

Summary Trainer::fit(const data::TensorDataset& train, const data::TensorDataset& test) {
  const auto run_start = Clock::now();
  const bool partitioned = !job_.data.partition.empty();
  std::vector<std::vector<int64_t>> parts;
  if (partitioned) parts = make_parts(train);
  const int64_t per_epoch =
      partitioned ? PartitionedEpoch::steps_at_equal_shares(parts, job_.train.batch_size)
                  : steps_per_epoch(train.size());
  if (per_epoch == 0) {
    throw UsageError(fmt::format("no training batches: {} samples, batch size {}{}", train.size(),
                                 job_.train.batch_size, job_.train.drop_last ? " with drop_last" : ""));
  }
  // The schedule's horizon is the whole run (epochs x steps per epoch), not
  // max_steps, so that a run stopped early and resumed follows the same
  // learning rates as one that never stopped.
  const int64_t planned_steps = per_epoch * job_.train.epochs;
  // Partitioned epochs end when the parts are used up, which under dynamic
  // shares may take more steps than planned: only max_steps bounds them.
  int64_t total_steps = partitioned ? std::numeric_limits<int64_t>::max() : planned_steps;
  if (job_.train.max_steps > 0) total_steps = std::min(total_steps, job_.train.max_steps);

  optim::LrScheduleConfig schedule = job_.schedule;
  if (schedule.total_steps == 0) schedule.total_steps = std::max<int64_t>(planned_steps, schedule.warmup_steps + 1);
  schedule_ = optim::make_lr_schedule(schedule, job_.optimizer.lr);

  int64_t rank = strategy_.rank(), world = strategy_.world_size();
  bool chief = rank == 0;
  Position position;
  strategy::TrainingPosition joined;
  elastic_ = strategy_.elastic();
  if (elastic_ != nullptr && elastic_->joined_running_group(joined)) {
    position = {joined.step, joined.epoch, joined.batch_in_epoch};
  } else if (const std::optional<int64_t> step = strategy_.joined_at_step()) {
    // A restarted ps worker: the servers kept the job going; it continues
    // where the job is, not from a checkpoint.
    position = {*step, *step / per_epoch, *step % per_epoch};
    report(fmt::format("joined the running job at step {}: epoch {}, batch {}", *step,
                       position.epoch + 1, position.batch_in_epoch + 1));
  } else if (job_.resume) {
    resume(position);
  } else if (chief) {
    set_aside_earlier_checkpoints();
  }
  writer_.reset();
  // Rank 0 writes the checkpoints. In elastic mode rank and world size
  // change with the group, and a process that becomes rank 0 starts writing.
  auto take_group_role = [&] {
    rank = strategy_.rank(), world = strategy_.world_size(), chief = rank == 0;
    if (chief && !writer_) {
      writer_ = std::make_unique<CheckpointWriter>(
          job_.output, std::max<int64_t>(1, job_.train.keep_checkpoints),
          io::default_file_system(), logger_);
    }
  };
  take_group_role();
  last_checkpoint_ = Clock::now();

  RunInfo info;
  info.job_name = job_.name;
  info.strategy = strategy_.name();
  info.workers = strategy_.replicas();
  info.epochs = job_.train.epochs;
  info.steps_per_epoch = per_epoch;
  info.start_step = position.step;
  info.parameters = strategy_.model().num_parameters();
  info.train_samples = train.size();
  info.test_samples = test.size();
  for (Callback* c : callbacks_) c->on_train_begin(info);

  data::DataLoader loader(train, {job_.train.batch_size, job_.train.drop_last, 2});
  Summary summary;
  double train_seconds = 0.0;
  int64_t train_samples = 0;
  bool stop = position.step >= total_steps;

  while (!stop && position.epoch < job_.train.epochs) {
    const auto epoch_start = Clock::now();
    std::unique_ptr<PartitionedEpoch> part_epoch;
    if (partitioned) {
      part_epoch = std::make_unique<PartitionedEpoch>(parts, rank, job_.seed, position.epoch);
      if (position.batch_in_epoch > 0) {
        if (static_cast<int64_t>(resumed_part_consumed_.size()) == world) {
          part_epoch->skip(resumed_part_consumed_);
        } else {
          report(resumed_part_consumed_.empty()
                     ? fmt::format("the checkpoint has no partition positions (written without "
                                   "data.partition): epoch {} starts afresh",
                                   position.epoch + 1)
                     : fmt::format("the checkpoint's partition positions are for {} workers, "
                                   "this run has {}: epoch {} starts afresh",
                                   resumed_part_consumed_.size(), world, position.epoch + 1));
          position.batch_in_epoch = 0;
        }
      }
      resumed_part_consumed_.clear();
      part_consumed_ = part_epoch->consumed();
    } else {
      std::vector<int64_t> order = data::shuffled_order(train.size(), job_.seed, position.epoch);
      const int64_t skip = std::min<int64_t>(position.batch_in_epoch * job_.train.batch_size,
                                             static_cast<int64_t>(order.size()));
      order.erase(order.begin(), order.begin() + skip);
      loader.start_epoch(std::move(order));
    }
    std::vector<int64_t> last_split;

    Window window, epoch;
    bool reformed = false;  // elastic: the group re-formed; continue from `position`
    while (true) {
      const auto t0 = Clock::now();
      // This process's rows [lo, hi) of `batch`: of the shared global batch
      // (all of it with one process), or everything taken from its part.
      std::optional<data::Batch> batch;
      int64_t lo = 0, hi = 0;
      if (partitioned) {
        if (part_epoch->exhausted()) break;
        last_split = strategy_.batch_split(job_.train.batch_size);
        batch = data::gather_batch(train, part_epoch->take(last_split));
        part_consumed_ = part_epoch->consumed();
        hi = batch->size();
      } else {
        batch = loader.next();
        if (!batch) break;
        last_split = strategy_.batch_split(batch->size());
        std::tie(lo, hi) = strategy_.row_range(batch->size());
      }
      const float lr = schedule_->lr_at(position.step);
      strategy_.set_learning_rate(lr);
      // Gradient accumulation: k micro-batches of those rows, one update.
      const int64_t k = strategy_.accumulation_steps();
      strategy::StepStats mine;
      try {
        for (int64_t m = 0; m < k; ++m) {
          const int64_t a = lo + (hi - lo) * m / k, b = lo + (hi - lo) * (m + 1) / k;
          mine += strategy_.train_step(batch->x.narrow(a, b - a),
                                       std::span<const int64_t>(batch->y).subspan(
                                           static_cast<size_t>(a), static_cast<size_t>(b - a)));
        }
      } catch (const CommError& e) {
        if (elastic_ == nullptr) throw;
        reform(position, e.what());
        reformed = true;
        break;
      }
      const strategy::StepStats stats = strategy_.step_totals(mine);
      const double dt = seconds_since(t0);
      ++position.step;
      ++position.batch_in_epoch;
      for (Window* w : {&window, &epoch}) {
        w->stats += stats;
        w->seconds += dt;
      }
      // The checkpoint of this step is handed over before the step is
      // reported, and handing it over waits for the previous write; the last
      // step (whose checkpoint is written after the loop) waits for it too.
      // So with a checkpoint every step, once step N is reported the
      // checkpoint of step N - 1 is on disk.
      const bool last_step = position.step >= total_steps;
      if (elastic_ != nullptr && !last_step && elastic_->reform_due()) {
        reform(position, "a worker is waiting to join");
        reformed = true;
      }
      if (reformed) take_group_role();
      if (chief && !last_step && checkpoint_due(position.step)) save_checkpoint(position);
      if (chief && last_step) writer_->wait();
      StepInfo s;
      s.step = position.step;
      s.epoch = position.epoch + 1;
      s.step_in_epoch = position.batch_in_epoch;
      s.steps_per_epoch = per_epoch;
      s.lr = lr;
      s.loss = window.loss();
      s.accuracy = window.accuracy();
      s.samples_per_s = window.rate();
      for (Callback* c : callbacks_) c->on_step_end(s);
      if (job_.train.log_every_steps > 0 && position.step % job_.train.log_every_steps == 0) window.reset();
      if (last_step) {
        stop = true;
        break;
      }
      if (reformed) break;
    }
    if (reformed) {
      // The group agreed on `position`: go on from there (the next epoch when
      // it is at this epoch's end).
      take_group_role();
      stop = position.step >= total_steps;
      if (!stop && position.batch_in_epoch < per_epoch) continue;
    }
    train_seconds += epoch.seconds;
    train_samples += epoch.stats.samples;

    const bool epoch_done =
        partitioned ? part_epoch->exhausted() : position.batch_in_epoch >= per_epoch;
    if (chief && world > 1 && !last_split.empty()) {
      const std::vector<int64_t> equal =
          strategy_.Strategy::batch_split(std::accumulate(last_split.begin(), last_split.end(), int64_t{0}));
      if (last_split != equal) {
        report(fmt::format("epoch {}: rows per worker in the last batch: {}", position.epoch + 1,
                           join(last_split, " ")));
      }
    }
    if (epoch_done) {
      ++position.epoch;
      position.batch_in_epoch = 0;
      if (partitioned) part_consumed_.assign(static_cast<size_t>(world), 0);
    }
    // Every process holds the same weights: the chief evaluates and writes.
    if (chief) strategy_.fetch_model();
    const EvalResult eval = chief ? evaluate(strategy_.model(), test, job_.train.eval_batch_size) : EvalResult{};
    if (chief) save_checkpoint(position);
    EpochInfo e;
    e.epoch = epoch_done ? position.epoch : position.epoch + 1;
    e.step = position.step;
    e.train_loss = epoch.loss();
    e.train_accuracy = epoch.accuracy();
    e.test_loss = eval.loss;
    e.test_accuracy = eval.accuracy;
    e.samples_per_s = epoch.rate();
    e.seconds = seconds_since(epoch_start);
    for (Callback* c : callbacks_) c->on_epoch_end(e);
    summary.test_loss = eval.loss;
    summary.test_accuracy = eval.accuracy;
    summary.best_test_accuracy = std::max(summary.best_test_accuracy, eval.accuracy);
    summary.epochs = e.epoch;
  }
  if (summary.epochs == 0 && chief) {
    // Nothing left to train (a finished run resumed): report where it stands.
    strategy_.fetch_model();
    const EvalResult eval = evaluate(strategy_.model(), test, job_.train.eval_batch_size);
    summary.test_loss = eval.loss;
    summary.test_accuracy = summary.best_test_accuracy = eval.accuracy;
    summary.epochs = position.epoch;
  }

  if (chief) {
    // The last checkpoint is on disk (or its error thrown) before the final
    // weights are written and fit() returns.
    writer_->wait();
    writer_.reset();
    io::default_file_system().create_directories(job_.output);
    summary.weights_path = job_.output + "/model.safetensors";
    strategy_.fetch_model();
    io::save_safetensors(strategy_.model().state_dict(), summary.weights_path);
  }
  summary.steps = position.step;
  summary.samples_per_s = train_seconds > 0 ? double(train_samples) / train_seconds : 0.0;
  summary.seconds = seconds_since(run_start);
  for (Callback* c : callbacks_) c->on_train_end(summary);
  return summary;
}

}  // namespace dtrain::train
