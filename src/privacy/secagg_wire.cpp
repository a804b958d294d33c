#include "privacy/secagg_wire.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace dtrain::privacy::secagg_wire {

std::span<const uint8_t> as_u8(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()};
}
std::span<const std::byte> as_bytes(std::span<const uint8_t> bytes) {
  return {reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()};
}

Key32 read_key(ByteReader& reader, std::string_view field) {
  Key32 key;
  const auto bytes = as_u8(reader.read_bytes(32, field));
  std::copy(bytes.begin(), bytes.end(), key.begin());
  return key;
}

void write_header(ByteWriter& writer, SecAggMessageType type, uint32_t round, uint32_t sender) {
  writer.write_u8(kSecAggVersion);
  writer.write_u8(static_cast<uint8_t>(type));
  writer.write_u32(round);
  writer.write_u32(sender);
}

void read_header(ByteReader& reader, SecAggMessageType type, uint32_t round, uint32_t sender) {
  const uint8_t version = reader.read_u8("version");
  if (version != kSecAggVersion) {
    throw DataError(reader.context() + ": version " + std::to_string(version) + ", expected " +
                    std::to_string(kSecAggVersion));
  }
  const uint8_t got_type = reader.read_u8("type");
  if (got_type != static_cast<uint8_t>(type)) {
    throw DataError(reader.context() + ": message type " + std::to_string(got_type) +
                    ", expected " + std::to_string(static_cast<int>(type)));
  }
  const uint32_t got_round = reader.read_u32("round");
  if (got_round != round) {
    throw DataError(reader.context() + ": round " + std::to_string(got_round) + ", expected " +
                    std::to_string(round));
  }
  const uint32_t got_sender = reader.read_u32("sender");
  if (got_sender != sender) {
    throw DataError(reader.context() + ": the header names sender " + std::to_string(got_sender) +
                    ", the message came from " + std::to_string(sender));
  }
}

std::vector<uint32_t> read_ids(ByteReader& reader, std::string_view field) {
  const uint32_t count = reader.read_u32(field);
  if (count > kMaxIds) {
    throw DataError(reader.context() + ": field '" + std::string(field) + "' counts " +
                    std::to_string(count) + " ids");
  }
  reader.need_elements(count, 4, field);
  std::vector<uint32_t> ids(count);
  for (uint32_t& id : ids) id = reader.read_u32(field);
  return ids;
}

void write_ids(ByteWriter& writer, std::span<const uint32_t> ids) {
  writer.write_u32(static_cast<uint32_t>(ids.size()));
  for (uint32_t id : ids) writer.write_u32(id);
}

std::array<uint8_t, kShamirShareBytes> share_bytes(const ShamirShare& share) {
  std::array<uint8_t, kShamirShareBytes> out{};
  encode_share(share, out);
  return out;
}

}  // namespace dtrain::privacy::secagg_wire
