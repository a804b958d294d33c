#include "nn/optimizer.h"

#include <fmt/format.h>

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

void Optimizer::step() {
  for (size_t i = 0; i < parameters_.size(); ++i) {
    Variable& p = parameters_[i];
    const SparseRows* sparse = p.sparse_grad();
    if (p.grad().defined()) {
      rule_->update(i, p.data(), sparse != nullptr ? p.dense_grad() : p.grad());
    } else if (sparse != nullptr) {
      rule_->update_sparse(i, p.data(), *sparse);
    }
  }
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
