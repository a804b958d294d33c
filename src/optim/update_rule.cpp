#include "optim/update_rule.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <set>
#include <utility>

#include "core/error.h"

namespace dtrain::optim {

namespace {

int64_t parse_int(const std::string& text, const std::string& key, const std::string& kind) {
  int64_t value = 0;
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
  if (result.ec != std::errc() || result.ptr != text.data() + text.size() || value < 0) {
    throw UsageError(
        fmt::format("{}: load_state_dict: metadata '{}' is '{}', expected a "
                    "non-negative integer",
                    kind, key, text));
  }
  return value;
}

}  // namespace

UpdateRule::UpdateRule(std::string kind, std::vector<Shape> shapes, float lr,
                       std::vector<std::string> buffer_names)
    : kind_(std::move(kind)),
      shapes_(std::move(shapes)),
      lr_(lr),
      buffer_names_(std::move(buffer_names)),
      state_(shapes_.size()),
      steps_(shapes_.size(), 0) {
  set_lr(lr);
}

void UpdateRule::fail(const std::string& problem) const {
  throw UsageError(fmt::format("{}: {}", kind_, problem));
}

void UpdateRule::set_lr(float lr) {
  if (!(lr >= 0.0f) || !std::isfinite(lr)) {
    fail(fmt::format("learning rate {} must be finite and non-negative", lr));
  }
  lr_ = lr;
}

int64_t UpdateRule::step_count(size_t index) const {
  if (index >= steps_.size()) {
    fail(fmt::format("parameter index {} is out of range ({} parameters)", index, steps_.size()));
  }
  return steps_[index];
}

void UpdateRule::check_dense(size_t index, const Tensor& param, const Tensor& grad) const {
  if (index >= shapes_.size()) {
    fail(fmt::format("parameter index {} is out of range ({} parameters)", index, shapes_.size()));
  }
  const Shape& expected = shapes_[index];
  if (param.shape() != expected || grad.shape() != expected) {
    fail(fmt::format("parameter {} has shape {}, got tensor {} and gradient {}", index,
                     shape_str(expected), shape_str(param.shape()), shape_str(grad.shape())));
  }
}

void UpdateRule::check_sparse(size_t index, const Tensor& param, const SparseRows& grad) const {
  if (index >= shapes_.size()) {
    fail(fmt::format("parameter index {} is out of range ({} parameters)", index, shapes_.size()));
  }
  const Shape& expected = shapes_[index];
  if (param.shape() != expected || expected.empty()) {
    fail(fmt::format("parameter {} has shape {}, got tensor {} for a sparse update", index,
                     shape_str(expected), shape_str(param.shape())));
  }
  Shape values_shape = expected;
  values_shape[0] = static_cast<int64_t>(grad.indices.size());
  if (grad.num_rows != expected[0] || grad.values.shape() != values_shape) {
    fail(
        fmt::format("parameter {} of shape {} got a sparse gradient of {} rows with values {} "
                    "(expected {})",
                    index, shape_str(expected), grad.num_rows, shape_str(grad.values.shape()),
                    shape_str(values_shape)));
  }
  for (size_t k = 0; k < grad.indices.size(); ++k) {
    if (grad.indices[k] < 0 || grad.indices[k] >= expected[0]) {
      fail(
          fmt::format("parameter {}: sparse gradient row {} at position {} is out of range "
                      "[0, {})",
                      index, grad.indices[k], k, expected[0]));
    }
  }
}

int64_t UpdateRule::row_numel(const Tensor& param) {
  int64_t row = 1;
  for (int64_t d = 1; d < param.dim(); ++d) row *= param.size(d);
  return row;
}

std::vector<Tensor>& UpdateRule::state(size_t index, float initial, bool* created) {
  std::vector<Tensor>& buffers = state_[index];
  const bool missing = buffers.empty();
  if (missing) {
    const Shape& shape = shapes_[index];
    for (size_t b = 0; b < buffer_names_.size(); ++b)
      buffers.push_back(Tensor::full(shape, initial));
  }
  if (created != nullptr) *created = missing;
  return buffers;
}

StateDict UpdateRule::state_dict() const {
  StateDict dict;
  dict.metadata()["optimizer"] = kind_;
  dict.metadata()["lr"] = fmt::format("{}", lr_);
  dict.metadata()["num_parameters"] = std::to_string(shapes_.size());
  for (size_t i = 0; i < shapes_.size(); ++i) {
    dict.metadata()[fmt::format("state.{}.step", i)] = std::to_string(steps_[i]);
    for (size_t b = 0; b < state_[i].size(); ++b) {
      dict.insert(fmt::format("state.{}.{}", i, buffer_names_[b]), state_[i][b]);
    }
  }
  return dict;
}

void UpdateRule::load_state_dict(const StateDict& dict) {
  // Check everything first; change nothing until all of it fits.
  const auto& meta = dict.metadata();
  auto get = [&](const std::string& key) -> const std::string& {
    auto it = meta.find(key);
    if (it == meta.end()) fail(fmt::format("load_state_dict: missing metadata '{}'", key));
    return it->second;
  };
  if (get("optimizer") != kind_) {
    fail(fmt::format("load_state_dict: the state is of a '{}' optimizer, this one is '{}'",
                     get("optimizer"), kind_));
  }
  const int64_t count = parse_int(get("num_parameters"), "num_parameters", kind_);
  if (count != static_cast<int64_t>(shapes_.size())) {
    fail(fmt::format("load_state_dict: the state holds {} parameters, this optimizer has {}", count,
                     shapes_.size()));
  }
  const std::string& lr_text = get("lr");
  float lr = 0.0f;
  const auto lr_result = std::from_chars(lr_text.data(), lr_text.data() + lr_text.size(), lr);
  if (lr_result.ec != std::errc() || lr_result.ptr != lr_text.data() + lr_text.size() ||
      !(lr >= 0.0f) || !std::isfinite(lr)) {
    fail(fmt::format("load_state_dict: metadata 'lr' is '{}', expected a non-negative number",
                     lr_text));
  }

  std::vector<int64_t> steps(shapes_.size());
  std::vector<std::vector<Tensor>> state(shapes_.size());
  std::set<std::string> known;
  for (size_t i = 0; i < shapes_.size(); ++i) {
    const std::string step_key = fmt::format("state.{}.step", i);
    steps[i] = parse_int(get(step_key), step_key, kind_);
    size_t present = 0;
    for (const auto& name : buffer_names_) {
      const std::string key = fmt::format("state.{}.{}", i, name);
      known.insert(key);
      if (!dict.contains(key)) continue;
      ++present;
      const Tensor& source = dict.at(key);
      if (source.shape() != shapes_[i]) {
        fail(fmt::format("load_state_dict: '{}' has shape {} but parameter {} has shape {}", key,
                         shape_str(source.shape()), i, shape_str(shapes_[i])));
      }
      state[i].push_back(source);
    }
    if (present != 0 && present != buffer_names_.size()) {
      fail(fmt::format("load_state_dict: parameter {} has {} of its {} state buffers (", i, present,
                       buffer_names_.size()) +
           fmt::format("expected all or none of {})", fmt::join(buffer_names_, ", ")));
    }
  }
  for (const auto& entry : dict) {
    if (known.count(entry.first) == 0) {
      fail(fmt::format("load_state_dict: unexpected key '{}'", entry.first));
    }
  }

  lr_ = lr;
  steps_ = std::move(steps);
  for (auto& buffers : state) {
    for (auto& tensor : buffers) tensor = tensor.clone();
  }
  state_ = std::move(state);
}

void UpdateRule::save_state(size_t index, SavedState& saved) const {
  if (index >= shapes_.size()) {
    fail(fmt::format("parameter index {} is out of range ({} parameters)", index, shapes_.size()));
  }
  const std::vector<Tensor>& buffers = state_[index];
  saved.steps = steps_[index];
  saved.has_buffers = !buffers.empty();
  saved.buffers.resize(buffers.size());
  for (size_t b = 0; b < buffers.size(); ++b) {
    Tensor& copy = saved.buffers[b];
    if (!copy.defined() || copy.shape() != buffers[b].shape()) copy = Tensor::empty(shapes_[index]);
    std::copy_n(buffers[b].data(), buffers[b].numel(), copy.data());
  }
}

void UpdateRule::restore_state(size_t index, const SavedState& saved) {
  if (index >= shapes_.size()) {
    fail(fmt::format("parameter index {} is out of range ({} parameters)", index, shapes_.size()));
  }
  steps_[index] = saved.steps;
  std::vector<Tensor>& buffers = state_[index];
  if (!saved.has_buffers) {
    buffers.clear();
    return;
  }
  if (buffers.size() != saved.buffers.size()) {
    fail(fmt::format("restore_state: parameter {} has {} buffers, {} were saved", index,
                     buffers.size(), saved.buffers.size()));
  }
  for (size_t b = 0; b < buffers.size(); ++b) {
    std::copy_n(saved.buffers[b].data(), buffers[b].numel(), buffers[b].data());
  }
}

SparseRows coalesced(const SparseRows& grad) {
  bool sorted_unique = true;
  for (size_t k = 1; k < grad.indices.size() && sorted_unique; ++k) {
    sorted_unique = grad.indices[k - 1] < grad.indices[k];
  }
  if (sorted_unique) return grad;
  SparseRows copy{grad.indices, grad.values.clone(), grad.num_rows};
  copy.coalesce();
  return copy;
}

}  // namespace dtrain::optim
