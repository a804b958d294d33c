// ServerState's checkpoint form: a round trip through a real file, and the
// refusal of a checkpoint that does not hold a server state of the model's size.
#include "fl/server_state.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "fl/server_optimizer.h"
#include "io/checkpoint.h"
#include "testing/expect_error.h"
#include "testing/fault_fs.h"

namespace dtrain::fl {
namespace {

using dtrain::testing::expect_usage_error;

std::vector<float> values(const StateDict& dict, const std::string& name) {
  const auto span = dict.at(name).span();
  return {span.begin(), span.end()};
}

ServerOptimizerConfig yogi() {
  ServerOptimizerConfig c;
  c.type = "yogi";
  c.lr = 0.1;
  c.tau = 1e-3 / 3.0;
  return c;
}

ServerState sample_state() {
  ServerOptimizer opt(yogi(), 3);
  std::vector<float> w = {0.5f, -0.25f, 2.0f};
  opt.apply(w, std::vector<float>{0.1f, 0.2f, -0.3f});
  ServerState state;
  state.round = 7;
  state.weights = w;
  state.optimizer = opt.state_dict();
  state.rejected_updates = 4;
  return state;
}

TEST(ServerState, CheckpointRoundTripsThroughAFile) {
  const ServerState state = sample_state();
  dtrain::testing::TempDir tmp;
  const std::string path = tmp.file("server.dtc");
  io::write_checkpoint(to_checkpoint(state), path);
  const io::Checkpoint ckpt = io::read_checkpoint(path);
  EXPECT_EQ(ckpt.step, 7);
  const ServerState back = from_checkpoint(ckpt, 3);
  EXPECT_EQ(back.round, 7);
  EXPECT_EQ(back.rejected_updates, 4);
  EXPECT_EQ(std::memcmp(back.weights.data(), state.weights.data(), 3 * sizeof(float)), 0);
  EXPECT_EQ(back.optimizer.metadata(), state.optimizer.metadata());
  ASSERT_EQ(back.optimizer.size(), state.optimizer.size());
  for (const auto& [name, tensor] : state.optimizer) {
    EXPECT_EQ(values(back.optimizer, name), values(state.optimizer, name)) << name;
  }
  // And the optimizer it holds loads.
  ServerOptimizer opt(yogi(), 3);
  opt.load_state_dict(back.optimizer);
  EXPECT_EQ(opt.steps(), 1);
}

TEST(ServerState, PlainFedAvgStateRoundTrips) {
  ServerState state;
  state.round = 2;
  state.weights = {1.0f, -1.0f};
  state.optimizer = ServerOptimizer(ServerOptimizerConfig{}, 2).state_dict();
  dtrain::testing::TempDir tmp;
  io::write_checkpoint(to_checkpoint(state), tmp.file("s.dtc"));
  const ServerState back = from_checkpoint(io::read_checkpoint(tmp.file("s.dtc")), 2);
  EXPECT_EQ(back.round, 2);
  EXPECT_EQ(back.weights, state.weights);
  EXPECT_EQ(back.rejected_updates, 0);
  EXPECT_TRUE(back.optimizer.empty());
  EXPECT_EQ(back.optimizer.metadata(), state.optimizer.metadata());
  ServerOptimizer(ServerOptimizerConfig{}, 2).load_state_dict(back.optimizer);
}

TEST(ServerState, RefusesACheckpointWithoutGlobalOrOfAnotherSize) {
  const io::Checkpoint good = to_checkpoint(sample_state());
  expect_usage_error([&] { from_checkpoint(good, 4); },
                     "server state (round 7): 'global' has 3 values, the model has 4");

  io::Checkpoint no_server;
  no_server.step = 7;
  no_server.add_section("model", StateDict{});
  expect_usage_error([&] { from_checkpoint(no_server, 3); },
                     "server state (round 7): no 'server' section (sections: model)");

  io::Checkpoint no_global = good;
  no_global.sections.clear();
  StateDict without;
  for (const auto& [name, tensor] : good.section("server")) {
    if (name != "global") without.insert(name, tensor);
  }
  without.metadata() = good.section("server").metadata();
  no_global.add_section("server", without);
  expect_usage_error([&] { from_checkpoint(no_global, 3); },
                     "server state (round 7): no 'global' tensor in section 'server'");

  io::Checkpoint no_rejected = good;
  no_rejected.metadata.erase("rejected_updates");
  expect_usage_error([&] { from_checkpoint(no_rejected, 3); },
                     "server state (round 7): missing metadata 'rejected_updates'");

  io::Checkpoint short_m = good;
  short_m.sections.clear();
  StateDict server;
  for (const auto& [name, tensor] : good.section("server")) {
    server.insert(name, name == "server_optimizer.m" ? Tensor::zeros({2}) : tensor);
  }
  server.metadata() = good.section("server").metadata();
  short_m.add_section("server", server);
  expect_usage_error([&] { from_checkpoint(short_m, 3); },
                     "server state (round 7): 'server_optimizer.m' has 2 values, the model has 3");
}

}  // namespace
}  // namespace dtrain::fl
