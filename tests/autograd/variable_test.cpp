// The backward engine: accumulation, graph release, hooks, grad mode,
// sparse gradients and shape errors.
#include "autograd/variable.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "core/error.h"
#include "testing/gradcheck.h"

namespace dtrain {
namespace {

using testing::random_tensor;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  }
  return "(no UsageError)";
}

TEST(Variable, LeafGradientsAccumulateUntilZeroGrad) {
  Variable w(Tensor::from_vector({1, 2, 3}, {3}), true);
  Variable x(Tensor::from_vector({4, 5, 6}, {3}));
  sum(mul(w, x)).backward();
  EXPECT_EQ(w.grad().to_vector(), (std::vector<float>{4, 5, 6}));
  EXPECT_FALSE(x.has_grad());
  sum(mul(w, x)).backward();
  EXPECT_EQ(w.grad().to_vector(), (std::vector<float>{8, 10, 12}));
  w.zero_grad();
  EXPECT_FALSE(w.has_grad());
  sum(w).backward();
  EXPECT_EQ(w.grad().to_vector(), (std::vector<float>{1, 1, 1}));
}

TEST(Variable, SharedSubexpressionSumsBothPaths) {
  // y = a * a + a: dy/da = 2a + 1, through a node used three times.
  Variable a(Tensor::from_vector({3}, {1}), true);
  Variable b = add(a, a);             // gradient 2, passed through unchanged to both uses
  sum(add(mul(b, b), b)).backward();  // d/da (4a^2 + 2a) = 8a + 2
  EXPECT_FLOAT_EQ(a.grad().item(), 26.0f);
}

TEST(Variable, SecondBackwardThroughFreedGraphThrows) {
  Variable w(random_tensor({2, 2}, 1), true);
  Variable loss = sum(relu(w));
  loss.backward();
  EXPECT_NE(error_of([&] { loss.backward(); }).find("already freed by an earlier backward()"),
            std::string::npos);
}

TEST(Variable, BackwardNeedsScalarOrSeed) {
  Variable w(Tensor::from_vector({1, -2}, {2}), true);
  Variable y = mul_scalar(w, 3.0f);
  EXPECT_EQ(error_of([&] { y.backward(); }),
            "backward: the variable has shape (2,); call backward(grad_output) for a non-scalar");
  y.backward(Tensor::from_vector({1, 10}, {2}));
  EXPECT_EQ(w.grad().to_vector(), (std::vector<float>{3, 30}));
  Variable constant(Tensor::scalar(1.0f));
  EXPECT_THROW(constant.backward(), UsageError);
  EXPECT_THROW(y.set_requires_grad(false), UsageError);
}

TEST(Variable, LeafRootReceivesSeed) {
  Variable w(Tensor::scalar(2.0f), true);
  int fired = 0;
  w.register_grad_ready_hook([&](Variable&) { ++fired; });
  w.backward();
  EXPECT_EQ(w.grad().item(), 1.0f);
  EXPECT_EQ(fired, 1);
}

TEST(Variable, NoGradGuardRecordsNothingAndNests) {
  Variable w(random_tensor({3}, 2), true);
  EXPECT_TRUE(grad_mode_enabled());
  {
    NoGradGuard outer;
    {
      NoGradGuard inner;
      EXPECT_FALSE(grad_mode_enabled());
    }
    EXPECT_FALSE(grad_mode_enabled());
    Variable y = relu(w);
    EXPECT_TRUE(y.is_leaf());
    EXPECT_FALSE(y.requires_grad());
  }
  EXPECT_TRUE(grad_mode_enabled());
  EXPECT_TRUE(relu(w).requires_grad());
  EXPECT_FALSE(relu(Variable(random_tensor({3}, 3))).requires_grad());
  EXPECT_FALSE(relu(w).detach().requires_grad());
}

