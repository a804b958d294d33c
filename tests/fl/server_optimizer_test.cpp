// ServerOptimizer: each server step against a hand computation over three
// rounds (Reddi et al. 2021, Algorithm 2; Hsu et al. 2019), the exact
// continuation of a restored state, and its refusals.
#include "fl/server_optimizer.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "fl/update.h"
#include "io/checkpoint.h"
#include "testing/expect_error.h"

namespace dtrain::fl {
namespace {

using dtrain::testing::expect_usage_error;

// The three rounds' mean deltas every hand computation below uses, from w = (0, 1).
const std::vector<std::vector<float>> kDeltas = {{1.0f, -2.0f}, {3.0f, 0.5f}, {-1.0f, 1.0f}};

std::vector<float> values(const StateDict& dict, const std::string& name) {
  const auto span = dict.at(name).span();
  return {span.begin(), span.end()};
}

struct Expected {
  std::vector<double> m, v, w;
};

// Runs the three rounds and checks m, v and w after each against `expected`.
void check_rounds(const ServerOptimizerConfig& config, const std::vector<Expected>& expected) {
  ServerOptimizer opt(config, 2);
  std::vector<float> w = {0.0f, 1.0f};
  for (size_t r = 0; r < kDeltas.size(); ++r) {
    SCOPED_TRACE("round " + std::to_string(r + 1));
    opt.apply(w, kDeltas[r]);
    EXPECT_EQ(opt.steps(), static_cast<int64_t>(r + 1));
    const StateDict state = opt.state_dict();
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_FLOAT_EQ(w[i], static_cast<float>(expected[r].w[i])) << "w[" << i << "]";
      if (!expected[r].m.empty()) {
        EXPECT_FLOAT_EQ(values(state, "m")[i], static_cast<float>(expected[r].m[i]));
      }
      if (!expected[r].v.empty()) {
        EXPECT_FLOAT_EQ(values(state, "v")[i], static_cast<float>(expected[r].v[i]));
      }
    }
  }
}

ServerOptimizerConfig adaptive(const std::string& type) {
  ServerOptimizerConfig c;
  c.type = type;
  c.lr = 1.0;
  c.beta1 = 0.5;
  c.beta2 = 0.75;
  c.tau = 0.5;  // v starts at tau^2 = 0.25
  return c;
}

TEST(ServerOptimizer, NoneWithLrOneAddsTheMeanDelta) {
  ServerOptimizer opt(ServerOptimizerConfig{}, 3);
  std::vector<float> w = {0.25f, -1.0f, 7.0f};
  const std::vector<float> delta = {0.5f, 0.125f, -3.0f};
  opt.apply(w, delta);
  EXPECT_EQ(w, (std::vector<float>{0.75f, -0.875f, 4.0f}));
  EXPECT_TRUE(opt.state_dict().empty());
}

TEST(ServerOptimizer, FedAvgRoundIsTheWeightedMeanOfTheClientsModels) {
  // Two clients start from w = (1, 2) and end at (3, 2) with 1 sample and
  // (1, 6) with 3: FedAvg's next model is (1*(3, 2) + 3*(1, 6)) / 4 = (1.5, 5).
  const std::vector<float> w0 = {1.0f, 2.0f};
  RoundAggregator agg(0, 2, 2, {0, 1});
  ClientUpdate a;
  a.client = 0;
  a.samples = 1;
  a.delta = {2.0f, 0.0f};
  ClientUpdate b;
  b.client = 1;
  b.samples = 3;
  b.delta = {0.0f, 4.0f};
  ASSERT_FALSE(agg.add(b));
  ASSERT_FALSE(agg.add(a));
  ServerOptimizer opt(ServerOptimizerConfig{}, 2);
  std::vector<float> w = w0;
  opt.apply(w, agg.mean_delta());
  EXPECT_EQ(w, (std::vector<float>{1.5f, 5.0f}));
}

TEST(ServerOptimizer, NoneScalesByLr) {
  ServerOptimizerConfig c;
  c.lr = 0.5;
  check_rounds(c, {{{}, {}, {0.5, 0.0}}, {{}, {}, {2.0, 0.25}}, {{}, {}, {1.5, 0.75}}});
}

TEST(ServerOptimizer, MomentumMatchesHandComputation) {
  ServerOptimizerConfig c;
  c.type = "momentum";
  c.momentum = 0.5;
  c.lr = 0.5;
  // v = 0.5 v + delta; w += 0.5 v
  // r1: v = (1, -2)                          w = (0.5, 0)
  // r2: v = (0.5 + 3, -1 + 0.5) = (3.5, -0.5) w = (2.25, -0.25)
  // r3: v = (1.75 - 1, -0.25 + 1) = (0.75, 0.75) w = (2.625, 0.125)
  check_rounds(c, {{{1.0, -2.0}, {}, {0.5, 0.0}},
                   {{3.5, -0.5}, {}, {2.25, -0.25}},
                   {{0.75, 0.75}, {}, {2.625, 0.125}}});
}

// The adaptive ones with beta1 0.5, beta2 0.75, tau 0.5, lr 1:
// m = 0.5 m + 0.5 delta: (0.5, -1), (1.75, -0.25), (0.375, 0.375) for all three.
TEST(ServerOptimizer, AdamMatchesHandComputation) {
  // v = 0.75 v + 0.25 delta^2
  // r1: v = 0.1875 + 0.25 (1, 4) = (0.4375, 1.1875)
  //     w = (0 + 0.5 / (sqrt(0.4375) + 0.5), 1 - 1 / (sqrt(1.1875) + 0.5))
  // r2: v = (0.328125 + 2.25, 0.890625 + 0.0625) = (2.578125, 0.953125)
  // r3: v = (1.93359375 + 0.25, 0.71484375 + 0.25) = (2.18359375, 0.96484375)
  check_rounds(
      adaptive("adam"),
      {{{0.5, -1.0}, {0.4375, 1.1875}, {0.43050087404306037, 0.3709602817224871}},
       {{1.75, -0.25}, {2.578125, 0.953125}, {1.2615965525753543, 0.20161585168219132}},
       {{0.375, 0.375}, {2.18359375, 0.96484375}, {1.4512108657277638, 0.45460711874782117}}});
}

TEST(ServerOptimizer, YogiMatchesHandComputation) {
  // v = v - 0.25 delta^2 sign(v - delta^2)
  // r1: v < delta^2 = (1, 4): v = 0.25 + 0.25 (1, 4) = (0.5, 1.25)
  //     w = (0.5 / (sqrt(0.5) + 0.5), 1 - 1 / (sqrt(1.25) + 0.5))
  // r2: delta^2 = (9, 0.25): v = (0.5 + 2.25, 1.25 - 0.0625) = (2.75, 1.1875)
  // r3: delta^2 = (1, 1), v above it: v = (2.75 - 0.25, 1.1875 - 0.25) = (2.5, 0.9375)
  check_rounds(adaptive("yogi"),
               {{{0.5, -1.0}, {0.5, 1.25}, {0.4142135623730951, 0.3819660112501052}},
                {{1.75, -0.25}, {2.75, 1.1875}, {1.225032238997485, 0.22470608168072698}},
                {{0.375, 0.375}, {2.5, 0.9375}, {1.4052220440115166, 0.480112901618102}}});
}

TEST(ServerOptimizer, AdagradMatchesHandComputation) {
  // v = v + delta^2: (1.25, 4.25), (10.25, 4.5), (11.25, 5.5)
  // r1: w = (0.5 / (sqrt(1.25) + 0.5), 1 - 1 / (sqrt(4.25) + 0.5))
  check_rounds(adaptive("adagrad"),
               {{{0.5, -1.0}, {1.25, 4.25}, {0.3090169943749474, 0.6096117967977924}},
                {{1.75, -0.25}, {10.25, 4.5}, {0.7817903651503217, 0.5142400118825193}},
                {{0.375, 0.375}, {11.25, 5.5}, {0.8790892958179246, 0.6460405747333561}}});
}

TEST(ServerOptimizer, AdaptiveStateStartsAtTauSquared) {
  ServerOptimizerConfig c = adaptive("adam");
  c.tau = 1e-3;
  const StateDict state = ServerOptimizer(c, 3).state_dict();
  EXPECT_EQ(values(state, "m"), std::vector<float>(3, 0.0f));
  EXPECT_EQ(values(state, "v"), std::vector<float>(3, static_cast<float>(1e-6)));
}

// Flower's FedAdam defaults and awkward values, so the metadata's text must be exact.
ServerOptimizerConfig awkward(const std::string& type) {
  ServerOptimizerConfig c;
  c.type = type;
  c.lr = 0.1;
  c.momentum = 0.9;
  c.beta1 = 0.9;
  c.beta2 = 0.99;
  c.tau = 1e-3 / 3.0;
  return c;
}

std::vector<float> random_vector(Rng& rng, size_t n) {
  std::vector<float> out(n);
  for (auto& x : out) x = rng.normal();
  return out;
}

TEST(ServerOptimizer, RestoredStateContinuesBitForBit) {
  for (const std::string type : {"none", "momentum", "adam", "yogi", "adagrad"}) {
    SCOPED_TRACE(type);
    constexpr size_t kSize = 101;
    Rng rng(3);
    std::vector<std::vector<float>> deltas;
    for (int r = 0; r < 6; ++r) deltas.push_back(random_vector(rng, kSize));
    const std::vector<float> w0 = random_vector(rng, kSize);

    ServerOptimizer straight(awkward(type), kSize);
    std::vector<float> w_straight = w0;
    for (const auto& d : deltas) straight.apply(w_straight, d);

    ServerOptimizer first(awkward(type), kSize);
    std::vector<float> w = w0;
    for (int r = 0; r < 3; ++r) first.apply(w, deltas[r]);
    // Through a checkpoint's bytes, as a resumed server would read it.
    io::Checkpoint ckpt;
    ckpt.add_section("opt", first.state_dict());
    const io::Checkpoint back = io::decode_checkpoint(io::encode_checkpoint(ckpt), "memory");

    // Built with other hyperparameters: the state's own replace them.
    ServerOptimizerConfig other = awkward(type);
    other.lr = 0.5;
    other.beta2 = 0.9;
    ServerOptimizer resumed(other, kSize);
    resumed.load_state_dict(back.section("opt"));
    EXPECT_EQ(resumed.steps(), 3);
    EXPECT_EQ(resumed.config().lr, 0.1);
    EXPECT_EQ(resumed.config().beta2, 0.99);
    EXPECT_EQ(resumed.config().tau, 1e-3 / 3.0);
    for (int r = 3; r < 6; ++r) resumed.apply(w, deltas[r]);
    EXPECT_EQ(resumed.steps(), 6);
    EXPECT_EQ(std::memcmp(w.data(), w_straight.data(), kSize * sizeof(float)), 0);
  }
}

TEST(ServerOptimizer, RefusesAStateOfAnotherTypeOrSize) {
  ServerOptimizer adam(awkward("adam"), 4);
  const StateDict adam_state = adam.state_dict();

  ServerOptimizer yogi(awkward("yogi"), 4);
  expect_usage_error([&] { yogi.load_state_dict(adam_state); },
                     "server optimizer 'yogi': load_state_dict: the state is of a 'adam' server "
                     "optimizer");
  ServerOptimizer larger(awkward("adam"), 5);
  expect_usage_error([&] { larger.load_state_dict(adam_state); },
                     "server optimizer 'adam': load_state_dict: the state is for 4 values, the "
                     "model has 5");

  StateDict no_v;
  no_v.metadata() = adam_state.metadata();
  no_v.insert("m", adam_state.at("m"));
  expect_usage_error([&] { adam.load_state_dict(no_v); },
                     "server optimizer 'adam': load_state_dict: missing tensor 'v'");

  StateDict short_v = no_v;
  short_v.insert("v", Tensor::zeros({3}));
  expect_usage_error([&] { adam.load_state_dict(short_v); },
                     "server optimizer 'adam': load_state_dict: tensor 'v' has 3 values in 1 "
                     "dimensions, expected 4 in 1");

  StateDict extra = adam_state;
  extra.insert("w", Tensor::zeros({4}));
  expect_usage_error([&] { adam.load_state_dict(extra); },
                     "server optimizer 'adam': load_state_dict: unexpected tensor 'w'");

  StateDict bad_lr = adam_state;
  bad_lr.metadata()["lr"] = "0.1x";
  expect_usage_error([&] { adam.load_state_dict(bad_lr); },
                     "server optimizer 'adam': load_state_dict: metadata 'lr' is '0.1x', expected "
                     "a finite number");

  StateDict no_steps = adam_state;
  no_steps.metadata().erase("steps");
  expect_usage_error([&] { adam.load_state_dict(no_steps); },
                     "server optimizer 'adam': load_state_dict: missing metadata 'steps'");

  // A refused state changes nothing.
  std::vector<float> w(4, 1.0f);
  adam.apply(w, std::vector<float>(4, 0.5f));
  EXPECT_EQ(adam.steps(), 1);
}

TEST(ServerOptimizer, RefusesBadConfigsAndSpans) {
  ServerOptimizerConfig c;
  c.type = "sgd";
  testing::expect_error<ConfigError>(
      [&] { ServerOptimizer(c, 2); },
      "fl.server_optimizer: unknown type 'sgd' (none, momentum, adam, yogi, adagrad)");
  c = adaptive("adam");
  c.tau = 0.0;
  testing::expect_error<ConfigError>([&] { ServerOptimizer(c, 2); },
                                     "fl.server_tau: 0 is not a positive number");
  c = adaptive("adam");
  c.beta2 = 1.5;
  testing::expect_error<ConfigError>([&] { ServerOptimizer(c, 2); },
                                     "fl.server_beta2: 1.5 is not in [0, 1]");

  ServerOptimizer opt(adaptive("adam"), 2);
  std::vector<float> w(2, 0.0f);
  expect_usage_error([&] { opt.apply(w, std::vector<float>(3, 0.0f)); },
                     "server optimizer 'adam': apply: weights have 2 values and delta 3, the "
                     "model 2");
  EXPECT_EQ(opt.steps(), 0);
}

}  // namespace
}  // namespace dtrain::fl
