#include "train/metrics.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/rng.h"
#include "nn/linear.h"
#include "testing/expect_error.h"

namespace dtrain::train {
namespace {

double auc(const std::vector<float>& scores, const std::vector<int64_t>& labels) {
  return roc_auc(scores, labels);
}

// The definition: over all (positive, negative) pairs, 1 when the positive
// scores higher, 1/2 on a tie.
double pair_count_auc(const std::vector<float>& scores, const std::vector<int64_t>& labels) {
  double wins = 0.0;
  int64_t pairs = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    if (labels[i] != 1) continue;
    for (size_t j = 0; j < scores.size(); ++j) {
      if (labels[j] != 0) continue;
      ++pairs;
      wins += scores[i] > scores[j] ? 1.0 : (scores[i] == scores[j] ? 0.5 : 0.0);
    }
  }
  return wins / double(pairs);
}

// Scores and labels as fixed arrays: with GCC 12.2 at -O3 -march=native
// (AVX-512), std::vector<int64_t>{1, 1, 0, 0} built from a braced list in
// this test was miscompiled to {1, 1, 1, 1} (SLP vectorizer).
template <size_t N>
double auc_of(const std::array<float, N>& scores, const std::array<int64_t, N>& labels) {
  return roc_auc(scores, labels);
}

TEST(RocAuc, HandComputedCases) {
  EXPECT_EQ(auc_of<4>({0.1f, 0.2f, 0.8f, 0.9f}, {0, 0, 1, 1}), 1.0);
  EXPECT_EQ(auc_of<4>({0.1f, 0.2f, 0.8f, 0.9f}, {1, 1, 0, 0}), 0.0);
  // Pairs (pos, neg): (0.35, 0.1) win, (0.35, 0.4) loss, (0.8, *) two wins: 3/4.
  EXPECT_EQ(auc_of<4>({0.1f, 0.4f, 0.35f, 0.8f}, {0, 0, 1, 1}), 0.75);
  // The order of the samples does not matter.
  EXPECT_EQ(auc_of<4>({0.8f, 0.35f, 0.4f, 0.1f}, {1, 1, 0, 0}), 0.75);
  // Every score tied: each pair counts one half.
  EXPECT_EQ(auc_of<5>({0.3f, 0.3f, 0.3f, 0.3f, 0.3f}, {0, 1, 0, 1, 1}), 0.5);
  // Ties between classes: positive 0.5 ties both negatives (1/2 + 1/2),
  // positive 0.9 beats both: 3/4.
  EXPECT_EQ(auc_of<4>({0.5f, 0.5f, 0.5f, 0.9f}, {0, 1, 0, 1}), 0.75);
  // A tie only among positives changes nothing.
  EXPECT_EQ(auc_of<3>({0.2f, 0.7f, 0.7f}, {0, 1, 1}), 1.0);
}

TEST(RocAuc, MatchesThePairCountOnRandomScoresWithTies) {
  Rng rng(5);
  for (const int n : {2, 7, 100, 801}) {
    std::vector<float> scores(static_cast<size_t>(n));
    std::vector<int64_t> labels(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      // 16 levels: many ties within and across classes.
      scores[static_cast<size_t>(i)] = static_cast<float>(rng.below(16)) / 16.0f;
      labels[static_cast<size_t>(i)] = i < 1 ? 0 : (i < 2 ? 1 : static_cast<int64_t>(rng.below(2)));
    }
    EXPECT_NEAR(auc(scores, labels), pair_count_auc(scores, labels), 1e-12) << n << " samples";
  }
}

TEST(RocAuc, RejectsWhatHasNoAuc) {
  testing::expect_usage_error([] { auc({0.1f, 0.2f}, {0}); }, "roc_auc: 2 scores but 1 labels");
  testing::expect_usage_error(
      [] {
        auc({0.1f, 0.2f}, {0, 2});
      },
      "roc_auc: label 2 of sample 1 is not 0 or 1");
  testing::expect_usage_error(
      [] {
        auc({0.1f, 0.2f, 0.3f}, {1, 1, 1});
      },
      "roc_auc: undefined without both classes: 3 positive and 0 negative samples");
  testing::expect_usage_error(
      [] { auc({}, {}); },
      "roc_auc: undefined without both classes: 0 positive and 0 negative samples");
  testing::expect_usage_error(
      [] {
        auc({0.1f, std::numeric_limits<float>::quiet_NaN()}, {0, 1});
      },
      "roc_auc: score of sample 1 is NaN");
}

TEST(PositiveClassProbability, IsTheSoftmaxOfTheSecondLogitAndKeepsTheMode) {
  Rng rng(3);
  nn::Linear linear(3, 2, rng);
  linear.train();
  const Tensor x =
      Tensor::from_vector({1, 2, 3, -1, 0, 2, 0.5f, 0.5f, -4, 2, 2, 2, 0, 0, 0}, {5, 3});
  const data::TensorDataset data(x, {0, 1, 0, 1, 1}, 2);
  const std::vector<float> p = positive_class_probability(linear, data, 2);  // batches 2, 2, 1
  ASSERT_EQ(p.size(), 5u);
  const float* w = linear.weight().data().data();
  const float* b = linear.bias().data().data();
  for (int64_t i = 0; i < 5; ++i) {
    double logit[2];
    for (int k = 0; k < 2; ++k) {
      logit[k] = b[k];
      for (int j = 0; j < 3; ++j) logit[k] += double(w[k * 3 + j]) * x.data()[i * 3 + j];
    }
    EXPECT_NEAR(p[static_cast<size_t>(i)], 1.0 / (1.0 + std::exp(logit[0] - logit[1])), 1e-6) << i;
  }
  EXPECT_TRUE(linear.is_training());

  nn::Linear three(3, 3, rng);
  three.eval();
  testing::expect_usage_error([&] { positive_class_probability(three, data, 4); },
                              "positive_class_probability: linear returns (4, 3) for a batch of 4, "
                              "not two class logits (4, 2)");
  EXPECT_FALSE(three.is_training());
  EXPECT_THROW(positive_class_probability(linear, data, 0), UsageError);
}

}  // namespace
}  // namespace dtrain::train
