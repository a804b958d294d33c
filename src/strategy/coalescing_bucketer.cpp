#include "strategy/coalescing_bucketer.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"

namespace dtrain::strategy {

CoalescingBucketer::CoalescingBucketer(const std::vector<int64_t>& param_numels,
                                       size_t bucket_bytes, size_t header_floats, LaunchFn launch)
    : CoalescingBucketer(param_numels, bucket_bytes, bucket_bytes, header_floats,
                         std::move(launch)) {}

CoalescingBucketer::CoalescingBucketer(const std::vector<int64_t>& param_numels,
                                       size_t first_bucket_bytes, size_t bucket_bytes,
                                       size_t header_floats, LaunchFn launch)
    : CoalescingBucketer(param_numels, first_bucket_bytes, bucket_bytes, bucket_bytes,
                         header_floats, std::move(launch)) {}

CoalescingBucketer::CoalescingBucketer(const std::vector<int64_t>& param_numels,
                                       size_t first_bucket_bytes, size_t bucket_bytes,
                                       size_t last_bucket_bytes, size_t header_floats,
                                       LaunchFn launch)
    : slots_(param_numels.size()), header_floats_(header_floats), launch_(std::move(launch)) {
  if (!launch_) throw UsageError("CoalescingBucketer: the launch function is empty");
  // Assign parameters, last registered first, to buckets of about bucket_bytes
  // (bucket 0: first_bucket_bytes).
  buckets_.emplace_back();
  size_t bucket_gradient_bytes = 0;
  size_t cap = first_bucket_bytes;
  for (size_t k = param_numels.size(); k-- > 0;) {
    if (param_numels[k] < 0) {
      throw UsageError(
          fmt::format("CoalescingBucketer: parameter {} has {} elements", k, param_numels[k]));
    }
    const size_t bytes = static_cast<size_t>(param_numels[k]) * sizeof(float);
    if (!buckets_.back().params.empty() && bucket_gradient_bytes + bytes > cap) {
      buckets_.emplace_back();
      bucket_gradient_bytes = 0;
      cap = bucket_bytes;
    }
    buckets_.back().params.push_back(k);
    bucket_gradient_bytes += bytes;
  }
  split_last_bucket(param_numels, last_bucket_bytes);
  // Lay each bucket out: header (bucket 0), presence flags, gradients.
  for (size_t b = 0; b < buckets_.size(); ++b) {
    Bucket& bucket = buckets_[b];
    size_t offset = b == 0 ? header_floats_ : 0;
    const size_t presence_begin = offset;
    offset += bucket.params.size();
    for (size_t j = 0; j < bucket.params.size(); ++j) {
      Slot& slot = slots_[bucket.params[j]];
      slot.bucket = b;
      slot.presence_offset = presence_begin + j;
      slot.offset = offset;
      slot.numel = static_cast<size_t>(param_numels[bucket.params[j]]);
      offset += slot.numel;
    }
    bucket.data.assign(offset, 0.0f);
    bucket.unmarked = bucket.params.size();
  }
}

void CoalescingBucketer::split_last_bucket(const std::vector<int64_t>& param_numels,
                                           size_t last_bucket_bytes) {
  // The last bucket is launched by the last hook of backward, so nothing
  // hides its allreduce: when it is over its cap (and is not bucket 0), its
  // tail, the parameters backward finishes last, moves to a bucket of its own
  // of at most last_bucket_bytes (at least one parameter), and the rest is
  // launched as soon as its own gradients are ready.
  if (buckets_.size() < 2) return;
  std::vector<size_t>& params = buckets_.back().params;
  const auto bytes_of = [&](size_t k) {
    return static_cast<size_t>(param_numels[k]) * sizeof(float);
  };
  size_t total = 0;
  for (const size_t k : params) total += bytes_of(k);
  if (params.size() < 2 || total <= last_bucket_bytes) return;
  size_t split = params.size() - 1;  // params[split..] form the new last bucket
  size_t tail = bytes_of(params[split]);
  while (split > 1 && tail + bytes_of(params[split - 1]) <= last_bucket_bytes) {
    tail += bytes_of(params[--split]);
  }
  Bucket last;
  last.params.assign(params.begin() + static_cast<std::ptrdiff_t>(split), params.end());
  params.resize(split);
  buckets_.push_back(std::move(last));
}

size_t CoalescingBucketer::bucket_of(size_t param) const {
  if (param >= slots_.size()) {
    throw UsageError(fmt::format("CoalescingBucketer: parameter {} out of range (have {})", param,
                                 slots_.size()));
  }
  return slots_[param].bucket;
}

std::span<const size_t> CoalescingBucketer::params_of(size_t bucket) const {
  DTRAIN_CHECK(bucket < buckets_.size(), "bucket {} of {}", bucket, buckets_.size());
  return buckets_[bucket].params;
}

size_t CoalescingBucketer::bucket_floats(size_t bucket) const {
  DTRAIN_CHECK(bucket < buckets_.size(), "bucket {} of {}", bucket, buckets_.size());
  return buckets_[bucket].data.size();
}

std::pair<size_t, size_t> CoalescingBucketer::slot_range(size_t param) const {
  (void)bucket_of(param);  // checks the index
  return {slots_[param].offset, slots_[param].numel};
}

size_t CoalescingBucketer::prefix_floats(size_t bucket) const {
  DTRAIN_CHECK(bucket < buckets_.size(), "bucket {} of {}", bucket, buckets_.size());
  return (bucket == 0 ? header_floats_ : 0) + buckets_[bucket].params.size();
}

void CoalescingBucketer::begin_pass() {
  for (Slot& slot : slots_) slot.marked = false;
  for (Bucket& bucket : buckets_) bucket.unmarked = bucket.params.size();
  next_launch_ = 0;
}

std::span<float> CoalescingBucketer::header() {
  DTRAIN_CHECK(next_launch_ == 0, "header() written after bucket 0 was launched");
  return std::span<float>(buckets_[0].data).first(header_floats_);
}

CoalescingBucketer::Slot& CoalescingBucketer::checked_slot(size_t param, const char* what) {
  if (param >= slots_.size()) {
    throw UsageError(fmt::format("CoalescingBucketer::{}: parameter {} out of range (have {})",
                                 what, param, slots_.size()));
  }
  Slot& slot = slots_[param];
  if (slot.marked) {
    throw UsageError(fmt::format(
        "CoalescingBucketer::{}: parameter {} was already marked in this pass (its gradient "
        "became ready twice: backward() called twice without begin_pass()?)",
        what, param));
  }
  return slot;
}

void CoalescingBucketer::mark_ready(size_t param, std::span<const float> grad) {
  Slot& slot = checked_slot(param, "mark_ready");
  if (grad.size() != slot.numel) {
    throw UsageError(
        fmt::format("CoalescingBucketer::mark_ready: parameter {} has {} elements, its gradient {}",
                    param, slot.numel, grad.size()));
  }
  std::vector<float>& data = buckets_[slot.bucket].data;
  std::copy(grad.begin(), grad.end(), data.begin() + static_cast<std::ptrdiff_t>(slot.offset));
  data[slot.presence_offset] = 1.0f;
  finish_mark(slot);
}

void CoalescingBucketer::mark_absent(size_t param) {
  Slot& slot = checked_slot(param, "mark_absent");
  std::vector<float>& data = buckets_[slot.bucket].data;
  const auto begin = data.begin() + static_cast<std::ptrdiff_t>(slot.offset);
  std::fill(begin, begin + static_cast<std::ptrdiff_t>(slot.numel), 0.0f);
  data[slot.presence_offset] = 0.0f;
  finish_mark(slot);
}

void CoalescingBucketer::finish_mark(Slot& slot) {
  slot.marked = true;
  --buckets_[slot.bucket].unmarked;
  // Launch in bucket order only: a full bucket waits for its predecessors.
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].unmarked == 0) {
    const size_t b = next_launch_++;
    launch_(b, buckets_[b].data);
  }
}

