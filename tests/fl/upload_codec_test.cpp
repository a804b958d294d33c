// UploadCodec: every method's round trip within its precision, top-k's exact
// selection, random-k and QSGD unbiased over clients and reproducible for a
// (round, client), small tensors exact, message sizes from the format's
// arithmetic, and malformed messages (random bytes, every truncation, flipped
// bytes, bad length fields, each header field wrong) failing with DataError
// only.
#include "fl/upload_codec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "fl/flat_model.h"
#include "nn/batch_norm.h"
#include "nn/conv2d.h"
#include "nn/flatten.h"
#include "nn/linear.h"
#include "nn/sequential.h"
#include "testing/expect_error.h"

namespace dtrain::fl {
namespace {

using compress::Method;
using compress::TensorLayout;
using testing::expect_error;

// Two tensors above min_size (1024), two below it.
std::vector<TensorLayout> test_layouts() { return {{40, 64}, {1, 7}, {1, 2000}, {3, 5}}; }

compress::Options options_of(Method method) {
  compress::Options options;
  options.method = method;
  options.seed = 7;
  return options;
}

std::vector<float> normal_delta(size_t n, uint64_t seed, float scale = 0.01f) {
  Rng rng(seed);
  std::vector<float> delta(n);
  for (float& v : delta) v = scale * rng.normal();
  return delta;
}

// Tensor t's values of a flat delta.
std::span<const float> tensor_of(const UploadCodec& codec, std::span<const float> delta, size_t t) {
  size_t at = 0;
  for (size_t i = 0; i < t; ++i) at += codec.layouts()[i].numel();
  return delta.subspan(at, codec.layouts()[t].numel());
}

size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

// The message bytes the format gives for `codec` (compress's message sizes,
// docs/compression.md, for the compressed tensors; 4 n for the dense ones).
size_t expected_bytes(const UploadCodec& codec) {
  const compress::Options& o = codec.options();
  size_t bytes = UploadCodec::header_bytes(codec.layouts().size());
  for (size_t t = 0; t < codec.layouts().size(); ++t) {
    const TensorLayout& l = codec.layouts()[t];
    const size_t n = l.numel();
    if (!codec.compresses(t)) {
      bytes += 4 * n;
      continue;
    }
    const size_t k = std::max<size_t>(1, static_cast<size_t>(std::ceil(o.density * n)));
    switch (o.method) {
      case Method::kFp16:
        bytes += 13 + 2 * n;
        break;
      case Method::kBf16:
        bytes += 9 + 2 * n;
        break;
      case Method::kTopK:
        bytes += 13 + 8 * k;
        break;
      case Method::kRandomK:
        bytes += 21 + 4 * k;
        break;
      case Method::kQsgd: {
        const size_t d = o.qsgd_bucket == 0 ? n : std::min(o.qsgd_bucket, n);
        const auto b = static_cast<size_t>(std::bit_width(static_cast<unsigned>(o.levels)) + 1);
        bytes += 21 + 4 * ceil_div(n, d) + ceil_div(n * b, 8);
        break;
      }
      case Method::kSign:
        bytes += 13 + ceil_div(n, 8);
        break;
      case Method::kPowerSgd: {
        const size_t r = std::min({l.rows, l.cols, static_cast<size_t>(o.rank)});
        bytes += 13 + 4 * (l.rows + l.cols) * r;
        break;
      }
      case Method::kNone:
        ADD_FAILURE() << "method none compresses nothing";
        break;
    }
  }
  return bytes;
}

double relative_error(std::span<const float> got, std::span<const float> want) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    diff += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    norm += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(diff / norm);
}

const std::vector<Method> kAllMethods = {Method::kNone, Method::kFp16,    Method::kBf16,
                                         Method::kTopK, Method::kRandomK, Method::kQsgd,
                                         Method::kSign, Method::kPowerSgd};

// Decoding must succeed with finite values or fail with DataError; anything
// else (another exception, a crash under the sanitizers) fails the test.
void expect_decoded_or_data_error(const UploadCodec& codec, std::span<const std::byte> message,
                                  const std::string& what) {
  try {
    const std::vector<float> delta = codec.decode(message, codec.model_size());
    ASSERT_EQ(delta.size(), static_cast<size_t>(codec.model_size())) << what;
    for (const float v : delta) ASSERT_TRUE(std::isfinite(v)) << what;
  } catch (const DataError&) {
  } catch (const std::exception& e) {
    FAIL() << what << ": " << e.what();
  }
}

void expect_data_error(const UploadCodec& codec, std::span<const std::byte> message,
                       const std::string& what) {
  EXPECT_THROW(codec.decode(message, codec.model_size()), DataError) << what;
}

TEST(UploadCodec, LayoutsOfAModelFollowItsStateDictInOrder) {
  Rng rng(3);
  nn::Sequential model;
  model.add(std::make_unique<nn::Conv2d>(2, 4, 3, rng));
  model.add(std::make_unique<nn::Flatten>());
  model.add(std::make_unique<nn::Linear>(4 * 3 * 3, 10, rng));
  model.add(std::make_unique<nn::BatchNorm1d>(10));
  const std::vector<TensorLayout> layouts = layouts_of(model);
  const StateDict dict = model.state_dict();
  ASSERT_EQ(layouts.size(), dict.size());
  for (size_t t = 0; t < layouts.size(); ++t) {
    const Tensor& tensor = dict.entries()[t].second;
    EXPECT_EQ(layouts[t].numel(), static_cast<size_t>(tensor.numel())) << t;
    EXPECT_EQ(layouts[t].rows, tensor.shape().size() >= 2 ? tensor.shape()[0] : 1) << t;
  }
  // The conv kernel [4, 2, 3, 3] is 4 x 18.
  EXPECT_EQ(layouts[0].rows, 4u);
  EXPECT_EQ(layouts[0].cols, 18u);

  const UploadCodec codec(options_of(Method::kNone), layouts);
  EXPECT_EQ(codec.model_size(), flat_size(model));
  const std::vector<float> weights = flatten(model);
  EXPECT_EQ(codec.decode(codec.encode(weights, 0, 0), flat_size(model)), weights);
}

TEST(UploadCodec, NoneIsTheExactDeltaIn4BytesPerValuePlusTheHeader) {
  const UploadCodec codec(options_of(Method::kNone), test_layouts());
  const std::vector<float> delta = normal_delta(codec.model_size(), 1);
  const std::vector<std::byte> message = codec.encode(delta, 3, 5);
  EXPECT_EQ(message.size(), 6 + 5 * 4 + 4 * delta.size());
  EXPECT_EQ(message.size(), expected_bytes(codec));
  EXPECT_EQ(codec.decode(message, codec.model_size()), delta);
  // The header, byte by byte.
  EXPECT_EQ(std::to_integer<int>(message[0]), 1);  // version
  EXPECT_EQ(std::to_integer<int>(message[1]), 0);  // method none
  EXPECT_EQ(std::to_integer<int>(message[2]), 4);  // tensors, u32 little-endian
  EXPECT_EQ(std::to_integer<int>(message[5]), 0);
  EXPECT_EQ(std::to_integer<int>(message[6]), 0);  // tensor 0: form dense
  uint32_t length = 0;
  std::memcpy(&length, message.data() + 7, 4);
  EXPECT_EQ(length, 4u * 40 * 64);
}

TEST(UploadCodec, HalfPrecisionRoundTripsWithinItsPrecisionAndHalvesTheBytes) {
  for (const Method method : {Method::kFp16, Method::kBf16}) {
    SCOPED_TRACE(std::string(compress::to_string(method)));
    const UploadCodec codec(options_of(method), test_layouts());
    const std::vector<float> delta = normal_delta(codec.model_size(), 2);
    const std::vector<std::byte> message = codec.encode(delta, 0, 1);
    const std::vector<float> got = codec.decode(message, codec.model_size());
    // fp16: 11 significant bits (values scaled by max|x| / 32768, so none is
    // subnormal that matters); bf16: 8.
    const double relative = method == Method::kFp16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
    for (size_t t = 0; t < codec.layouts().size(); ++t) {
      const auto want = tensor_of(codec, delta, t);
      const auto have = tensor_of(codec, got, t);
      float max_abs = 0.0f;
      for (const float v : want) max_abs = std::max(max_abs, std::abs(v));
      for (size_t i = 0; i < want.size(); ++i) {
        if (!codec.compresses(t)) {
          ASSERT_EQ(have[i], want[i]) << t << " " << i;
        } else {
          ASSERT_LE(std::abs(have[i] - want[i]),
                    relative * std::abs(want[i]) + std::ldexp(max_abs, -30))
              << t << " " << i;
        }
      }
    }
    EXPECT_TRUE(codec.compresses(0));
    EXPECT_FALSE(codec.compresses(1));
    EXPECT_EQ(message.size(), expected_bytes(codec));
    // About half of the dense message: the compressed tensors dominate.
    const size_t dense = UploadCodec::header_bytes(4) + 4 * delta.size();
    EXPECT_GT(static_cast<double>(dense) / static_cast<double>(message.size()), 1.95);
    EXPECT_LT(static_cast<double>(dense) / static_cast<double>(message.size()), 2.0);
  }
}

TEST(UploadCodec, TopKKeepsExactlyTheLargestEntriesOfEachTensor) {
  compress::Options options = options_of(Method::kTopK);
  options.density = 0.1;
  const UploadCodec codec(options, test_layouts());
  const std::vector<float> delta = normal_delta(codec.model_size(), 3);
  const std::vector<std::byte> message = codec.encode(delta, 2, 9);
  EXPECT_EQ(message.size(), expected_bytes(codec));
  const std::vector<float> got = codec.decode(message, codec.model_size());
  for (size_t t = 0; t < codec.layouts().size(); ++t) {
    const auto want = tensor_of(codec, delta, t);
    const auto have = tensor_of(codec, got, t);
    if (!codec.compresses(t)) {
      EXPECT_TRUE(std::equal(want.begin(), want.end(), have.begin())) << t;
      continue;
    }
    const size_t k = static_cast<size_t>(std::ceil(0.1 * static_cast<double>(want.size())));
    std::vector<float> magnitudes;
    for (const float v : want) magnitudes.push_back(std::abs(v));
    std::sort(magnitudes.begin(), magnitudes.end(), std::greater<>());
    const float threshold = magnitudes[k - 1];
    ASSERT_GT(threshold, magnitudes[k]) << "a tie at the threshold: pick another seed";
    size_t kept = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      if (std::abs(want[i]) >= threshold) {
        EXPECT_EQ(have[i], want[i]) << t << " " << i;
        ++kept;
      } else {
        EXPECT_EQ(have[i], 0.0f) << t << " " << i;
      }
    }
    EXPECT_EQ(kept, k) << t;
  }
}

