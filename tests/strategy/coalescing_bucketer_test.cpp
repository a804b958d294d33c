// CoalescingBucketer on its own: layout, the launch-order rule, the presence
// flags, and reuse across passes. The "allreduce" is simulated by the launch
// function.
#include "strategy/coalescing_bucketer.h"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "core/error.h"

namespace dtrain::strategy {
namespace {

std::vector<float> iota_floats(size_t n, float start) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

struct Recorder {
  std::vector<size_t> launched;
  std::vector<std::vector<float>> contents;
  CoalescingBucketer::LaunchFn fn() {
    return [this](size_t bucket, std::span<float> data) {
      launched.push_back(bucket);
      contents.emplace_back(data.begin(), data.end());
    };
  }
};

// numels {4, 4, 4, 30, 2} with 48-byte buckets, filled last parameter first:
// [4] (8 B), then 3 (120 B) does not fit -> [3], then 2 does not fit after
// 120 B -> [2, 1, 0] (48 B, exactly full).
const std::vector<int64_t> kNumels{4, 4, 4, 30, 2};

TEST(CoalescingBucketer, FillsBucketsInReverseRegistrationOrder) {
  Recorder rec;
  CoalescingBucketer b(kNumels, 48, 3, rec.fn());
  ASSERT_EQ(b.bucket_count(), 3u);
  EXPECT_EQ(std::vector<size_t>(b.params_of(0).begin(), b.params_of(0).end()),
            (std::vector<size_t>{4}));
  EXPECT_EQ(std::vector<size_t>(b.params_of(1).begin(), b.params_of(1).end()),
            (std::vector<size_t>{3}));
  EXPECT_EQ(std::vector<size_t>(b.params_of(2).begin(), b.params_of(2).end()),
            (std::vector<size_t>{2, 1, 0}));
  EXPECT_EQ(b.bucket_of(0), 2u);
  EXPECT_EQ(b.bucket_of(3), 1u);
  // Header (bucket 0 only) + one presence float per parameter + gradients.
  EXPECT_EQ(b.bucket_floats(0), 3u + 1u + 2u);
  EXPECT_EQ(b.bucket_floats(1), 1u + 30u);
  EXPECT_EQ(b.bucket_floats(2), 3u + 12u);
}

TEST(CoalescingBucketer, ZeroBytesGivesOneParameterPerBucketAndHugeGivesOne) {
  Recorder rec;
  CoalescingBucketer tiny(kNumels, 0, 3, rec.fn());
  ASSERT_EQ(tiny.bucket_count(), kNumels.size());
  for (size_t p = 0; p < kNumels.size(); ++p) EXPECT_EQ(tiny.bucket_of(p), kNumels.size() - 1 - p);
  CoalescingBucketer huge(kNumels, size_t{1} << 30, 3, rec.fn());
  ASSERT_EQ(huge.bucket_count(), 1u);
  EXPECT_EQ(std::vector<size_t>(huge.params_of(0).begin(), huge.params_of(0).end()),
            (std::vector<size_t>{4, 3, 2, 1, 0}));
}

TEST(CoalescingBucketer, LaunchesOnlyInBucketOrder) {
  Recorder rec;
  CoalescingBucketer b(kNumels, 48, 3, rec.fn());
  b.begin_pass();
  b.mark_ready(0, iota_floats(4, 0));   // bucket 2: not full
  b.mark_ready(3, iota_floats(30, 0));  // bucket 1 full, but bucket 0 is not launched
  EXPECT_TRUE(rec.launched.empty());
  EXPECT_EQ(b.launched(), 0u);
  b.mark_ready(4, iota_floats(2, 0));  // bucket 0 full: launches 0, then 1
  EXPECT_EQ(rec.launched, (std::vector<size_t>{0, 1}));
  b.mark_ready(2, iota_floats(4, 0));
  EXPECT_EQ(rec.launched.size(), 2u);
  b.mark_ready(1, iota_floats(4, 0));
  EXPECT_EQ(rec.launched, (std::vector<size_t>{0, 1, 2}));
  EXPECT_TRUE(b.all_launched());
}

TEST(CoalescingBucketer, PacksHeaderPresenceAndGradients) {
  Recorder rec;
  CoalescingBucketer b(kNumels, 48, 3, rec.fn());
  b.begin_pass();
  std::span<float> header = b.header();
  header[0] = 7.0f;
  header[1] = 8.0f;
  header[2] = 9.0f;
  b.mark_ready(4, std::vector<float>{-1.0f, -2.0f});
  ASSERT_EQ(rec.contents.size(), 1u);
  EXPECT_EQ(rec.contents[0], (std::vector<float>{7.0f, 8.0f, 9.0f, 1.0f, -1.0f, -2.0f}));
  b.mark_absent(3);
  b.mark_ready(1, iota_floats(4, 10));
  b.mark_ready(0, iota_floats(4, 20));
  b.mark_ready(2, iota_floats(4, 30));
  ASSERT_EQ(rec.contents.size(), 3u);
  EXPECT_EQ(rec.contents[1], std::vector<float>(31, 0.0f));  // absent: presence 0, zeros
  const std::vector<float> expected{1, 1, 1, 30, 31, 32, 33, 10, 11, 12, 13, 20, 21, 22, 23};
  EXPECT_EQ(rec.contents[2], expected);
  EXPECT_EQ(b.presence(3), 0.0f);
  EXPECT_EQ(b.presence(1), 1.0f);
  const auto g = b.gradient(1);
  EXPECT_EQ(std::vector<float>(g.begin(), g.end()), iota_floats(4, 10));
  const auto h = b.reduced_header();
  EXPECT_EQ(std::vector<float>(h.begin(), h.end()), (std::vector<float>{7, 8, 9}));
}

TEST(CoalescingBucketer, ReadsBackWhatTheLaunchFunctionReduced) {
  // The launch function doubles the bucket in place, as a 2-rank sum would.
  CoalescingBucketer b(kNumels, 0, 1, [](size_t, std::span<float> data) {
    for (float& x : data) x *= 2.0f;
  });
  b.begin_pass();
  b.header()[0] = 5.0f;
  for (size_t p = 0; p < kNumels.size(); ++p) {
    b.mark_ready(p, iota_floats(static_cast<size_t>(kNumels[p]), static_cast<float>(p)));
  }
  EXPECT_EQ(b.reduced_header()[0], 10.0f);
  for (size_t p = 0; p < kNumels.size(); ++p) {
    EXPECT_EQ(b.presence(p), 2.0f);
    const auto g = b.gradient(p);
    for (size_t k = 0; k < g.size(); ++k) EXPECT_EQ(g[k], 2.0f * (static_cast<float>(p) + k));
  }
}

TEST(CoalescingBucketer, NewPassOverwritesOldValuesAndLaunchesAgain) {
  Recorder rec;
  CoalescingBucketer b(kNumels, 48, 0, rec.fn());
  b.begin_pass();
  for (size_t p = 0; p < kNumels.size(); ++p) {
    b.mark_ready(p, std::vector<float>(static_cast<size_t>(kNumels[p]), 3.0f));
  }
  ASSERT_EQ(rec.launched.size(), 3u);
  b.begin_pass();
  EXPECT_EQ(b.launched(), 0u);
  EXPECT_FALSE(b.is_marked(0));
  b.mark_ready(4, std::vector<float>{1.0f, 1.0f});
  b.mark_rest_absent();
  EXPECT_EQ(rec.launched, (std::vector<size_t>{0, 1, 2, 0, 1, 2}));
  EXPECT_EQ(rec.contents[4], std::vector<float>(31, 0.0f));  // no stale 3s
  EXPECT_EQ(b.presence(0), 0.0f);
  EXPECT_EQ(b.presence(4), 1.0f);
}

TEST(CoalescingBucketer, ModelWithoutParametersStillSendsItsHeader) {
  Recorder rec;
  CoalescingBucketer b({}, 1024, 3, rec.fn());
  ASSERT_EQ(b.bucket_count(), 1u);
  b.begin_pass();
  b.header()[0] = 4.0f;
  EXPECT_TRUE(rec.launched.empty());
  b.mark_rest_absent();
  ASSERT_EQ(rec.contents.size(), 1u);
  EXPECT_EQ(rec.contents[0], (std::vector<float>{4.0f, 0.0f, 0.0f}));
}

TEST(CoalescingBucketer, RejectsMisuseNamingTheParameter) {
  Recorder rec;
  CoalescingBucketer b(kNumels, 48, 3, rec.fn());
  b.begin_pass();
  try {
    b.mark_ready(1, iota_floats(5, 0));
    FAIL() << "wrong gradient size accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("parameter 1 has 4 elements, its gradient 5"),
              std::string::npos)
        << e.what();
  }
  b.mark_ready(1, iota_floats(4, 0));
  try {
    b.mark_absent(1);
    FAIL() << "second mark accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("parameter 1 was already marked"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(b.mark_ready(5, {}), UsageError);
  EXPECT_THROW(CoalescingBucketer({1}, 0, 0, nullptr), UsageError);
}

}  // namespace
}  // namespace dtrain::strategy
