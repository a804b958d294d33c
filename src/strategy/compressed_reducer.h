// CompressedReducer: the allreduce strategy's buckets reduced through a
// compressor (docs/compression.md). A bucket (strategy/coalescing_bucketer.h)
// holds a header, presence flags and the gradients of some parameters; its
// reduction runs on the communicator's thread while backward goes on, like
// a dense bucket's allreduce:
//  1. the dense part (header, presence flags, and the gradients the
//     compressor leaves dense: small tensors, PowerSGD's thin matrices) is
//     gathered into one buffer and allreduced (sum);
//  2. the compressed parameters' gradients go through
//     Compressor::reduce() with a CommGroup, which leaves the sum over the
//     workers of what each worker's message decodes to in their slots.
// The dense allreduce also counts the workers whose compressed gradients
// hold a NaN or an infinity (one float more): when any does, no worker
// compresses and every worker's compressed slots become NaN, so that all of
// them stop alike at the strategy's finiteness check (or the convergence
// guard rescues them) instead of a peer refusing a malformed message.
// A bucket without a compressed parameter takes the plain allreduce.
//
// Every worker builds the same reducer (same parameters, same options), so
// the buckets' operations line up on every rank.
// Ownership: owns the compressor; borrows the communicator and bucketer,
// which must outlive it. Thread safety: launch() from the strategy's thread;
// the queued work touches the compressor and the bucket's buffer only, and
// the strategy leaves both alone until the Work completed. Errors: CommError
// from the communicator (through the Work). Blocking: never (launch queues).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "comm/collectives/communicator.h"
#include "compress/compressor.h"
#include "strategy/coalescing_bucketer.h"
#include "strategy/compress_group.h"
#include "tensor/tensor.h"

namespace dtrain::strategy {

class CompressedReducer {
 public:
  CompressedReducer(const compress::Options& codec, const std::vector<Shape>& shapes,
                    const CoalescingBucketer& bucketer, comm::Communicator& comm);

  bool compresses_bucket(size_t bucket) const { return !plans_[bucket].compressed.empty(); }
  // Queues bucket `bucket`'s reduction (its buffer `data`) for compressed
  // update `step` (0-based, counted from the first compressed update).
  comm::Work launch(size_t bucket, std::span<float> data, int64_t step);

  compress::Compressor& compressor() { return *compressor_; }
  const compress::Compressor& compressor() const { return *compressor_; }

 private:
  struct BucketPlan {
    std::vector<size_t> compressed;  // parameter indices
    // [begin, end) of the bucket's buffer that go dense: the prefix, then
    // each dense parameter's slot.
    std::vector<std::pair<size_t, size_t>> dense;
    size_t dense_floats = 0;
  };

  void reduce(size_t bucket, std::span<float> data, int64_t step);

  std::unique_ptr<compress::Compressor> compressor_;
  comm::Communicator& comm_;
  CommGroup group_;
  const CoalescingBucketer& bucketer_;
  std::vector<BucketPlan> plans_;
  std::vector<float> scratch_;  // the dense part of the bucket being reduced
};

}  // namespace dtrain::strategy
