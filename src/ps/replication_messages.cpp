#include "ps/replication_messages.h"

#include <fmt/format.h>

#include "core/byte_codec.h"
#include "core/error.h"
#include "ps/messages.h"

namespace dtrain::ps {

namespace {

constexpr size_t kMaxErrorBytes = 4096;
constexpr size_t kMaxNameBytes = 1024;
constexpr uint32_t kMaxTables = 1 << 16;

// Every kind: u8 kind, 3 bytes 0, u64 term (the range's term as the sender
// knows it; replication_messages.h says whose range per kind).
void put_prefix(ByteWriter& w, ReplicaKind kind, uint64_t term) {
  w.write_u8(static_cast<uint8_t>(kind));
  w.write_u8(0);
  w.write_u8(0);
  w.write_u8(0);
  w.write_u64(term);
}

ReplicaOp get_op(ByteReader& r) {
  ReplicaOp op;
  const uint8_t kind = r.read_u8("op kind");
  if (kind < 1 || kind > 3) {
    throw DataError(fmt::format("replica update: op kind {} is unknown (1..3)", kind));
  }
  op.kind = static_cast<ReplicaOp::Kind>(kind);
  op.table = r.read_u32("op table");
  op.lr = r.read_f32("op lr");
  op.keys = r.read_u64_array_counted("op keys");
  op.floats = r.read_f32_array_counted("op floats");
  return op;
}

ReplicaUpdate get_update(ByteReader& r) {
  ReplicaUpdate m;
  m.primary = r.read_u32("primary");
  m.base_version = r.read_u64("base version");
  m.new_version = r.read_u64("new version");
  const uint32_t ops = r.read_u32("op count");
  // Each op takes at least 25 bytes: bounds the loop before it allocates.
  r.need_elements(ops, 25, "ops");
  for (uint32_t i = 0; i < ops; ++i) m.ops.push_back(get_op(r));
  r.expect_end("replica update");
  return m;
}

ReplicaState get_state_transfer(ByteReader& r) {
  ReplicaState m;
  m.primary = r.read_u32("primary");
  m.version = r.read_u64("version");
  const uint32_t tables = r.read_u32("table count");
  if (tables > kMaxTables) {
    throw DataError(fmt::format("replica state: {} tables, more than {}", tables, kMaxTables));
  }
  for (uint32_t i = 0; i < tables; ++i) {
    SparseTableSpec spec;
    spec.name = r.read_string("table name", kMaxNameBytes);
    spec.dim = r.read_i64("table dim");
    spec.init_std = r.read_f32("table init_std");
    if (spec.dim <= 0) throw DataError(fmt::format("replica state: table dim {}", spec.dim));
    m.tables.push_back(std::move(spec));
  }
  const std::span<const std::byte> blob = r.read_blob("state", r.remaining(), LengthPrefix::kU64);
  r.expect_end("replica state");
  m.state = std::move(decode_message(blob).state);
  return m;
}

// An ack's and a takeover reply's common start: status (at most
// `max_status`), backup, primary, version.
template <typename Answer>
Answer get_answer(ByteReader& r, uint8_t max_status, const char* what) {
  Answer m;
  const uint8_t status = r.read_u8("status");
  if (status > max_status) {
    throw DataError(fmt::format("{}: status {} is unknown (0..{})", what, status, max_status));
  }
  m.status = static_cast<typename Answer::Status>(status);
  m.backup = r.read_u32("backup");
  m.primary = r.read_u32("primary");
  m.version = r.read_u64("version");
  return m;
}

template <typename Answer>
void put_answer(ByteWriter& w, ReplicaKind kind, const Answer& m) {
  put_prefix(w, kind, m.term);
  w.write_u8(static_cast<uint8_t>(m.status));
  w.write_u32(m.backup);
  w.write_u32(m.primary);
  w.write_u64(m.version);
}

ReplicaAck get_ack(ByteReader& r) {
  auto m = get_answer<ReplicaAck>(r, 3, "replica ack");
  m.error = r.read_string("error", kMaxErrorBytes);
  r.expect_end("replica ack");
  return m;
}

TakeoverReply get_takeover_reply(ByteReader& r) {
  auto m = get_answer<TakeoverReply>(r, 2, "takeover reply");
  m.endpoint = r.read_string("endpoint", kMaxNameBytes);
  m.error = r.read_string("error", kMaxErrorBytes);
  r.expect_end("takeover reply");
  return m;
}

}  // namespace

bool is_replication_payload(std::span<const std::byte> payload) {
  if (payload.empty()) return false;
  const auto kind = static_cast<uint8_t>(payload[0]);
  return kind >= static_cast<uint8_t>(ReplicaKind::kUpdate) &&
         kind <= static_cast<uint8_t>(ReplicaKind::kTakeoverReply);
}

std::vector<std::byte> encode_replica(const ReplicaUpdate& m) {
  ByteWriter w;
  put_prefix(w, ReplicaKind::kUpdate, m.term);
  w.write_u32(m.primary);
  w.write_u64(m.base_version);
  w.write_u64(m.new_version);
  w.write_u32(static_cast<uint32_t>(m.ops.size()));
  for (const ReplicaOp& op : m.ops) {
    w.write_u8(static_cast<uint8_t>(op.kind));
    w.write_u32(op.table);
    w.write_f32(op.lr);
    w.write_u64_array_counted(op.keys);
    w.write_f32_array_counted(op.floats);
  }
  return w.take();
}

std::vector<std::byte> encode_replica(const ReplicaState& m) {
  ByteWriter w;
  put_prefix(w, ReplicaKind::kState, m.term);
  w.write_u32(m.primary);
  w.write_u64(m.version);
  w.write_u32(static_cast<uint32_t>(m.tables.size()));
  for (const SparseTableSpec& spec : m.tables) {
    w.write_string(spec.name);
    w.write_i64(spec.dim);
    w.write_f32(spec.init_std);
  }
  // The state travels as a ps set_state message: one codec for state dicts.
  Message carrier;
  carrier.kind = Kind::kSetState;
  carrier.state = m.state;
  w.write_blob(encode_message(carrier), LengthPrefix::kU64);
  return w.take();
}

std::vector<std::byte> encode_replica(const ReplicaAck& m) {
  ByteWriter w;
  put_answer(w, ReplicaKind::kAck, m);
  w.write_string(m.error.substr(0, kMaxErrorBytes));
  return w.take();
}

std::vector<std::byte> encode_replica(const ReplicaFetch& m) {
  ByteWriter w;
  put_prefix(w, ReplicaKind::kFetch, m.term);
  w.write_u32(m.primary);
  return w.take();
}

std::vector<std::byte> encode_replica(const ReplicaTakeover& m) {
  ByteWriter w;
  put_prefix(w, ReplicaKind::kTakeover, m.term);
  w.write_u32(m.primary);
  w.write_u32(m.worker);
  w.write_u64(m.version);
  return w.take();
}

std::vector<std::byte> encode_replica(const TakeoverReply& m) {
  ByteWriter w;
  put_answer(w, ReplicaKind::kTakeoverReply, m);
  w.write_string(m.endpoint.substr(0, kMaxNameBytes));
  w.write_string(m.error.substr(0, kMaxErrorBytes));
  return w.take();
}

ReplicaMessage decode_replica(std::span<const std::byte> payload) {
  ByteReader r(payload, "replica message");
  const uint8_t kind = r.read_u8("kind");
  r.read_bytes(3, "reserved");
  if (kind < static_cast<uint8_t>(ReplicaKind::kUpdate) ||
      kind > static_cast<uint8_t>(ReplicaKind::kTakeoverReply)) {
    throw DataError(fmt::format("replica message: kind {} is unknown (96..101)", kind));
  }
  const uint64_t term = r.read_u64("term");
  ReplicaMessage out = [&]() -> ReplicaMessage {
    switch (static_cast<ReplicaKind>(kind)) {
      case ReplicaKind::kUpdate:
        return get_update(r);
      case ReplicaKind::kState:
        return get_state_transfer(r);
      case ReplicaKind::kAck:
        return get_ack(r);
      case ReplicaKind::kFetch: {
        ReplicaFetch m;
        m.primary = r.read_u32("primary");
        r.expect_end("replica fetch");
        return m;
      }
      case ReplicaKind::kTakeover: {
        ReplicaTakeover m;
        m.primary = r.read_u32("primary");
        m.worker = r.read_u32("worker");
        m.version = r.read_u64("version");
        r.expect_end("takeover request");
        return m;
      }
      case ReplicaKind::kTakeoverReply:
        break;
    }
    return get_takeover_reply(r);
  }();
  std::visit([term](auto& m) { m.term = term; }, out);
  return out;
}

}  // namespace dtrain::ps
