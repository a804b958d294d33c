#include "nn/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "core/error.h"
#include "core/rng.h"
#include "optim/adagrad.h"
#include "optim/adam.h"
#include "optim/optimizer_config.h"
#include "optim/sgd.h"
#include "optim/update_rule.h"
#include "tensor/intra_op.h"
#include "testing/expect_error.h"

namespace dtrain::optim {
namespace {

using testing::expect_usage_error;
using testing::normal_tensor;
bool bit_identical(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<size_t>(a.numel())) == 0;
}

using Factory = std::function<std::unique_ptr<UpdateRule>(std::vector<Variable>)>;

struct ResumeCase {
  std::string name;
  Factory make;
};

std::ostream& operator<<(std::ostream& os, const ResumeCase& c) { return os << c.name; }

// Parameters: a dense [3, 4] weight and a [6, 2] table that gets sparse
// updates on even steps and dense ones on odd steps.
std::vector<Variable> make_parameters(uint64_t seed) {
  Rng rng(seed);
  return {Variable(normal_tensor({3, 4}, rng), true), Variable(normal_tensor({6, 2}, rng), true)};
}

void apply_step(UpdateRule& optimizer, const std::vector<Variable>& params, int step) {
  Rng rng(1000 + static_cast<uint64_t>(step));  // the same gradients whoever applies step `step`
  optimizer.update(0, params[0].data(), normal_tensor({3, 4}, rng));
  if (step % 2 == 0) {
    const std::vector<int64_t> rows = {static_cast<int64_t>(step % 6), 5,
                                       static_cast<int64_t>(step % 6)};
    optimizer.update_sparse(1, params[1].data(), SparseRows{rows, normal_tensor({3, 2}, rng), 6});
  } else {
    optimizer.update(1, params[1].data(), normal_tensor({6, 2}, rng));
  }
}

class Resume : public ::testing::TestWithParam<ResumeCase> {};

TEST_P(Resume, RestoredMidRunContinuesBitIdentically) {
  constexpr int kSteps = 8;
  constexpr int kSaveAt = 3;
  // Uninterrupted run; it halves its lr after kSaveAt steps.
  const auto straight_params = make_parameters(7);
  auto straight = GetParam().make(straight_params);
  for (int step = 0; step < kSteps; ++step) {
    if (step == kSaveAt) straight->set_lr(straight->lr() * 0.5f);
    apply_step(*straight, straight_params, step);
  }

  // The same run to kSaveAt, snapshot, and continue in a new optimizer over
  // new parameters (given the saved weights).
  const auto first_params = make_parameters(7);
  auto first = GetParam().make(first_params);
  for (int step = 0; step < kSaveAt; ++step) apply_step(*first, first_params, step);
  first->set_lr(first->lr() * 0.5f);  // the lr is part of the state
  const StateDict saved = first->state_dict().clone();

  const auto resumed_params = make_parameters(99);
  for (size_t i = 0; i < resumed_params.size(); ++i) {
    resumed_params[i].data().copy_from(first_params[i].data());
  }
  auto resumed = GetParam().make(resumed_params);
  resumed->load_state_dict(saved);
  EXPECT_EQ(resumed->lr(), first->lr());
  EXPECT_EQ(resumed->step_count(0), kSaveAt);
  for (int step = kSaveAt; step < kSteps; ++step) apply_step(*resumed, resumed_params, step);

  for (size_t i = 0; i < resumed_params.size(); ++i) {
    EXPECT_TRUE(bit_identical(resumed_params[i].data(), straight_params[i].data()))
        << "parameter " << i;
  }
  const StateDict a = resumed->state_dict(), b = straight->state_dict();
  EXPECT_EQ(a.metadata(), b.metadata());
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, tensor] : a) EXPECT_TRUE(bit_identical(tensor, b.at(name))) << name;
  // Loading copied the state: the saved dict does not alias the live buffers.
  for (const auto& [name, tensor] : saved) EXPECT_FALSE(tensor.same_storage(a.at(name))) << name;
}

