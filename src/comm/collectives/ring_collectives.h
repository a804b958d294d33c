// Ring algorithms (Patarasuk & Yuan, "Bandwidth optimal all-reduce algorithms
// for clusters of workstations", JPDC 2009), the large-message path of the
// Communicator. Internal to comm.
//
// The n ranks form a ring; rank r sends to r+1 and receives from r-1. The
// buffer is cut into n blocks (sizes differ by at most one element) and every
// block into chunks of `chunk_elements`, sent one message each. The block a
// rank receives at step s is the one it sends at step s+1, so it forwards
// each chunk as soon as it has received (and reduced) it, and the chunks of
// every step stream around the ring together (send, receive and reduce
// overlap; sends never wait for the peer, CollectiveChannel::send). At most
// `window_chunks` sent chunks run ahead of the received ones (at least 1):
// a window that fits the socket's buffers lets every send go straight to
// the kernel instead of being copied and queued.
// - reduce-scatter: n-1 steps; in step s rank r sends block (r-s-1) mod n and
//   receives and reduces block (r-s-2) mod n. Afterwards block r on rank r
//   holds the reduction of every rank's block r.
// - allgather: n-1 steps; in step s rank r sends block (r-s) mod n and
//   receives block (r-s-1) mod n.
// Each rank sends (n-1)/n of the buffer in each phase: 2(n-1)/n * bytes for
// an allreduce, the bandwidth optimum. Latency: 2(n-1) message rounds.
//
// 16-bit allreduce (ring_allreduce16): the same two phases with every
// message carrying 16-bit values, accumulation in float32:
// - reduce-scatter: a rank encodes the chunk of its float partial sum it
//   sends; the receiver decodes it and adds it to its own float values;
// - allgather: the owner of block r encodes its finished sum once; those
//   encoded bytes travel around the ring unchanged (ring_allgather on
//   bytes) and every rank, the owner included, decodes every block from
//   them, so all ranks end bit-identical.
// A chunk of m values is one message: fp16 = [f32 scale][m x u16] with
// scale = 2^(e-15) for the chunk's largest finite magnitude m' = f * 2^e
// (f in [0.5, 1)), so every |x| / scale < 32768 < 65504 (fp16 never
// overflows; the power of two makes scaling exact; scale >= 2^-126; 1 for an
// all-zero chunk); bf16 = [m x u16], no scale (bf16 has float32's range).
// Bytes per rank: (n-1)/n * (bytes / 2) per phase plus 4 per fp16 chunk,
// about half of ring_allreduce's.
// Blocking and errors: as CollectiveChannel (deadline, mismatch, peer death);
// an fp16 chunk whose scale is not a positive finite float is a CommError
// naming its sender.
#pragma once

#include <cstddef>
#include <span>

#include "comm/collectives/collective_protocol.h"

namespace dtrain::comm {

// `offsets` (size n+1) delimits the n blocks of `data`. Sums for kMean (the
// caller divides).
void ring_reduce_scatter(CollectiveChannel& channel, std::span<float> data,
                         std::span<const size_t> offsets, ReduceOp op, size_t chunk_elements,
                         size_t window_chunks);

// Byte version: `offsets` delimits the n blocks of `data` in bytes; block r
// must hold rank r's contribution on entry.
void ring_allgather(CollectiveChannel& channel, std::span<std::byte> data,
                    std::span<const size_t> offsets, size_t chunk_bytes, size_t window_chunks);

// reduce-scatter, divide (kMean), allgather, in place.
void ring_allreduce(CollectiveChannel& channel, std::span<float> data, ReduceOp op,
                    size_t chunk_elements, size_t window_chunks);

// Sum over the ranks with 16-bit messages (fp16, or bf16 when `bf16`), in
// place; `chunk_elements` values per message.
void ring_allreduce16(CollectiveChannel& channel, std::span<float> data, bool bf16,
                      size_t chunk_elements, size_t window_chunks);

}  // namespace dtrain::comm
