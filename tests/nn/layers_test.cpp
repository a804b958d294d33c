#include "nn/layers.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "core/error.h"
#include "core/rng.h"
#include "testing/expect_error.h"

namespace dtrain::nn {
namespace {

using testing::expect_usage_error;
using testing::normal_tensor;
TEST(LayerShapes, EachLayerComputesItsOutputShape) {
  Rng rng(1);
  EXPECT_EQ(Linear(5, 3, rng).output_shape({7, 5}), (Shape{7, 3}));
  EXPECT_EQ(Conv2d(3, 8, 5, rng).output_shape({2, 3, 28, 28}), (Shape{2, 8, 24, 24}));
  EXPECT_EQ(Conv2d(3, 8, 3, rng, 2, 1).output_shape({2, 3, 28, 28}), (Shape{2, 8, 14, 14}));
  EXPECT_EQ(MaxPool2d(2).output_shape({2, 8, 24, 24}), (Shape{2, 8, 12, 12}));
  EXPECT_EQ(MaxPool2d(3, 2, 1).output_shape({2, 8, 7, 7}), (Shape{2, 8, 4, 4}));
  EXPECT_EQ(AvgPool2d(2).output_shape({1, 1, 5, 5}), (Shape{1, 1, 2, 2}));
  EXPECT_EQ(Flatten().output_shape({4, 2, 3, 5}), (Shape{4, 30}));
  EXPECT_EQ(ReLU().output_shape({4, 2, 3}), (Shape{4, 2, 3}));
  EXPECT_EQ(GELU().output_shape({4}), (Shape{4}));
  EXPECT_EQ(Embedding(10, 4, rng).output_shape({2, 3}), (Shape{2, 3, 4}));
  EXPECT_EQ(BatchNorm1d(6).output_shape({5, 6}), (Shape{5, 6}));
  EXPECT_EQ(BatchNorm2d(6).output_shape({5, 6, 2, 2}), (Shape{5, 6, 2, 2}));
  EXPECT_EQ(Sequential().output_shape({3, 3}), (Shape{3, 3}));
}

TEST(LayerShapes, MismatchesNameTheLayerAndBothShapes) {
  Rng rng(1);
  Sequential model;
  model.add("fc", std::make_unique<Linear>(5, 3, rng));
  model.add("conv", std::make_unique<Conv2d>(3, 8, 5, rng));
  model.add("pool", std::make_unique<MaxPool2d>(4));
  model.add("flat", std::make_unique<Flatten>());
  model.add("bn", std::make_unique<BatchNorm2d>(6));
  expect_usage_error(
      [&] {
        model[0].output_shape({7, 5, 1});
      },
      "linear 'fc': input (7, 5, 1) does not match weight (3, 5) (expects [N, 5])");
  expect_usage_error(
      [&] {
        model[1].output_shape({2, 4, 28, 28});
      },
      "conv2d 'conv': input (2, 4, 28, 28) does not match weight (8, 3, 5, 5) (expects "
      "[N, 3, H, W])");
  expect_usage_error(
      [&] {
        model[1].output_shape({2, 3, 4, 28});
      },
      "conv2d 'conv': input (2, 3, 4, 28) is smaller than the kernel 5 (padding 0)");
  expect_usage_error(
      [&] {
        model[2].output_shape({2, 3, 28});
      },
      "max_pool2d 'pool': input (2, 3, 28) is not [N, C, H, W]");
  expect_usage_error(
      [&] {
        model[2].output_shape({2, 3, 3, 3});
      },
      "max_pool2d 'pool': input (2, 3, 3, 3) is smaller than the window 4 "
      "(padding 0)");
  expect_usage_error([&] { model[3].output_shape({2}); },
                     "flatten 'flat': input (2,) needs a batch dimension and at least one more");
  expect_usage_error(
      [&] {
        model[4].output_shape({2, 5, 3, 3});
      },
      "batch_norm2d 'bn': input (2, 5, 3, 3) does not match num_features 6 "
      "(expects [N, C, H, W])");
}

TEST(LayerShapes, InvalidConfigurationsAreRejected) {
  Rng rng(1);
  expect_usage_error([&] { Linear(0, 3, rng); },
                     "linear: in_features 0 and out_features 3 must be positive");
  expect_usage_error([&] { MaxPool2d(2, 1, 2); },
                     "max_pool2d: invalid configuration kernel 2, stride 1, padding 2 (kernel "
                     "must be positive, stride non-negative, padding between 0 and kernel / 2)");
  expect_usage_error([&] { Dropout(1.0f, rng); }, "dropout: p 1 is not in [0, 1)");
  EXPECT_THROW(Conv2d(1, 1, 3, rng, 0), UsageError);
  EXPECT_THROW(BatchNorm1d(0), UsageError);
  EXPECT_THROW(Embedding(0, 3, rng), UsageError);
}

TEST(LayerForward, ShapesAgreeWithOutputShape) {
  Rng rng(2);
  std::vector<std::pair<std::unique_ptr<Module>, Shape>> cases;
  cases.emplace_back(std::make_unique<Linear>(5, 3, rng), Shape{4, 5});
  cases.emplace_back(std::make_unique<Linear>(5, 3, rng, /*bias=*/false), Shape{4, 5});
  cases.emplace_back(std::make_unique<Conv2d>(2, 3, 3, rng, 2, 1), Shape{2, 2, 7, 7});
  cases.emplace_back(std::make_unique<MaxPool2d>(3, 2, 1), Shape{2, 2, 7, 7});
  cases.emplace_back(std::make_unique<AvgPool2d>(2), Shape{2, 2, 7, 7});
  cases.emplace_back(std::make_unique<Flatten>(), Shape{2, 2, 3});
  cases.emplace_back(std::make_unique<Sigmoid>(), Shape{2, 3});
  cases.emplace_back(std::make_unique<Tanh>(), Shape{2, 3});
  cases.emplace_back(std::make_unique<GELU>(), Shape{2, 3});
  cases.emplace_back(std::make_unique<BatchNorm2d>(2), Shape{3, 2, 2, 2});
  for (auto& [layer, shape] : cases) {
    const Variable y = layer->forward(Variable(normal_tensor(shape, rng)));
    EXPECT_EQ(y.shape(), layer->output_shape(shape)) << layer->kind();
  }
}

TEST(LayerForward, LinearComputesXWTransposePlusBias) {
  Rng rng(3);
  Linear fc(2, 2, rng);
  fc.weight().data().copy_from(Tensor::from_vector({1, 2, 3, 4}, {2, 2}));
  fc.bias().data().copy_from(Tensor::from_vector({0.5f, -1}, {2}));
  const Variable y = fc.forward(Variable(Tensor::from_vector({1, 1, 2, 0}, {2, 2})));
  EXPECT_EQ(y.data().to_vector(), (std::vector<float>{3.5f, 6.0f, 2.5f, 5.0f}));
}

TEST(Dropout, DropsAndScalesInTrainingAndIsTheIdentityInEval) {
  Rng rng(4);
  Dropout drop(0.25f, rng);
  const Tensor ones = Tensor::ones({100, 100});
  const std::vector<float> y = drop.forward(Variable(ones)).data().to_vector();
  int64_t zeros = 0;
  for (float v : y) {
    if (v == 0.0f) {
      ++zeros;
    } else {
      EXPECT_FLOAT_EQ(v, 1.0f / 0.75f);
    }
  }
  EXPECT_NEAR(static_cast<double>(zeros) / 10000.0, 0.25, 0.02);

  drop.eval();
  EXPECT_EQ(drop.forward(Variable(ones)).data().to_vector(), ones.to_vector());
}

TEST(Dropout, MasksAreReproducibleFromTheSeedAndFromTheSavedState) {
  const Tensor ones = Tensor::ones({64});
  Rng rng_a(5), rng_b(5);
  Dropout a(0.5f, rng_a), b(0.5f, rng_b);
  EXPECT_EQ(a.forward(Variable(ones)).data().to_vector(),
            b.forward(Variable(ones)).data().to_vector());

  const StateDict saved = a.state_dict().clone();
  const std::vector<float> next = a.forward(Variable(ones)).data().to_vector();
  EXPECT_NE(next, a.forward(Variable(ones)).data().to_vector());
  a.load_state_dict(saved);
  EXPECT_EQ(a.forward(Variable(ones)).data().to_vector(), next);
}

TEST(BatchNorm, TrainingNormalisesAndUpdatesRunningStatistics) {
  Rng rng(6);
  BatchNorm1d bn(3);
  Tensor x = Tensor::empty({8, 3});
  for (int64_t i = 0; i < 8; ++i) {
    for (int64_t c = 0; c < 3; ++c) x.data()[i * 3 + c] = 2.0f * c + rng.normal() * (c + 1);
  }
  const Tensor y = bn.forward(Variable(x)).data();
  for (int64_t c = 0; c < 3; ++c) {
    double mean = 0, var = 0, xm = 0, xv = 0;
    for (int64_t i = 0; i < 8; ++i) mean += y.data()[i * 3 + c], xm += x.data()[i * 3 + c];
    mean /= 8, xm /= 8;
    for (int64_t i = 0; i < 8; ++i) {
      var += std::pow(y.data()[i * 3 + c] - mean, 2);
      xv += std::pow(x.data()[i * 3 + c] - xm, 2);
    }
    EXPECT_NEAR(mean, 0.0, 1e-5);
    EXPECT_NEAR(var / 8, 1.0, 1e-3);  // biased variance, eps 1e-5
    EXPECT_NEAR(bn.running_mean().data()[c], 0.1 * xm, 1e-5);
    EXPECT_NEAR(bn.running_var().data()[c], 0.9 + 0.1 * xv / 7, 1e-5);  // unbiased
  }
  EXPECT_EQ(bn.num_batches_tracked(), 1);
  EXPECT_EQ(bn.state_dict().metadata().at("num_batches_tracked"), "1");
}

TEST(BatchNorm, EvalUsesRunningStatisticsAndLeavesThemAlone) {
  BatchNorm2d bn(2);
  bn.running_mean().copy_from(Tensor::from_vector({1.0f, -1.0f}, {2}));
  bn.running_var().copy_from(Tensor::from_vector({4.0f, 0.25f}, {2}));
  bn.eval();
  const Tensor x = Tensor::from_vector({3, 5, 1, 0, 0, 0.5f, -1, -2}, {1, 2, 2, 2});
  const std::vector<float> y = bn.forward(Variable(x)).data().to_vector();
  for (int64_t i = 0; i < 8; ++i) {
    const int64_t c = i / 4;
    const float mean = c == 0 ? 1.0f : -1.0f;
    const float var = c == 0 ? 4.0f : 0.25f;
    EXPECT_NEAR(y[i], (x.data()[i] - mean) / std::sqrt(var + 1e-5f), 1e-5) << i;
  }
  EXPECT_EQ(bn.running_mean().to_vector(), (std::vector<float>{1.0f, -1.0f}));
  EXPECT_EQ(bn.num_batches_tracked(), 0);
}

TEST(BatchNorm, TrainingOnOneValuePerChannelIsAnError) {
  BatchNorm1d bn(4);
  bn.set_name("bn1");
  expect_usage_error(
      [&] {
        bn.forward(Variable(Tensor::ones({1, 4})));
      },
      "batch_norm1d 'bn1': input (1, 4) has only one value per channel; training "
      "needs more to estimate a variance");
  bn.eval();
  EXPECT_EQ(bn.forward(Variable(Tensor::ones({1, 4}))).shape(), (Shape{1, 4}));
}

TEST(Embedding, LooksUpRowsAndProducesASparseGradient) {
  Rng rng(7);
  Embedding emb(10, 3, rng);
  const std::vector<int64_t> indices = {1, 3, 1};
  const Variable out = emb.forward_indices(indices);
  ASSERT_EQ(out.shape(), (Shape{3, 3}));
  for (int64_t j = 0; j < 3; ++j) {
    EXPECT_EQ(out.data().at({0, j}), emb.weight().data().at({1, j}));
    EXPECT_EQ(out.data().at({1, j}), emb.weight().data().at({3, j}));
  }
  sum(out).backward();
  const SparseRows* grad = emb.weight().sparse_grad();
  ASSERT_NE(grad, nullptr);
  EXPECT_FALSE(emb.weight().grad().defined()) << "the gradient must stay sparse";
  EXPECT_EQ(grad->num_rows, 10);
  Tensor dense = Tensor::zeros({10, 3});
  grad->add_to(dense);
  for (int64_t r = 0; r < 10; ++r) {
    const float expected = r == 1 ? 2.0f : (r == 3 ? 1.0f : 0.0f);
    for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(dense.at({r, j}), expected) << r;
  }
}

TEST(Embedding, ForwardTakesIntegerValuedFloatsAndChecksThem) {
  Rng rng(8);
  Embedding emb(5, 2, rng);
  emb.set_name("emb");
  const Variable out = emb.forward(Variable(Tensor::from_vector({0, 4, 2, 1, 1, 3}, {2, 3})));
  EXPECT_EQ(out.shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(out.data().at({0, 1, 1}), emb.weight().data().at({4, 1}));
  expect_usage_error(
      [&] {
        emb.forward(Variable(Tensor::from_vector({0, 5}, {2})));
      },
      "embedding 'emb': index 5 at position 1 is out of range [0, 5)");
  expect_usage_error([&] { emb.forward(Variable(Tensor::from_vector({1.5f}, {1}))); },
                     "embedding 'emb': index 1.5 at position 0 is not an integer");
  const std::vector<int64_t> negative = {-1};
  expect_usage_error([&] { emb.forward_indices(negative); },
                     "embedding 'emb': index -1 at position 0 is out of range [0, 5)");
}

}  // namespace
}  // namespace dtrain::nn
