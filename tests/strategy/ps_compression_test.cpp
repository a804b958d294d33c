// PsStrategy with compression (strategy/compression.h) against real
// ps::Servers on loopback (2 servers, 2 workers on threads): every
// compressor trains (the loss falls), method none is the dense job bit for
// bit, local SGD's round equals the model average of the workers' own
// plain-SGD steps, the compressor state round-trips through the optimizer
// state, and local SGD's limits are refused with a ConfigError.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "core/deadline.h"
#include "core/error.h"
#include "nn/embedding.h"
#include "ps/server.h"
#include "strategy/local_strategy.h"
#include "strategy/ps_strategy.h"
#include "strategy_test_util.h"

namespace dtrain::strategy {
namespace {

using namespace std::chrono_literals;

constexpr float kLr = 0.1f;
constexpr int kServers = 2;
constexpr int kWorkers = 2;

// S servers with SGD (plain unless `momentum`) serving on threads until
// every worker is done.
class Servers {
 public:
  explicit Servers(ps::Consistency consistency = ps::Consistency::kSync, float momentum = 0.0f) {
    for (int s = 0; s < kServers; ++s) {
      ps::ServerOptions o;
      o.server = s;
      o.num_servers = kServers;
      o.num_workers = kWorkers;
      o.consistency = consistency;
      o.optimizer.type = "sgd";
      o.optimizer.lr = kLr;
      o.optimizer.momentum = momentum;
      o.join_timeout = 120s;
      servers_.push_back(std::make_unique<ps::Server>(o, auth(), Logger::null()));
      endpoints_.push_back(servers_.back()->endpoint());
    }
    for (auto& server : servers_) {
      threads_.emplace_back(
          [&server = *server](std::stop_token stop) { server.run(stop, Deadline::after(120s)); });
    }
  }
  static comm::JobAuth auth() { return comm::JobAuth("ps-compression-test", ""); }
  ps::ClientOptions client(int worker) const {
    ps::ClientOptions c;
    c.worker = worker;
    c.num_workers = kWorkers;
    c.server_endpoints = endpoints_;
    c.timeout = 60s;
    c.heartbeat_interval = 200ms;
    return c;
  }

