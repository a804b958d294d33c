// The byte codec: round trips of every type, the little-endian layout byte by
// byte, every truncation point of a record with its exact error, length and
// count limits checked before allocation.
#include "core/byte_codec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"

namespace dtrain {
namespace {

// The message of the DataError that `f` throws ("no error" when none).
template <typename F>
std::string data_error(F&& f) {
  try {
    f();
  } catch (const DataError& e) {
    return e.what();
  }
  return "no error";
}

std::vector<std::byte> bytes_of(std::initializer_list<int> values) {
  std::vector<std::byte> out;
  for (int v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

TEST(ByteCodec, EveryTypeRoundTrips) {
  ByteWriter w;
  w.write_u8(0xAB);
  w.write_u16(0xBEEF);
  w.write_u32(0xDEADBEEFu);
  w.write_u64(0x0102030405060708ull);
  w.write_i32(-7);
  w.write_i64(std::numeric_limits<int64_t>::min());
  w.write_f32(-1.5f);
  w.write_f64(std::numeric_limits<double>::infinity());
  w.write_f32(std::numeric_limits<float>::quiet_NaN());
  w.write_string("hello");
  w.write_string("", LengthPrefix::kU16);
  w.write_blob(bytes_of({1, 2, 3}), LengthPrefix::kU16);
  const std::vector<float> floats{0.0f, -0.0f, 3.25f, std::numeric_limits<float>::denorm_min()};
  const std::vector<uint64_t> keys{0, 1, uint64_t{1} << 63, ~uint64_t{0}};
  w.write_f32_array_counted(floats);
  w.write_u64_array_counted(keys);
  w.write_f32_array(std::span(floats).first(2));
  const std::vector<std::byte> bytes = w.take();
  EXPECT_EQ(w.size(), 0u);

  ByteReader r(bytes, "sample");
  EXPECT_EQ(r.read_u8("u8"), 0xAB);
  EXPECT_EQ(r.read_u16("u16"), 0xBEEF);
  EXPECT_EQ(r.read_u32("u32"), 0xDEADBEEFu);
  EXPECT_EQ(r.read_u64("u64"), 0x0102030405060708ull);
  EXPECT_EQ(r.read_i32("i32"), -7);
  EXPECT_EQ(r.read_i64("i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(r.read_f32("f32"), -1.5f);
  EXPECT_EQ(r.read_f64("f64"), std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(r.read_f32("nan")));
  EXPECT_EQ(r.read_string("text", 5), "hello");
  EXPECT_EQ(r.read_string("empty", 0, LengthPrefix::kU16), "");
  const auto blob = r.read_blob("blob", 3, LengthPrefix::kU16);
  EXPECT_EQ(std::vector<std::byte>(blob.begin(), blob.end()), bytes_of({1, 2, 3}));
  const std::vector<float> floats_back = r.read_f32_array_counted("floats");
  ASSERT_EQ(floats_back.size(), floats.size());
  for (size_t i = 0; i < floats.size(); ++i) {
    EXPECT_EQ(std::bit_cast<uint32_t>(floats_back[i]), std::bit_cast<uint32_t>(floats[i])) << i;
  }
  EXPECT_EQ(r.read_u64_array_counted("keys"), keys);
  EXPECT_EQ(r.read_f32_array(2, "two floats"), std::vector<float>({0.0f, -0.0f}));
  EXPECT_EQ(r.remaining(), 0u);
  EXPECT_NO_THROW(r.expect_end("sample"));
}

TEST(ByteCodec, LayoutIsLittleEndianWhateverTheHost) {
  ByteWriter w;
  w.write_u16(0x0102);
  w.write_u32(0x01020304u);
  w.write_u64(0x0102030405060708ull);
  w.write_i32(-2);
  w.write_f32(1.0f);  // 0x3F800000
  w.write_string("ab", LengthPrefix::kU16);
  w.write_f32_array_counted(std::vector<float>{2.0f});                           // 0x40000000
  EXPECT_EQ(w.take(), bytes_of({0x02, 0x01,                                      //
                                0x04, 0x03, 0x02, 0x01,                          //
                                0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,  //
                                0xFE, 0xFF, 0xFF, 0xFF,                          //
                                0x00, 0x00, 0x80, 0x3F,                          //
                                0x02, 0x00, 'a',  'b',                           //
                                0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  //
                                0x00, 0x00, 0x00, 0x40}));
}

TEST(ByteCodec, BigEndianOnlyWhereAskedFor) {
  const auto bytes = bytes_of({0x00, 0x00, 0x08, 0x03, 0x00, 0x00, 0x08, 0x03});
  ByteReader r(bytes, "idx");
  EXPECT_EQ(r.read_u32_be("magic"), 0x00000803u);
  EXPECT_EQ(r.read_u32("same bytes, little-endian"), 0x03080000u);
  EXPECT_EQ(data_error([&] { r.read_u32_be("extent"); }),
            "idx: field 'extent' needs 4 bytes at offset 8, only 0 left");
}

// A record of every kind of field, cut at each length: each cut names the
// field it cut into, its offset and what was left.
TEST(ByteCodec, EveryTruncationPointNamesTheField) {
  ByteWriter w;
  w.write_u8(1);                                        // [0, 1)
  w.write_u32(2);                                       // [1, 5)
  w.write_string("abc");                                // [5, 9) length, [9, 12) bytes
  w.write_f32_array_counted(std::vector<float>{1, 2});  // [12, 20) count, [20, 28) values
  w.write_u64(3);                                       // [28, 36)
  const std::vector<std::byte> bytes = w.take();
  auto read_all = [](std::span<const std::byte> in) {
    ByteReader r(in, "record");
    r.read_u8("kind");
    r.read_u32("rank");
    r.read_string("host", 16);
    r.read_f32_array_counted("values");
    r.read_u64("step");
    r.expect_end("record");
  };
  EXPECT_EQ(data_error([&] { read_all(bytes); }), "no error");
  for (size_t size = 0; size < bytes.size(); ++size) {
    std::string expected;
    if (size < 1) {
      expected = "record: field 'kind' needs 1 bytes at offset 0, only 0 left";
    } else if (size < 5) {
      expected =
          fmt::format("record: field 'rank' needs 4 bytes at offset 1, only {} left", size - 1);
    } else if (size < 9) {
      expected =
          fmt::format("record: field 'host' needs 4 bytes at offset 5, only {} left", size - 5);
    } else if (size < 12) {
      expected =
          fmt::format("record: field 'host' needs 3 bytes at offset 9, only {} left", size - 9);
    } else if (size < 20) {
      expected =
          fmt::format("record: field 'values' needs 8 bytes at offset 12, only {} left", size - 12);
    } else if (size < 28) {
      expected = fmt::format(
          "record: field 'values' at offset 12: count 2 of 4-byte elements needs more than the {} "
          "bytes left",
          size - 20);
    } else {
      expected =
          fmt::format("record: field 'step' needs 8 bytes at offset 28, only {} left", size - 28);
    }
    EXPECT_EQ(data_error([&] { read_all(std::span(bytes).first(size)); }), expected)
        << "cut to " << size;
  }
  std::vector<std::byte> longer = bytes;
  longer.push_back(std::byte{0});
  longer.push_back(std::byte{0});
  EXPECT_EQ(data_error([&] { read_all(longer); }),
            "record: 2 bytes after the end of the record (at offset 36)");
}

TEST(ByteCodec, StringLimitsAreCheckedBeforeTheBytesAreRead) {
  ByteWriter w;
  w.write_string(std::string(1025, 'x'));
  const auto bytes = w.take();
  ByteReader r(bytes, "rendezvous record");
  EXPECT_EQ(data_error([&] { r.read_string("host", 1024); }),
            "rendezvous record: field 'host' at offset 0 is 1025 bytes, more than the limit of "
            "1024");
  ByteReader exact(bytes, "rendezvous record");
  EXPECT_EQ(exact.read_string("host", 1025).size(), 1025u);

  // A length far beyond the input: refused by the limit, or by what is left.
  const auto huge = bytes_of({0xFF, 0xFF, 0xFF, 0xFF});
  ByteReader limited(huge, "c");
  EXPECT_EQ(data_error([&] { limited.read_blob("blob", 100); }),
            "c: field 'blob' at offset 0 is 4294967295 bytes, more than the limit of 100");
  ByteReader unlimited(huge, "c");
  EXPECT_EQ(data_error([&] { unlimited.read_blob("blob", std::numeric_limits<size_t>::max()); }),
            "c: field 'blob' needs 4294967295 bytes at offset 4, only 0 left");
}

TEST(ByteCodec, TheLongestStringEachPrefixCanCount) {
  const std::string longest(65535, 'y');
  ByteWriter w;
  w.write_string(longest, LengthPrefix::kU16);
  const auto bytes = w.take();
  ASSERT_EQ(bytes.size(), 2u + 65535u);
  ByteReader r(bytes, "c");
  EXPECT_EQ(r.read_string("name", 65535, LengthPrefix::kU16), longest);
  // One more byte does not fit a u16 length: a bug of the writer, not data.
  ByteWriter too_long;
  EXPECT_THROW(too_long.write_string(longest + "y", LengthPrefix::kU16), InternalError);
}

TEST(ByteCodec, HugeCountsAreRefusedBeforeAllocating) {
  ByteWriter w;
  w.write_u64(uint64_t{1} << 62);
  w.write_u64(0);
  const auto bytes = w.take();
  ByteReader r(bytes, "ps message");
  EXPECT_EQ(data_error([&] { r.read_f32_array_counted("push gradient"); }),
            "ps message: field 'push gradient' at offset 0: count 4611686018427387904 of 4-byte "
            "elements needs more than the 8 bytes left");
  // Element counts given by the caller: the byte count may not fit 64 bits.
  ByteReader direct(bytes, "ps message");
  EXPECT_EQ(data_error([&] { direct.read_u64_array(uint64_t{1} << 62, "keys"); }),
            "ps message: field 'keys' needs 4611686018427387904 x 8 bytes at offset 0, only 16 "
            "left");
  EXPECT_EQ(data_error([&] { direct.read_f32_array(5, "values"); }),
            "ps message: field 'values' needs 20 bytes at offset 0, only 16 left");
  EXPECT_EQ(data_error([&] { direct.need_elements(3, 17, "steps"); }),
            "ps message: field 'steps' needs 51 bytes at offset 0, only 16 left");
  EXPECT_EQ(direct.read_u64_array(2, "keys").size(), 2u);
}

// A u64 length (a blob that may pass 4 GiB): the layout, and a length past
// the input refused by what is left.
TEST(ByteCodec, U64LengthPrefix) {
  ByteWriter w;
  w.write_blob(bytes_of({7, 8}), LengthPrefix::kU64);
  w.write_string("z", LengthPrefix::kU64);
  const auto bytes = w.take();
  EXPECT_EQ(bytes, bytes_of({0x02, 0, 0, 0, 0, 0, 0, 0, 7, 8, 0x01, 0, 0, 0, 0, 0, 0, 0, 'z'}));
  ByteReader r(bytes, "elastic state");
  const auto blob = r.read_blob("model", std::numeric_limits<size_t>::max(), LengthPrefix::kU64);
  EXPECT_EQ(std::vector<std::byte>(blob.begin(), blob.end()), bytes_of({7, 8}));
  EXPECT_EQ(r.read_string("name", 1, LengthPrefix::kU64), "z");

  const auto huge = bytes_of({0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1});
  ByteReader limited(huge, "c");
  EXPECT_EQ(data_error([&] { limited.read_blob("model", 100, LengthPrefix::kU64); }),
            "c: field 'model' at offset 0 is 18446744073709551615 bytes, more than the limit of "
            "100");
  ByteReader unlimited(huge, "c");
  EXPECT_EQ(data_error([&] {
              unlimited.read_blob("model", std::numeric_limits<size_t>::max(), LengthPrefix::kU64);
            }),
            "c: field 'model' needs 18446744073709551615 bytes at offset 8, only 1 left");
}

// A length known only at the end is written as a placeholder, then set.
TEST(ByteCodec, OverwriteSetsAPlaceholder) {
  ByteWriter w;
  w.write_u8(0xAA);
  const size_t at = w.size();
  w.write_u64(0);
  w.write_u8(0xBB);
  w.overwrite_u64(at, 0x0102030405060708ull);
  EXPECT_EQ(std::vector<std::byte>(w.bytes().begin(), w.bytes().end()),
            bytes_of({0xAA, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0xBB}));
  // Bytes not yet written: a bug of the writer.
  EXPECT_THROW(w.overwrite_u64(3, 0), InternalError);
  EXPECT_THROW(w.overwrite_u64(std::numeric_limits<size_t>::max(), 0), InternalError);
}

// Floats straight into caller-owned storage, checked before anything is
// written there.
TEST(ByteCodec, ReadF32ArrayIntoFillsTheGivenSpan) {
  ByteWriter w;
  w.write_f32_array(std::vector<float>{1.5f, -2.0f, 0.25f});
  const auto bytes = w.take();
  ByteReader r(bytes, "checkpoint");
  std::vector<float> out(2, 9.0f);
  r.read_f32_array_into(out, "data");
  EXPECT_EQ(out, std::vector<float>({1.5f, -2.0f}));
  r.read_f32_array_into(std::span<float>(), "empty");
  std::vector<float> two(2, 9.0f);
  EXPECT_EQ(data_error([&] { r.read_f32_array_into(two, "rest"); }),
            "checkpoint: field 'rest' needs 8 bytes at offset 8, only 4 left");
  EXPECT_EQ(two, std::vector<float>({9.0f, 9.0f}));
  EXPECT_EQ(r.offset(), 8u);
}

TEST(ByteCodec, ReadBytesIsAViewIntoTheInput) {
  const auto bytes = bytes_of({9, 8, 7, 6});
  ByteReader r(bytes, "c");
  r.read_u8("first");
  const auto view = r.read_bytes(2, "middle");
  EXPECT_EQ(view.data(), bytes.data() + 1);
  EXPECT_EQ(r.offset(), 3u);
  EXPECT_EQ(r.rest().size(), 1u);
  EXPECT_EQ(r.context(), "c");
}

}  // namespace
}  // namespace dtrain
