#include "obs/tfrecord.h"

#include "core/crc32c.h"

namespace dtrain::obs {

namespace {

constexpr uint32_t kCrcMaskDelta = 0xa282ead8u;

void append_le(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

}  // namespace

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + kCrcMaskDelta;
}

void append_tfrecord(std::string& out, std::string_view data) {
  std::string length;
  append_le(length, data.size(), 8);
  out += length;
  append_le(out, masked_crc32c(length.data(), length.size()), 4);
  out.append(data);
  append_le(out, masked_crc32c(data.data(), data.size()), 4);
}

}  // namespace dtrain::obs
