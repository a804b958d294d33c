#include "data/partition.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "data/sampler.h"

namespace dtrain::data {
namespace {

using Parts = std::vector<std::vector<int64_t>>;

const char* const kKinds[] = {"iid", "label", "dirichlet", "quantity", "shards"};

// Labels with unequal class sizes: sample i has class (i * i) % num_classes
// on the even samples and i % num_classes on the odd ones.
std::vector<int64_t> uneven_labels(int64_t n, int64_t num_classes) {
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < n; ++i) {
    labels.push_back(i % 2 == 0 ? (i * i) % num_classes : i % num_classes);
  }
  return labels;
}

std::vector<int64_t> balanced_labels(int64_t n, int64_t num_classes) {
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < n; ++i) labels.push_back(i % num_classes);
  return labels;
}

PartitionOptions options_for(const std::string& kind, int64_t workers, uint64_t seed) {
  PartitionOptions options;
  options.kind = kind;
  options.workers = workers;
  options.seed = seed;
  options.classes_per_worker = 2;
  options.alpha = 0.5;
  options.quantity_sigma = 1.0;
  return options;
}

void expect_exact_cover(const Parts& parts, int64_t n, const std::string& what) {
  std::vector<int> seen(static_cast<size_t>(n), 0);
  for (const auto& part : parts) {
    EXPECT_TRUE(std::is_sorted(part.begin(), part.end())) << what;
    for (const int64_t i : part) {
      ASSERT_GE(i, 0) << what;
      ASSERT_LT(i, n) << what;
      ++seen[static_cast<size_t>(i)];
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(seen[static_cast<size_t>(i)], 1) << what << ": index " << i;
  }
}

// Mean over non-empty workers of the total-variation distance between the
// worker's label distribution and the global one.
double mean_tv_distance(const Parts& parts, const std::vector<int64_t>& labels,
                        int64_t num_classes) {
  const Parts histogram = label_histogram(parts, labels, num_classes);
  std::vector<double> global(static_cast<size_t>(num_classes), 0.0);
  for (const int64_t label : labels) global[static_cast<size_t>(label)] += 1.0;
  for (auto& g : global) g /= static_cast<double>(labels.size());
  double sum = 0.0;
  int workers = 0;
  for (const auto& row : histogram) {
    int64_t size = 0;
    for (const int64_t count : row) size += count;
    if (size == 0) continue;
    double tv = 0.0;
    for (size_t c = 0; c < row.size(); ++c) {
      tv += std::abs(static_cast<double>(row[c]) / static_cast<double>(size) - global[c]);
    }
    sum += tv / 2.0;
    ++workers;
  }
  return sum / workers;
}

TEST(Partition, EveryKindCoversEachIndexExactlyOnce) {
  const int64_t num_classes = 5;
  for (const char* kind : kKinds) {
    for (const int64_t n : {0, 1, 3, 7, 10, 101, 1000}) {
      for (const int64_t workers : {1, 2, 3, 4, 5, 8, 16}) {
        const std::vector<int64_t> labels = uneven_labels(n, num_classes);
        const std::string what =
            std::string(kind) + " n " + std::to_string(n) + " workers " + std::to_string(workers);
        PartitionOptions options = options_for(kind, workers, 7);
        // "label" needs workers * classes_per_worker >= the classes present.
        options.classes_per_worker = workers >= 3 ? 2 : num_classes;
        const Parts parts = partition(labels, num_classes, options);
        ASSERT_EQ(static_cast<int64_t>(parts.size()), workers) << what;
        expect_exact_cover(parts, n, what);
      }
    }
  }
}

TEST(Partition, SameSeedSamePartitionOtherSeedOtherPartition) {
  const std::vector<int64_t> labels = uneven_labels(500, 10);
  for (const char* kind : kKinds) {
    const Parts a = partition(labels, 10, options_for(kind, 6, 11));
    const Parts b = partition(labels, 10, options_for(kind, 6, 11));
    const Parts c = partition(labels, 10, options_for(kind, 6, 12));
    EXPECT_EQ(a, b) << kind;
    EXPECT_NE(a, c) << kind;
  }
}

TEST(Partition, IidSizesDifferByAtMostOneAndMatchTheSampler) {
  for (const int64_t n : {0, 2, 9, 100, 1001}) {
    for (const int64_t workers : {1, 3, 4, 7, 13}) {
      const Parts parts = partition(uneven_labels(n, 3), 3, options_for("iid", workers, 5));
      size_t smallest = parts[0].size(), largest = parts[0].size();
      for (const auto& part : parts) {
        smallest = std::min(smallest, part.size());
        largest = std::max(largest, part.size());
      }
      EXPECT_LE(largest - smallest, 1u) << "n " << n << " workers " << workers;
      for (int64_t w = 0; w < workers; ++w) {
        std::vector<int64_t> shard = ShardedSampler({n, workers, w, true, 5}).epoch_indices(0);
        std::sort(shard.begin(), shard.end());
        EXPECT_EQ(parts[static_cast<size_t>(w)], shard) << "n " << n << " worker " << w;
      }
    }
  }
}

TEST(Partition, LabelGivesEachWorkerAtMostClassesPerWorkerClasses) {
  for (const int64_t num_classes : {2, 5, 10}) {
    for (const int64_t per_worker : {1, 2, 3}) {
      if (per_worker > num_classes) continue;
      for (const int64_t workers : {10, 11, 20}) {
        const std::vector<int64_t> labels = uneven_labels(1000, num_classes);
        PartitionOptions options = options_for("label", workers, 3);
        options.classes_per_worker = per_worker;
        const Parts parts = partition(labels, num_classes, options);
        expect_exact_cover(parts, 1000, "label");
        const Parts histogram = label_histogram(parts, labels, num_classes);
        for (const auto& row : histogram) {
          const auto classes =
              std::count_if(row.begin(), row.end(), [](int64_t k) { return k > 0; });
          EXPECT_LE(classes, per_worker) << "classes " << num_classes << " workers " << workers;
          EXPECT_GE(classes, 1);
        }
      }
    }
  }
}

TEST(Partition, LabelOnBalancedClassesGivesEqualWorkers) {
  // 10 classes of 100, 20 workers x 2 shards: 4 shards of 25 per class.
  const std::vector<int64_t> labels = balanced_labels(1000, 10);
  const Parts parts = partition(labels, 10, options_for("label", 20, 9));
  for (const auto& part : parts) EXPECT_EQ(part.size(), 50u);
}

TEST(Partition, LabelWithOneClassPerWorkerIsPathological) {
  const std::vector<int64_t> labels = balanced_labels(100, 10);
  PartitionOptions options = options_for("label", 10, 1);
  options.classes_per_worker = 1;
  const Parts histogram = label_histogram(partition(labels, 10, options), labels, 10);
  std::vector<int> owners(10, 0);
  for (const auto& row : histogram) {
    for (size_t c = 0; c < row.size(); ++c) {
      if (row[c] > 0) {
        EXPECT_EQ(row[c], 10);
        ++owners[c];
      }
    }
  }
  for (const int owner_count : owners) EXPECT_EQ(owner_count, 1);
}

TEST(Partition, DirichletSmallAlphaIsSkewedLargeAlphaIsNearIid) {
  // 10 balanced classes over 10 workers. With alpha = 100 each worker's share
  // of a class is ~0.1 +- 0.0095, so its TV distance to the global
  // distribution is ~0.03; with alpha = 0.1 most of a class lands on one or
  // two workers and the distance is ~0.6. An IID split gives 0, a sampler
  // that ignored alpha would fail one side.
  const std::vector<int64_t> labels = balanced_labels(20000, 10);
  for (const uint64_t seed : {1, 2, 3}) {
    PartitionOptions options = options_for("dirichlet", 10, seed);
    options.alpha = 0.1;
    const double skewed = mean_tv_distance(partition(labels, 10, options), labels, 10);
    options.alpha = 100.0;
    const double near_iid = mean_tv_distance(partition(labels, 10, options), labels, 10);
    options.alpha = 1.0;
    const double middle = mean_tv_distance(partition(labels, 10, options), labels, 10);
    EXPECT_GT(skewed, 0.45) << "seed " << seed;
    EXPECT_LT(near_iid, 0.06) << "seed " << seed;
    EXPECT_GT(near_iid, 0.01) << "seed " << seed;
    EXPECT_GT(middle, near_iid) << "seed " << seed;
    EXPECT_LT(middle, skewed) << "seed " << seed;
  }
}

TEST(Partition, DirichletTinyAlphaStillCoversEveryIndex) {
  const std::vector<int64_t> labels = uneven_labels(300, 4);
  for (const double alpha : {1e-3, 1e-6}) {
    for (const int64_t workers : {1, 2, 9}) {
      PartitionOptions options = options_for("dirichlet", workers, 4);
      options.alpha = alpha;
      expect_exact_cover(partition(labels, 4, options), 300, "tiny alpha");
    }
  }
}

TEST(Partition, GammaSamplerMatchesMeanAndVariance) {
  // Gamma(k, 1): mean k, variance k, excess kurtosis 6 / k. The sample mean
  // has standard error sqrt(k / N); the sample variance sqrt(k^2 (2 + 6 / k) / N).
  // Five standard errors: fails about once in 10^6 runs for a correct sampler.
  const int draws = 200000;
  for (const double shape : {0.3, 1.0, 5.0}) {
    Rng rng(99);
    double sum = 0.0, sum_sq = 0.0;
    for (int i = 0; i < draws; ++i) {
      const double x = sample_gamma(rng, shape);
      ASSERT_GE(x, 0.0);
      sum += x;
      sum_sq += x * x;
    }
    const double mean = sum / draws;
    const double variance = sum_sq / draws - mean * mean;
    const double mean_se = std::sqrt(shape / draws);
    const double variance_se = std::sqrt(shape * shape * (2.0 + 6.0 / shape) / draws);
    EXPECT_NEAR(mean, shape, 5 * mean_se) << "shape " << shape;
    EXPECT_NEAR(variance, shape, 5 * variance_se) << "shape " << shape;
  }
}

TEST(Partition, DirichletDrawSumsToOne) {
  Rng rng(8);
  for (const double alpha : {1e-8, 0.1, 1.0, 50.0}) {
    for (const int64_t k : {1, 2, 10}) {
      const std::vector<double> p = sample_dirichlet(rng, k, alpha);
      double sum = 0.0;
      for (const double v : p) {
        EXPECT_GE(v, 0.0);
        sum += v;
      }
      EXPECT_NEAR(sum, 1.0, 1e-12);
    }
  }
}

TEST(Partition, QuantitySizesHaveTheLognormalSpread) {
  // Sizes are proportional to exp(sigma z), so the standard deviation of
  // log(size) is sigma, up to rounding (sizes are ~1000 here) and the sample
  // error sigma / sqrt(2 W) ~ 0.02.
  const int64_t workers = 1000;
  const std::vector<int64_t> labels = balanced_labels(1000000, 10);
  for (const double sigma : {0.5, 1.0}) {
    PartitionOptions options = options_for("quantity", workers, 17);
    options.quantity_sigma = sigma;
    const Parts parts = partition(labels, 10, options);
    double sum = 0.0, sum_sq = 0.0;
    for (const auto& part : parts) {
      ASSERT_GE(part.size(), 1u);
      const double l = std::log(static_cast<double>(part.size()));
      sum += l;
      sum_sq += l * l;
    }
    const double mean = sum / workers;
    const double spread = std::sqrt(sum_sq / workers - mean * mean);
    EXPECT_NEAR(spread, sigma, 0.1) << "sigma " << sigma;
  }
  PartitionOptions equal = options_for("quantity", 7, 1);
  equal.quantity_sigma = 0.0;
  for (const auto& part : partition(balanced_labels(70, 10), 10, equal)) {
    EXPECT_EQ(part.size(), 10u);
  }
}

TEST(Partition, QuantityGivesEveryWorkerASampleWhenThereAreEnough) {
  PartitionOptions options = options_for("quantity", 50, 2);
  options.quantity_sigma = 3.0;
  for (const int64_t n : {50, 51, 120}) {
    for (const auto& part : partition(balanced_labels(n, 3), 3, options)) {
      EXPECT_GE(part.size(), 1u) << "n " << n;
    }
  }
}

template <typename ErrorType>
std::string message_of(const std::vector<int64_t>& labels, int64_t num_classes,
                       const PartitionOptions& options) {
  try {
    partition(labels, num_classes, options);
  } catch (const ErrorType& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Partition, BadOptionsGiveExactMessages) {
  const std::vector<int64_t> labels = balanced_labels(20, 10);
  PartitionOptions options = options_for("fedavg", 4, 0);
  EXPECT_EQ(message_of<ConfigError>(labels, 10, options),
            "partition: unknown kind 'fedavg' (known: iid, label, dirichlet, quantity, shards)");

  options = options_for("iid", 0, 0);
  EXPECT_EQ(message_of<ConfigError>(labels, 10, options), "partition: workers must be >= 1, got 0");

  options = options_for("label", 4, 0);
  options.classes_per_worker = 11;
  EXPECT_EQ(message_of<ConfigError>(labels, 10, options),
            "partition 'label': classes_per_worker must be in [1, num_classes = 10], got 11");
  options.classes_per_worker = 0;
  EXPECT_EQ(message_of<ConfigError>(labels, 10, options),
            "partition 'label': classes_per_worker must be in [1, num_classes = 10], got 0");
  options.classes_per_worker = 2;
  EXPECT_EQ(message_of<ConfigError>(labels, 10, options),
            "partition 'label': workers * classes_per_worker = 8 shards cannot cover the 10 "
            "classes present; raise workers or classes_per_worker");

  options = options_for("dirichlet", 4, 0);
  options.alpha = 0.0;
  EXPECT_EQ(message_of<ConfigError>(labels, 10, options),
            "partition 'dirichlet': alpha must be > 0 and finite, got 0");
  options.alpha = -0.5;
  EXPECT_EQ(message_of<ConfigError>(labels, 10, options),
            "partition 'dirichlet': alpha must be > 0 and finite, got -0.5");

  options = options_for("quantity", 4, 0);
  options.quantity_sigma = -1.0;
  EXPECT_EQ(message_of<ConfigError>(labels, 10, options),
            "partition 'quantity': quantity_sigma must be >= 0 and finite, got -1");

  options = options_for("shards", 4, 0);
  options.shards_per_worker = 0;
  EXPECT_EQ(message_of<ConfigError>(labels, 10, options),
            "partition 'shards': shards_per_worker must be >= 1, got 0");

  options = options_for("iid", 2, 0);
  EXPECT_EQ(message_of<UsageError>({0, 3, 1}, 3, options),
            "partition: label 3 of sample 1 is outside [0, 3)");
  EXPECT_EQ(message_of<UsageError>({0}, 0, options), "partition: num_classes must be >= 1, got 0");
}

// The FedAvg paper's MNIST split in miniature: 10 balanced classes of 120
// samples (labels interleaved, so sorting matters), 20 workers x 2 shards of
// 30: no shard straddles two labels, so every worker holds at most 2 labels
// and exactly 60 samples.
TEST(Partition, ShardsGiveEqualPartsOfAtMostShardsPerWorkerLabels) {
  const std::vector<int64_t> labels = balanced_labels(1200, 10);
  PartitionOptions options = options_for("shards", 20, 3);
  options.shards_per_worker = 2;
  const Parts parts = partition(labels, 10, options);
  ASSERT_EQ(parts.size(), 20u);
  expect_exact_cover(parts, 1200, "shards");
  int two_label_workers = 0;
  for (const auto& row : label_histogram(parts, labels, 10)) {
    int64_t size = 0, present = 0;
    for (const int64_t count : row) {
      size += count;
      present += count > 0 ? 1 : 0;
      // A shard is 30 samples of one label: counts are multiples of 30.
      EXPECT_EQ(count % 30, 0);
    }
    EXPECT_EQ(size, 60);
    EXPECT_GE(present, 1);
    EXPECT_LE(present, 2);
    two_label_workers += present == 2 ? 1 : 0;
  }
  // Most workers draw two different labels (the odds of a same-label pair
  // are 1/19 per worker; seed 3 is fixed, so this is a check of the deal,
  // not a statistical test).
  EXPECT_GE(two_label_workers, 15);

  options.shards_per_worker = 3;
  options.workers = 10;  // 30 shards of 40: still one label each.
  for (const auto& row : label_histogram(partition(labels, 10, options), labels, 10)) {
    int64_t size = 0, present = 0;
    for (const int64_t count : row) {
      size += count;
      present += count > 0 ? 1 : 0;
    }
    EXPECT_EQ(size, 120);
    EXPECT_LE(present, 3);
  }
}

// The shards are cuts of the label-sorted order (stable: ties by index), so
// each worker's part is a union of shards_per_worker runs of that order.
TEST(Partition, ShardsAreRunsOfTheStablyLabelSortedOrder) {
  const std::vector<int64_t> labels = uneven_labels(103, 4);
  std::vector<int64_t> order(labels.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return labels[size_t(a)] < labels[size_t(b)]; });
  std::vector<std::vector<int64_t>> shards;
  for (int64_t s = 0; s < 10; ++s) {
    const ShardRange r = shard_range(103, 10, s);
    std::vector<int64_t> shard(order.begin() + r.begin, order.begin() + r.end);
    std::sort(shard.begin(), shard.end());
    shards.push_back(shard);
  }
  PartitionOptions options = options_for("shards", 5, 9);
  const Parts parts = partition(labels, 4, options);
  expect_exact_cover(parts, 103, "shards uneven");
  std::vector<int> used(shards.size(), 0);
  for (const auto& part : parts) {
    // Sizes: 103 = 10 x 10 + 3, so shards are 11 or 10 samples.
    EXPECT_GE(part.size(), 20u);
    EXPECT_LE(part.size(), 22u);
    int found = 0;
    for (size_t s = 0; s < shards.size(); ++s) {
      if (std::includes(part.begin(), part.end(), shards[s].begin(), shards[s].end())) {
        ++used[s];
        ++found;
      }
    }
    EXPECT_EQ(found, 2);
  }
  for (const int u : used) EXPECT_EQ(u, 1);
}

TEST(Partition, ShardsWithFewerSamplesThanShardsLeaveSomeWorkersEmpty) {
  PartitionOptions options = options_for("shards", 4, 1);
  const Parts parts = partition(balanced_labels(5, 2), 2, options);
  expect_exact_cover(parts, 5, "shards n 5");
  size_t total = 0;
  for (const auto& part : parts) {
    EXPECT_LE(part.size(), 2u);
    total += part.size();
  }
  EXPECT_EQ(total, 5u);
}

TEST(Partition, OptionsOfOtherKindsAreNotChecked) {
  PartitionOptions options = options_for("iid", 2, 0);
  options.alpha = -1.0;
  options.classes_per_worker = 99;
  options.quantity_sigma = -1.0;
  options.shards_per_worker = 0;
  EXPECT_NO_THROW(partition(balanced_labels(10, 2), 2, options));
}

TEST(Partition, LabelHistogramCountsAndRejectsBadIndices) {
  const std::vector<int64_t> labels{0, 1, 1, 2, 0};
  const Parts parts{{0, 1}, {2, 3, 4}, {}};
  const Parts expected{{1, 1, 0}, {1, 1, 1}, {0, 0, 0}};
  EXPECT_EQ(label_histogram(parts, labels, 3), expected);
  const Parts bad{{0, 5}};
  try {
    label_histogram(bad, labels, 3);
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), "label_histogram: worker 0 holds index 5, outside [0, 5)");
  }
}

TEST(Partition, FormatHistogramExactOutput) {
  const Parts histogram{{3, 0, 12}, {0, 150, 1}};
  EXPECT_EQ(format_histogram(histogram),
            "worker  c0   c1  c2  total\n"
            "     0   3    0  12     15\n"
            "     1   0  150   1    151\n"
            " total   3  150  13    166\n");
  EXPECT_EQ(format_histogram({}), "worker  total\n total      0\n");
  EXPECT_THROW(format_histogram({{1, 2}, {3}}), UsageError);
}

}  // namespace
}  // namespace dtrain::data
