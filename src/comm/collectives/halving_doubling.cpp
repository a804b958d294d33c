#include "comm/collectives/halving_doubling.h"

#include <utility>
#include <vector>

namespace dtrain::comm {

void halving_doubling_allreduce(CollectiveChannel& channel, std::span<float> data, ReduceOp op) {
  const int n = channel.size();
  const int r = channel.rank();
  if (n == 1) return;
  int p = 1;
  while (p * 2 <= n) p *= 2;
  const int q = n - p;

  // Phase 0: fold the first 2q ranks pairwise.
  int vr = -1;
  if (r < 2 * q) {
    if (r % 2 == 0) {
      channel.send(r + 1, std::span<const float>(data));
      channel.recv_into(r + 1, data);  // phase 3
      return;
    }
    channel.recv_reduce(r - 1, data, op);
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
    channel.send(partner, std::span<const float>(elements(give_lo, give_hi)));
    channel.recv_reduce(partner, elements(keep_lo, keep_hi), op);
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
    channel.send(partner, std::span<const float>(elements(lo, hi)));
    channel.recv_into(partner, elements(other_lo, other_hi));
    lo = parent_lo;
    hi = parent_hi;
  }

  // Phase 3: unfold.
  if (r < 2 * q) channel.send(r - 1, std::span<const float>(data));
}

}  // namespace dtrain::comm
