#include "nn/module.h"

#include <fmt/format.h>

#include <set>

#include "core/error.h"

namespace dtrain::nn {

void Module::set_name(std::string name) {
  name_ = std::move(name);
  rename_children();
}

std::string Module::label() const {
  return name_.empty() ? kind_ : fmt::format("{} '{}'", kind_, name_);
}

void Module::fail(const std::string& problem) const {
  throw UsageError(fmt::format("{}: {}", label(), problem));
}

void Module::check_new_name(const std::string& name) const {
  if (name.empty() || name.find('.') != std::string::npos) {
    fail(fmt::format("invalid entry name '{}' (must be non-empty and contain no '.')", name));
  }
  auto taken = [&name](const auto& list) {
    for (const auto& entry : list) {
      if (entry.first == name) return true;
    }
    return false;
  };
  if (taken(parameters_) || taken(buffers_) || taken(children_)) {
    fail(fmt::format("duplicate entry name '{}'", name));
  }
}

Variable Module::register_parameter(std::string name, Tensor value) {
  check_new_name(name);
  Variable parameter(std::move(value), /*requires_grad=*/true);
  parameters_.emplace_back(std::move(name), parameter);
  return parameter;
}

Tensor Module::register_buffer(std::string name, Tensor value) {
  check_new_name(name);
  buffers_.emplace_back(std::move(name), value);
  return value;
}

void Module::adopt(std::string name, std::unique_ptr<Module> module) {
  check_new_name(name);
  module->train(training_);
  children_.emplace_back(std::move(name), std::move(module));
  rename_children();
}

void Module::rename_children() {
  for (auto& [local, child] : children_) {
    child->set_name(name_.empty() ? local : name_ + "." + local);
  }
}

template <class Self, class Visit>
void Module::visit(Self& self, const std::string& prefix, const Visit& visit_fn) {
  visit_fn(prefix, self);
  for (const auto& [local, child] : self.children_) {
    visit(static_cast<Self&>(*child), prefix + local + ".", visit_fn);
  }
}

std::vector<std::pair<std::string, Variable>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Variable>> out;
  visit(*this, "", [&out](const std::string& prefix, const Module& m) {
    for (const auto& [local, p] : m.parameters_) out.emplace_back(prefix + local, p);
  });
  return out;
}

std::vector<Variable> Module::parameters() const {
  std::vector<Variable> out;
  visit(*this, "", [&out](const std::string&, const Module& m) {
    for (const auto& entry : m.parameters_) out.push_back(entry.second);
  });
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor>> out;
  visit(*this, "", [&out](const std::string& prefix, const Module& m) {
    for (const auto& [local, b] : m.buffers_) out.emplace_back(prefix + local, b);
  });
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_children() const {
  std::vector<std::pair<std::string, Module*>> out;
  out.reserve(children_.size());
  for (const auto& [local, child] : children_) out.emplace_back(local, child.get());
  return out;
}

int64_t Module::num_parameters() const {
  int64_t total = 0;
  for (const auto& p : parameters()) total += p.numel();
  return total;
}

void Module::train(bool training) {
  training_ = training;
  for (auto& entry : children_) entry.second->train(training);
}

void Module::zero_grad() {
  for (auto& p : parameters()) p.zero_grad();
}

StateDict Module::state_dict() const {
  StateDict dict;
  for (auto& [name, p] : named_parameters()) dict.insert(name, p.data());
  for (auto& [name, b] : named_buffers()) dict.insert(name, b);
  visit(*this, "", [&dict](const std::string& prefix, const Module& m) {
    for (auto& [key, value] : m.extra_state()) dict.metadata()[prefix + key] = value;
  });
  return dict;
}

void Module::load_extra_state(const std::map<std::string, std::string>& values, bool /*apply*/) {
  if (!values.empty()) {
    fail(fmt::format("has no extra state, got key '{}'", values.begin()->first));
  }
}

void Module::load_state_dict(const StateDict& dict, bool strict) {
  // Pass 1: check every key, shape and metadata value; change nothing.
  std::vector<std::pair<Tensor, Tensor>> copies;  // (destination, source)
  std::set<std::string> expected;
  auto check = [&](const std::string& name, const Tensor& live) {
    expected.insert(name);
    if (!dict.contains(name)) {
      if (strict) {
        fail(
            fmt::format("load_state_dict: missing key '{}' (pass strict=false to keep the "
                        "current value)",
                        name));
      }
      return;
    }
    const Tensor& source = dict.at(name);
    if (source.shape() != live.shape()) {
      fail(fmt::format("load_state_dict: '{}' has shape {} in the state dict but {} in the model",
                       name, shape_str(source.shape()), shape_str(live.shape())));
    }
    copies.emplace_back(live, source);
  };
  for (const auto& [name, p] : named_parameters()) check(name, p.data());
  for (const auto& [name, b] : named_buffers()) check(name, b);
  if (strict) {
    for (const auto& entry : dict) {
      if (expected.count(entry.first) == 0) {
        fail(
            fmt::format("load_state_dict: unexpected key '{}' (not a parameter or buffer of "
                        "this model)",
                        entry.first));
      }
    }
  }
  std::vector<std::pair<Module*, std::map<std::string, std::string>>> extras;
  visit(*this, "", [&](const std::string& prefix, Module& m) {
    std::map<std::string, std::string> present;
    for (const auto& entry : m.extra_state()) {
      auto it = dict.metadata().find(prefix + entry.first);
      if (it != dict.metadata().end()) {
        present.emplace(entry.first, it->second);
      } else if (strict) {
        fail(fmt::format("load_state_dict: missing metadata key '{}'", prefix + entry.first));
      }
    }
    if (!present.empty()) extras.emplace_back(&m, std::move(present));
  });
  for (const auto& [m, values] : extras) m->load_extra_state(values, false);

  // Pass 2: apply.
  for (const auto& [destination, source] : copies) {
    if (destination.data() != source.data()) destination.copy_from(source);
  }
  for (const auto& [m, values] : extras) m->load_extra_state(values, true);
}

}  // namespace dtrain::nn
