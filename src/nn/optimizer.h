// Optimizer: an optimizer's update rule (optim/update_rule.h) bound to a
// model's parameters, the PyTorch-like front: zero_grad(), backward, step().
//
// step() visits the parameters in order and applies the rule to each one
// that has a gradient (parameters without one are skipped, their state
// untouched): a dense gradient goes to UpdateRule::update(), a row-sparse
// one alone (embedding tables) to update_sparse(), both together are folded
// into one dense gradient first.
//
// step(indices) does the same for some parameters only, by the same code:
// stepping every parameter once, in any grouping and order, gives the same
// bits as one step() (each rule's state is per parameter). A strategy steps
// a bucket's parameters as soon as its gradients are reduced. A tentative
// step (step_undoable) first copies each parameter's value and rule state
// aside; undo() puts back every parameter stepped tentatively since the
// last commit(), bit for bit, and commit() forgets them. The copies' memory
// is kept and reused.
//
//   auto optimizer = nn::Optimizer::make<optim::Sgd>(model.parameters(), {.lr = 0.1f});
//   optimizer->zero_grad(); loss.backward(); optimizer->step();
//
// Ownership: holds handles to the parameters (shared with the model) and
// owns the rule. Thread safety: one thread steps an optimizer at a time.
// Errors: UsageError when the rule was made for other shapes than the
// parameters' (naming the index and both shapes), or a parameter is
// undefined; the rule's errors otherwise. Blocking: never.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "autograd/variable.h"
#include "optim/optimizer_config.h"
#include "optim/update_rule.h"
#include "tensor/state_dict.h"

namespace dtrain::nn {

// The shapes of `parameters`, in order (what an update rule is made for).
std::vector<Shape> shapes_of(const std::vector<Variable>& parameters);

class Optimizer {
 public:
  Optimizer(std::vector<Variable> parameters, std::unique_ptr<optim::UpdateRule> rule);
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // The rule `Rule` (optim::Sgd, optim::Adam, ...) with `options`, for
  // `parameters`.
  template <typename Rule, typename Options>
  static std::unique_ptr<Optimizer> make(std::vector<Variable> parameters, const Options& options) {
    auto rule = std::make_unique<Rule>(shapes_of(parameters), options);
    return std::make_unique<Optimizer>(std::move(parameters), std::move(rule));
  }

  // One update of every parameter that has a gradient.
  void step();
  // One update of the parameters `indices` (each < parameters().size()) that
  // have a gradient.
  void step(std::span<const size_t> indices);
  // step(indices), undoable until commit(). A parameter already stepped
  // tentatively since the last commit() keeps its first copy.
  void step_undoable(std::span<const size_t> indices);
  // Puts back the values and rule state of every parameter stepped
  // tentatively since the last commit(), then commits.
  void undo();
  // Forgets the copies: the tentative steps stay.
  void commit();
  // Parameters stepped tentatively since the last commit().
  size_t undoable() const { return saved_.size(); }
  // Drops every parameter's gradient.
  void zero_grad();

  float lr() const { return rule_->lr(); }
  void set_lr(float lr) { rule_->set_lr(lr); }
  const std::string& kind() const { return rule_->kind(); }
  const std::vector<Variable>& parameters() const { return parameters_; }
  optim::UpdateRule& rule() { return *rule_; }
  const optim::UpdateRule& rule() const { return *rule_; }
  int64_t step_count(size_t index) const { return rule_->step_count(index); }

  StateDict state_dict() const { return rule_->state_dict(); }
  void load_state_dict(const StateDict& dict) { rule_->load_state_dict(dict); }

 private:
  void step_one(size_t index);
  // UsageError naming the first index past the parameters.
  void check_indices(std::span<const size_t> indices) const;

  struct Saved {
    Tensor value;
    optim::UpdateRule::SavedState state;
  };
  std::vector<Variable> parameters_;
  std::unique_ptr<optim::UpdateRule> rule_;
  std::vector<Saved> copies_;   // per parameter, allocated at its first tentative step
  std::vector<bool> is_saved_;  // per parameter: copied since the last commit()
  std::vector<size_t> saved_;   // the parameters copied since the last commit()
};

// The optimizer a config names ([optimizer] of a job file) over `parameters`.
// ConfigError as optim::make_update_rule.
std::unique_ptr<Optimizer> make_optimizer(const optim::OptimizerConfig& config,
                                          std::vector<Variable> parameters);

}  // namespace dtrain::nn
