#include "nn/init.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "core/error.h"
#include "core/rng.h"
#include "nn/layers.h"

namespace dtrain::nn {
namespace {

struct Moments {
  double mean = 0;
  double var = 0;
  float min = 0;
  float max = 0;
};

Moments moments_of(const Tensor& t) {
  Moments m;
  m.min = m.max = t.data()[0];
  for (float v : t.span()) {
    m.mean += v;
    m.min = std::min(m.min, v);
    m.max = std::max(m.max, v);
  }
  m.mean /= static_cast<double>(t.numel());
  for (float v : t.span()) m.var += (v - m.mean) * (v - m.mean);
  m.var /= static_cast<double>(t.numel());
  return m;
}

bool bit_identical(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<size_t>(a.numel())) == 0;
}

TEST(Init, FansFollowTorch) {
  EXPECT_EQ(init::fan_in({256, 784}), 784);
  EXPECT_EQ(init::fan_out({256, 784}), 256);
  EXPECT_EQ(init::fan_in({16, 3, 5, 5}), 75);
  EXPECT_EQ(init::fan_out({16, 3, 5, 5}), 400);
  EXPECT_THROW(init::fan_in({7}), UsageError);
}

TEST(Init, LinearWeightsAndBiasAreUniformWithinOneOverSqrtFanIn) {
  Rng rng(11);
  Linear fc(400, 300, rng);
  const float bound = 1.0f / 20.0f;
  const Moments w = moments_of(fc.weight().data());
  EXPECT_GE(w.min, -bound);
  EXPECT_LT(w.max, bound);
  EXPECT_GT(w.max, 0.99f * bound);  // 120000 draws reach the edges
  EXPECT_LT(w.min, -0.99f * bound);
  EXPECT_NEAR(w.mean, 0.0, 0.001);
  EXPECT_NEAR(w.var, bound * bound / 3.0, 0.02 * bound * bound / 3.0);
  const Moments b = moments_of(fc.bias().data());
  EXPECT_GE(b.min, -bound);
  EXPECT_LT(b.max, bound);
}

TEST(Init, ConvUsesTheReceptiveFieldForItsBound) {
  Rng rng(12);
  Conv2d conv(3, 256, 5, rng);
  const double bound = 1.0 / std::sqrt(75.0);
  const Moments w = moments_of(conv.weight().data());
  EXPECT_GE(w.min, -bound);
  EXPECT_LT(w.max, bound);
  EXPECT_NEAR(w.var, bound * bound / 3.0, 0.03 * bound * bound / 3.0);
  const Moments b = moments_of(conv.bias().data());
  EXPECT_GE(b.min, -bound);
  EXPECT_LT(b.max, bound);
}

TEST(Init, EmbeddingIsStandardNormalAndBatchNormIsOnesAndZeros) {
  Rng rng(13);
  Embedding emb(1000, 64, rng);
  const Moments e = moments_of(emb.weight().data());
  EXPECT_NEAR(e.mean, 0.0, 0.01);
  EXPECT_NEAR(e.var, 1.0, 0.02);

  BatchNorm2d bn(5);
  EXPECT_EQ(bn.weight().data().to_vector(), std::vector<float>(5, 1.0f));
  EXPECT_EQ(bn.bias().data().to_vector(), std::vector<float>(5, 0.0f));
  EXPECT_EQ(bn.running_mean().to_vector(), std::vector<float>(5, 0.0f));
  EXPECT_EQ(bn.running_var().to_vector(), std::vector<float>(5, 1.0f));
}

TEST(Init, XavierUniformBound) {
  Rng rng(14);
  Tensor w = Tensor::empty({200, 100});
  init::xavier_uniform(w, 2.0f, rng);
  const double bound = 2.0 * std::sqrt(6.0 / 300.0);
  const Moments m = moments_of(w);
  EXPECT_GE(m.min, -bound);
  EXPECT_LT(m.max, bound);
  EXPECT_NEAR(m.var, bound * bound / 3.0, 0.03 * bound * bound / 3.0);
}

std::unique_ptr<Sequential> model_from_seed(uint64_t seed) {
  Rng rng(seed);
  auto model = std::make_unique<Sequential>();
  model->add(std::make_unique<Conv2d>(1, 4, 3, rng));
  model->add(std::make_unique<Flatten>());
  model->add(std::make_unique<Linear>(4 * 6 * 6, 10, rng));
  model->add(std::make_unique<Dropout>(0.5f, rng));
  model->add(std::make_unique<Embedding>(7, 3, rng));
  return model;
}

TEST(Init, TheSameSeedGivesBitIdenticalWeightsAndAnotherSeedDoesNot) {
  auto a = model_from_seed(42);
  auto b = model_from_seed(42);
  auto c = model_from_seed(43);
  const StateDict da = a->state_dict(), db = b->state_dict(), dc = c->state_dict();
  ASSERT_EQ(da.size(), dc.size());
  for (const auto& [name, tensor] : da) {
    EXPECT_TRUE(bit_identical(tensor, db.at(name))) << name;
    EXPECT_FALSE(bit_identical(tensor, dc.at(name))) << name;
  }
  EXPECT_EQ(da.metadata(), db.metadata());
  EXPECT_NE(da.metadata().at("3.rng"), dc.metadata().at("3.rng"));
}

}  // namespace
}  // namespace dtrain::nn
