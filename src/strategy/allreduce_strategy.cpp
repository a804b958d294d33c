#include "strategy/allreduce_strategy.h"

#include <fmt/format.h>

#include <algorithm>
#include <string_view>

#include "autograd/functions.h"
#include "comm/collectives/clock_offset.h"
#include "core/error.h"
#include "core/scheduler_slice.h"
#include "core/trace.h"

namespace dtrain::strategy {
namespace {

// Bucket 0's header: this worker's window totals, summed by the allreduce.
constexpr size_t kHeaderSamples = 0;
constexpr size_t kHeaderLossSum = 1;
constexpr size_t kHeaderCorrect = 2;
constexpr size_t kHeaderFloats = 3;

double seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

void check_options(const AllReduceOptions& options) {
  if (options.accumulation_steps < 1) {
    throw UsageError(
        fmt::format("allreduce strategy: accumulation_steps must be at least 1, got {}",
                    options.accumulation_steps));
  }
  if (options.comm_thread_slice.count() < 0) {
    throw UsageError(
        fmt::format("allreduce strategy: comm_thread_slice must be at least 0, got {} us",
                    options.comm_thread_slice.count()));
  }
  if (options.timeout.count() <= 0) {
    throw UsageError(fmt::format("allreduce strategy: timeout must be positive, got {} ms",
                                 options.timeout.count()));
  }
}

}  // namespace

AllReduceStrategy::AllReduceStrategy(std::unique_ptr<nn::Module> model,
                                     const OptimizerFactory& make_optimizer,
                                     comm::Communicator& comm, AllReduceOptions options,
                                     LossFn loss)
    : AllReduceStrategy(std::move(model), make_optimizer, comm, &comm, options, std::move(loss)) {}

AllReduceStrategy::AllReduceStrategy(std::unique_ptr<nn::Module> model,
                                     const OptimizerFactory& make_optimizer,
                                     comm::Collectives& collectives, AllReduceOptions options,
                                     LossFn loss)
    : AllReduceStrategy(std::move(model), make_optimizer, collectives, nullptr, options,
                        std::move(loss)) {}

AllReduceStrategy::AllReduceStrategy(std::unique_ptr<nn::Module> model,
                                     const OptimizerFactory& make_optimizer,
                                     comm::Collectives& collectives, comm::Communicator* async,
                                     AllReduceOptions options, LossFn loss)
    : model_(std::move(model)),
      collectives_(collectives),
      async_(async),
      options_(options),
      loss_(std::move(loss)),
      balancer_(collectives.size(), options.dynamic_batch) {
  if (model_ == nullptr) throw UsageError("allreduce strategy: no model given");
  check_options(options_);
  header_floats_ =
      kHeaderFloats +
      (options_.dynamic_batch.enabled ? 2 * static_cast<size_t>(collectives_.size()) : size_t{0});
  params_ = model_->parameters();
  optimizer_ = make_optimizer(params_);
  std::vector<int64_t> numels;
  numels.reserve(params_.size());
  for (const Variable& p : params_) numels.push_back(p.numel());
  bucketer_ = std::make_unique<CoalescingBucketer>(
      numels, std::min(options_.first_bucket_bytes, options_.bucket_bytes), options_.bucket_bytes,
      options_.last_bucket_bytes, header_floats_,
      [this](size_t bucket, std::span<float> data) { launch(bucket, data); });
  const size_t buckets = bucketer_->bucket_count();
  settings_ = options_.compression;
  if (settings_.active()) {
    if (async_ == nullptr) {
      throw UsageError(
          "allreduce strategy: compression and local SGD need dtrain's communicator, not the "
          "MPI backend");
    }
    if (settings_.compresses() && settings_.local_sgd()) {
      throw UsageError(
          "allreduce strategy: local SGD (local_steps > 1) averages models, it does not combine "
          "with a gradient compressor");
    }
    if (settings_.local_sgd() && options_.dynamic_batch.enabled) {
      throw UsageError("allreduce strategy: local SGD does not combine with dynamic batch sizing");
    }
    build_reducer();
  }
  works_.resize(buckets);
  pending_.resize(buckets);
  launched_at_.resize(buckets);
  completed_at_.resize(buckets);
  executed_from_.resize(buckets);
  executed_to_.resize(buckets);

  try {
    if (async_ != nullptr && options_.comm_thread_slice.count() > 0) {
      async_
          ->submit("scheduler slice",
                   [slice = options_.comm_thread_slice] { request_scheduler_slice(slice); })
          .wait(Deadline::after(options_.timeout));
    }
    if (options_.trace != nullptr && async_ != nullptr) {
      async_->set_trace(options_.trace);
      TraceSpan span(options_.trace, "clock_sync", "setup");
      const comm::ClockOffset clock = comm::measure_clock_offset(*async_);
      options_.trace->set_clock_offset(clock.offset_us, clock.rtt_us);
    }
    broadcast_state(true);
  } catch (const CommError& e) {
    failure_ = e.what();
    throw;
  }

  // Hooks capture `this`; the destructor removes them, so a parameter handle
  // that outlives the strategy never calls into a dead one.
  for (size_t i = 0; i < params_.size(); ++i) {
    hook_ids_.push_back(params_[i].register_grad_ready_hook([this, i](Variable& p) {
      if (!hooks_armed_) return;
      const Tensor& grad = p.dense_grad();  // folds a row-sparse gradient
      bucketer_->mark_ready(i, grad.span());
      poll_completions();
    }));
  }
}

AllReduceStrategy::~AllReduceStrategy() {
  wait_in_flight();
  if (options_.trace != nullptr && async_ != nullptr) async_->set_trace(nullptr);
  for (size_t i = 0; i < hook_ids_.size(); ++i) params_[i].remove_grad_ready_hook(hook_ids_[i]);
}

void AllReduceStrategy::wait_in_flight() noexcept {
  if (async_ == nullptr) return;
  // Launched work reads and writes the bucket buffers: wait for all of it
  // (each operation is bounded by the communicator's timeout, and fails at
  // once when the communicator failed earlier).
  for (size_t b = 0; b < bucketer_->launched(); ++b) {
    try {
      works_[b].wait(Deadline::never());
    } catch (...) {  // NOLINT(bugprone-empty-catch): reported by the train_step that failed
    }
  }
}

void AllReduceStrategy::check_usable(const char* what) const {
  if (!failure_.empty()) {
    throw CommError(-1, fmt::format("allreduce strategy {}", what),
                    fmt::format("allreduce strategy failed earlier: {}; rebuild the communicator "
                                "and the strategy",
                                failure_));
  }
}

size_t AllReduceStrategy::floats_per_update() const {
  size_t total = 0;
  for (size_t b = 0; b < bucketer_->bucket_count(); ++b) total += bucketer_->bucket_floats(b);
  return total;
}

void AllReduceStrategy::build_reducer() {
  reducer_.reset();
  if (!settings_.compresses()) return;
  std::vector<Shape> shapes;
  shapes.reserve(params_.size());
  for (const Variable& p : params_) shapes.push_back(p.shape());
  reducer_ = std::make_unique<CompressedReducer>(settings_.codec, shapes, *bucketer_, *async_);
}

void AllReduceStrategy::set_communication_level(int level) {
  if (!options_.compression.active() || level == level_) return;
  level_ = std::max(0, level);
  settings_ = options_.compression.weakened(level_);
  build_reducer();  // a fresh compressor: the old residuals belong to another setting
}

uint64_t AllReduceStrategy::dense_update_bytes() const {
  const auto w = static_cast<uint64_t>(collectives_.size());
  if (w <= 1) return 0;
  return floats_per_update() * sizeof(float) * 2 * (w - 1) / w;
}

void AllReduceStrategy::launch(size_t bucket, std::span<float> data) {
  const auto now = Clock::now();
  launched_at_[bucket] = now;
  if (options_.trace != nullptr && options_.trace->recording()) {
    options_.trace->async_begin("bucket", "allreduce", bucket, trace_now_us());
  }
  if (async_ == nullptr) {
    pending_[bucket] = data;  // allreduced, blocking, after backward
    return;
  }
  if (compressing_ && reducer_->compresses_bucket(bucket)) {
    works_[bucket] = reducer_->launch(bucket, data, run_updates_ - settings_.start_step);
  } else {
    // Through submit() rather than allreduce_async() to time the execution
    // itself on the communicator's thread (the same allreduce, run inline).
    works_[bucket] = async_->submit("bucket allreduce", [this, bucket, data] {
      executed_from_[bucket] = Clock::now();
      async_->allreduce(data, comm::ReduceOp::kSum);
      executed_to_[bucket] = Clock::now();
    });
  }
  if (in_backward_) ++overlap_.launched_in_backward;
}

void AllReduceStrategy::poll_completions() {
  if (async_ == nullptr) return;
  // Operations complete in launch order.
  while (completions_seen_ < bucketer_->launched() && works_[completions_seen_].is_completed()) {
    if (options_.trace != nullptr) {
      options_.trace->async_end("bucket", "allreduce", completions_seen_, trace_now_us());
    }
    completed_at_[completions_seen_++] = Clock::now();
  }
}

StepStats AllReduceStrategy::train_step(const Tensor& inputs, std::span<const int64_t> targets) {
  check_usable("train_step");
  const auto n = static_cast<int64_t>(targets.size());
  check_batch(inputs, targets, /*allow_empty=*/true);
  updated_ = false;
  if (micro_step_ == 0) {
    optimizer_->zero_grad();
    window_ = {};
    window_compute_s_ = 0.0;
  }
  const bool communicate = micro_step_ + 1 == options_.accumulation_steps;

  // Forward: an error here changes nothing (no gradient was touched).
  StepStats mine;
  Variable output;
  Variable loss;
  const auto compute_start = Clock::now();
  if (n > 0) {
    model_->train();
    TraceSpan span(options_.trace, "forward", "step");
    output = model_->forward(Variable(inputs));
    loss = loss_(output, targets);
    mine = {static_cast<double>(loss.item()) * static_cast<double>(n),
            count_correct(output.data(), targets), n};
  }
  window_ += mine;

  const bool local = settings_.local_sgd() && settings_.started(run_updates_);
  if (communicate && !local) begin_pass();
  try {
    if (n > 0) {
      // Backward of the SUM loss: the gradients add up over micro-batches and
      // workers; dividing by sum_i n_i at the end gives the weighted mean.
      hooks_armed_ = communicate && !local;
      in_backward_ = true;
      const auto backward_start = Clock::now();
      {
        TraceSpan span(options_.trace, "backward", "step");
        mul_scalar(loss, static_cast<float>(n)).backward(options_.trace);
      }
      const auto backward_end = Clock::now();
      backward_end_ = backward_end;
      if (communicate && !local) overlap_.backward_s = seconds(backward_end - backward_start);
      hooks_armed_ = false;
      in_backward_ = false;
      window_compute_s_ += account_compute(seconds(backward_end - compute_start), n);
    }
  } catch (...) {
    hooks_armed_ = false;
    in_backward_ = false;
    if (communicate && !local && bucketer_->launched() > 0) {
      failure_ =
          "backward failed after buckets were launched; the workers' collectives no "
          "longer line up";
    }
    throw;
  }
  if (!communicate) {
    ++micro_step_;
    return mine;
  }
  end_window(local);
  return mine;
}

void AllReduceStrategy::end_window(bool local) {
  micro_step_ = 0;
  // One call's mean: the balancer's model is per train_step() call, each
  // paying the fixed cost once.
  const auto calls = static_cast<double>(options_.accumulation_steps);
  const bool measured = window_.samples > 0 && window_compute_s_ > 0.0;
  last_call_rows_ = measured ? static_cast<double>(window_.samples) / calls : 0.0;
  last_call_seconds_ = measured ? window_compute_s_ / calls : 0.0;
  try {
    if (local) {
      const int64_t since = run_updates_ - settings_.start_step;
      local_update((since + 1) % settings_.local_steps == 0);
      return;
    }
    if (overlaps_update()) {
      update_by_bucket();
    } else {
      complete_allreduce();
      apply_update();
    }
  } catch (const NumericError&) {
    // The averaged gradient is the same on every worker, so every worker
    // stops here alike: the collectives still line up.
    if (local) failure_ = "a local update failed; the workers' averagings no longer line up";
    throw;
  } catch (const std::exception& e) {
    // CommError from the communicator, or a broken invariant: either way the
    // bucket buffers and the group's collective sequence cannot be trusted.
    failure_ = e.what();
    throw;
  }
}

void AllReduceStrategy::begin_pass() {
  bucketer_->begin_pass();
  std::span<float> header = bucketer_->header();
  header[kHeaderSamples] = static_cast<float>(window_.samples);
  header[kHeaderLossSum] = static_cast<float>(window_.loss_sum);
  header[kHeaderCorrect] = static_cast<float>(window_.correct);
  if (options_.dynamic_batch.enabled) {
    // The previous window's rows and seconds per call in this rank's slots
    // (rows at kHeaderFloats + rank, seconds W floats further), zeros
    // elsewhere: the sum gives every worker every worker's measurement.
    const auto workers = static_cast<size_t>(collectives_.size());
    const auto rank = static_cast<size_t>(collectives_.rank());
    std::fill(header.begin() + kHeaderFloats, header.end(), 0.0f);
    header[kHeaderFloats + rank] = static_cast<float>(last_call_rows_);
    header[kHeaderFloats + workers + rank] = static_cast<float>(last_call_seconds_);
  }
  std::fill(works_.begin(), works_.end(), comm::Work());
  compressing_ = reducer_ != nullptr && settings_.started(run_updates_);
  if (async_ != nullptr) bytes_at_pass_ = async_->bytes_sent();
  completions_seen_ = 0;
  overlap_ = {};
  overlap_.buckets = static_cast<int64_t>(bucketer_->bucket_count());
}

void AllReduceStrategy::complete_allreduce(const std::function<void(size_t)>& on_complete) {
  const auto wait_start = Clock::now();
  TraceSpan span(options_.trace, "wait", "step");
  // Parameters whose hook did not fire in this backward: unused in this
  // forward (their gradient may still come from earlier micro-batches), or
  // every parameter on a worker without rows.
  for (size_t i = 0; i < params_.size(); ++i) {
    if (bucketer_->is_marked(i)) continue;
    if (params_[i].has_grad()) {
      bucketer_->mark_ready(i, params_[i].dense_grad().span());
    } else {
      bucketer_->mark_absent(i);
    }
  }
  bucketer_->mark_rest_absent();
  DTRAIN_CHECK(bucketer_->all_launched(), "{} of {} buckets launched", bucketer_->launched(),
               bucketer_->bucket_count());

  const size_t buckets = bucketer_->bucket_count();
  double updating_s = 0.0;  // in on_complete: not waiting
  const auto completed = [&](size_t b) {
    if (!on_complete) return;
    const auto start = Clock::now();
    on_complete(b);
    updating_s += seconds(Clock::now() - start);
  };
  if (async_ != nullptr) {
    const Deadline deadline = Deadline::after(options_.timeout);
    for (size_t b = 0; b < buckets; ++b) {
      try {
        works_[b].wait(deadline);
      } catch (const TimeoutError& e) {
        if (e.operation() != "Work::wait") throw;  // the communicator's own, naming the peer
        throw TimeoutError(-1, fmt::format("allreduce strategy: bucket {} of {}", b, buckets),
                           options_.timeout,
                           fmt::format("the allreduce of {} floats", bucketer_->bucket_floats(b)));
      }
      if (b >= completions_seen_) {
        completed_at_[b] = Clock::now();
        completions_seen_ = b + 1;
        if (options_.trace != nullptr) {
          options_.trace->async_end("bucket", "allreduce", b, trace_now_us());
        }
      }
      completed(b);
      poll_completions();  // those that ended meanwhile: their completion times
    }
  } else {
    for (size_t b = 0; b < buckets; ++b) {
      launched_at_[b] = Clock::now();
      collectives_.allreduce(pending_[b], comm::ReduceOp::kSum);
      completed_at_[b] = Clock::now();
      completed(b);
    }
  }
  overlap_.wait_s = seconds(Clock::now() - wait_start) - updating_s;
  last_comm_ = {async_ != nullptr ? async_->bytes_sent() - bytes_at_pass_ : 0,
                dense_update_bytes()};
  // The operations run one after another: each starts at its launch or at
  // its predecessor's completion, whichever is later.
  double busy = 0.0;
  for (size_t b = 0; b < buckets; ++b) {
    const auto start = b == 0 ? launched_at_[0] : std::max(launched_at_[b], completed_at_[b - 1]);
    busy += std::max(0.0, seconds(completed_at_[b] - start));
  }
  overlap_.allreduce_s = busy;
  if (async_ != nullptr && !compressing_) measure_execution(buckets);
}

void AllReduceStrategy::measure_execution(size_t buckets) {
  double executed = 0.0;
  double hidden = 0.0;
  for (size_t b = 0; b < buckets; ++b) {
    executed += seconds(executed_to_[b] - executed_from_[b]);
    if (b < static_cast<size_t>(overlap_.launched_in_backward)) {
      hidden +=
          std::max(0.0, seconds(std::min(executed_to_[b], backward_end_) - executed_from_[b]));
    }
  }
  overlap_.allreduce_s = executed;
  overlap_.hidden_s = hidden;
  overlap_.measured_execution = true;
}

float AllReduceStrategy::read_reduced_header() {
  const std::span<const float> header = bucketer_->reduced_header();
  global_stats_ = {static_cast<double>(header[kHeaderLossSum]),
                   std::llround(header[kHeaderCorrect]), std::llround(header[kHeaderSamples])};
  if (options_.dynamic_batch.enabled) {
    const auto workers = static_cast<ptrdiff_t>(collectives_.size());
    const auto rows_at = header.begin() + static_cast<ptrdiff_t>(kHeaderFloats);
    const std::vector<double> rows(rows_at, rows_at + workers);
    const std::vector<double> seconds(rows_at + workers, rows_at + 2 * workers);
    balancer_.observe(rows, seconds);
  }
  return header[kHeaderSamples];
}

void AllReduceStrategy::local_update(bool average) {
  const auto n = static_cast<float>(window_.samples);
  if (n > 0.0f) {
    for (Variable& p : params_) {
      if (!p.has_grad()) continue;
      Tensor mean = p.dense_grad().clone();
      float* g = mean.data();
      for (int64_t k = 0; k < mean.numel(); ++k) g[k] /= n;
      p.set_grad(std::move(mean));
    }
    check_finite_gradients(*model_);
    optimizer_->step();
  }
  global_stats_ = window_;
  last_comm_ = {0, dense_update_bytes()};
  if (average) {
    // Parameters, buffers, then this worker's statistics: one allreduce.
    std::vector<Tensor> tensors;
    for (const Variable& p : params_) tensors.push_back(p.data());
    for (auto& [name, buffer] : model_->named_buffers()) tensors.push_back(buffer);
    size_t total = 3;
    for (const Tensor& t : tensors) total += static_cast<size_t>(t.numel());
    average_.resize(total);
    size_t offset = 0;
    for (const Tensor& t : tensors) {
      std::copy_n(t.data(), t.numel(), average_.begin() + static_cast<std::ptrdiff_t>(offset));
      offset += static_cast<size_t>(t.numel());
    }
    average_[offset + kHeaderSamples] = static_cast<float>(window_.samples);
    average_[offset + kHeaderLossSum] = static_cast<float>(window_.loss_sum);
    average_[offset + kHeaderCorrect] = static_cast<float>(window_.correct);
    const uint64_t before = async_->bytes_sent();
    collectives_.allreduce(average_, comm::ReduceOp::kSum);
    last_comm_.bytes_sent = async_->bytes_sent() - before;
    const auto workers = static_cast<float>(collectives_.size());
    offset = 0;
    for (const Tensor& t : tensors) {
      float* out = t.data();
      for (int64_t k = 0; k < t.numel(); ++k) {
        out[k] = average_[offset + static_cast<size_t>(k)] / workers;
      }
      offset += static_cast<size_t>(t.numel());
    }
    global_stats_ = {static_cast<double>(average_[offset + kHeaderLossSum]),
                     std::llround(average_[offset + kHeaderCorrect]),
                     std::llround(average_[offset + kHeaderSamples])};
  }
  ++updates_;
  ++run_updates_;
  updated_ = true;
}

void AllReduceStrategy::check_plain_sum() const {
  std::string_view refused;
  if (options_.accumulation_steps > 1) {
    refused = "gradient accumulation (accumulation_steps > 1)";
  } else if (options_.compression.active()) {
    refused = "compression or local SGD";
  } else if (options_.dynamic_batch.enabled) {
    refused = "dynamic batch sizing";
  }
  if (!refused.empty()) {
    throw UsageError(
        fmt::format("allreduce strategy: step_on_gradients sums every worker's gradient once per "
                    "update; it does not combine with {}",
                    refused));
  }
}

StepStats AllReduceStrategy::step_on_gradients(const std::function<StepStats()>& local_gradients,
                                               float scale) {
  check_usable("step_on_gradients");
  check_plain_sum();
  updated_ = false;
  micro_step_ = 0;
  optimizer_->zero_grad();
  // The hooks stay disarmed: local_gradients() may run backward passes of
  // its own, and the buckets are filled below, after it.
  window_ = local_gradients();
  begin_pass();
  try {
    // Every parameter is present (zeros where no gradient arrived), so the
    // buckets fill in index order and leave as they fill.
    for (size_t i = 0; i < params_.size(); ++i) {
      bucketer_->mark_ready(i, params_[i].dense_grad().span());
    }
    complete_allreduce();
    read_reduced_header();
    const auto start = Clock::now();
    for (size_t i = 0; i < params_.size(); ++i) {
      const std::span<const float> sum = bucketer_->gradient(i);
      float* grad = params_[i].dense_grad().data();
      for (size_t k = 0; k < sum.size(); ++k) grad[k] = sum[k] * scale;
    }
    finish_update(start);
  } catch (const NumericError&) {
    throw;  // the same sum on every worker: all stop here alike
  } catch (const std::exception& e) {
    failure_ = e.what();
    throw;
  }
  return window_;
}

}  // namespace dtrain::strategy
