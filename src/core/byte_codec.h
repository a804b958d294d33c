// The byte codec of dtrain: every binary layout dtrain writes or reads (the
// wire header, rendezvous and parameter-server payloads, the elastic state
// rank 0 sends, checkpoint files, safetensors' length field, IDX files) goes
// through ByteWriter and ByteReader.
//
// Byte order: little-endian, always, whatever the host. The one exception is
// ByteReader::read_u32_be, for file formats that mandate big-endian (IDX,
// src/data/idx.cpp); nothing dtrain defines itself uses it.
//
// ByteWriter appends fixed-width integers and floats, raw bytes, arrays of
// floats or u64 (bulk copies on little-endian hosts) and length-prefixed
// strings; the caller knows its limits (a string longer than its prefix can
// count is an InternalError, a bug of the writer). A length known only at the
// end (a checkpoint's body) is written as a placeholder and overwritten.
//
// ByteReader reads the same over untrusted bytes (a std::span it does not
// own: the bytes must outlive the reader). Every read is bounds-checked; a
// count or length is checked against what is left before anything is
// allocated. Every failure throws DataError naming the reader's context (set
// at construction: "ps message", "rendezvous record", ...), the field, the
// offset, what was expected and what was there:
//   "ps message: field 'push lr' needs 4 bytes at offset 36, only 2 left"
//   "ps message: field 'push gradient' at offset 52: count 1152921504606846976
//    of 4-byte elements needs more than the 8 bytes left"
//   "rendezvous record: field 'host' at offset 4 is 65286 bytes, more than
//    the limit of 1024"
//   "ps message: 1 bytes after the end of the pull body (at offset 36)"
// Semantic checks (a value out of range) are the caller's, with its own words.
//
// Thread safety: values; one thread per object. Never blocks.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dtrain {

// How a string or blob announces its length.
enum class LengthPrefix { kU16, kU32, kU64 };

class ByteWriter {
 public:
  ByteWriter() = default;
  // Reserves `reserve_bytes` up front (one allocation for a known size).
  explicit ByteWriter(size_t reserve_bytes) { bytes_.reserve(reserve_bytes); }
  // Writes into `buffer` (cleared, its capacity kept and grown to
  // `reserve_bytes`): a reused buffer, e.g. a frame payload's.
  ByteWriter(std::vector<std::byte> buffer, size_t reserve_bytes) : bytes_(std::move(buffer)) {
    bytes_.clear();
    bytes_.reserve(reserve_bytes);
  }

  void write_u8(uint8_t value) { bytes_.push_back(static_cast<std::byte>(value)); }
  void write_u16(uint16_t value) { append_le(value); }
  void write_u32(uint32_t value) { append_le(value); }
  void write_u64(uint64_t value) { append_le(value); }
  void write_i32(int32_t value) { append_le(static_cast<uint32_t>(value)); }
  void write_i64(int64_t value) { append_le(static_cast<uint64_t>(value)); }
  void write_f32(float value) { append_le(std::bit_cast<uint32_t>(value)); }
  void write_f64(double value) { append_le(std::bit_cast<uint64_t>(value)); }

  void write_bytes(std::span<const std::byte> bytes);
  // The elements, each little-endian (no count; see write_*_array_counted).
  void write_f32_array(std::span<const float> values);
  void write_u64_array(std::span<const uint64_t> values);
  // u64 count, then the elements.
  void write_f32_array_counted(std::span<const float> values);
  void write_u64_array_counted(std::span<const uint64_t> values);
  // Length prefix, then the bytes. InternalError when `text` is longer than
  // the prefix can count (65535 for kU16).
  void write_string(std::string_view text, LengthPrefix prefix = LengthPrefix::kU32);
  void write_blob(std::span<const std::byte> blob, LengthPrefix prefix = LengthPrefix::kU32);
  // Replaces the 8 bytes at `offset` (written before, as a placeholder) with
  // `value`. InternalError when they were not written.
  void overwrite_u64(size_t offset, uint64_t value);

