#include "train/trainer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <tuple>

#include "autograd/functions.h"
#include "core/error.h"
#include "core/trace.h"
#include "data/loader.h"
#include "data/partition.h"
#include "data/sampler.h"
#include "io/checkpoint.h"
#include "io/file_system.h"
#include "io/safetensors.h"
#include "nn/sequential.h"
#include "tensor/state_dict.h"
#include "train/partitioned_epoch.h"

namespace dtrain::train {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double mean_loss(const strategy::StepStats& s) {
  return s.samples ? s.loss_sum / double(s.samples) : 0.0;
}
double accuracy(const strategy::StepStats& s) {
  return s.samples ? double(s.correct) / double(s.samples) : 0.0;
}
double rate(const strategy::StepStats& s, double seconds) {
  return seconds > 0 ? double(s.samples) / seconds : 0.0;
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
    : job_(job), strategy_(strategy), logger_(logger) {
  if (job_.compression.guard.enabled && strategy_.reduces_communication()) {
    guard_ = std::make_unique<ConvergenceGuard>(job_.compression.guard);
  }
}

int64_t Trainer::steps_per_epoch(int64_t train_samples) const {
  return data::DataLoader::batch_count(train_samples, job_.train.batch_size, job_.train.drop_last);
}

void Trainer::report(const std::string& message) {
  if (callbacks_.empty()) logger_.info("{}", message);
  for (Callback* c : callbacks_) c->on_message(message);
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
  p.shards_per_worker = job_.data.shards_per_worker;
  return data::partition(train.labels(), train.num_classes(), p);
}

Trainer::RunPlan Trainer::plan_run(const data::TensorDataset& train) const {
  RunPlan plan;
  plan.partitioned = !job_.data.partition.empty();
  if (plan.partitioned) plan.parts = make_parts(train);
  plan.per_epoch = plan.partitioned
                       ? PartitionedEpoch::steps_at_equal_shares(plan.parts, job_.train.batch_size)
                       : steps_per_epoch(train.size());
  if (plan.per_epoch == 0) {
    throw UsageError(fmt::format("no training batches: {} samples, batch size {}{}", train.size(),
                                 job_.train.batch_size,
                                 job_.train.drop_last ? " with drop_last" : ""));
  }
  // The schedule's horizon is the whole run (epochs x steps per epoch), not
  // max_steps, so that a run stopped early and resumed follows the same
  // learning rates as one that never stopped.
  plan.planned_steps = plan.per_epoch * job_.train.epochs;
  // Partitioned epochs end when the parts are used up, which under dynamic
  // shares may take more steps than planned: only max_steps bounds them.
  plan.total_steps = plan.partitioned ? std::numeric_limits<int64_t>::max() : plan.planned_steps;
  if (job_.train.max_steps > 0) plan.total_steps = std::min(plan.total_steps, job_.train.max_steps);
  return plan;
}

Trainer::Position Trainer::starting_position(const RunPlan& plan,
                                             const data::TensorDataset& train) {
  // First: the chief of a fresh run moves files.
  if (output_lock_ != nullptr) output_lock_->follow(chief_);
  Position position;
  strategy::TrainingPosition joined;
  if (elastic_ != nullptr && elastic_->joined_running_group(joined)) {
    position = {joined.step, joined.epoch, joined.batch_in_epoch};
  } else if (const std::optional<int64_t> step = strategy_.joined_at_step()) {
    // A restarted ps worker: the servers kept the job going; it continues
    // where the job is, not from a checkpoint.
    position = {*step, *step / plan.per_epoch, *step % plan.per_epoch};
    report(fmt::format("joined the running job at step {}: epoch {}, batch {}", *step,
                       position.epoch + 1, position.batch_in_epoch + 1));
  } else if (job_.resume) {
    resume(position, plan, train);
  } else if (chief_) {
    set_aside_earlier_checkpoints();
  } else {
    // An earlier run's rank states must not pass for this run's.
    io::FileSystem& fs = io::default_file_system();
    const io::CheckpointDirectory dir(fmt::format("{}/rank-{}", job_.output, rank_), 1, fs,
                                      logger_);
    try {
      for (const int64_t step : dir.steps()) fs.remove_file(dir.path_for(step));
    } catch (const std::exception&) {  // NOLINT(bugprone-empty-catch): nothing there to remove
    }
  }
  return position;
}

void Trainer::take_group_role() {
  rank_ = strategy_.rank();
  world_ = strategy_.world_size();
  chief_ = rank_ == 0;
  if (!chief_ && writer_) {
    // Demoted by a re-formation: the new rank 0 writes from now on, once
    // this process's last write is done and the folder's lock is free.
    writer_->wait();
    writer_.reset();
  }
  if (output_lock_ != nullptr) output_lock_->follow(chief_);
  if (chief_ && !writer_) {
    writer_ = std::make_unique<CheckpointWriter>(job_.output,
                                                 std::max<int64_t>(1, job_.train.keep_checkpoints),
                                                 io::default_file_system(), logger_, trace_);
  }
  // An elastic group's model is a new one after each re-formation.
  if (auto* model = dynamic_cast<nn::Sequential*>(&strategy_.model())) model->set_trace(trace_);
}

std::optional<StepBatch> Trainer::next_batch(EpochBatches* batches, const Position& position,
                                             const RunPlan& plan) {
  if (batches == nullptr) {
    // DP-SGD draws its own Poisson batch: the epoch only counts its steps.
    if (position.batch_in_epoch >= plan.per_epoch) return std::nullopt;
    if (trace_ != nullptr) trace_->set_step(position.step + 1);
    return StepBatch{};
  }
  if (trace_ == nullptr) return batches->next();
  trace_->set_step(position.step + 1);
  TraceSpan span(trace_, "batch", "data");
  return batches->next();
}

EpochBatches Trainer::epoch_batches(const data::TensorDataset& train, data::DataLoader& loader,
                                    const RunPlan& plan, Position& position) {
  if (!plan.partitioned) {
    return EpochBatches(train, loader, strategy_, job_.seed, position.epoch, job_.train.batch_size,
                        position.batch_in_epoch);
  }
  std::vector<int64_t> consumed;
  if (position.batch_in_epoch > 0) {
    if (static_cast<int64_t>(resumed_part_consumed_.size()) == world_) {
      consumed = resumed_part_consumed_;
    } else {
      report(resumed_part_consumed_.empty()
                 ? fmt::format("the checkpoint has no partition positions (written without "
                               "data.partition): epoch {} starts afresh",
                               position.epoch + 1)
                 : fmt::format("the checkpoint's partition positions are for {} workers, "
                               "this run has {}: epoch {} starts afresh",
                               resumed_part_consumed_.size(), world_, position.epoch + 1));
      position.batch_in_epoch = 0;
    }
  }
  resumed_part_consumed_.clear();
  EpochBatches batches(train, plan.parts, strategy_, job_.seed, position.epoch,
                       job_.train.batch_size, consumed);
  part_consumed_ = batches.consumed();
  return batches;
}

void Trainer::look_ahead(EpochBatches* batches) {
  if (batches == nullptr || dp_ != nullptr || strategy_.accumulation_steps() != 1 ||
      !strategy_.wants_next_inputs()) {
    return;
  }
  TraceSpan span(trace_, "batch", "data");
  const StepBatch* next = batches->peek();
  if (next == nullptr || next->hi <= next->lo) return;
  strategy_.prefetch(next->batch.x.narrow(next->lo, next->hi - next->lo));
}

std::optional<strategy::StepStats> Trainer::run_step(const StepBatch& step, Position& position) {
  // Gradient accumulation: k micro-batches of this process's rows, one update.
  const int64_t k = strategy_.accumulation_steps();
  const int64_t lo = step.lo, hi = step.hi;
  strategy::StepStats mine;
  try {
    if (dp_ != nullptr) mine = dp_->step(position.step);
    for (int64_t m = 0; dp_ == nullptr && m < k; ++m) {
      const int64_t a = lo + (hi - lo) * m / k, b = lo + (hi - lo) * (m + 1) / k;
      mine +=
          strategy_.train_step(step.batch.x.narrow(a, b - a),
                               std::span<const int64_t>(step.batch.y)
                                   .subspan(static_cast<size_t>(a), static_cast<size_t>(b - a)));
    }
  } catch (const CommError& e) {
    if (elastic_ == nullptr) throw;
    reform(position, e.what());
    return std::nullopt;
  } catch (const NumericError& e) {
    if (guard_ != nullptr) {
      strategy::StepStats diverged;
      diverged.loss_sum = std::numeric_limits<double>::quiet_NaN();
      return diverged;
    }
    throw NumericError(fmt::format(
        "step {} (epoch {}, batch {}): {}: training stops before this update; the checkpoints "
        "on disk are finite. A learning rate too high (optimizer.lr = {}) is the usual cause",
        position.step + 1, position.epoch + 1, position.batch_in_epoch + 1, e.what(),
        job_.optimizer.lr));
  }
  const strategy::StepStats totals = strategy_.step_totals(mine);
  if (!std::isfinite(totals.loss_sum) && guard_ == nullptr) {
    throw NumericError(fmt::format(
        "step {} (epoch {}, batch {}): the loss is not finite ({}): training stops; the "
        "checkpoints on disk are finite. A learning rate too high (optimizer.lr = {}) is the "
        "usual cause",
        position.step + 1, position.epoch + 1, position.batch_in_epoch + 1, totals.loss_sum,
        job_.optimizer.lr));
  }
  return totals;
}

bool Trainer::after_step(Position& position, float lr, const RunPlan& plan, bool last_step,
                         const std::vector<int64_t>& split) {
  // The checkpoint of this step is handed over before the step is reported,
  // and handing it over waits for the previous write; the last step (whose
  // checkpoint is written at the epoch's end) waits for it too. So with a
  // checkpoint every step, once step N is reported the checkpoint of step
  // N - 1 is on disk.
  bool reformed = false;
  if (elastic_ != nullptr && !last_step && elastic_->reform_due()) {
    reform(position, "a worker is waiting to join");
    reformed = true;
    take_group_role();
  }
  if (chief_ && !last_step && checkpoint_due(position.step)) save_checkpoint(position);
  const int64_t every_steps = job_.train.checkpoint_every_steps;
  if (!chief_ && !last_step && every_steps > 0 && position.step % every_steps == 0) {
    save_rank_state(position);
  }
  if (chief_ && last_step) writer_->wait();
  StepInfo s;
  s.step = position.step;
  s.epoch = position.epoch + 1;
  s.step_in_epoch = position.batch_in_epoch;
  s.steps_per_epoch = plan.per_epoch;
  s.lr = lr;
  s.loss = mean_loss(window_.stats);
  s.accuracy = accuracy(window_.stats);
  s.samples_per_s = rate(window_.stats, window_.seconds);
  if (window_.updates > 0) s.bytes_per_step = window_.bytes / double(window_.updates);
  if (window_.bytes > 0.0) s.compression_ratio = window_.dense_bytes / window_.bytes;
  if (world_ > 1) s.split = split;
  const bool report_step =
      job_.train.log_every_steps > 0 && position.step % job_.train.log_every_steps == 0;
  if (chief_ && report_step) s.extra = strategy_.report_metrics();
  for (Callback* c : callbacks_) c->on_step_end(s);
  if (report_step) window_ = {};
  return reformed;
}

Trainer::EpochEnd Trainer::run_epoch(const data::TensorDataset& train, data::DataLoader& loader,
                                     const RunPlan& plan, Position& position) {
  EpochEnd end;
  end.started = Clock::now();
  // Under DP-SGD no ordinary batch is loaded (DpSgd samples its own).
  std::optional<EpochBatches> batches;
  if (dp_ == nullptr) batches.emplace(epoch_batches(train, loader, plan, position));
  EpochBatches* source = batches ? &*batches : nullptr;
  while (std::optional<StepBatch> step = next_batch(source, position, plan)) {
    if (dp_ != nullptr) {
      if (std::optional<std::string> stop = dp_->budget_stop(position.step)) {
        report(*stop);
        end.run_over = true;
        break;
      }
    }
    const auto t0 = Clock::now();
    if (plan.partitioned) part_consumed_ = batches->consumed();
    end.last_split = step->split;
    const float lr = schedule_->lr_at(position.step);
    strategy_.set_learning_rate(lr);
    TraceSpan step_span(trace_, "step", "step");
    step_span.arg("step", position.step + 1);
    if (position.step + 1 < plan.total_steps) look_ahead(source);
    const std::optional<strategy::StepStats> stats = run_step(*step, position);
    step_span.end();
    if (!stats) {  // the group re-formed at `position`
      end.reformed = true;
      take_group_role();
      break;
    }
    const double dt = seconds_since(t0);
    ++position.step;
    ++position.batch_in_epoch;
    if (guard_ == nullptr || guard_update(position.step, *stats)) {
      const strategy::CommStats comm = strategy_.last_comm();
      window_.add(*stats, dt, comm);
      end.steps.add(*stats, dt, comm);
    }
    const bool last_step = position.step >= plan.total_steps;
    end.reformed = after_step(position, lr, plan, last_step, step->split);
    if (last_step) {
      end.run_over = true;
      break;
    }
    if (end.reformed) break;
  }
  end.exhausted =
      plan.partitioned && batches ? batches->done() : position.batch_in_epoch >= plan.per_epoch;
  return end;
}

void Trainer::end_epoch(const data::TensorDataset& test, const EpochEnd& end, Position& position,
                        Summary& summary) {
  if (chief_ && world_ > 1 && !end.last_split.empty()) {
    const int64_t rows = std::accumulate(end.last_split.begin(), end.last_split.end(), int64_t{0});
    if (end.last_split != strategy_.Strategy::batch_split(rows)) {
      report(fmt::format("epoch {}: rows per worker in the last batch: {}", position.epoch + 1,
                         fmt::join(end.last_split, " ")));
    }
  }
  if (end.exhausted) {
    ++position.epoch;
    position.batch_in_epoch = 0;
    if (!part_consumed_.empty()) part_consumed_.assign(static_cast<size_t>(world_), 0);
  }
  // Every process holds the same weights: the chief evaluates and writes.
  if (chief_) strategy_.fetch_model();
  TraceSpan eval_span(chief_ ? trace_ : nullptr, "evaluate", "eval");
  const EvalResult eval =
      chief_ ? evaluate(strategy_.model(), test, job_.train.eval_batch_size) : EvalResult{};
  std::vector<ModelEval> extra;
  if (chief_) {
    for (const auto& [name, model] : strategy_.extra_eval_models()) {
      const EvalResult r = evaluate(*model, test, job_.train.eval_batch_size);
      extra.push_back(ModelEval{name, r.loss, r.accuracy});
    }
  }
  eval_span.end();
  if (chief_) save_checkpoint(position);
  if (!chief_) save_rank_state(position);
  EpochInfo e;
  e.epoch = end.exhausted ? position.epoch : position.epoch + 1;
  e.step = position.step;
  e.train_loss = mean_loss(end.steps.stats);
  e.train_accuracy = accuracy(end.steps.stats);
  e.test_loss = eval.loss;
  e.test_accuracy = eval.accuracy;
  e.samples_per_s = rate(end.steps.stats, end.steps.seconds);
  e.seconds = seconds_since(end.started);
  e.extra = std::move(extra);
  if (dp_ != nullptr) {
    const privacy::PrivacySpent spent = dp_->spent();
    e.epsilon = spent.balle;
    e.epsilon_classic = spent.classic;
    e.delta = dp_->delta();
  }
  for (Callback* c : callbacks_) c->on_epoch_end(e);
  summary.test_loss = eval.loss;
  summary.test_accuracy = eval.accuracy;
  summary.best_test_accuracy = std::max(summary.best_test_accuracy, eval.accuracy);
  summary.epochs = e.epoch;
}

Summary Trainer::fit(const data::TensorDataset& train, const data::TensorDataset& test) {
  const auto run_start = Clock::now();
  if (trace_ != nullptr) trace_->name_thread("main");
  const RunPlan plan = plan_run(train);
  optim::LrScheduleConfig schedule = job_.schedule;
  if (schedule.total_steps == 0) {
    schedule.total_steps = std::max<int64_t>(plan.planned_steps, schedule.warmup_steps + 1);
  }
  schedule_ = optim::make_lr_schedule(schedule, job_.optimizer.lr);
  elastic_ = strategy_.elastic();
  writer_.reset();
  rank_ = strategy_.rank(), world_ = strategy_.world_size(), chief_ = rank_ == 0;
  dp_.reset();
  if (job_.privacy.enabled) {
    dp_ = std::make_unique<DpSgd>(job_, strategy_, train,
                                  std::min(plan.planned_steps, plan.total_steps));
    report(dp_->description());
  }
  Position position = starting_position(plan, train);
  take_group_role();
  if (guard_ != nullptr) take_snapshot(position.step);
  last_checkpoint_ = Clock::now();

  RunInfo info;
  info.job_name = job_.name;
  info.strategy = strategy_.name();
  info.workers = strategy_.replicas();
  info.epochs = job_.train.epochs;
  info.steps_per_epoch = plan.per_epoch;
  info.start_step = position.step;
  info.parameters = strategy_.model().num_parameters();
  info.train_samples = train.size();
  info.test_samples = test.size();
  for (Callback* c : callbacks_) c->on_train_begin(info);

  data::DataLoader loader(train, {job_.train.batch_size, job_.train.drop_last, 2});
  Summary summary;
  Window trained;  // every step of the run
  window_ = {};
  while (position.step < plan.total_steps && position.epoch < job_.train.epochs) {
    const EpochEnd end = run_epoch(train, loader, plan, position);
    trained.stats += end.steps.stats;
    trained.seconds += end.steps.seconds;
    // A group that re-formed mid-epoch goes on from the position it agreed on.
    if (end.reformed && !end.run_over && position.step < plan.total_steps &&
        position.batch_in_epoch < plan.per_epoch) {
      continue;
    }
    end_epoch(test, end, position, summary);
    if (end.run_over) break;
  }
  if (summary.epochs == 0 && chief_) {
    // Nothing left to train (a finished run resumed): report where it stands.
    strategy_.fetch_model();
    const EvalResult eval = evaluate(strategy_.model(), test, job_.train.eval_batch_size);
    summary.test_loss = eval.loss;
    summary.test_accuracy = summary.best_test_accuracy = eval.accuracy;
    summary.epochs = position.epoch;
  }
  if (rank_writer_ != nullptr) {
    rank_writer_->wait();
    rank_writer_.reset();
  }
  if (chief_) {
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
  summary.samples_per_s = rate(trained.stats, trained.seconds);
  summary.seconds = seconds_since(run_start);
  for (Callback* c : callbacks_) c->on_train_end(summary);
  return summary;
}

}  // namespace dtrain::train
