// ProtoEncoder: the protocol-buffer wire format (proto3), written by hand for
// the few messages dtrain emits (TensorBoard events, obs/tensorboard_event.h);
// no libprotobuf. It appends fields to a byte string in the order they are
// called; a nested message is encoded on its own and added with message().
//
// Wire format (https://protobuf.dev/programming-guides/encoding/): each field
// is a key varint (field_number << 3 | wire_type) then its payload: varint
// (type 0) for int64 and bool, 8 little-endian bytes (type 1) for double,
// 4 (type 5) for float, a length varint and the bytes (type 2) for strings,
// nested messages and packed repeated scalars. Varints are 7 bits a byte,
// least significant group first, the high bit set on all but the last byte;
// a negative int64 takes 10 bytes (two's complement as uint64).
//
// The encoder does not skip default values: the message encoders decide
// (proto3 omits a zero scalar, but a member of a oneof is always written).
// Thread safety: a value; one thread per object. Never throws except
// std::bad_alloc; never blocks.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace dtrain::obs {

class ProtoEncoder {
 public:
  void int64_field(int field, int64_t value);                      // wire type 0
  void double_field(int field, double value);                      // wire type 1
  void float_field(int field, float value);                        // wire type 5
  void bytes_field(int field, std::string_view value);             // wire type 2 (string, bytes)
  void message(int field, const ProtoEncoder& nested);             // wire type 2
  void packed_doubles(int field, std::span<const double> values);  // wire type 2

  const std::string& bytes() const { return bytes_; }
  std::string take() { return std::move(bytes_); }

 private:
  void key(int field, int wire_type);
  void varint(uint64_t value);
  void fixed64(uint64_t value);
  std::string bytes_;
};

}  // namespace dtrain::obs
