// CoalescingBucketer: packs the gradients of a model's parameters into a few
// flat float buckets and hands each bucket to a launch function as soon as it
// is full, in one fixed bucket order. The all-reduce strategy launches an
// asynchronous allreduce per bucket from there while backward continues
// (the coalescing reducer of flashlight and PyTorch DDP; see
// docs/allreduce-strategy.md).
//
// Layout. Parameters are assigned in REVERSE registration order (the order
// in which backward finishes their gradients) to buckets of about
// `bucket_bytes` of gradient each: a bucket is closed when the next
// parameter would take it past bucket_bytes, so a parameter larger than
// bucket_bytes gets a bucket of its own, and bucket_bytes = 0 gives one
// parameter per bucket. Bucket 0, which holds the first gradients backward
// finishes (the last layers), may have a cap of its own, `first_bucket_bytes`
// (PyTorch DDP's first_bucket_bytes): a small one closes it early, so its
// allreduce starts while backward goes on, where a single bucket holding the
// whole of a small model would only launch at the last hook. The last bucket
// (when it is not bucket 0) may have a cap too, `last_bucket_bytes`: it is
// launched by backward's last hook, so nothing hides its allreduce; when it
// holds more than that cap, the parameters backward finishes last (at least
// one) move to a bucket of their own of at most last_bucket_bytes, and the
// rest leaves as soon as its gradients are ready (LeNet-5: fc1's weight no
// longer waits for both convolutions' backward). The layout is a pure
// function of (param_numels, first_bucket_bytes, bucket_bytes,
// last_bucket_bytes), so every rank builds the same buckets. Each bucket is
// one contiguous float buffer:
//
//   [ header (bucket 0 only: header_floats) | presence: one float per
//     parameter of the bucket | gradient of each parameter, in bucket order ]
//
// The presence float is 1 when the parameter received a gradient and 0 when
// it did not (its gradient slot is then zeros); summed over ranks it tells
// how many ranks had a gradient for it. The header is the caller's (the
// strategy puts the sample count there).
//
// Launch rule: bucket b is launched once all of its parameters were marked
// AND buckets 0..b-1 were launched, so every rank that marks the same
// parameters launches the same buckets in the same order, whatever the order
// in which its marks arrive. This matters because ranks executing
// collectives in different orders would pair up the wrong buffers.
//
// Use per pass: begin_pass(); header() filled; mark_ready()/mark_absent()
// for parameters as their gradients become final (hooks during backward);
// mark_rest_absent() or marks for the stragglers; every bucket has then been
// launched. A model without parameters still has bucket 0 (header only).
//
// Ownership: owns the bucket buffers; the span given to the launch function
// stays valid and unmoved until the bucketer is destroyed (the caller must
// keep it alive until asynchronous work on the span has completed).
// Thread safety: none; one thread marks and launches. While a launched
// bucket's buffer is being reduced by another thread, the bucketer only
// writes to buckets not yet launched (each bucket has its own allocation).
// Errors: UsageError for a parameter index out of range, a gradient of the
// wrong size, or a parameter marked twice in one pass. Blocking: never
// (the launch function decides).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <utility>
#include <vector>

namespace dtrain::strategy {

class CoalescingBucketer {
 public:
  // Called once per bucket per pass, in bucket order, with the bucket's
  // whole buffer.
  using LaunchFn = std::function<void(size_t bucket, std::span<float> data)>;

  // param_numels[i]: the element count of parameter i (registration order).
  // Bucket 0 is capped at bucket_bytes like the others.
  CoalescingBucketer(const std::vector<int64_t>& param_numels, size_t bucket_bytes,
                     size_t header_floats, LaunchFn launch);
  // Bucket 0 is capped at first_bucket_bytes, the others at bucket_bytes.
  CoalescingBucketer(const std::vector<int64_t>& param_numels, size_t first_bucket_bytes,
                     size_t bucket_bytes, size_t header_floats, LaunchFn launch);
  // ... and the last bucket's tail split off at last_bucket_bytes (no split
  // when last_bucket_bytes >= bucket_bytes: the layout above).
  CoalescingBucketer(const std::vector<int64_t>& param_numels, size_t first_bucket_bytes,
                     size_t bucket_bytes, size_t last_bucket_bytes, size_t header_floats,
                     LaunchFn launch);
  CoalescingBucketer(const CoalescingBucketer&) = delete;
  CoalescingBucketer& operator=(const CoalescingBucketer&) = delete;

  size_t bucket_count() const { return buckets_.size(); }
  size_t param_count() const { return slots_.size(); }
  // The bucket holding parameter `param`.
  size_t bucket_of(size_t param) const;
  // The parameters of `bucket`, in the order their slots appear.
  std::span<const size_t> params_of(size_t bucket) const;
  // Floats of `bucket` on the wire (header, presence flags and gradients).
  size_t bucket_floats(size_t bucket) const;
  // Where parameter `param`'s gradient lies in its bucket's buffer: the
  // first float's index and the count.
  std::pair<size_t, size_t> slot_range(size_t param) const;
  // The floats before the first gradient of `bucket`: its header (bucket 0)
  // and presence flags.
  size_t prefix_floats(size_t bucket) const;

  // Starts a pass: no parameter marked, no bucket launched. Buffers keep
  // their contents until overwritten by marks.
  void begin_pass();
  // Bucket 0's header slots (writable until bucket 0 is launched).
  std::span<float> header();

  // Copies `grad` (param's numel floats) into the parameter's slot, sets its
  // presence to 1, and launches every bucket that became launchable.
  void mark_ready(size_t param, std::span<const float> grad);
  // The parameter has no gradient on this rank: zeros, presence 0.
  void mark_absent(size_t param);
  bool is_marked(size_t param) const;
  // Marks every parameter not yet marked as absent, then launches whatever is
  // left (also a header-only bucket of a model without parameters). After
  // it, all_launched() holds.
  void mark_rest_absent();

  // Buckets launched in this pass (they are always 0..launched()-1).
  size_t launched() const { return next_launch_; }
  bool all_launched() const { return next_launch_ == buckets_.size(); }

  // After the launched allreduces completed: the reduced values.
  std::span<const float> gradient(size_t param) const;
  float presence(size_t param) const;
  std::span<const float> reduced_header() const;

 private:
  struct Slot {
    size_t bucket = 0;
    size_t presence_offset = 0;  // within the bucket's buffer
    size_t offset = 0;           // first gradient float within the bucket's buffer
    size_t numel = 0;
    bool marked = false;
  };
  struct Bucket {
    std::vector<size_t> params;
    std::vector<float> data;
    size_t unmarked = 0;
  };

  // Moves the last bucket's tail over last_bucket_bytes into a new last bucket.
  void split_last_bucket(const std::vector<int64_t>& param_numels, size_t last_bucket_bytes);
  Slot& checked_slot(size_t param, const char* what);
  void finish_mark(Slot& slot);

  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
  size_t header_floats_;
  size_t next_launch_ = 0;
  LaunchFn launch_;
};

}  // namespace dtrain::strategy
