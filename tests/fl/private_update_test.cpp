// Privacy in federated rounds (fl/private_update.h and the simulation's
// private path): secure aggregation against plain FedAvg, drops in the
// middle of the protocol, DP-FedAvg's clip, noise, accountant, budget stop
// and resume, and the [fl] privacy keys.
#include "fl/private_update.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"
#include "fl/sampling.h"
#include "fl/server_state.h"
#include "fl/simulation.h"
#include "io/toml_table.h"
#include "privacy/rdp_accountant.h"
#include "privacy/secagg_quantize.h"
#include "sim_fixtures.h"

namespace dtrain::fl {
namespace {

using fixtures::blobs;
using fixtures::same_bits;

constexpr int64_t kFeatures = 5, kClasses = 3;

class PrivateRoundTest : public ::testing::Test {
 protected:
  // Clients of the given sizes, a linear model, full-batch SGD lr 0.1.
  SimulationOptions options(const std::vector<int64_t>& sizes) {
    int64_t total = 0;
    for (const int64_t s : sizes) total += s;
    data_ = blobs(total, kFeatures, kClasses);
    SimulationOptions o;
    o.config.clients = static_cast<int64_t>(sizes.size());
    o.config.fraction = 1.0;
    o.config.rounds = 1;
    o.config.local_epochs = 1;
    o.config.local_batch = 0;
    o.config.threads = 1;
    o.config.secagg_clip = 8.0;
    o.seed = 17;
    o.client_optimizer.type = "sgd";
    o.client_optimizer.lr = 0.1f;
    o.train = &data_;
    o.parts = fixtures::consecutive_parts(sizes);
    o.make_model = fixtures::linear_model(kFeatures, kClasses);
    return o;
  }
  std::vector<float> initial(const SimulationOptions& o) { return flatten(*o.make_model()); }

  // Client k's delta in `round` from `global`, as the simulation trains it.
  std::vector<float> delta_of(const SimulationOptions& o, int64_t k, int64_t round,
                              const std::vector<float>& global) {
    ClientTrainer trainer(o.make_model, *o.train);
    LocalTraining t;
    t.epochs = o.config.local_epochs;
    t.batch = o.config.local_batch;
    t.optimizer = o.client_optimizer;
    Rng rng = client_rng(o.seed, round, k);
    return trainer.train(k, round, global, o.parts[static_cast<size_t>(k)], t, rng).delta;
  }

  data::TensorDataset data_;
};

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0.0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double(a[i]) - double(b[i])));
  return d;
}

TEST_F(PrivateRoundTest, SecureAggregationIsFedAvgWithinTheQuantisationBound) {
  // Unequal sizes: the sample weighting goes through the masked sum.
  SimulationOptions o = options({6, 9, 12, 15, 10, 8});
  const SimulationResult plain = run_simulation(o);
  o.config.secure_aggregation = true;
  std::vector<RoundReport> reports;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  const SimulationResult secure = run_simulation(o);
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_TRUE(reports[0].secure);
  EXPECT_FALSE(reports[0].failed);
  EXPECT_EQ(reports[0].participated.size(), 6u);
  EXPECT_TRUE(std::isnan(reports[0].train_loss));  // no client's loss is revealed
  EXPECT_GT(reports[0].bytes_up, 6u * initial(o).size() * 4u);
  // The sum of 6 inputs is within 6 / scale of the exact one; the mean
  // divides by the included weights (6 clients of mean size: 6).
  const privacy::FixedPointCode code(static_cast<float>(o.config.secagg_clip), 6);
  const double bound = code.sum_error_bound(6) / 6.0 + 1e-6;
  const double diff = max_abs_diff(secure.state.weights, plain.state.weights);
  EXPECT_LE(diff, bound);
  EXPECT_FALSE(same_bits(secure.state.weights, plain.state.weights));  // it did quantise

  // Three rounds, half the clients each: still within a small tolerance.
  o.config.rounds = 3;
  o.config.fraction = 0.5;
  o.config.secure_aggregation = false;
  const SimulationResult plain3 = run_simulation(o);
  o.config.secure_aggregation = true;
  const SimulationResult secure3 = run_simulation(o);
  EXPECT_LE(max_abs_diff(secure3.state.weights, plain3.state.weights), 3 * 1e-5);
  EXPECT_GT(max_abs_diff(plain3.state.weights, initial(o)), 1e-2);  // it did train
}

