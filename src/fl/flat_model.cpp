#include "fl/flat_model.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"

namespace dtrain::fl {

int64_t flat_size(const nn::Module& model) {
  int64_t size = 0;
  for (const auto& [name, tensor] : model.state_dict()) size += tensor.numel();
  return size;
}

std::vector<float> flatten(const nn::Module& model) {
  std::vector<float> out;
  out.reserve(static_cast<size_t>(flat_size(model)));
  for (const auto& [name, tensor] : model.state_dict()) {
    out.insert(out.end(), tensor.span().begin(), tensor.span().end());
  }
  return out;
}

void load_flat(nn::Module& model, std::span<const float> weights) {
  const int64_t size = flat_size(model);
  if (static_cast<int64_t>(weights.size()) != size) {
    throw UsageError(fmt::format("load_flat: {} values for a model of {}", weights.size(), size));
  }
  size_t at = 0;
  for (const auto& [name, tensor] : model.state_dict()) {
    const auto n = static_cast<size_t>(tensor.numel());
    std::copy_n(weights.begin() + static_cast<std::ptrdiff_t>(at), n, tensor.data());
    at += n;
  }
}

}  // namespace dtrain::fl
