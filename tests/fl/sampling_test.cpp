#include "fl/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "testing/expect_error.h"

namespace dtrain::fl {
namespace {

void expect_valid_sample(const std::vector<int64_t>& s, int64_t clients, int64_t count) {
  ASSERT_EQ(static_cast<int64_t>(s.size()), count);
  for (size_t i = 0; i < s.size(); ++i) {
    EXPECT_GE(s[i], 0);
    EXPECT_LT(s[i], clients);
    if (i > 0) {
      EXPECT_LT(s[i - 1], s[i]) << "not strictly ascending at " << i;
    }
  }
}

TEST(SampleClients, DistinctAscendingInRange) {
  for (int64_t clients : {1, 2, 7, 100}) {
    for (int64_t count = 0; count <= std::min<int64_t>(clients, 12); ++count) {
      for (int64_t round = 1; round <= 5; ++round) {
        expect_valid_sample(sample_clients(clients, count, 42, round), clients, count);
      }
    }
  }
}

TEST(SampleClients, AllClientsWhenCountIsK) {
  EXPECT_EQ(sample_clients(5, 5, 1, 3), (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(SampleClients, PureFunctionOfSeedAndRound) {
  EXPECT_EQ(sample_clients(1000, 30, 9, 4), sample_clients(1000, 30, 9, 4));
  // Rounds and seeds give different draws (30 of 1000: a coincidence has
  // probability ~1e-60).
  std::set<std::vector<int64_t>> seen;
  for (int64_t round = 1; round <= 50; ++round) seen.insert(sample_clients(1000, 30, 9, round));
  EXPECT_EQ(seen.size(), 50u);
  EXPECT_NE(sample_clients(1000, 30, 9, 4), sample_clients(1000, 30, 10, 4));
}

TEST(SampleClients, RoughlyUniform) {
  // 5 of 20 clients over 4000 rounds: each client expected 1000 times.
  // Pearson's statistic has 19 degrees of freedom (mean 19, sd ~6); 80 lies
  // ten standard deviations out, yet a biased sampler (say, one that never
  // picks client 0, or favours low ids) exceeds it by far.
  constexpr int64_t kClients = 20, kCount = 5, kRounds = 4000;
  std::vector<int64_t> hits(kClients, 0);
  for (int64_t round = 1; round <= kRounds; ++round) {
    for (int64_t k : sample_clients(kClients, kCount, 5, round)) ++hits[static_cast<size_t>(k)];
  }
  const double expected = double(kRounds * kCount) / double(kClients);
  double chi2 = 0.0;
  for (int64_t h : hits) chi2 += (double(h) - expected) * (double(h) - expected) / expected;
  EXPECT_LT(chi2, 80.0);
}

TEST(SampleClients, ManyClientsFewPerRound) {
  // K = 10,000, 100 per round: Floyd's algorithm allocates O(100), and 1000
  // rounds take milliseconds.
  std::set<int64_t> ever;
  for (int64_t round = 1; round <= 1000; ++round) {
    const auto s = sample_clients(10000, 100, 3, round);
    expect_valid_sample(s, 10000, 100);
    ever.insert(s.begin(), s.end());
  }
  EXPECT_GT(ever.size(), 9900u);  // expected 10000 (1 - e^-10): all but ~0.5
}

TEST(SampleClients, RefusesMoreThanK) {
  testing::expect_usage_error([] { sample_clients(3, 4, 1, 1); },
                              "sample_clients: 4 clients of 3 in round 1");
}

TEST(ClientRng, StreamsDifferByClientRoundAndSeed) {
  const uint64_t a = client_rng(1, 2, 3).next_u64();
  EXPECT_EQ(a, client_rng(1, 2, 3).next_u64());
  EXPECT_NE(a, client_rng(1, 2, 4).next_u64());
  EXPECT_NE(a, client_rng(1, 3, 3).next_u64());
  EXPECT_NE(a, client_rng(2, 2, 3).next_u64());
  EXPECT_NE(client_rng(1, 2, 3).next_u64(), client_rng(1, 3, 2).next_u64());
}

TEST(ClientFate, FrequenciesFollowTheConfig) {
  FlConfig c;
  c.dropout = 0.3;
  c.stragglers = 0.2;
  int64_t dropped = 0, stragglers = 0, normal = 0;
  for (int64_t round = 1; round <= 100; ++round) {
    for (int64_t k = 0; k < 100; ++k) {
      switch (client_fate(c, 11, round, k)) {
        case ClientFate::kDropped:
          ++dropped;
          break;
        case ClientFate::kStraggler:
          ++stragglers;
          break;
        case ClientFate::kNormal:
          ++normal;
          break;
      }
    }
  }
  // 10,000 draws: sd of a fraction ~0.005; bounds at 6 sd.
  EXPECT_NEAR(double(dropped) / 1e4, 0.3, 0.03);
  EXPECT_NEAR(double(stragglers) / 1e4, 0.7 * 0.2, 0.03);
  EXPECT_EQ(dropped + stragglers + normal, 10000);
  EXPECT_EQ(client_fate(c, 11, 5, 6), client_fate(c, 11, 5, 6));
}

TEST(ClientFate, ExtremesAreCertain) {
  FlConfig c;
  for (int64_t k = 0; k < 50; ++k) EXPECT_EQ(client_fate(c, 1, 1, k), ClientFate::kNormal);
  c.dropout = 1.0;
  for (int64_t k = 0; k < 50; ++k) EXPECT_EQ(client_fate(c, 1, 1, k), ClientFate::kDropped);
  c.dropout = 0.0;
  c.stragglers = 1.0;
  for (int64_t k = 0; k < 50; ++k) EXPECT_EQ(client_fate(c, 1, 1, k), ClientFate::kStraggler);
}

TEST(StragglerSteps, CeilOfTheShareAtLeastOne) {
  EXPECT_EQ(straggler_steps(10, 10.0), 1);
  EXPECT_EQ(straggler_steps(25, 10.0), 3);
  EXPECT_EQ(straggler_steps(12, 4.0), 3);
  EXPECT_EQ(straggler_steps(5, 1.0), 5);
  EXPECT_EQ(straggler_steps(1, 100.0), 1);
  EXPECT_EQ(straggler_steps(7, 2.5), 3);
}

}  // namespace
}  // namespace dtrain::fl