INSTANTIATE_TEST_SUITE_P(
    Optimizers, Resume,
    ::testing::Values(ResumeCase{"sgd_nesterov",
                                 [](std::vector<Variable> p) {
                                   return std::make_unique<Sgd>(
                                       nn::shapes_of(p),
                                       SgdOptions{.lr = 0.1f, .momentum = 0.9f, .nesterov = true});
                                 }},
                      ResumeCase{"adam",
                                 [](std::vector<Variable> p) {
                                   return std::make_unique<Adam>(nn::shapes_of(p),
                                                                 AdamOptions{.lr = 0.01f});
                                 }},
                      ResumeCase{"adamw",
                                 [](std::vector<Variable> p) {
                                   return std::make_unique<AdamW>(nn::shapes_of(p),
                                                                  AdamW::defaults());
                                 }},
                      ResumeCase{"adagrad",
                                 [](std::vector<Variable> p) {
                                   return std::make_unique<Adagrad>(
                                       nn::shapes_of(p),
                                       AdagradOptions{.lr = 0.1f, .lr_decay = 0.01f});
                                 }}),
    [](const auto& info) { return info.param.name; });

TEST(Optimizer, StateDictNamesBuffersAndExactScalars) {
  auto params = make_parameters(1);
  Adam adam(nn::shapes_of(params), {.lr = 0.001f});
  apply_step(adam, params, 1);  // dense on both
  const StateDict dict = adam.state_dict();
  EXPECT_EQ(dict.metadata().at("optimizer"), "adam");
  EXPECT_EQ(dict.metadata().at("lr"), "0.001");
  EXPECT_EQ(dict.metadata().at("num_parameters"), "2");
  EXPECT_EQ(dict.metadata().at("state.0.step"), "1");
  std::vector<std::string> names;
  for (const auto& entry : dict) names.push_back(entry.first);
  EXPECT_EQ(names, (std::vector<std::string>{"state.0.exp_avg", "state.0.exp_avg_sq",
                                             "state.1.exp_avg", "state.1.exp_avg_sq"}));
}

TEST(Optimizer, LoadStateDictRejectsForeignStateAndChangesNothing) {
  auto params = make_parameters(2);
  Adam adam(nn::shapes_of(params), {.lr = 0.01f});
  apply_step(adam, params, 1);
  const StateDict good = adam.state_dict().clone();

  Sgd sgd(nn::shapes_of(params), {.lr = 0.1f, .momentum = 0.9f});
  expect_usage_error([&] { sgd.load_state_dict(good); },
                     "sgd: load_state_dict: the state is of a 'adam' optimizer, this one is "
                     "'sgd'");

  Adam one(nn::shapes_of({params[0]}), {});
  expect_usage_error([&] { one.load_state_dict(good); },
                     "adam: load_state_dict: the state holds 2 parameters, this optimizer has 1");

  auto other_params = make_parameters(2);
  Adam target(nn::shapes_of(other_params), {.lr = 0.5f});
  StateDict wrong_shape;
  for (const auto& [name, tensor] : good) {
    wrong_shape.insert(name, name == "state.1.exp_avg" ? Tensor::zeros({12}) : tensor);
  }
  wrong_shape.metadata() = good.metadata();
  expect_usage_error([&] { target.load_state_dict(wrong_shape); },
                     "adam: load_state_dict: 'state.1.exp_avg' has shape (12,) but parameter 1 "
                     "has shape (6, 2)");
  EXPECT_EQ(target.lr(), 0.5f);
  EXPECT_EQ(target.step_count(0), 0);
  EXPECT_TRUE(target.state_dict().empty());

  StateDict partial;
  for (const auto& [name, tensor] : good) {
    if (name != "state.0.exp_avg_sq") partial.insert(name, tensor);
  }
  partial.metadata() = good.metadata();
  expect_usage_error([&] { target.load_state_dict(partial); },
                     "adam: load_state_dict: parameter 0 has 1 of its 2 state buffers (expected "
                     "all or none of exp_avg, exp_avg_sq)");

  StateDict extra = good.clone();
  extra.insert("state.0.max_exp_avg_sq", Tensor::zeros({3, 4}));
  expect_usage_error([&] { target.load_state_dict(extra); },
                     "adam: load_state_dict: unexpected key 'state.0.max_exp_avg_sq'");

  StateDict bad_step = good.clone();
  bad_step.metadata()["state.1.step"] = "-4";
  expect_usage_error([&] { target.load_state_dict(bad_step); },
                     "adam: load_state_dict: metadata 'state.1.step' is '-4', expected a "
                     "non-negative integer");
  EXPECT_EQ(target.step_count(1), 0);
}

