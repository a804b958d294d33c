// End to end: a 2-layer MLP (nn) learns XOR with Adam and with SGD (optim).
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "autograd/functions.h"
#include "core/rng.h"
#include "nn/layers.h"
#include "nn/optimizer.h"
#include "optim/adam.h"
#include "optim/sgd.h"

namespace dtrain {
namespace {

struct XorResult {
  int64_t steps = 0;  // steps until every sample was classified right
  float final_loss = 0;
  StateDict final_state;  // a copy of the model's weights at the end
};

XorResult train_xor(std::unique_ptr<nn::Optimizer> (*make)(std::vector<Variable>), uint64_t seed,
                    int64_t max_steps) {
  Rng rng(seed);
  nn::Sequential model;
  model.add("fc1", std::make_unique<nn::Linear>(2, 8, rng));
  model.add("act", std::make_unique<nn::Tanh>());
  model.add("fc2", std::make_unique<nn::Linear>(8, 2, rng));
  auto optimizer = make(model.parameters());

  const Variable inputs(Tensor::from_vector({0, 0, 0, 1, 1, 0, 1, 1}, {4, 2}));
  const std::vector<int64_t> targets = {0, 1, 1, 0};
  XorResult result;
  for (int64_t step = 1; step <= max_steps; ++step) {
    optimizer->zero_grad();
    const Variable logits = model.forward(inputs);
    const Variable loss = cross_entropy(logits, targets);
    loss.backward();
    optimizer->step();
    result.final_loss = loss.item();

    int correct = 0;
    for (int64_t i = 0; i < 4; ++i) {
      const int64_t predicted = logits.data().at({i, 1}) > logits.data().at({i, 0}) ? 1 : 0;
      correct += predicted == targets[static_cast<size_t>(i)] ? 1 : 0;
    }
    if (correct == 4 && result.final_loss < 0.1f) {
      result.steps = step;
      break;
    }
  }
  result.final_state = model.state_dict().clone();
  return result;
}

TEST(Training, MlpLearnsXorWithAdam) {
  const XorResult result = train_xor(
      [](std::vector<Variable> params) -> std::unique_ptr<nn::Optimizer> {
        return nn::Optimizer::make<optim::Adam>(std::move(params), optim::AdamOptions{.lr = 0.05f});
      },
      /*seed=*/1, /*max_steps=*/300);
  EXPECT_GT(result.steps, 0) << "not learned within 300 steps; final loss " << result.final_loss;
}

TEST(Training, MlpLearnsXorWithSgdMomentum) {
  const XorResult result = train_xor(
      [](std::vector<Variable> params) -> std::unique_ptr<nn::Optimizer> {
        return nn::Optimizer::make<optim::Sgd>(std::move(params),
                                               optim::SgdOptions{.lr = 0.2f, .momentum = 0.9f});
      },
      /*seed=*/1, /*max_steps=*/500);
  EXPECT_GT(result.steps, 0) << "not learned within 500 steps; final loss " << result.final_loss;
}

TEST(Training, TheSameSeedTrainsBitIdentically) {
  auto make = [](std::vector<Variable> params) -> std::unique_ptr<nn::Optimizer> {
    return nn::Optimizer::make<optim::Adam>(std::move(params), optim::AdamOptions{.lr = 0.05f});
  };
  const XorResult a = train_xor(make, 3, 20);
  const XorResult b = train_xor(make, 3, 20);
  EXPECT_EQ(a.final_loss, b.final_loss);
  ASSERT_EQ(a.final_state.size(), 4u);
  for (const auto& [name, tensor] : a.final_state) {
    EXPECT_EQ(std::memcmp(tensor.data(), b.final_state.at(name).data(),
                          sizeof(float) * static_cast<size_t>(tensor.numel())),
              0)
        << name;
  }
}

}  // namespace
}  // namespace dtrain
