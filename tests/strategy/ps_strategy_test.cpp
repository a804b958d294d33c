// PsStrategy against real ps::Servers on loopback: row-sparse embedding
// tables (only the touched rows travel; the result equals one process on the
// global batch), dynamic batch sizing (unequal shares, the same on every
// worker, still the global batch's update), checkpoints of the servers'
// state, and a SIGKILLed worker in sync mode that does not hang the others.
// Servers run on threads of the test process; workers on threads (one
// PsStrategy each, no shared state) or, for the kill test, as child processes.
#include "strategy/ps_strategy.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <sstream>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "core/deadline.h"
#include "core/error.h"
#include "core/rng.h"
#include "nn/embedding.h"
#include "nn/flatten.h"
#include "nn/linear.h"
#include "nn/sequential.h"
#include "optim/sgd.h"
#include "ps/server.h"
#include "ps_server_group.h"
#include "strategy/local_strategy.h"
#include "testing/expect_error.h"
#include "testing/process.h"

namespace dtrain::strategy {
namespace {

using namespace std::chrono_literals;
using test::ServerGroup;

constexpr int64_t kVocabulary = 40;
constexpr int64_t kDim = 3;
constexpr int64_t kFields = 2;
constexpr float kLr = 0.1f;

// Embedding(40, 3) over 2 id fields, flattened, then Linear(6 -> 3).
std::unique_ptr<nn::Module> make_embedding_model(uint64_t seed) {
  Rng rng(seed);
  auto model = std::make_unique<nn::Sequential>();
  model->add("emb", std::make_unique<nn::Embedding>(kVocabulary, kDim, rng));
  model->add("flat", std::make_unique<nn::Flatten>());
  model->add("fc", std::make_unique<nn::Linear>(kFields * kDim, 3, rng));
  return model;
}

OptimizerFactory plain_sgd() {
  return [](std::vector<Variable> params) {
    optim::SgdOptions o;
    o.lr = kLr;
    return nn::Optimizer::make<optim::Sgd>(std::move(params), o);
  };
}

// The workers' learning rate (plain_sgd()'s, the servers' optimizer).
PsOptions sgd_options() {
  PsOptions o;
  o.learning_rate = kLr;
  return o;
}

struct Batch {
  Tensor x;  // [rows, 2] ids as floats
  std::vector<int64_t> y;
};

// Ids from the first `used` rows of the vocabulary only.
std::vector<Batch> make_id_batches(int count, int64_t rows, int64_t used, uint64_t seed) {
  Rng rng(seed);
  std::vector<Batch> batches;
  for (int b = 0; b < count; ++b) {
    Batch batch{Tensor::empty({rows, kFields}), {}};
    for (float& v : batch.x.span()) v = static_cast<float>(rng.below(static_cast<uint64_t>(used)));
    for (int64_t i = 0; i < rows; ++i) batch.y.push_back(static_cast<int64_t>(rng.below(3)));
    batches.push_back(std::move(batch));
  }
  return batches;
}

ps::ClientOptions client_options(const std::vector<std::string>& endpoints, int worker,
                                 int workers) {
  ps::ClientOptions c;
  c.worker = worker;
  c.num_workers = workers;
  c.server_endpoints = endpoints;
  c.timeout = 60s;
  c.heartbeat_interval = 200ms;
  return c;
}

StateDict snapshot(nn::Module& model) { return model.state_dict().clone(); }

double relative_difference(const StateDict& a, const StateDict& b) {
  double worst = 0.0;
  for (const auto& [name, t] : a) {
    const Tensor& u = b.at(name);
    double diff = 0.0, scale = 0.0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      diff = std::max(diff, std::abs(double(t.data()[i]) - double(u.data()[i])));
      scale = std::max(scale, std::abs(double(t.data()[i])));
    }
    worst = std::max(worst, scale > 0 ? diff / scale : diff);
  }
  return worst;
}

uint64_t sparse_rows_held(PsStrategy& strategy) {
  uint64_t rows = 0;
  for (int s = 0; s < strategy.client().num_servers(); ++s)
    rows += strategy.client().stats(s).sparse_rows;
  return rows;
}

TEST(PsStrategySparse, OnlyTouchedRowsTravelAndTheResultEqualsOneProcess) {
  // 2 servers, 2 workers in sync with plain SGD: the servers hold each
  // worker's row pushes (its mean gradient) and apply sum_i n_i g_i / sum_i n_i
  // per row at the version's close: the global batch's mean gradient. The
  // job-wide step statistics equal the one process's too.
  constexpr int kServers = 2, kWorkers = 2, kSteps = 4;
  constexpr int64_t kRows = 8, kUsed = 10;  // ids < 10 of 40
  ServerGroup servers(kServers, kWorkers, ps::Consistency::kSync);
  const std::vector<Batch> batches = make_id_batches(kSteps, kRows, kUsed, 5);

  std::vector<std::unique_ptr<PsStrategy>> workers(kWorkers);
  {
    std::vector<std::jthread> starting;
    for (int w = 0; w < kWorkers; ++w) {
      starting.emplace_back([&, w] {
        workers[size_t(w)] = std::make_unique<PsStrategy>(
            make_embedding_model(3), client_options(servers.endpoints(), w, kWorkers),
            ServerGroup::auth(), Logger::null(), sgd_options());
      });
    }
  }
  for (const auto& w : workers) ASSERT_NE(w, nullptr);
  EXPECT_EQ(workers.back()->rank(), kWorkers - 1);
  EXPECT_EQ(workers.back()->world_size(), kWorkers);
  EXPECT_EQ(sparse_rows_held(*workers[0]), 0u);

  // The reference starts from the servers' values: the dense ones came from
  // the workers' init, the rows are drawn by the servers (fetch_model()
  // creates every row).
  PsStrategy& chief = *workers[0];
  chief.fetch_model();
  EXPECT_EQ(sparse_rows_held(chief), uint64_t(kVocabulary));
  LocalStrategy local(make_embedding_model(3), plain_sgd());
  local.model().load_state_dict(chief.model().state_dict());
  std::vector<StepStats> one_process;
  for (const Batch& b : batches) one_process.push_back(local.train_step(b.x, b.y));

  for (size_t step = 0; step < batches.size(); ++step) {
    const Batch& b = batches[step];
    std::vector<StepStats> mine(kWorkers), totals(kWorkers);
    {
      std::vector<std::jthread> stepping;
      for (int w = 0; w < kWorkers; ++w) {
        stepping.emplace_back([&, w] {
          const int64_t lo = kRows * w / kWorkers, hi = kRows * (w + 1) / kWorkers;
          const std::vector<int64_t> y(b.y.begin() + lo, b.y.begin() + hi);
          PsStrategy& worker = *workers[size_t(w)];
          mine[size_t(w)] = worker.train_step(b.x.narrow(lo, hi - lo), y);
          totals[size_t(w)] = worker.step_totals(mine[size_t(w)]);
        });
      }
    }
    StepStats sum;
    for (const StepStats& m : mine) sum += m;
    for (int w = 0; w < kWorkers; ++w) {
      SCOPED_TRACE(fmt::format("step {} worker {}", step, w));
      const StepStats& t = totals[size_t(w)];
      EXPECT_EQ(t.loss_sum, sum.loss_sum);  // summed in worker order, like here
      EXPECT_EQ(t.correct, sum.correct);
      EXPECT_EQ(t.samples, kRows);
      EXPECT_NEAR(t.loss_sum, one_process[step].loss_sum, 1e-4);
      EXPECT_EQ(t.correct, one_process[step].correct);
    }
  }
  chief.fetch_model();
  EXPECT_LT(relative_difference(snapshot(local.model()), snapshot(chief.model())), 1e-5);
  EXPECT_EQ(chief.version(), uint64_t(kSteps));  // one version per step
  for (auto& w : workers) w->finish();
  servers.join();
}

TEST(PsStrategyDynamicBatch, UnequalMeasuredSharesAgreeOnEveryWorkerAndEqualOneProcess) {
  // 3 workers in sync with dynamic batch sizing, worker 2 modelled four times
  // slower per row (a ModelledTimer: the same step times on any load): the
  // shares start forced unequal (the balancer's test hook, the same weights
  // on every worker), then re-balance every 2 versions from the compute times
  // the servers hand back. Every worker computes the same split at every
  // step, and the servers' sample-weighted update equals one process on the
  // global batch.
  constexpr int kServers = 2, kWorkers = 3, kSteps = 6;
  constexpr int64_t kRows = 24, kUsed = 12;
  ServerGroup servers(kServers, kWorkers, ps::Consistency::kSync);
  const std::vector<Batch> batches = make_id_batches(kSteps, kRows, kUsed, 8);

  std::vector<std::unique_ptr<PsStrategy>> workers(kWorkers);
  {
    std::vector<std::jthread> starting;
    for (int w = 0; w < kWorkers; ++w) {
      starting.emplace_back([&, w] {
        PsOptions o = sgd_options();
        o.dynamic_batch.enabled = true;
        o.dynamic_batch.rebalance_every = 2;
        o.dynamic_batch.min_share = 0.05;
        workers[size_t(w)] = std::make_unique<PsStrategy>(
            make_embedding_model(3), client_options(servers.endpoints(), w, kWorkers),
            ServerGroup::auth(), Logger::null(), o);
        workers[size_t(w)]->set_compute_timer(
            std::make_unique<ModelledTimer>(1e-3, w == 2 ? 4e-4 : 1e-4));
      });
    }
  }
  for (const auto& w : workers) ASSERT_NE(w, nullptr);
  const std::vector<double> forced{1.0, 3.0, 6.0};
  for (const auto& w : workers) w->batch_balancer().set_shares(forced);
  EXPECT_NE(workers[0]->batch_split(kRows), (std::vector<int64_t>{8, 8, 8}));

  PsStrategy& chief = *workers[0];
  chief.fetch_model();
  LocalStrategy local(make_embedding_model(3), plain_sgd());
  local.model().load_state_dict(chief.model().state_dict());
  for (const Batch& b : batches) local.train_step(b.x, b.y);

  for (size_t step = 0; step < batches.size(); ++step) {
    SCOPED_TRACE(fmt::format("step {}", step));
    const Batch& b = batches[step];
    const std::vector<int64_t> split = workers[0]->batch_split(kRows);
    for (const auto& w : workers) ASSERT_EQ(w->batch_split(kRows), split);
    std::vector<StepStats> totals(kWorkers);
    {
      std::vector<std::jthread> stepping;
      for (int w = 0; w < kWorkers; ++w) {
        stepping.emplace_back([&, w] {
          PsStrategy& worker = *workers[size_t(w)];
          const auto [lo, hi] = worker.row_range(kRows);
          const std::vector<int64_t> y(b.y.begin() + lo, b.y.begin() + hi);
          totals[size_t(w)] = worker.step_totals(worker.train_step(b.x.narrow(lo, hi - lo), y));
        });
      }
    }
    for (const StepStats& t : totals) EXPECT_EQ(t.samples, kRows);
  }
  // Versions 0..5 observed: re-balanced after versions 1, 3 and 5, the same
  // models and shares on every worker.
  for (const auto& w : workers) {
    EXPECT_EQ(w->batch_balancer().rebalances(), 3);
    EXPECT_EQ(w->batch_balancer().shares(), workers[0]->batch_balancer().shares());
  }
  // The modelled step times decide the shares: worker 2 gets the fewest rows.
  const std::vector<double> shares = workers[0]->batch_balancer().shares();
  EXPECT_LT(shares[2], shares[0]);
  EXPECT_LT(shares[2], shares[1]);
  chief.fetch_model();
  EXPECT_LT(relative_difference(snapshot(local.model()), snapshot(chief.model())), 1e-5);
  for (auto& w : workers) w->finish();
  servers.join();
}

TEST(PsStrategyDynamicBatch, NeedsSync) {
  // Both are refused before any server is contacted.
  PsOptions async;
  async.consistency = ps::Consistency::kAsync;
  async.dynamic_batch.enabled = true;
  dtrain::testing::expect_error<UsageError>(
      [&] {
        PsStrategy(make_embedding_model(3), client_options({"tcp://127.0.0.1:1"}, 0, 2),
                   ServerGroup::auth(), Logger::null(), async);
      },
      "ps strategy: dynamic batch sizing needs consistency 'sync', not 'async': the workers' "
      "shares come from each version's measurements, which only sync has");
}

TEST(PsStrategySparse, LookupsPullOnlyTheBatchRows) {
  ServerGroup servers(2, 1, ps::Consistency::kAsync);
  PsStrategy worker(make_embedding_model(3), client_options(servers.endpoints(), 0, 1),
                    ServerGroup::auth(), Logger::null(), sgd_options());
  Batch b{Tensor::empty({2, kFields}), {0, 1}};
  const float ids[] = {7, 3, 7, 12};
  std::copy(std::begin(ids), std::end(ids), b.x.data());
  worker.train_step(b.x, b.y);
  // Rows 3, 7 and 12 exist on the servers; no other row was created.
  EXPECT_EQ(sparse_rows_held(worker), 3u);
  // In eval mode the lookup hook leaves the table alone.
  worker.model().eval();
  worker.model().forward(Variable(b.x));
  EXPECT_EQ(sparse_rows_held(worker), 3u);
  worker.finish();
  servers.join();
}

TEST(PsStrategyCheckpoint, ServerStateRoundTripsThroughTheOptimizerState) {
  ServerGroup servers(2, 1, ps::Consistency::kSync);
  PsStrategy worker(make_embedding_model(3), client_options(servers.endpoints(), 0, 1),
                    ServerGroup::auth(), Logger::null(), sgd_options());
  const std::vector<Batch> batches = make_id_batches(3, 6, 20, 8);
  worker.train_step(batches[0].x, batches[0].y);
  worker.fetch_model();
  const StateDict model = snapshot(worker.model());
  const StateDict state = worker.optimizer_state();
  EXPECT_EQ(state.metadata().at("ps.version"), "1");
  EXPECT_FALSE(state.sub("ps.sparse.").empty());

  // Two more steps, then back to the checkpoint: the next step from there
  // repeats the original second step exactly.
  worker.train_step(batches[1].x, batches[1].y);
  worker.fetch_model();
  const StateDict after_two = snapshot(worker.model());
  worker.train_step(batches[2].x, batches[2].y);
  worker.model().load_state_dict(model);
  worker.load_optimizer_state(state);
  worker.sync_replicas();
  EXPECT_EQ(worker.version(), 1u);
  worker.train_step(batches[1].x, batches[1].y);
  worker.fetch_model();
  EXPECT_EQ(relative_difference(after_two, snapshot(worker.model())), 0.0);

  // A state without the servers' rows cannot restore the tables.
  StateDict no_rows;
  no_rows.metadata()["ps.version"] = "3";
  EXPECT_THROW(worker.load_optimizer_state(no_rows), UsageError);
  StateDict bad_version = state.clone();
  bad_version.metadata()["ps.version"] = "x1";
  EXPECT_THROW(worker.load_optimizer_state(bad_version), UsageError);
  worker.finish();
  servers.join();
}

// ---- a SIGKILLed worker in sync mode ----

constexpr const char* kStepLine = "worker step ";
constexpr int kKillSteps = 12;
constexpr int kVictim = 2;
constexpr int kVictimStops = 3;

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);  // test harness only; library code never reads the env
  return v ? v : fallback;
}

