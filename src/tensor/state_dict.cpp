#include "tensor/state_dict.h"

#include <fmt/format.h>

#include <cmath>

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

namespace {

// FNV-1a, 64 bits (Fowler, Noll, Vo): byte-wise, no platform dependence.
class Fnv1a {
 public:
  void add(std::string_view bytes) {
    for (const char c : bytes) {
      hash_ ^= static_cast<unsigned char>(c);
      hash_ *= kPrime;
    }
  }
  uint64_t value() const { return hash_; }

 private:
  static constexpr uint64_t kPrime = 0x100000001b3ULL;
  uint64_t hash_ = 0xcbf29ce484222325ULL;
};

}  // namespace

std::string state_fingerprint(const StateDict& dict) {
  // One record per entry: name, NUL, dtype, NUL, extents in decimal, newline.
  // The separators keep ("ab", "c") apart from ("a", "bc").
  Fnv1a hash;
  for (const auto& [name, tensor] : dict) {
    hash.add(name);
    hash.add(std::string_view("\0f32\0", 5));
    std::string extents;
    for (const int64_t extent : tensor.shape()) extents += fmt::format("{},", extent);
    hash.add(extents);
    hash.add("\n");
  }
  return fmt::format("{:016x}", hash.value());
}

std::optional<NonFinite> find_non_finite(const StateDict& dict) {
  for (const auto& [name, tensor] : dict) {
    const float* data = tensor.data();
    const int64_t n = tensor.numel();
    for (int64_t i = 0; i < n; ++i) {
      if (!std::isfinite(data[i])) [[unlikely]] {
        return NonFinite{name, i, data[i]};
      }
    }
  }
  return std::nullopt;
}

}  // namespace dtrain
