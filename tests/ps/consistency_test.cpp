// Sync, async and SSP against a serial reference: servers and workers in one
// process over tcp loopback; workers driven from the test thread in a fixed
// order (pushes return at once; only pulls wait), so every run is the same.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <thread>

#include "core/rng.h"
#include "core/trace.h"
#include "optim/optimizer_config.h"
#include "ps_test_util.h"
#include "testing/expect_error.h"

namespace dtrain::ps {
namespace {

using testing::PsJob;

StateDict initial_model() {
  Rng rng(1);
  StateDict model;
  model.insert("w", dtrain::testing::normal_tensor({7, 5}, rng));
  model.insert("b", dtrain::testing::normal_tensor({5}, rng));
  model.insert("v", dtrain::testing::normal_tensor({3}, rng));
  return model;
}

std::vector<Tensor> zeros_like(const StateDict& model) {
  std::vector<Tensor> out;
  for (const auto& [name, t] : model) out.push_back(Tensor::zeros(t.shape()));
  return out;
}

std::vector<Tensor> gradient(const StateDict& model, uint64_t seed) {
  Rng rng(seed);
  std::vector<Tensor> out;
  for (const auto& [name, t] : model) out.push_back(dtrain::testing::normal_tensor(t.shape(), rng));
  return out;
}

void expect_close(const std::vector<Tensor>& got, const std::vector<Tensor>& want, double rel) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    for (int64_t j = 0; j < got[i].numel(); ++j) {
      const double a = got[i].data()[j];
      const double b = want[i].data()[j];
      ASSERT_LE(std::abs(a - b), rel * std::max(1.0, std::abs(b)))
          << "tensor " << i << " element " << j;
    }
  }
}

// The serial reference: one optimizer over the full tensors.
struct Reference {
  Reference(const StateDict& model, const optim::OptimizerConfig& config) {
    std::vector<Shape> shapes;
    for (const auto& [name, t] : model) {
      params.push_back(t.clone());
      shapes.push_back(t.shape());
    }
    optimizer = optim::make_update_rule(config, shapes);
  }
  void apply(const std::vector<Tensor>& grad, float lr) {
    optimizer->set_lr(lr);
    for (size_t i = 0; i < params.size(); ++i) optimizer->update(i, params[i], grad[i]);
  }
  // Sync: the sample-weighted mean, summed in the order given (worker-index
  // order, as the server does).
  void apply_mean(const std::vector<std::vector<Tensor>>& grads, const std::vector<int64_t>& n,
                  float lr) {
    double total = 0;
    for (int64_t s : n) total += static_cast<double>(s);
    if (total == 0) return;
    std::vector<Tensor> mean;
    for (const Tensor& p : params) mean.push_back(Tensor::zeros(p.shape()));
    for (size_t w = 0; w < grads.size(); ++w) {
      const auto nw = static_cast<float>(n[w]);
      for (size_t i = 0; i < mean.size(); ++i) {
        for (int64_t j = 0; j < mean[i].numel(); ++j)
          mean[i].data()[j] += nw * grads[w][i].data()[j];
      }
    }
    const auto scale = static_cast<float>(1.0 / total);
    for (Tensor& m : mean) {
      for (float& v : m.span()) v *= scale;
    }
    apply(mean, lr);
  }
  std::vector<Tensor> params;
  std::unique_ptr<optim::UpdateRule> optimizer;
};

optim::OptimizerConfig optimizer_named(const std::string& kind) {
  optim::OptimizerConfig c;
  c.type = kind;
  if (kind == "sgd") {
    c.lr = 0.1f;
    c.momentum = 0.9f;
  } else {
    c.lr = 0.01f;
  }
  return c;
}

class SyncEqualsSerial : public ::testing::TestWithParam<std::tuple<int, int, std::string>> {};