TEST(PsStrategyFailure, AKilledWorkerDoesNotHangTheOthersInSync) {
  constexpr int kWorkers = 3;
  // Short heartbeat timeout: the survivors wait that long for the dead one.
  ServerGroup servers(2, kWorkers, ps::Consistency::kSync, 5000ms);
  std::ostringstream endpoints;
  for (const std::string& e : servers.endpoints()) endpoints << e << ' ';
  std::vector<testing::ChildProcess> children;
  for (int w = 0; w < kWorkers; ++w) {
    children.push_back(testing::spawn_test_child(
        "PsStrategyFailure.DISABLED_Worker", {{"DTRAIN_TEST_PS_WORKER", std::to_string(w)},
                                              {"DTRAIN_TEST_PS_WORKERS", std::to_string(kWorkers)},
                                              {"DTRAIN_TEST_PS_ENDPOINTS", endpoints.str()}}));
  }
  testing::ChildProcess& victim = children[kVictim];
  ASSERT_TRUE(victim.wait_for_line(kStepLine + std::to_string(kVictimStops), Deadline::after(120s)))
      << victim.output();
  victim.signal(SIGKILL);
  for (int w = 0; w < kWorkers; ++w) {
    if (w == kVictim) continue;
    testing::ChildProcess& child = children[size_t(w)];
    ASSERT_TRUE(child.wait_for_line(kStepLine + std::to_string(kKillSteps), Deadline::after(120s)))
        << "worker " << w << " did not finish its steps:\n"
        << child.output();
    const auto status = child.wait(Deadline::after(60s));
    ASSERT_TRUE(status.has_value()) << child.output();
    EXPECT_TRUE(status->ok()) << status->describe() << "\n" << child.output();
    // The survivors split the global batch of 9 among themselves (the victim
    // missed the last versions: PsOptions::reshard_lost_workers).
    EXPECT_NE(child.output().find("batch split: 4 5 0\n"), std::string::npos) << child.output();
  }
  const std::vector<ps::ServeResult> results = servers.join();
  ASSERT_EQ(results.size(), 2u);
  for (const ps::ServeResult& r : results) {
    EXPECT_EQ(r.end, ps::ServeEnd::kFinished);
    EXPECT_EQ(r.stats.version, uint64_t(kKillSteps));  // one version per step
    ASSERT_EQ(r.stats.workers.size(), size_t(kWorkers));
    EXPECT_EQ(r.stats.workers[kVictim], ps::WorkerState::kDead);
    EXPECT_EQ(r.stats.workers[0], ps::WorkerState::kFinished);
    EXPECT_EQ(r.stats.workers[1], ps::WorkerState::kFinished);
  }
}

