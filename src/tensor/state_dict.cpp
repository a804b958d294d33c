#include "tensor/state_dict.h"

#include <fmt/format.h>

#include "core/error.h"

namespace dtrain {

void StateDict::insert(std::string name, Tensor tensor) {
  if (contains(name)) throw UsageError(fmt::format("state dict: duplicate entry '{}'", name));
  index_.emplace(name, entries_.size());
  entries_.emplace_back(std::move(name), std::move(tensor));
}

const Tensor& StateDict::at(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw UsageError(fmt::format("state dict: no entry '{}'", name));
  return entries_[it->second].second;
}

void StateDict::merge(const StateDict& other, const std::string& prefix) {
  for (const auto& [name, tensor] : other.entries_) insert(prefix + name, tensor);
  for (const auto& [key, value] : other.metadata_) metadata_[prefix + key] = value;
}

StateDict StateDict::sub(const std::string& prefix) const {
  StateDict out;
  for (const auto& [name, tensor] : entries_) {
    if (name.rfind(prefix, 0) == 0) out.insert(name.substr(prefix.size()), tensor);
  }
  for (const auto& [key, value] : metadata_) {
    if (key.rfind(prefix, 0) == 0) out.metadata_[key.substr(prefix.size())] = value;
  }
  return out;
}

StateDict StateDict::clone() const {
  StateDict out;
  for (const auto& [name, tensor] : entries_) out.insert(name, tensor.clone());
  out.metadata_ = metadata_;
  return out;
}

}  // namespace dtrain
