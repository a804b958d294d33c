#include "comm/collectives/ring_collectives.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/half.h"

namespace dtrain::comm {

namespace {

size_t ring_index(long long value, int n) {
  const long long m = value % n;
  return static_cast<size_t>(m < 0 ? m + n : m);
}

// The chunk c of the block [begin, end) in units of `chunk`.
std::pair<size_t, size_t> chunk_range(size_t begin, size_t end, size_t c, size_t chunk) {
  const size_t lo = std::min(end, begin + c * chunk);
  return {lo, std::min(end, lo + chunk)};
}

// One pass around the ring (Patarasuk & Yuan 2009): n - 1 steps; at step s
// this rank sends block (r - s - shift) to the right and receives block
// (r - s - shift - 1) from the left, chunk by chunk. send(lo, hi) and
// recv(lo, hi) move one chunk. The block received at step s is the one sent
// at step s + 1, so every chunk is forwarded as soon as it has arrived (and
// been reduced): the chunks of all steps stream through the ring at once
// instead of step after step.
//
// The sends form one stream (step 0's block, then each received chunk of
// steps 0..n-3 again), the receives another (steps 0..n-2). Send j goes out
// before receive i once j < i + window (and, for a forward, after the
// receive it forwards), so at most `window` chunks run ahead of what this
// rank has received. Its right neighbour consumes at about the rate this
// rank does, so about `window` chunks wait in the socket: when they fit its
// buffers, a send is written to the kernel at once and never copied to be
// written later (CollectiveChannel::send queues what the socket does not
// take). Sends never wait for the peer, so any window >= 1 is deadlock-free.
template <class Send, class Recv>
void ring_pass(int n, int r, std::span<const size_t> offsets, size_t chunk, int shift,
               size_t window, const Send& send, const Recv& recv) {
  // Chunk cursor over the blocks of steps s = first..last (step -1 is the
  // block sent before anything is received).
  struct Cursor {
    int step;
    size_t c = 0;
  };
  const auto block_of = [&](int step) { return ring_index(r - step - shift - 1, n); };
  const auto chunks_of = [&](int step) {
    const size_t block = block_of(step);
    return chunk_count(offsets[block + 1] - offsets[block], chunk);
  };
  // The chunk at `at` (skipping empty blocks), advanced past; false after `last`.
  const auto next = [&](Cursor& at, int last, size_t* lo, size_t* hi) {
    while (at.step <= last && at.c >= chunks_of(at.step)) at = Cursor{at.step + 1};
    if (at.step > last) return false;
    const size_t block = block_of(at.step);
    std::tie(*lo, *hi) = chunk_range(offsets[block], offsets[block + 1], at.c++, chunk);
    return true;
  };
  window = std::max<size_t>(window, 1);
  Cursor sending{-1};
  Cursor receiving{0};
  size_t sent = 0;
  size_t received = 0;
  const size_t first_chunks = chunks_of(-1);
  size_t lo = 0;
  size_t hi = 0;
  while (true) {
    // Sends allowed now: ahead of the receives by less than `window`, and a
    // forward only of a chunk already received.
    const size_t allowed = std::min(received + window, first_chunks + received);
    while (sent < allowed && next(sending, n - 3, &lo, &hi)) {
      send(lo, hi);
      ++sent;
    }
    if (!next(receiving, n - 2, &lo, &hi)) break;
    recv(lo, hi);
    ++received;
  }
  while (next(sending, n - 3, &lo, &hi)) send(lo, hi);
}

// Bytes of one 16-bit message of `count` values.
size_t encoded16_bytes(size_t count, bool bf16) {
  return (bf16 ? 0 : sizeof(float)) + count * sizeof(uint16_t);
}

// Bytes of a block of `count` values sent in chunks of `chunk` values.
size_t encoded16_block_bytes(size_t count, size_t chunk, bool bf16) {
  const size_t chunks = chunk_count(count, chunk);
  return (bf16 ? 0 : chunks * sizeof(float)) + count * sizeof(uint16_t);
}

// The power of two that brings the largest finite magnitude of `values`
// below 2^15 (1 when there is none).
float fp16_scale(std::span<const float> values) {
  float largest = 0.0f;
  for (const float x : values) {
    if (std::isfinite(x)) largest = std::max(largest, std::fabs(x));
  }
  if (largest == 0.0f) return 1.0f;
  int exponent = 0;
  std::frexp(largest, &exponent);
  return std::ldexp(1.0f, std::max(exponent - 15, -126));
}

void encode16(std::span<const float> values, bool bf16, std::byte* out) {
  if (bf16) {
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t h = float_to_bf16(values[i]);
      std::memcpy(out + i * sizeof(uint16_t), &h, sizeof h);
    }
    return;
  }
  const float scale = fp16_scale(values);
  std::memcpy(out, &scale, sizeof scale);
  out += sizeof scale;
  for (size_t i = 0; i < values.size(); ++i) {
    const uint16_t h = float_to_fp16(values[i] / scale);
    std::memcpy(out + i * sizeof(uint16_t), &h, sizeof h);
  }
}

// Decodes one message of out.size() values into `out` (added when `add`).
void decode16(CollectiveChannel& channel, int sender, std::span<const std::byte> in, bool bf16,
              std::span<float> out, bool add) {
  float scale = 1.0f;
  if (!bf16) {
    std::memcpy(&scale, in.data(), sizeof scale);
    in = in.subspan(sizeof scale);
    if (!std::isfinite(scale) || !(scale > 0.0f)) {
      throw CommError(sender, channel.op().describe(),
                      fmt::format("rank {} sent an fp16 chunk with scale {} (not a positive "
                                  "finite float)",
                                  sender, scale));
    }
  }
  for (size_t i = 0; i < out.size(); ++i) {
    uint16_t h = 0;
    std::memcpy(&h, in.data() + i * sizeof(uint16_t), sizeof h);
    const float value = bf16 ? bf16_to_float(h) : fp16_to_float(h) * scale;
    out[i] = add ? out[i] + value : value;
  }
}

}  // namespace