TEST(Optimizer, UpdateChecksIndexAndShapes) {
  auto params = make_parameters(3);
  Sgd sgd(nn::shapes_of(params), {.lr = 0.1f});
  expect_usage_error([&] { sgd.update(2, params[0].data(), params[0].data()); },
                     "sgd: parameter index 2 is out of range (2 parameters)");
  expect_usage_error(
      [&] {
        sgd.update(0, params[0].data(), Tensor::zeros({4, 3}));
      },
      "sgd: parameter 0 has shape (3, 4), got tensor (3, 4) and gradient (4, 3)");
  expect_usage_error(
      [&] {
        sgd.update_sparse(1, params[1].data(), SparseRows{{0, 6}, Tensor::zeros({2, 2}), 6});
      },
      "sgd: parameter 1: sparse gradient row 6 at position 1 is out of range [0, 6)");
  expect_usage_error(
      [&] {
        sgd.update_sparse(1, params[1].data(), SparseRows{{0}, Tensor::zeros({1, 3}), 6});
      },
      "sgd: parameter 1 of shape (6, 2) got a sparse gradient of 6 rows with values (1, 3) "
      "(expected (1, 2))");
  EXPECT_EQ(sgd.step_count(0), 0);
}

TEST(Optimizer, ConstructorsRejectInvalidHyperparameters) {
  auto params = make_parameters(4);
  expect_usage_error([&] { Sgd(nn::shapes_of(params), {.lr = 0.1f, .nesterov = true}); },
                     "sgd: nesterov momentum needs momentum > 0 and dampening 0, got momentum 0 "
                     "and dampening 0");
  expect_usage_error([&] { Sgd(nn::shapes_of(params), {.lr = -1.0f}); },
                     "sgd: learning rate -1 must be finite and non-negative");
  EXPECT_THROW(Adam(nn::shapes_of(params), {.beta1 = 1.0f}), UsageError);
  EXPECT_THROW(Adagrad(nn::shapes_of(params), {.eps = -1.0f}), UsageError);
  Sgd sgd(nn::shapes_of(params), {.lr = 0.1f});
  EXPECT_THROW(sgd.set_lr(std::nanf("")), UsageError);
}

// Three SGD steps on a parameter of 2^16 + 3 elements (split over the
// intra-op threads) and one of 5 (not split), plain, with momentum and with
// Nesterov momentum: with 2 and 3 threads every bit equals one thread's.
TEST(Optimizer, SgdWithIntraOpThreadsMatchesOneThreadBitForBit) {
  auto run = [](int threads, const SgdOptions& options) {
    tensor::set_intra_op_threads(threads);
    Rng rng(7);
    // Split (above 2^14 floats, LeNet-5's fc1 weight among them) and not.
    std::vector<Tensor> params = {Tensor::empty({(int64_t{1} << 16) + 3}), Tensor::empty({48000}),
                                  Tensor::empty({5})};
    for (Tensor& t : params) {
      for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = rng.uniform(-1.0f, 1.0f);
    }
    Sgd sgd({params[0].shape(), params[1].shape(), params[2].shape()}, options);
    for (int step = 0; step < 3; ++step) {
      for (size_t k = 0; k < params.size(); ++k) {
        Tensor grad = Tensor::empty(params[k].shape());
        for (int64_t i = 0; i < grad.numel(); ++i) grad.data()[i] = rng.uniform(-1.0f, 1.0f);
        sgd.update(k, params[k], grad);
      }
    }
    tensor::set_intra_op_threads(1);
    std::vector<float> flat;
    for (const Tensor& t : params) flat.insert(flat.end(), t.data(), t.data() + t.numel());
    return flat;
  };
  for (const SgdOptions& options :
       {SgdOptions{.lr = 0.1f}, SgdOptions{.lr = 0.1f, .momentum = 0.9f, .weight_decay = 1e-3f},
        SgdOptions{.lr = 0.1f, .momentum = 0.9f, .nesterov = true}}) {
    const std::vector<float> one = run(1, options);
    for (int threads : {2, 3}) {
      const std::vector<float> many = run(threads, options);
      ASSERT_EQ(many.size(), one.size());
      EXPECT_EQ(std::memcmp(many.data(), one.data(), one.size() * sizeof(float)), 0)
          << "threads " << threads << " momentum " << options.momentum;
    }
  }
}

