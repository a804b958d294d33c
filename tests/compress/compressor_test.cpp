// The module's edges: options, method names, misuse, checkpoints of the
// per-tensor state, malformed messages, and the dense kernels of PowerSGD.
#include "compress/compressor.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "compress/compress_test_util.h"
#include "compress/low_rank.h"
#include "testing/expect_error.h"
#include "testing/fake_group.h"

namespace dtrain::compress {
namespace {

using dtrain::testing::expect_error;
using dtrain::testing::expect_usage_error;
using testing::decoded;
using testing::encode_one;
using testing::normal_vector;
using testing::options_of;

// ---------------------------------------------------------------- options

TEST(CompressOptions, RejectsEachBadOptionByName) {
  auto with = [](auto change) {
    Options options = options_of(Method::kTopK);
    change(options);
    return options;
  };
  expect_usage_error([&] { validate(with([](Options& o) { o.density = 0.0; })); },
                     "density must be in (0, 1], got 0");
  expect_usage_error([&] { validate(with([](Options& o) { o.density = -0.5; })); },
                     "density must be in (0, 1], got -0.5");
  expect_usage_error([&] { validate(with([](Options& o) { o.density = 1.5; })); },
                     "density must be in (0, 1], got 1.5");
  expect_usage_error([&] { validate(with([](Options& o) { o.density = std::nan(""); })); },
                     "density must be in (0, 1], got nan");
  expect_usage_error([&] { validate(with([](Options& o) { o.rank = 0; })); },
                     "rank must be at least 1, got 0");
  expect_usage_error([&] { validate(with([](Options& o) { o.levels = 0; })); },
                     "levels must be in [1, 65536], got 0");
  expect_usage_error([&] { validate(with([](Options& o) { o.levels = -3; })); },
                     "levels must be in [1, 65536], got -3");
  expect_usage_error([&] { validate(with([](Options& o) { o.qsgd_bucket = size_t{1} << 32; })); },
                     "qsgd_bucket must be at most 4294967295 (0: the whole tensor), got "
                     "4294967296");
  expect_usage_error([&] { validate(with([](Options& o) { o.momentum = 1.0; })); },
                     "momentum must be in [0, 1), got 1");
  expect_usage_error([&] { validate(with([](Options& o) { o.warmup_steps = -1; })); },
                     "warmup_steps must be at least 0, got -1");
  expect_usage_error([&] { validate(with([](Options& o) { o.min_compression_rate = -1; })); },
                     "min_compression_rate must be finite and at least 0, got -1");
  expect_usage_error(
      [&] { validate(with([](Options& o) { o.method = static_cast<Method>(42); })); },
      "method must be one of none, fp16, bf16, topk, randomk, qsgd, sign, powersgd, got tag 42");
  // Valid edges.
  validate(with([](Options& o) { o.density = 1.0; }));
  validate(with([](Options& o) { o.levels = 1; }));
  validate(with([](Options& o) { o.qsgd_bucket = 0; }));
  validate(with([](Options& o) { o.qsgd_bucket = 1; }));
}

TEST(CompressOptions, FactoryValidatesAndRefusesNone) {
  Options options = options_of(Method::kQsgd);
  options.levels = 0;
  expect_usage_error(
      [&] {
        make_compressor(options, {{1, 10}});
      },
      "levels must be in [1, 65536], got 0");
  expect_usage_error(
      [&] {
        make_compressor(options_of(Method::kNone), {{1, 10}});
      },
      "method 'none' has no compressor: send the gradients dense");
}

TEST(CompressOptions, MethodNamesRoundTrip) {
  const std::vector<std::string> names = method_names();
  EXPECT_EQ(names.size(), 8u);
  for (const std::string& name : names) {
    const auto method = parse_method(name);
    ASSERT_TRUE(method.has_value()) << name;
    EXPECT_EQ(to_string(*method), name);
  }
  EXPECT_FALSE(parse_method("top-k").has_value());
}

// ---------------------------------------------------------------- misuse

TEST(CompressUsage, RejectsWrongSizesUncompressedAndRepeatedTensors) {
  Options options = options_of(Method::kTopK);
  options.min_size = 10;
  auto c = make_compressor(options, {{2, 10}, {1, 5}});
  ByteWriter out;
  const std::vector<float> wrong(19, 1.0f);
  expect_usage_error([&] { c->encode(0, wrong, 0, 0, out); },
                     "topk compressor: tensor 0 (2 x 10) has 20 floats, the gradient 19");
  const std::vector<float> small(5, 1.0f);
  expect_usage_error([&] { c->encode(1, small, 0, 0, out); },
                     "topk compressor: tensor 1 (1 x 5) is not compressed (compresses() is "
                     "false); send it dense");
  expect_usage_error([&] { c->encode(2, small, 0, 0, out); },
                     "topk compressor: tensor 2 out of range (2 tensors)");
  EXPECT_EQ(out.size(), 0u);
  std::vector<float> g(20, 1.0f);
  const std::vector<size_t> twice = {0, 0};
  const std::vector<std::span<float>> grads = {g, g};
  dtrain::testing::run_ranks(1, [&](dtrain::testing::FakeGroup& group) {
    expect_usage_error([&] { c->reduce(twice, grads, group, 0); },
                       "topk compressor: reduce() names tensor 0 twice");
    const std::vector<size_t> one = {0};
    expect_usage_error([&] { c->reduce(one, grads, group, 0); },
                       "topk compressor: reduce() of 1 tensors got 2 gradients");
  });
}

// ---------------------------------------------------------------- state

struct StateCase {
  Method method;
  double momentum;
};

// Runs `steps` encodes from `first_step` on tensors 0 and 1.
std::vector<std::vector<std::byte>> run_steps(Compressor& c, int64_t first_step, int steps) {
  std::vector<std::vector<std::byte>> messages;
  for (int64_t step = first_step; step < first_step + steps; ++step) {
    for (size_t t = 0; t < 2; ++t) {
      messages.push_back(encode_one(
          c, t, normal_vector(c.layout(t).numel(), 500 + 10 * static_cast<uint64_t>(step) + t),
          step));
    }
  }
  return messages;
}

TEST(CompressState, RestoredCompressorContinuesBitIdentically) {
  for (const StateCase k : {StateCase{Method::kTopK, 0.0}, StateCase{Method::kTopK, 0.9},
                            StateCase{Method::kRandomK, 0.0}, StateCase{Method::kRandomK, 0.9},
                            StateCase{Method::kSign, 0.0}, StateCase{Method::kQsgd, 0.0},
                            StateCase{Method::kPowerSgd, 0.0}}) {
    Options options = options_of(k.method);
    options.momentum = k.momentum;
    options.rank = 2;
    const std::vector<TensorLayout> layouts = {{20, 30}, {16, 16}};
    auto original = make_compressor(options, layouts);
    run_steps(*original, 0, 3);
    const State state = original->save();
    EXPECT_EQ(state.metadata.at("method"), to_string(k.method));
    EXPECT_EQ(state.metadata.at("tensors"), "2");
    auto restored = make_compressor(options, layouts);
    restored->load(state);
    EXPECT_EQ(run_steps(*restored, 3, 3), run_steps(*original, 3, 3)) << to_string(k.method);
    // A fresh compressor (no state) would have sent something else, except
    // for QSGD, which keeps none.
    auto fresh = make_compressor(options, layouts);
    if (k.method != Method::kQsgd) {
      EXPECT_NE(run_steps(*fresh, 6, 1), run_steps(*original, 6, 1)) << to_string(k.method);
    }
  }
}

TEST(CompressState, SavesNamedArraysPerTensor) {
  Options options = options_of(Method::kPowerSgd);
  options.rank = 3;
  auto c = make_compressor(options, {{20, 30}, {16, 16}});
  EXPECT_TRUE(c->save().arrays.empty());
  (void)encode_one(*c, 1, normal_vector(256, 1), 0);
  std::vector<std::string> names;
  for (const auto& [name, values] : c->save().arrays) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"residual/1", "q/1"}));
  EXPECT_EQ(testing::state_array(*c, "q/1").size(), 16u * 3);
  c->reset();
  EXPECT_TRUE(c->save().arrays.empty());
}

