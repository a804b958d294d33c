// Pushes overlapped with backward (PsOptions::overlap, strategy/ps_overlap.h)
// against real ps::Servers on threads, two sync workers on threads: the
// final weights and the servers' optimizer state equal, bit for bit, those of
// the same job with one request per server after backward (SGD with momentum
// and Adam, one and two servers, a step where one worker has no rows); with
// two servers the last server's request leaves while backward still has
// parameters to reach (counted, so a path that silently fell back to the
// old one fails); with two servers server 1's reply is taken by the next
// forward's per-layer wait (counted) and the parameters read after the last
// step are the final ones; where the option does not apply it is ignored, and the
// job file refuses it outside sync.
#include "strategy/ps_overlap.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "nn/activation.h"
#include "nn/embedding.h"
#include "nn/linear.h"
#include "nn/sequential.h"
#include "ps_server_group.h"
#include "strategy/ps_strategy.h"
#include "testing/expect_error.h"
#include "testing/optimizer_configs.h"

namespace dtrain::strategy {
namespace {

using dtrain::testing::adam;
using dtrain::testing::momentum;
using namespace std::chrono_literals;
using test::ServerGroup;

constexpr int kWorkers = 2;
constexpr int kSteps = 5;
constexpr int64_t kRows = 12;

// 6 -> 4 -> 24 -> 3: fc1 holds 28 of the 223 floats, so with two servers
// server 1's range (the second half) lies in fc2 and fc3, whose gradients
// backward produces before fc1's.
std::unique_ptr<nn::Module> make_model() {
  Rng rng(21);
  auto model = std::make_unique<nn::Sequential>();
  model->add("fc1", std::make_unique<nn::Linear>(6, 4, rng));
  model->add("relu1", std::make_unique<nn::ReLU>());
  model->add("fc2", std::make_unique<nn::Linear>(4, 24, rng));
  model->add("relu2", std::make_unique<nn::ReLU>());
  model->add("fc3", std::make_unique<nn::Linear>(24, 3, rng));
  return model;
}

struct Batch {
  Tensor x;
  std::vector<int64_t> y;
};

std::vector<Batch> make_batches() {
  Rng rng(8);
  std::vector<Batch> batches;
  for (int b = 0; b < kSteps; ++b) {
    Batch batch{Tensor::empty({kRows, 6}), {}};
    for (float& v : batch.x.span()) v = rng.normal();
    for (int64_t i = 0; i < kRows; ++i) batch.y.push_back(static_cast<int64_t>(rng.below(3)));
    batches.push_back(std::move(batch));
  }
  return batches;
}

ps::ClientOptions client_options(const std::vector<std::string>& endpoints, int worker) {
  ps::ClientOptions c;
  c.worker = worker;
  c.num_workers = kWorkers;
  c.server_endpoints = endpoints;
  c.timeout = 60s;
  c.heartbeat_interval = 200ms;
  return c;
}

// What a run ends with: worker 0's parameters and the servers' optimizer
// state (as worker 0 assembles it), each as raw bytes per entry.
struct Outcome {
  std::vector<std::pair<std::string, std::vector<float>>> values;
  int64_t requests = 0;
  int64_t early_requests = 0;
  int64_t replies_in_forward = 0;
  bool in_flight_after_last_step = false;
  bool overlapped = false;
};

void add_values(const StateDict& state, const std::string& prefix, Outcome& out) {
  for (const auto& [name, t] : state) {
    const auto v = t.to_vector();
    out.values.emplace_back(prefix + name, std::vector<float>(v.begin(), v.end()));
  }
}

// Worker w gets rows [lo, hi) of each batch: 7 and 5 rows, except in step 2,
// where worker 0 gets all of them (worker 1 pushes zeros with no samples).
std::pair<int64_t, int64_t> rows_of(int w, int step) {
  const int64_t split = step == 2 ? kRows : 7;
  return w == 0 ? std::pair<int64_t, int64_t>{0, split} : std::pair<int64_t, int64_t>{split, kRows};
}

Outcome train(int servers, const optim::OptimizerConfig& optimizer, bool overlap) {
  ServerGroup group(servers, kWorkers, ps::Consistency::kSync, 10s, optimizer);
  PsOptions o;
  o.learning_rate = optimizer.lr;
  o.overlap = overlap;
  std::vector<std::unique_ptr<PsStrategy>> workers(kWorkers);
  {
    std::vector<std::jthread> starting;
    for (int w = 0; w < kWorkers; ++w) {
      starting.emplace_back([&, w] {
        workers[size_t(w)] =
            std::make_unique<PsStrategy>(make_model(), client_options(group.endpoints(), w),
                                         ServerGroup::auth(), Logger::null(), o);
      });
    }
  }
  for (const auto& w : workers) EXPECT_NE(w, nullptr);
  if (workers[0] == nullptr || workers[1] == nullptr) return {};
  const std::vector<Batch> batches = make_batches();
  for (int step = 0; step < kSteps; ++step) {
    std::vector<std::jthread> stepping;
    for (int w = 0; w < kWorkers; ++w) {
      stepping.emplace_back([&, w] {
        const auto [lo, hi] = rows_of(w, step);
        const Batch& b = batches[size_t(step)];
        const std::vector<int64_t> y(b.y.begin() + lo, b.y.begin() + hi);
        const Tensor x = hi > lo ? b.x.narrow(lo, hi - lo) : Tensor();
        workers[size_t(w)]->train_step(x, y);
      });
    }
  }
  Outcome out;
  PsStrategy& chief = *workers[0];
  // Read before anything takes the replies in flight (version() does).
  if (const PsOverlap* overlap = chief.overlap()) {
    out.in_flight_after_last_step = overlap->replies_pending();
  }
  EXPECT_EQ(chief.version(), uint64_t(kSteps));
  add_values(chief.model().state_dict(), "model.", out);
  add_values(chief.optimizer_state(), "optimizer.", out);
  if (const PsOverlap* overlap = chief.overlap()) {
    out.overlapped = true;
    out.requests = overlap->requests();
    out.early_requests = overlap->early_requests();
    out.replies_in_forward = overlap->replies_in_forward();
    EXPECT_FALSE(overlap->replies_pending());
  }
  for (auto& w : workers) w->finish();
  group.join();
  return out;
}

void expect_bit_identical(int servers, const optim::OptimizerConfig& optimizer) {
  const Outcome reference = train(servers, optimizer, false);
  const Outcome overlapped = train(servers, optimizer, true);
  EXPECT_FALSE(reference.overlapped);
  ASSERT_TRUE(overlapped.overlapped);
  // Worker 0 has rows in every step: one overlapped request per server.
  EXPECT_EQ(overlapped.requests, int64_t(kSteps) * servers);
  // Two servers: server 1's request leaves before fc1's gradients are final,
  // every step. One server: its range ends in fc1, the last to be final.
  EXPECT_EQ(overlapped.early_requests, servers == 2 ? int64_t(kSteps) : 0);
  // Two servers: train_step returns with server 1's reply still to take;
  // each next forward takes it before fc2 (whose floats start in server 0's
  // range and end in server 1's), and version() takes the last step's. One
  // server: its reply is in when train_step returns.
  EXPECT_EQ(overlapped.in_flight_after_last_step, servers == 2);
  EXPECT_EQ(overlapped.replies_in_forward, servers == 2 ? int64_t(kSteps - 1) : 0);
  ASSERT_EQ(overlapped.values.size(), reference.values.size());
  ASSERT_FALSE(reference.values.empty());
  for (size_t i = 0; i < reference.values.size(); ++i) {
    const auto& [name, want] = reference.values[i];
    const auto& [got_name, got] = overlapped.values[i];
    ASSERT_EQ(got_name, name);
    ASSERT_EQ(got.size(), want.size()) << name;
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0) << name;
  }
}

TEST(PsOverlap, TwoServersWithMomentumEndBitIdenticalToOneRequestPerServer) {
  expect_bit_identical(2, momentum());
}

TEST(PsOverlap, TwoServersWithAdamEndBitIdenticalToOneRequestPerServer) {
  expect_bit_identical(2, adam());
}

TEST(PsOverlap, OneServerWithMomentumEndsBitIdenticalToOneRequestPerServer) {
  expect_bit_identical(1, momentum());
}

TEST(PsOverlap, OneServerWithAdamEndsBitIdenticalToOneRequestPerServer) {
  expect_bit_identical(1, adam());
}

TEST(PsOverlap, IsIgnoredForAModelWithEmbeddingTables) {
  ServerGroup group(1, 1, ps::Consistency::kSync);
  Rng rng(4);
  auto model = std::make_unique<nn::Sequential>();
  model->add("emb", std::make_unique<nn::Embedding>(10, 2, rng));
  PsOptions o;
  o.overlap = true;
  ps::ClientOptions c = client_options(group.endpoints(), 0);
  c.num_workers = 1;
  PsStrategy worker(std::move(model), c, ServerGroup::auth(), Logger::null(), o);
  EXPECT_EQ(worker.overlap(), nullptr);
  worker.finish();
  group.join();
}

TEST(PsOverlap, ANonFiniteGradientStopsTheRequestsOfItsServer) {
  // A NaN input makes fc1's gradient NaN (whatever ReLU does with NaN, x
  // enters fc1's weight gradient): server 0's range holds fc1, so its
  // request never leaves, and the step ends with the usual NumericError
  // naming a parameter. (Server 1's may have left: fc3's gradient can be
  // finite. The job stops on a NumericError either way: docs.)
  ServerGroup group(2, 1, ps::Consistency::kSync);
  PsOptions o;
  o.overlap = true;
  ps::ClientOptions c = client_options(group.endpoints(), 0);
  c.num_workers = 1;
  PsStrategy worker(make_model(), c, ServerGroup::auth(), Logger::null(), o);
  ASSERT_NE(worker.overlap(), nullptr);
  const Tensor x = Tensor::full({2, 6}, std::nanf(""));
  const std::vector<int64_t> y{0, 1};
  dtrain::testing::expect_error_naming<NumericError>([&] { worker.train_step(x, y); },
                                                     "is not finite");
  EXPECT_LE(worker.overlap()->requests(), 1);
  EXPECT_EQ(worker.client().stats(0).pushes_applied, 0u);
  EXPECT_EQ(worker.version(), 0u);
  worker.finish();
  group.join();
}

TEST(PsOverlap, AReplyThatNeverComesFailsTheNextForwardNamingItsServer) {
  // Server 1 (no backup) dies once it has answered version 1. Step 0
  // returns with that reply in flight (server 0's is in); a later step's
  // forward, waiting before fc2 for server 1's range, fails naming server 1
  // within the client's timeout (step 1's, if the reply died with the
  // server's socket; step 2's otherwise: step 1's request to server 1 finds
  // no server, yet step 1 returns once server 0's reply is in). The step in
  // flight is then dropped, so nothing waits for it again.
  ServerGroup group(2, 1, ps::Consistency::kSync, 10s, {}, [](ps::ServerOptions& o) {
    if (o.server == 1) {
      o.on_version = [](uint64_t version) {
        if (version == 1) throw ServerGroup::Killed();
      };
    }
  });
  PsOptions o;
  o.overlap = true;
  ps::ClientOptions c = client_options(group.endpoints(), 0);
  c.num_workers = 1;
  c.timeout = 2s;
  PsStrategy worker(make_model(), c, ServerGroup::auth(), Logger::null(), o);
  ASSERT_NE(worker.overlap(), nullptr);
  const std::vector<Batch> batches = make_batches();
  worker.train_step(batches[0].x, batches[0].y);
  EXPECT_TRUE(worker.overlap()->replies_pending());
  std::string error;
  int failed_step = 0;
  for (int step = 1; step <= 2 && error.empty(); ++step) {
    try {
      worker.train_step(batches[size_t(step)].x, batches[size_t(step)].y);
    } catch (const CommError& e) {
      error = e.what();
      failed_step = step;
    }
  }
  ASSERT_FALSE(error.empty()) << "no step failed";
  EXPECT_NE(error.find("server 1"), std::string::npos) << error;
  EXPECT_FALSE(worker.overlap()->replies_pending());
  // The replies taken inside forward: server 1's of version 1 when step 2
  // was the one to fail.
  EXPECT_EQ(worker.overlap()->replies_in_forward(), failed_step - 1);
}

}  // namespace
}  // namespace dtrain::strategy