TEST(Optimizer, SparseSgdTouchesOnlyTheGivenRowsAndSumsDuplicates) {
  Variable table(Tensor::zeros({4, 2}), true);
  Sgd sgd(nn::shapes_of({table}), {.lr = 0.5f});
  sgd.update_sparse(0, table.data(),
                    SparseRows{{2, 0, 2}, Tensor::from_vector({1, 2, 3, 4, 5, 6}, {3, 2}), 4});
  EXPECT_EQ(table.data().to_vector(),
            (std::vector<float>{-1.5f, -2.0f, 0.0f, 0.0f, -3.0f, -4.0f, 0.0f, 0.0f}));
}

TEST(Optimizer, SparseAdagradWithWeightDecayIsRejectedAsInTorch) {
  Variable table(Tensor::zeros({4, 2}), true);
  Adagrad adagrad(nn::shapes_of({table}), {.weight_decay = 0.1f});
  expect_usage_error(
      [&] {
        adagrad.update_sparse(0, table.data(), SparseRows{{1}, Tensor::ones({1, 2}), 4});
      },
      "adagrad: parameter 0: weight_decay 0.1 cannot be combined with a sparse gradient (as in "
      "torch.optim.Adagrad)");
  EXPECT_EQ(adagrad.step_count(0), 0);
}

TEST(Optimizer, LazySparseAdamLeavesUntouchedRowsAndTheirMomentsAlone) {
  Rng rng(5);
  Variable table(normal_tensor({5, 3}, rng), true);
  const Tensor before = table.data().clone();
  Adam adam(nn::shapes_of({table}), {.lr = 0.1f});
  adam.update(0, table.data(), normal_tensor({5, 3}, rng));  // every row gets moments
  const Tensor after_dense = table.data().clone();
  const Tensor m_before = adam.state_dict().at("state.0.exp_avg").clone();
  adam.update_sparse(0, table.data(), SparseRows{{3}, normal_tensor({1, 3}, rng), 5});
  const Tensor m_after = adam.state_dict().at("state.0.exp_avg");
  for (int64_t r = 0; r < 5; ++r) {
    for (int64_t j = 0; j < 3; ++j) {
      if (r == 3) {
        EXPECT_NE(table.data().at({r, j}), after_dense.at({r, j}));
      } else {
        EXPECT_EQ(table.data().at({r, j}), after_dense.at({r, j}));
        EXPECT_EQ(m_after.at({r, j}), m_before.at({r, j}));
      }
      EXPECT_NE(after_dense.at({r, j}), before.at({r, j}));
    }
  }
  EXPECT_EQ(adam.step_count(0), 2);
}

TEST(ParameterOptimizer, StepSkipsParametersWithoutGradientsAndUsesSparseOnes) {
  Rng rng(6);
  Variable weight(normal_tensor({2, 3}, rng), true);
  Variable table(normal_tensor({5, 3}, rng), true);
  Variable unused(normal_tensor({4}, rng), true);
  const Tensor table_before = table.data().clone();
  const Tensor unused_before = unused.data().clone();
  nn::Optimizer adam(
      {weight, table, unused},
      std::make_unique<Adam>(nn::shapes_of({weight, table, unused}), AdamOptions{.lr = 0.1f}));

  const std::vector<int64_t> rows = {4, 1};
  const Variable looked_up = embedding(table, rows);  // [2, 3]
  sum(mul(looked_up, weight)).backward();
  ASSERT_NE(table.sparse_grad(), nullptr);
  adam.step();
  EXPECT_EQ(adam.step_count(0), 1);
  EXPECT_EQ(adam.step_count(1), 1);
  EXPECT_EQ(adam.step_count(2), 0);
  EXPECT_EQ(unused.data().to_vector(), unused_before.to_vector());
  for (int64_t r = 0; r < 5; ++r) {
    const bool touched = r == 4 || r == 1;
    EXPECT_EQ(table.data().at({r, 0}) != table_before.at({r, 0}), touched) << "row " << r;
  }
  adam.zero_grad();
  EXPECT_FALSE(weight.has_grad());
  EXPECT_FALSE(table.has_grad());
}

