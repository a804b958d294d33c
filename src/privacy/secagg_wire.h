// The wire helpers shared by SecAggClient (secagg_client.cpp) and
// SecAggServer (secagg_server.cpp): the message header, id lists, keys and
// the fixed sizes of the bodies (docs/privacy-secagg-section.md). Internal to
// src/privacy.
// Errors: DataError naming the reader's context. Thread safety: pure
// functions. Never blocks.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "core/byte_codec.h"
#include "privacy/secagg.h"

namespace dtrain::privacy::secagg_wire {

inline constexpr size_t kSharePairBytes = 2 * kShamirShareBytes;
inline constexpr size_t kShareCiphertextBytes = kSharePairBytes + kAeadOverheadBytes;
inline constexpr uint8_t kRevealSelfMask = 1;
inline constexpr uint8_t kRevealKey = 2;
// More ids than any config allows is a malformed count, caught before allocation.
inline constexpr uint32_t kMaxIds = 1U << 24;

std::span<const uint8_t> as_u8(std::span<const std::byte> bytes);
std::span<const std::byte> as_bytes(std::span<const uint8_t> bytes);
Key32 read_key(ByteReader& reader, std::string_view field);
void write_header(ByteWriter& writer, SecAggMessageType type, uint32_t round, uint32_t sender);
// DataError unless the header has this version, type, round and sender.
void read_header(ByteReader& reader, SecAggMessageType type, uint32_t round, uint32_t sender);
// u32 count, then the ids.
std::vector<uint32_t> read_ids(ByteReader& reader, std::string_view field);
void write_ids(ByteWriter& writer, std::span<const uint32_t> ids);
std::array<uint8_t, kShamirShareBytes> share_bytes(const ShamirShare& share);

}  // namespace dtrain::privacy::secagg_wire