void ring_reduce_scatter(CollectiveChannel& channel, std::span<float> data,
                         std::span<const size_t> offsets, ReduceOp op, size_t chunk_elements,
                         size_t window_chunks) {
  const int n = channel.size();
  if (n == 1) return;
  const int right = (channel.rank() + 1) % n;
  const int left = (channel.rank() + n - 1) % n;
  ring_pass(
      n, channel.rank(), offsets, chunk_elements, 1, window_chunks,
      [&](size_t lo, size_t hi) {
        channel.send(right, std::span<const float>(data.subspan(lo, hi - lo)));
      },
      [&](size_t lo, size_t hi) { channel.recv_reduce(left, data.subspan(lo, hi - lo), op); });
}

void ring_allgather(CollectiveChannel& channel, std::span<std::byte> data,
                    std::span<const size_t> offsets, size_t chunk_bytes, size_t window_chunks) {
  const int n = channel.size();
  if (n == 1) return;
  const int right = (channel.rank() + 1) % n;
  const int left = (channel.rank() + n - 1) % n;
  ring_pass(
      n, channel.rank(), offsets, chunk_bytes, 0, window_chunks,
      [&](size_t lo, size_t hi) {
        channel.send(right, std::span<const std::byte>(data.subspan(lo, hi - lo)));
      },
      [&](size_t lo, size_t hi) { channel.recv_into(left, data.subspan(lo, hi - lo)); });
}