TEST(CompressState, LoadRefusesAnotherMethodOrTensorListAndChangesNothing) {
  Options options = options_of(Method::kTopK);
  options.momentum = 0.5;
  auto c = make_compressor(options, {{4, 5}, {1, 9}});
  (void)encode_one(*c, 0, normal_vector(20, 1), 0);
  const State before = c->save();

  auto sign = make_compressor(options_of(Method::kSign), {{4, 5}, {1, 9}});
  expect_usage_error([&] { c->load(sign->save()); },
                     "topk compressor: cannot load the state of method 'sign'");
  auto other = make_compressor(options, {{4, 5}, {1, 8}});
  expect_usage_error([&] { c->load(other->save()); },
                     "topk compressor: the state's 2 tensors (4x5, 1x8) do not match this "
                     "compressor's 2 (4x5, 1x9)");
  State wrong_size = before;
  wrong_size.arrays[0].second.pop_back();
  expect_usage_error([&] { c->load(wrong_size); },
                     "topk compressor: the state's array 'residual/0' has 19 floats, expected 20 "
                     "(once)");
  State unknown = before;
  unknown.arrays.emplace_back("q/0", std::vector<float>(20));
  expect_usage_error([&] { c->load(unknown); },
                     "topk compressor: the state's array 'q/0' is not one of this compressor's");
  State out_of_range = before;
  out_of_range.arrays.emplace_back("velocity/2", std::vector<float>(9));
  expect_usage_error([&] { c->load(out_of_range); },
                     "topk compressor: the state's array 'velocity/2' is not one of this "
                     "compressor's");
  // State these options do not keep: residuals without error feedback,
  // velocity without momentum.
  Options plain = options;
  plain.error_feedback = false;
  plain.momentum = 0.0;
  auto without = make_compressor(plain, {{4, 5}, {1, 9}});
  expect_usage_error([&] { without->load(before); },
                     "topk compressor: the state's array 'residual/0' is not one of this "
                     "compressor's");
  State velocity_only = before;
  velocity_only.arrays.erase(velocity_only.arrays.begin());  // residual/0
  expect_usage_error([&] { without->load(velocity_only); },
                     "topk compressor: the state's array 'velocity/0' is not one of this "
                     "compressor's");
  State missing_meta = before;
  missing_meta.metadata.erase("method");
  expect_usage_error([&] { c->load(missing_meta); },
                     "topk compressor: cannot load the state of method '(none)'");
  // Nothing changed.
  const State after = c->save();
  EXPECT_EQ(after.arrays, before.arrays);
}

