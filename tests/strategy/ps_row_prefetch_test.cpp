// PsStrategy's look-ahead for embedding rows (strategy/ps_row_prefetch.h,
// PsOptions::prefetch_rows) against real ps::Servers on loopback (threads of
// the test process; the CLI tests run them as processes): in sync the
// trained model and the servers' rows and Adagrad buffers are the same bits
// with and without it, with 1 and 2 servers, also when one step's look-ahead
// was for other inputs (pulled again); async still learns with it; a
// checkpoint load drops rows prefetched before it. Every test also checks
// that the prefetched rows were used (hits), so none passes with the
// look-ahead silently off.
#include "strategy/ps_row_prefetch.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/rng.h"
#include "nn/embedding.h"
#include "nn/flatten.h"
#include "nn/linear.h"
#include "nn/sequential.h"
#include "ps/server.h"
#include "ps_server_group.h"
#include "strategy/ps_strategy.h"

namespace dtrain::strategy {
namespace {

using namespace std::chrono_literals;
using test::ServerGroup;

constexpr int64_t kVocabulary = 64;
constexpr int64_t kDim = 4;
constexpr int64_t kFields = 3;
constexpr int kWorkers = 2;
constexpr float kLr = 0.2f;

// Embedding(64, 4) over 3 id fields, flattened, then Linear(12 -> 3).
std::unique_ptr<nn::Module> make_model() {
  Rng rng(21);
  auto model = std::make_unique<nn::Sequential>();
  model->add("emb", std::make_unique<nn::Embedding>(kVocabulary, kDim, rng));
  model->add("flat", std::make_unique<nn::Flatten>());
  model->add("fc", std::make_unique<nn::Linear>(kFields * kDim, 3, rng));
  return model;
}

optim::OptimizerConfig adagrad() {
  optim::OptimizerConfig o;
  o.type = "adagrad";
  o.lr = kLr;
  return o;
}

struct Batch {
  Tensor x;  // [rows, kFields] ids as floats
  std::vector<int64_t> y;
};

// Ids over the whole vocabulary, so that later batches create rows; the
// label is a function of the first id (learnable).
std::vector<Batch> make_batches(int count, int64_t rows, uint64_t seed) {
  Rng rng(seed);
  std::vector<Batch> batches;
  for (int b = 0; b < count; ++b) {
    Batch batch{Tensor::empty({rows, kFields}), {}};
    for (float& v : batch.x.span()) v = static_cast<float>(rng.below(kVocabulary));
    for (int64_t i = 0; i < rows; ++i) {
      batch.y.push_back(static_cast<int64_t>(batch.x.data()[i * kFields]) % 3);
    }
    batches.push_back(std::move(batch));
  }
  return batches;
}

struct Trained {
  StateDict model;  // after fetch_model()
  StateDict state;  // the servers' state (optimizer_state())
  std::vector<int64_t> hits, misses;
  std::vector<double> losses;  // job loss per step (worker 0's totals)
};

struct RunOptions {
  int servers = 1;
  ps::Consistency consistency = ps::Consistency::kSync;
  bool prefetch = true;
  int steps = 6;
  int64_t rows = 16;  // global batch
  int wrong_at = -1;  // this step's look-ahead hands another batch's inputs
};

// `o.steps` steps of 2 workers, each handed its rows of the next batch
// before each step (as the trainer does) when o.prefetch.
Trained train(const RunOptions& o) {
  ServerGroup servers(o.servers, kWorkers, o.consistency, 10s, adagrad());
  const std::vector<Batch> batches = make_batches(o.steps + 2, o.rows, 5);
  std::vector<std::unique_ptr<PsStrategy>> workers(kWorkers);
  {
    std::vector<std::jthread> starting;
    for (int w = 0; w < kWorkers; ++w) {
      starting.emplace_back([&, w] {
        ps::ClientOptions c;
        c.worker = w;
        c.num_workers = kWorkers;
        c.server_endpoints = servers.endpoints();
        c.timeout = 60s;
        PsOptions p;
        p.consistency = o.consistency;
        p.learning_rate = kLr;
        p.prefetch_rows = o.prefetch;
        workers[size_t(w)] = std::make_unique<PsStrategy>(make_model(), std::move(c),
                                                          ServerGroup::auth(), Logger::null(), p);
      });
    }
  }
  Trained out;
  const auto slice = [&](int w) {
    return std::make_pair(o.rows * w / kWorkers, o.rows * (w + 1) / kWorkers);
  };
  for (int step = 0; step < o.steps; ++step) {
    std::vector<std::jthread> stepping;
    for (int w = 0; w < kWorkers; ++w) {
      stepping.emplace_back([&, w, step] {
        PsStrategy& worker = *workers[size_t(w)];
        const Batch& b = batches[size_t(step)];
        const auto [lo, hi] = slice(w);
        if (worker.wants_next_inputs() && step + 1 < o.steps) {
          const Batch& next = batches[size_t(step + (step == o.wrong_at ? 2 : 1))];
          const auto [nlo, nhi] = slice(w);
          worker.prefetch(next.x.narrow(nlo, nhi - nlo));
        }
        const std::vector<int64_t> y(b.y.begin() + lo, b.y.begin() + hi);
        const StepStats mine = worker.train_step(b.x.narrow(lo, hi - lo), y);
        if (w == 0) {
          const StepStats t = worker.step_totals(mine);
          out.losses.push_back(t.loss_sum / static_cast<double>(t.samples));
        }
      });
    }
  }
  PsStrategy& chief = *workers[0];
  chief.fetch_model();
  out.model = chief.model().state_dict().clone();
  out.state = chief.optimizer_state();
  for (const auto& w : workers) {
    out.hits.push_back(w->row_prefetch().hits());
    out.misses.push_back(w->row_prefetch().misses());
    w->finish();
  }
  servers.join();
  return out;
}

// Every tensor of `a` equals `b`'s bit for bit, but the sparse blocks' step
// counts (which rows share a block follows the order the workers' reads
// created them in, a race with or without the look-ahead).
void expect_same_bits(const StateDict& a, const StateDict& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    if (name.find("step") != std::string::npos) continue;
    SCOPED_TRACE(name);
    ASSERT_TRUE(b.contains(name));
    const Tensor& u = b.at(name);
    ASSERT_EQ(t.shape(), u.shape());
    EXPECT_EQ(t.to_vector(), u.to_vector());
  }
}

class PsRowPrefetchSync : public ::testing::TestWithParam<int> {};

TEST_P(PsRowPrefetchSync, TheModelAndTheServersRowsAreTheSameBitsWithAndWithoutIt) {
  RunOptions o;
  o.servers = GetParam();
  const Trained with = train(o);
  o.prefetch = false;
  const Trained without = train(o);
  // Each step but the first took its rows from the previous step's pull.
  for (int w = 0; w < kWorkers; ++w) {
    EXPECT_EQ(with.hits[size_t(w)], o.steps - 1);
    EXPECT_EQ(with.misses[size_t(w)], 0);
    EXPECT_EQ(without.hits[size_t(w)] + without.misses[size_t(w)], 0);
  }
  EXPECT_FALSE(with.state.sub("ps.sparse.").empty());
  expect_same_bits(with.model, without.model);
  expect_same_bits(with.state, without.state);
  EXPECT_EQ(with.losses, without.losses);
}

TEST_P(PsRowPrefetchSync, RowsPrefetchedForOtherInputsArePulledAgain) {
  // Step 2's look-ahead hands step 4's rows (a split that changed after the
  // look-ahead does the same): step 3 finds other indices, pulls its own,
  // and the result is still the plain run's.
  RunOptions o;
  o.servers = GetParam();
  o.wrong_at = 2;
  const Trained with = train(o);
  o.prefetch = false;
  const Trained without = train(o);
  for (int w = 0; w < kWorkers; ++w) {
    EXPECT_EQ(with.hits[size_t(w)], o.steps - 2);
    EXPECT_EQ(with.misses[size_t(w)], 1);
  }
  expect_same_bits(with.model, without.model);
  expect_same_bits(with.state, without.state);
}

INSTANTIATE_TEST_SUITE_P(Servers, PsRowPrefetchSync, ::testing::Values(1, 2),
                         [](const auto& info) { return fmt::format("{}servers", info.param); });

TEST(PsRowPrefetchAsync, AsyncStillLearns) {
  // async: the rows come with the pull as the servers hold them then, not
  // parked; the workers learn the label (a function of the first id).
  RunOptions o;
  o.servers = 2;
  o.consistency = ps::Consistency::kAsync;
  o.steps = 60;
  o.rows = 32;
  const Trained run = train(o);
  for (int w = 0; w < kWorkers; ++w) EXPECT_GT(run.hits[size_t(w)], o.steps / 2);
  double first = 0.0, last = 0.0;
  for (int i = 0; i < 10; ++i) {
    first += run.losses[size_t(i)];
    last += run.losses[run.losses.size() - 1 - size_t(i)];
  }
  EXPECT_LT(last, 0.7 * first) << "mean loss of the first 10 steps " << first / 10
                               << ", of the last 10 " << last / 10;
}

TEST(PsRowPrefetchCheckpoint, RowsPrefetchedBeforeALoadAreNotUsed) {
  // The look-ahead of step 2 brings rows; a checkpoint of step 1 is loaded
  // before the next step: those rows are the servers' old values, dropped,
  // and the step repeats step 2 of the original run exactly.
  ServerGroup servers(2, 1, ps::Consistency::kSync, 10s, adagrad());
  ps::ClientOptions c;
  c.server_endpoints = servers.endpoints();
  c.timeout = 60s;
  PsOptions p;
  p.learning_rate = kLr;
  PsStrategy worker(make_model(), c, ServerGroup::auth(), Logger::null(), p);
  const std::vector<Batch> b = make_batches(3, 8, 9);
  worker.prefetch(b[1].x);  // as the trainer does: the next step's inputs
  worker.train_step(b[0].x, b[0].y);
  worker.fetch_model();
  const StateDict model = worker.model().state_dict().clone();
  const StateDict state = worker.optimizer_state();
  worker.train_step(b[1].x, b[1].y);  // its rows came with step 1's pull
  worker.fetch_model();
  const StateDict after_two = worker.model().state_dict().clone();
  worker.prefetch(b[1].x);  // rows after step 3: the load makes them stale
  worker.train_step(b[2].x, b[2].y);
  worker.model().load_state_dict(model);
  worker.load_optimizer_state(state);
  worker.sync_replicas();
  worker.train_step(b[1].x, b[1].y);
  worker.fetch_model();
  expect_same_bits(after_two, worker.model().state_dict());
  EXPECT_EQ(worker.row_prefetch().hits(), 1);  // step 2's only
  EXPECT_EQ(worker.row_prefetch().misses(), 0);
  worker.finish();
  servers.join();
}

}  // namespace
}  // namespace dtrain::strategy
