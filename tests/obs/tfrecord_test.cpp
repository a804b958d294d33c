#include "obs/tfrecord.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/crc32c.h"
#include "obs/proto_encoder.h"

namespace dtrain::obs {
namespace {

std::string bytes(std::vector<unsigned char> v) { return {v.begin(), v.end()}; }

TEST(Tfrecord, Crc32cIsCastagnoli) {
  // The standard check value of CRC-32C (RFC 3720, appendix B.4).
  EXPECT_EQ(crc32c("123456789", 9), 0xe3069283u);
}

TEST(Tfrecord, MaskedCrcOfKnownVectors) {
  // rotate_right(0xe3069283, 15) + 0xa282ead8, worked by hand:
  // 0x25c7c60d + 0xa282ead8 = 0xc78ab0e5 (mod 2^32).
  EXPECT_EQ(masked_crc32c("123456789", 9), 0xc78ab0e5u);
  EXPECT_EQ(masked_crc32c("", 0), 0xa282ead8u);  // crc32c of nothing is 0
}

TEST(Tfrecord, FramesARecord) {
  std::string out;
  append_tfrecord(out, "abc");
  EXPECT_EQ(out, bytes({0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // length 3, LE
                        0xb0, 0x99, 0x49, 0x0e,                          // masked crc of it
                        0x61, 0x62, 0x63,                                // "abc"
                        0x6e, 0x57, 0xf1, 0x21}));                       // masked crc of "abc"
  EXPECT_EQ(out.size(), tfrecord_size(3));
  append_tfrecord(out, "");
  EXPECT_EQ(out.size(), tfrecord_size(3) + tfrecord_size(0));
}

TEST(ProtoEncoder, VarintsAndFixedWidths) {
  ProtoEncoder e;
  e.int64_field(2, 300);  // key 0x10, varint 300 = 0xac 0x02
  e.int64_field(2, -1);   // ten bytes, two's complement
  e.double_field(1, 1.5);
  e.float_field(2, -2.0f);
  e.bytes_field(20, "hi");  // key (20 << 3 | 2) = 162 = 0xa2 0x01
  const double pair[] = {1.0, -0.0};
  e.packed_doubles(6, pair);
  EXPECT_EQ(e.bytes(), bytes({0x10, 0xac, 0x02,                                                  //
                              0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,  //
                              0x09, 0,    0,    0,    0,    0,    0,    0xf8, 0x3f,              //
                              0x15, 0,    0,    0,    0xc0,                                      //
                              0xa2, 0x01, 0x02, 'h',  'i',                                       //
                              0x32, 0x10, 0,    0,    0,    0,    0,    0,    0xf0, 0x3f, 0,
                              0,    0,    0,    0,    0,    0,    0x80}));
}

}  // namespace
}  // namespace dtrain::obs
