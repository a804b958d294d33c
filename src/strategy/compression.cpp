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

StateDict compressor_state_dict(const compress::State& state, int64_t workers) {
  StateDict out;
  for (const auto& [name, values] : state.arrays) {
    out.insert(name, Tensor::from_vector(values, {static_cast<int64_t>(values.size())}));
  }
  out.metadata() = state.metadata;
  out.metadata()["workers"] = std::to_string(workers);
  return out;
}

std::optional<compress::State> compressor_state_from(const StateDict& dict, int64_t workers,
                                                     std::string& why) {
  const auto it = dict.metadata().find("workers");
  if (it == dict.metadata().end()) {
    why = "the checkpoint holds no compressor state for this rank";
    return std::nullopt;
  }
  if (it->second != std::to_string(workers)) {
    why =
        fmt::format("the checkpoint's compressor state was written by {} workers, this run has {}",
                    it->second, workers);
    return std::nullopt;
  }
  compress::State state;
  for (const auto& [name, tensor] : dict) {
    const std::span<const float> values = tensor.span();
    state.arrays.emplace_back(name, std::vector<float>(values.begin(), values.end()));
  }
  state.metadata = dict.metadata();
  state.metadata.erase("workers");
  return state;
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