TEST_F(PrivateRoundTest, SparseGraphAggregatesToo) {
  SimulationOptions o = options(std::vector<int64_t>(40, 5));
  o.config.fraction = 0.5;  // 20 a round: SecAgg+ degree 10 < 19
  const SimulationResult plain = run_simulation(o);
  o.config.secure_aggregation = true;
  o.config.secagg_graph = "sparse";
  const SimulationResult secure = run_simulation(o);
  const privacy::FixedPointCode code(static_cast<float>(o.config.secagg_clip), 20);
  EXPECT_LE(max_abs_diff(secure.state.weights, plain.state.weights),
            code.sum_error_bound(20) / 20.0 + 1e-6);
}

TEST_F(PrivateRoundTest, DropsAfterMaskingAggregateTheSurvivors) {
  SimulationOptions o = options({5, 7, 9, 11, 6, 8, 10, 12, 5, 7, 9, 11});
  o.config.secure_aggregation = true;
  o.config.dropout = 0.3;
  o.config.rounds = 6;
  // Precondition: some client drops mid-protocol (after advertising or
  // sharing keys: the unmasking path reconstructs its s key) and some after
  // masking (its input stays in the sum).
  int mid = 0, after_masking = 0;
  for (int64_t round = 1; round <= o.config.rounds; ++round) {
    for (int64_t k = 0; k < 12; ++k) {
      if (client_fate(o.config, o.seed, round, k) != ClientFate::kDropped) continue;
      const privacy::SecAggDrop d = secagg_drop_point(o.seed, round, k);
      mid += d == privacy::SecAggDrop::kAfterAdvertise || d == privacy::SecAggDrop::kAfterShareKeys;
      after_masking += d == privacy::SecAggDrop::kAfterMaskedInput;
    }
  }
  ASSERT_GT(mid, 0);
  ASSERT_GT(after_masking, 0);

  // Replay every round by hand: the new weights are the sample-weighted mean
  // of the participants' deltas (within the quantisation bound).
  std::vector<float> global = initial(o);
  int checked_with_drops = 0;
  std::vector<RoundReport> reports;
  std::vector<std::vector<float>> after;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  o.evaluate = [&](std::span<const float> w) {
    after.emplace_back(w.begin(), w.end());
    return Evaluation{};
  };
  run_simulation(o);
  ASSERT_EQ(reports.size(), 6u);
  for (const RoundReport& r : reports) {
    const std::vector<float>& now = after[static_cast<size_t>(r.round - 1)];
    if (r.failed) {
      EXPECT_TRUE(same_bits(now, global)) << "round " << r.round;
      continue;
    }
    std::vector<double> expected(global.size(), 0.0);
    double total = 0.0;
    for (const int64_t k : r.participated) {
      const std::vector<float> d = delta_of(o, k, r.round, global);
      const auto n = static_cast<double>(o.parts[static_cast<size_t>(k)].size());
      for (size_t j = 0; j < d.size(); ++j) expected[j] += n * d[j];
      total += n;
    }
    const double mean_samples = 100.0 / 12.0;
    const privacy::FixedPointCode code(static_cast<float>(o.config.secagg_clip), 12);
    const double bound = code.sum_error_bound(12) / (total / mean_samples) + 1e-6;
    for (size_t j = 0; j < global.size(); ++j) {
      EXPECT_NEAR(now[j], global[j] + expected[j] / total, bound) << "round " << r.round;
    }
    if (!r.dropped.empty()) ++checked_with_drops;
    EXPECT_EQ(r.participated.size() + r.dropped.size(), r.sampled.size());
    global = now;
  }
  EXPECT_GT(checked_with_drops, 0);
}

TEST_F(PrivateRoundTest, TooManyDropsFailTheRoundCleanly) {
  SimulationOptions o = options(std::vector<int64_t>(8, 6));
  o.config.secure_aggregation = true;
  o.config.secagg_threshold = 8;  // every client is needed
  o.config.dropout = 0.4;
  o.config.rounds = 3;
  std::vector<RoundReport> reports;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  const SimulationResult result = run_simulation(o);
  ASSERT_EQ(reports.size(), 3u);
  for (const RoundReport& r : reports) {
    EXPECT_TRUE(r.failed);
    EXPECT_FALSE(r.failure.empty());
    EXPECT_TRUE(r.participated.empty());
  }
  EXPECT_TRUE(same_bits(result.state.weights, initial(o)));

  o.config.dropout = 1.0;
  o.config.secagg_threshold = 0;
  EXPECT_TRUE(same_bits(run_simulation(o).state.weights, initial(o)));
}

