#include "fl/private_update.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "fl/sampling.h"
#include "privacy/secagg_graph.h"

namespace dtrain::fl {

namespace {

// Domain tags of the privacy streams (fl/sampling.cpp has the others).
constexpr uint64_t kNoiseDomain = 0x666c2d6e6f697365ULL;   // "fl-noise"
constexpr uint64_t kServerDomain = 0x666c2d7376726e7aULL;  // "fl-svrnz"
constexpr uint64_t kDropDomain = 0x666c2d64726f7073ULL;    // "fl-drops"
constexpr uint64_t kGraphDomain = 0x666c2d6772617068ULL;   // "fl-graph"

// z S: the standard deviation of the whole round's noise on the sum.
double noise_stddev(const FlConfig& c) { return c.dp_noise_multiplier * c.dp_clip; }

}  // namespace

double client_weight(const FlConfig& config, int64_t samples, double mean_samples) {
  if (config.dp()) return 1.0;
  if (!(mean_samples > 0.0)) {
    throw UsageError(fmt::format("client_weight: mean samples {} is not positive", mean_samples));
  }
  return static_cast<double>(samples) / mean_samples;
}

double l2_norm(std::span<const float> values) {
  double sum = 0.0;
  for (const float v : values) sum += static_cast<double>(v) * v;
  return std::sqrt(sum);
}

double clip_l2(std::span<float> delta, double clip) {
  const double norm = l2_norm(delta);
  if (norm > clip) {
    const double factor = clip / norm;
    for (float& v : delta) v = static_cast<float>(v * factor);
    // float rounding may leave the norm a hair above the clip: shrink once more.
    const double after = l2_norm(delta);
    if (after > clip) {
      const double again = clip / after * (1.0 - 1e-7);
      for (float& v : delta) v = static_cast<float>(v * again);
    }
  }
  return norm;
}

std::vector<float> secagg_input(const ClientUpdate& update, const FlConfig& config,
                                int64_t clients_in_round, double mean_samples, Rng& noise_rng) {
  if (clients_in_round < 1) {
    throw UsageError(fmt::format("secagg_input: {} clients in the round", clients_in_round));
  }
  std::vector<float> input = update.delta;
  if (config.dp()) clip_l2(input, config.dp_clip);
  const double weight = client_weight(config, update.samples, mean_samples);
  if (weight != 1.0) {
    for (float& v : input) v = static_cast<float>(v * weight);
  }
  if (config.dp() && config.secure_aggregation) {
    const auto share =
        static_cast<float>(noise_stddev(config) / std::sqrt(static_cast<double>(clients_in_round)));
    for (float& v : input) v += share * noise_rng.normal();
  }
  return input;
}

std::vector<float> secagg_output(std::span<const float> unmasked_sum, const FlConfig& config,
                                 int64_t clients_in_round, int64_t included, double included_weight,
                                 Rng& server_rng) {
  if (clients_in_round < 1 || included < 1 || included > clients_in_round) {
    throw UsageError(fmt::format("secagg_output: {} included of {} clients in the round", included,
                                 clients_in_round));
  }
  std::vector<float> mean(unmasked_sum.begin(), unmasked_sum.end());
  if (config.dp()) {
    // The part of the variance z^2 S^2 the sum does not carry yet.
    const double missing = config.secure_aggregation
                               ? static_cast<double>(clients_in_round - included) /
                                     static_cast<double>(clients_in_round)
                               : 1.0;
    if (missing > 0.0) {
      const auto stddev = static_cast<float>(noise_stddev(config) * std::sqrt(missing));
      for (float& v : mean) v += stddev * server_rng.normal();
    }
    const double m = static_cast<double>(clients_in_round);
    for (float& v : mean) v = static_cast<float>(v / m);
    return mean;
  }
  if (!(included_weight > 0.0)) {
    throw UsageError(
        fmt::format("secagg_output: included weight {} is not positive", included_weight));
  }
  for (float& v : mean) v = static_cast<float>(v / included_weight);
  return mean;
}

uint32_t secagg_threshold(const FlConfig& config, uint32_t holders) {
  if (config.secagg_threshold > 0) {
    return static_cast<uint32_t>(std::min<int64_t>(config.secagg_threshold, holders));
  }
  return std::min<uint32_t>(holders / 2 + 1, holders);
}

privacy::SecAggConfig secagg_config(const FlConfig& config, int64_t n, uint64_t seed, int64_t round,
                                    uint64_t vector_length) {
  if (n < 1 || n > 0xfffffffeLL || round < 0 || round > 0xffffffffLL) {
    throw UsageError(fmt::format("secagg_config: {} clients in round {}", n, round));
  }
  privacy::SecAggConfig s;
  s.round = static_cast<uint32_t>(round);
  s.clients = static_cast<uint32_t>(n);
  s.graph = config.secagg_graph == "sparse" ? privacy::SecAggGraphKind::kHarary
                                            : privacy::SecAggGraphKind::kFull;
  s.degree = 0;
  s.graph_seed = stream_seed(kGraphDomain, seed, round);
  s.clip = static_cast<float>(config.secagg_clip);
  s.vector_length = vector_length;
  s.threshold = secagg_threshold(config, privacy::holders_per_client(s));
  s.min_survivors = 0;
  privacy::validate(s);
  return s;
}

privacy::SecAggDrop secagg_drop_point(uint64_t seed, int64_t round, int64_t client) {
  Rng rng(stream_seed(kDropDomain, seed, round, client));
  const auto pick = std::min<uint64_t>(3, static_cast<uint64_t>(rng.uniform() * 4.0F));
  switch (pick) {
    case 0:
      return privacy::SecAggDrop::kBeforeAdvertise;
    case 1:
      return privacy::SecAggDrop::kAfterAdvertise;
    case 2:
      return privacy::SecAggDrop::kAfterShareKeys;
    default:
      return privacy::SecAggDrop::kAfterMaskedInput;
  }
}

Rng client_noise_rng(uint64_t seed, int64_t round, int64_t client) {
  return Rng(stream_seed(kNoiseDomain, seed, round, client));
}

Rng server_noise_rng(uint64_t seed, int64_t round) {
  return Rng(stream_seed(kServerDomain, seed, round));
}

}  // namespace dtrain::fl
