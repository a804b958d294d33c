// Collectives: the abstract interface strategies use for collective
// communication on float32 buffers, implemented by the native Communicator
// (comm/collectives/communicator.h) and by the MPI backend (comm/collectives/mpi_collectives.h), so
// a strategy runs over either without knowing which.
//
// Contract (every implementation):
// - Every rank of the group calls the same collectives in the same order with
//   agreeing arguments (counts, root, reduction); buffers are caller-owned and
//   only used during the call.
// - Calls block until this rank's part is done. The native backend bounds the
//   wait by its timeout and throws TimeoutError/CommError naming the peer; MPI
//   calls have no deadline (see mpi_collectives.h).
// - Wrong local arguments (sizes that do not add up, a root outside the group)
//   throw UsageError before anything is sent.
// Thread safety: one thread at a time per object, unless the implementation
// says more.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace dtrain::comm {

// How allreduce and reduce_scatter combine the ranks' values. kMean is the
// sum divided by the group size.
enum class ReduceOp : uint8_t { kSum = 0, kMean = 1, kMax = 2 };

std::string_view to_string(ReduceOp op);

class Collectives {
 public:
  virtual ~Collectives() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place: every rank ends with the element-wise reduction over all ranks.
  virtual void allreduce(std::span<float> data, ReduceOp op) = 0;
  // In place: every rank ends with `root`'s data.
  virtual void broadcast(std::span<float> data, int root) = 0;
  // out = concatenation of every rank's `mine` in rank order;
  // out.size() == size() * mine.size().
  virtual void allgather(std::span<const float> mine, std::span<float> out) = 0;
  // Like allgather with per-rank counts: counts.size() == size(),
  // counts[rank()] == mine.size(), out.size() == sum(counts).
  virtual void allgatherv(std::span<const float> mine, std::span<float> out,
                          std::span<const size_t> counts) = 0;
  // input.size() == size() * output.size(); rank r receives the reduction of
  // block r (input[r * output.size(), (r + 1) * output.size())).
  virtual void reduce_scatter(std::span<const float> input, std::span<float> output,
                              ReduceOp op) = 0;
  // Returns once every rank of the group has entered the barrier.
  virtual void barrier() = 0;
};

}  // namespace dtrain::comm