// ---------------------------------------------------------------- malformed messages

class MessageBytes {
 public:
  explicit MessageBytes(std::vector<std::byte> bytes) : bytes_(std::move(bytes)) {}
  MessageBytes& set_u32(size_t offset, uint32_t value) {
    for (size_t i = 0; i < 4; ++i) bytes_[offset + i] = static_cast<std::byte>(value >> (8 * i));
    return *this;
  }
  MessageBytes& set_f32(size_t offset, float value) {
    return set_u32(offset, std::bit_cast<uint32_t>(value));
  }
  MessageBytes& set_u8(size_t offset, uint8_t value) {
    bytes_[offset] = static_cast<std::byte>(value);
    return *this;
  }
  const std::vector<std::byte>& bytes() const { return bytes_; }

 private:
  std::vector<std::byte> bytes_;
};

// A top-k message for a 1 x 10 tensor with entries {2: 1.5, 5: -2, 7: 3}.
std::vector<std::byte> topk_message(uint32_t rows = 1, uint32_t cols = 10) {
  ByteWriter w;
  w.write_u8(static_cast<uint8_t>(Method::kTopK));
  w.write_u32(rows);
  w.write_u32(cols);
  w.write_u32(3);
  for (const uint32_t i : {2u, 5u, 7u}) w.write_u32(i);
  for (const float v : {1.5f, -2.0f, 3.0f}) w.write_f32(v);
  return w.take();
}

// decode_add throws DataError with `message` and leaves `out` unchanged.
void expect_rejected(std::span<const std::byte> bytes, const TensorLayout& layout,
                     const std::string& message) {
  std::vector<float> out(layout.numel(), 0.25f);
  expect_error<DataError>([&] { decode_add(bytes, layout, 1.0f, out, "push from worker 3"); },
                          message);
  for (const float v : out) ASSERT_EQ(v, 0.25f);
}

TEST(CompressDecode, AddsTheWeightedMessage) {
  std::vector<float> out(10, 1.0f);
  decode_add(topk_message(), {1, 10}, 2.0f, out, "test");
  EXPECT_EQ(out, (std::vector<float>{1, 1, 4, 1, 1, -3, 1, 7, 1, 1}));
}

