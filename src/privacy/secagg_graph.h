// Who masks with whom in secure aggregation: the communication graph.
//
// - kFull: every pair of clients (Bonawitz et al. 2017); each client's
//   secrets are shared among all n clients (itself included), threshold t.
// - kHarary (SecAgg+, after Bell et al. 2020, "Secure Single-Server
//   Aggregation with (Poly)Logarithmic Overhead"): the Harary graph H(k, n)
//   (clients on a ring, each joined to the k/2 nearest on either side) on a
//   random relabelling of the ids drawn from a public seed. Every client has
//   exactly k neighbours (k even, k < n - 1; otherwise the graph is full), the
//   graph is k-connected, and a client's secrets are shared among its k
//   neighbours and itself (k + 1 holders) with the per-neighbourhood
//   threshold t. Bell et al. analyse a random graph G(n, p) with degree
//   O(log n); we use the Harary graph for its exact degree and connectivity
//   and rely on the random
//   relabelling, drawn after the clients are chosen, to keep the neighbours
//   unpredictable. recommended_degree(n) = 2 ceil(log2 n) rounded to even.
//
// Errors: UsageError for an odd degree or n == 0. Thread safety: pure
// functions. Never blocks.
#pragma once

#include <cstdint>
#include <vector>

namespace dtrain::privacy {

enum class SecAggGraphKind : uint8_t { kFull = 0, kHarary = 1 };

// Neighbour lists (sorted, without the client itself) of clients 0..n-1.
std::vector<std::vector<uint32_t>> secagg_neighbours(SecAggGraphKind kind, uint32_t clients,
                                                     uint32_t degree, uint64_t seed);

uint32_t recommended_degree(uint32_t clients);

}  // namespace dtrain::privacy
