#include "ps/messages.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace dtrain::ps {

std::string_view to_string(Kind kind) {
  switch (kind) {
    case Kind::kInit:
      return "init";
    case Kind::kPull:
      return "pull";
    case Kind::kPush:
      return "push";
    case Kind::kPullRows:
      return "pull_rows";
    case Kind::kPushRows:
      return "push_rows";
    case Kind::kStats:
      return "stats";
    case Kind::kGetState:
      return "get_state";
    case Kind::kSetState:
      return "set_state";
    case Kind::kGoodbye:
      return "goodbye";
    case Kind::kHeartbeat:
      return "heartbeat";
    case Kind::kReply:
      return "reply";
  }
  return "unknown";
}

std::string_view to_string(WorkerState state) {
  switch (state) {
    case WorkerState::kLive:
      return "live";
    case WorkerState::kDead:
      return "dead";
    case WorkerState::kFinished:
      return "finished";
  }
  return "unknown";
}

namespace {

constexpr size_t kPrefixBytes = 24;
constexpr size_t kMaxDims = 8;
// Bounds a sparse block ([256, D] floats) at 64 MiB.
constexpr int64_t kMaxTableDim = 65536;

bool is_request(uint8_t kind) { return kind >= 1 && kind <= 10; }

class Writer {
 public:
  explicit Writer(size_t reserve) { bytes_.reserve(reserve); }
  template <typename T>
  void put(T value) {
    const size_t at = bytes_.size();
    bytes_.resize(at + sizeof(T));
    std::memcpy(bytes_.data() + at, &value, sizeof(T));
  }
  void put_bytes(const void* data, size_t size) {
    const size_t at = bytes_.size();
    bytes_.resize(at + size);
    if (size != 0) std::memcpy(bytes_.data() + at, data, size);
  }
  void put_string(std::string_view s) {
    const size_t size = std::min<size_t>(s.size(), std::numeric_limits<uint16_t>::max());
    put<uint16_t>(static_cast<uint16_t>(size));
    put_bytes(s.data(), size);
  }
  void put_long_string(std::string_view s) {
    put<uint32_t>(static_cast<uint32_t>(s.size()));
    put_bytes(s.data(), s.size());
  }
  void put_floats(std::span<const float> values) {
    put<uint64_t>(values.size());
    put_bytes(values.data(), values.size_bytes());
  }
  void put_keys(std::span<const uint64_t> keys) {
    put<uint64_t>(keys.size());
    put_bytes(keys.data(), keys.size_bytes());
  }
  void put_shape(const Shape& shape) {
    put<uint8_t>(static_cast<uint8_t>(shape.size()));
    for (int64_t extent : shape) put<int64_t>(extent);
  }
  std::vector<std::byte> take() { return std::move(bytes_); }