 private:
  std::vector<std::unique_ptr<ps::Server>> servers_;
  std::vector<std::string> endpoints_;
  std::vector<std::jthread> threads_;  // last: stopped and joined before the servers go
};

// Both workers, built on threads (each init waits for nothing, but the
// first pull of a sync job does not either: they may as well start together).
std::vector<std::unique_ptr<PsStrategy>> start_workers(const Servers& servers,
                                                       const PsOptions& options,
                                                       uint64_t model_seed, Logger& logger) {
  std::vector<std::unique_ptr<PsStrategy>> workers(kWorkers);
  std::vector<std::jthread> starting;
  for (int w = 0; w < kWorkers; ++w) {
    starting.emplace_back([&, w] {
      workers[size_t(w)] = std::make_unique<PsStrategy>(
          test::make_mlp(model_seed), servers.client(w), Servers::auth(), logger, options);
    });
  }
  starting.clear();
  return workers;
}

// One step of every worker on its half of `b`; the workers' summed loss.
double step_all(std::vector<std::unique_ptr<PsStrategy>>& workers, const test::Batch& b) {
  const int64_t rows = b.x.size(0);
  std::vector<StepStats> mine(workers.size());
  {
    std::vector<std::jthread> stepping;
    for (size_t w = 0; w < workers.size(); ++w) {
      stepping.emplace_back([&, w] {
        const int64_t lo = rows * int64_t(w) / kWorkers, hi = rows * int64_t(w + 1) / kWorkers;
        const std::vector<int64_t> y(b.y.begin() + lo, b.y.begin() + hi);
        mine[w] = workers[w]->train_step(b.x.narrow(lo, hi - lo), y);
      });
    }
  }
  StepStats sum;
  for (const StepStats& m : mine) sum += m;
  return sum.loss_sum / static_cast<double>(sum.samples);
}

void finish_all(std::vector<std::unique_ptr<PsStrategy>>& workers) {
  for (auto& w : workers) w->finish();
}

// Batches a small MLP can learn: the label is the arg-max of the first
// three features.
std::vector<test::Batch> learnable_batches(int count, int64_t rows, uint64_t seed) {
  std::vector<test::Batch> batches = test::make_batches(count, rows, seed);
  for (test::Batch& b : batches) {
    for (int64_t i = 0; i < rows; ++i) {
      const float* x = b.x.data() + i * 6;
      b.y[size_t(i)] = x[0] >= x[1] && x[0] >= x[2] ? 0 : x[1] >= x[2] ? 1 : 2;
    }
  }
  return batches;
}

PsOptions options_with(compress::Method method) {
  PsOptions o;
  o.learning_rate = kLr;
  o.compression.codec.method = method;
  o.compression.codec.min_size = 16;  // the MLP's tensors are small
  o.compression.codec.density = 0.25;
  o.compression.codec.rank = 1;
  o.compression.start_step = 2;
  return o;
}

TEST(PsCompression, EveryCompressorTrainsTheModel) {
  const std::vector<test::Batch> batches = learnable_batches(4, 16, 21);
  for (const std::string& name : compress::method_names()) {
    if (name == "none") continue;
    SCOPED_TRACE(name);
    const PsOptions options = options_with(*compress::parse_method(name));
    Servers servers;
    auto workers = start_workers(servers, options, 5, Logger::null());
    double first = 0.0, last = 0.0;
    constexpr int kEpochs = 15;
    for (int epoch = 0; epoch < kEpochs; ++epoch) {
      double loss = 0.0;
      for (const test::Batch& b : batches) loss += step_all(workers, b);
      if (epoch == 0) first = loss;
      last = loss;
    }
    EXPECT_LT(last, 0.8 * first) << "first epoch " << first << ", last " << last;
    EXPECT_EQ(workers[0]->updates(), kEpochs * 4);
    finish_all(workers);
  }
}

// The dense job's final parameters and worker 0's bytes on the wire.
std::pair<std::vector<std::vector<float>>, uint64_t> dense_run(const PsOptions& options) {
  const std::vector<test::Batch> batches = test::make_batches(6, 8, 22);
  Servers servers;
  auto workers = start_workers(servers, options, 6, Logger::null());
  for (const test::Batch& b : batches) step_all(workers, b);
  auto result = std::make_pair(test::snapshot(workers[0]->model()), workers[0]->bytes_sent());
  finish_all(workers);
  return result;
}

TEST(PsCompression, MethodNoneIsTheDenseJobBitForBit) {
  PsOptions plain;
  plain.learning_rate = kLr;
  PsOptions none = plain;
  none.compression.codec.method = compress::Method::kNone;
  none.compression.start_step = 3;
  const auto a = dense_run(plain);
  const auto b = dense_run(none);
  EXPECT_EQ(a.first, b.first);
  EXPECT_EQ(a.second, b.second);
}

TEST(PsLocalSgd, ARoundOfFourStepsEqualsTheAverageOfTheWorkersModels) {
  // H = 4 from the start: each worker takes 4 plain-SGD steps on its own
  // batches, then the servers (plain SGD) move to the mean of the two
  // models (equal samples).
  constexpr int kH = 4;
  PsOptions options;
  options.learning_rate = kLr;
  options.compression.local_steps = kH;
  const std::vector<test::Batch> batches = test::make_batches(kH, 8, 23);
  Servers servers;
  auto workers = start_workers(servers, options, 7, Logger::null());

  // The reference: each worker's half of every batch, trained alone.
  std::vector<std::vector<std::vector<float>>> alone;
  for (int w = 0; w < kWorkers; ++w) {
    LocalStrategy local(test::make_mlp(7), [](std::vector<Variable> params) {
      optim::SgdOptions o;
      o.lr = kLr;
      return nn::Optimizer::make<optim::Sgd>(std::move(params), o);
    });
    for (const test::Batch& b : batches) {
      const int64_t lo = 8 * w / kWorkers, hi = 8 * (w + 1) / kWorkers;
      local.train_step(b.x.narrow(lo, hi - lo),
                       std::vector<int64_t>(b.y.begin() + lo, b.y.begin() + hi));
    }
    alone.push_back(test::snapshot(local.model()));
  }
  for (int step = 0; step < kH; ++step) {
    step_all(workers, batches[size_t(step)]);
    if (step == kH - 2) {
      // Mid-round: each worker holds its own model; the servers did not move.
      EXPECT_EQ(workers[0]->version(), 0u);
    }
  }
  EXPECT_EQ(workers[0]->version(), 1u);  // one version per round
  std::vector<std::vector<float>> mean = alone[0];
  for (size_t p = 0; p < mean.size(); ++p) {
    for (size_t i = 0; i < mean[p].size(); ++i)
      mean[p][i] = 0.5f * (alone[0][p][i] + alone[1][p][i]);
  }
  for (int w = 0; w < kWorkers; ++w) {
    SCOPED_TRACE(w);
    EXPECT_LT(test::max_relative_difference(mean, test::snapshot(workers[size_t(w)]->model())),
              1e-4);
  }
  finish_all(workers);
}

// Two local SGD rounds (H = 2) from the same start on the same batches,
// against servers with SGD momentum `momentum`; the servers' parameters after
// each round.
std::vector<std::vector<std::vector<float>>> two_local_rounds(float momentum) {
  constexpr int kH = 2;
  PsOptions options;
  options.learning_rate = kLr;
  options.compression.local_steps = kH;
  const std::vector<test::Batch> batches = test::make_batches(2 * kH, 8, 25);
  Servers servers(ps::Consistency::kSync, momentum);
  auto workers = start_workers(servers, options, 9, Logger::null());
  std::vector<std::vector<std::vector<float>>> rounds;
  for (size_t step = 0; step < batches.size(); ++step) {
    step_all(workers, batches[step]);
    if (step % kH == kH - 1) rounds.push_back(test::snapshot(workers[0]->model()));
  }
  finish_all(workers);
  return rounds;
}

// SlowMo (Wang et al. 2020) with slow learning rate 1: the servers' momentum
// beta acts on the rounds' mean movements d_r = (theta_{r-1} - mean model) /
// lr. Round 1 moves to the mean model as plain SGD does (the buffer starts at
// d_1); in round 2 the workers start from the same theta_1 and move alike,
// so theta_2 = theta_2(plain) - beta * (theta_0 - theta_1).
TEST(PsLocalSgd, ServerMomentumIsSlowMosOuterMomentum) {
  constexpr float kBeta = 0.5f;
  const auto plain = two_local_rounds(0.0f);
  const auto slow = two_local_rounds(kBeta);
  ASSERT_EQ(plain.size(), 2u);
  ASSERT_EQ(slow.size(), 2u);
  EXPECT_LT(test::max_relative_difference(plain[0], slow[0]), 1e-6);
  const std::vector<std::vector<float>> start = test::snapshot(*test::make_mlp(9));
  std::vector<std::vector<float>> expected = plain[1];
  double moved = 0.0;
  for (size_t p = 0; p < expected.size(); ++p) {
    for (size_t i = 0; i < expected[p].size(); ++i) {
      expected[p][i] -= kBeta * (start[p][i] - plain[0][p][i]);
      moved += std::abs(start[p][i] - plain[0][p][i]);
    }
  }
  EXPECT_GT(moved, 0.0);  // the check below can tell momentum from none
  EXPECT_LT(test::max_relative_difference(expected, slow[1]), 1e-4);
  EXPECT_GT(test::max_relative_difference(plain[1], slow[1]), 1e-3);
}

TEST(PsCompression, TheCompressorStateRoundTripsThroughEachWorkersRankState) {
  PsOptions options = options_with(compress::Method::kTopK);
  options.compression.start_step = 0;
  const std::vector<test::Batch> batches = test::make_batches(3, 8, 24);
  StateDict saved;
  std::vector<StateDict> ranks(2);
  std::vector<compress::State> residuals(2);
  {
    Servers servers;
    auto workers = start_workers(servers, options, 8, Logger::null());
    for (const test::Batch& b : batches) step_all(workers, b);
    saved = workers[0]->optimizer_state().clone();
    for (size_t w = 0; w < 2; ++w) {
      ranks[w] = workers[w]->rank_state().clone();
      residuals[w] = workers[w]->client().compression_state();
    }
    finish_all(workers);
  }
  EXPECT_EQ(saved.metadata().at("compress/method"), "topk");
  EXPECT_EQ(saved.metadata().at("compress/workers"), "2");
  EXPECT_EQ(saved.metadata().at("compress/step"), "3");
  ASSERT_FALSE(residuals[0].arrays.empty());
  EXPECT_NE(residuals[0].arrays, residuals[1].arrays);  // each worker's own

  Servers servers;
  std::mutex mutex;
  std::vector<std::string> lines;
  Logger logger(LogLevel::kInfo, [&](LogLevel, std::string_view line) {
    const std::lock_guard lock(mutex);
    lines.emplace_back(line);
  });
  auto workers = start_workers(servers, options, 8, logger);
  {
    std::vector<std::jthread> syncing;
    for (auto& w : workers) {
      syncing.emplace_back([&w, &saved] {
        w->load_optimizer_state(saved);
        w->sync_replicas();
      });
    }
  }
  for (size_t w = 0; w < 2; ++w) {
    workers[w]->load_rank_state(ranks[w]);
    const compress::State loaded = workers[w]->client().compression_state();
    EXPECT_EQ(loaded.arrays, residuals[w].arrays) << "worker " << w;
    EXPECT_EQ(loaded.metadata, residuals[w].metadata) << "worker " << w;
  }
  EXPECT_EQ(workers[0]->updates(), 3);
  EXPECT_EQ(workers[1]->updates(), 3);

  // Saved with another worker count, or missing: fresh residuals and one
  // warning each.
  StateDict other = ranks[0].clone();
  other.metadata()["workers"] = "3";
  workers[0]->load_rank_state(other);
  workers[1]->load_rank_state(std::nullopt);
  for (size_t w = 0; w < 2; ++w) {
    for (const auto& [name, values] : workers[w]->client().compression_state().arrays) {
      for (float v : values) EXPECT_EQ(v, 0.0f) << name;
    }
  }
  size_t warnings = 0;
  for (const std::string& line : lines) {
    if (line.find("written by 3 workers, this run has 2") != std::string::npos) ++warnings;
    if (line.find("holds no compressor state for this worker") != std::string::npos) ++warnings;
  }
  EXPECT_EQ(warnings, 2u);
  finish_all(workers);
}

TEST(PsLocalSgd, ItsLimitsAreRefusedNamingTheKey) {
  PsOptions options;
  options.compression.local_steps = 4;
  options.consistency = ps::Consistency::kAsync;
  Servers servers(ps::Consistency::kAsync);
  try {
    PsStrategy s(test::make_mlp(1), servers.client(0), Servers::auth(), Logger::null(), options);
    ADD_FAILURE() << "local SGD in async was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("compression.local_steps = 4"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace dtrain::strategy
