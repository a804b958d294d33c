// Recursive halving-doubling allreduce (Rabenseifner's algorithm as given by
// Thakur, Rabenseifner & Gropp, "Optimization of collective communication
// operations in MPICH", IJHPCA 2005, section 4.4), the small-message path of
// the Communicator: 2 log2(p) message rounds instead of the ring's 2(n-1).
// Internal to comm.
//
// Phases, for n ranks, p the largest power of two <= n, q = n - p:
// 0. Fold (non-powers of two): among ranks 0..2q-1, each even rank sends its
//    whole buffer to the odd rank above it, which reduces it and takes part in
//    the next phases as virtual rank r/2; ranks >= 2q become virtual rank r-q.
//    The even ranks sit out. (q even ranks send the whole buffer.)
// 1. Reduce-scatter by recursive halving over p blocks: in round k (distance
//    d = p/2, p/4, ..., 1) a rank exchanges half of its current range with
//    the virtual rank at distance d, keeps the half its bit selects and
//    reduces it. Each rank sends (p-1)/p of the buffer.
// 2. Allgather by recursive doubling: the rounds in reverse, each rank sends
//    the range it holds and receives its partner's. Again (p-1)/p.
// 3. Unfold: each odd rank below 2q sends the result to the even rank below.
// Every block is reduced on exactly one rank, so all ranks end with
// bit-identical results. Reduction order: in round k the receiver's own
// partial sum is the left operand (kept = kept (op) received); the fold adds
// the even rank's buffer to the odd rank's the same way.
//
// Pipelining: every exchange goes in chunks of `chunk_elements` (the last
// ragged, an empty range one empty message), at most `window_chunks` sent
// ahead of the received ones, and each received chunk is reduced or copied
// as it arrives, so a round's receive and reduce overlap the partner's
// sends. Partners cut the same ranges the same way; the chunking changes
// neither the bytes nor the order of any reduction, so any chunk size gives
// the same result bit for bit. The Communicator uses it for small
// allreduces at every world size and, pipelined, for all sizes up to
// `pow2_halving_doubling_bytes` at power-of-two worlds above two ranks
// (OpenMPI's tuned choice there too): 2 log2(n) rounds instead of the
// ring's 2(n-1), the same (n-1)/n of the buffer per phase.
// Blocking and errors: as CollectiveChannel.
#pragma once

#include <cstddef>
#include <span>

#include "comm/collectives/collective_protocol.h"

namespace dtrain::comm {

void halving_doubling_allreduce(CollectiveChannel& channel, std::span<float> data, ReduceOp op,
                                size_t chunk_elements, size_t window_chunks);

}  // namespace dtrain::comm
