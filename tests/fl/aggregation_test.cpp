// RoundAggregator: the sample-weighted mean of a round's accepted updates
// against a hand computation, its independence from arrival order (every
// bit), and each rejection (counted, described with the client and the round,
// the aggregate unchanged).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "fl/update.h"
#include "testing/expect_error.h"

namespace dtrain::fl {
namespace {

ClientUpdate make_update(int64_t client, int64_t round, int64_t samples, std::vector<float> delta,
                         double loss = 1.0) {
  ClientUpdate u;
  u.client = client;
  u.round = round;
  u.samples = samples;
  u.delta = std::move(delta);
  u.loss = loss;
  u.steps = 1;
  return u;
}

TEST(RoundAggregator, WeightedMeanMatchesHandComputation) {
  RoundAggregator agg(3, 10, 2, {7, 2, 5});
  EXPECT_FALSE(agg.add(make_update(2, 3, 1, {1.0f, -2.0f}, 0.5)));
  EXPECT_FALSE(agg.add(make_update(5, 3, 3, {3.0f, 2.0f}, 1.5)));
  EXPECT_FALSE(agg.add(make_update(7, 3, 4, {-1.0f, 0.5f}, 2.0)));
  // sum n_k = 8
  // delta[0] = (1*1 + 3*3 + 4*-1) / 8 = 6/8 = 0.75
  // delta[1] = (1*-2 + 3*2 + 4*0.5) / 8 = 6/8 = 0.75
  // loss = (1*0.5 + 3*1.5 + 4*2.0) / 8 = 13/8 = 1.625
  EXPECT_EQ(agg.accepted(), 3);
  EXPECT_EQ(agg.rejected(), 0);
  EXPECT_EQ(agg.samples(), 8);
  EXPECT_EQ(agg.accepted_clients(), (std::vector<int64_t>{2, 5, 7}));
  EXPECT_EQ(agg.mean_delta(), (std::vector<float>{0.75f, 0.75f}));
  EXPECT_DOUBLE_EQ(agg.mean_loss(), 1.625);
}

TEST(RoundAggregator, UnequalWeightsAreNotAPlainMean) {
  RoundAggregator agg(0, 2, 1, {0, 1});
  EXPECT_FALSE(agg.add(make_update(0, 0, 1, {0.0f})));
  EXPECT_FALSE(agg.add(make_update(1, 0, 9, {10.0f})));
  // (1*0 + 9*10) / 10 = 9, where the plain mean would be 5.
  EXPECT_EQ(agg.mean_delta(), std::vector<float>{9.0f});
}

TEST(RoundAggregator, ArrivalOrderDoesNotChangeABit) {
  constexpr int64_t kClients = 40;
  constexpr int64_t kSize = 257;
  Rng rng(12);
  std::vector<int64_t> sampled;
  std::vector<ClientUpdate> updates;
  // Clients 0..9 come in pairs of equal weight whose huge deltas (~1e12)
  // cancel; the others carry small deltas of varied weight. A sum in arrival
  // order rounds its partial sums at 1e12 and so depends on the order.
  for (int64_t c = 0; c < kClients; c += 2) {
    sampled.push_back(c);
    std::vector<float> delta(kSize);
    int64_t samples = 1 + (c * 37) % 113;
    if (c < 20) {
      samples = 5;
      const float sign = (c / 2) % 2 == 0 ? 1.0f : -1.0f;
      Rng pair_rng(static_cast<uint64_t>(c / 4));
      for (auto& v : delta) v = sign * 1e12f * pair_rng.normal();
    } else {
      for (auto& v : delta) v = rng.normal();
    }
    updates.push_back(make_update(c, 5, samples, std::move(delta), rng.uniform()));
  }

  auto aggregate = [&](const std::vector<ClientUpdate>& order) {
    RoundAggregator agg(5, kClients, kSize, sampled);
    for (const auto& u : order) EXPECT_FALSE(agg.add(u));
    return std::pair(agg.mean_delta(), agg.mean_loss());
  };
  // The same mean summed in arrival order: what the aggregator must not do.
  auto arrival_order_mean = [&](const std::vector<ClientUpdate>& order) {
    std::vector<double> sum(kSize, 0.0);
    double total = 0.0;
    for (const auto& u : order) {
      total += static_cast<double>(u.samples);
      for (int64_t i = 0; i < kSize; ++i) sum[i] += static_cast<double>(u.samples) * u.delta[i];
    }
    std::vector<float> mean(kSize);
    for (int64_t i = 0; i < kSize; ++i) mean[i] = static_cast<float>(sum[i] / total);
    return mean;
  };
  const auto [reference, reference_loss] = aggregate(updates);
  std::mt19937 shuffle_rng(7);
  int order_sensitive = 0;
  for (int trial = 0; trial < 10; ++trial) {
    auto order = updates;
    std::shuffle(order.begin(), order.end(), shuffle_rng);
    const auto [mean, loss] = aggregate(order);
    ASSERT_EQ(mean.size(), reference.size());
    EXPECT_EQ(std::memcmp(mean.data(), reference.data(), mean.size() * sizeof(float)), 0)
        << "trial " << trial;
    EXPECT_EQ(std::memcmp(&loss, &reference_loss, sizeof(double)), 0) << "trial " << trial;
    const auto naive = arrival_order_mean(order);
    if (std::memcmp(naive.data(), reference.data(), naive.size() * sizeof(float)) != 0) {
      ++order_sensitive;
    }
  }
  // The data do tell orders apart: a sum in arrival order differs somewhere.
  EXPECT_GT(order_sensitive, 0);
}

// Each case: a bad update is rejected with exactly `reason`, counted, and
// leaves the aggregate of the one good update as it was.
struct RejectionCase {
  const char* name;
  ClientUpdate update;
  std::string reason;
};

TEST(RoundAggregator, EveryRejectionLeavesTheAggregateUnchanged) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<RejectionCase> cases = {
      {"stale", make_update(4, 2, 5, {1, 1, 1}), "client 4, round 3: stale update from round 2"},
      {"future", make_update(4, 4, 5, {1, 1, 1}), "client 4, round 3: update from future round 4"},
      {"negative id", make_update(-1, 3, 5, {1, 1, 1}),
       "client -1, round 3: client id outside [0, 10)"},
      {"id too large", make_update(10, 3, 5, {1, 1, 1}),
       "client 10, round 3: client id outside [0, 10)"},
      {"not sampled", make_update(6, 3, 5, {1, 1, 1}),
       "client 6, round 3: client was not sampled this round"},
      {"duplicate", make_update(1, 3, 5, {9, 9, 9}),
       "client 1, round 3: client already reported this round"},
      {"short", make_update(4, 3, 5, {1, 1}),
       "client 4, round 3: update has 2 values, the model has 3"},
      {"long", make_update(4, 3, 5, {1, 1, 1, 1}),
       "client 4, round 3: update has 4 values, the model has 3"},
      {"zero samples", make_update(4, 3, 0, {1, 1, 1}),
       "client 4, round 3: sample count 0 is not positive"},
      {"negative samples", make_update(4, 3, -2, {1, 1, 1}),
       "client 4, round 3: sample count -2 is not positive"},
      {"overflowing samples", make_update(4, 3, std::numeric_limits<int64_t>::max(), {1, 1, 1}),
       "client 4, round 3: sample count 9223372036854775807 overflows the round's total 2"},
      {"nan value", make_update(4, 3, 5, {1, nan, 1}), "client 4, round 3: update value 1 is nan"},
      {"infinite value", make_update(4, 3, 5, {1, 1, -inf}),
       "client 4, round 3: update value 2 is -inf"},
      {"nan loss", make_update(4, 3, 5, {1, 1, 1}, std::nan("")), "client 4, round 3: loss is nan"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    RoundAggregator agg(3, 10, 3, {1, 4, 8});
    ASSERT_FALSE(agg.add(make_update(1, 3, 2, {0.5f, -1.0f, 2.0f}, 0.25)));
    const auto reason = agg.add(c.update);
    ASSERT_TRUE(reason.has_value());
    EXPECT_EQ(*reason, c.reason);
    EXPECT_EQ(agg.rejected(), 1);
    EXPECT_EQ(agg.accepted(), 1);
    EXPECT_EQ(agg.samples(), 2);
    EXPECT_EQ(agg.accepted_clients(), std::vector<int64_t>{1});
    EXPECT_EQ(agg.mean_delta(), (std::vector<float>{0.5f, -1.0f, 2.0f}));
    EXPECT_DOUBLE_EQ(agg.mean_loss(), 0.25);
    // A good update after a rejection is still taken.
    EXPECT_FALSE(agg.add(make_update(8, 3, 2, {1.5f, 1.0f, 0.0f}, 0.75)));
    EXPECT_EQ(agg.mean_delta(), (std::vector<float>{1.0f, 0.0f, 1.0f}));
  }
}

TEST(RoundAggregator, RejectionsAreCounted) {
  RoundAggregator agg(0, 4, 1, {0, 1});
  EXPECT_TRUE(agg.add(make_update(2, 0, 1, {1})));
  EXPECT_TRUE(agg.add(make_update(0, 1, 1, {1})));
  EXPECT_FALSE(agg.add(make_update(0, 0, 1, {1})));
  EXPECT_TRUE(agg.add(make_update(0, 0, 1, {1})));
  EXPECT_EQ(agg.rejected(), 3);
  EXPECT_EQ(agg.accepted(), 1);
}

TEST(RoundAggregator, NothingAcceptedHasNoMean) {
  RoundAggregator agg(2, 4, 3, {0, 1});
  EXPECT_TRUE(agg.add(make_update(3, 2, 1, {1, 1, 1})));
  EXPECT_EQ(agg.samples(), 0);
  EXPECT_TRUE(agg.accepted_clients().empty());
  EXPECT_TRUE(std::isnan(agg.mean_loss()));
  testing::expect_usage_error([&] { (void)agg.mean_delta(); },
                              "round 2: no update was accepted (1 rejected), no mean delta");
}

TEST(RoundAggregator, EmptyModelAggregatesToEmpty) {
  RoundAggregator agg(0, 1, 0, {0});
  EXPECT_FALSE(agg.add(make_update(0, 0, 3, {})));
  EXPECT_TRUE(agg.mean_delta().empty());
}

TEST(RoundAggregator, RefusesABadSample) {
  testing::expect_usage_error(
      [] {
        RoundAggregator(1, 4, 3, {0, 4});
      },
      "RoundAggregator: round 1: sampled client 4 is outside [0, 4)");
  testing::expect_usage_error(
      [] {
        RoundAggregator(1, 4, 3, {2, 0, 2});
      },
      "RoundAggregator: round 1: client 2 is sampled twice");
  testing::expect_usage_error([] { RoundAggregator(-1, 4, 3, {}); },
                              "RoundAggregator: round -1, clients 4, model size 3 (expected round "
                              ">= 0, clients >= 1, model size >= 0)");
}

}  // namespace
}  // namespace dtrain::fl