TEST_P(SyncEqualsSerial, SampleWeightedMeanOfEveryWorker) {
  const auto [servers, workers, kind] = GetParam();
  ServerOptions options;
  options.consistency = Consistency::kSync;
  options.optimizer = optimizer_named(kind);
  PsJob job(servers, workers, options);
  const StateDict model = initial_model();
  std::vector<std::unique_ptr<Client>> clients;
  for (int w = 0; w < workers; ++w) {
    clients.push_back(job.client(w));
    EXPECT_EQ(clients.back()->init(model, {}), 0u);
  }
  Reference ref(model, options.optimizer);
  const int steps = 4;
  for (int step = 0; step < steps; ++step) {
    const float lr = options.optimizer.lr * (1.0f - 0.1f * static_cast<float>(step));
    std::vector<std::vector<Tensor>> grads;
    std::vector<int64_t> samples;
    for (int w = 0; w < workers; ++w) {
      std::vector<Tensor> params = zeros_like(model);
      ASSERT_EQ(clients[static_cast<size_t>(w)]->pull(params, static_cast<uint64_t>(step)),
                static_cast<uint64_t>(step));
      expect_close(params, ref.params, 1e-6);
      grads.push_back(gradient(model, 100 + static_cast<uint64_t>(step * 10 + w)));
      samples.push_back(((w + 1) * (step + 1)) % 4);  // unequal; all zero in some steps
      const PushResult r = clients[static_cast<size_t>(w)]->push(grads.back(), samples.back(), lr,
                                                                 static_cast<uint64_t>(step));
      EXPECT_EQ(r.servers_applied, servers);
    }
    ref.apply_mean(grads, samples, lr);
  }
  std::vector<Tensor> params = zeros_like(model);
  EXPECT_EQ(clients[0]->pull(params, steps), static_cast<uint64_t>(steps));
  expect_close(params, ref.params, 1e-6);
  for (int s = 0; s < servers; ++s)
    EXPECT_EQ(clients[0]->stats(s).version, static_cast<uint64_t>(steps));
}

INSTANTIATE_TEST_SUITE_P(ServersWorkersOptimizer, SyncEqualsSerial,
                         ::testing::Combine(::testing::Values(1, 2), ::testing::Values(1, 2, 3),
                                            ::testing::Values("sgd", "adam")));

// Worker w's gradient in step `step` of the determinism test: magnitudes
// 1e4, 1 and -1e4, whose float sums depend on the order of the terms.
std::vector<Tensor> mixed_gradient(const StateDict& model, int w, int step) {
  std::vector<Tensor> g = gradient(model, (w == 1 ? 900 : 300) + static_cast<uint64_t>(step));
  const float scale = w == 0 ? 1e4f : w == 1 ? 1.0f : -1e4f;
  for (Tensor& t : g) {
    for (float& v : t.span()) v *= scale;
  }
  return g;
}

// The parameters after `steps` sync versions of 3 workers whose pushes reach
// the servers in `order` (worker indices), each version with the same
// gradients whatever the order.
std::vector<Tensor> run_sync_in_order(const std::vector<int>& order, int steps) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  options.optimizer = optimizer_named("adam");
  PsJob job(2, 3, options);
  const StateDict model = initial_model();
  std::vector<std::unique_ptr<Client>> clients;
  for (int w = 0; w < 3; ++w) {
    clients.push_back(job.client(w));
    clients.back()->init(model, {});
  }
  for (int step = 0; step < steps; ++step) {
    for (int w : order) {
      clients[static_cast<size_t>(w)]->push(mixed_gradient(model, w, step), 1 + w, 0.01f,
                                            static_cast<uint64_t>(step));
    }
  }
  std::vector<Tensor> params = zeros_like(model);
  EXPECT_EQ(clients[0]->pull(params, static_cast<uint64_t>(steps)), static_cast<uint64_t>(steps));
  return params;
}

TEST(SyncDeterminism, PushArrivalOrderDoesNotChangeAnyBit) {
  // The test can fail: summed in arrival order, n_i g_i of these gradients
  // give other floats for the orders below.
  const StateDict model = initial_model();
  auto summed = [&](const std::vector<int>& order) {
    std::vector<float> sum(static_cast<size_t>(model.entries()[0].second.numel()), 0.0f);
    for (int w : order) {
      const Tensor g = mixed_gradient(model, w, 0)[0];
      for (size_t j = 0; j < sum.size(); ++j) {
        sum[j] += static_cast<float>(1 + w) * g.data()[j];
      }
    }
    return sum;
  };
  ASSERT_NE(summed({0, 1, 2}), summed({2, 1, 0}));
  ASSERT_NE(summed({0, 1, 2}), summed({1, 2, 0}));
  const auto reference = run_sync_in_order({0, 1, 2}, 3);
  for (const std::vector<int>& order : {std::vector<int>{2, 1, 0}, std::vector<int>{1, 2, 0}}) {
    const auto params = run_sync_in_order(order, 3);
    ASSERT_EQ(params.size(), reference.size());
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_EQ(std::memcmp(params[i].data(), reference[i].data(),
                            static_cast<size_t>(params[i].numel()) * sizeof(float)),
                0)
          << "tensor " << i << " after pushes in order " << order[0] << order[1] << order[2];
    }
  }
}

