#include "privacy/secagg.h"

#include <string>

#include "core/error.h"

namespace dtrain::privacy {

const char* secagg_phase_name(int phase) {
  switch (phase) {
    case 0:
      return "0 (advertise keys)";
    case 1:
      return "1 (share keys)";
    case 2:
      return "2 (masked input)";
    case 3:
      return "3 (unmasking)";
    default:
      return "after the round";
  }
}

uint32_t holders_per_client(const SecAggConfig& config) {
  const uint32_t k = config.degree != 0 ? config.degree : recommended_degree(config.clients);
  if (config.graph == SecAggGraphKind::kFull || k + 1 >= config.clients) return config.clients;
  return k + 1;
}

void validate(const SecAggConfig& config) {
  if (config.clients == 0) throw UsageError("secagg: no clients");
  if (config.graph == SecAggGraphKind::kHarary && config.degree % 2 != 0) {
    throw UsageError("secagg: the SecAgg+ degree " + std::to_string(config.degree) +
                     " must be even");
  }
  const uint32_t holders = holders_per_client(config);
  if (config.threshold == 0 || config.threshold > holders) {
    throw UsageError("secagg: threshold " + std::to_string(config.threshold) + " must be in [1, " +
                     std::to_string(holders) + "] (the holders of each client's shares)");
  }
  if (config.min_survivors > config.clients) {
    throw UsageError("secagg: min_survivors " + std::to_string(config.min_survivors) +
                     " exceeds the " + std::to_string(config.clients) + " clients");
  }
  FixedPointCode(config.clip, config.clients);
}

}  // namespace dtrain::privacy