TEST(Variable, DeepChainNeedsNoRecursion) {
  Variable x(Tensor::scalar(1.0f), true);
  Variable y = x;
  for (int i = 0; i < 20000; ++i) y = add_scalar(y, 0.5f);
  y.backward();
  EXPECT_FLOAT_EQ(y.item(), 10001.0f);
  EXPECT_FLOAT_EQ(x.grad().item(), 1.0f);
}

// An MLP 4-6-5-3: the hooks fire from the last layer to the first, once per
// leaf, with the final gradient, before the earlier layers have any.
TEST(GradReadyHooks, FireInReverseOrderOfUseWithFinalValues) {
  std::vector<Variable> params = {
      Variable(random_tensor({6, 4}, 10), true), Variable(random_tensor({6}, 11), true),
      Variable(random_tensor({5, 6}, 12), true), Variable(random_tensor({5}, 13), true),
      Variable(random_tensor({3, 5}, 14), true), Variable(random_tensor({3}, 15), true)};
  std::vector<int> order;
  std::vector<Tensor> seen(params.size());
  std::vector<int> fired(params.size(), 0);
  std::vector<bool> first_layer_had_grad(params.size(), true);
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].register_grad_ready_hook([&, i](Variable& v) {
      order.push_back(static_cast<int>(i));
      ++fired[i];
      seen[i] = v.grad().clone();
      first_layer_had_grad[i] = params[0].has_grad();
    });
  }
  const std::vector<int64_t> targets = {0, 2};
  auto step = [&] {
    Variable x(random_tensor({2, 4}, 16));
    Variable h = relu(linear(x, params[0], params[1]));
    h = relu(linear(h, params[2], params[3]));
    cross_entropy(linear(h, params[4], params[5]), targets).backward();
  };
  step();
  ASSERT_EQ(order.size(), 6u);
  EXPECT_TRUE((order[0] == 4 && order[1] == 5) || (order[0] == 5 && order[1] == 4));
  EXPECT_TRUE((order[4] == 0 && order[5] == 1) || (order[4] == 1 && order[5] == 0));
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(fired[i], 1) << "param " << i;
    EXPECT_EQ(seen[i].to_vector(), params[i].grad().to_vector()) << "param " << i;
  }
  EXPECT_FALSE(first_layer_had_grad[4]);
  EXPECT_FALSE(first_layer_had_grad[2]);
  step();
  for (size_t i = 0; i < params.size(); ++i) EXPECT_EQ(fired[i], 2) << "param " << i;
}

TEST(GradReadyHooks, LeafUsedTwiceFiresOnceWithTheSum) {
  Variable w(random_tensor({3, 3}, 20), true);
  Variable x(random_tensor({2, 3}, 21));
  int fired = 0;
  Tensor seen;
  const int64_t id = w.register_grad_ready_hook([&](Variable& v) {
    ++fired;
    seen = v.grad().clone();
  });
  sum(linear(linear(x, w, Variable()), w, Variable())).backward();
  EXPECT_EQ(fired, 1);
  EXPECT_EQ(seen.to_vector(), w.grad().to_vector());
  w.remove_grad_ready_hook(id);
  sum(linear(x, w, Variable())).backward();
  EXPECT_EQ(fired, 1);
  EXPECT_THROW(w.remove_grad_ready_hook(id), UsageError);
}

