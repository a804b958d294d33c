#include "ps/message_fields.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace dtrain::ps::message_fields {

namespace {
constexpr size_t kMaxDims = 8;
}  // namespace

// Strings are u16 length + UTF-8 (longer ones are cut: error texts), long
// strings u32 length + bytes.
void put_string(ByteWriter& w, std::string_view s) {
  w.write_string(s.substr(0, std::min<size_t>(s.size(), std::numeric_limits<uint16_t>::max())),
                 LengthPrefix::kU16);
}

std::string get_string(ByteReader& r, std::string_view field) {
  return r.read_string(field, std::numeric_limits<uint16_t>::max(), LengthPrefix::kU16);
}

std::string get_long_string(ByteReader& r, std::string_view field) {
  return r.read_string(field, r.remaining(), LengthPrefix::kU32);
}

void put_shape(ByteWriter& w, const Shape& shape) {
  w.write_u8(static_cast<uint8_t>(shape.size()));
  for (int64_t extent : shape) w.write_i64(extent);
}

Shape get_shape(ByteReader& r, std::string_view field) {
  const uint8_t ndim = r.read_u8(field);
  if (ndim > kMaxDims) {
    throw DataError(
        fmt::format("ps message: '{}' has {} dimensions; at most {}", field, ndim, kMaxDims));
  }
  Shape shape;
  uint64_t numel = 1;
  for (uint8_t d = 0; d < ndim; ++d) {
    const int64_t extent = r.read_i64(field);
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

float get_finite(ByteReader& r, std::string_view field) {
  const float value = r.read_f32(field);
  if (!std::isfinite(value)) {
    throw DataError(fmt::format("ps message: '{}' is {}; must be finite", field, value));
  }
  return value;
}

void put_state(ByteWriter& w, const StateDict& state) {
  w.write_u32(static_cast<uint32_t>(state.size()));
  for (const auto& [name, tensor] : state) {
    put_string(w, name);
    put_shape(w, tensor.shape());
    w.write_f32_array(std::span<const float>(tensor.data(), static_cast<size_t>(tensor.numel())));
  }
  w.write_u32(static_cast<uint32_t>(state.metadata().size()));
  for (const auto& [key, value] : state.metadata()) {
    put_string(w, key);
    w.write_string(value);
  }
}

StateDict get_state(ByteReader& r) {
  StateDict state;
  const auto entries = r.read_u32("state entries");
  for (uint32_t i = 0; i < entries; ++i) {
    std::string name = get_string(r, "state name");
    if (state.contains(name)) {
      throw DataError(fmt::format("ps message: state entry '{}' appears twice", name));
    }
    Shape shape = get_shape(r, "state shape");
    const auto numel = static_cast<uint64_t>(shape_numel(shape));
    std::vector<float> values = r.read_f32_array(numel, "state values");
    state.insert(std::move(name), Tensor::from_vector(values, std::move(shape)));
  }
  const auto metadata = r.read_u32("state metadata");
  for (uint32_t i = 0; i < metadata; ++i) {
    std::string key = get_string(r, "metadata key");
    state.metadata()[std::move(key)] = get_long_string(r, "metadata value");
  }
  return state;
}

void put_stats(ByteWriter& w, const ServerStats& stats) {
  w.write_u32(static_cast<uint32_t>(stats.server));
  w.write_u8(stats.initialised ? 1 : 0);
  w.write_u64(stats.version);
  w.write_u32(static_cast<uint32_t>(stats.workers.size()));
  for (size_t i = 0; i < stats.workers.size(); ++i) {
    w.write_u8(static_cast<uint8_t>(stats.workers[i]));
    w.write_u64(i < stats.clocks.size() ? stats.clocks[i] : 0);
  }
  w.write_u64(stats.min_clock);
  w.write_u64(stats.pushes_applied);
  w.write_u64(stats.pushes_dropped);
  w.write_u64(stats.requests_rejected);
  w.write_u64(stats.frames_dropped);
  w.write_u64(stats.sparse_rows);
  w.write_u64(stats.parked_pulls);
  w.write_u64(static_cast<uint64_t>(stats.clock_us));
}

ServerStats get_stats(ByteReader& r) {
  ServerStats stats;
  stats.server = static_cast<int>(r.read_u32("stats server"));
  const auto initialised = r.read_u8("stats initialised");
  if (initialised > 1) {
    throw DataError(
        fmt::format("ps message: stats 'initialised' is {}; must be 0 or 1", initialised));
  }
  stats.initialised = initialised == 1;
  stats.version = r.read_u64("stats version");
  const auto workers = r.read_u32("stats workers");
  r.need(static_cast<size_t>(workers) * 9, "stats workers");
  for (uint32_t i = 0; i < workers; ++i) {
    const auto state = r.read_u8("worker state");
    if (state > static_cast<uint8_t>(WorkerState::kFinished)) {
      throw DataError(fmt::format("ps message: worker {} has unknown state {}", i, state));
    }
    stats.workers.push_back(static_cast<WorkerState>(state));
    stats.clocks.push_back(r.read_u64("worker clock"));
  }
  stats.min_clock = r.read_u64("stats min_clock");
  stats.pushes_applied = r.read_u64("stats pushes_applied");
  stats.pushes_dropped = r.read_u64("stats pushes_dropped");
  stats.requests_rejected = r.read_u64("stats requests_rejected");
  stats.frames_dropped = r.read_u64("stats frames_dropped");
  stats.sparse_rows = r.read_u64("stats sparse_rows");
  stats.parked_pulls = r.read_u64("stats parked_pulls");
  stats.clock_us = static_cast<int64_t>(r.read_u64("stats clock_us"));
  return stats;
}

void put_shm_floats(ByteWriter& w, const ShmFloats& floats, bool inline_floats) {
  if (inline_floats || floats.count >= kShmFlag) {
    throw UsageError(
        fmt::format("ps message: {} floats in shared memory{}", floats.count,
                    inline_floats ? " and floats in the payload" : ": more than a count can say"));
  }
  w.write_u64(floats.count | kShmFlag);
  w.write_u64(floats.segment_id);
  w.write_u64(floats.offset);
  w.write_u64(floats.sequence);
}

ShmFloats get_shm_floats(ByteReader& r, uint64_t flagged_count) {
  ShmFloats floats;
  floats.present = true;
  floats.count = flagged_count & ~kShmFlag;
  floats.segment_id = r.read_u64("shared-memory segment id");
  floats.offset = r.read_u64("shared-memory offset");
  floats.sequence = r.read_u64("shared-memory sequence");
  return floats;
}

// Bounds a sparse block ([256, D] floats) at 64 MiB.
constexpr int64_t kMaxTableDim = 65536;

void put_init_specs(ByteWriter& w, const std::vector<DenseSpec>& dense,
                    const std::vector<SparseTableSpec>& tables) {
  w.write_u32(static_cast<uint32_t>(dense.size()));
  for (const DenseSpec& spec : dense) {
    put_string(w, spec.name);
    put_shape(w, spec.shape);
  }
  w.write_u32(static_cast<uint32_t>(tables.size()));
  for (const SparseTableSpec& table : tables) {
    put_string(w, table.name);
    w.write_i64(table.dim);
    w.write_f32(table.init_std);
  }
}

void get_init_specs(ByteReader& r, std::vector<DenseSpec>& dense,
                    std::vector<SparseTableSpec>& tables) {
  const auto dense_count = r.read_u32("init dense count");
  r.need(static_cast<size_t>(dense_count) * 3, "init dense specs");
  for (uint32_t i = 0; i < dense_count; ++i) {
    DenseSpec spec;
    spec.name = get_string(r, "dense name");
    spec.shape = get_shape(r, "dense shape");
    dense.push_back(std::move(spec));
  }
  const auto table_count = r.read_u32("init table count");
  r.need(static_cast<size_t>(table_count) * 14, "init table specs");
  for (uint32_t i = 0; i < table_count; ++i) {
    SparseTableSpec table;
    table.name = get_string(r, "table name");
    table.dim = r.read_i64("table dim");
    if (table.dim < 1 || table.dim > kMaxTableDim) {
      throw DataError(fmt::format("ps message: table '{}' has dim {}; must be in [1, 65536]",
                                  table.name, table.dim));
    }
    table.init_std = get_finite(r, "table init_std");
    tables.push_back(std::move(table));
  }
}

// A compressed push's pieces: u32 count, then per piece u8 encoding (0: dense,
// u64 count + f32 values; 1: compressed, u32 length + that many bytes).
namespace {
constexpr uint8_t kPieceDense = 0;
constexpr uint8_t kPieceCompressed = 1;
constexpr size_t kMinPieceBytes = 1 + sizeof(uint32_t);
}  // namespace

void put_pieces(ByteWriter& w, const std::vector<PushPiece>& pieces) {
  w.write_u32(static_cast<uint32_t>(pieces.size()));
  for (const PushPiece& piece : pieces) {
    w.write_u8(piece.compressed ? kPieceCompressed : kPieceDense);
    if (piece.compressed) {
      w.write_blob(piece.message, LengthPrefix::kU32);
    } else {
      w.write_f32_array_counted(piece.dense);
    }
  }
}

std::vector<PushPiece> get_pieces(ByteReader& r) {
  const auto count = r.read_u32("compressed push pieces");
  r.need_elements(count, kMinPieceBytes, "compressed push pieces");
  std::vector<PushPiece> pieces(count);
  for (uint32_t i = 0; i < count; ++i) {
    const auto encoding = r.read_u8("compressed push piece encoding");
    if (encoding == kPieceDense) {
      pieces[i].dense = r.read_f32_array_counted("compressed push dense piece");
    } else if (encoding == kPieceCompressed) {
      const std::span<const std::byte> message =
          r.read_blob("compressed push message", r.remaining(), LengthPrefix::kU32);
      pieces[i].compressed = true;
      pieces[i].message.assign(message.begin(), message.end());
    } else {
      throw DataError(fmt::format(
          "ps message: compressed push piece {} has encoding {}; must be 0 (dense) or 1 "
          "(compressed)",
          i, encoding));
    }
  }
  return pieces;
}

}  // namespace dtrain::ps::message_fields

namespace dtrain::ps {

bool floats_finite_bytes(std::span<const std::byte> bytes) {
  const size_t count = bytes.size() / sizeof(float);
  constexpr uint32_t kExponent = 0x7f800000u;  // all ones: Inf or NaN (as all_finite)
  uint32_t largest = 0;
  const std::byte* p = bytes.data();
  for (size_t i = 0; i < count; ++i) {
    uint32_t bits = 0;
    std::memcpy(&bits, p + i * sizeof bits, sizeof bits);  // any alignment
    largest = std::max(largest, bits & kExponent);
  }
  return largest != kExponent;
}

}  // namespace dtrain::ps