TEST(SyncStepTotals, ThePullOfTheNextVersionCarriesTheSumsOfEveryWorker) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  PsJob job(2, 3, options);
  const StateDict model = initial_model();
  std::vector<std::unique_ptr<Client>> c = job.initialised_clients(model, {});
  std::vector<Tensor> params = zeros_like(model);
  c[1]->pull(params, 0);
  EXPECT_EQ(c[1]->last_totals().samples, 0);  // no version closed yet
  const auto g = gradient(model, 5);
  for (int step = 0; step < 2; ++step) {
    // Worker w: 4 + w samples, loss sum 1.5 (w + 1) + step, w + step correct.
    for (int w = 2; w >= 0; --w) {
      c[static_cast<size_t>(w)]->push(g, 4 + w, 0.01f, static_cast<uint64_t>(step),
                                      1.5 * (w + 1) + step, w + step);
    }
    for (int w = 0; w < 3; ++w) {
      c[static_cast<size_t>(w)]->pull(params, static_cast<uint64_t>(step + 1));
      const StepTotals t = c[static_cast<size_t>(w)]->last_totals();
      EXPECT_EQ(t.samples, 15) << "worker " << w << " step " << step;
      EXPECT_EQ(t.correct, 3 + 3 * step) << "worker " << w << " step " << step;
      EXPECT_DOUBLE_EQ(t.loss_sum, 9.0 + 3 * step) << "worker " << w << " step " << step;
    }
  }
  dtrain::testing::expect_error<UsageError>([&] { c[0]->push(g, 2, 0.01f, 2, 1.0, 3); },
                                            "ps push: correct is 3; must be in [0, samples = 2]");
}

TEST(SyncBackupWorkers, VersionsAdvanceWithoutTheStragglerWhoseLatePushIsDropped) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  options.backup_workers = 1;
  options.optimizer = optimizer_named("sgd");
  PsJob job(2, 3, options);
  const StateDict model = initial_model();
  std::vector<std::unique_ptr<Client>> c = job.initialised_clients(model, {});
  Reference ref(model, options.optimizer);
  // Version 0: workers 0 and 1 are the first N - b = 2; worker 2 straggles.
  const auto g0 = gradient(model, 1), g1 = gradient(model, 2), g2 = gradient(model, 3);
  c[0]->push(g0, 4, 0.1f, 0);
  c[1]->push(g1, 2, 0.1f, 0);
  ref.apply_mean({g0, g1}, {4, 2}, 0.1f);
  std::vector<Tensor> params = zeros_like(model);
  EXPECT_EQ(c[0]->pull(params, 1), 1u);
  const PushResult late = c[2]->push(g2, 8, 0.1f, 0);
  EXPECT_EQ(late.servers_dropped, 2);
  EXPECT_EQ(late.servers_applied, 0);
  EXPECT_EQ(late.version, 1u);
  // The straggler goes on from version 1, this time among the first two.
  EXPECT_EQ(c[2]->pull(params, 1), 1u);
  expect_close(params, ref.params, 1e-6);
  const auto h2 = gradient(model, 4), h0 = gradient(model, 5), h1 = gradient(model, 6);
  EXPECT_EQ(c[2]->push(h2, 3, 0.1f, 1).servers_applied, 2);
  EXPECT_EQ(c[0]->push(h0, 1, 0.1f, 1).servers_applied, 2);
  EXPECT_EQ(c[1]->push(h1, 5, 0.1f, 1).servers_dropped, 2);
  ref.apply_mean({h2, h0}, {3, 1}, 0.1f);
  EXPECT_EQ(c[1]->pull(params, 2), 2u);
  expect_close(params, ref.params, 1e-6);
  const ServerStats stats = c[0]->stats(1);
  EXPECT_EQ(stats.pushes_dropped, 2u);
  EXPECT_EQ(stats.pushes_applied, 4u);
}

