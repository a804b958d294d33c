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
// bit-identical results.
// Blocking and errors: as CollectiveChannel.
#pragma once

#include <span>

#include "comm/collectives/collective_protocol.h"

namespace dtrain::comm {

void halving_doubling_allreduce(CollectiveChannel& channel, std::span<float> data, ReduceOp op);

}  // namespace dtrain::comm
