#include "comm/collectives/sparse_collectives.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

constexpr size_t kPrefixBytes = 16;  // u32 block, u8 form, 3 zero bytes, u64 count
constexpr uint8_t kSparseForm = 0;
constexpr uint8_t kDenseForm = 1;

// The partial sum of the block [lo, hi) of the index space.
struct Block {
  size_t lo = 0;
  size_t hi = 0;
  bool dense = false;
  std::vector<uint32_t> indices;  // sparse: strictly increasing, in [lo, hi)
  std::vector<float> values;      // sparse: one per index; dense: hi - lo values

  size_t elements() const { return hi - lo; }
  // SparCML's switch: the dense form is no larger.
  bool dense_is_smaller(size_t count) const { return count * 8 >= elements() * 4; }

  void make_dense() {
    if (dense) return;
    std::vector<float> dense_values(elements(), 0.0f);
    for (size_t i = 0; i < indices.size(); ++i) dense_values[indices[i] - lo] = values[i];
    values = std::move(dense_values);
    indices.clear();
    dense = true;
  }

  // The smaller form for sending a finished block (zeros of a dense block
  // are left out of a sparse one).
  void compact() {
    if (!dense) return;
    const auto nonzero = static_cast<size_t>(
        std::count_if(values.begin(), values.end(), [](float x) { return x != 0.0f; }));
    if (dense_is_smaller(nonzero)) return;
    std::vector<float> kept;
    kept.reserve(nonzero);
    indices.reserve(nonzero);
    for (size_t i = 0; i < values.size(); ++i) {
      if (values[i] != 0.0f) {
        indices.push_back(static_cast<uint32_t>(lo + i));
        kept.push_back(values[i]);
      }
    }
    values = std::move(kept);
    dense = false;
  }

  // this += other (same block).
  void add(const Block& other) {
    if (other.dense || dense) {
      make_dense();
      if (other.dense) {
        for (size_t i = 0; i < values.size(); ++i) values[i] += other.values[i];
      } else {
        for (size_t i = 0; i < other.indices.size(); ++i) {
          values[other.indices[i] - lo] += other.values[i];
        }
      }
      return;
    }
    std::vector<uint32_t> merged_indices;
    std::vector<float> merged_values;
    merged_indices.reserve(indices.size() + other.indices.size());
    merged_values.reserve(indices.size() + other.indices.size());
    size_t a = 0;
    size_t b = 0;
    while (a < indices.size() || b < other.indices.size()) {
      if (b == other.indices.size() || (a < indices.size() && indices[a] < other.indices[b])) {
        merged_indices.push_back(indices[a]);
        merged_values.push_back(values[a++]);
      } else if (a == indices.size() || other.indices[b] < indices[a]) {
        merged_indices.push_back(other.indices[b]);
        merged_values.push_back(other.values[b++]);
      } else {
        merged_indices.push_back(indices[a]);
        merged_values.push_back(values[a++] + other.values[b++]);
      }
    }
    indices = std::move(merged_indices);
    values = std::move(merged_values);
    if (dense_is_smaller(indices.size())) make_dense();
  }
};

// This rank's own entries of [lo, hi).
Block own_block(std::span<const uint32_t> indices, std::span<const float> values, size_t lo,
                size_t hi) {
  Block block;
  block.lo = lo;
  block.hi = hi;
  const auto begin = std::lower_bound(indices.begin(), indices.end(), lo);
  const auto end = std::lower_bound(begin, indices.end(), hi);
  const auto first = static_cast<size_t>(begin - indices.begin());
  const auto last = static_cast<size_t>(end - indices.begin());
  block.indices.assign(begin, end);
  block.values.assign(values.begin() + static_cast<std::ptrdiff_t>(first),
                      values.begin() + static_cast<std::ptrdiff_t>(last));
  if (block.dense_is_smaller(block.indices.size())) block.make_dense();
  return block;
}

std::vector<std::byte> encode(CollectiveChannel& channel, size_t id, const Block& block) {
  for (const float v : block.values) {
    if (!std::isfinite(v)) {
      throw CommError(channel.rank(), channel.op().describe(),
                      fmt::format("rank {}'s partial sum of the sparse block [{}, {}) is not "
                                  "finite (the sum overflowed)",
                                  channel.rank(), block.lo, block.hi));
    }
  }
  const size_t count = block.dense ? block.elements() : block.indices.size();
  ByteWriter w(kPrefixBytes + count * (block.dense ? 4 : 8));
  w.write_u32(static_cast<uint32_t>(id));
  w.write_u8(block.dense ? kDenseForm : kSparseForm);
  w.write_u8(0);
  w.write_u8(0);
  w.write_u8(0);
  w.write_u64(count);
  if (!block.dense) w.write_bytes(std::as_bytes(std::span(block.indices)));
  w.write_bytes(std::as_bytes(std::span(block.values)));
  return w.take();
}

