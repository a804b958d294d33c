#include "fl/round_accountant.h"

#include <fmt/format.h>

#include "core/error.h"

namespace dtrain::fl {

double sampling_rate(int64_t sampled, int64_t pool) {
  if (pool < 1 || sampled < 0 || sampled > pool) {
    throw UsageError(fmt::format("sampling_rate: {} sampled of a pool of {}", sampled, pool));
  }
  return static_cast<double>(sampled) / static_cast<double>(pool);
}

RoundAccountant::RoundAccountant(const FlConfig& config, int64_t resumed_round,
                                 const std::map<std::string, std::string>& saved,
                                 std::string_view owner)
    : enabled_(config.dp()),
      sigma_(config.dp_noise_multiplier),
      delta_(config.dp_delta),
      target_epsilon_(config.dp_target_epsilon) {
  if (!enabled_ || resumed_round <= 0) return;
  if (saved.empty()) {
    throw UsageError(
        fmt::format("{}: the resume state (round {}) has no DP accountant: its rounds' privacy "
                    "cost is unknown",
                    owner, resumed_round));
  }
  accountant_.restore(privacy::RdpAccountantState::from_map(saved));
}

std::optional<std::string> RoundAccountant::budget_stop(int64_t round, double q) const {
  if (!enabled_ || target_epsilon_ <= 0.0) return std::nullopt;
  if (!accountant_.would_exceed(target_epsilon_, delta_, q, sigma_, 1)) return std::nullopt;
  const privacy::PrivacySpent spent = accountant_.epsilon(delta_);
  return fmt::format(
      "privacy budget: stopped before round {}: it would bring epsilon from {:.4g} above "
      "fl.dp_target_epsilon = {} (delta {})",
      round, spent.balle, target_epsilon_, delta_);
}

void RoundAccountant::step(double q) {
  if (enabled_) accountant_.step(q, sigma_);
}

void RoundAccountant::record(RoundReport& report, ServerState& state) const {
  if (!enabled_) return;
  const privacy::PrivacySpent spent = accountant_.epsilon(delta_);
  report.epsilon = spent.balle;
  report.epsilon_classic = spent.classic;
  state.accountant = accountant_.state().to_map();
}

}  // namespace dtrain::fl
