#include "fl/fl_protocol.h"

#include <fmt/format.h>

#include <cmath>

#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::fl {

namespace {

constexpr const char* kContext = "fl message";

ByteWriter start(FlKind kind, size_t body_bytes) {
  ByteWriter w(4 + body_bytes);
  w.write_u8(static_cast<uint8_t>(kind));
  w.write_u8(0);
  w.write_u16(0);
  return w;
}

[[noreturn]] void bad(std::string_view field, const std::string& problem) {
  throw DataError(fmt::format("{}: field '{}' {}", kContext, field, problem));
}

int64_t read_at_least(ByteReader& r, std::string_view field, int64_t min) {
  const int64_t value = r.read_i64(field);
  if (value < min) bad(field, fmt::format("is {}, expected at least {}", value, min));
  return value;
}

}  // namespace

std::string_view to_string(FlKind kind) {
  switch (kind) {
    case FlKind::kJoin:
      return "join";
    case FlKind::kTask:
      return "task";
    case FlKind::kUpdate:
      return "update";
    case FlKind::kWait:
      return "wait";
    case FlKind::kDone:
      return "done";
    case FlKind::kUpdateCompressed:
      return "compressed update";
    case FlKind::kSecAggSetup:
      return "secagg setup";
    case FlKind::kSecAggBroadcast:
      return "secagg broadcast";
    case FlKind::kSecAggAnswer:
      return "secagg answer";
  }
  return "unknown";
}

std::vector<std::byte> encode_join(int64_t client) {
  ByteWriter w = start(FlKind::kJoin, 8);
  w.write_i64(client);
  return w.take();
}

std::vector<std::byte> encode_task(const FlTask& task) {
  ByteWriter w = start(FlKind::kTask, 56 + 4 * task.weights.size());
  w.write_i64(task.round);
  w.write_i64(task.deadline_ms);
  w.write_i64(task.training.epochs);
  w.write_i64(task.training.batch);
  w.write_f64(task.training.proximal_mu);
  w.write_i64(task.training.max_steps);
  w.write_f32_array_counted(task.weights);
  return w.take();
}

namespace {

// kUpdate's and kUpdateCompressed's fields before the delta.
void write_update_fields(ByteWriter& w, const ClientUpdate& update) {
  w.write_i64(update.client);
  w.write_i64(update.round);
  w.write_i64(update.samples);
  w.write_f64(update.loss);
  w.write_i64(update.steps);
  w.write_u8(update.partial ? 1 : 0);
}

void read_update_fields(ByteReader& r, ClientUpdate& u) {
  u.client = read_at_least(r, "update client", 0);
  u.round = read_at_least(r, "update round", 1);
  u.samples = r.read_i64("update samples");
  u.loss = r.read_f64("update loss");
  u.steps = read_at_least(r, "update steps", 0);
  const uint8_t partial = r.read_u8("update partial");
  if (partial > 1) bad("update partial", fmt::format("is {}, expected 0 or 1", partial));
  u.partial = partial == 1;
}

}  // namespace

std::vector<std::byte> encode_update(const ClientUpdate& update) {
  ByteWriter w = start(FlKind::kUpdate, 49 + 4 * update.delta.size());
  write_update_fields(w, update);
  w.write_f32_array_counted(update.delta);
  return w.take();
}

std::vector<std::byte> encode_compressed_update(const ClientUpdate& update,
                                                std::span<const std::byte> upload) {
  ByteWriter w = start(FlKind::kUpdateCompressed, 49 + upload.size());
  write_update_fields(w, update);
  w.write_u64(upload.size());
  w.write_bytes(upload);
  return w.take();
}

std::vector<std::byte> encode_wait(int64_t rounds_done) {
  ByteWriter w = start(FlKind::kWait, 8);
  w.write_i64(rounds_done);
  return w.take();
}

std::vector<std::byte> encode_done(int64_t rounds_done) {
  ByteWriter w = start(FlKind::kDone, 8);
  w.write_i64(rounds_done);
  return w.take();
}

std::vector<std::byte> encode_secagg_setup(const FlSecAggSetup& setup) {
  ByteWriter w = start(FlKind::kSecAggSetup, 61);
  w.write_i64(setup.round);
  w.write_u32(setup.session);
  w.write_u32(setup.index);
  w.write_u32(setup.clients);
  w.write_u32(setup.threshold);
  w.write_u8(setup.graph);
  w.write_u32(setup.degree);
  w.write_u64(setup.graph_seed);
  w.write_f32(setup.clip);
  w.write_u64(setup.vector_length);
  w.write_u32(setup.min_survivors);
  w.write_f64(setup.mean_samples);
  return w.take();
}

std::vector<std::byte> encode_secagg_broadcast(const FlSecAggPayload& broadcast) {
  ByteWriter w = start(FlKind::kSecAggBroadcast, 21 + broadcast.message.size());
  w.write_i64(broadcast.round);
  w.write_u32(broadcast.session);
  w.write_u8(broadcast.phase);
  w.write_u64(broadcast.message.size());
  w.write_bytes(broadcast.message);
  return w.take();
}

std::vector<std::byte> encode_secagg_answer(const FlSecAggPayload& answer) {
  ByteWriter w = start(FlKind::kSecAggAnswer, 53 + answer.message.size());
  w.write_i64(answer.client);
  w.write_i64(answer.round);
  w.write_u32(answer.session);
  w.write_u8(answer.phase);
  w.write_i64(answer.samples);
  w.write_f64(answer.loss);
  w.write_i64(answer.steps);
  w.write_u64(answer.message.size());
  w.write_bytes(answer.message);
  return w.take();
}