TEST(UploadCodec, TopKOnePercentIsMuchSmallerThanDense) {
  const UploadCodec codec(options_of(Method::kTopK), test_layouts());  // density 0.01
  const std::vector<float> delta = normal_delta(codec.model_size(), 4);
  const std::vector<std::byte> message = codec.encode(delta, 0, 0);
  // 26 (header) + (13 + 8 * 26) + 28 + (13 + 8 * 20) + 60.
  EXPECT_EQ(message.size(), 26u + 221u + 28u + 173u + 60u);
  EXPECT_EQ(message.size(), expected_bytes(codec));
  const size_t dense = UploadCodec::header_bytes(4) + 4 * delta.size();
  EXPECT_GT(static_cast<double>(dense) / static_cast<double>(message.size()), 30.0);
}

TEST(UploadCodec, EveryMethodKeepsSmallTensorsExactAndHasTheFormatsSize) {
  for (const Method method : kAllMethods) {
    SCOPED_TRACE(std::string(compress::to_string(method)));
    const UploadCodec codec(options_of(method), test_layouts());
    const std::vector<float> delta = normal_delta(codec.model_size(), 5);
    const std::vector<std::byte> message = codec.encode(delta, 4, 2);
    EXPECT_EQ(message.size(), expected_bytes(codec));
    const std::vector<float> got = codec.decode(message, codec.model_size());
    for (const size_t t : {size_t{1}, size_t{3}}) {
      EXPECT_FALSE(codec.compresses(t));
      const auto want = tensor_of(codec, delta, t);
      const auto have = tensor_of(codec, got, t);
      EXPECT_TRUE(std::equal(want.begin(), want.end(), have.begin())) << t;
    }
    for (const float v : got) ASSERT_TRUE(std::isfinite(v));
  }
}

