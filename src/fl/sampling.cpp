#include "fl/sampling.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "core/error.h"

namespace dtrain::fl {

namespace {

// Domain tags: each kind of draw has its own stream, so that e.g. the
// sampling of round r and the fate of client r never share an Rng.
constexpr uint64_t kSampleDomain = 0x666c2d73616d706cULL;  // "fl-sampl"
constexpr uint64_t kClientDomain = 0x666c2d636c69656eULL;  // "fl-clien"
constexpr uint64_t kFateDomain = 0x666c2d6661746573ULL;    // "fl-fates"

// splitmix64's finaliser: a bijective 64-bit mix.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

uint64_t stream_seed(uint64_t domain, uint64_t seed, int64_t a, int64_t b) {
  uint64_t h = mix(domain);
  h = mix(h ^ seed);
  h = mix(h ^ static_cast<uint64_t>(a));
  h = mix(h ^ static_cast<uint64_t>(b));
  return h;
}

std::vector<int64_t> sample_clients(int64_t clients, int64_t count, uint64_t seed, int64_t round) {
  if (clients < 1 || count < 0 || count > clients) {
    throw UsageError(
        fmt::format("sample_clients: {} clients of {} in round {}", count, clients, round));
  }
  Rng rng(stream_seed(kSampleDomain, seed, round));
  std::vector<int64_t> chosen;
  chosen.reserve(static_cast<size_t>(count));
  if (count == clients) {
    for (int64_t k = 0; k < clients; ++k) chosen.push_back(k);
    return chosen;
  }
  // Floyd's algorithm (Bentley & Floyd 1987): for j = K - m .. K - 1 draw t
  // in [0, j]; take t unless already taken, else take j. Every m-subset is
  // equally likely, and memory is O(m), never O(K).
  std::unordered_set<int64_t> taken;
  taken.reserve(static_cast<size_t>(count) * 2);
  for (int64_t j = clients - count; j < clients; ++j) {
    const auto t = static_cast<int64_t>(rng.below(static_cast<uint64_t>(j) + 1));
    const int64_t pick = taken.contains(t) ? j : t;
    taken.insert(pick);
    chosen.push_back(pick);
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

Rng client_rng(uint64_t seed, int64_t round, int64_t client) {
  return Rng(stream_seed(kClientDomain, seed, round, client));
}

ClientFate client_fate(const FlConfig& config, uint64_t seed, int64_t round, int64_t client) {
  if (config.dropout <= 0.0 && config.stragglers <= 0.0) return ClientFate::kNormal;
  Rng rng(stream_seed(kFateDomain, seed, round, client));
  // Two independent uniforms (53 bits each): dropout first, then straggling
  // among those that answer.
  const double drop = static_cast<double>(rng.next_u64() >> 11) * 0x1.0p-53;
  const double slow = static_cast<double>(rng.next_u64() >> 11) * 0x1.0p-53;
  if (drop < config.dropout) return ClientFate::kDropped;
  if (slow < config.stragglers) return ClientFate::kStraggler;
  return ClientFate::kNormal;
}

int64_t straggler_steps(int64_t steps, double slowdown) {
  if (steps < 1) return 1;
  if (!(slowdown >= 1.0)) return steps;
  const auto done = static_cast<int64_t>(std::ceil(static_cast<double>(steps) / slowdown));
  return std::clamp<int64_t>(done, 1, steps);
}

}  // namespace dtrain::fl