TEST_F(PrivateRoundTest, CompressedUploadsAreRefusedWithSecureAggregation) {
  SimulationOptions o = options({6, 6, 6});
  o.config.secure_aggregation = true;
  o.upload.method = compress::Method::kFp16;
  EXPECT_THROW(run_simulation(o), UsageError);
}

TEST(PrivateUpdate, ClippedUpdatesHaveNormAtMostS) {
  FlConfig c;
  c.dp_clip = 0.7;
  c.dp_noise_multiplier = 1.0;  // no secure aggregation: no noise in the input
  Rng data(5);
  for (int trial = 0; trial < 200; ++trial) {
    ClientUpdate u;
    u.samples = 1 + trial;
    u.delta.resize(static_cast<size_t>(1 + trial * 37));
    const float size = trial % 3 == 0 ? 0.01F : 100.0F;
    for (float& v : u.delta) v = size * data.normal();
    Rng noise(1);
    const std::vector<float> in = secagg_input(u, c, 10, 3.0, noise);
    const double norm = l2_norm(in);
    EXPECT_LE(norm, c.dp_clip * (1 + 1e-6));
    if (l2_norm(u.delta) <= c.dp_clip) {
      EXPECT_TRUE(same_bits(in, u.delta));  // weight 1
    }
  }
}

TEST(PrivateUpdate, WithoutDpTheInputIsTheSampleWeightedDelta) {
  FlConfig c;
  ClientUpdate u;
  u.samples = 30;
  u.delta = {1.0F, -2.0F};
  Rng noise(1);
  EXPECT_EQ(secagg_input(u, c, 5, 20.0, noise), (std::vector<float>{1.5F, -3.0F}));
  const std::vector<float> sum = {3.0F, 6.0F};
  EXPECT_EQ(secagg_output(sum, c, 5, 2, 1.5, noise), (std::vector<float>{2.0F, 4.0F}));
  EXPECT_THROW(secagg_output(sum, c, 5, 6, 1.5, noise), UsageError);
}

// The variance of the released mean of zero updates, per value.
double sample_variance(const std::vector<float>& v) {
  double mean = 0.0, sq = 0.0;
  for (const float x : v) mean += x;
  mean /= static_cast<double>(v.size());
  for (const float x : v) sq += (x - mean) * (x - mean);
  return sq / static_cast<double>(v.size() - 1);
}

TEST(PrivateUpdate, NoiseOfTheEstimateIsZSOverM) {
  FlConfig c;
  c.dp_clip = 2.0;
  c.dp_noise_multiplier = 1.5;
  const int64_t m = 10;
  const size_t length = 40000;
  const double expected = std::pow(c.dp_noise_multiplier * c.dp_clip / m, 2);
  // Central: the server adds N(0, z^2 S^2) to the sum and divides by m.
  {
    const std::vector<float> zero(length, 0.0F);
    Rng server(3);
    const double var = sample_variance(secagg_output(zero, c, m, 7, 7.0, server));
    EXPECT_GT(var, 0.9 * expected);
    EXPECT_LT(var, 1.1 * expected);
  }
  // Distributed: each of the m clients adds its share; with r < m in the
  // sum the server adds the missing part, so the release carries the same.
  c.secure_aggregation = true;
  for (const int64_t included : {m, int64_t{6}}) {
    std::vector<float> sum(length, 0.0F);
    ClientUpdate u;
    u.delta.assign(length, 0.0F);
    for (int64_t k = 0; k < included; ++k) {
      Rng noise = client_noise_rng(9, 1, k);
      const std::vector<float> in = secagg_input(u, c, m, 1.0, noise);
      for (size_t j = 0; j < length; ++j) sum[j] += in[j];
    }
    Rng server = server_noise_rng(9, 1);
    const double var =
        sample_variance(secagg_output(sum, c, m, included, static_cast<double>(included), server));
    EXPECT_GT(var, 0.9 * expected) << included;
    EXPECT_LT(var, 1.1 * expected) << included;
  }
}

class DpRoundTest : public PrivateRoundTest {
 protected:
  SimulationOptions dp_options() {
    SimulationOptions o = options(std::vector<int64_t>(20, 5));
    o.config.fraction = 0.25;  // q = 5 / 20
    o.config.rounds = 6;
    o.config.dp_clip = 0.5;
    o.config.dp_noise_multiplier = 1.1;
    return o;
  }
};

