#include "privacy/secagg_round.h"

#include <sodium.h>

#include <chrono>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

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

using Receive = void (SecAggServer::*)(uint32_t, std::span<const std::byte>);

// One secure-aggregation round in memory: n SecAggClients and a
// SecAggServer passing their messages directly, each client dropping at its
// point of `drops`, every message counted and every call timed into
// `stats`. The phases are Bonawitz et al. 2017's (privacy/secagg.h).
class InMemoryRound {
 public:
  InMemoryRound(const SecAggConfig& config, uint64_t seed,
                const std::map<uint32_t, SecAggDrop>& drops, SecAggRoundStats& stats)
      : drops_(drops), stats_(stats), server_(config) {
    const uint32_t n = config.clients;
    stats_.client_bytes_sent.assign(n, 0);
    stats_.client_bytes_received.assign(n, 0);
    clients_.resize(n);
    for (uint32_t u = 0; u < n; ++u) clients_[u].emplace(config, u, client_entropy(seed, u));
  }

  // The unmasked sum; CommError when a phase falls below the threshold.
  SecAggResult run(std::span<const std::span<const float>> inputs) {
    // Phase 0: every client that has not dropped advertises its keys.
    for (uint32_t u = 0; u < clients_.size(); ++u) {
      if (drop_of(u) == SecAggDrop::kBeforeAdvertise) continue;
      const auto start = Clock::now();
      const SecAggMessage message = clients_[u]->advertise_keys();
      stats_.client_seconds[0].push_back(seconds_since(start));
      to_server(0, u, message, &SecAggServer::receive_advertise);
    }
    const auto directories = server_finish(0, [&] { return server_.finish_advertise(); });
    // Phase 1: the key directory, answered with the encrypted shares.
    relay(
        1, directories, SecAggDrop::kAfterAdvertise,
        [&](uint32_t u, const SecAggMessage& m) { return clients_[u]->share_keys(m); },
        &SecAggServer::receive_share_keys);
    const auto bundles = server_finish(1, [&] { return server_.finish_share_keys(); });
    // Phase 2: the share bundle, answered with the masked input.
    relay(
        2, bundles, SecAggDrop::kAfterShareKeys,
        [&](uint32_t u, const SecAggMessage& m) { return clients_[u]->masked_input(m, inputs[u]); },
        &SecAggServer::receive_masked_input);
    const auto requests = server_finish(2, [&] { return server_.finish_masked_input(); });
    // Phase 3: the unmask request, answered with the shares.
    for (const auto& [u, request] : requests) {
      if (drop_of(u) == SecAggDrop::kAfterMaskedInput) continue;
      to_client(u, request);
      const auto start = Clock::now();
      const SecAggMessage message = clients_[u]->unmask(request);
      stats_.client_seconds[3].push_back(seconds_since(start));
      if (drop_of(u) == SecAggDrop::kDuringUnmasking) continue;
      to_server(3, u, message, &SecAggServer::receive_unmasking);
    }
    return server_finish(3, [&] { return server_.finish(); });
  }

 private:
  SecAggDrop drop_of(uint32_t u) const {
    const auto found = drops_.find(u);
    return found == drops_.end() ? SecAggDrop::kNever : found->second;
  }

  // Delivers one client's message to the server, counting and timing it.
  void to_server(int phase, uint32_t u, const SecAggMessage& message, Receive receive) {
    stats_.client_bytes_sent[u] += message.size();
    stats_.server_bytes_received += message.size();
    const auto start = Clock::now();
    (server_.*receive)(u, message);
    stats_.server_seconds[static_cast<size_t>(phase)] += seconds_since(start);
  }

  void to_client(uint32_t u, const SecAggMessage& message) {
    stats_.client_bytes_received[u] += message.size();
    stats_.server_bytes_sent += message.size();
  }

  template <typename Finish>
  auto server_finish(int phase, Finish finish) -> decltype(finish()) {
    const auto start = Clock::now();
    auto out = finish();
    stats_.server_seconds[static_cast<size_t>(phase)] += seconds_since(start);
    return out;
  }

  // Phases 1 and 2: each client the server addressed gets its message and,
  // unless it drops at `drop_point` or gives up (CommError: too few
  // neighbours left), answers it.
  template <typename Answer>
  void relay(int phase, const std::map<uint32_t, SecAggMessage>& outgoing, SecAggDrop drop_point,
             Answer answer, Receive receive) {
    for (const auto& [u, message] : outgoing) {
      to_client(u, message);
      if (drop_of(u) == drop_point) continue;
      const auto start = Clock::now();
      SecAggMessage reply;
      try {
        reply = answer(u, message);
      } catch (const CommError&) {
        continue;  // the client gives up: a drop
      }
      stats_.client_seconds[static_cast<size_t>(phase)].push_back(seconds_since(start));
      to_server(phase, u, reply, receive);
    }
  }

  const std::map<uint32_t, SecAggDrop>& drops_;  // the caller's, for the round
  SecAggRoundStats& stats_;                      // the caller's result
  std::vector<std::optional<SecAggClient>> clients_;
  SecAggServer server_;
};

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
  SecAggRoundResult result;
  InMemoryRound round(config, options.seed, drops, result.stats);
  try {
    SecAggResult sum = round.run(inputs);
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
