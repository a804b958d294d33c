// AllReduceStrategy's update after the allreduces (allreduce_strategy.h,
// steps 4 and 5): averaging, the finiteness check and the optimizer step,
// all at once after every bucket, or bucket by bucket in completion order
// with undoable steps (docs/allreduce-strategy.md, the schedule).
#include <algorithm>

#include "core/error.h"
#include "core/finite.h"
#include "core/trace.h"
#include "strategy/allreduce_strategy.h"

namespace dtrain::strategy {
namespace {

double seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

void AllReduceStrategy::average_gradient(size_t i, float total_samples) {
  Variable& p = params_[i];
  if (bucketer_->presence(i) <= 0.0f) {
    p.zero_grad();  // no worker had a gradient: the optimizer skips it
    return;
  }
  if (!p.grad().defined() || p.sparse_grad() != nullptr) p.set_grad(Tensor::empty(p.shape()));
  const std::span<const float> sum = bucketer_->gradient(i);
  float* grad = p.grad().data();
  for (size_t k = 0; k < sum.size(); ++k) grad[k] = sum[k] / total_samples;
}

void AllReduceStrategy::apply_update() {
  const float total_samples = read_reduced_header();
  if (total_samples <= 0.0f) {
    optimizer_->zero_grad();  // no worker had rows: nothing to learn from
    return;
  }
  const auto start = Clock::now();
  for (size_t i = 0; i < params_.size(); ++i) average_gradient(i, total_samples);
  finish_update(start);
}

bool AllReduceStrategy::overlaps_update() const {
  // The fallbacks of step 5 (header comment): the blocking mode, compressed
  // passes and a single bucket. step_on_gradients() and local SGD never
  // come here.
  return options_.overlap_update && async_ != nullptr && !compressing_ &&
         bucketer_->bucket_count() > 1;
}

bool AllReduceStrategy::bucket_finite(size_t bucket) const {
  for (const size_t i : bucketer_->params_of(bucket)) {
    const Tensor& grad = params_[i].grad();
    if (grad.defined() && !all_finite(grad.span())) return false;
  }
  return true;
}

void AllReduceStrategy::update_by_bucket() {
  const size_t buckets = bucketer_->bucket_count();
  const size_t last = buckets - 1;
  overlap_.update_by_bucket = true;
  update_from_.assign(buckets, Clock::time_point());
  update_to_.assign(buckets, Clock::time_point());
  float total_samples = 0.0f;
  bool finite = true;
  size_t tentative = 0;  // buckets stepped tentatively
  // Bucket b completes after buckets 0..b-1 (launch order): bucket 0 brings
  // the header, so the divisor is known from the first call on.
  const auto update_bucket = [&](size_t b) {
    if (b == 0) total_samples = read_reduced_header();
    if (total_samples <= 0.0f || !finite) return;
    update_from_[b] = Clock::now();
    TraceSpan span(options_.trace, "update", "step");
    const std::span<const size_t> params = bucketer_->params_of(b);
    for (const size_t i : params) average_gradient(i, total_samples);
    finite = bucket_finite(b);
    if (finite && b < last) {
      optimizer_->step_undoable(params);
      ++tentative;
    } else if (finite) {
      optimizer_->step(params);  // nothing can fail after the last bucket
    }
    update_to_[b] = Clock::now();
  };
  try {
    complete_allreduce(update_bucket);
  } catch (...) {
    optimizer_->undo();  // a failed step changes no weight
    throw;
  }
  if (total_samples <= 0.0f) {
    optimizer_->zero_grad();  // no worker had rows: nothing to learn from
    return;
  }
  measure_update(last);
  if (!finite) {
    // Every worker holds the same sums: all undo and stop at this step. The
    // error names the first non-finite parameter in model order, as the
    // one-step path's does.
    optimizer_->undo();
    overlap_.buckets_undone = static_cast<int64_t>(tentative);
    for (size_t i = 0; i < params_.size(); ++i) average_gradient(i, total_samples);
    check_finite_gradients(*model_);
    DTRAIN_CHECK(false, "a bucket's averaged gradient was not finite, the model's gradients are");
  }
  optimizer_->commit();
  count_update();
}

void AllReduceStrategy::measure_update(size_t last) {
  // The last bucket's allreduce ended at its execution's end (measured, the
  // communicator's thread wrote it before its Work completed) or when its
  // completion was observed.
  const Clock::time_point end =
      overlap_.measured_execution ? executed_to_[last] : completed_at_[last];
  for (size_t b = 0; b <= last; ++b) {
    overlap_.update_s += seconds(update_to_[b] - update_from_[b]);
    if (b < last) {
      overlap_.update_hidden_s +=
          std::max(0.0, seconds(std::min(update_to_[b], end) - update_from_[b]));
    }
  }
}

void AllReduceStrategy::finish_update(Clock::time_point start) {
  // Every worker holds the same gradient: all stop at the same step.
  check_finite_gradients(*model_);
  {
    TraceSpan span(options_.trace, "update", "step");
    optimizer_->step();
  }
  overlap_.update_s = seconds(Clock::now() - start);
  count_update();
}

void AllReduceStrategy::count_update() {
  ++updates_;
  ++run_updates_;
  updated_ = true;
  if (options_.broadcast_buffers) broadcast_state(false);
}

}  // namespace dtrain::strategy
