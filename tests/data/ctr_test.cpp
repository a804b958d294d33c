#include "data/ctr.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "core/error.h"
#include "testing/expect_error.h"

namespace dtrain::data {
namespace {

CtrOptions small_options() {
  CtrOptions o;
  o.fields = 4;
  o.vocabulary = 1000;
  o.zipf_exponent = 1.8;
  o.hash_buckets = 4096;
  o.train_samples = 2000;
  o.test_samples = 500;
  o.seed = 7;
  return o;
}

std::vector<float> features_of(const CtrSplit& split) {
  return split.samples.features().to_vector();
}

TEST(Ctr, SameSeedSameDataAndTheTrainingSetIgnoresTheTestSize) {
  const CtrOptions options = small_options();
  const CtrData a = make_ctr(options);
  const CtrData b = make_ctr(options);
  EXPECT_EQ(features_of(a.train), features_of(b.train));
  EXPECT_EQ(a.train.samples.labels(), b.train.samples.labels());
  EXPECT_EQ(a.train.click_probability, b.train.click_probability);
  EXPECT_EQ(features_of(a.test), features_of(b.test));
  EXPECT_EQ(a.test.samples.labels(), b.test.samples.labels());

  CtrOptions more_tests = options;
  more_tests.test_samples = 800;
  const CtrData c = make_ctr(more_tests);
  EXPECT_EQ(features_of(c.train), features_of(a.train));
  EXPECT_EQ(c.train.samples.labels(), a.train.samples.labels());
  // The training and test streams differ.
  const std::vector<float> train = features_of(a.train);
  EXPECT_NE(std::vector<float>(train.begin(), train.begin() + 500 * 4), features_of(a.test));

  CtrOptions other_seed = options;
  other_seed.seed = 8;
  EXPECT_NE(features_of(make_ctr(other_seed).train), features_of(a.train));
  EXPECT_NE(make_ctr_model(other_seed).weights, make_ctr_model(options).weights);
}

TEST(Ctr, FeaturesAreBucketsInRangeAndLabelsFollowTheGeneratingModel) {
  const CtrOptions options = small_options();
  const CtrData data = make_ctr(options);
  const CtrGeneratingModel model = make_ctr_model(options);
  ASSERT_EQ(model.weights.size(), 4096u);
  EXPECT_EQ(model.bias, options.bias);
  for (const CtrSplit* split : {&data.train, &data.test}) {
    const TensorDataset& s = split->samples;
    EXPECT_EQ(s.num_classes(), 2);
    EXPECT_EQ(s.sample_shape(), (Shape{4}));
    ASSERT_EQ(split->click_probability.size(), static_cast<size_t>(s.size()));
    const float* x = s.features().data();
    for (int64_t i = 0; i < s.size(); ++i) {
      double logit = model.bias;
      for (int64_t f = 0; f < 4; ++f) {
        const float bucket = x[i * 4 + f];
        ASSERT_EQ(bucket, std::floor(bucket)) << "sample " << i << " field " << f;
        ASSERT_GE(bucket, 0.0f);
        ASSERT_LT(bucket, 4096.0f);
        logit += model.weights[static_cast<size_t>(bucket)];
      }
      EXPECT_NEAR(split->click_probability[static_cast<size_t>(i)], 1.0 / (1.0 + std::exp(-logit)),
                  1e-6);
    }
  }
  EXPECT_EQ(data.train.samples.size(), 2000);
  EXPECT_EQ(data.test.samples.size(), 500);
}

TEST(Ctr, ClickRateMatchesTheMeanProbability) {
  CtrOptions options = small_options();
  options.train_samples = 50000;
  options.test_samples = 0;
  const CtrData data = make_ctr(options);
  double mean_p = 0.0, variance = 0.0;
  for (const float p : data.train.click_probability) {
    mean_p += p;
    variance += double(p) * (1.0 - double(p));
  }
  const double n = 50000.0;
  mean_p /= n;
  int64_t clicks = 0;
  for (const int64_t y : data.train.samples.labels()) clicks += y;
  // The labels are independent Bernoulli(p_i): their mean has standard
  // deviation sqrt(sum p_i (1 - p_i)) / n (about 0.002 here).
  const double stddev = std::sqrt(variance) / n;
  EXPECT_NEAR(double(clicks) / n, mean_p, 5.0 * stddev);
  // The default bias and spread give a realistic click rate.
  EXPECT_GT(mean_p, 0.1);
  EXPECT_LT(mean_p, 0.3);
  EXPECT_EQ(data.test.samples.size(), 0);
}

TEST(Ctr, RawIdsFollowTheZipfDistribution) {
  CtrOptions options = small_options();
  options.fields = 1;
  options.hash_buckets = 1 << 20;  // few collisions among 1000 ids
  options.train_samples = 40000;
  const CtrData data = make_ctr(options);
  double normaliser = 0.0;
  for (int k = 1; k <= 1000; ++k) normaliser += std::pow(double(k), -1.8);
  const float* x = data.train.samples.features().data();
  for (const uint64_t id : {0, 1, 4}) {
    const auto bucket = static_cast<float>(ctr_hash(0, id) % (1 << 20));
    int64_t count = 0;
    for (int64_t i = 0; i < 40000; ++i) count += x[i] == bucket ? 1 : 0;
    const double p = std::pow(double(id + 1), -1.8) / normaliser;
    const double stddev = std::sqrt(40000.0 * p * (1.0 - p));
    EXPECT_NEAR(double(count), 40000.0 * p, 5.0 * stddev) << "id " << id;
  }
}

TEST(Ctr, HashIsTheDocumentedFormulaAndSpreadsIds) {
  // Pinned values of mix64(mix64((field + 1) * 0x9E3779B97F4A7C15) + id):
  // changing the hash changes every generated data set.
  EXPECT_EQ(ctr_hash(0, 0), 0x48218226ff3cd4bfULL);
  EXPECT_EQ(ctr_hash(3, 12345), 0xcea4f2f7eecefd6fULL);

  // 8 fields x 16384 ids into 1024 buckets: about 128 per bucket. Pearson's
  // chi-square with 1023 degrees of freedom has mean 1023 and standard
  // deviation 45; a poor hash (ids mod 1024, or fields colliding) is far out.
  constexpr int kFields = 8, kIds = 16384, kBuckets = 1024;
  std::vector<int64_t> counts(kBuckets, 0);
  std::set<uint64_t> hashes;
  int64_t same_bucket_across_fields = 0;
  for (int f = 0; f < kFields; ++f) {
    for (uint64_t id = 0; id < kIds; ++id) {
      const uint64_t h = ctr_hash(static_cast<uint64_t>(f), id);
      hashes.insert(h);
      ++counts[h % kBuckets];
      if (f == 1 && h % kBuckets == ctr_hash(0, id) % kBuckets) ++same_bucket_across_fields;
    }
  }
  EXPECT_EQ(hashes.size(), static_cast<size_t>(kFields * kIds));
  const double expected = double(kFields) * kIds / kBuckets;
  double chi_square = 0.0;
  for (const int64_t c : counts)
    chi_square += (double(c) - expected) * (double(c) - expected) / expected;
  EXPECT_LT(chi_square, 1023.0 + 6.0 * 45.0);
  EXPECT_GT(chi_square, 1023.0 - 6.0 * 45.0);
  // The same id in two fields lands in the same bucket by chance only (1/1024).
  EXPECT_LT(same_bucket_across_fields, kIds / 200);
}

TEST(Ctr, OptionsOutOfRange) {
  CtrOptions o = small_options();
  o.hash_buckets = (1 << 24) + 1;
  testing::expect_usage_error([&] { make_ctr(o); },
                              "ctr data: hash_buckets = 16777217 is out of range: needs 1 to 2^24 "
                              "(16777216) buckets, the integers float32 features hold exactly");
  o = small_options();
  o.fields = 0;
  testing::expect_usage_error([&] { check_ctr_options(o); },
                              "ctr data: fields = 0 is out of range: needs at least 1");
  o = small_options();
  o.zipf_exponent = 0.0;
  EXPECT_THROW(make_ctr(o), UsageError);
  o = small_options();
  o.vocabulary = (int64_t{1} << 26) + 1;
  EXPECT_THROW(make_ctr(o), UsageError);
  o = small_options();
  o.train_samples = 0;
  EXPECT_THROW(make_ctr(o), UsageError);
  o = small_options();
  o.weight_stddev = -1.0;
  EXPECT_THROW(make_ctr_model(o), UsageError);
}

}  // namespace
}  // namespace dtrain::data
