#include "strategy/compression.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace dtrain::strategy {

CompressionSettings CompressionSettings::weakened(int level) const {
  if (level <= 0) return *this;
  CompressionSettings out = *this;
  if (level >= kDenseLevel) {
    out.codec.method = compress::Method::kNone;
    out.local_steps = 1;
    return out;
  }
  const double factor = std::pow(2.0, level);
  out.local_steps = std::max<int64_t>(1, local_steps >> level);
  switch (codec.method) {
    case compress::Method::kPowerSgd:
      out.codec.rank = static_cast<int>(codec.rank * factor);
      break;
    case compress::Method::kTopK:
    case compress::Method::kRandomK:
      out.codec.density = codec.density * factor * factor;
      if (out.codec.density >= 1.0) out.codec.method = compress::Method::kNone;
      // A weaker top-k also warms up no more: its density is already higher.
      out.codec.warmup_steps = 0;
      break;
    case compress::Method::kQsgd:
      out.codec.levels = static_cast<int>(codec.levels * factor * factor);
      break;
    case compress::Method::kNone:
      break;
    case compress::Method::kFp16:
    case compress::Method::kBf16:
    case compress::Method::kSign:
      out.codec.method = compress::Method::kNone;  // no weaker form: dense
      break;
  }
  return out;
}

std::string CompressionSettings::describe() const {
  if (!active()) return "dense";
  std::string what;
  switch (codec.method) {
    case compress::Method::kNone:
      break;
    case compress::Method::kFp16:
    case compress::Method::kBf16:
      what = std::string(compress::to_string(codec.method));
      break;
    case compress::Method::kTopK:
    case compress::Method::kRandomK:
      what = fmt::format("{} density {:g}{}", compress::to_string(codec.method), codec.density,
                         codec.error_feedback ? " + EF" : "");
      break;
    case compress::Method::kQsgd:
      what = fmt::format("qsgd {} levels", codec.levels);
      break;
    case compress::Method::kSign:
      what = fmt::format("sign{}", codec.error_feedback ? " + EF" : "");
      break;
    case compress::Method::kPowerSgd:
      what = fmt::format("powersgd rank {}{}", codec.rank, codec.error_feedback ? " + EF" : "");
      break;
  }
  if (local_sgd()) {
    what += fmt::format("{}local SGD H={}", what.empty() ? "" : ", ", local_steps);
  }
  if (start_step > 0) what += fmt::format(" after {} dense steps", start_step);
  return what;
}

}  // namespace dtrain::strategy
