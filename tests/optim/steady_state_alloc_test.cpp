// A steady-state training step (forward, loss, backward, optimizer step) of
// MNIST's MLP and LeNet-5 takes no fresh storage from the system: after a few
// warm-up steps every tensor it allocates is served from the storage pool's
// cache (tensor/storage_pool.h). Run with one and with two intra-op threads,
// where blocks freed on one thread serve allocations on another.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "autograd/functions.h"
#include "core/rng.h"
#include "nn/layers.h"
#include "nn/optimizer.h"
#include "optim/adam.h"
#include "optim/sgd.h"
#include "tensor/intra_op.h"
#include "tensor/storage_pool.h"

namespace dtrain {
namespace {

std::unique_ptr<nn::Sequential> mlp(Rng& rng) {
  auto model = std::make_unique<nn::Sequential>();
  model->add("flatten", std::make_unique<nn::Flatten>());
  model->add("fc1", std::make_unique<nn::Linear>(784, 256, rng));
  model->add("relu1", std::make_unique<nn::ReLU>());
  model->add("fc2", std::make_unique<nn::Linear>(256, 256, rng));
  model->add("relu2", std::make_unique<nn::ReLU>());
  model->add("fc3", std::make_unique<nn::Linear>(256, 10, rng));
  return model;
}

std::unique_ptr<nn::Sequential> lenet5(Rng& rng) {
  auto model = std::make_unique<nn::Sequential>();
  model->add("conv1", std::make_unique<nn::Conv2d>(1, 6, 5, rng, 1, 2));
  model->add("relu1", std::make_unique<nn::ReLU>());
  model->add("pool1", std::make_unique<nn::MaxPool2d>(2));
  model->add("conv2", std::make_unique<nn::Conv2d>(6, 16, 5, rng));
  model->add("relu2", std::make_unique<nn::ReLU>());
  model->add("pool2", std::make_unique<nn::MaxPool2d>(2));
  model->add("flatten", std::make_unique<nn::Flatten>());
  model->add("fc1", std::make_unique<nn::Linear>(400, 120, rng));
  model->add("relu3", std::make_unique<nn::ReLU>());
  model->add("fc2", std::make_unique<nn::Linear>(120, 84, rng));
  model->add("relu4", std::make_unique<nn::ReLU>());
  model->add("fc3", std::make_unique<nn::Linear>(84, 10, rng));
  return model;
}

enum class Rule { kSgd, kAdam };

struct StepCounts {
  int64_t fresh = 0;   // fresh allocations over the measured steps
  int64_t cached = 0;  // allocations served from the cache over them
};

// Trains `model` for `warmup` steps, then counts the pool's allocations over
// `measured` more, each on a new random batch of `batch` images.
StepCounts count_steady_state(nn::Sequential& model, Rule rule, int64_t batch, int warmup,
                              int measured) {
  std::unique_ptr<nn::Optimizer> optimizer =
      rule == Rule::kSgd
          ? nn::Optimizer::make<optim::Sgd>(
                model.parameters(),
                optim::SgdOptions{
                    .lr = 0.05f, .momentum = 0.9f, .nesterov = true, .weight_decay = 5e-4f})
          : nn::Optimizer::make<optim::Adam>(model.parameters(),
                                             optim::AdamOptions{.weight_decay = 1e-4f});
  Rng rng(11);
  StepCounts counts;
  StoragePoolStats start;
  for (int step = 0; step < warmup + measured; ++step) {
    if (step == warmup) start = storage_pool().stats();
    Tensor images = Tensor::empty({batch, 1, 28, 28});
    for (float& v : images.span()) v = rng.uniform();
    std::vector<int64_t> targets(static_cast<size_t>(batch));
    for (auto& t : targets) t = static_cast<int64_t>(rng.uniform() * 10.0f) % 10;

    optimizer->zero_grad();
    const Variable loss = cross_entropy(model.forward(Variable(images)), targets);
    loss.backward();
    optimizer->step();
    EXPECT_TRUE(std::isfinite(loss.item()));
  }
  const StoragePoolStats end = storage_pool().stats();
  counts.fresh = end.fresh_allocations - start.fresh_allocations;
  counts.cached = end.cached_allocations - start.cached_allocations;
  return counts;
}

class SteadyStateAlloc : public testing::TestWithParam<int> {
 protected:
  void SetUp() override { tensor::set_intra_op_threads(GetParam()); }
  void TearDown() override { tensor::set_intra_op_threads(1); }
};

// With SGD (momentum, Nesterov, weight decay) and then Adam on `model`: no
// fresh allocation after warm-up, and each step does allocate (activations,
// gradients), all from the cache.
void expect_steady_state_from_cache(nn::Sequential& model, int64_t batch) {
  for (Rule rule : {Rule::kSgd, Rule::kAdam}) {
    const StepCounts counts = count_steady_state(model, rule, batch, 3, 4);
    EXPECT_EQ(counts.fresh, 0) << (rule == Rule::kSgd ? "sgd" : "adam");
    EXPECT_GE(counts.cached, 4 * 10) << (rule == Rule::kSgd ? "sgd" : "adam");
  }
}

TEST_P(SteadyStateAlloc, MlpStepAllocatesNothingFresh) {
  Rng rng(1);
  expect_steady_state_from_cache(*mlp(rng), 64);
}

TEST_P(SteadyStateAlloc, LeNet5StepAllocatesNothingFresh) {
  Rng rng(2);
  expect_steady_state_from_cache(*lenet5(rng), 32);
}

TEST_P(SteadyStateAlloc, WithoutTheCacheEveryStepAllocatesFresh) {
  // The counters see the allocations the two tests above expect to be
  // cached: with a cap of zero every step's tensors come fresh.
  Rng rng(3);
  auto model = mlp(rng);
  const size_t cap = storage_pool().max_cached_bytes();
  storage_pool().set_max_cached_bytes(0);
  const StepCounts counts = count_steady_state(*model, Rule::kSgd, 64, 3, 4);
  storage_pool().set_max_cached_bytes(cap);
  EXPECT_GE(counts.fresh, 4 * 10);
  EXPECT_EQ(counts.cached, 0);
}

INSTANTIATE_TEST_SUITE_P(Threads, SteadyStateAlloc, testing::Values(1, 2));

}  // namespace
}  // namespace dtrain
