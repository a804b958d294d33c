// Ring algorithms (Patarasuk & Yuan, "Bandwidth optimal all-reduce algorithms
// for clusters of workstations", JPDC 2009), the large-message path of the
// Communicator. Internal to comm.
//
// The n ranks form a ring; rank r sends to r+1 and receives from r-1. The
// buffer is cut into n blocks (sizes differ by at most one element) and every
// block into chunks of `chunk_elements`, sent one message each, so a rank
// forwards chunk c while its neighbour already reduces chunk c-1 (pipelining
// through the transport's send queue).
// - reduce-scatter: n-1 steps; in step s rank r sends block (r-s-1) mod n and
//   receives and reduces block (r-s-2) mod n. Afterwards block r on rank r
//   holds the reduction of every rank's block r.
// - allgather: n-1 steps; in step s rank r sends block (r-s) mod n and
//   receives block (r-s-1) mod n.
// Each rank sends (n-1)/n of the buffer in each phase: 2(n-1)/n * bytes for
// an allreduce, the bandwidth optimum. Latency: 2(n-1) message rounds.
// Blocking and errors: as CollectiveChannel (deadline, mismatch, peer death).
#pragma once

#include <cstddef>
#include <span>

#include "comm/collectives/collective_protocol.h"

namespace dtrain::comm {

// `offsets` (size n+1) delimits the n blocks of `data`. Sums for kMean (the
// caller divides).
void ring_reduce_scatter(CollectiveChannel& channel, std::span<float> data,
                         std::span<const size_t> offsets, ReduceOp op, size_t chunk_elements);

// Byte version: `offsets` delimits the n blocks of `data` in bytes; block r
// must hold rank r's contribution on entry.
void ring_allgather(CollectiveChannel& channel, std::span<std::byte> data,
                    std::span<const size_t> offsets, size_t chunk_bytes);

// reduce-scatter, divide (kMean), allgather, in place.
void ring_allreduce(CollectiveChannel& channel, std::span<float> data, ReduceOp op,
                    size_t chunk_elements);

}  // namespace dtrain::comm
