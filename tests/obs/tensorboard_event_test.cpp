#include "obs/tensorboard_event.h"

#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/rng.h"

namespace dtrain::obs {
namespace {

std::string bytes(std::vector<unsigned char> v) { return {v.begin(), v.end()}; }

TEST(TensorboardEvent, ScalarEventBytes) {
  // Event { wall_time: 1.5, step: 300, summary { value { tag: "train/loss",
  // simple_value: 0.5 } } }, encoded by hand.
  const std::string expected = bytes({
      0x09, 0,    0,    0,   0,    0,   0,   0xf8, 0x3f,                 // 1: wall_time, double 1.5
      0x10, 0xac, 0x02,                                                  // 2: step, varint 300
      0x2a, 0x13,                                                        // 5: summary, 19 bytes
      0x0a, 0x11,                                                        //   1: value, 17 bytes
      0x0a, 0x0a, 't',  'r', 'a',  'i', 'n', '/',  'l',  'o', 's', 's',  // 1: tag
      0x15, 0,    0,    0,   0x3f,                                       // 2: simple_value 0.5f
  });
  EXPECT_EQ(encode_scalar_event("train/loss", 0.5f, 300, 1.5), expected);
}

TEST(TensorboardEvent, ZeroStepIsLeftOutButAZeroValueIsWritten) {
  // proto3 leaves a zero step out; simple_value is a oneof member, always written.
  const std::string expected = bytes({
      0x09, 0,    0,    0,    0, 0, 0, 0xf0, 0x3f,  // wall_time 1.0
      0x2a, 0x0a, 0x0a, 0x08,                       // summary, value
      0x0a, 0x01, 'x',                              // tag "x"
      0x15, 0,    0,    0,    0,                    // simple_value 0
  });
  EXPECT_EQ(encode_scalar_event("x", 0.0f, 0, 1.0), expected);
}

TEST(TensorboardEvent, FileVersionEventBytes) {
  const std::string expected = bytes({
      0x09, 0,    0,   0,   0,   0,   0,   0x00, 0x40,  // wall_time 2.0
      0x1a, 0x0d, 'b', 'r', 'a', 'i', 'n', '.',  'E',  'v', 'e', 'n', 't', ':', '2',
  });
  EXPECT_EQ(encode_file_version_event(2.0), expected);
}

TEST(TensorboardEvent, DefaultBucketLimitsAreTensorFlows) {
  const std::vector<double>& limits = default_bucket_limits();
  // 1e-12 * 1.1^k for k = 0..773 (below 1e20) and DBL_MAX, their negatives, and 0.
  ASSERT_EQ(limits.size(), 1551u);
  EXPECT_EQ(limits.front(), -DBL_MAX);
  EXPECT_EQ(limits.back(), DBL_MAX);
  EXPECT_EQ(limits[775], 0.0);
  EXPECT_EQ(limits[776], 1e-12);
  EXPECT_EQ(limits[774], -1e-12);
  EXPECT_LT(limits[1549], 1e20);
  EXPECT_GE(limits[1549] * 1.1, 1e20);
  for (size_t i = 1; i < limits.size(); ++i) ASSERT_LT(limits[i - 1], limits[i]) << i;
}

TEST(TensorboardEvent, HistogramInvariants) {
  Rng rng(11);
  std::vector<float> values(1000);
  for (float& v : values) v = 0.1f * rng.normal();
  values[3] = 0.0f;
  values[4] = std::numeric_limits<float>::quiet_NaN();  // not counted
  values[5] = std::numeric_limits<float>::infinity();   // not counted
  values[6] = 1e30f;
  const Histogram h = make_histogram(values);

  double min = DBL_MAX, max = -DBL_MAX, sum = 0, sum_squares = 0;
  std::vector<double> finite;
  for (const float f : values) {
    if (!std::isfinite(f)) continue;
    finite.push_back(f);
    min = std::min(min, double(f));
    max = std::max(max, double(f));
    sum += f;
    sum_squares += double(f) * double(f);
  }
  EXPECT_EQ(h.num, 998.0);
  EXPECT_EQ(h.min, min);
  EXPECT_EQ(h.max, max);
  EXPECT_DOUBLE_EQ(h.sum, sum);
  EXPECT_DOUBLE_EQ(h.sum_squares, sum_squares);

  ASSERT_EQ(h.bucket.size(), h.bucket_limit.size());
  ASSERT_FALSE(h.bucket.empty());
  EXPECT_LE(h.bucket.size(), 2 * finite.size() + 1);
  EXPECT_EQ(h.bucket_limit.back(), DBL_MAX);
  double total = 0;
  for (size_t i = 0; i < h.bucket.size(); ++i) {
    total += h.bucket[i];
    if (i == 0) continue;
    EXPECT_LT(h.bucket_limit[i - 1], h.bucket_limit[i]) << i;
    EXPECT_FALSE(h.bucket[i - 1] == 0.0 && h.bucket[i] == 0.0) << "uncollapsed " << i;
  }
  EXPECT_EQ(total, h.num);
  // Every value lies in exactly the bucket [limit[i-1], limit[i]) that counts it.
  std::vector<double> recount(h.bucket.size(), 0.0);
  for (const double v : finite) {
    size_t i = 0;
    while (!(v < h.bucket_limit[i])) ++i;
    recount[i] += 1.0;
  }
  EXPECT_EQ(recount, h.bucket);
  // 1e30 sits alone in the last bucket, (1e20·1.1^k, DBL_MAX).
  EXPECT_EQ(h.bucket.back(), 1.0);
}

TEST(TensorboardEvent, HistogramOfNothing) {
  const Histogram h = make_histogram({});
  EXPECT_EQ(h.num, 0.0);
  EXPECT_EQ(h.min, 0.0);
  EXPECT_EQ(h.max, 0.0);
  ASSERT_EQ(h.bucket.size(), 1u);  // the one collapsed empty run
  EXPECT_EQ(h.bucket[0], 0.0);
  EXPECT_EQ(h.bucket_limit[0], DBL_MAX);
}

TEST(TensorboardEvent, HistogramEventBytes) {
  const float values[] = {2.0f};
  const Histogram h = make_histogram(values);
  // Three buckets: the empty run up to 2's lower limit, 2's own, the empty rest.
  ASSERT_EQ(h.bucket.size(), 3u);
  EXPECT_EQ(h.bucket, (std::vector<double>{0.0, 1.0, 0.0}));
  EXPECT_LE(h.bucket_limit[0], 2.0);
  EXPECT_GT(h.bucket_limit[1], 2.0);
  const std::string event = encode_histogram_event("w", h, 1, 0.0);
  // No wall_time (0), step 1, summary { value { tag "w", histo {...} } }:
  // histo = min, max, num, sum, sum_squares (5 × 9 bytes) + 2 × (2 + 24).
  const size_t histo = 5 * 9 + 2 * (2 + 24);
  const size_t value = 3 + 2 + histo;
  ASSERT_EQ(event.size(), 2 + 2 + 2 + value);
  EXPECT_EQ(event.substr(0, 10),
            bytes({0x10, 0x01, 0x2a, 0x68, 0x0a, 0x66, 0x0a, 0x01, 'w', 0x2a}));
  EXPECT_EQ(static_cast<unsigned char>(event[10]), histo);
  // min = 2.0 (field 1), then max = 2.0 (field 2).
  EXPECT_EQ(event.substr(11, 18),
            bytes({0x09, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x11, 0, 0, 0, 0, 0, 0, 0, 0x40}));
}

}  // namespace
}  // namespace dtrain::obs
