#include "privacy/secagg_graph.h"

#include <algorithm>
#include <numeric>
#include <string>

#include "core/error.h"
#include "core/rng.h"

namespace dtrain::privacy {

std::vector<std::vector<uint32_t>> secagg_neighbours(SecAggGraphKind kind, uint32_t clients,
                                                     uint32_t degree, uint64_t seed) {
  if (clients == 0) throw UsageError("secagg graph: no clients");
  std::vector<std::vector<uint32_t>> out(clients);
  const bool full = kind == SecAggGraphKind::kFull || degree + 1 >= clients;
  if (full) {
    for (uint32_t u = 0; u < clients; ++u) {
      for (uint32_t v = 0; v < clients; ++v) {
        if (v != u) out[u].push_back(v);
      }
    }
    return out;
  }
  if (degree == 0 || degree % 2 != 0) {
    throw UsageError("secagg graph: the SecAgg+ degree k = " + std::to_string(degree) +
                     " must be even and positive (the Harary graph H(k, n) joins k/2 ring "
                     "neighbours on either side)");
  }
  // Public random relabelling: position i on the ring holds client order[i].
  std::vector<uint32_t> order(clients);
  std::iota(order.begin(), order.end(), 0U);
  Rng rng(seed);
  for (uint32_t i = clients - 1; i > 0; --i) {
    std::swap(order[i], order[rng.below(uint64_t{i} + 1)]);
  }
  const uint32_t half = degree / 2;
  for (uint32_t i = 0; i < clients; ++i) {
    for (uint32_t d = 1; d <= half; ++d) {
      out[order[i]].push_back(order[(i + d) % clients]);
      out[order[i]].push_back(order[(i + clients - d) % clients]);
    }
  }
  for (auto& list : out) std::sort(list.begin(), list.end());
  return out;
}

uint32_t recommended_degree(uint32_t clients) {
  uint32_t bits = 0;
  while ((uint64_t{1} << bits) < clients) ++bits;
  return 2 * std::max<uint32_t>(bits, 1);
}

}  // namespace dtrain::privacy