namespace {

uint8_t read_phase(ByteReader& r, uint8_t min) {
  const uint8_t phase = r.read_u8("secagg phase");
  if (phase < min || phase > 3) {
    bad("secagg phase", fmt::format("is {}, expected {} to 3", phase, min));
  }
  return phase;
}

std::vector<std::byte> read_counted_bytes(ByteReader& r, std::string_view field) {
  const uint64_t count = r.read_u64(field);
  if (count > r.remaining()) {
    bad(field, fmt::format("is {}, but {} bytes are left", count, r.remaining()));
  }
  const auto bytes = r.read_bytes(static_cast<size_t>(count), field);
  return {bytes.begin(), bytes.end()};
}

FlTask read_task(ByteReader& r) {
  FlTask t;
  t.round = read_at_least(r, "task round", 1);
  t.deadline_ms = read_at_least(r, "task deadline_ms", 0);
  t.training.epochs = read_at_least(r, "task epochs", 1);
  t.training.batch = read_at_least(r, "task batch", 0);
  t.training.proximal_mu = r.read_f64("task proximal_mu");
  if (!std::isfinite(t.training.proximal_mu) || t.training.proximal_mu < 0) {
    bad("task proximal_mu",
        fmt::format("is {}, expected a finite value >= 0", t.training.proximal_mu));
  }
  t.training.max_steps = read_at_least(r, "task max_steps", 1);
  t.weights = r.read_f32_array_counted("task weights");
  return t;
}

FlSecAggSetup read_secagg_setup(ByteReader& r) {
  FlSecAggSetup s;
  s.round = read_at_least(r, "secagg round", 1);
  s.session = r.read_u32("secagg session");
  s.index = r.read_u32("secagg index");
  s.clients = r.read_u32("secagg clients");
  if (s.index >= s.clients) {
    bad("secagg index", fmt::format("is {}, expected below clients {}", s.index, s.clients));
  }
  s.threshold = r.read_u32("secagg threshold");
  s.graph = r.read_u8("secagg graph");
  if (s.graph > 1) bad("secagg graph", fmt::format("is {}, expected 0 or 1", s.graph));
  s.degree = r.read_u32("secagg degree");
  s.graph_seed = r.read_u64("secagg graph_seed");
  s.clip = r.read_f32("secagg clip");
  if (!std::isfinite(s.clip) || s.clip <= 0) {
    bad("secagg clip", fmt::format("is {}, expected a finite value > 0", s.clip));
  }
  s.vector_length = r.read_u64("secagg vector_length");
  s.min_survivors = r.read_u32("secagg min_survivors");
  s.mean_samples = r.read_f64("secagg mean_samples");
  if (!std::isfinite(s.mean_samples) || s.mean_samples <= 0) {
    bad("secagg mean_samples", fmt::format("is {}, expected a finite value > 0", s.mean_samples));
  }
  return s;
}

FlSecAggPayload read_secagg_answer(ByteReader& r) {
  FlSecAggPayload p;
  p.client = read_at_least(r, "secagg client", 0);
  p.round = read_at_least(r, "secagg round", 1);
  p.session = r.read_u32("secagg session");
  p.phase = read_phase(r, 0);
  p.samples = r.read_i64("secagg samples");
  p.loss = r.read_f64("secagg loss");
  p.steps = read_at_least(r, "secagg steps", 0);
  p.message = read_counted_bytes(r, "secagg message bytes");
  return p;
}

}  // namespace

FlMessage decode_fl_message(std::span<const std::byte> payload) {
  ByteReader r(payload, kContext);
  FlMessage m;
  const uint8_t kind = r.read_u8("kind");
  if (kind < static_cast<uint8_t>(FlKind::kJoin) ||
      kind > static_cast<uint8_t>(FlKind::kSecAggAnswer)) {
    bad("kind", fmt::format("is {}, expected 1 (join) to 9 (secagg answer)", kind));
  }
  m.kind = static_cast<FlKind>(kind);
  const uint8_t reserved8 = r.read_u8("reserved");
  const uint16_t reserved16 = r.read_u16("reserved");
  if (reserved8 != 0 || reserved16 != 0) {
    bad("reserved", fmt::format("is {}/{}, expected 0", reserved8, reserved16));
  }
  switch (m.kind) {
    case FlKind::kJoin:
      m.client = read_at_least(r, "join client", 0);
      break;
    case FlKind::kWait:
    case FlKind::kDone:
      m.rounds_done = read_at_least(r, "rounds done", 0);
      break;
    case FlKind::kTask:
      m.task = read_task(r);
      break;
    case FlKind::kUpdate:
      read_update_fields(r, m.update);
      m.update.delta = r.read_f32_array_counted("update delta");
      break;
    case FlKind::kUpdateCompressed:
      read_update_fields(r, m.update);
      m.upload = read_counted_bytes(r, "upload bytes");
      break;
    case FlKind::kSecAggSetup:
      m.secagg_setup = read_secagg_setup(r);
      break;
    case FlKind::kSecAggBroadcast: {
      FlSecAggPayload& p = m.secagg;
      p.round = read_at_least(r, "secagg round", 1);
      p.session = r.read_u32("secagg session");
      p.phase = read_phase(r, 1);
      p.message = read_counted_bytes(r, "secagg message bytes");
      break;
    }
    case FlKind::kSecAggAnswer:
      m.secagg = read_secagg_answer(r);
      break;
  }
  r.expect_end(fmt::format("{} body", to_string(m.kind)));
  return m;
}

}  // namespace dtrain::fl
