// The zero-copy paths of ps/messages.h: float arrays encoded from the
// caller's memory (Message::float_parts) and pull replies decoded as views of
// the payload (FloatDecoding::kView), with the same strict bounds as copies.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "core/error.h"
#include "ps/messages.h"
#include "testing/expect_error.h"

namespace dtrain::ps {
namespace {

using dtrain::testing::expect_error_naming;

std::span<const std::byte> bytes_of(const std::vector<float>& v, size_t begin, size_t end) {
  return std::as_bytes(std::span<const float>(v).subspan(begin, end - begin));
}

std::vector<float> iota_floats(size_t n) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), 0.5f);
  return v;
}

Message pull_reply(std::vector<float> values) {
  Message m;
  m.kind = Kind::kReply;
  m.reply_to = Kind::kPull;
  m.version = 4;
  m.totals = {1.5, 2, 3, {{3, 0.5, true}}};  // 17 bytes per worker: the floats are misaligned
  m.floats = std::move(values);
  return m;
}

std::vector<float> floats_in(std::span<const std::byte> bytes) {
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

TEST(PsZeroCopyMessages, FloatPartsEncodeExactlyAsOneFloatArray) {
  const std::vector<float> values = iota_floats(10000);
  for (Kind kind : {Kind::kInit, Kind::kPush, Kind::kPushRows}) {
    Message whole;
    whole.kind = kind;
    whole.samples = 8;
    whole.keys = {1, 2};
    whole.floats = values;
    Message parts = whole;
    parts.floats.clear();
    parts.float_parts = {bytes_of(values, 0, 3), bytes_of(values, 3, 3), bytes_of(values, 3, 9000),
                         bytes_of(values, 9000, 10000)};
    EXPECT_EQ(encode_message(parts), encode_message(whole)) << to_string(kind);
  }
  Message reply = pull_reply(values);
  Message parts = pull_reply({});
  parts.float_parts = {bytes_of(values, 0, 5000), bytes_of(values, 5000, 10000)};
  EXPECT_EQ(encode_message(parts), encode_message(reply));
}

TEST(PsZeroCopyMessages, FloatsAndPartsTogetherOrPartialFloatsAreRefused) {
  const std::vector<float> values = iota_floats(4);
  Message m;
  m.kind = Kind::kPush;
  m.floats = values;
  m.float_parts = {bytes_of(values, 0, 4)};
  testing::expect_usage_error([&] { encode_message(m); },
                              "ps message: push has both floats (4) and float parts (1)");
  m.floats.clear();
  m.float_parts = {std::as_bytes(std::span<const float>(values)).first(7)};
  testing::expect_usage_error([&] { encode_message(m); },
                              "ps message: a float part of 7 bytes is not whole floats");
}

TEST(PsZeroCopyMessages, ViewDecodingPointsIntoThePayload) {
  const std::vector<float> values = iota_floats(1000);
  const std::vector<std::byte> payload = encode_message(pull_reply(values));
  const Message copied = decode_message(payload);
  const Message viewed = decode_message(payload, FloatDecoding::kView);
  EXPECT_EQ(copied.floats, values);
  EXPECT_TRUE(viewed.floats.empty());
  ASSERT_EQ(viewed.float_bytes.size(), values.size() * sizeof(float));
  EXPECT_GE(viewed.float_bytes.data(), payload.data());
  EXPECT_EQ(viewed.float_bytes.data() + viewed.float_bytes.size(), payload.data() + payload.size());
  EXPECT_EQ(floats_in(viewed.float_bytes), values);
  EXPECT_EQ(viewed.totals.samples, 3);

  Message rows;
  rows.kind = Kind::kReply;
  rows.reply_to = Kind::kPullRows;
  rows.floats = values;
  const std::vector<std::byte> rows_payload = encode_message(rows);
  EXPECT_EQ(floats_in(decode_message(rows_payload, FloatDecoding::kView).float_bytes), values);
}

// A payload at every alignment, as a ZeroMQ message may deliver it.
TEST(PsZeroCopyMessages, MisalignedPayloadsDecodeTheSameValues) {
  const std::vector<float> values = iota_floats(777);
  Message push;
  push.kind = Kind::kPush;
  push.samples = 2;
  push.floats = values;
  for (const Message& m : {pull_reply(values), push}) {
    const std::vector<std::byte> payload = encode_message(m);
    std::vector<std::byte> buffer(payload.size() + 8);
    for (size_t shift = 0; shift < 8; ++shift) {
      std::memcpy(buffer.data() + shift, payload.data(), payload.size());
      const std::span<const std::byte> at(buffer.data() + shift, payload.size());
      const Message copied = decode_message(at);
      EXPECT_EQ(copied.floats, values) << shift;
      // Pull replies on the worker, pushes on the server: both viewed.
      EXPECT_EQ(floats_in(decode_message(at, FloatDecoding::kView).float_bytes), values);
    }
  }
}

TEST(PsZeroCopyMessages, EveryTruncationOfAViewedReplyIsRejected) {
  const std::vector<std::byte> payload = encode_message(pull_reply(iota_floats(64)));
  for (size_t size = 0; size < payload.size(); ++size) {
    EXPECT_THROW(decode_message(std::span(payload).first(size), FloatDecoding::kView), DataError)
        << size;
  }
}

TEST(PsZeroCopyMessages, OversizedCountsAndTrailingBytesAreRejectedInBothDecodings) {
  std::vector<std::byte> payload = encode_message(pull_reply(iota_floats(16)));
  std::vector<std::byte> longer = payload;
  longer.push_back(std::byte{0});
  // The float count is the u64 right before the 16 floats.
  const size_t count_at = payload.size() - 16 * sizeof(float) - sizeof(uint64_t);
  for (uint64_t count : {uint64_t{18}, uint64_t{1} << 40, std::numeric_limits<uint64_t>::max()}) {
    std::memcpy(payload.data() + count_at, &count, sizeof(count));
    for (FloatDecoding d : {FloatDecoding::kCopy, FloatDecoding::kView}) {
      expect_error_naming<DataError>([&] { decode_message(payload, d); }, "'pull values'");
    }
  }
  for (FloatDecoding d : {FloatDecoding::kCopy, FloatDecoding::kView}) {
    EXPECT_THROW(decode_message(longer, d), DataError);
  }
}

// A push's floats are copied chunk by chunk (finiteness checked in cache):
// a long one round-trips, and a NaN in a later chunk is flagged.
TEST(PsZeroCopyMessages, LongPushesDecodeChunkByChunk) {
  Message push;
  push.kind = Kind::kPush;
  push.samples = 1;
  push.floats = iota_floats(3 * 4096 + 5);
  Message decoded = decode_message(encode_message(push));
  EXPECT_EQ(decoded.floats, push.floats);
  EXPECT_TRUE(decoded.floats_finite);
  push.floats[2 * 4096 + 1] = std::numeric_limits<float>::quiet_NaN();
  decoded = decode_message(encode_message(push));
  EXPECT_FALSE(decoded.floats_finite);
  EXPECT_TRUE(std::isnan(decoded.floats[2 * 4096 + 1]));
}

// The server views a dense push's gradient in the received payload (no
// copy): the same values, bounds and NaN/Inf flag as the copying decoder.
TEST(PsZeroCopyMessages, AViewedPushPointsIntoThePayloadAndFlagsNonFiniteValues) {
  Message push;
  push.kind = Kind::kPush;
  push.samples = 3;
  push.floats = iota_floats(3 * 4096 + 5);
  std::vector<std::byte> payload = encode_message(push);
  Message viewed = decode_message(payload, FloatDecoding::kView);
  EXPECT_TRUE(viewed.floats.empty());
  EXPECT_EQ(viewed.float_count(), push.floats.size());
  // The floats end where the push's 5-byte tail (no rows, no pull) starts.
  EXPECT_EQ(viewed.float_bytes.data() + viewed.float_bytes.size(),
            payload.data() + payload.size() - 5);
  EXPECT_EQ(floats_in(viewed.float_bytes), push.floats);
  EXPECT_TRUE(viewed.floats_finite);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    push.floats[2 * 4096 + 1] = bad;
    payload = encode_message(push);
    EXPECT_FALSE(decode_message(payload, FloatDecoding::kView).floats_finite) << bad;
  }
  // Compressed pushes and row pushes are still copied.
  Message rows;
  rows.kind = Kind::kPushRows;
  rows.keys = {1};
  rows.floats = {1.0f, 2.0f};
  const Message rows_decoded = decode_message(encode_message(rows), FloatDecoding::kView);
  EXPECT_EQ(rows_decoded.floats, rows.floats);
  EXPECT_TRUE(rows_decoded.float_bytes.empty());
}

TEST(PsZeroCopyMessages, EveryTruncationOrOversizedCountOfAViewedPushIsRejected) {
  Message push;
  push.kind = Kind::kPush;
  push.samples = 1;
  push.floats = iota_floats(16);
  std::vector<std::byte> payload = encode_message(push);
  for (size_t size = 0; size < payload.size(); ++size) {
    EXPECT_THROW(decode_message(std::span(payload).first(size), FloatDecoding::kView), DataError)
        << size;
  }
  std::vector<std::byte> longer = payload;
  longer.push_back(std::byte{0});
  EXPECT_THROW(decode_message(longer, FloatDecoding::kView), DataError);
  const size_t count_at = payload.size() - 5 - 16 * sizeof(float) - sizeof(uint64_t);
  for (uint64_t count : {uint64_t{18}, uint64_t{1} << 40, std::numeric_limits<uint64_t>::max()}) {
    std::memcpy(payload.data() + count_at, &count, sizeof(count));
    expect_error_naming<DataError>([&] { decode_message(payload, FloatDecoding::kView); },
                                   "'push gradient'");
  }
}

}  // namespace
}  // namespace dtrain::ps
