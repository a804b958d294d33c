#include "core/byte_codec.h"

#include <cstring>
#include <limits>

#include "core/error.h"

namespace dtrain {

namespace {

constexpr bool kLittleEndianHost = std::endian::native == std::endian::little;

size_t prefix_bytes(LengthPrefix prefix) {
  switch (prefix) {
    case LengthPrefix::kU16:
      return 2;
    case LengthPrefix::kU32:
      return 4;
    case LengthPrefix::kU64:
      return 8;
  }
  return 0;
}

uint64_t prefix_max(LengthPrefix prefix) {
  switch (prefix) {
    case LengthPrefix::kU16:
      return std::numeric_limits<uint16_t>::max();
    case LengthPrefix::kU32:
      return std::numeric_limits<uint32_t>::max();
    case LengthPrefix::kU64:
      return std::numeric_limits<uint64_t>::max();
  }
  return 0;
}

// Appends `count` elements of T (an unsigned integer or a float of the same
// width) little-endian: one copy on little-endian hosts.
template <typename Bits, typename T>
void append_elements(std::vector<std::byte>& out, std::span<const T> values) {
  static_assert(sizeof(Bits) == sizeof(T));
  const size_t at = out.size();
  out.resize(at + values.size_bytes());
  if (values.empty()) return;
  if constexpr (kLittleEndianHost) {
    std::memcpy(out.data() + at, values.data(), values.size_bytes());
  } else {
    for (size_t i = 0; i < values.size(); ++i) {
      const auto bits = std::bit_cast<Bits>(values[i]);
      for (size_t b = 0; b < sizeof(Bits); ++b) {
        out[at + i * sizeof(Bits) + b] =
            static_cast<std::byte>(static_cast<uint64_t>(bits) >> (8 * b));
      }
    }
  }
}

// Fills `values` from `bytes` (exactly values.size_bytes() of them), each
// element little-endian: one copy on little-endian hosts.
template <typename Bits, typename T>
void copy_elements_into(std::span<const std::byte> bytes, std::span<T> values) {
  static_assert(sizeof(Bits) == sizeof(T));
  if (values.empty()) return;
  if constexpr (kLittleEndianHost) {
    std::memcpy(values.data(), bytes.data(), values.size_bytes());
  } else {
    for (size_t i = 0; i < values.size(); ++i) {
      uint64_t bits = 0;
      for (size_t b = sizeof(Bits); b-- > 0;) {
        bits = (bits << 8) | std::to_integer<uint64_t>(bytes[i * sizeof(Bits) + b]);
      }
      values[i] = std::bit_cast<T>(static_cast<Bits>(bits));
    }
  }
}

template <typename Bits, typename T>
std::vector<T> copy_elements(std::span<const std::byte> bytes) {
  std::vector<T> values(bytes.size() / sizeof(T));
  copy_elements_into<Bits, T>(bytes, std::span<T>(values));
  return values;
}

}  // namespace

// ---------------------------------------------------------------- writer

void ByteWriter::write_bytes(std::span<const std::byte> bytes) {
  bytes_.insert(bytes_.end(), bytes.begin(), bytes.end());
}

void ByteWriter::write_f32_array(std::span<const float> values) {
  append_elements<uint32_t>(bytes_, values);
}

void ByteWriter::write_u64_array(std::span<const uint64_t> values) {
  append_elements<uint64_t>(bytes_, values);
}

void ByteWriter::write_f32_array_counted(std::span<const float> values) {
  write_u64(values.size());
  write_f32_array(values);
}

void ByteWriter::write_u64_array_counted(std::span<const uint64_t> values) {
  write_u64(values.size());
  write_u64_array(values);
}

void ByteWriter::write_length(size_t length, LengthPrefix prefix, std::string_view what) {
  DTRAIN_CHECK(length <= prefix_max(prefix), "a {} of {} bytes does not fit a {}-byte length", what,
               length, prefix_bytes(prefix));
  switch (prefix) {
    case LengthPrefix::kU16:
      write_u16(static_cast<uint16_t>(length));
      break;
    case LengthPrefix::kU32:
      write_u32(static_cast<uint32_t>(length));
      break;
    case LengthPrefix::kU64:
      write_u64(length);
      break;
  }
}

void ByteWriter::write_string(std::string_view text, LengthPrefix prefix) {
  write_length(text.size(), prefix, "string");
  write_bytes(std::as_bytes(std::span(text.data(), text.size())));
}

void ByteWriter::write_blob(std::span<const std::byte> blob, LengthPrefix prefix) {
  write_length(blob.size(), prefix, "blob");
  write_bytes(blob);
}

void ByteWriter::overwrite_u64(size_t offset, uint64_t value) {
  DTRAIN_CHECK(offset <= bytes_.size() && bytes_.size() - offset >= sizeof(value),
               "overwriting 8 bytes at offset {} of {} written", offset, bytes_.size());
  for (size_t i = 0; i < sizeof(value); ++i) {
    bytes_[offset + i] = static_cast<std::byte>(value >> (8 * i));
  }
}

// ---------------------------------------------------------------- reader

ByteReader::ByteReader(std::span<const std::byte> bytes, std::string context)
    : bytes_(bytes), context_(std::move(context)) {}

void ByteReader::need(size_t count, std::string_view field) const {
  if (count > remaining()) {
    throw DataError(fmt::format("{}: field '{}' needs {} bytes at offset {}, only {} left",
                                context_, field, count, offset_, remaining()));
  }
}

void ByteReader::expect_end(std::string_view what) const {
  if (remaining() != 0) {
    throw DataError(fmt::format("{}: {} bytes after the end of the {} (at offset {})", context_,
                                remaining(), what, offset_));
  }
}

uint8_t ByteReader::read_u8(std::string_view field) {
  need(1, field);
  return std::to_integer<uint8_t>(bytes_[offset_++]);
}

uint32_t ByteReader::read_u32_be(std::string_view field) {
  need(4, field);
  uint32_t value = 0;
  for (size_t i = 0; i < 4; ++i)
    value = (value << 8) | std::to_integer<uint32_t>(bytes_[offset_ + i]);
  offset_ += 4;
  return value;
}

std::span<const std::byte> ByteReader::read_bytes(size_t count, std::string_view field) {
  need(count, field);
  const auto out = bytes_.subspan(offset_, count);
  offset_ += count;
  return out;
}

uint64_t ByteReader::read_count(size_t element_bytes, std::string_view field) {
  const size_t at = offset_;
  const uint64_t count = read_u64(field);
  if (element_bytes != 0 && count > remaining() / element_bytes) {
    throw DataError(fmt::format(
        "{}: field '{}' at offset {}: count {} of {}-byte elements needs more than the {} bytes "
        "left",
        context_, field, at, count, element_bytes, remaining()));
  }
  return count;
}

void ByteReader::need_elements(uint64_t count, size_t element_bytes, std::string_view field) const {
  if (count <= remaining() / element_bytes) return;
  // The byte count may not fit 64 bits.
  const std::string bytes = count > std::numeric_limits<uint64_t>::max() / element_bytes
                                ? fmt::format("{} x {}", count, element_bytes)
                                : fmt::format("{}", count * element_bytes);
  throw DataError(fmt::format("{}: field '{}' needs {} bytes at offset {}, only {} left", context_,
                              field, bytes, offset_, remaining()));
}

std::vector<float> ByteReader::read_f32_array(uint64_t count, std::string_view field) {
  need_elements(count, sizeof(float), field);
  return copy_elements<uint32_t, float>(read_bytes(count * sizeof(float), field));
}

std::vector<uint64_t> ByteReader::read_u64_array(uint64_t count, std::string_view field) {
  need_elements(count, sizeof(uint64_t), field);
  return copy_elements<uint64_t, uint64_t>(read_bytes(count * sizeof(uint64_t), field));
}

void ByteReader::read_f32_array_into(std::span<float> out, std::string_view field) {
  need_elements(out.size(), sizeof(float), field);
  copy_elements_into<uint32_t, float>(read_bytes(out.size_bytes(), field), out);
}

std::vector<float> ByteReader::read_f32_array_counted(std::string_view field) {
  return read_f32_array(read_count(sizeof(float), field), field);
}

std::vector<uint64_t> ByteReader::read_u64_array_counted(std::string_view field) {
  return read_u64_array(read_count(sizeof(uint64_t), field), field);
}

size_t ByteReader::read_length(std::string_view field, size_t max_bytes, LengthPrefix prefix) {
  const size_t at = offset_;
  uint64_t length = 0;
  switch (prefix) {
    case LengthPrefix::kU16:
      length = read_u16(field);
      break;
    case LengthPrefix::kU32:
      length = read_u32(field);
      break;
    case LengthPrefix::kU64:
      length = read_u64(field);
      break;
  }
  if (length > max_bytes) {
    throw DataError(
        fmt::format("{}: field '{}' at offset {} is {} bytes, more than the limit of {}", context_,
                    field, at, length, max_bytes));
  }
  return static_cast<size_t>(length);
}

std::string ByteReader::read_string(std::string_view field, size_t max_bytes, LengthPrefix prefix) {
  const auto bytes = read_blob(field, max_bytes, prefix);
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

std::span<const std::byte> ByteReader::read_blob(std::string_view field, size_t max_bytes,
                                                 LengthPrefix prefix) {
  const size_t length = read_length(field, max_bytes, prefix);
  return read_bytes(length, field);
}

}  // namespace dtrain
