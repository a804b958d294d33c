#include "fl/fl_secagg.h"

#include <fmt/format.h>

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

}  // namespace dtrain::fl