TEST(CompressDecode, RejectsMalformedTopKMessages) {
  const TensorLayout layout{1, 10};
  // Header 0..8, k at 9, indices at 13, 17, 21, values at 25, 29, 33.
  expect_rejected(MessageBytes(topk_message()).set_u32(21, 10).bytes(), layout,
                  "push from worker 3: topk message, field 'indices' at offset 21: index 2 of 3 "
                  "is 10, not below n = 10");
  expect_rejected(MessageBytes(topk_message()).set_u32(17, 1).bytes(), layout,
                  "push from worker 3: topk message, field 'indices' at offset 17: index 1 of 3 "
                  "is 1, not above the previous 2 (indices must increase strictly)");
  expect_rejected(MessageBytes(topk_message()).set_u32(17, 2).bytes(), layout,
                  "push from worker 3: topk message, field 'indices' at offset 17: index 1 of 3 "
                  "is 2, not above the previous 2 (indices must increase strictly)");
  expect_rejected(MessageBytes(topk_message()).set_f32(29, std::nanf("")).bytes(), layout,
                  "push from worker 3: topk message, field 'values' at offset 29: value 1 of 3 "
                  "is nan, not finite");
  expect_rejected(MessageBytes(topk_message()).set_u32(9, 11).bytes(), layout,
                  "push from worker 3: topk message, field 'k' at offset 9: 11 > n = 10");
  expect_rejected(MessageBytes(topk_message()).set_u32(9, 4).bytes(), layout,
                  "push from worker 3: field 'indices, values' needs 32 bytes at offset 13, only "
                  "24 left");
  expect_rejected(MessageBytes(topk_message()).set_u8(0, 9).bytes(), layout,
                  "push from worker 3: field 'method' at offset 0: unknown method tag 9 (known: "
                  "none, fp16, bf16, topk, randomk, qsgd, sign, powersgd)");
  expect_rejected(MessageBytes(topk_message()).set_u8(0, 0).bytes(), layout,
                  "push from worker 3: field 'method' at offset 0: unknown method tag 0 (known: "
                  "none, fp16, bf16, topk, randomk, qsgd, sign, powersgd)");
  expect_rejected(topk_message(2, 5), layout,
                  "push from worker 3: topk message, field 'rows, cols' at offset 1: the message "
                  "is for a 2 x 5 tensor, the receiver's is 1 x 10");
  std::vector<std::byte> trailing = topk_message();
  trailing.push_back(std::byte{0});
  expect_rejected(trailing, layout,
                  "push from worker 3: 1 bytes after the end of the message (at offset 37)");
}

// Every truncation and every single-byte flip of each method's message:
// DataError (out unchanged) or a clean decode, nothing else.
TEST(CompressDecode, TruncatedOrFlippedMessagesNeverHalfDecode) {
  for (const Method method : {Method::kFp16, Method::kBf16, Method::kTopK, Method::kRandomK,
                              Method::kQsgd, Method::kSign, Method::kPowerSgd}) {
    Options options = options_of(method);
    options.density = 0.2;
    options.rank = 2;
    options.min_compression_rate = 0.0;
    options.qsgd_bucket = 7;  // 5 buckets, the last of 2 entries
    const TensorLayout layout{6, 5};
    auto c = make_compressor(options, {layout});
    const std::vector<std::byte> message = encode_one(*c, 0, normal_vector(30, 2), 0);
    for (size_t length = 0; length < message.size(); ++length) {
      std::vector<float> out(30, 0.5f);
      EXPECT_THROW(decode_add(std::span(message).first(length), layout, 1.0f, out, "t"), DataError)
          << to_string(method) << " truncated to " << length;
      for (const float v : out) ASSERT_EQ(v, 0.5f);
    }
    for (size_t at = 0; at < message.size(); ++at) {
      for (const uint8_t flip : {0x01, 0x80, 0xff}) {
        std::vector<std::byte> bad = message;
        bad[at] ^= std::byte{flip};
        std::vector<float> out(30, 0.5f);
        try {
          decode_add(bad, layout, 1.0f, out, "t");
        } catch (const DataError&) {
          for (const float v : out) ASSERT_EQ(v, 0.5f) << to_string(method) << " byte " << at;
        }
      }
    }
  }
}