 private:
  std::vector<std::byte> bytes_;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> bytes) : bytes_(bytes) {}
  size_t remaining() const { return bytes_.size() - at_; }
  void need(size_t size, std::string_view field) const {
    if (size > remaining()) {
      throw DataError(
          fmt::format("ps message: field '{}' needs {} bytes at offset {}, only {} left", field,
                      size, at_, remaining()));
    }
  }
  template <typename T>
  T get(std::string_view field) {
    need(sizeof(T), field);
    T value;
    std::memcpy(&value, bytes_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return value;
  }
  std::string get_string(std::string_view field) {
    const auto size = get<uint16_t>(field);
    return get_chars(size, field);
  }
  std::string get_long_string(std::string_view field) {
    const auto size = get<uint32_t>(field);
    return get_chars(size, field);
  }
  // A count of `element_bytes`-sized items that must fit in what is left.
  uint64_t get_count(size_t element_bytes, std::string_view field) {
    const auto count = get<uint64_t>(field);
    if (element_bytes != 0 && count > remaining() / element_bytes) {
      throw DataError(fmt::format("ps message: '{}' count {} needs {} bytes, only {} left", field,
                                  count, element_bytes, remaining()));
    }
    return count;
  }
  std::vector<float> get_floats(std::string_view field) {
    const uint64_t count = get_count(sizeof(float), field);
    return get_float_array(count, field);
  }
  std::vector<float> get_float_array(uint64_t count, std::string_view field) {
    need(count * sizeof(float), field);
    std::vector<float> values(count);
    if (count != 0) std::memcpy(values.data(), bytes_.data() + at_, count * sizeof(float));
    at_ += count * sizeof(float);
    return values;
  }
  std::vector<uint64_t> get_keys(std::string_view field) {
    const uint64_t count = get_count(sizeof(uint64_t), field);
    std::vector<uint64_t> keys(count);
    if (count != 0) std::memcpy(keys.data(), bytes_.data() + at_, count * sizeof(uint64_t));
    at_ += count * sizeof(uint64_t);
    return keys;
  }
  Shape get_shape(std::string_view field) {
    const auto ndim = get<uint8_t>(field);
    if (ndim > kMaxDims) {
      throw DataError(
          fmt::format("ps message: '{}' has {} dimensions; at most {}", field, ndim, kMaxDims));
    }
    Shape shape;
    uint64_t numel = 1;
    for (uint8_t d = 0; d < ndim; ++d) {
      const auto extent = get<int64_t>(field);
      if (extent < 0 || extent > (int64_t{1} << 40)) {
        throw DataError(fmt::format("ps message: '{}' extent {} of dimension {} is out of range",
                                    field, extent, d));
      }
      if (extent != 0 && numel > (uint64_t{1} << 40) / static_cast<uint64_t>(extent)) {
        throw DataError(fmt::format("ps message: '{}' has more than 2^40 elements", field));
      }
      numel *= static_cast<uint64_t>(extent);
      shape.push_back(extent);
    }
    return shape;
  }
  float get_finite(std::string_view field) {
    const auto value = get<float>(field);
    if (!std::isfinite(value)) {
      throw DataError(fmt::format("ps message: '{}' is {}; must be finite", field, value));
    }
    return value;
  }
  void expect_end(std::string_view what) const {
    if (remaining() != 0) {
      throw DataError(
          fmt::format("ps message: {} bytes after the end of the {} body", remaining(), what));
    }
  }

 private:
  std::string get_chars(size_t size, std::string_view field) {
    need(size, field);
    std::string s(reinterpret_cast<const char*>(bytes_.data() + at_), size);
    at_ += size;
    return s;
  }

  std::span<const std::byte> bytes_;
  size_t at_ = 0;
};

void put_state(Writer& w, const StateDict& state) {
  w.put<uint32_t>(static_cast<uint32_t>(state.size()));
  for (const auto& [name, tensor] : state) {
    w.put_string(name);
    w.put_shape(tensor.shape());
    w.put_bytes(tensor.data(), static_cast<size_t>(tensor.numel()) * sizeof(float));
  }
  w.put<uint32_t>(static_cast<uint32_t>(state.metadata().size()));
  for (const auto& [key, value] : state.metadata()) {
    w.put_string(key);
    w.put_long_string(value);
  }
}

StateDict get_state(Reader& r) {
  StateDict state;
  const auto entries = r.get<uint32_t>("state entries");
  for (uint32_t i = 0; i < entries; ++i) {
    std::string name = r.get_string("state name");
    if (state.contains(name)) {
      throw DataError(fmt::format("ps message: state entry '{}' appears twice", name));
    }
    Shape shape = r.get_shape("state shape");
    const auto numel = static_cast<uint64_t>(shape_numel(shape));
    std::vector<float> values = r.get_float_array(numel, "state values");
    state.insert(std::move(name), Tensor::from_vector(values, std::move(shape)));
  }
  const auto metadata = r.get<uint32_t>("state metadata");
  for (uint32_t i = 0; i < metadata; ++i) {
    std::string key = r.get_string("metadata key");
    state.metadata()[std::move(key)] = r.get_long_string("metadata value");
  }
  return state;
}

void put_stats(Writer& w, const ServerStats& stats) {
  w.put<uint32_t>(static_cast<uint32_t>(stats.server));
  w.put<uint8_t>(stats.initialised ? 1 : 0);
  w.put<uint64_t>(stats.version);
  w.put<uint32_t>(static_cast<uint32_t>(stats.workers.size()));
  for (size_t i = 0; i < stats.workers.size(); ++i) {
    w.put<uint8_t>(static_cast<uint8_t>(stats.workers[i]));
    w.put<uint64_t>(i < stats.clocks.size() ? stats.clocks[i] : 0);
  }
  w.put<uint64_t>(stats.min_clock);
  w.put<uint64_t>(stats.pushes_applied);
  w.put<uint64_t>(stats.pushes_dropped);
  w.put<uint64_t>(stats.requests_rejected);
  w.put<uint64_t>(stats.frames_dropped);
  w.put<uint64_t>(stats.sparse_rows);
  w.put<uint64_t>(stats.parked_pulls);
}

ServerStats get_stats(Reader& r) {
  ServerStats stats;
  stats.server = static_cast<int>(r.get<uint32_t>("stats server"));
  const auto initialised = r.get<uint8_t>("stats initialised");
  if (initialised > 1) {
    throw DataError(
        fmt::format("ps message: stats 'initialised' is {}; must be 0 or 1", initialised));
  }
  stats.initialised = initialised == 1;
  stats.version = r.get<uint64_t>("stats version");
  const auto workers = r.get<uint32_t>("stats workers");
  r.need(static_cast<size_t>(workers) * 9, "stats workers");
  for (uint32_t i = 0; i < workers; ++i) {
    const auto state = r.get<uint8_t>("worker state");
    if (state > static_cast<uint8_t>(WorkerState::kFinished)) {
      throw DataError(fmt::format("ps message: worker {} has unknown state {}", i, state));
    }
    stats.workers.push_back(static_cast<WorkerState>(state));
    stats.clocks.push_back(r.get<uint64_t>("worker clock"));
  }
  stats.min_clock = r.get<uint64_t>("stats min_clock");
  stats.pushes_applied = r.get<uint64_t>("stats pushes_applied");
  stats.pushes_dropped = r.get<uint64_t>("stats pushes_dropped");
  stats.requests_rejected = r.get<uint64_t>("stats requests_rejected");
  stats.frames_dropped = r.get<uint64_t>("stats frames_dropped");
  stats.sparse_rows = r.get<uint64_t>("stats sparse_rows");
  stats.parked_pulls = r.get<uint64_t>("stats parked_pulls");
  return stats;
}

void put_request_body(Writer& w, const Message& m) {
  switch (m.kind) {
    case Kind::kInit:
      w.put<uint32_t>(static_cast<uint32_t>(m.dense.size()));
      for (const DenseSpec& spec : m.dense) {
        w.put_string(spec.name);
        w.put_shape(spec.shape);
      }
      w.put<uint32_t>(static_cast<uint32_t>(m.tables.size()));
      for (const SparseTableSpec& table : m.tables) {
        w.put_string(table.name);
        w.put<int64_t>(table.dim);
        w.put<float>(table.init_std);
      }
      w.put_floats(m.floats);
      return;
    case Kind::kPull:
      w.put<uint64_t>(m.min_version);
      w.put<uint32_t>(m.wait_ms);
      return;
    case Kind::kPush:
      w.put<int64_t>(m.samples);
      w.put<float>(m.lr);
      w.put<double>(m.loss_sum);
      w.put<int64_t>(m.correct);
      w.put<double>(m.compute_s);
      w.put_floats(m.floats);
      return;
    case Kind::kPullRows:
      w.put<uint32_t>(m.table);
      w.put_keys(m.keys);
      return;
    case Kind::kPushRows:
      w.put<uint32_t>(m.table);
      w.put<float>(m.lr);
      w.put_keys(m.keys);
      w.put_floats(m.floats);
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

// Replies whose body is an error text instead of the request's reply body.
bool carries_error(ReplyStatus status) {
  return status == ReplyStatus::kError || status == ReplyStatus::kTimeout ||
         status == ReplyStatus::kRejoin;
}

void put_reply_body(Writer& w, const Message& m) {
  if (carries_error(m.status)) {
    w.put_string(m.error);
    return;
  }
  switch (m.reply_to) {
    case Kind::kInit:
      w.put<uint64_t>(m.clock);
      return;
    case Kind::kPull:
      w.put<uint64_t>(m.min_clock);
      w.put<double>(m.totals.loss_sum);
      w.put<int64_t>(m.totals.correct);
      w.put<int64_t>(m.totals.samples);
      w.put<uint32_t>(static_cast<uint32_t>(m.totals.workers.size()));
      for (const WorkerStep& step : m.totals.workers) {
        w.put<int64_t>(step.samples);
        w.put<double>(step.compute_s);
        w.put<uint8_t>(step.counted ? 1 : 0);
      }
      w.put_floats(m.floats);
      return;
    case Kind::kPullRows:
      w.put_floats(m.floats);
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
double get_seconds(Reader& r, std::string_view field) {
  const auto seconds = r.get<double>(field);
  if (!std::isfinite(seconds) || seconds < 0.0) {
    throw DataError(
        fmt::format("ps message: {} is {}; must be a finite number >= 0", field, seconds));
  }
  return seconds;
}

// A pull reply's per-worker steps: u32 count, then count x (i64 samples, f64
// compute_s, u8 counted).
std::vector<WorkerStep> get_worker_steps(Reader& r) {
  constexpr size_t kStepBytes = sizeof(int64_t) + sizeof(double) + sizeof(uint8_t);
  const auto count = r.get<uint32_t>("pull worker count");
  r.need(static_cast<size_t>(count) * kStepBytes, "pull worker steps");
  std::vector<WorkerStep> steps(count);
  for (uint32_t i = 0; i < count; ++i) {
    steps[i].samples = r.get<int64_t>("pull worker samples");
    if (steps[i].samples < 0) {
      throw DataError(fmt::format("ps message: pull worker {} samples is {}; must be >= 0", i,
                                  steps[i].samples));
    }
    steps[i].compute_s = get_seconds(r, "pull worker compute_s");
    const auto counted = r.get<uint8_t>("pull worker counted");
    if (counted > 1) {
      throw DataError(
          fmt::format("ps message: pull worker {} counted flag is {}; must be 0 or 1", i, counted));
    }
    steps[i].counted = counted == 1;
  }
  return steps;
}

void get_request_body(Reader& r, Message& m) {
  switch (m.kind) {
    case Kind::kInit: {
      const auto dense = r.get<uint32_t>("init dense count");
      r.need(static_cast<size_t>(dense) * 3, "init dense specs");
      for (uint32_t i = 0; i < dense; ++i) {
        DenseSpec spec;
        spec.name = r.get_string("dense name");
        spec.shape = r.get_shape("dense shape");
        m.dense.push_back(std::move(spec));
      }
      const auto tables = r.get<uint32_t>("init table count");
      r.need(static_cast<size_t>(tables) * 14, "init table specs");
      for (uint32_t i = 0; i < tables; ++i) {
        SparseTableSpec table;
        table.name = r.get_string("table name");
        table.dim = r.get<int64_t>("table dim");
        if (table.dim < 1 || table.dim > kMaxTableDim) {
          throw DataError(fmt::format("ps message: table '{}' has dim {}; must be in [1, 65536]",
                                      table.name, table.dim));
        }
        table.init_std = r.get_finite("table init_std");
        m.tables.push_back(std::move(table));
      }
      m.floats = r.get_floats("init values");
      return;
    }
    case Kind::kPull:
      m.min_version = r.get<uint64_t>("pull min_version");
      m.wait_ms = r.get<uint32_t>("pull wait_ms");
      return;
    case Kind::kPush:
      m.samples = r.get<int64_t>("push samples");
      if (m.samples < 0) {
        throw DataError(fmt::format("ps message: push samples is {}; must be >= 0", m.samples));
      }
      m.lr = r.get_finite("push lr");
      m.loss_sum = r.get<double>("push loss_sum");  // NaN or inf when training diverged
      m.correct = r.get<int64_t>("push correct");
      if (m.correct < 0 || m.correct > m.samples) {
        throw DataError(fmt::format("ps message: push correct is {}; must be in [0, samples = {}]",
                                    m.correct, m.samples));
      }
      m.compute_s = get_seconds(r, "push compute_s");
      m.floats = r.get_floats("push gradient");
      return;
    case Kind::kPullRows:
      m.table = r.get<uint32_t>("pull_rows table");
      m.keys = r.get_keys("pull_rows keys");
      return;
    case Kind::kPushRows:
      m.table = r.get<uint32_t>("push_rows table");
      m.lr = r.get_finite("push_rows lr");
      m.keys = r.get_keys("push_rows keys");
      m.floats = r.get_floats("push_rows gradient");
      return;
    case Kind::kSetState:
      m.state = get_state(r);
      return;
    default:
      return;
  }
}

void get_reply_body(Reader& r, Message& m) {
  if (carries_error(m.status)) {
    m.error = r.get_string("reply error");
    return;
  }
  switch (m.reply_to) {
    case Kind::kInit:
      m.clock = r.get<uint64_t>("init clock");
      return;
    case Kind::kPull:
      m.min_clock = r.get<uint64_t>("pull min_clock");
      m.totals.loss_sum = r.get<double>("pull loss_sum");
      m.totals.correct = r.get<int64_t>("pull correct");
      m.totals.samples = r.get<int64_t>("pull samples");
      m.totals.workers = get_worker_steps(r);
      m.floats = r.get_floats("pull values");
      return;
    case Kind::kPullRows:
      m.floats = r.get_floats("pull_rows values");
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

std::vector<std::byte> encode_message(const Message& m) {
  Writer w(kPrefixBytes + m.floats.size() * sizeof(float) + m.keys.size() * sizeof(uint64_t) + 64);
  w.put<uint8_t>(static_cast<uint8_t>(m.kind));
  const bool reply = m.kind == Kind::kReply;
  w.put<uint8_t>(reply ? static_cast<uint8_t>(m.status) : 0);
  w.put<uint8_t>(reply ? static_cast<uint8_t>(m.reply_to) : 0);
  w.put<uint8_t>(0);
  w.put<uint32_t>(m.worker);
  w.put<uint64_t>(m.request_id);
  w.put<uint64_t>(m.version);
  if (reply) {
    put_reply_body(w, m);
  } else {
    put_request_body(w, m);
  }
  return w.take();
}

Message decode_message(std::span<const std::byte> payload) {
  Reader r(payload);
  Message m;
  const auto kind = r.get<uint8_t>("kind");
  if (!is_request(kind) && kind != static_cast<uint8_t>(Kind::kReply)) {
    throw DataError(fmt::format("ps message: unknown kind {}", kind));
  }
  m.kind = static_cast<Kind>(kind);
  const auto status = r.get<uint8_t>("status");
  const auto reply_to = r.get<uint8_t>("reply_to");
  const auto reserved = r.get<uint8_t>("reserved");
  if (reserved != 0)
    throw DataError(fmt::format("ps message: reserved byte is {}; must be 0", reserved));
  if (m.kind == Kind::kReply) {
    if (status > static_cast<uint8_t>(ReplyStatus::kRejoin)) {
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
  m.worker = r.get<uint32_t>("worker");
  m.request_id = r.get<uint64_t>("request_id");
  m.version = r.get<uint64_t>("version");
  if (m.kind == Kind::kReply) {
    get_reply_body(r, m);
    r.expect_end(fmt::format("reply to {}", to_string(m.reply_to)));
  } else {
    get_request_body(r, m);
    r.expect_end(to_string(m.kind));
  }
  return m;
}

}  // namespace dtrain::ps
