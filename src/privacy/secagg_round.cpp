#include "privacy/secagg_round.h"

#include <sodium.h>

#include <chrono>
#include <optional>

#include "core/error.h"

namespace dtrain::privacy {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

Key32 client_entropy(uint64_t seed, uint32_t id) {
  std::array<uint8_t, 12> input{};
  for (size_t i = 0; i < 8; ++i) input[i] = static_cast<uint8_t>(seed >> (8 * i));
  for (size_t i = 0; i < 4; ++i) input[8 + i] = static_cast<uint8_t>(id >> (8 * i));
  Key32 out;
  crypto_generichash(out.data(), out.size(), input.data(), input.size(), nullptr, 0);
  return out;
}

}  // namespace

SecAggRoundResult run_secagg_round(std::span<const std::vector<float>> inputs,
                                   const SecAggRoundOptions& options,
                                   const std::map<uint32_t, SecAggDrop>& drops) {
  const std::vector<std::span<const float>> views(inputs.begin(), inputs.end());
  return run_secagg_round(std::span<const std::span<const float>>(views), options, drops);
}

SecAggRoundResult run_secagg_round(std::span<const std::span<const float>> inputs,
                                   const SecAggRoundOptions& options,
                                   const std::map<uint32_t, SecAggDrop>& drops) {
  ensure_sodium();
  const auto n = static_cast<uint32_t>(inputs.size());
  SecAggConfig config;
  config.round = options.round;
  config.clients = n;
  config.threshold = options.threshold;
  config.graph = options.graph;
  config.degree = options.degree;
  config.graph_seed = options.seed;
  config.clip = options.clip;
  config.vector_length = n == 0 ? 0 : inputs[0].size();
  config.min_survivors = options.min_survivors;
  for (const auto& input : inputs) {
    if (input.size() != config.vector_length) {
      throw UsageError("run_secagg_round: inputs of " + std::to_string(input.size()) + " and " +
                       std::to_string(config.vector_length) + " values");
    }
  }
  validate(config);
  auto drop_of = [&](uint32_t u) {
    const auto found = drops.find(u);
    return found == drops.end() ? SecAggDrop::kNever : found->second;
  };

  SecAggRoundResult result;
  SecAggRoundStats& stats = result.stats;
  stats.client_bytes_sent.assign(n, 0);
  stats.client_bytes_received.assign(n, 0);
  std::vector<std::optional<SecAggClient>> clients(n);
  for (uint32_t u = 0; u < n; ++u) clients[u].emplace(config, u, client_entropy(options.seed, u));
  SecAggServer server(config);

  // Delivers one client's message to the server, counting and timing it.
  auto to_server = [&](int phase, uint32_t u, const SecAggMessage& message, auto receive) {
    stats.client_bytes_sent[u] += message.size();
    stats.server_bytes_received += message.size();
    const auto start = Clock::now();
    (server.*receive)(u, message);
    stats.server_seconds[phase] += seconds_since(start);
  };
  auto to_client = [&](uint32_t u, const SecAggMessage& message) {
    stats.client_bytes_received[u] += message.size();
    stats.server_bytes_sent += message.size();
  };
  auto server_finish = [&](int phase, auto finish) {
    const auto start = Clock::now();
    auto out = finish();
    stats.server_seconds[phase] += seconds_since(start);
    return out;
  };

  try {
    // Phase 0.
    for (uint32_t u = 0; u < n; ++u) {
      if (drop_of(u) == SecAggDrop::kBeforeAdvertise) continue;
      const auto start = Clock::now();
      const SecAggMessage message = clients[u]->advertise_keys();
      stats.client_seconds[0].push_back(seconds_since(start));
      to_server(0, u, message, &SecAggServer::receive_advertise);
    }
    auto directories = server_finish(0, [&] { return server.finish_advertise(); });
    // Phase 1.
    for (const auto& [u, directory] : directories) {
      to_client(u, directory);
      if (drop_of(u) == SecAggDrop::kAfterAdvertise) continue;
      const auto start = Clock::now();
      SecAggMessage message;
      try {
        message = clients[u]->share_keys(directory);
      } catch (const CommError&) {
        continue;  // the client gives up (too few neighbours): a drop
      }
      stats.client_seconds[1].push_back(seconds_since(start));
      to_server(1, u, message, &SecAggServer::receive_share_keys);
    }
    auto bundles = server_finish(1, [&] { return server.finish_share_keys(); });
    // Phase 2.
    for (const auto& [u, bundle] : bundles) {
      to_client(u, bundle);
      if (drop_of(u) == SecAggDrop::kAfterShareKeys) continue;
      const auto start = Clock::now();
      SecAggMessage message;
      try {
        message = clients[u]->masked_input(bundle, inputs[u]);
      } catch (const CommError&) {
        continue;  // the client gives up (too few neighbours shared keys): a drop
      }
      stats.client_seconds[2].push_back(seconds_since(start));
      to_server(2, u, message, &SecAggServer::receive_masked_input);
    }
    auto requests = server_finish(2, [&] { return server.finish_masked_input(); });
    // Phase 3.
    for (const auto& [u, request] : requests) {
      if (drop_of(u) == SecAggDrop::kAfterMaskedInput) continue;
      to_client(u, request);
      const auto start = Clock::now();
      const SecAggMessage message = clients[u]->unmask(request);
      stats.client_seconds[3].push_back(seconds_since(start));
      if (drop_of(u) == SecAggDrop::kDuringUnmasking) continue;
      to_server(3, u, message, &SecAggServer::receive_unmasking);
    }
    SecAggResult sum = server_finish(3, [&] { return server.finish(); });
    result.ok = true;
    result.sum = std::move(sum.sum);
    result.included = std::move(sum.included);
  } catch (const CommError& error) {
    result.ok = false;
    result.failure = error.what();
  }
  return result;
}

}  // namespace dtrain::privacy