void ring_allreduce(CollectiveChannel& channel, std::span<float> data, ReduceOp op,
                    size_t chunk_elements, size_t window_chunks) {
  const int n = channel.size();
  const int r = channel.rank();
  const std::vector<size_t> offsets = block_offsets(data.size(), static_cast<size_t>(n));
  ring_reduce_scatter(channel, data, offsets, op, chunk_elements, window_chunks);
  const size_t own_begin = offsets[static_cast<size_t>(r)];
  const size_t own_end = offsets[static_cast<size_t>(r) + 1];
  if (op == ReduceOp::kMean) {
    const float divisor = static_cast<float>(n);
    for (size_t i = own_begin; i < own_end; ++i) data[i] /= divisor;
  }
  std::vector<size_t> byte_offsets(offsets.begin(), offsets.end());
  for (size_t& o : byte_offsets) o *= sizeof(float);
  ring_allgather(channel, std::as_writable_bytes(data), byte_offsets,
                 chunk_elements * sizeof(float), window_chunks);
}

}  // namespace dtrain::comm

namespace dtrain::comm {

void ring_allreduce16(CollectiveChannel& channel, std::span<float> data, bool bf16,
                      size_t chunk_elements, size_t window_chunks) {
  const int n = channel.size();
  if (n == 1) return;
  const int r = channel.rank();
  const int right = (r + 1) % n;
  const int left = (r + n - 1) % n;
  const std::vector<size_t> offsets = block_offsets(data.size(), static_cast<size_t>(n));

  // Phase 1: reduce-scatter of 16-bit partial sums into float accumulators.
  std::vector<std::byte> message(encoded16_bytes(chunk_elements, bf16));
  ring_pass(
      n, r, offsets, chunk_elements, 1, window_chunks,
      [&](size_t lo, size_t hi) {
        const size_t bytes = encoded16_bytes(hi - lo, bf16);
        encode16(data.subspan(lo, hi - lo), bf16, message.data());
        channel.send(right, std::span<const std::byte>(message.data(), bytes));
      },
      [&](size_t lo, size_t hi) {
        const auto in = std::span<std::byte>(message.data(), encoded16_bytes(hi - lo, bf16));
        channel.recv_into(left, in);
        decode16(channel, left, in, bf16, data.subspan(lo, hi - lo), true);
      });

  // Phase 2: the owner encodes its finished block once; the encoded bytes go
  // around the ring unchanged and every rank decodes every block from them.
  std::vector<size_t> byte_offsets(offsets.size(), 0);
  for (size_t b = 0; b + 1 < offsets.size(); ++b) {
    byte_offsets[b + 1] =
        byte_offsets[b] + encoded16_block_bytes(offsets[b + 1] - offsets[b], chunk_elements, bf16);
  }
  std::vector<std::byte> encoded(byte_offsets.back());
  const auto for_each_chunk = [&](size_t block, const auto& visit) {
    size_t at = byte_offsets[block];
    for (size_t c = 0; c < chunk_count(offsets[block + 1] - offsets[block], chunk_elements); ++c) {
      const auto [lo, hi] = chunk_range(offsets[block], offsets[block + 1], c, chunk_elements);
      visit(lo, hi, at);
      at += encoded16_bytes(hi - lo, bf16);
    }
  };
  const auto own = static_cast<size_t>(r);
  for_each_chunk(own, [&](size_t lo, size_t hi, size_t at) {
    encode16(data.subspan(lo, hi - lo), bf16, encoded.data() + at);
  });
  ring_allgather(channel, encoded, byte_offsets, encoded16_bytes(chunk_elements, bf16),
                 window_chunks);
  for (size_t block = 0; block < static_cast<size_t>(n); ++block) {
    // Each block was encoded by its owner: `left` relays it, but the owner
    // is the rank to blame for a bad scale.
    for_each_chunk(block, [&](size_t lo, size_t hi, size_t at) {
      decode16(channel, static_cast<int>(block),
               std::span<const std::byte>(encoded).subspan(at, encoded16_bytes(hi - lo, bf16)),
               bf16, data.subspan(lo, hi - lo), false);
    });
  }
}

}  // namespace dtrain::comm