TEST(UploadCodec, MinSizeZeroCompressesEveryTensor) {
  compress::Options options = options_of(Method::kFp16);
  options.min_size = 0;
  const UploadCodec codec(options, test_layouts());
  for (size_t t = 0; t < 4; ++t) EXPECT_TRUE(codec.compresses(t)) << t;
  const std::vector<float> delta = normal_delta(codec.model_size(), 6);
  const std::vector<std::byte> message = codec.encode(delta, 0, 0);
  EXPECT_EQ(message.size(), expected_bytes(codec));
  EXPECT_LT(relative_error(codec.decode(message, codec.model_size()), delta), 1e-3);
}

// The mean over many clients' decodes of the same delta, and the bytes of
// one (round, client) encoded twice.
struct Draws {
  std::vector<float> mean;
  bool reproducible = true;
  bool clients_differ = true;
  bool rounds_differ = true;
};

Draws draw_over_clients(const UploadCodec& codec, std::span<const float> delta, int clients) {
  Draws draws;
  std::vector<double> sum(delta.size(), 0.0);
  for (int c = 0; c < clients; ++c) {
    const std::vector<std::byte> message = codec.encode(delta, 1, c);
    draws.reproducible = draws.reproducible && message == codec.encode(delta, 1, c);
    draws.clients_differ = draws.clients_differ && message != codec.encode(delta, 1, c + 1);
    draws.rounds_differ = draws.rounds_differ && message != codec.encode(delta, 2, c);
    const std::vector<float> got = codec.decode(message, codec.model_size());
    for (size_t i = 0; i < got.size(); ++i) sum[i] += got[i];
  }
  for (const double s : sum) draws.mean.push_back(static_cast<float>(s / clients));
  return draws;
}

