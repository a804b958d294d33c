#include "nn/per_sample_gradients.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "autograd/functions.h"
#include "core/error.h"
#include "core/rng.h"
#include "nn/layers.h"
#include "testing/expect_error.h"

// The reference for per-sample gradients: each sample alone as a batch of
// one through ordinary autograd (itself checked against finite differences
// in tests/autograd), its gradient g_i flattened over every parameter.

namespace dtrain::nn {
namespace {

Tensor normal_tensor(Shape shape, Rng& rng, float stddev) {
  Tensor t = testing::normal_tensor(std::move(shape), rng);
  for (float& v : t.span()) v *= stddev;
  return t;
}

struct Batch {
  Tensor x;
  std::vector<int64_t> y;
};

std::vector<std::vector<double>> reference_gradients(Sequential& model, const Batch& b) {
  std::vector<std::vector<double>> out;
  const int64_t n = b.x.size(0);
  for (int64_t i = 0; i < n; ++i) {
    model.zero_grad();
    Variable logits = model.forward(Variable(b.x.narrow(i, 1).clone()));
    cross_entropy(logits, std::span<const int64_t>(b.y).subspan(size_t(i), 1)).backward();
    std::vector<double> g;
    for (Variable& p : model.parameters()) {
      for (float v : p.dense_grad().to_vector()) g.push_back(v);
    }
    out.push_back(std::move(g));
  }
  model.zero_grad();
  return out;
}

double squared_norm(const std::vector<double>& g) {
  double s = 0;
  for (double v : g) s += v * v;
  return s;
}

// Runs the per-sample pass, checks every norm and the clipped sum against
// the reference, and checks that clipping bounds every per-sample norm. The
// clipping norm is the median per-sample norm, so some samples are clipped
// and some are not.
void check_model(Sequential& model, const Batch& b) {
  const auto reference = reference_gradients(model, b);
  const int64_t n = b.x.size(0);
  std::vector<double> ref_norms;
  for (const auto& g : reference) ref_norms.push_back(std::sqrt(squared_norm(g)));
  std::sort(ref_norms.begin(), ref_norms.end());
  const double max_grad_norm = ref_norms[ref_norms.size() / 2];

  PerSampleGradients psg(model);
  Variable logits = psg.forward(b.x);
  psg.backward(mul_scalar(cross_entropy(logits, b.y), static_cast<float>(n)));
  const std::vector<double> norms = psg.squared_norms();
  ASSERT_EQ(static_cast<int64_t>(norms.size()), n);
  bool some_clipped = false, some_not = false;
  for (int64_t i = 0; i < n; ++i) {
    const double want = squared_norm(reference[size_t(i)]);
    EXPECT_NEAR(norms[size_t(i)], want, 1e-5 * std::max(1.0, want)) << "sample " << i;
    (std::sqrt(want) > max_grad_norm ? some_clipped : some_not) = true;
  }
  EXPECT_TRUE(some_clipped) << "the test should clip some samples";
  EXPECT_TRUE(some_not) << "the test should leave some samples unclipped";

  // Clip factors as DP-SGD computes them (privacy::clip_factors; nn does
  // not depend on privacy, so the formula is repeated here).
  std::vector<float> factors(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const double norm = std::sqrt(norms[size_t(i)]);
    factors[size_t(i)] = norm > max_grad_norm ? float(max_grad_norm / norm) : 1.0f;
    const double clipped = factors[size_t(i)] * std::sqrt(squared_norm(reference[size_t(i)]));
    EXPECT_LE(clipped, max_grad_norm * (1 + 1e-6)) << "sample " << i;
  }
  psg.clipped_sum(factors);
  std::vector<double> want(reference[0].size(), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < want.size(); ++j)
      want[j] += factors[size_t(i)] * reference[size_t(i)][j];
  }
  std::vector<double> got;
  for (Variable& p : model.parameters()) {
    ASSERT_TRUE(p.has_grad());
    for (float v : p.grad().to_vector()) got.push_back(v);
  }
  ASSERT_EQ(got.size(), want.size());
  double max_err = 0, max_abs = 0;
  for (size_t j = 0; j < want.size(); ++j) {
    max_err = std::max(max_err, std::abs(got[j] - want[j]));
    max_abs = std::max(max_abs, std::abs(want[j]));
  }
  EXPECT_LE(max_err, 1e-5 * std::max(1.0, max_abs));
}

std::vector<int64_t> labels(int64_t n, int64_t classes) {
  std::vector<int64_t> y;
  for (int64_t i = 0; i < n; ++i) y.push_back((i * 7 + 3) % classes);
  return y;
}

TEST(PerSampleGradients, LinearMatchesSingleSampleBatches) {
  Rng rng(3);
  Sequential model;
  model.add(std::make_unique<Linear>(5, 7, rng));
  model.add(std::make_unique<Tanh>());
  model.add(std::make_unique<Linear>(7, 6, rng, /*bias=*/false));
  model.add(std::make_unique<ReLU>());
  model.add(std::make_unique<Linear>(6, 3, rng));
  Rng data(4);
  check_model(model, {normal_tensor({9, 5}, data, 2.0f), labels(9, 3)});
}

TEST(PerSampleGradients, Conv2dMatchesSingleSampleBatches) {
  Rng rng(5);
  Sequential model;
  model.add(std::make_unique<Conv2d>(2, 3, 3, rng, 1, 1));
  model.add(std::make_unique<ReLU>());
  model.add(std::make_unique<MaxPool2d>(2));
  model.add(std::make_unique<Conv2d>(3, 4, 2, rng, 2, 0, /*bias=*/false));
  model.add(std::make_unique<Flatten>());
  model.add(std::make_unique<Linear>(4 * 2 * 2, 3, rng));
  Rng data(6);
  check_model(model, {normal_tensor({7, 2, 8, 8}, data, 1.5f), labels(7, 3)});
}

TEST(PerSampleGradients, EmbeddingWithRepeatedIndicesMatchesSingleSampleBatches) {
  Rng rng(7);
  Sequential model;
  model.add(std::make_unique<Embedding>(6, 4, rng));
  model.add(std::make_unique<Flatten>());
  auto inner = std::make_unique<Sequential>();  // nested Sequentials are walked
  inner->add(std::make_unique<Linear>(3 * 4, 5, rng));
  inner->add(std::make_unique<GELU>());
  model.add(std::move(inner));
  model.add(std::make_unique<Linear>(5, 3, rng));
  // Samples 0 and 3 repeat an index within the sample.
  const std::vector<float> idx = {1, 1, 4, 0, 2, 5, 3, 3, 3, 5, 0, 1, 2, 2, 4, 0, 0, 0};
  check_model(model, {Tensor::from_vector(idx, {6, 3}), labels(6, 3)});
}

TEST(PerSampleGradients, EmptyBatchGivesZeroGradients) {
  Rng rng(8);
  Sequential model;
  model.add(std::make_unique<Linear>(4, 3, rng));
  PerSampleGradients psg(model);
  Variable out = psg.forward(Tensor::zeros({0, 4}));
  EXPECT_EQ(out.shape(), (Shape{0, 3}));
  psg.backward(sum(out));
  EXPECT_TRUE(psg.squared_norms().empty());
  psg.clipped_sum({});
  for (Variable& p : model.parameters()) {
    for (float v : p.grad().to_vector()) EXPECT_EQ(v, 0.0f);
  }
}

TEST(PerSampleGradients, BatchNormIsRefusedByName) {
  Rng rng(9);
  Sequential model;
  model.add("fc", std::make_unique<Linear>(4, 3, rng));
  model.add("bn", std::make_unique<BatchNorm1d>(3));
  testing::expect_usage_error(
      [&] { PerSampleGradients psg(model); },
      "batch_norm1d 'bn': DP-SGD needs per-sample gradients, which only linear, "
      "conv2d and embedding layers provide; a batch_norm1d layer has "
      "parameters and mixes the samples of a batch (remove it from the "
      "model)");
}

TEST(PerSampleGradients, OutOfOrderCallsAreUsageErrors) {
  Rng rng(10);
  Sequential model;
  model.add(std::make_unique<Linear>(4, 3, rng));
  PerSampleGradients psg(model);
  EXPECT_THROW(psg.squared_norms(), UsageError);
  Variable out = psg.forward(Tensor::ones({2, 4}));
  EXPECT_THROW(psg.clipped_sum(std::vector<float>{1, 1}), UsageError);
  psg.backward(sum(out));
  EXPECT_THROW(psg.clipped_sum(std::vector<float>{1}), UsageError);
  // The parameters require gradients again after forward().
  for (const Variable& p : model.parameters()) EXPECT_TRUE(p.requires_grad());
}

}  // namespace
}  // namespace dtrain::nn