TEST(CompressDecode, RejectsMethodSpecificNonsense) {
  const TensorLayout layout{1, 10};
  auto encoded = [&](Method method) {
    Options options = options_of(method);
    options.density = 0.2;
    options.levels = 3;
    options.rank = 1;
    options.min_compression_rate = 0.0;
    return encode_one(*make_compressor(options, {layout}), 0, normal_vector(10, 6), 0);
  };
  // random-k: header, u64 seed at 9, u32 k at 17.
  expect_rejected(MessageBytes(encoded(Method::kRandomK)).set_u32(17, 11).bytes(), layout,
                  "push from worker 3: randomk message, field 'k' at offset 17: 11 > n = 10");
  // QSGD: u32 levels at 9, u32 bucket at 13 (d = n = 10: the default 512
  // is clamped to n), u32 norm count at 17, one f32 norm at 21, fields at 25
  // (3 bits each: level in 2 bits, sign).
  expect_rejected(MessageBytes(encoded(Method::kQsgd)).set_u32(9, 0).bytes(), layout,
                  "push from worker 3: qsgd message, field 'levels' at offset 9: 0 is not in "
                  "[1, 65536]");
  expect_rejected(MessageBytes(encoded(Method::kQsgd)).set_f32(21, -1.0f).bytes(), layout,
                  "push from worker 3: qsgd message, field 'norms' at offset 21: norm 0 of 1 is "
                  "-1, not finite and >= 0");
  // Entry 0 at level 3 of s = 2: the message claims s = 2 (2 bits + sign),
  // same size as s = 3.
  expect_rejected(
      MessageBytes(encoded(Method::kQsgd)).set_u32(9, 2).set_u8(25, 0x03).bytes(), layout,
      "push from worker 3: qsgd message, field 'levels' at offset 25: entry 0 of 10 has level "
      "3, above s = 2");
  expect_rejected(MessageBytes(encoded(Method::kSign)).set_f32(9, INFINITY).bytes(), layout,
                  "push from worker 3: sign message, field 'scale' at offset 9: inf is not "
                  "finite and >= 0");
  expect_rejected(MessageBytes(encoded(Method::kFp16)).set_u8(13, 0x00).set_u8(14, 0x7c).bytes(),
                  layout,
                  "push from worker 3: fp16 message, field 'values' at offset 13: value 0 of 10 "
                  "is not finite (bits 0x7c00)");
  // PowerSGD for a 1 x 10 tensor: rank 1 at 9, P (1 float) at 13.
  expect_rejected(MessageBytes(encoded(Method::kPowerSgd)).set_u32(9, 2).bytes(), layout,
                  "push from worker 3: powersgd message, field 'rank' at offset 9: 2 is not in "
                  "[1, min(rows, cols) = 1]");
  expect_rejected(MessageBytes(encoded(Method::kPowerSgd)).set_f32(13, NAN).bytes(), layout,
                  "push from worker 3: powersgd message, field 'P' at offset 13: value 0 of 1 is "
                  "nan, not finite");
}

// QSGD's buckets: d and the norm count must fit n, every norm finite and
// >= 0, all of them present; `out` unchanged otherwise.
TEST(CompressDecode, RejectsQsgdBucketsThatDoNotFitTheTensor) {
  const TensorLayout layout{1, 10};
  Options options = options_of(Method::kQsgd);
  options.levels = 3;
  options.qsgd_bucket = 4;
  options.min_size = 0;
  auto c = make_compressor(options, {layout, {1, 0}});
  // u32 s at 9, u32 d = 4 at 13, u32 m = 3 at 17, norms at 21, 25, 29,
  // fields at 33.
  const std::vector<std::byte> message = encode_one(*c, 0, normal_vector(10, 6), 0);
  ASSERT_EQ(message.size(), 33u + (10 * 3 + 7) / 8);
  expect_rejected(MessageBytes(message).set_u32(13, 0).bytes(), layout,
                  "push from worker 3: qsgd message, field 'bucket' at offset 13: 0 is not in "
                  "[1, n = 10]");
  expect_rejected(MessageBytes(message).set_u32(13, 11).bytes(), layout,
                  "push from worker 3: qsgd message, field 'bucket' at offset 13: 11 is not in "
                  "[1, n = 10]");
  expect_rejected(MessageBytes(message).set_u32(13, 5).bytes(), layout,
                  "push from worker 3: qsgd message, field 'norm count' at offset 17: 3 norms, "
                  "expected ceil(n / bucket) = ceil(10 / 5) = 2");
  expect_rejected(MessageBytes(message).set_u32(17, 4).bytes(), layout,
                  "push from worker 3: qsgd message, field 'norm count' at offset 17: 4 norms, "
                  "expected ceil(n / bucket) = ceil(10 / 4) = 3");
  expect_rejected(MessageBytes(message).set_u32(17, 2).bytes(), layout,
                  "push from worker 3: qsgd message, field 'norm count' at offset 17: 2 norms, "
                  "expected ceil(n / bucket) = ceil(10 / 4) = 3");
  expect_rejected(MessageBytes(message).set_f32(29, std::nanf("")).bytes(), layout,
                  "push from worker 3: qsgd message, field 'norms' at offset 29: norm 2 of 3 is "
                  "nan, not finite and >= 0");
  expect_rejected(MessageBytes(message).set_f32(25, INFINITY).bytes(), layout,
                  "push from worker 3: qsgd message, field 'norms' at offset 25: norm 1 of 3 is "
                  "inf, not finite and >= 0");
  expect_rejected(std::span(message).first(27), layout,
                  "push from worker 3: field 'norms' needs 12 bytes at offset 21, only 6 left");
  // An empty tensor: d = 0, no norm, no field.
  const std::vector<std::byte> empty = encode_one(*c, 1, {}, 0);
  ASSERT_EQ(empty.size(), 21u);
  std::vector<float> none;
  decode_add(empty, {1, 0}, 1.0f, none, "t");
  expect_rejected(MessageBytes(empty).set_u32(13, 1).bytes(), {1, 0},
                  "push from worker 3: qsgd message, field 'bucket' at offset 13: 1 for n = 0 "
                  "entries, expected 0");
  expect_rejected(MessageBytes(empty).set_u32(17, 1).bytes(), {1, 0},
                  "push from worker 3: qsgd message, field 'norm count' at offset 17: 1 norms "
                  "for n = 0 entries, expected 0");
}