// Three parameters of their own (a model's, as nn::Optimizer binds them).
std::vector<Variable> three_parameters() {
  Rng rng(31);
  return {Variable(normal_tensor({3, 4}, rng), true), Variable(normal_tensor({4}, rng), true),
          Variable(normal_tensor({2, 5}, rng), true)};
}

// Gradients of step `step`, the same for every optimizer that takes it.
void set_gradients(const std::vector<Variable>& params, int step) {
  Rng rng(500 + static_cast<uint64_t>(step));
  for (Variable p : params) p.set_grad(normal_tensor(p.shape(), rng));
}

void expect_same_state(const nn::Optimizer& a, const nn::Optimizer& b) {
  const StateDict sa = a.state_dict();
  const StateDict sb = b.state_dict();
  EXPECT_EQ(sa.metadata(), sb.metadata());
  ASSERT_EQ(sa.size(), sb.size());
  for (const auto& [name, tensor] : sa) {
    ASSERT_TRUE(sb.contains(name)) << name;
    EXPECT_TRUE(bit_identical(tensor, sb.at(name))) << name;
  }
}

void expect_same_values(const std::vector<Variable>& a, const std::vector<Variable>& b) {
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(bit_identical(a[i].data(), b[i].data())) << "parameter " << i;
  }
}

using RuleFactory = std::function<std::unique_ptr<nn::Optimizer>(std::vector<Variable>)>;

std::vector<std::pair<std::string, RuleFactory>> grouping_rules() {
  return {{"sgd momentum, weight decay",
           [](std::vector<Variable> p) {
             return nn::Optimizer::make<Sgd>(
                 std::move(p), SgdOptions{.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f});
           }},
          {"adam",
           [](std::vector<Variable> p) {
             return nn::Optimizer::make<Adam>(std::move(p), AdamOptions{.lr = 0.01f});
           }},
          {"adamw", [](std::vector<Variable> p) {
             return nn::Optimizer::make<AdamW>(std::move(p), AdamW::defaults());
           }}};
}

TEST(ParameterOptimizer, SteppingByGroupsIsBitIdenticalToOneStep) {
  for (const auto& [name, make] : grouping_rules()) {
    SCOPED_TRACE(name);
    const std::vector<Variable> whole_params = three_parameters();
    const std::vector<Variable> group_params = three_parameters();
    auto whole = make(whole_params);
    auto groups = make(group_params);
    for (int step = 0; step < 3; ++step) {
      set_gradients(whole_params, step);
      set_gradients(group_params, step);
      whole->step();
      // A strategy's bucket order: the last parameters first, some tentatively.
      const std::vector<size_t> last{2};
      const std::vector<size_t> first{1, 0};
      groups->step_undoable(last);
      groups->step(first);
      EXPECT_EQ(groups->undoable(), 1u);
      groups->commit();
    }
    expect_same_values(whole_params, group_params);
    expect_same_state(*whole, *groups);
    EXPECT_EQ(groups->step_count(0), 3);
  }
}