TEST(Async, EveryPushIsAppliedAtOnceWithItsOwnLearningRate) {
  ServerOptions options;
  options.consistency = Consistency::kAsync;
  options.optimizer = optimizer_named("adam");
  PsJob job(2, 2, options);
  const StateDict model = initial_model();
  auto a = job.client(0);
  auto b = job.client(1);
  a->init(model, {});
  b->init(model, {});
  Reference ref(model, options.optimizer);
  for (int i = 0; i < 6; ++i) {
    Client& c = i % 3 == 0 ? *b : *a;
    const auto g = gradient(model, 50 + static_cast<uint64_t>(i));
    const float lr = 0.01f / static_cast<float>(i + 1);
    const PushResult r = c.push(g, 16, lr, 0);  // async takes stale versions
    EXPECT_EQ(r.version, static_cast<uint64_t>(i + 1));
    ref.apply(g, lr);
  }
  std::vector<Tensor> params = zeros_like(model);
  EXPECT_EQ(a->pull(params), 6u);
  expect_close(params, ref.params, 1e-6);
  EXPECT_EQ(a->stats(0).pushes_applied, 6u);
}

TEST(Ssp, AFastWorkerWaitsWhenMoreThanTheBoundAheadOfTheSlowest) {
  ServerOptions options;
  options.consistency = Consistency::kSsp;
  options.staleness_bound = 2;
  PsJob job(1, 2, options);  // one server: one exact error message
  const StateDict model = initial_model();
  auto fast = job.client(0, std::chrono::milliseconds(2000));
  auto slow = job.client(1);
  fast->init(model, {});
  slow->init(model, {});
  std::vector<Tensor> params = zeros_like(model);
  const auto g = gradient(model, 9);
  for (int clock = 1; clock <= 2; ++clock) {
    fast->push(g, 1, 0.1f, 0);
    fast->pull(params);
    EXPECT_EQ(fast->last_min_clock(), 0u);
  }
  fast->push(g, 1, 0.1f, 0);  // clock 3 > 0 + 2: the next pull must wait for the slow one
  dtrain::testing::expect_error<TimeoutError>(
      [&] { fast->pull(params); },
      "ps pull with rank 0: timed out after 2000 ms waiting for version >= 0 on server 0 "
      "(staleness bound 2: this worker's clock is 3, slowest live is 0)");
  const ServerStats stats = slow->stats(0);
  EXPECT_EQ(stats.clocks, (std::vector<uint64_t>{3, 0}));
  EXPECT_EQ(stats.min_clock, 0u);
  slow->push(g, 1, 0.1f, 0);
  fast->pull(params);
  EXPECT_EQ(fast->last_min_clock(), 1u);
}

TEST(Ssp, ConcurrentFastAndSlowWorkersStayWithinTheBound) {
  ServerOptions options;
  options.consistency = Consistency::kSsp;
  options.staleness_bound = 2;
  PsJob job(2, 2, options);
  const StateDict model = initial_model();
  auto fast = job.client(0);
  auto slow = job.client(1);
  fast->init(model, {});
  slow->init(model, {});
  const auto g = gradient(model, 3);
  std::jthread slow_thread([&] {
    std::vector<Tensor> params = zeros_like(model);
    for (int step = 0; step < 8; ++step) {
      slow->pull(params);
      for (int extra = 0; extra < 3; ++extra) slow->stats(step % 2);  // deliberately slower
      slow->push(g, 1, 0.01f, 0);
    }
    slow->finish();
  });
  std::vector<Tensor> params = zeros_like(model);
  uint64_t max_lead = 0;
  for (uint64_t clock = 1; clock <= 20; ++clock) {
    fast->push(g, 1, 0.01f, 0);
    fast->pull(params);
    ASSERT_LE(clock, fast->last_min_clock() + 2) << "clock " << clock;
    max_lead = std::max(max_lead, clock - fast->last_min_clock());
  }
  slow_thread.join();
  EXPECT_EQ(fast->stats(0).workers[1], WorkerState::kFinished);
}

// A stats reply carries the server's clock as it answered, what ps workers
// align their timelines to: on one machine it lies between the request and
// the reply.
TEST(PsStats, CarryTheServersClockForTimelineAlignment) {
  PsJob job(1, 1, ServerOptions{});
  auto client = job.client(0);
  const int64_t before = trace_now_us();
  const ServerStats stats = client->stats(0);
  const int64_t after = trace_now_us();
  EXPECT_GE(stats.clock_us, before);
  EXPECT_LE(stats.clock_us, after);
}

}  // namespace
}  // namespace dtrain::ps