// ---------------------------------------------------------------- low-rank kernels

TEST(CompressLowRank, ProductsMatchTheNaiveOnes) {
  const size_t rows = 13, cols = 9, r = 3;
  const std::vector<float> m = normal_vector(rows * cols, 1);
  const std::vector<float> q = normal_vector(cols * r, 2);
  const std::vector<float> p0 = normal_vector(rows * r, 3);
  std::vector<float> p(rows * r), qt(cols * r), outer(rows * cols);
  detail::multiply(m, rows, cols, q, r, p);
  detail::multiply_transposed(m, rows, cols, p0, r, qt);
  detail::multiply_outer(p0, rows, q, cols, r, outer);
  for (size_t i = 0; i < rows; ++i) {
    for (size_t j = 0; j < r; ++j) {
      double s = 0.0;
      for (size_t k = 0; k < cols; ++k) s += double{m[i * cols + k]} * q[k * r + j];
      EXPECT_NEAR(p[i * r + j], s, 1e-5);
    }
  }
  for (size_t k = 0; k < cols; ++k) {
    for (size_t j = 0; j < r; ++j) {
      double s = 0.0;
      for (size_t i = 0; i < rows; ++i) s += double{m[i * cols + k]} * p0[i * r + j];
      EXPECT_NEAR(qt[k * r + j], s, 1e-5);
    }
  }
  for (size_t i = 0; i < rows; ++i) {
    for (size_t k = 0; k < cols; ++k) {
      double s = 0.0;
      for (size_t j = 0; j < r; ++j) s += double{p0[i * r + j]} * q[k * r + j];
      EXPECT_NEAR(outer[i * cols + k], s, 1e-5);
    }
  }
}

TEST(CompressLowRank, OrthogonalizesColumnsAndKeepsZeroColumnsZero) {
  const size_t rows = 50, r = 4;
  std::vector<float> a = normal_vector(rows * r, 4);
  // Column 2 nearly parallel to column 0.
  for (size_t i = 0; i < rows; ++i) a[i * r + 2] = a[i * r] + 1e-3f * a[i * r + 2];
  detail::orthogonalize_columns(a, rows, r);
  for (size_t x = 0; x < r; ++x) {
    for (size_t y = 0; y < r; ++y) {
      double dot = 0.0;
      for (size_t i = 0; i < rows; ++i) dot += double{a[i * r + x]} * a[i * r + y];
      EXPECT_NEAR(dot, x == y ? 1.0 : 0.0, 1e-5) << x << ", " << y;
    }
  }
  std::vector<float> zero(rows * 2, 0.0f);
  detail::orthogonalize_columns(zero, rows, 2);
  for (const float v : zero) ASSERT_EQ(v, 0.0f);
}

}  // namespace
}  // namespace dtrain::compress