TEST(PsStrategyFailure, DISABLED_Worker) {
  const int worker = std::stoi(env_or("DTRAIN_TEST_PS_WORKER", "-1"));
  ASSERT_GE(worker, 0) << "run by PsStrategyFailure.AKilledWorkerDoesNotHangTheOthersInSync";
  const int workers = std::stoi(env_or("DTRAIN_TEST_PS_WORKERS", "0"));
  std::istringstream list(env_or("DTRAIN_TEST_PS_ENDPOINTS", ""));
  std::vector<std::string> endpoints;
  for (std::string e; list >> e;) endpoints.push_back(e);
  PsStrategy strategy(make_embedding_model(3), client_options(endpoints, worker, workers),
                      ServerGroup::auth(), Logger::null(), sgd_options());
  const std::vector<Batch> batches = make_id_batches(kKillSteps, 9, kVocabulary, 21);
  for (int step = 1; step <= kKillSteps; ++step) {
    const Batch& b = batches[size_t(step - 1)];
    const int64_t lo = 9 * worker / workers, hi = 9 * (worker + 1) / workers;
    strategy.train_step(b.x.narrow(lo, hi - lo),
                        std::span<const int64_t>(b.y).subspan(size_t(lo), size_t(hi - lo)));
    std::printf("%s%d\n", kStepLine, step);
    std::fflush(stdout);
    // The victim stops here until the parent's SIGKILL arrives.
    if (worker == kVictim && step == kVictimStops) {
      while (true) pause();
    }
  }
  const std::vector<int64_t> split = strategy.batch_split(9);
  std::printf("batch split:");
  for (int64_t rows : split) std::printf(" %lld", static_cast<long long>(rows));
  std::printf("\n");
  std::fflush(stdout);
  strategy.finish();
}

}  // namespace
}  // namespace dtrain::strategy