bool CoalescingBucketer::is_marked(size_t param) const {
  if (param >= slots_.size()) {
    throw UsageError(
        fmt::format("CoalescingBucketer::is_marked: parameter {} out of range (have {})", param,
                    slots_.size()));
  }
  return slots_[param].marked;
}

void CoalescingBucketer::mark_rest_absent() {
  for (size_t param = 0; param < slots_.size(); ++param) {
    if (!slots_[param].marked) mark_absent(param);
  }
  // Only a bucket without parameters can still be pending here.
  while (next_launch_ < buckets_.size()) {
    DTRAIN_CHECK(buckets_[next_launch_].unmarked == 0, "bucket {} still has {} unmarked parameters",
                 next_launch_, buckets_[next_launch_].unmarked);
    const size_t b = next_launch_++;
    launch_(b, buckets_[b].data);
  }
}

std::span<const float> CoalescingBucketer::gradient(size_t param) const {
  DTRAIN_CHECK(param < slots_.size(), "parameter {} of {}", param, slots_.size());
  const Slot& slot = slots_[param];
  return std::span<const float>(buckets_[slot.bucket].data).subspan(slot.offset, slot.numel);
}

float CoalescingBucketer::presence(size_t param) const {
  DTRAIN_CHECK(param < slots_.size(), "parameter {} of {}", param, slots_.size());
  const Slot& slot = slots_[param];
  return buckets_[slot.bucket].data[slot.presence_offset];
}

std::span<const float> CoalescingBucketer::reduced_header() const {
  return std::span<const float>(buckets_[0].data).first(header_floats_);
}

}  // namespace dtrain::strategy