// Reads and validates a message from `sender` that must carry block `id`
// [lo, hi).
Block decode(CollectiveChannel& channel, int sender, std::span<const std::byte> payload, size_t id,
             size_t lo, size_t hi) {
  const auto malformed = [&](const std::string& why) {
    return CommError(sender, channel.op().describe(),
                     fmt::format("rank {} sent a malformed sparse block: {}", sender, why));
  };
  if (payload.size() < kPrefixBytes) {
    throw malformed(
        fmt::format("{} bytes, shorter than its {}-byte prefix", payload.size(), kPrefixBytes));
  }
  ByteReader r(payload, "sparse block");
  const uint32_t block_id = r.read_u32("block");
  const uint8_t form = r.read_u8("form");
  const bool zeros = r.read_u8("zero") == 0 && r.read_u8("zero") == 0 && r.read_u8("zero") == 0;
  const uint64_t count = r.read_u64("count");
  if (block_id != id) throw malformed(fmt::format("block {} where block {} was due", block_id, id));
  if (form != kSparseForm && form != kDenseForm) throw malformed(fmt::format("form {}", form));
  if (!zeros) throw malformed("non-zero reserved bytes");
  Block block;
  block.lo = lo;
  block.hi = hi;
  block.dense = form == kDenseForm;
  const size_t body = payload.size() - kPrefixBytes;
  if (block.dense ? count != hi - lo : count > hi - lo) {
    throw malformed(fmt::format("{} {} entries for a block of {} elements",
                                block.dense ? "dense" : "sparse", count, hi - lo));
  }
  if (body != count * (block.dense ? 4 : 8)) {
    throw malformed(fmt::format("count {} does not match its {} bytes of entries", count, body));
  }
  if (!block.dense) {
    block.indices.resize(count);
    if (count > 0) std::memcpy(block.indices.data(), payload.data() + kPrefixBytes, count * 4);
    for (size_t i = 0; i < count; ++i) {
      const uint32_t index = block.indices[i];
      if (index < lo || index >= hi) {
        throw malformed(fmt::format("index {} outside [{}, {})", index, lo, hi));
      }
      if (i > 0 && index <= block.indices[i - 1]) {
        throw malformed(fmt::format("index {} follows index {} (not strictly increasing)", index,
                                    block.indices[i - 1]));
      }
    }
  }
  block.values.resize(count);
  if (count > 0) {
    std::memcpy(block.values.data(), payload.data() + payload.size() - count * 4, count * 4);
  }
  for (size_t i = 0; i < count; ++i) {
    if (!std::isfinite(block.values[i])) {
      throw malformed(fmt::format("value {} at entry {} is not finite", block.values[i], i));
    }
  }
  return block;
}

size_t ring_index(long long value, int n) {
  const long long m = value % n;
  return static_cast<size_t>(m < 0 ? m + n : m);
}

}  // namespace

void sparse_ring_allreduce(CollectiveChannel& channel, std::span<const uint32_t> indices,
                           std::span<const float> values, std::span<float> out) {
  const int n = channel.size();
  const int r = channel.rank();
  const std::vector<size_t> offsets = block_offsets(out.size(), static_cast<size_t>(n));
  std::vector<Block> blocks;
  for (size_t b = 0; b < static_cast<size_t>(n); ++b) {
    blocks.push_back(own_block(indices, values, offsets[b], offsets[b + 1]));
  }
  const int right = (r + 1) % n;
  const int left = (r + n - 1) % n;
  // 1. Reduce-scatter: block r ends reduced over every rank.
  for (int s = 0; s < n - 1; ++s) {
    const size_t send_id = ring_index(r - s - 1, n);
    const size_t recv_id = ring_index(r - s - 2, n);
    channel.send(right, std::span<const std::byte>(encode(channel, send_id, blocks[send_id])));
    const std::vector<std::byte> message = channel.recv_variable(left);
    blocks[recv_id].add(
        decode(channel, left, message, recv_id, offsets[recv_id], offsets[recv_id + 1]));
  }
  // 2. Allgather of the reduced blocks, each in its smaller form.
  blocks[static_cast<size_t>(r)].compact();
  for (int s = 0; s < n - 1; ++s) {
    const size_t send_id = ring_index(r - s, n);
    const size_t recv_id = ring_index(r - s - 1, n);
    channel.send(right, std::span<const std::byte>(encode(channel, send_id, blocks[send_id])));
    const std::vector<std::byte> message = channel.recv_variable(left);
    blocks[recv_id] =
        decode(channel, left, message, recv_id, offsets[recv_id], offsets[recv_id + 1]);
  }
  // 3. Only now is `out` written.
  std::fill(out.begin(), out.end(), 0.0f);
  for (const Block& block : blocks) {
    if (block.dense) {
      std::copy(block.values.begin(), block.values.end(),
                out.begin() + static_cast<std::ptrdiff_t>(block.lo));
    } else {
      for (size_t i = 0; i < block.indices.size(); ++i) out[block.indices[i]] = block.values[i];
    }
  }
}

}  // namespace dtrain::comm