TEST(UploadCodec, RandomKIsUnbiasedOverClientsAndReproducibleForARoundAndClient) {
  compress::Options options = options_of(Method::kRandomK);
  options.density = 0.1;
  const UploadCodec codec(options, test_layouts());
  const std::vector<float> delta = normal_delta(codec.model_size(), 7);
  const Draws draws = draw_over_clients(codec, delta, 400);
  EXPECT_TRUE(draws.reproducible);
  EXPECT_TRUE(draws.clients_differ);
  EXPECT_TRUE(draws.rounds_differ);
  // Each entry is sent as x n / k with probability k / n: variance (n/k - 1)
  // x^2 = 9 x^2, so the mean of 400 has relative L2 error about
  // sqrt(9 / 400) = 0.15. One client alone is about 3.
  EXPECT_LT(relative_error(draws.mean, delta), 0.3);
  EXPECT_GT(relative_error(codec.decode(codec.encode(delta, 1, 0), codec.model_size()), delta),
            1.0);
}

TEST(UploadCodec, QsgdIsUnbiasedOverClientsAndReproducibleForARoundAndClient) {
  const UploadCodec codec(options_of(Method::kQsgd), test_layouts());  // s = 16, d = 512
  const std::vector<float> delta = normal_delta(codec.model_size(), 8);
  const Draws draws = draw_over_clients(codec, delta, 200);
  EXPECT_TRUE(draws.reproducible);
  EXPECT_TRUE(draws.clients_differ);
  EXPECT_TRUE(draws.rounds_differ);
  // Per bucket the variance is sum_i x_i (1 - x_i) ||g_b||^2 / s^2 with x_i
  // = s |g_i| / ||g_b|| in [0, 1) after its floor: for normal values about
  // 0.4 ||g||^2, so one draw is off by about 0.63 and the mean of 200 by
  // about 0.045.
  const double one =
      relative_error(codec.decode(codec.encode(delta, 1, 0), codec.model_size()), delta);
  const double mean = relative_error(draws.mean, delta);
  EXPECT_LT(mean, 0.15);
  EXPECT_LT(mean, one / 4.0);
}