TEST_F(DpRoundTest, AccountantMatchesTheRdpAccountantSteppedByHand) {
  for (const bool secure : {false, true}) {
    SimulationOptions o = dp_options();
    o.config.secure_aggregation = secure;
    std::vector<RoundReport> reports;
    o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
    run_simulation(o);
    ASSERT_EQ(reports.size(), 6u);
    privacy::RdpAccountant hand;
    for (const RoundReport& r : reports) {
      ASSERT_FALSE(r.failed);
      EXPECT_EQ(r.secure, secure);
      hand.step(0.25, 1.1);
      const privacy::PrivacySpent spent = hand.epsilon(o.config.dp_delta);
      ASSERT_TRUE(r.epsilon.has_value());
      EXPECT_EQ(*r.epsilon, spent.balle);
      EXPECT_EQ(*r.epsilon_classic, spent.classic);
    }
    EXPECT_GT(*reports.back().epsilon, *reports.front().epsilon);
  }
}

TEST_F(DpRoundTest, StopsBeforeExceedingTheTargetEpsilon) {
  SimulationOptions o = dp_options();
  o.config.rounds = 200;
  privacy::RdpAccountant probe;
  probe.step(0.25, 1.1, 4);
  // A target between 4 and 5 rounds' epsilon: exactly 4 rounds run.
  probe.step(0.25, 1.1, 1);
  const double five = probe.epsilon(1e-5).balle;
  privacy::RdpAccountant four;
  four.step(0.25, 1.1, 4);
  o.config.dp_target_epsilon = (four.epsilon(1e-5).balle + five) / 2;
  std::vector<RoundReport> reports;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  const SimulationResult result = run_simulation(o);
  EXPECT_TRUE(result.budget_exhausted);
  EXPECT_NE(result.budget_stop.find("before round 5"), std::string::npos) << result.budget_stop;
  ASSERT_EQ(reports.size(), 4u);
  EXPECT_EQ(result.state.round, 4);
  for (const RoundReport& r : reports) EXPECT_LE(*r.epsilon, o.config.dp_target_epsilon);
}

TEST_F(DpRoundTest, ResumeContinuesEpsilonAndTheModelBitForBit) {
  for (const bool secure : {false, true}) {
    SimulationOptions o = dp_options();
    o.config.secure_aggregation = secure;
    o.config.rounds = 4;
    std::vector<RoundReport> straight_reports;
    o.on_round = [&](const RoundReport& r) { straight_reports.push_back(r); };
    const SimulationResult straight = run_simulation(o);

    o.config.rounds = 2;
    std::vector<ServerState> saved;
    o.on_round = nullptr;
    o.on_checkpoint = [&](const ServerState& s) { saved.push_back(s); };
    run_simulation(o);
    ASSERT_EQ(saved.size(), 2u);
    SimulationOptions again = o;
    again.config.rounds = 4;
    // Through the checkpoint form: the accountant is its metadata.
    again.resume =
        from_checkpoint(to_checkpoint(saved[1]), static_cast<int64_t>(initial(o).size()));
    EXPECT_FALSE(again.resume->accountant.empty());
    again.on_checkpoint = nullptr;
    std::vector<RoundReport> resumed_reports;
    again.on_round = [&](const RoundReport& r) { resumed_reports.push_back(r); };
    const SimulationResult resumed = run_simulation(again);
    ASSERT_EQ(resumed_reports.size(), 2u);
    EXPECT_EQ(*resumed_reports.back().epsilon, *straight_reports.back().epsilon);
    EXPECT_TRUE(same_bits(resumed.state.weights, straight.state.weights));
    EXPECT_EQ(resumed.state.accountant, straight.state.accountant);

    // A resume state without the accountant is refused.
    again.resume->accountant.clear();
    EXPECT_THROW(run_simulation(again), UsageError);
  }
}

