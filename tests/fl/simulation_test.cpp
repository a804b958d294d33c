#include "fl/simulation.h"

#include <cblas.h>
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>

#include "fl/flat_model.h"
#include "fl/sampling.h"
#include "fl/server_optimizer.h"
#include "fl/update.h"
#include "sim_fixtures.h"
#include "testing/expect_error.h"

namespace dtrain::fl {
namespace {

using fixtures::blobs;
using fixtures::same_bits;

constexpr int64_t kFeatures = 5, kClasses = 3;

class SimulationTest : public ::testing::Test {
 protected:
  // `clients` clients of `each` samples, a linear model, SGD lr 0.1.
  SimulationOptions options(int64_t clients, int64_t each) {
    data_ = blobs(clients * each, kFeatures, kClasses);
    SimulationOptions o;
    o.config.clients = clients;
    o.config.fraction = 1.0;
    o.config.rounds = 1;
    o.config.local_epochs = 1;
    o.config.local_batch = 0;
    o.config.threads = 1;
    o.seed = 17;
    o.client_optimizer.type = "sgd";
    o.client_optimizer.lr = 0.1f;
    o.train = &data_;
    o.parts = fixtures::equal_parts(clients, each);
    o.make_model = fixtures::linear_model(kFeatures, kClasses);
    return o;
  }
  std::vector<float> initial(const SimulationOptions& o) { return flatten(*o.make_model()); }