TEST(UploadCodec, EncodingIsTheSameFromAnyThread) {
  compress::Options options = options_of(Method::kQsgd);
  const UploadCodec codec(options, test_layouts());
  const std::vector<float> delta = normal_delta(codec.model_size(), 9);
  constexpr int kClients = 16;
  std::vector<std::vector<std::byte>> serial(kClients), threaded(kClients);
  for (int c = 0; c < kClients; ++c) serial[c] = codec.encode(delta, 5, c);
  {
    std::vector<std::jthread> threads;
    for (int w = 0; w < 4; ++w) {
      threads.emplace_back([&, w] {
        for (int c = w; c < kClients; c += 4) {
          threaded[c] = codec.encode(delta, 5, c);
          (void)codec.decode(threaded[c], codec.model_size());
        }
      });
    }
  }
  EXPECT_EQ(serial, threaded);
}

TEST(UploadCodec, ErrorFeedbackIsIgnoredAndMomentumRefused) {
  compress::Options with = options_of(Method::kTopK);
  with.error_feedback = true;
  compress::Options without = with;
  without.error_feedback = false;
  const UploadCodec a(with, test_layouts());
  const UploadCodec b(without, test_layouts());
  EXPECT_FALSE(a.options().error_feedback);
  const std::vector<float> delta = normal_delta(a.model_size(), 10);
  // Stateless: encoding again gives the same bytes (no residual carried).
  EXPECT_EQ(a.encode(delta, 0, 0), a.encode(delta, 0, 0));
  EXPECT_EQ(a.encode(delta, 0, 0), b.encode(delta, 0, 0));

  compress::Options momentum = with;
  momentum.momentum = 0.9;
  testing::expect_usage_error(
      [&] { UploadCodec codec(momentum, test_layouts()); },
      "federated uploads: momentum (DGC) must be 0, got 0.9: a client keeps no state between "
      "rounds");
  compress::Options density = with;
  density.density = 0.0;
  EXPECT_THROW(UploadCodec(density, test_layouts()), UsageError);
}

TEST(UploadCodec, EncodeRefusesWrongSizesNegativeIdsAndNonFiniteValues) {
  const UploadCodec codec(options_of(Method::kFp16), test_layouts());
  std::vector<float> delta = normal_delta(codec.model_size(), 11);
  testing::expect_usage_error(
      [&] { codec.encode(std::span<const float>(delta).first(10), 0, 3); },
      "federated uploads: the update of client 3, round 0 has 10 values, the model 4582");
  testing::expect_usage_error(
      [&] { codec.encode(delta, -1, 3); },
      "federated uploads: encode() needs a round and a client >= 0, got round -1, client 3");
  delta[2560 + 7 + 4] = std::numeric_limits<float>::infinity();
  expect_error<DataError>(
      [&] { codec.encode(delta, 2, 3); },
      "federated uploads: the update of client 3, round 2 has value 2571 (tensor 2, entry 4) = "
      "inf, not finite; it is not encoded");
  testing::expect_usage_error(
      [&] { codec.decode(codec.encode(normal_delta(4582, 1), 0, 0), 4581, "update of client 1"); },
      "update of client 1: decode() for a model of 4581 values, the codec's has 4582");
}

// ------------------------------------------------------------ malformed input

// A valid message of every method for the fuzz tests, with density 0.05 so
// that the sparse messages have many entries.
std::vector<std::pair<UploadCodec, std::vector<std::byte>>> valid_messages() {
  std::vector<std::pair<UploadCodec, std::vector<std::byte>>> all;
  for (const Method method : kAllMethods) {
    compress::Options options = options_of(method);
    options.density = 0.05;
    UploadCodec codec(options, test_layouts());
    std::vector<std::byte> message = codec.encode(normal_delta(codec.model_size(), 12), 1, 1);
    all.emplace_back(std::move(codec), std::move(message));
  }
  return all;
}

