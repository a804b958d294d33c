// DenseShard's parallel apply (ps/shard_store.h): bit for bit the serial
// result, values and exported state, for every update rule, and a state
// moves between shards of any thread count.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/rng.h"
#include "optim/update_rule.h"
#include "ps/shard_store.h"

namespace dtrain::ps {
namespace {

// Not a multiple of 64: the last chunk is partial.
constexpr int64_t kNumel = 3 * kApplyChunkFloats + 37;

std::vector<float> normal_floats(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = rng.normal();
  return v;
}

std::vector<optim::OptimizerConfig> configs() {
  std::vector<optim::OptimizerConfig> out;
  optim::OptimizerConfig c;
  out.push_back(c);  // plain sgd
  c.momentum = 0.9f;
  c.nesterov = true;
  c.weight_decay = 1e-4f;
  out.push_back(c);
  for (const char* type : {"adam", "adamw", "adagrad"}) {
    optim::OptimizerConfig o;
    o.type = type;
    out.push_back(o);
  }
  return out;
}

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

void expect_same_state(const StateDict& a, const StateDict& b, const std::string& what) {
  EXPECT_EQ(a.metadata(), b.metadata()) << what;
  ASSERT_EQ(a.size(), b.size()) << what;
  for (const auto& [name, tensor] : a) {
    ASSERT_TRUE(b.contains(name)) << what << ": " << name;
    EXPECT_EQ(tensor.shape(), b.at(name).shape()) << what << ": " << name;
    EXPECT_TRUE(same_bits(tensor.span(), b.at(name).span())) << what << ": " << name;
  }
}

// Three updates with different gradients and lrs (drawn once: the draws
// cost more than the updates).
void train(DenseShard& shard, uint64_t seed) {
  static const std::vector<float> noise = normal_floats(kNumel + 3, 7);
  for (int step = 0; step < 3; ++step) {
    const size_t shift = (seed + static_cast<uint64_t>(step)) % 4;
    shard.apply(std::span<const float>(noise).subspan(shift, kNumel), 0.01f * (step + 1));
  }
}

TEST(PsParallelApply, EqualsTheSerialUpdateBitForBit) {
  const std::vector<float> initial = normal_floats(kNumel, 1);
  for (const optim::OptimizerConfig& config : configs()) {
    DenseShard serial(initial, config, 1);
    DenseShard parallel(initial, config, 4);
    ASSERT_EQ(serial.chunks(), 1u);
    ASSERT_EQ(parallel.chunks(), 3u);
    train(serial, 10);
    train(parallel, 10);
    EXPECT_TRUE(same_bits(serial.values(), parallel.values())) << config.type;
    StateDict a, b;
    serial.export_state(a);
    parallel.export_state(b);
    expect_same_state(a, b, config.type);
  }
}

// The ground truth under the chunks and pieces: one rule over the whole
// range, fed the same gradients, gives the same values and state bits.
TEST(PsParallelApply, PiecesEqualOneRuleOverTheWholeRange) {
  const std::vector<float> initial = normal_floats(kNumel, 5);
  const std::vector<float> noise = normal_floats(kNumel + 3, 7);
  for (const optim::OptimizerConfig& config : configs()) {
    DenseShard shard(initial, config, 2);
    ASSERT_GT(shard.pieces(), shard.chunks());
    Tensor values = Tensor::from_span(initial, {kNumel});
    const auto rule = optim::make_update_rule(config, {values.shape()});
    for (int step = 0; step < 3; ++step) {
      const auto grad = std::span<const float>(noise).subspan(static_cast<size_t>(step), kNumel);
      const float lr = 0.01f * static_cast<float>(step + 1);
      shard.apply(grad, lr);
      rule->set_lr(lr);
      rule->update(0, values, Tensor::from_span(grad, {kNumel}));
    }
    EXPECT_TRUE(same_bits(shard.values(), values.span())) << config.type;
    StateDict exported, expected;
    shard.export_state(exported);
    expected.insert("dense.values", values);
    expected.merge(rule->state_dict().clone(), "dense.optimizer.");
    expect_same_state(exported, expected, config.type);
  }
}

TEST(PsParallelApply, StateMovesBetweenThreadCounts) {
  const std::vector<float> initial = normal_floats(kNumel, 2);
  optim::OptimizerConfig config;
  config.type = "adam";
  DenseShard serial(initial, config, 1);
  train(serial, 20);
  StateDict state;
  serial.export_state(state);
  DenseShard parallel(normal_floats(kNumel, 3), config, 3);
  parallel.import_state(state);
  train(serial, 30);
  train(parallel, 30);
  EXPECT_TRUE(same_bits(serial.values(), parallel.values()));
  StateDict back;
  parallel.export_state(back);
  DenseShard serial_again(initial, config, 1);
  serial_again.import_state(back);
  StateDict a, b;
  serial.export_state(a);
  serial_again.export_state(b);
  expect_same_state(a, b, "parallel -> serial");
}

TEST(PsParallelApply, SmallRangesStayInOneChunk) {
  const std::vector<float> initial = normal_floats(2 * kApplyChunkFloats - 1, 4);
  EXPECT_EQ(DenseShard(initial, {}, 8).chunks(), 1u);
  EXPECT_EQ(DenseShard({}, {}, 8).chunks(), 1u);
}

}  // namespace
}  // namespace dtrain::ps
