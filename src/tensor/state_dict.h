// StateDict: the ordered name -> tensor map in which model and optimizer
// state cross module lines (checkpoints, model files, parameter servers),
// plus string metadata for exact scalars (step counters, RNG state).
//
// Names are unique; insertion order is kept and is the order of
// serialisation. Tensors are handles: a StateDict from Module::state_dict()
// aliases the live parameters; clone() it to snapshot.
// Thread safety: a value type. Errors: UsageError on a missing or duplicate
// name.
//
// state_fingerprint() and find_non_finite() inspect a StateDict without
// changing it: the first summarises its structure (for checkpoint identity),
// the second finds the first NaN or infinity (for rejecting diverged state).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace dtrain {

class StateDict {
 public:
  using Entry = std::pair<std::string, Tensor>;

  void insert(std::string name, Tensor tensor);
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const Tensor& at(const std::string& name) const;
  const std::vector<Entry>& entries() const { return entries_; }
  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  auto begin() const { return entries_.begin(); }
  auto end() const { return entries_.end(); }

  // Exact scalars and small strings ("step" -> "1200").
  std::map<std::string, std::string>& metadata() { return metadata_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Adds every entry (and metadata) of `other` with `prefix` before its name.
  void merge(const StateDict& other, const std::string& prefix);
  // The entries whose names start with `prefix`, with the prefix removed.
  StateDict sub(const std::string& prefix) const;
  // Deep copy of every tensor.
  StateDict clone() const;

 private:
  std::vector<Entry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A stable summary of the structure of `dict`: 16 lowercase hex digits of the
// 64-bit FNV-1a hash of every entry's name, dtype ("f32") and shape, in
// entry order. Values and metadata do not enter it, so a model's fingerprint
// stays the same while it trains and changes when a layer is added, renamed
// or resized. The same on every platform and build.
std::string state_fingerprint(const StateDict& dict);

// The first element that is NaN or infinite.
struct NonFinite {
  std::string name;   // the entry's name
  int64_t index = 0;  // flat (row-major) index within the tensor
  float value = 0;
};
// Scans the tensors in entry order, once; nullopt when every element is finite.
std::optional<NonFinite> find_non_finite(const StateDict& dict);

}  // namespace dtrain
