#include "obs/proto_encoder.h"

#include <bit>

namespace dtrain::obs {

void ProtoEncoder::varint(uint64_t value) {
  while (value >= 0x80) {
    bytes_.push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  bytes_.push_back(static_cast<char>(value));
}

void ProtoEncoder::fixed64(uint64_t value) {
  for (int i = 0; i < 8; ++i) bytes_.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

void ProtoEncoder::key(int field, int wire_type) {
  varint((static_cast<uint64_t>(field) << 3) | static_cast<uint64_t>(wire_type));
}

void ProtoEncoder::int64_field(int field, int64_t value) {
  key(field, 0);
  varint(static_cast<uint64_t>(value));
}

void ProtoEncoder::double_field(int field, double value) {
  key(field, 1);
  fixed64(std::bit_cast<uint64_t>(value));
}

void ProtoEncoder::float_field(int field, float value) {
  key(field, 5);
  const auto bits = std::bit_cast<uint32_t>(value);
  for (int i = 0; i < 4; ++i) bytes_.push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
}

void ProtoEncoder::bytes_field(int field, std::string_view value) {
  key(field, 2);
  varint(value.size());
  bytes_.append(value);
}

void ProtoEncoder::message(int field, const ProtoEncoder& nested) {
  bytes_field(field, nested.bytes_);
}

void ProtoEncoder::packed_doubles(int field, std::span<const double> values) {
  key(field, 2);
  varint(8 * values.size());
  for (const double v : values) fixed64(std::bit_cast<uint64_t>(v));
}

}  // namespace dtrain::obs