  data::TensorDataset data_;
};

TEST_F(SimulationTest, FedAvgOneFullBatchEpochIsFedSgdIsAFullBatchStep) {
  // Clients of unequal sizes: the sample-weighted mean of their one-step
  // deltas is one gradient step on the union of their data.
  SimulationOptions o = options(4, 10);
  data_ = blobs(40, kFeatures, kClasses);
  o.parts = fixtures::consecutive_parts({3, 7, 12, 18});
  o.client_optimizer.lr = 0.5f;
  const std::vector<float> w0 = initial(o);
  const SimulationResult fedavg = run_simulation(o);
  o.config.algorithm = "fedsgd";
  o.config.local_batch = 10;  // fedsgd forces the whole local data
  o.config.local_epochs = 3;  // and one epoch
  const SimulationResult fedsgd = run_simulation(o);
  EXPECT_TRUE(same_bits(fedavg.state.weights, fedsgd.state.weights));

  const auto all = fixtures::consecutive_parts({40})[0];
  const auto grad = fixtures::full_batch_gradient(o.make_model, data_, w0, all);
  ASSERT_EQ(fedavg.state.weights.size(), grad.size());
  for (size_t i = 0; i < grad.size(); ++i) {
    EXPECT_NEAR(fedavg.state.weights[i], w0[i] - 0.5f * grad[i], 1e-5) << i;
  }
  EXPECT_EQ(fedavg.state.round, 1);
}

TEST_F(SimulationTest, FedProxWithMuZeroIsFedAvgBitForBit) {
  SimulationOptions o = options(10, 12);
  o.config.fraction = 0.5;
  o.config.rounds = 3;
  o.config.local_epochs = 2;
  o.config.local_batch = 4;
  const SimulationResult fedavg = run_simulation(o);
  o.config.algorithm = "fedprox";
  o.config.proximal_mu = 0.0;
  const SimulationResult fedprox = run_simulation(o);
  EXPECT_TRUE(same_bits(fedavg.state.weights, fedprox.state.weights));
  EXPECT_FALSE(same_bits(fedavg.state.weights, initial(o)));
  o.config.proximal_mu = 0.1;
  EXPECT_FALSE(same_bits(fedavg.state.weights, run_simulation(o).state.weights));
}

TEST_F(SimulationTest, ThreadCountDoesNotChangeABit) {
  // 60 samples a client: each client takes long enough that the pool's
  // threads really overlap.
  SimulationOptions o = options(20, 60);
  // Dropout's generator is state outside the weights: a trainer reused for
  // another client must not carry it over.
  o.make_model = fixtures::mlp_model(kFeatures, 16, kClasses, 7, 0.3f);
  o.config.fraction = 0.5;
  o.config.rounds = 3;
  o.config.local_epochs = 2;
  o.config.local_batch = 4;
  o.config.server_optimizer.type = "momentum";
  const SimulationResult one = run_simulation(o);
  o.config.threads = 3;
  const SimulationResult three = run_simulation(o);
  EXPECT_TRUE(same_bits(one.state.weights, three.state.weights));
  EXPECT_FALSE(same_bits(one.state.weights, initial(o)));
}

TEST_F(SimulationTest, ReportsEachRound) {
  SimulationOptions o = options(10, 8);
  o.config.fraction = 0.3;
  o.config.rounds = 7;
  o.config.eval_every = 3;
  int64_t evaluations = 0;
  o.evaluate = [&](std::span<const float> w) {
    ++evaluations;
    EXPECT_EQ(w.size(), 18u);
    return Evaluation{1.0, 0.5, 99};
  };
  std::vector<RoundReport> reports;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  const SimulationResult result = run_simulation(o);
  ASSERT_EQ(reports.size(), 7u);
  for (size_t i = 0; i < reports.size(); ++i) {
    const RoundReport& r = reports[i];
    EXPECT_EQ(r.round, static_cast<int64_t>(i) + 1);
    EXPECT_EQ(r.sampled, sample_clients(10, 3, 17, r.round));
    EXPECT_EQ(r.participated, r.sampled);
    EXPECT_TRUE(r.dropped.empty());
    EXPECT_FALSE(r.failed);
    EXPECT_TRUE(std::isfinite(r.train_loss));
    EXPECT_EQ(r.bytes_down, 3u * 18u * 4u);
    EXPECT_EQ(r.bytes_up, 3u * 18u * 4u);
    EXPECT_EQ(r.test.has_value(), r.round == 3 || r.round == 6 || r.round == 7) << r.round;
  }
  EXPECT_EQ(evaluations, 3);
  ASSERT_TRUE(result.last_test.has_value());
  EXPECT_EQ(result.last_test->samples, 99);
  EXPECT_FALSE(result.reached_target);
  EXPECT_EQ(result.state.round, 7);
}

TEST_F(SimulationTest, DropoutOfAllLeavesTheModelUnchanged) {
  SimulationOptions o = options(6, 5);
  o.config.rounds = 3;
  o.config.dropout = 1.0;
  std::vector<RoundReport> reports;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  const SimulationResult result = run_simulation(o);
  EXPECT_TRUE(same_bits(result.state.weights, initial(o)));
  ASSERT_EQ(reports.size(), 3u);
  for (const RoundReport& r : reports) {
    EXPECT_TRUE(r.failed);
    EXPECT_TRUE(r.participated.empty());
    EXPECT_EQ(r.dropped, r.sampled);
    EXPECT_TRUE(std::isnan(r.train_loss));
    EXPECT_EQ(r.bytes_up, 0u);
  }
  EXPECT_EQ(result.state.round, 3);
}

TEST_F(SimulationTest, FedAvgDropsStragglersAndFedProxAggregatesTheirPartialWork) {
  SimulationOptions o = options(6, 20);
  o.config.local_epochs = 2;
  o.config.local_batch = 5;  // 8 full steps; by the deadline ceil(8 / 3) = 3
  o.config.stragglers = 1.0;
  o.config.straggler_slowdown = 3.0;
  std::vector<RoundReport> reports;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  const SimulationResult fedavg = run_simulation(o);
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_TRUE(reports[0].failed);
  EXPECT_EQ(reports[0].dropped, reports[0].sampled);
  EXPECT_TRUE(same_bits(fedavg.state.weights, initial(o)));

  reports.clear();
  o.config.algorithm = "fedprox";
  o.config.proximal_mu = 0.01;
  const SimulationResult fedprox = run_simulation(o);
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_FALSE(reports[0].failed);
  EXPECT_EQ(reports[0].participated, reports[0].sampled);
  EXPECT_EQ(reports[0].partial, reports[0].sampled);
  EXPECT_TRUE(reports[0].dropped.empty());

  // The same round by hand: every client stopped after 3 steps.
  const std::vector<float> w0 = initial(o);
  ClientTrainer trainer(o.make_model, data_);
  RoundAggregator aggregator(1, 6, static_cast<int64_t>(w0.size()), reports[0].sampled);
  LocalTraining t;
  t.epochs = 2;
  t.batch = 5;
  t.proximal_mu = 0.01;
  t.optimizer = o.client_optimizer;
  t.max_steps = straggler_steps(local_steps(20, t), 3.0);
  ASSERT_EQ(t.max_steps, 3);
  for (int64_t k : reports[0].sampled) {
    Rng rng = client_rng(o.seed, 1, k);
    ClientUpdate u = trainer.train(k, 1, w0, o.parts[static_cast<size_t>(k)], t, rng);
    EXPECT_EQ(u.steps, 3);
    EXPECT_TRUE(u.partial);
    ASSERT_FALSE(aggregator.add(std::move(u)).has_value());
  }
  std::vector<float> expected = w0;
  const std::vector<float> delta = aggregator.mean_delta();
  for (size_t i = 0; i < expected.size(); ++i) expected[i] += delta[i];
  EXPECT_TRUE(same_bits(fedprox.state.weights, expected));
}

TEST_F(SimulationTest, SomeStragglersWithFedAvgAreListedAsDropped) {
  SimulationOptions o = options(40, 5);
  o.config.stragglers = 0.5;
  o.config.rounds = 2;
  std::vector<RoundReport> reports;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  run_simulation(o);
  for (const RoundReport& r : reports) {
    std::vector<int64_t> late;
    for (int64_t k : r.sampled) {
      if (client_fate(o.config, o.seed, r.round, k) == ClientFate::kStraggler) late.push_back(k);
    }
    EXPECT_FALSE(late.empty());
    EXPECT_EQ(r.dropped, late);
    EXPECT_EQ(r.participated.size() + r.dropped.size(), r.sampled.size());
    EXPECT_TRUE(r.partial.empty());
  }
}

TEST_F(SimulationTest, FewerThanMinFitClientsFailsTheRound) {
  SimulationOptions o = options(10, 5);
  o.config.dropout = 0.5;
  o.config.min_fit_clients = 10;  // any drop fails the round
  o.config.rounds = 2;
  std::vector<RoundReport> reports;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  const SimulationResult result = run_simulation(o);
  for (const RoundReport& r : reports) {
    EXPECT_TRUE(r.failed);
    EXPECT_FALSE(r.participated.empty());  // they trained, too few to count
  }
  EXPECT_TRUE(same_bits(result.state.weights, initial(o)));
}

TEST_F(SimulationTest, ClientWithoutDataIsDropped) {
  SimulationOptions o = options(3, 6);
  o.parts[1].clear();
  std::vector<RoundReport> reports;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  run_simulation(o);
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].dropped, (std::vector<int64_t>{1}));
  EXPECT_EQ(reports[0].participated, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(reports[0].rejected, 0);
}

TEST_F(SimulationTest, NonFiniteUpdateIsRejectedAndListedAsDropped) {
  SimulationOptions o = options(4, 5);
  o.config.rounds = 2;
  // Client 2's samples (rows 10..14) hold a NaN feature: its loss, gradient
  // and delta are NaN.
  for (int64_t row = 10; row < 15; ++row) data_.features().data()[row * kFeatures] = std::nanf("");
  std::vector<RoundReport> reports;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  const SimulationResult result = run_simulation(o);
  ASSERT_EQ(reports.size(), 2u);
  for (const RoundReport& r : reports) {
    EXPECT_EQ(r.rejected, 1);
    EXPECT_EQ(r.dropped, (std::vector<int64_t>{2}));
    EXPECT_EQ(r.participated, (std::vector<int64_t>{0, 1, 3}));
    EXPECT_FALSE(r.failed);
  }
  EXPECT_EQ(result.state.rejected_updates, 2);
  for (float w : result.state.weights) ASSERT_TRUE(std::isfinite(w));
}

TEST_F(SimulationTest, TenThousandClientsHundredPerRound) {
  // An idle client is its index list: 10,000 clients cost their parts, and
  // a round trains only its 100 (threads 0: one per core).
  SimulationOptions o = options(10000, 2);
  o.config.fraction = 0.01;
  o.config.rounds = 3;
  o.config.threads = 0;
  std::vector<RoundReport> reports;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  const SimulationResult result = run_simulation(o);
  ASSERT_EQ(reports.size(), 3u);
  for (const RoundReport& r : reports) {
    EXPECT_EQ(r.sampled.size(), 100u);
    EXPECT_EQ(r.participated, r.sampled);
  }
  EXPECT_FALSE(same_bits(result.state.weights, initial(o)));
}

TEST_F(SimulationTest, ResumingFromACheckpointContinuesBitForBit) {
  SimulationOptions o = options(12, 10);
  o.config.fraction = 0.5;
  o.config.local_batch = 3;
  o.config.server_optimizer.type = "momentum";
  o.config.rounds = 4;
  const SimulationResult straight = run_simulation(o);

  o.config.rounds = 2;
  std::vector<ServerState> saved;
  o.on_checkpoint = [&](const ServerState& s) { saved.push_back(s); };
  run_simulation(o);
  ASSERT_EQ(saved.size(), 2u);
  EXPECT_EQ(saved[1].round, 2);

  SimulationOptions again = o;
  again.config.rounds = 4;
  again.resume = saved[1];
  again.on_checkpoint = nullptr;
  std::vector<int64_t> rounds;
  again.on_round = [&](const RoundReport& r) { rounds.push_back(r.round); };
  const SimulationResult resumed = run_simulation(again);
  EXPECT_EQ(rounds, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(resumed.state.round, 4);
  EXPECT_TRUE(same_bits(resumed.state.weights, straight.state.weights));

  // Without the server optimizer's state (momentum) the run differs.
  again.resume->optimizer = ServerOptimizer(o.config.server_optimizer, 18).state_dict();
  EXPECT_FALSE(same_bits(run_simulation(again).state.weights, straight.state.weights));
}

TEST_F(SimulationTest, StopsAtTheTargetAccuracyAndCheckpoints) {
  SimulationOptions o = options(4, 5);
  o.config.rounds = 10;
  o.config.checkpoint_every = 4;
  o.config.target_accuracy = 0.9;
  int64_t calls = 0;
  o.evaluate = [&](std::span<const float>) {
    ++calls;
    return Evaluation{0.1, calls >= 2 ? 0.95 : 0.5, 20};
  };
  std::vector<int64_t> checkpoints;
  o.on_checkpoint = [&](const ServerState& s) { checkpoints.push_back(s.round); };
  const SimulationResult result = run_simulation(o);
  EXPECT_TRUE(result.reached_target);
  EXPECT_EQ(result.state.round, 2);
  EXPECT_EQ(checkpoints, (std::vector<int64_t>{2}));
  ASSERT_TRUE(result.last_test.has_value());
  EXPECT_EQ(result.last_test->accuracy, 0.95);
}

TEST_F(SimulationTest, BlasThreadsAreRestoredForTheCallbacks) {
  const int before = openblas_get_num_threads();
  openblas_set_num_threads(2);
  SimulationOptions o = options(4, 5);
  o.config.rounds = 2;
  o.config.threads = 2;
  std::vector<int> seen;
  o.evaluate = [&](std::span<const float>) {
    seen.push_back(openblas_get_num_threads());
    return Evaluation{};
  };
  o.on_round = [&](const RoundReport&) { seen.push_back(openblas_get_num_threads()); };
  run_simulation(o);
  EXPECT_EQ(seen, (std::vector<int>{2, 2, 2, 2}));
  EXPECT_EQ(openblas_get_num_threads(), 2);
  openblas_set_num_threads(before);
}

TEST_F(SimulationTest, ChecksItsOptions) {
  SimulationOptions o = options(4, 5);
  o.parts.pop_back();
  testing::expect_usage_error([&] { run_simulation(o); },
                              "run_simulation: 3 data parts for 4 clients");
  o = options(4, 5);
  o.resume = ServerState{};
  o.resume->weights.assign(5, 0.0f);
  testing::expect_usage_error([&] { run_simulation(o); },
                              "run_simulation: the resume state has 5 weights, the model 18");
}

TEST_F(SimulationTest, CallbackErrorsPropagate) {
  SimulationOptions o = options(4, 5);
  o.config.rounds = 3;
  o.config.threads = 2;
  o.on_round = [](const RoundReport& r) {
    if (r.round == 2) throw std::runtime_error("report failed");
  };
  EXPECT_THROW(run_simulation(o), std::runtime_error);
  // A client's error (an index outside the data) comes back from the pool.
  o = options(4, 5);
  o.config.threads = 2;
  o.parts[2].push_back(1000);
  EXPECT_THROW(run_simulation(o), UsageError);
}

TEST_F(SimulationTest, ClientEvaluationIsTheWeightedAccuracyOnTheirData) {
  SimulationOptions o = options(4, 10);
  o.config.client_eval = true;
  std::optional<double> accuracy;
  o.on_round = [&](const RoundReport& r) { accuracy = r.client_accuracy; };
  run_simulation(o);
  ASSERT_TRUE(accuracy.has_value());
  ClientTrainer trainer(o.make_model, data_);
  const auto all = fixtures::consecutive_parts({40})[0];
  EXPECT_DOUBLE_EQ(*accuracy, double(trainer.count_correct(initial(o), all)) / 40.0);
}

}  // namespace
}  // namespace dtrain::fl
