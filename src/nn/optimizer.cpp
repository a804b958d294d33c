#include "nn/optimizer.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"

namespace dtrain::nn {

std::vector<Shape> shapes_of(const std::vector<Variable>& parameters) {
  std::vector<Shape> shapes;
  shapes.reserve(parameters.size());
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (!parameters[i].defined()) {
      throw UsageError(fmt::format("optimizer: parameter {} is undefined", i));
    }
    shapes.push_back(parameters[i].shape());
  }
  return shapes;
}

Optimizer::Optimizer(std::vector<Variable> parameters, std::unique_ptr<optim::UpdateRule> rule)
    : parameters_(std::move(parameters)), rule_(std::move(rule)) {
  if (rule_ == nullptr) throw UsageError("optimizer: no update rule given");
  const std::vector<Shape> shapes = shapes_of(parameters_);
  if (shapes.size() != rule_->num_parameters()) {
    throw UsageError(fmt::format("{}: the rule was made for {} parameters, {} were given",
                                 rule_->kind(), rule_->num_parameters(), shapes.size()));
  }
  for (size_t i = 0; i < shapes.size(); ++i) {
    if (shapes[i] != rule_->shape(i)) {
      throw UsageError(fmt::format("{}: parameter {} has shape {}, the rule was made for {}",
                                   rule_->kind(), i, shape_str(shapes[i]),
                                   shape_str(rule_->shape(i))));
    }
  }
}

void Optimizer::step_one(size_t index) {
  Variable& p = parameters_[index];
  const SparseRows* sparse = p.sparse_grad();
  if (p.grad().defined()) {
    rule_->update(index, p.data(), sparse != nullptr ? p.dense_grad() : p.grad());
  } else if (sparse != nullptr) {
    rule_->update_sparse(index, p.data(), *sparse);
  }
}

void Optimizer::step() {
  for (size_t i = 0; i < parameters_.size(); ++i) step_one(i);
}

void Optimizer::check_indices(std::span<const size_t> indices) const {
  for (const size_t i : indices) {
    if (i >= parameters_.size()) {
      throw UsageError(fmt::format("{}: step of parameter {}, the optimizer has {}", rule_->kind(),
                                   i, parameters_.size()));
    }
  }
}

void Optimizer::step(std::span<const size_t> indices) {
  check_indices(indices);
  for (const size_t i : indices) step_one(i);
}

void Optimizer::step_undoable(std::span<const size_t> indices) {
  copies_.resize(parameters_.size());
  is_saved_.resize(parameters_.size(), false);
  check_indices(indices);
  for (const size_t i : indices) {
    const Variable& p = parameters_[i];
    if (is_saved_[i] || (!p.grad().defined() && p.sparse_grad() == nullptr)) continue;
    Saved& copy = copies_[i];
    if (!copy.value.defined()) copy.value = Tensor::empty(p.shape());
    std::copy_n(p.data().data(), p.numel(), copy.value.data());
    rule_->save_state(i, copy.state);
    is_saved_[i] = true;
    saved_.push_back(i);
  }
  for (const size_t i : indices) step_one(i);
}

void Optimizer::undo() {
  for (const size_t i : saved_) {
    const Saved& copy = copies_[i];
    std::copy_n(copy.value.data(), copy.value.numel(), parameters_[i].data().data());
    rule_->restore_state(i, copy.state);
  }
  commit();
}

void Optimizer::commit() {
  for (const size_t i : saved_) is_saved_[i] = false;
  saved_.clear();
}

void Optimizer::zero_grad() {
  for (auto& p : parameters_) p.zero_grad();
}

std::unique_ptr<Optimizer> make_optimizer(const optim::OptimizerConfig& config,
                                          std::vector<Variable> parameters) {
  auto rule = optim::make_update_rule(config, shapes_of(parameters));
  return std::make_unique<Optimizer>(std::move(parameters), std::move(rule));
}

}  // namespace dtrain::nn
