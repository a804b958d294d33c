#include "comm/collectives/recursive_doubling.h"

#include <algorithm>

#include "core/error.h"

namespace dtrain::comm {

void recursive_doubling_allreduce(CollectiveChannel& channel, std::span<float> data, ReduceOp op,
                                  size_t chunk_elements, size_t window_chunks) {
  const int n = channel.size();
  const int r = channel.rank();
  DTRAIN_CHECK(n > 0 && (n & (n - 1)) == 0, "recursive doubling over a power of two of ranks", n);
  const size_t chunks = chunk_count(data.size(), chunk_elements);
  const size_t window = std::max<size_t>(window_chunks, 1);
  const auto chunk = [&](size_t c) {
    const size_t lo = std::min(data.size(), c * chunk_elements);
    return data.subspan(lo, std::min(data.size() - lo, chunk_elements));
  };
  for (int distance = 1; distance < n; distance *= 2) {
    const int partner = r ^ distance;
    const bool lower = r < partner;
    // Chunk c is sent before it is combined (sent > c when it is received).
    size_t sent = 0;
    for (size_t c = 0; c < chunks; ++c) {
      for (; sent < std::min(chunks, c + window); ++sent) {
        channel.send(partner, std::span<const float>(chunk(sent)));
      }
      if (lower) {
        channel.recv_reduce(partner, chunk(c), op);
      } else {
        channel.recv_reduce_left(partner, chunk(c), op);
      }
    }
  }
  if (op == ReduceOp::kMean) {
    const float divisor = static_cast<float>(n);
    for (float& x : data) x /= divisor;
  }
}

}  // namespace dtrain::comm
