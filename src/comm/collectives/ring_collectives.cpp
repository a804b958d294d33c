#include "comm/collectives/ring_collectives.h"

#include <algorithm>
#include <vector>

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
// (r - s - shift - 1) from the left, chunk by chunk and interleaved so that
// the pipeline stays full. send(lo, hi) and recv(lo, hi) move one chunk.
template <class Send, class Recv>
void ring_pass(int n, int r, std::span<const size_t> offsets, size_t chunk, int shift,
               const Send& send, const Recv& recv) {
  for (int s = 0; s < n - 1; ++s) {
    const size_t send_block = ring_index(r - s - shift, n);
    const size_t recv_block = ring_index(r - s - shift - 1, n);
    const size_t send_chunks = chunk_count(offsets[send_block + 1] - offsets[send_block], chunk);
    const size_t recv_chunks = chunk_count(offsets[recv_block + 1] - offsets[recv_block], chunk);
    for (size_t c = 0; c < std::max(send_chunks, recv_chunks); ++c) {
      if (c < send_chunks) {
        const auto [lo, hi] = chunk_range(offsets[send_block], offsets[send_block + 1], c, chunk);
        send(lo, hi);
      }
      if (c < recv_chunks) {
        const auto [lo, hi] = chunk_range(offsets[recv_block], offsets[recv_block + 1], c, chunk);
        recv(lo, hi);
      }
    }
  }
}

}  // namespace

void ring_reduce_scatter(CollectiveChannel& channel, std::span<float> data,
                         std::span<const size_t> offsets, ReduceOp op, size_t chunk_elements) {
  const int n = channel.size();
  if (n == 1) return;
  const int right = (channel.rank() + 1) % n;
  const int left = (channel.rank() + n - 1) % n;
  ring_pass(
      n, channel.rank(), offsets, chunk_elements, 1,
      [&](size_t lo, size_t hi) {
        channel.send(right, std::span<const float>(data.subspan(lo, hi - lo)));
      },
      [&](size_t lo, size_t hi) { channel.recv_reduce(left, data.subspan(lo, hi - lo), op); });
}

void ring_allgather(CollectiveChannel& channel, std::span<std::byte> data,
                    std::span<const size_t> offsets, size_t chunk_bytes) {
  const int n = channel.size();
  if (n == 1) return;
  const int right = (channel.rank() + 1) % n;
  const int left = (channel.rank() + n - 1) % n;
  ring_pass(
      n, channel.rank(), offsets, chunk_bytes, 0,
      [&](size_t lo, size_t hi) {
        channel.send(right, std::span<const std::byte>(data.subspan(lo, hi - lo)));
      },
      [&](size_t lo, size_t hi) { channel.recv_into(left, data.subspan(lo, hi - lo)); });
}

void ring_allreduce(CollectiveChannel& channel, std::span<float> data, ReduceOp op,
                    size_t chunk_elements) {
  const int n = channel.size();
  const int r = channel.rank();
  const std::vector<size_t> offsets = block_offsets(data.size(), static_cast<size_t>(n));
  ring_reduce_scatter(channel, data, offsets, op, chunk_elements);
  const size_t own_begin = offsets[static_cast<size_t>(r)];
  const size_t own_end = offsets[static_cast<size_t>(r) + 1];
  if (op == ReduceOp::kMean) {
    const float divisor = static_cast<float>(n);
    for (size_t i = own_begin; i < own_end; ++i) data[i] /= divisor;
  }
  std::vector<size_t> byte_offsets(offsets.begin(), offsets.end());
  for (size_t& o : byte_offsets) o *= sizeof(float);
  ring_allgather(channel, std::as_writable_bytes(data), byte_offsets,
                 chunk_elements * sizeof(float));
}

}  // namespace dtrain::comm
