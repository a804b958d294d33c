#include "strategy/compressed_reducer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/finite.h"

namespace dtrain::strategy {

CompressedReducer::CompressedReducer(const compress::Options& codec,
                                     const std::vector<Shape>& shapes,
                                     const CoalescingBucketer& bucketer, comm::Communicator& comm)
    : comm_(comm), group_(comm), bucketer_(bucketer) {
  std::vector<compress::TensorLayout> layouts;
  layouts.reserve(shapes.size());
  for (const Shape& shape : shapes) layouts.push_back(compress::matrix_layout(shape));
  compressor_ = compress::make_compressor(codec, std::move(layouts));
  plans_.resize(bucketer.bucket_count());
  for (size_t b = 0; b < plans_.size(); ++b) {
    BucketPlan& plan = plans_[b];
    plan.dense.emplace_back(0, bucketer.prefix_floats(b));
    for (const size_t param : bucketer.params_of(b)) {
      if (compressor_->compresses(param)) {
        plan.compressed.push_back(param);
      } else {
        const auto [offset, count] = bucketer.slot_range(param);
        plan.dense.emplace_back(offset, offset + count);
      }
    }
    for (const auto& [begin, end] : plan.dense) plan.dense_floats += end - begin;
  }
}

comm::Work CompressedReducer::launch(size_t bucket, std::span<float> data, int64_t step) {
  return comm_.submit(fmt::format("compressed reduction of bucket {} ({})", bucket,
                                  compress::to_string(compressor_->method())),
                      [this, bucket, data, step] { reduce(bucket, data, step); });
}

void CompressedReducer::reduce(size_t bucket, std::span<float> data, int64_t step) {
  const BucketPlan& plan = plans_[bucket];
  std::vector<std::span<float>> grads;
  grads.reserve(plan.compressed.size());
  bool finite = true;
  for (const size_t param : plan.compressed) {
    const auto [offset, count] = bucketer_.slot_range(param);
    grads.push_back(data.subspan(offset, count));
    finite = finite && all_finite(grads.back());
  }
  // The dense part, and one more float: how many workers hold a non-finite
  // gradient for the compressed tensors.
  scratch_.resize(plan.dense_floats + 1);
  size_t at = 0;
  for (const auto& [begin, end] : plan.dense) {
    std::copy(data.begin() + static_cast<std::ptrdiff_t>(begin),
              data.begin() + static_cast<std::ptrdiff_t>(end),
              scratch_.begin() + static_cast<std::ptrdiff_t>(at));
    at += end - begin;
  }
  scratch_.back() = finite ? 0.0f : 1.0f;
  group_.allreduce_sum(scratch_);
  at = 0;
  for (const auto& [begin, end] : plan.dense) {
    std::copy_n(scratch_.begin() + static_cast<std::ptrdiff_t>(at), end - begin,
                data.begin() + static_cast<std::ptrdiff_t>(begin));
    at += end - begin;
  }
  if (scratch_.back() != 0.0f) {
    // A diverged worker: no compressed message could carry its gradient
    // (peers refuse non-finite values as malformed). Every worker learns it
    // from the sum above and fills the slots with NaN alike, so the
    // strategy's finiteness check stops (or the convergence guard rescues)
    // every worker at this update; the residuals stay as they were.
    for (const std::span<float> g : grads) std::fill(g.begin(), g.end(), NAN);
    return;
  }
  compressor_->reduce(plan.compressed, grads, group_, step);
}

}  // namespace dtrain::strategy
