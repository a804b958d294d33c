#include "ps/messages.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include "core/byte_codec.h"
#include "core/error.h"
#include "core/finite.h"
#include "ps/message_fields.h"

namespace dtrain::ps {

namespace {

using namespace message_fields;

constexpr size_t kPrefixBytes = 32;  // with a term
constexpr uint8_t kTermFlag = 1;
bool is_request(uint8_t kind) { return kind >= 1 && kind <= 11; }

// float_parts and float_bytes are the wire's little-endian f32 bytes as they
// lie in memory, which holds on a little-endian host only.
static_assert(std::endian::native == std::endian::little,
              "ps messages copy floats as raw bytes: a little-endian host is assumed");

size_t float_part_bytes(const Message& m) {
  size_t bytes = 0;
  for (const std::span<const std::byte> part : m.float_parts) bytes += part.size();
  return bytes;
}

// A message's float array (u64 count + f32 values): `floats`, or the
// concatenation of `float_parts`, copied straight from the caller's memory.
void put_floats(ByteWriter& w, const Message& m) {
  if (m.shm.present) {
    put_shm_floats(w, m.shm, !m.floats.empty() || !m.float_parts.empty());
    return;
  }
  if (m.float_parts.empty()) {
    w.write_f32_array_counted(m.floats);
    return;
  }
  if (!m.floats.empty()) {
    throw UsageError(fmt::format("ps message: {} has both floats ({}) and float parts ({})",
                                 to_string(m.kind), m.floats.size(), m.float_parts.size()));
  }
  const size_t bytes = float_part_bytes(m);
  for (const std::span<const std::byte> part : m.float_parts) {
    if (part.size() % sizeof(float) != 0) {
      throw UsageError(
          fmt::format("ps message: a float part of {} bytes is not whole floats", part.size()));
    }
  }
  w.write_u64(bytes / sizeof(float));
  for (const std::span<const std::byte> part : m.float_parts) w.write_bytes(part);
}

// A viewed float array's count, or (bit 63 set, `shm_allowed`) its
// shared-memory descriptor into m.shm (nullopt then).
std::optional<size_t> view_count(ByteReader& r, std::string_view field, bool shm_allowed,
                                 Message& m) {
  const uint64_t raw = r.read_u64(field);
  if ((raw & kShmFlag) == 0) {
    r.need_elements(raw, sizeof(float), field);
    return static_cast<size_t>(raw);
  }
  if (!shm_allowed || (raw & ~kShmFlag) > (uint64_t{1} << 40)) {
    throw DataError(fmt::format(
        "ps message: field '{}' names {} floats in shared memory; only a dense push's gradient "
        "and a pull reply's range may, at most 2^40",
        field, raw & ~kShmFlag));
  }
  m.shm = get_shm_floats(r, raw);
  return std::nullopt;
}

// A reply's float array, copied into m.floats or (kView) viewed in place
// (or, a pull reply's with `shm_allowed`, named in shared memory).
void get_floats(ByteReader& r, std::string_view field, FloatDecoding decoding, Message& m,
                bool shm_allowed = false) {
  if (decoding == FloatDecoding::kCopy) {
    m.floats = r.read_f32_array_counted(field);
    return;
  }
  const std::optional<size_t> count = view_count(r, field, shm_allowed, m);
  if (count) m.float_bytes = r.read_bytes(*count * sizeof(float), field);
}

// A row push's fields (a kPushRows body, and each row push riding with a
// kPush): u32 table | f32 lr | u64 count + count u64 keys | u64 count + f32
// gradient rows.
constexpr size_t kMinRowPushBytes = 2 * sizeof(uint32_t) + 2 * sizeof(uint64_t);

void put_row_push(ByteWriter& w, const Message& m) {
  w.write_u32(m.table);
  w.write_f32(m.lr);
  w.write_u64_array_counted(m.keys);
  put_floats(w, m);
}

// A kPush's row prefetch (behind its pull): u32 count, then per row pull
// u32 table | u64 count + count u64 keys; a reply's: u32 count, then per row
// pull u64 count + f32 rows.
constexpr size_t kMinPrefetchBytes = sizeof(uint32_t) + sizeof(uint64_t);

void put_prefetch(ByteWriter& w, const Message& m, bool reply) {
  w.write_u32(static_cast<uint32_t>(m.prefetch.size()));
  for (const Message& rows : m.prefetch) {
    if (!rows.prefetch.empty() || !rows.rows.empty()) {
      throw UsageError("ps message: a prefetched row pull carries no rows of its own");
    }
    if (reply) {
      put_floats(w, rows);
      continue;
    }
    w.write_u32(rows.table);
    w.write_u64_array_counted(rows.keys);
  }
}

// A kPush's tail (a plain push's is 5 bytes: no rows, no pull): u32 row
// push count, the row pushes, u8 pull flag (0 or 1), then with the flag
// u64 min_version | u32 wait_ms and the row prefetch (put_prefetch).
void put_push_tail(ByteWriter& w, const Message& m) {
  w.write_u32(static_cast<uint32_t>(m.rows.size()));
  for (const Message& rows : m.rows) {
    if (rows.kind != Kind::kPushRows || !rows.rows.empty()) {
      throw UsageError(fmt::format("ps message: a push carries only row pushes, not a {}{}",
                                   to_string(rows.kind), rows.rows.empty() ? "" : " with rows"));
    }
    put_row_push(w, rows);
  }
  w.write_u8(m.with_pull ? 1 : 0);
  if (!m.with_pull && !m.prefetch.empty()) {
    throw UsageError("ps message: a push prefetches rows only with a pull");
  }
  if (!m.with_pull) return;
  w.write_u64(m.min_version);
  w.write_u32(m.wait_ms);
  put_prefetch(w, m, /*reply=*/false);
}

void put_request_body(ByteWriter& w, const Message& m) {
  switch (m.kind) {
    case Kind::kInit:
      put_init_specs(w, m.dense, m.tables);
      put_floats(w, m);
      return;
    case Kind::kPull:
      w.write_u64(m.min_version);
      w.write_u32(m.wait_ms);
      return;
    case Kind::kPush:
    case Kind::kPushCompressed:
      w.write_i64(m.samples);
      w.write_f32(m.lr);
      w.write_f64(m.loss_sum);
      w.write_i64(m.correct);
      w.write_f64(m.compute_s);
      if (m.kind == Kind::kPush) {
        put_floats(w, m);
        put_push_tail(w, m);
        return;
      }
      put_pieces(w, m.pieces);
      return;
    case Kind::kPullRows:
      w.write_u32(m.table);
      w.write_u64_array_counted(m.keys);
      return;
    case Kind::kPushRows:
      put_row_push(w, m);
      return;
    case Kind::kSetState:
      put_state(w, m.state);
      return;
    case Kind::kStats:
    case Kind::kGetState:
    case Kind::kGoodbye:
    case Kind::kHeartbeat:
    case Kind::kReply:
      return;
  }
}

// An update's floats, checked for NaN and Inf chunk by chunk while each
// chunk is in cache: a separate pass over a 16 MiB gradient cost 11% of a
// lone server's push rate (bench/ps/push_pull_bench, 1 server, 4 workers).
// The vector grows chunk by chunk too: zero-filling all of it first (a
// separate pass through memory) cost 3% of a server's time in the same bench.
void read_update(ByteReader& r, std::string_view field, Message& m) {
  constexpr size_t kChunk = 4096;  // floats: 16 KiB, within L1
  const auto count = static_cast<size_t>(r.read_count(sizeof(float), field));
  m.floats.clear();
  m.floats.reserve(count);
  bool finite = true;
  for (size_t at = 0; at < count; at += kChunk) {
    const size_t n = std::min(kChunk, count - at);
    m.floats.resize(at + n);  // zeroes n floats in cache, overwritten at once
    const std::span<float> chunk = std::span<float>(m.floats).subspan(at, n);
    r.read_f32_array_into(chunk, field);
    finite = all_finite(chunk) && finite;
  }
  m.floats_finite = finite;
}

// A dense push's gradient viewed in place (FloatDecoding::kView): the
// bounds of read_update and one read for NaN and Inf, no copy.
// A gradient in shared memory (m.shm) is checked by the server once resolved
// (floats_finite_bytes()).
void view_update(ByteReader& r, std::string_view field, Message& m) {
  const std::optional<size_t> count = view_count(r, field, /*shm_allowed=*/true, m);
  if (!count) return;
  m.float_bytes = r.read_bytes(*count * sizeof(float), field);
  m.floats_finite = floats_finite_bytes(m.float_bytes);
}

// Replies whose body is an error text instead of the request's reply body.
bool carries_error(ReplyStatus status) {
  return status == ReplyStatus::kError || status == ReplyStatus::kTimeout ||
         status == ReplyStatus::kRejoin || status == ReplyStatus::kLeftOut ||
         status == ReplyStatus::kFenced;
}

// A pull reply's body: u64 min_clock | f64 loss_sum | i64 correct | i64
// samples | the workers' steps | the range's floats.
void put_pull_reply(ByteWriter& w, const Message& m) {
  w.write_u64(m.min_clock);
  w.write_f64(m.totals.loss_sum);
  w.write_i64(m.totals.correct);
  w.write_i64(m.totals.samples);
  w.write_u32(static_cast<uint32_t>(m.totals.workers.size()));
  for (const WorkerStep& step : m.totals.workers) {
    w.write_i64(step.samples);
    w.write_f64(step.compute_s);
    w.write_u8(step.counted ? 1 : 0);
  }
  put_floats(w, m);
}

void put_reply_body(ByteWriter& w, const Message& m) {
  if (carries_error(m.status)) {
    put_string(w, m.error);
    return;
  }
  switch (m.reply_to) {
    case Kind::kInit:
      w.write_u64(m.clock);
      return;
    case Kind::kPull:
      put_pull_reply(w, m);
      return;
    case Kind::kPush:
      // u8 pull flag (0 or 1); with it, a pull reply's body and the rows
      // of the request's prefetch
      w.write_u8(m.with_pull ? 1 : 0);
      if (!m.with_pull) return;
      put_pull_reply(w, m);
      put_prefetch(w, m, /*reply=*/true);
      return;
    case Kind::kPullRows:
      put_floats(w, m);
      return;
    case Kind::kStats:
      put_stats(w, m.stats);
      return;
    case Kind::kGetState:
      put_state(w, m.state);
      return;
    default:
      return;
  }
}

// A compute time: finite and >= 0.
double get_seconds(ByteReader& r, std::string_view field) {
  const auto seconds = r.read_f64(field);
  if (!std::isfinite(seconds) || seconds < 0.0) {
    throw DataError(
        fmt::format("ps message: {} is {}; must be a finite number >= 0", field, seconds));
  }
  return seconds;
}

// A pull reply's per-worker steps: u32 count, then count x (i64 samples, f64
// compute_s, u8 counted).
std::vector<WorkerStep> get_worker_steps(ByteReader& r) {
  constexpr size_t kStepBytes = sizeof(int64_t) + sizeof(double) + sizeof(uint8_t);
  const auto count = r.read_u32("pull worker count");
  r.need(static_cast<size_t>(count) * kStepBytes, "pull worker steps");
  std::vector<WorkerStep> steps(count);
  for (uint32_t i = 0; i < count; ++i) {
    steps[i].samples = r.read_i64("pull worker samples");
    if (steps[i].samples < 0) {
      throw DataError(fmt::format("ps message: pull worker {} samples is {}; must be >= 0", i,
                                  steps[i].samples));
    }
    steps[i].compute_s = get_seconds(r, "pull worker compute_s");
    const auto counted = r.read_u8("pull worker counted");
    if (counted > 1) {
      throw DataError(
          fmt::format("ps message: pull worker {} counted flag is {}; must be 0 or 1", i, counted));
    }
    steps[i].counted = counted == 1;
  }
  return steps;
}

void get_row_push(ByteReader& r, Message& m) {
  m.table = r.read_u32("push_rows table");
  m.lr = get_finite(r, "push_rows lr");
  m.keys = r.read_u64_array_counted("push_rows keys");
  read_update(r, "push_rows gradient", m);
}

// A flag byte: 0 or 1, DataError naming the field otherwise.
bool get_flag(ByteReader& r, std::string_view field) {
  const auto flag = r.read_u8(field);
  if (flag > 1) {
    throw DataError(fmt::format("ps message: {} is {}; must be 0 or 1", field, flag));
  }
  return flag == 1;
}

// A request riding with push `m` (a row push, a row pull): the push's
// identity, as a separate request would carry it.
Message part_of(const Message& m, Kind kind) {
  Message part;
  part.kind = kind;
  part.worker = m.worker;
  part.request_id = m.request_id;
  part.version = m.version;
  return part;
}

void get_push_tail(ByteReader& r, Message& m) {
  const auto count = r.read_u32("push row push count");
  r.need_elements(count, kMinRowPushBytes, "push row pushes");
  m.rows.resize(count);
  for (Message& rows : m.rows) {
    rows = part_of(m, Kind::kPushRows);
    get_row_push(r, rows);
  }
  m.with_pull = get_flag(r, "push pull flag");
  if (!m.with_pull) return;
  m.min_version = r.read_u64("push pull min_version");
  m.wait_ms = r.read_u32("push pull wait_ms");
  const auto pulls = r.read_u32("push prefetch count");
  r.need_elements(pulls, kMinPrefetchBytes, "push prefetch row pulls");
  m.prefetch.resize(pulls);
  for (Message& rows : m.prefetch) {
    rows = part_of(m, Kind::kPullRows);
    rows.table = r.read_u32("push prefetch table");
    rows.keys = r.read_u64_array_counted("push prefetch keys");
  }
}

void get_request_body(ByteReader& r, FloatDecoding decoding, Message& m) {
  switch (m.kind) {
    case Kind::kInit: {
      get_init_specs(r, m.dense, m.tables);
      m.floats = r.read_f32_array_counted("init values");
      return;
    }
    case Kind::kPull:
      m.min_version = r.read_u64("pull min_version");
      m.wait_ms = r.read_u32("pull wait_ms");
      return;
    case Kind::kPush:
    case Kind::kPushCompressed:
      m.samples = r.read_i64("push samples");
      if (m.samples < 0) {
        throw DataError(fmt::format("ps message: push samples is {}; must be >= 0", m.samples));
      }
      m.lr = get_finite(r, "push lr");
      m.loss_sum = r.read_f64("push loss_sum");  // NaN or inf when training diverged
      m.correct = r.read_i64("push correct");
      if (m.correct < 0 || m.correct > m.samples) {
        throw DataError(fmt::format("ps message: push correct is {}; must be in [0, samples = {}]",
                                    m.correct, m.samples));
      }
      m.compute_s = get_seconds(r, "push compute_s");
      if (m.kind == Kind::kPush && decoding == FloatDecoding::kView) {
        view_update(r, "push gradient", m);
      } else if (m.kind == Kind::kPush) {
        read_update(r, "push gradient", m);
      } else {
        m.pieces = get_pieces(r);
        return;
      }
      get_push_tail(r, m);
      return;
    case Kind::kPullRows:
      m.table = r.read_u32("pull_rows table");
      m.keys = r.read_u64_array_counted("pull_rows keys");
      return;
    case Kind::kPushRows:
      get_row_push(r, m);
      return;
    case Kind::kSetState:
      m.state = get_state(r);
      return;
    default:
      return;
  }
}

void get_pull_reply(ByteReader& r, FloatDecoding decoding, Message& m) {
  m.min_clock = r.read_u64("pull min_clock");
  m.totals.loss_sum = r.read_f64("pull loss_sum");
  m.totals.correct = r.read_i64("pull correct");
  m.totals.samples = r.read_i64("pull samples");
  m.totals.workers = get_worker_steps(r);
  get_floats(r, "pull values", decoding, m, /*shm_allowed=*/true);
}

void get_reply_body(ByteReader& r, FloatDecoding decoding, Message& m) {
  if (carries_error(m.status)) {
    m.error = get_string(r, "reply error");
    return;
  }
  switch (m.reply_to) {
    case Kind::kInit:
      m.clock = r.read_u64("init clock");
      return;
    case Kind::kPull:
      get_pull_reply(r, decoding, m);
      return;
    case Kind::kPush: {
      m.with_pull = get_flag(r, "push reply pull flag");
      if (!m.with_pull) return;
      get_pull_reply(r, decoding, m);
      const auto count = r.read_u32("push reply prefetch count");
      r.need_elements(count, sizeof(uint64_t), "push reply prefetched rows");
      m.prefetch.resize(count);
      for (Message& rows : m.prefetch) {
        rows.kind = Kind::kReply;
        rows.reply_to = Kind::kPullRows;
        rows.request_id = m.request_id;
        get_floats(r, "push reply prefetched rows", decoding, rows);
      }
      return;
    }
    case Kind::kPullRows:
      get_floats(r, "pull_rows values", decoding, m);
      return;
    case Kind::kStats:
      m.stats = get_stats(r);
      return;
    case Kind::kGetState:
      m.state = get_state(r);
      return;
    default:
      return;
  }
}

}  // namespace

size_t encoded_size_bound(const Message& m) {
  size_t piece_bytes = 0;
  for (const PushPiece& piece : m.pieces) {
    piece_bytes += 9 + piece.dense.size() * sizeof(float) + piece.message.size();
  }
  for (const Message& rows : m.rows) {
    piece_bytes += kMinRowPushBytes + rows.keys.size() * sizeof(uint64_t) +
                   rows.floats.size() * sizeof(float) + float_part_bytes(rows);
  }
  for (const Message& rows : m.prefetch) {
    piece_bytes += kMinPrefetchBytes + rows.keys.size() * sizeof(uint64_t) +
                   rows.floats.size() * sizeof(float) + float_part_bytes(rows);
  }
  return kPrefixBytes + m.floats.size() * sizeof(float) + float_part_bytes(m) +
         m.keys.size() * sizeof(uint64_t) + piece_bytes + 64;
}

std::vector<std::byte> encode_message(const Message& m) {
  return encode_message(m, std::vector<std::byte>());
}

std::vector<std::byte> encode_message(const Message& m, std::vector<std::byte> buffer) {
  ByteWriter w(std::move(buffer), encoded_size_bound(m));
  w.write_u8(static_cast<uint8_t>(m.kind));
  const bool reply = m.kind == Kind::kReply;
  w.write_u8(reply ? static_cast<uint8_t>(m.status) : 0);
  w.write_u8(reply ? static_cast<uint8_t>(m.reply_to) : 0);
  w.write_u8(m.term != 0 ? kTermFlag : 0);
  w.write_u32(m.worker);
  w.write_u64(m.request_id);
  w.write_u64(m.version);
  if (m.term != 0) w.write_u64(m.term);
  if (reply) {
    put_reply_body(w, m);
  } else {
    put_request_body(w, m);
  }
  return w.take();
}

Message decode_message(std::span<const std::byte> payload, FloatDecoding floats) {
  ByteReader r(payload, "ps message");
  Message m;
  const auto kind = r.read_u8("kind");
  if (!is_request(kind) && kind != static_cast<uint8_t>(Kind::kReply)) {
    throw DataError(fmt::format("ps message: unknown kind {}", kind));
  }
  m.kind = static_cast<Kind>(kind);
  const auto status = r.read_u8("status");
  const auto reply_to = r.read_u8("reply_to");
  const auto flags = r.read_u8("flags");
  if ((flags & ~kTermFlag) != 0) {
    throw DataError(
        fmt::format("ps message: flags are {:#04x}; only bit 0 (term) is known", flags));
  }
  if (m.kind == Kind::kReply) {
    if (status > static_cast<uint8_t>(ReplyStatus::kFenced)) {
      throw DataError(fmt::format("ps message: unknown reply status {}", status));
    }
    if (!is_request(reply_to) || reply_to == static_cast<uint8_t>(Kind::kHeartbeat)) {
      throw DataError(fmt::format("ps message: reply to unknown kind {}", reply_to));
    }
    m.status = static_cast<ReplyStatus>(status);
    m.reply_to = static_cast<Kind>(reply_to);
  } else if (status != 0 || reply_to != 0) {
    throw DataError(
        fmt::format("ps message: {} request has status {} and reply_to {}; both must be 0",
                    to_string(m.kind), status, reply_to));
  }
  m.worker = r.read_u32("worker");
  m.request_id = r.read_u64("request_id");
  m.version = r.read_u64("version");
  if ((flags & kTermFlag) != 0) {
    m.term = r.read_u64("term");
    if (m.term == 0) {
      throw DataError("ps message: the term flag is set with term 0 (term 0 is sent without it)");
    }
  }
  if (m.kind == Kind::kReply) {
    get_reply_body(r, floats, m);
    r.expect_end(fmt::format("reply to {} body", to_string(m.reply_to)));
  } else {
    get_request_body(r, floats, m);
    r.expect_end(fmt::format("{} body", to_string(m.kind)));
  }
  return m;
}

void check_sequence(uint64_t frame_sequence, const Message& message) {
  if (frame_sequence != message.request_id) {
    throw DataError(fmt::format(
        "ps {} {}: the frame's sequence {} does not match the payload's request id {}",
        to_string(message.kind == Kind::kReply ? message.reply_to : message.kind),
        message.kind == Kind::kReply ? "reply" : "request", frame_sequence, message.request_id));
  }
}

}  // namespace dtrain::ps
