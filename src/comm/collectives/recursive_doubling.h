// Recursive doubling allreduce (Thakur, Rabenseifner & Gropp, "Optimization
// of collective communication operations in MPICH", IJHPCA 2005, section
// 4.1), for a power-of-two number of ranks: log2(n) rounds; in round k
// (distance d = 1, 2, 4, ...) a rank sends its whole buffer to the rank at
// distance d and combines the one it receives. The Communicator uses it for
// two ranks (CommunicatorOptions::pair_exchange_bytes): one round, the same
// bytes as the ring's two (each rank sends the buffer once), so half the
// latency, but each rank combines the whole buffer instead of half of it;
// with more ranks it would send log2(n) buffers instead of the ring's
// 2(n-1)/n.
//
// Each round pipelines the buffer in chunks of `chunk_elements`: at most
// `window_chunks` sent ahead of the received ones (as the ring,
// ring_collectives.h), every chunk combined as it arrives. Partners combine
// in one order, the lower rank's values as the left operand, so both end
// bit-identical where the order matters (kMax of a NaN), and so do all
// ranks after the last round. kMean sums, then every rank divides.
// Blocking and errors: as CollectiveChannel (deadline, mismatch, peer death).
// Internal to comm.
#pragma once

#include <cstddef>
#include <span>

#include "comm/collectives/collective_protocol.h"

namespace dtrain::comm {

// In place; channel.size() must be a power of two (InternalError otherwise).
void recursive_doubling_allreduce(CollectiveChannel& channel, std::span<float> data, ReduceOp op,
                                  size_t chunk_elements, size_t window_chunks);

}  // namespace dtrain::comm