TEST(UploadCodec, EveryTruncationAndEveryExtraByteIsADataError) {
  for (const auto& [codec, message] : valid_messages()) {
    SCOPED_TRACE(std::string(compress::to_string(codec.options().method)));
    for (size_t n = 0; n < message.size(); ++n) {
      expect_data_error(codec, std::span(message).first(n), "truncated to " + std::to_string(n));
    }
    std::vector<std::byte> longer = message;
    longer.push_back(std::byte{0});
    expect_data_error(codec, longer, "one byte more");
  }
}

TEST(UploadCodec, FlippedLengthAndFormFieldsAreDataErrors) {
  for (const auto& [codec, message] : valid_messages()) {
    SCOPED_TRACE(std::string(compress::to_string(codec.options().method)));
    for (size_t t = 0; t < 4; ++t) {
      const size_t form_at = 6 + 5 * t;
      uint32_t length = 0;
      std::memcpy(&length, message.data() + form_at + 1, 4);
      for (const uint32_t other : {length + 1, length - 1, 0u, 0xffffffffu, length ^ 0x10000u}) {
        std::vector<std::byte> bad = message;
        std::memcpy(bad.data() + form_at + 1, &other, 4);
        expect_data_error(codec, bad, fmt::format("tensor {} length {}", t, other));
      }
      for (const uint8_t form : {uint8_t{2}, uint8_t{255}}) {
        std::vector<std::byte> bad = message;
        bad[form_at] = std::byte{form};
        expect_data_error(codec, bad, fmt::format("tensor {} form {}", t, form));
      }
      // The other form with the same length: a compressed body read as
      // dense, or dense values read as a compress message.
      std::vector<std::byte> swapped = message;
      swapped[form_at] ^= std::byte{1};
      expect_decoded_or_data_error(codec, swapped, fmt::format("tensor {} form swapped", t));
    }
  }
}

TEST(UploadCodec, FlippedBytesDecodeOrFailWithDataError) {
  Rng rng(13);
  for (const auto& [codec, message] : valid_messages()) {
    SCOPED_TRACE(std::string(compress::to_string(codec.options().method)));
    for (int trial = 0; trial < 300; ++trial) {
      std::vector<std::byte> bad = message;
      const int flips = 1 + static_cast<int>(rng.below(3));
      for (int f = 0; f < flips; ++f) {
        // Half of the flips in the first 64 bytes, where the headers are.
        const size_t at =
            rng.below(2) == 0 ? rng.below(std::min<size_t>(64, bad.size())) : rng.below(bad.size());
        bad[at] ^= static_cast<std::byte>(1 + rng.below(255));
      }
      expect_decoded_or_data_error(codec, bad, fmt::format("trial {}", trial));
    }
  }
}

TEST(UploadCodec, RandomBytesAreDataErrors) {
  Rng rng(14);
  for (const Method method : kAllMethods) {
    const UploadCodec codec(options_of(method), test_layouts());
    for (int trial = 0; trial < 500; ++trial) {
      std::vector<std::byte> bytes(rng.below(300));
      for (auto& b : bytes) b = static_cast<std::byte>(rng.below(256));
      // Half of them with a valid start, to reach the table and the bodies.
      if (trial % 2 == 1 && bytes.size() >= 6) {
        bytes[0] = std::byte{1};
        bytes[1] = static_cast<std::byte>(method);
        const uint32_t tensors = 4;
        std::memcpy(bytes.data() + 2, &tensors, 4);
      }
      expect_data_error(codec, bytes, fmt::format("trial {}", trial));
    }
  }
}

