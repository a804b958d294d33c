// Sparse allreduce (after SparCML: Renggli, Ben-Nun, Ashkboos, Alistarh &
// Hoefler, "SparCML: High-Performance Sparse Communication for Machine
// Learning", SC'19): the sum over the ranks of one sparse vector per rank,
// written densely. The path of top-k compressed gradients. Internal to comm
// (strategies call Communicator::sparse_allreduce).
//
// The index space [0, n) is cut into W contiguous blocks (W ranks, sizes
// differing by at most one, block_offsets()). A block's partial sum is kept
// in whichever form is smaller: sparse, a sorted (index, value) list of
// 8 bytes per entry, or dense, 4 bytes per element; a block switches to
// dense as soon as count * 8 >= block elements * 4.
// 1. Reduce-scatter around the ring, W - 1 steps: in step s rank r sends its
//    partial sum of block (r-s-1) mod W to r+1 and receives block
//    (r-s-2) mod W from r-1, adding it to its own (sorted merge of two
//    lists, or a scatter-add into a dense block). Rank r ends with block r
//    reduced over every rank.
// 2. Allgather around the ring, W - 1 steps: rank r sends block (r-s) mod W,
//    receives (r-s-1) mod W; the owner first picks the smaller form of its
//    reduced block (a dense block with few non-zeros goes sparse). Every
//    rank receives the owner's values, so all ranks end bit-identical.
// 3. Every rank zeroes `out` and writes the W reduced blocks into it; `out`
//    is untouched until then, so a failure leaves it as it was.
// One message per block and step (no chunking). Bytes per rank: at most
// 2 (W-1)/W * 4n plus 48 bytes per message, as a dense ring allreduce (a
// message is never larger than its block dense); for sparse inputs 8 bytes
// per entry of each partial sum sent, which stays near the per-rank count
// (and so does not grow with W) where the ranks' indices overlap.
//
// Message payload (after the 32-byte collective header; little-endian):
//   u32 block, u8 form (0 sparse, 1 dense), 3 zero bytes, u64 count, then
//   sparse: count x u32 index (absolute, strictly increasing, inside the
//   block), count x f32 value; dense: count (= block elements) x f32.
// Every received message is validated: block and form as expected, zero
// bytes, count consistent with the message size (and at most the block's
// elements), indices strictly increasing and inside the block, values
// finite. A violation throws CommError naming the sending rank, e.g.
// "rank 2 sent a malformed sparse block: index 9000 outside [4000, 6000)".
// A rank whose own partial sum overflowed to infinity fails naming itself.
// Blocking and errors: as CollectiveChannel (deadline, mismatch, peer death).
#pragma once

#include <cstdint>
#include <span>

#include "comm/collectives/collective_protocol.h"

namespace dtrain::comm {

// out (n = out.size() elements, the same on every rank) = the sum over the
// ranks of each rank's (indices, values); the indices are strictly
// increasing and below n, the values finite (the caller checked).
void sparse_ring_allreduce(CollectiveChannel& channel, std::span<const uint32_t> indices,
                           std::span<const float> values, std::span<float> out);

}  // namespace dtrain::comm