TEST(SparseGradient, EmbeddingGivesRowsNotADenseTable) {
  Variable table(random_tensor({1000, 4}, 30), true);
  const std::vector<int64_t> ids = {7, 3, 7};
  sum(embedding(table, ids)).backward();
  EXPECT_FALSE(table.grad().defined());
  ASSERT_NE(table.sparse_grad(), nullptr);
  EXPECT_EQ(table.sparse_grad()->indices, ids);
  EXPECT_EQ(table.sparse_grad()->values.shape(), (Shape{3, 4}));
  EXPECT_EQ(table.sparse_grad()->num_rows, 1000);
  // A second lookup appends rows; a dense contribution is kept beside them.
  sum(embedding(table, std::vector<int64_t>{3})).backward();
  sum(mul_scalar(table, 0.5f)).backward();
  EXPECT_EQ(table.sparse_grad()->indices.size(), 4u);
  ASSERT_TRUE(table.grad().defined());
  const Tensor dense = table.dense_grad();
  EXPECT_EQ(table.sparse_grad(), nullptr);
  EXPECT_FLOAT_EQ(dense.at({7, 0}), 2.5f);
  EXPECT_FLOAT_EQ(dense.at({3, 1}), 2.5f);
  EXPECT_FLOAT_EQ(dense.at({0, 2}), 0.5f);
}

TEST(SparseGradient, ComputedTableGetsADenseGradient) {
  Variable base(random_tensor({5, 2}, 31), true);
  sum(embedding(mul_scalar(base, 2.0f), std::vector<int64_t>{1, 1})).backward();
  EXPECT_EQ(base.sparse_grad(), nullptr);
  EXPECT_FLOAT_EQ(base.grad().at({1, 0}), 4.0f);
  EXPECT_FLOAT_EQ(base.grad().at({0, 0}), 0.0f);
}

TEST(ShapeErrors, NameBothShapes) {
  Variable x(Tensor::zeros({4, 3}));
  EXPECT_EQ(error_of([&] {
              linear(x, Variable(Tensor::zeros({2, 5})), Variable());
            }),
            "linear: input (4, 3) does not match weight (2, 5)");
  EXPECT_EQ(error_of([&] {
              linear(x, Variable(Tensor::zeros({2, 3})), Variable(Tensor::zeros({3})));
            }),
            "linear: bias (3,) does not match weight (2, 3) (expected (2,))");
  EXPECT_EQ(error_of([&] { add(x, Variable(Tensor::zeros({4}))); }),
            "add: shapes (4, 3) and (4,) do not broadcast (the second must equal the first's "
            "trailing dimensions or hold one element)");
  EXPECT_EQ(error_of([&] {
              matmul(x, Variable(Tensor::zeros({4, 3})));
            }),
            "matmul: (4, 3) cannot multiply (4, 3) (needs [N, I] x [I, O])");
  EXPECT_EQ(error_of([&] {
              conv2d(Variable(Tensor::zeros({1, 3, 8, 8})), Variable(Tensor::zeros({4, 2, 3, 3})),
                     Variable(), 1, 0);
            }),
            "conv2d: input (1, 3, 8, 8) does not match weight (4, 2, 3, 3) (need [N, C, H, W] and "
            "[O, C, K, K])");
  EXPECT_EQ(error_of([&] {
              mse_loss(x, Variable(Tensor::zeros({3, 4})));
            }),
            "mse_loss: prediction (4, 3) does not match target (3, 4)");
  EXPECT_EQ(error_of([&] {
              cross_entropy(x, std::vector<int64_t>{0, 1, 2, 3});
            }),
            "cross_entropy: target 3 (sample 3) is out of range [0, 3)");
  EXPECT_THROW(embedding(x, std::vector<int64_t>{4}), UsageError);
  EXPECT_THROW(max_pool2d(Variable(Tensor::zeros({1, 1, 4, 4})), 2, 2, 2), UsageError);
  EXPECT_THROW(Variable().data(), UsageError);
}

