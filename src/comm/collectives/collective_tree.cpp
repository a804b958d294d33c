#include "comm/collectives/collective_tree.h"

#include <algorithm>
#include <vector>

namespace dtrain::comm {

void binomial_broadcast(CollectiveChannel& channel, std::span<std::byte> data, int root,
                        size_t chunk_bytes) {
  const int n = channel.size();
  if (n == 1) return;
  const int vr = (channel.rank() - root + n) % n;
  const auto real_rank = [&](int v) { return (v + root) % n; };
  // The parent is vr with its lowest set bit cleared; the children are
  // vr + m for every power of two m below that bit (below n for the root).
  int lowest = 1;
  while (lowest < n && (vr & lowest) == 0) lowest <<= 1;
  std::vector<int> children;
  for (int m = lowest >> 1; m >= 1; m >>= 1) {
    if (vr + m < n) children.push_back(real_rank(vr + m));
  }
  const size_t chunks = chunk_count(data.size(), chunk_bytes);
  for (size_t c = 0; c < chunks; ++c) {
    const size_t lo = std::min(data.size(), c * chunk_bytes);
    const std::span<std::byte> piece = data.subspan(lo, std::min(data.size() - lo, chunk_bytes));
    if (vr != 0) channel.recv_into(real_rank(vr - lowest), piece);
    for (const int child : children) channel.send(child, std::span<const std::byte>(piece));
  }
}

void dissemination_barrier(CollectiveChannel& channel) {
  const int n = channel.size();
  const int r = channel.rank();
  for (int distance = 1; distance < n; distance *= 2) {
    channel.send((r + distance) % n, std::span<const std::byte>());
    channel.recv_into((r - distance + n) % n, std::span<std::byte>());
  }
}

}  // namespace dtrain::comm
