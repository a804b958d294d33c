// Each optimizer on a two-element parameter p0 = [1, -2] with the gradients
// [0.5, -1], [0.25, 0.5], [-1, 2], against sequences computed by hand (in
// double precision, from the formulas in the optimizers' headers).
#include <gtest/gtest.h>

#include <array>
#include <memory>
#include <vector>

#include "nn/optimizer.h"
#include "optim/adagrad.h"
#include "optim/adam.h"
#include "optim/sgd.h"

namespace dtrain::optim {
namespace {

using Sequence = std::vector<std::array<float, 2>>;

void expect_sequence(UpdateRule& optimizer, const Variable& p, const Sequence& expected) {
  const std::vector<std::vector<float>> grads = {{0.5f, -1.0f}, {0.25f, 0.5f}, {-1.0f, 2.0f}};
  for (size_t step = 0; step < expected.size(); ++step) {
    optimizer.update(0, p.data(), Tensor::from_vector(grads[step], {2}));
    EXPECT_NEAR(p.data().data()[0], expected[step][0], 2e-6) << "step " << step + 1;
    EXPECT_NEAR(p.data().data()[1], expected[step][1], 2e-6) << "step " << step + 1;
  }
}

Variable fresh() { return Variable(Tensor::from_vector({1.0f, -2.0f}, {2}), true); }

TEST(Reference, SgdPlain) {
  // p -= 0.1 g: [1 - 0.05, -2 + 0.1] = [0.95, -1.9], ...
  Variable p = fresh();
  Sgd sgd(nn::shapes_of({p}), {.lr = 0.1f});
  expect_sequence(sgd, p, {{0.95f, -1.9f}, {0.925f, -1.95f}, {1.025f, -2.15f}});
}

TEST(Reference, SgdMomentumDampeningWeightDecay) {
  // step 1: d = g + 0.01 p = [0.51, -1.02]; buf = d; p -= 0.1 buf = [0.949, -1.898].
  // step 2: d = [0.25949, 0.48102]; buf = 0.9 buf + 0.9 d = [0.692541, -0.485082];
  //         p = [0.8797459, -1.8494918].
  Variable p = fresh();
  Sgd sgd(nn::shapes_of({p}),
          {.lr = 0.1f, .momentum = 0.9f, .dampening = 0.1f, .weight_decay = 0.01f});
  expect_sequence(sgd, p,
                  {{0.949f, -1.898f}, {0.8797459f, -1.8494918f}, {0.906625439f, -1.98416988f}});
}

TEST(Reference, SgdNesterov) {
  // step 1: buf = g; p -= 0.1 (g + 0.9 buf) = 0.1 * 1.9 g: [0.905, -1.81].
  Variable p = fresh();
  Sgd sgd(nn::shapes_of({p}), {.lr = 0.1f, .momentum = 0.9f, .nesterov = true});
  expect_sequence(sgd, p, {{0.905f, -1.81f}, {0.817f, -1.824f}, {0.9503f, -2.1716f}});
}

TEST(Reference, Adam) {
  // step 1: m = 0.1 g, v = 0.001 g^2; m^ = g, v^ = g^2: p -= 0.1 sign(g).
  Variable p = fresh();
  Adam adam(nn::shapes_of({p}), {.lr = 0.1f});
  expect_sequence(
      adam, p, {{0.900000002f, -1.9f}, {0.80678204f, -1.8733663f}, {0.827417743f, -1.91909948f}});
}

TEST(Reference, AdamCoupledWeightDecay) {
  Variable p = fresh();
  Adam adam(nn::shapes_of({p}), {.lr = 0.1f, .weight_decay = 0.1f});
  expect_sequence(
      adam, p, {{0.900000002f, -1.9f}, {0.805009766f, -1.85374726f}, {0.812098261f, -1.88636312f}});
}

TEST(Reference, AdamWDecoupledWeightDecay) {
  // step 1: p *= 1 - 0.1 * 0.1 = 0.99, then the Adam step: [0.89, -1.88].
  Variable p = fresh();
  AdamW adamw(nn::shapes_of({p}), {.lr = 0.1f, .weight_decay = 0.1f});
  expect_sequence(
      adamw, p, {{0.890000002f, -1.88f}, {0.78788204f, -1.8345663f}, {0.800638922f, -1.86195381f}});
}

TEST(Reference, AdagradLrDecayAndInitialAccumulator) {
  // step 1: sum = 0.1 + g^2 = [0.35, 1.1]; p -= 0.1 g / sqrt(sum).
  // step 2: clr = 0.1 / (1 + 0.5).
  Variable p = fresh();
  Adagrad adagrad(nn::shapes_of({p}),
                  {.lr = 0.1f, .lr_decay = 0.5f, .initial_accumulator_value = 0.1f});
  expect_sequence(
      adagrad, p,
      {{0.915484575f, -1.90465374f}, {0.88953461f, -1.93334251f}, {0.931604926f, -1.97657628f}});
}

TEST(Reference, AdagradWeightDecay) {
  Variable p = fresh();
  Adagrad adagrad(nn::shapes_of({p}), {.lr = 0.1f, .weight_decay = 0.1f});
  expect_sequence(adagrad, p,
                  {{0.9f, -1.9f}, {0.850698743f, -1.9250122f}, {0.930554395f, -2.00748578f}});
}

}  // namespace
}  // namespace dtrain::optim
