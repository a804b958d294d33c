// Who takes part in a round, and what happens to each sampled client in a
// simulation. Every draw is a pure function of (seed, round[, client]) with
// its own domain-separated Rng stream, so a round can be replayed alone (a
// resumed server samples what the original would have) and an idle client
// needs no state at all: its data indices are its partition, its RNG is
// derived on demand.
// Thread safety: pure functions. Never blocks.
#pragma once

#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "fl/fl_config.h"

namespace dtrain::fl {

// A seed for the random stream of (domain, seed, a, b): chained splitmix64
// mixing, so that no two distinct tuples collide except by a 64-bit
// accident. Every federated draw (sampling, fates, client RNGs, secure
// aggregation's graphs and drops, DP noise) takes its own domain constant.
uint64_t stream_seed(uint64_t domain, uint64_t seed, int64_t a, int64_t b = 0);

// `count` distinct client ids from [0, clients), uniformly without
// replacement, ascending (Floyd's algorithm: O(count) time and memory, never
// O(clients)). UsageError unless 0 <= count <= clients.
std::vector<int64_t> sample_clients(int64_t clients, int64_t count, uint64_t seed, int64_t round);

// The generator of client `client`'s local training in `round`.
Rng client_rng(uint64_t seed, int64_t round, int64_t client);

enum class ClientFate { kNormal, kDropped, kStraggler };

// A simulated client's fate in `round`: dropped with probability
// config.dropout, else a straggler with probability config.stragglers (two
// independent draws, so a straggler's overall share is
// (1 - dropout) * stragglers).
ClientFate client_fate(const FlConfig& config, uint64_t seed, int64_t round, int64_t client);

// The steps a straggler finishes by the deadline: ceil(steps / slowdown),
// within [1, steps] (a slowdown below 1 finishes them all).
int64_t straggler_steps(int64_t steps, double slowdown);

}  // namespace dtrain::fl
