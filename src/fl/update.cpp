#include "fl/update.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "core/error.h"

namespace dtrain::fl {

namespace {

// The first value of `values` that is not finite, as "value 17 is nan".
std::optional<std::string> describe_non_finite(std::span<const float> values) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) return fmt::format("value {} is {}", i, values[i]);
  }
  return std::nullopt;
}

}  // namespace

RoundAggregator::RoundAggregator(int64_t round, int64_t clients, int64_t model_size,
                                 std::vector<int64_t> sampled)
    : round_(round), clients_(clients), model_size_(model_size), sampled_(std::move(sampled)) {
  if (round < 0 || clients < 1 || model_size < 0) {
    throw UsageError(fmt::format(
        "RoundAggregator: round {}, clients {}, model size {} (expected round >= 0, clients >= 1, "
        "model size >= 0)",
        round, clients, model_size));
  }
  std::sort(sampled_.begin(), sampled_.end());
  for (size_t i = 0; i < sampled_.size(); ++i) {
    if (sampled_[i] < 0 || sampled_[i] >= clients) {
      throw UsageError(
          fmt::format("RoundAggregator: round {}: sampled client {} is outside [0, {})", round,
                      sampled_[i], clients));
    }
    if (i > 0 && sampled_[i] == sampled_[i - 1]) {
      throw UsageError(
          fmt::format("RoundAggregator: round {}: client {} is sampled twice", round, sampled_[i]));
    }
  }
}

std::optional<std::string> RoundAggregator::add(ClientUpdate update) {
  // The first problem found, or nullopt; nothing changes until all checks pass.
  auto problem = [&]() -> std::optional<std::string> {
    if (update.round < round_) {
      return fmt::format("stale update from round {}", update.round);
    }
    if (update.round > round_) {
      return fmt::format("update from future round {}", update.round);
    }
    if (update.client < 0 || update.client >= clients_) {
      return fmt::format("client id outside [0, {})", clients_);
    }
    if (!std::binary_search(sampled_.begin(), sampled_.end(), update.client)) {
      return std::string("client was not sampled this round");
    }
    const auto at =
        std::lower_bound(updates_.begin(), updates_.end(), update.client,
                         [](const ClientUpdate& u, int64_t client) { return u.client < client; });
    if (at != updates_.end() && at->client == update.client) {
      return std::string("client already reported this round");
    }
    if (static_cast<int64_t>(update.delta.size()) != model_size_) {
      return fmt::format("update has {} values, the model has {}", update.delta.size(),
                         model_size_);
    }
    if (update.samples <= 0) {
      return fmt::format("sample count {} is not positive", update.samples);
    }
    if (update.samples > std::numeric_limits<int64_t>::max() - samples()) {
      return fmt::format("sample count {} overflows the round's total {}", update.samples,
                         samples());
    }
    if (!std::isfinite(update.loss)) return fmt::format("loss is {}", update.loss);
    if (auto bad = describe_non_finite(update.delta)) return "update " + *bad;
    return std::nullopt;
  }();

  if (problem) {
    ++rejected_;
    return fmt::format("client {}, round {}: {}", update.client, round_, *problem);
  }
  // Kept in ascending client id: mean_delta() sums in that order.
  const auto at =
      std::lower_bound(updates_.begin(), updates_.end(), update.client,
                       [](const ClientUpdate& u, int64_t client) { return u.client < client; });
  updates_.insert(at, std::move(update));
  return std::nullopt;
}

int64_t RoundAggregator::samples() const {
  int64_t total = 0;
  for (const auto& u : updates_) total += u.samples;
  return total;
}

std::vector<int64_t> RoundAggregator::accepted_clients() const {
  std::vector<int64_t> ids;
  ids.reserve(updates_.size());
  for (const auto& u : updates_) ids.push_back(u.client);
  return ids;
}

double RoundAggregator::mean_loss() const {
  if (updates_.empty()) return std::numeric_limits<double>::quiet_NaN();
  double weighted = 0.0;
  double total = 0.0;
  for (const auto& u : updates_) {
    const auto n = static_cast<double>(u.samples);
    weighted += n * u.loss;
    total += n;
  }
  return weighted / total;
}

std::vector<float> RoundAggregator::mean_delta() const {
  if (updates_.empty()) {
    throw UsageError(fmt::format("round {}: no update was accepted ({} rejected), no mean delta",
                                 round_, rejected_));
  }
  // updates_ is in ascending client id, so the sums' order, and so every bit
  // of the result, does not depend on the order add() saw the updates in.
  std::vector<double> sum(static_cast<size_t>(model_size_), 0.0);
  double total = 0.0;
  for (const auto& u : updates_) {
    const auto n = static_cast<double>(u.samples);
    total += n;
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += n * static_cast<double>(u.delta[i]);
  }
  std::vector<float> mean(sum.size());
  for (size_t i = 0; i < sum.size(); ++i) mean[i] = static_cast<float>(sum[i] / total);
  return mean;
}

}  // namespace dtrain::fl