TEST(UploadCodec, EachHeaderFieldIsCheckedWithAMessageNamingIt) {
  compress::Options options = options_of(Method::kFp16);
  const UploadCodec codec(options, test_layouts());
  const std::vector<std::byte> message = codec.encode(normal_delta(codec.model_size(), 15), 0, 0);
  auto with = [&](size_t at, uint8_t value) {
    std::vector<std::byte> bad = message;
    bad[at] = std::byte{value};
    return bad;
  };
  const std::string ctx = "update of client 4, round 2";
  auto decode = [&](const std::vector<std::byte>& bytes) {
    return [&codec, bytes, &ctx] { codec.decode(bytes, codec.model_size(), ctx); };
  };
  expect_error<DataError>(decode({}),
                          ctx + ": field 'version' needs 1 bytes at offset 0, only 0 left");
  expect_error<DataError>(decode(with(0, 2)),
                          ctx +
                              ": field 'version' at offset 0: version 2, this codec "
                              "reads 1");
  expect_error<DataError>(decode(with(1, 200)),
                          ctx + ": field 'method' at offset 1: unknown method tag 200");
  expect_error<DataError>(decode(with(1, 3)),
                          ctx +
                              ": field 'method' at offset 1: a topk message, this "
                              "codec's method is fp16 (the job's [compression])");
  expect_error<DataError>(decode(with(2, 5)),
                          ctx + ": field 'tensors' at offset 2: 5 tensors, the model has 4");
  expect_error<DataError>(decode(with(11, 2)),
                          ctx +
                              ": field 'form' at offset 11: tensor 1: form 2; 0 "
                              "(dense) or 1 (compressed)");
  expect_error<DataError>(decode(with(12, 29)),
                          ctx +
                              ": field 'body bytes' at offset 12: tensor 1 (1 x 7) "
                              "dense in 29 bytes, expected 28 (4 per float)");
  std::vector<std::byte> longer = message;
  longer.push_back(std::byte{0});
  expect_error<DataError>(decode(longer),
                          ctx +
                              ": field 'bodies' at offset 26: the table's 4 tensors "
                              "take 9234 bytes, the message has 9235 after it (bytes after "
                              "the end)");
  expect_error<DataError>(decode(std::vector<std::byte>(message.begin(), message.end() - 1)),
                          ctx +
                              ": field 'bodies' at offset 26: the table's 4 tensors "
                              "take 9234 bytes, the message has 9233 after it (truncated)");
  // A compress message of another method inside: tensor 0's body starts at 26.
  expect_error<DataError>(decode(with(26, 2)),
                          ctx +
                              ": field 'body' at offset 26: tensor 0: a bf16 message "
                              "(tag 2) in a fp16 upload");
  // A NaN in a dense body (tensor 1's starts at 26 + 13 + 2 * 2560 = 5159).
  std::vector<std::byte> nan = message;
  const float q = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(nan.data() + 5159 + 8, &q, 4);
  expect_error<DataError>(decode(nan),
                          ctx +
                              ": field 'body' at offset 5159: tensor 1 (1 x 7) entry 2 "
                              "decodes to nan, not finite");
  // A finite fp16 scale so large that a value decodes to infinity.
  std::vector<std::byte> huge = message;
  const float scale = std::numeric_limits<float>::max();
  std::memcpy(huge.data() + 26 + 9, &scale, 4);
  EXPECT_THROW(codec.decode(huge, codec.model_size(), ctx), DataError);
  // compress's own checks name the tensor: a scale that is not positive.
  std::vector<std::byte> negative = message;
  const float minus = -1.0f;
  std::memcpy(negative.data() + 26 + 9, &minus, 4);
  expect_error<DataError>(decode(negative),
                          ctx +
                              ", tensor 0 (body at offset 26): fp16 message, field "
                              "'scale' at offset 9: -1 is not a finite positive");
}

TEST(UploadCodec, MethodNoneRefusesTheCompressedForm) {
  const UploadCodec codec(options_of(Method::kNone), test_layouts());
  std::vector<std::byte> message = codec.encode(normal_delta(codec.model_size(), 16), 0, 0);
  message[6] = std::byte{1};
  expect_error<DataError>([&] { codec.decode(message, codec.model_size()); },
                          "upload: field 'form' at offset 6: tensor 0: form 1; 0 (dense)");
}

}  // namespace
}  // namespace dtrain::fl
