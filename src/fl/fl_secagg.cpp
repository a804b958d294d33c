#include "fl/fl_secagg.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace dtrain::fl {

void validate(const FlSecAggOptions& options) {
  double total = 0;
  for (double share : options.phase_shares) {
    if (!(share > 0)) {
      throw UsageError(
          fmt::format("fl secure aggregation: a phase share of {} is not positive", share));
    }
    total += share;
  }
  if (total > 1.0 + 1e-9) {
    throw UsageError(
        fmt::format("fl secure aggregation: the phase shares sum to {} > 1 round timeout", total));
  }
  if (!(options.clip > 0) || !std::isfinite(options.clip)) {
    throw UsageError(fmt::format("fl secure aggregation: clip {} is not positive", options.clip));
  }
}

privacy::SecAggConfig secagg_config(const FlSecAggOptions& options, uint32_t session,
                                    uint32_t clients, uint64_t graph_seed, uint64_t vector_length) {
  privacy::SecAggConfig c;
  c.round = session;
  c.clients = clients;
  c.graph = options.graph;
  c.degree = options.degree;
  c.graph_seed = graph_seed;
  c.clip = options.clip;
  c.vector_length = vector_length;
  c.threshold = 1;  // placeholder so that holders_per_client() can look at the graph
  const uint32_t holders = privacy::holders_per_client(c);
  c.threshold = options.threshold == 0 ? holders / 2 + 1 : std::min(options.threshold, holders);
  c.min_survivors = 0;
  return c;
}

privacy::SecAggConfig secagg_config(const FlSecAggSetup& setup) {
  privacy::SecAggConfig c;
  c.round = setup.session;
  c.clients = setup.clients;
  c.threshold = setup.threshold;
  c.graph = static_cast<privacy::SecAggGraphKind>(setup.graph);
  c.degree = setup.degree;
  c.graph_seed = setup.graph_seed;
  c.clip = setup.clip;
  c.vector_length = setup.vector_length;
  c.min_survivors = setup.min_survivors;
  return c;
}

std::span<const float> secagg_masked_input(const ClientUpdate& update) { return update.delta; }

std::vector<float> secagg_mean_delta(std::span<const float> sum, size_t included) {
  if (included == 0) throw UsageError("fl secure aggregation: a mean of no clients");
  std::vector<float> mean(sum.size());
  const double inv = 1.0 / static_cast<double>(included);
  for (size_t i = 0; i < sum.size(); ++i) mean[i] = static_cast<float>(sum[i] * inv);
  return mean;
}

}  // namespace dtrain::fl
