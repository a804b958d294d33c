#include "comm/collectives/halving_doubling.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace dtrain::comm {

namespace {

// The chunk c of `range` (chunk_elements floats; the last one ragged).
std::span<float> chunk_of(std::span<float> range, size_t c, size_t chunk_elements) {
  const size_t lo = std::min(range.size(), c * chunk_elements);
  return range.subspan(lo, std::min(range.size() - lo, chunk_elements));
}

// Sends all of `range` to `peer` in chunks (one-sided: the fold).
void send_all(CollectiveChannel& channel, int peer, std::span<float> range, size_t chunk_elements) {
  const size_t chunks = chunk_count(range.size(), chunk_elements);
  for (size_t c = 0; c < chunks; ++c) {
    channel.send(peer, std::span<const float>(chunk_of(range, c, chunk_elements)));
  }
}

// Receives all of `range` from `peer` in chunks, reduced into it or copied.
void recv_all(CollectiveChannel& channel, int peer, std::span<float> range, bool reduce,
              ReduceOp op, size_t chunk_elements) {
  const size_t chunks = chunk_count(range.size(), chunk_elements);
  for (size_t c = 0; c < chunks; ++c) {
    if (reduce) {
      channel.recv_reduce(peer, chunk_of(range, c, chunk_elements), op);
    } else {
      channel.recv_into(peer, chunk_of(range, c, chunk_elements));
    }
  }
}

// One round with `partner`: sends `give` and receives `keep` chunk by chunk,
// at most `window` chunks sent ahead of the received ones (as the ring),
// each received chunk reduced into `keep` (or copied there when `reduce` is
// false) as it arrives. The partner cuts the same ranges the same way, so
// its chunks of `keep` are ours.
void exchange(CollectiveChannel& channel, int partner, std::span<float> give, std::span<float> keep,
              bool reduce, ReduceOp op, size_t chunk_elements, size_t window) {
  const size_t give_chunks = chunk_count(give.size(), chunk_elements);
  const size_t keep_chunks = chunk_count(keep.size(), chunk_elements);
  size_t sent = 0;
  const auto send_until = [&](size_t limit) {
    for (; sent < std::min(give_chunks, limit); ++sent) {
      channel.send(partner, std::span<const float>(chunk_of(give, sent, chunk_elements)));
    }
  };
  for (size_t c = 0; c < keep_chunks; ++c) {
    send_until(c + window);
    if (reduce) {
      channel.recv_reduce(partner, chunk_of(keep, c, chunk_elements), op);
    } else {
      channel.recv_into(partner, chunk_of(keep, c, chunk_elements));
    }
  }
  send_until(give_chunks);
}

}  // namespace

void halving_doubling_allreduce(CollectiveChannel& channel, std::span<float> data, ReduceOp op,
                                size_t chunk_elements, size_t window_chunks) {
  const int n = channel.size();
  const int r = channel.rank();
  if (n == 1) return;
  chunk_elements = std::max<size_t>(chunk_elements, 1);
  const size_t window = std::max<size_t>(window_chunks, 1);
  int p = 1;
  while (p * 2 <= n) p *= 2;
  const int q = n - p;

  // Phase 0: fold the first 2q ranks pairwise.
  int vr = -1;
  if (r < 2 * q) {
    if (r % 2 == 0) {
      send_all(channel, r + 1, data, chunk_elements);
      recv_all(channel, r + 1, data, false, op, chunk_elements);  // phase 3
      return;
    }
    recv_all(channel, r - 1, data, true, op, chunk_elements);
    vr = r / 2;
  } else {
    vr = r - q;
  }
  const auto real_rank = [q](int v) { return v < q ? 2 * v + 1 : v + q; };

  // Phase 1: recursive halving over p blocks.
  const std::vector<size_t> offsets = block_offsets(data.size(), static_cast<size_t>(p));
  const auto elements = [&](int lo, int hi) {
    return data.subspan(offsets[static_cast<size_t>(lo)],
                        offsets[static_cast<size_t>(hi)] - offsets[static_cast<size_t>(lo)]);
  };
  int lo = 0;
  int hi = p;
  std::vector<std::pair<int, int>> ranges;  // the range held before each round
  for (int distance = p / 2; distance >= 1; distance /= 2) {
    const int partner = real_rank(vr ^ distance);
    const int mid = (lo + hi) / 2;
    const bool keep_lower = (vr & distance) == 0;
    const auto [keep_lo, keep_hi] = keep_lower ? std::pair{lo, mid} : std::pair{mid, hi};
    const auto [give_lo, give_hi] = keep_lower ? std::pair{mid, hi} : std::pair{lo, mid};
    exchange(channel, partner, elements(give_lo, give_hi), elements(keep_lo, keep_hi), true, op,
             chunk_elements, window);
    ranges.emplace_back(lo, hi);
    lo = keep_lo;
    hi = keep_hi;
  }
  if (op == ReduceOp::kMean) {
    const float divisor = static_cast<float>(n);
    for (float& x : elements(lo, hi)) x /= divisor;
  }

  // Phase 2: recursive doubling, the rounds in reverse.
  for (int distance = 1; distance < p; distance *= 2) {
    const int partner = real_rank(vr ^ distance);
    const auto [parent_lo, parent_hi] = ranges.back();
    ranges.pop_back();
    const bool held_lower = lo == parent_lo;
    const auto [other_lo, other_hi] =
        held_lower ? std::pair{hi, parent_hi} : std::pair{parent_lo, lo};
    exchange(channel, partner, elements(lo, hi), elements(other_lo, other_hi), false, op,
             chunk_elements, window);
    lo = parent_lo;
    hi = parent_hi;
  }

  // Phase 3: unfold.
  if (r < 2 * q) send_all(channel, r - 1, data, chunk_elements);
}

}  // namespace dtrain::comm