TEST(Broadcasting, RowScalarAndSameShape) {
  Variable a(Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}));
  EXPECT_EQ(add(a, Variable(Tensor::from_vector({10, 20, 30}, {3}))).data().to_vector(),
            (std::vector<float>{11, 22, 33, 14, 25, 36}));
  EXPECT_EQ(mul(a, Variable(Tensor::scalar(2.0f))).data().to_vector(),
            (std::vector<float>{2, 4, 6, 8, 10, 12}));
  EXPECT_EQ(sub(a, Variable(Tensor::from_vector({1}, {1}))).data().to_vector(),
            (std::vector<float>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(div(a, a).data().to_vector(), (std::vector<float>(6, 1.0f)));
}

TEST(BatchNorm, RunningStatisticsFollowTorch) {
  // One channel of values {1, 2, 3, 6}: mean 3, biased var 3.5, unbiased 14/3.
  Variable x(Tensor::from_vector({1, 2, 3, 6}, {4, 1}));
  Tensor running_mean = Tensor::full({1}, 1.0f);
  Tensor running_var = Tensor::full({1}, 2.0f);
  Variable y = batch_norm(x, Variable(Tensor::ones({1})), Variable(Tensor::zeros({1})),
                          running_mean, running_var, true, 0.1f, 0.0f);
  EXPECT_FLOAT_EQ(running_mean.item(), 0.9f * 1.0f + 0.1f * 3.0f);
  EXPECT_FLOAT_EQ(running_var.item(), 0.9f * 2.0f + 0.1f * 14.0f / 3.0f);
  EXPECT_NEAR(y.data().data()[3], 3.0 / std::sqrt(3.5), 1e-6);
  Variable z = batch_norm(x, Variable(), Variable(), running_mean, running_var, false, 0.1f, 0.0f);
  EXPECT_NEAR(z.data().data()[0], (1.0 - running_mean.item()) / std::sqrt(running_var.item()),
              1e-6);
  EXPECT_THROW(batch_norm(Variable(Tensor::zeros({1, 2})), Variable(), Variable(),
                          Tensor::zeros({2}), Tensor::ones({2}), true, 0.1f, 1e-5f),
               UsageError);
}

TEST(Dropout, DeterministicGivenTheSeedAndIdentityInEvaluation) {
  Variable x(Tensor::ones({1000}));
  Rng a(5);
  Rng b(5);
  const Tensor ya = dropout(x, 0.25f, true, a).data();
  EXPECT_EQ(ya.to_vector(), dropout(x, 0.25f, true, b).data().to_vector());
  int zeros = 0;
  for (float v : ya.span()) {
    if (v == 0.0f) {
      ++zeros;
    } else {
      EXPECT_FLOAT_EQ(v, 1.0f / 0.75f);
    }
  }
  EXPECT_GT(zeros, 180);
  EXPECT_LT(zeros, 320);
  EXPECT_TRUE(dropout(x, 0.25f, false, a).data().same_storage(x.data()));
  EXPECT_THROW(dropout(x, 1.5f, true, a), UsageError);
}

TEST(Losses, StableForLargeLogits) {
  Variable logits(Tensor::from_vector({1000, -1000, 0, 500}, {2, 2}), true);
  Variable ce = cross_entropy(logits, std::vector<int64_t>{1, 0});
  EXPECT_FLOAT_EQ(ce.item(), (2000.0f + 500.0f) / 2.0f);
  ce.backward();
  for (float g : logits.grad().span()) EXPECT_TRUE(std::isfinite(g));
  Variable x(Tensor::from_vector({100, -100}, {2}), true);
  Variable bce = binary_cross_entropy_with_logits(x, Variable(Tensor::from_vector({0, 1}, {2})));
  EXPECT_FLOAT_EQ(bce.item(), 100.0f);
  bce.backward();
  EXPECT_FLOAT_EQ(x.grad().data()[0], 0.5f);
  EXPECT_FLOAT_EQ(x.grad().data()[1], -0.5f);
}

TEST(Gradcheck, DetectsAWrongGradient) {
  // detach() hides one factor from backward: analytic x, numeric 2x.
  EXPECT_FALSE(
      testing::gradcheck([](const std::vector<Variable>& v) { return mul(v[0], v[0].detach()); },
                         {random_tensor({3}, 40, 0.5f, 1.0f)}));
}

}  // namespace
}  // namespace dtrain
