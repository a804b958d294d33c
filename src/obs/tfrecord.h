// TFRecord framing, the container of TensorBoard event files
// (tensorflow/core/lib/io/record_writer.cc). Each record is
//
//   uint64  length            little-endian, the data's size in bytes
//   uint32  masked_crc(length)  over those 8 bytes, little-endian
//   bytes   data[length]
//   uint32  masked_crc(data)    little-endian
//
// where masked_crc(x) = rotate_right(crc32c(x), 15) + 0xa282ead8 (mod 2^32),
// CRC-32C being Castagnoli's (core/crc32c.h). The mask keeps a CRC of data
// that itself holds CRCs from being trivially zero.
//
// A crash while a record is being appended leaves a torn last record (short
// or with a wrong CRC); readers (TensorBoard, tests/obs/read_tfevents.py)
// stop there and keep every record before it.
// Thread safety: pure functions. Never throws except std::bad_alloc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dtrain::obs {

// The masked CRC-32C of `size` bytes at `data`.
uint32_t masked_crc32c(const void* data, size_t size);

// Appends the framed record holding `data` to `out`.
void append_tfrecord(std::string& out, std::string_view data);

// Bytes a record of `data_bytes` bytes takes in the file: 16 + data_bytes.
constexpr size_t tfrecord_size(size_t data_bytes) { return 8 + 4 + data_bytes + 4; }

}  // namespace dtrain::obs