TEST(ParameterOptimizer, UndoPutsBackValuesStepCountsAndBuffers) {
  for (const auto& [name, make] : grouping_rules()) {
    SCOPED_TRACE(name);
    const std::vector<Variable> clean_params = three_parameters();
    const std::vector<Variable> undone_params = three_parameters();
    auto clean = make(clean_params);
    auto undone = make(undone_params);
    const std::vector<size_t> all{0, 1, 2};
    for (int step = 0; step < 3; ++step) {
      set_gradients(clean_params, step);
      clean->step();
      // Each step is first taken tentatively on garbage gradients and undone
      // (at step 0 before any buffer exists), then taken for real.
      set_gradients(undone_params, 100 + step);
      undone->step_undoable(all);
      undone->step_undoable(all);  // a second tentative step keeps the first copy
      EXPECT_EQ(undone->undoable(), 3u);
      EXPECT_EQ(undone->step_count(0), step + 2);
      undone->undo();
      EXPECT_EQ(undone->undoable(), 0u);
      EXPECT_EQ(undone->step_count(0), step);
      set_gradients(undone_params, step);
      undone->step();
    }
    expect_same_values(clean_params, undone_params);
    expect_same_state(*clean, *undone);
  }
}

TEST(ParameterOptimizer, StepOfAnIndexOutOfRangeIsAUsageError) {
  auto sgd = nn::Optimizer::make<Sgd>(three_parameters(), SgdOptions{.lr = 0.1f});
  const std::vector<size_t> bad{0, 3};
  const std::string message = "sgd: step of parameter 3, the optimizer has 3";
  expect_usage_error([&] { sgd->step(bad); }, message);
  expect_usage_error([&] { sgd->step_undoable(bad); }, message);
  EXPECT_EQ(sgd->step_count(0), 0);  // refused before any parameter stepped
}

TEST(OptimizerConfig, BuildsEachTypeWithTorchDefaults) {
  auto params = make_parameters(8);
  EXPECT_EQ(make_update_rule({.type = "sgd", .lr = 0.2f}, nn::shapes_of(params))->kind(), "sgd");
  auto adamw = make_update_rule({.type = "adamw", .lr = 0.01f}, nn::shapes_of(params));
  ASSERT_EQ(adamw->kind(), "adamw");
  EXPECT_EQ(static_cast<AdamW&>(*adamw).options().weight_decay, 0.01f);
  auto adagrad = make_update_rule({.type = "adagrad", .lr = 0.01f}, nn::shapes_of(params));
  EXPECT_EQ(static_cast<Adagrad&>(*adagrad).options().eps, 1e-10f);
  auto adam = make_update_rule({.type = "adam", .lr = 0.01f, .eps = 1e-6f}, nn::shapes_of(params));
  EXPECT_EQ(static_cast<Adam&>(*adam).options().eps, 1e-6f);
  EXPECT_EQ(adam->lr(), 0.01f);

  try {
    make_update_rule({.type = "lamb"}, nn::shapes_of(params));
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(),
                 "optimizer.type: unknown optimizer 'lamb' (expected sgd, adam, adamw or "
                 "adagrad)");
  }
  try {
    make_update_rule({.type = "sgd", .momentum = -0.5f}, nn::shapes_of(params));
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer: sgd: invalid momentum -0.5"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace dtrain::optim

namespace dtrain::optim {
namespace {

TEST(ParameterOptimizer, TheRuleMustBeMadeForTheParametersShapes) {
  Rng rng(3);
  Variable weight(normal_tensor({2, 3}, rng), true);
  Variable bias(normal_tensor({3}, rng), true);
  dtrain::testing::expect_usage_error(
      [&] {
        nn::Optimizer({weight, bias}, std::make_unique<Sgd>(nn::shapes_of({weight}), SgdOptions{}));
      },
      "sgd: the rule was made for 1 parameters, 2 were given");
  dtrain::testing::expect_usage_error(
      [&] {
        nn::Optimizer({weight, bias},
                      std::make_unique<Sgd>(nn::shapes_of({bias, weight}), SgdOptions{}));
      },
      "sgd: parameter 0 has shape (2, 3), the rule was made for (3,)");
  auto made = nn::make_optimizer({.type = "adam", .lr = 0.01f}, {weight, bias});
  EXPECT_EQ(made->kind(), "adam");
  EXPECT_EQ(made->parameters().size(), 2u);
}

}  // namespace
}  // namespace dtrain::optim
