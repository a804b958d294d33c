// The elastic coordinator's protocol constants and payload helpers, shared
// by its server (elastic_rendezvous.cpp) and client
// (elastic_rendezvous_client.cpp); the layouts are in docs/elastic.md.
// Internal to comm/rendezvous. Thread safety: constants and pure functions.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/byte_codec.h"

namespace dtrain::comm::elastic_protocol {

// Request kinds (the first u32 of a kRegister payload) and the kinds of
// their replies (the first u32 of a kTable, kStatus or kReject payload).
inline constexpr uint32_t kJoin = 1;
inline constexpr uint32_t kEndpoint = 2;
inline constexpr uint32_t kPoll = 3;
inline constexpr uint32_t kFinished = 4;  // reply to kJoin: the job finished training
inline constexpr uint32_t kLeftOut = 5;   // reply to kJoin: the group went on without this member
inline constexpr uint32_t kNone = 0xFFFFFFFFu;  // "no generation"

inline constexpr uint64_t kMaxPayload = 1 << 20;

// A payload: the u32 kind, then `rest`.
inline std::vector<std::byte> with_kind(uint32_t kind, std::span<const std::byte> rest) {
  ByteWriter w(4 + rest.size());
  w.write_u32(kind);
  w.write_bytes(rest);
  return w.take();
}

inline std::span<const std::byte> text_bytes(std::string_view text) {
  return std::as_bytes(std::span(text.data(), text.size()));
}

// At most 500 bytes of a peer's text, non-printable bytes as '?'.
inline std::string text_of(std::span<const std::byte> bytes) {
  std::string s;
  for (std::byte b : bytes.first(std::min<size_t>(bytes.size(), 500))) {
    const char c = static_cast<char>(b);
    s.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  }
  return s;
}

}  // namespace dtrain::comm::elastic_protocol
