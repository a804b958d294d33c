// CRC-32C (Castagnoli), the checksum of checkpoints, model files and wire
// frames. Uses the SSE4.2 crc32 instruction when the build targets it (three
// interleaved streams over buffers of 768 bytes and more), a table otherwise;
// both give identical results.
// Thread safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dtrain {

// Extends `crc` (0 to start) over `size` bytes at `data`.
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t size);
inline uint32_t crc32c(const void* data, size_t size) { return crc32c_extend(0, data, size); }

}  // namespace dtrain
