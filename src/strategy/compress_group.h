// CommGroup: compress::Group over dtrain's Communicator, the group a
// compressor reduces with inside the allreduce strategy. Each operation is
// the communicator's collective of the same name (comm/collectives/
// communicator.h), so it carries the same deadlines and fingerprints, and
// runs inline when called from the communicator's own thread (inside
// Communicator::submit(), where the strategy reduces its buckets).
// Ownership: borrows the communicator, which must outlive it. Thread
// safety: as the communicator. Errors: CommError / TimeoutError naming the
// peer. Blocking: each call is bounded by the communicator's timeout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "comm/collectives/communicator.h"
#include "compress/compressor.h"

namespace dtrain::strategy {

class CommGroup final : public compress::Group {
 public:
  explicit CommGroup(comm::Communicator& comm) : comm_(comm) {}

  int rank() const override { return comm_.rank(); }
  int size() const override { return comm_.size(); }
  void allreduce_sum(std::span<float> data) override {
    comm_.allreduce(data, comm::ReduceOp::kSum);
  }
  void allreduce_sum_16(std::span<float> data, bool bf16) override {
    comm_.allreduce16(data, bf16);
  }
  std::vector<std::vector<std::byte>> allgather_bytes(std::span<const std::byte> mine) override {
    return comm_.allgather_bytes(mine);
  }
  void sparse_allreduce_sum(std::span<const uint32_t> indices, std::span<const float> values,
                            std::span<float> out) override {
    comm_.sparse_allreduce(indices, values, out);
  }

 private:
  comm::Communicator& comm_;
};

}  // namespace dtrain::strategy