TEST_F(DpRoundTest, NoiseMakesTheReleaseDifferFromTheClippedMean) {
  SimulationOptions o = dp_options();
  o.config.rounds = 1;
  o.config.dp_noise_multiplier = 1e-9;  // (almost) no noise: the clipped mean over m
  const SimulationResult quiet = run_simulation(o);
  std::vector<float> global = initial(o);
  const std::vector<int64_t> sampled = sample_clients(20, 5, o.seed, 1);
  std::vector<double> expected(global.size(), 0.0);
  for (const int64_t k : sampled) {
    std::vector<float> d = delta_of(o, k, 1, global);
    clip_l2(d, o.config.dp_clip);
    for (size_t j = 0; j < d.size(); ++j) expected[j] += d[j] / 5.0;
  }
  for (size_t j = 0; j < global.size(); ++j) {
    EXPECT_NEAR(quiet.state.weights[j], global[j] + expected[j], 1e-6);
  }
  o.config.dp_noise_multiplier = 1.0;
  EXPECT_GT(max_abs_diff(run_simulation(o).state.weights, quiet.state.weights), 1e-3);
}

// --- the [fl] privacy keys ---

std::string fl_error(const std::string& text) {
  try {
    toml::table t = io::parse_toml("[fl]\n" + text, "job.toml", {});
    io::TomlTable table(t["fl"].as_table(), "fl", "job.toml");
    read_fl_config(table);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

FlConfig fl_read(const std::string& text) {
  toml::table t = io::parse_toml("[fl]\n" + text, "job.toml", {});
  io::TomlTable table(t["fl"].as_table(), "fl", "job.toml");
  return read_fl_config(table);
}

TEST(PrivacyConfig, DefaultsAreOff) {
  const FlConfig c = fl_read("clients = 10\n");
  EXPECT_FALSE(c.secure_aggregation);
  EXPECT_EQ(c.secagg_graph, "full");
  EXPECT_FALSE(c.dp());
  EXPECT_EQ(c.dp_delta, 1e-5);
}

TEST(PrivacyConfig, ErrorsNameTheKey) {
  auto expect = [](const std::string& text, const std::string& key) {
    const std::string e = fl_error(text);
    EXPECT_NE(e.find("fl." + key), std::string::npos) << text << " -> " << e;
  };
  expect("clients = 20\nfraction = 0.1\nsecure_aggregation = true\n", "secure_aggregation");
  expect("secagg_graph = \"ring\"\n", "secagg_graph");
  expect("clients = 10\nfraction = 0.5\nsecure_aggregation = true\nsecagg_threshold = 6\n",
         "secagg_threshold");
  expect("secagg_threshold = -1\n", "secagg_threshold");
  expect("secagg_clip = 0.0\n", "secagg_clip");
  expect("dp_noise_multiplier = 1.0\n", "dp_noise_multiplier");
  expect("dp_clip = 1.0\n", "dp_clip");
  expect("dp_clip = -1.0\n", "dp_clip");
  expect("dp_clip = 1.0\ndp_noise_multiplier = 1.0\ndp_delta = 1.0\n", "dp_delta");
  expect("dp_target_epsilon = 2.0\n", "dp_target_epsilon");
  expect("dp_clip = 1.0\ndp_target_epsilon = 1e-9\n", "dp_target_epsilon");
}

TEST(PrivacyConfig, SolvesTheNoiseMultiplierForTheTarget) {
  const FlConfig c = fl_read(
      "clients = 100\nfraction = 0.1\nrounds = 50\ndp_clip = 1.0\ndp_target_epsilon = 4.0\n");
  const double z = c.dp_noise_multiplier;
  EXPECT_GT(z, 0.0);
  EXPECT_EQ(z, privacy::solve_noise_multiplier(4.0, 1e-5, 0.1, 50));
  privacy::RdpAccountant a;
  a.step(0.1, z, 50);
  EXPECT_LE(a.epsilon(1e-5).balle, 4.0);
}

TEST(PrivacyConfig, SecAggConfigDefaultsTheThresholdAboveHalf) {
  FlConfig c;
  c.secure_aggregation = true;
  const privacy::SecAggConfig full = secagg_config(c, 10, 1, 3, 100);
  EXPECT_EQ(full.threshold, 6u);
  EXPECT_EQ(full.clients, 10u);
  EXPECT_EQ(full.round, 3u);
  EXPECT_EQ(full.vector_length, 100u);
  c.secagg_graph = "sparse";
  const privacy::SecAggConfig sparse = secagg_config(c, 100, 1, 3, 100);
  EXPECT_EQ(sparse.graph, privacy::SecAggGraphKind::kHarary);
  EXPECT_EQ(sparse.threshold, privacy::holders_per_client(sparse) / 2 + 1);
  EXPECT_NE(secagg_config(c, 100, 1, 4, 100).graph_seed, sparse.graph_seed);
}

}  // namespace
}  // namespace dtrain::fl