  size_t size() const { return bytes_.size(); }
  std::span<const std::byte> bytes() const { return bytes_; }
  // The bytes written; the writer is empty afterwards.
  std::vector<std::byte> take() { return std::move(bytes_); }

 private:
  template <typename T>
  void append_le(T value) {
    const size_t at = bytes_.size();
    bytes_.resize(at + sizeof(T));
    for (size_t i = 0; i < sizeof(T); ++i) {
      bytes_[at + i] = static_cast<std::byte>(static_cast<uint64_t>(value) >> (8 * i));
    }
  }
  void write_length(size_t length, LengthPrefix prefix, std::string_view what);

  std::vector<std::byte> bytes_;
};

class ByteReader {
 public:
  // `bytes` must stay valid while the reader is used.
  ByteReader(std::span<const std::byte> bytes, std::string context);

  uint8_t read_u8(std::string_view field);
  uint16_t read_u16(std::string_view field) { return read_le<uint16_t>(field); }
  uint32_t read_u32(std::string_view field) { return read_le<uint32_t>(field); }
  uint64_t read_u64(std::string_view field) { return read_le<uint64_t>(field); }
  int32_t read_i32(std::string_view field) { return static_cast<int32_t>(read_u32(field)); }
  int64_t read_i64(std::string_view field) { return static_cast<int64_t>(read_u64(field)); }
  float read_f32(std::string_view field) { return std::bit_cast<float>(read_u32(field)); }
  double read_f64(std::string_view field) { return std::bit_cast<double>(read_u64(field)); }
  // Big-endian: only for file formats that mandate it (IDX).
  uint32_t read_u32_be(std::string_view field);

  // The next `count` bytes, as a view into the input.
  std::span<const std::byte> read_bytes(size_t count, std::string_view field);
  // A u64 count of `element_bytes`-sized items, checked to fit in what is
  // left after it.
  uint64_t read_count(size_t element_bytes, std::string_view field);
  // `count` elements (each little-endian).
  std::vector<float> read_f32_array(uint64_t count, std::string_view field);
  std::vector<uint64_t> read_u64_array(uint64_t count, std::string_view field);
  // `out.size()` elements into `out` (a tensor's storage: no second copy).
  void read_f32_array_into(std::span<float> out, std::string_view field);
  // read_count, then the elements.
  std::vector<float> read_f32_array_counted(std::string_view field);
  std::vector<uint64_t> read_u64_array_counted(std::string_view field);
  // Length prefix, then at most `max_bytes` bytes.
  std::string read_string(std::string_view field, size_t max_bytes,
                          LengthPrefix prefix = LengthPrefix::kU32);
  std::span<const std::byte> read_blob(std::string_view field, size_t max_bytes,
                                       LengthPrefix prefix = LengthPrefix::kU32);

  // Throws unless `count` more bytes are left (for a fixed-size block read
  // field by field, checked once before a loop allocates).
  void need(size_t count, std::string_view field) const;
  // The same for `count` elements of `element_bytes` each (no overflow).
  void need_elements(uint64_t count, size_t element_bytes, std::string_view field) const;
  // Throws unless every byte was read; `what` names what ended ("pull body").
  void expect_end(std::string_view what) const;

  size_t offset() const { return offset_; }
  size_t remaining() const { return bytes_.size() - offset_; }
  std::span<const std::byte> rest() const { return bytes_.subspan(offset_); }
  const std::string& context() const { return context_; }

 private:
  template <typename T>
  T read_le(std::string_view field) {
    need(sizeof(T), field);
    uint64_t value = 0;
    for (size_t i = sizeof(T); i-- > 0;) {
      value = (value << 8) | std::to_integer<uint64_t>(bytes_[offset_ + i]);
    }
    offset_ += sizeof(T);
    return static_cast<T>(value);
  }
  size_t read_length(std::string_view field, size_t max_bytes, LengthPrefix prefix);

  std::span<const std::byte> bytes_;
  size_t offset_ = 0;
  std::string context_;
};

}  // namespace dtrain
