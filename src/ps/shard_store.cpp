#include "ps/shard_store.h"

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <new>
#include <set>
#include <thread>

#include "core/error.h"
#include "tensor/sparse_rows.h"

namespace dtrain::ps {

namespace {

std::unique_ptr<optim::UpdateRule> optimizer_over(const Tensor& values,
                                                  const optim::OptimizerConfig& config) {
  return optim::make_update_rule(config, {values.shape()});
}

const std::string kDensePrefix = "dense.optimizer.";

}  // namespace

void key_to_limbs(uint64_t key, float* limbs) {
  for (int i = 0; i < 4; ++i) limbs[i] = static_cast<float>((key >> (16 * i)) & 0xFFFFu);
}

uint64_t limbs_to_key(const float* limbs) {
  uint64_t key = 0;
  for (int i = 0; i < 4; ++i) {
    const float limb = limbs[i];
    if (!(limb >= 0.0f && limb <= 65535.0f) || limb != std::floor(limb)) {
      throw UsageError(fmt::format(
          "ps sparse state: key limb {} is {}; must be an integer in [0, 65535]", i, limb));
    }
    key |= static_cast<uint64_t>(limb) << (16 * i);
  }
  return key;
}

int default_apply_threads() {
  return static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 4u));
}

namespace {

// Runs fn(i) for i in [0, n): i = 0 on the calling thread, the others on
// threads started here; returns when all are done, rethrowing the first error.
void run_chunks(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 1) {
    fn(0);
    return;
  }
  std::vector<std::exception_ptr> errors(n);
  {
    std::vector<std::jthread> threads;
    for (size_t i = 1; i < n; ++i) {
      threads.emplace_back([&, i] {
        try {
          fn(i);
        } catch (...) {
          errors[i] = std::current_exception();
        }
      });
    }
    try {
      fn(0);
    } catch (...) {
      errors[0] = std::current_exception();
    }
  }
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace

DenseShard::DenseShard(std::span<const float> initial, const optim::OptimizerConfig& config,
                       int threads)
    : config_(config),
      threads_(threads > 0 ? threads : default_apply_threads()),
      values_(Tensor::from_span(initial, {static_cast<int64_t>(initial.size())})),
      pieces_(make_pieces(values_, chunk_first_)) {
  for (size_t c = 0; c + 1 < chunk_first_.size(); ++c) {
    grad_.push_back(Tensor::empty({std::min(kApplyPieceFloats, values_.numel())}));
  }
}

std::vector<DenseShard::Piece> DenseShard::make_pieces(const Tensor& values,
                                                       std::vector<size_t>& chunk_first) const {
  const int64_t n = values.numel();
  const int64_t count = std::clamp<int64_t>(n / kApplyChunkFloats, 1, threads_);
  // Chunk starts on 64-float boundaries: the same alignment as in one piece.
  const int64_t step = (n / count + 63) / 64 * 64;
  std::vector<Piece> pieces;
  chunk_first.clear();
  for (int64_t begin = 0; begin < n || pieces.empty(); begin += step) {
    chunk_first.push_back(pieces.size());
    const int64_t end = std::min(n, begin + step);
    for (int64_t at = begin; at < end || at == begin; at += kApplyPieceFloats) {
      const int64_t length = std::min(kApplyPieceFloats, end - at);
      pieces.push_back(Piece{at, length, optimizer_over(values.narrow(at, length), config_)});
    }
  }
  chunk_first.push_back(pieces.size());
  return pieces;
}

void DenseShard::apply(std::span<const float> grad, float lr) { apply(std::as_bytes(grad), lr); }

void DenseShard::apply(std::span<const std::byte> grad, float lr) {
  DTRAIN_CHECK(static_cast<int64_t>(grad.size() / sizeof(float)) == numel() &&
                   grad.size() % sizeof(float) == 0,
               "gradient of {} bytes for {} floats", grad.size(), numel());
  run_chunks(chunks(), [&](size_t c) {
    for (size_t i = chunk_first_[c]; i < chunk_first_[c + 1]; ++i) {
      Piece& piece = pieces_[i];
      const Tensor g = grad_[c].narrow(0, piece.count);
      std::memcpy(g.data(), grad.data() + static_cast<size_t>(piece.begin) * sizeof(float),
                  static_cast<size_t>(piece.count) * sizeof(float));
      piece.rule->set_lr(lr);
      piece.rule->update(0, values_.narrow(piece.begin, piece.count), g);
    }
  });
}

void DenseShard::export_state(StateDict& out) const {
  out.insert("dense.values", values_.clone());
  if (pieces_.size() == 1) {
    out.merge(pieces_[0].rule->state_dict().clone(), kDensePrefix);
    return;
  }
  // One rule's layout: each buffer the pieces' parts end to end; the
  // metadata (kind, lr, steps) is the same in every piece.
  std::vector<StateDict> parts;
  for (const Piece& p : pieces_) parts.push_back(p.rule->state_dict());
  StateDict whole;
  whole.metadata() = parts[0].metadata();
  for (const auto& [name, first] : parts[0]) {
    Tensor buffer = Tensor::empty(values_.shape());
    for (size_t i = 0; i < pieces_.size(); ++i) {
      buffer.narrow(pieces_[i].begin, pieces_[i].count).copy_from(parts[i].at(name));
    }
    whole.insert(name, buffer);
  }
  out.merge(whole, kDensePrefix);
}

void DenseShard::import_state(const StateDict& in) {
  const Tensor& values = in.at("dense.values");
  if (values.shape() != values_.shape()) {
    throw UsageError(
        fmt::format("ps dense state: 'dense.values' has shape {}, this server holds {}",
                    shape_str(values.shape()), shape_str(values_.shape())));
  }
  Tensor fresh = values.clone();
  std::vector<size_t> chunk_first;
  std::vector<Piece> pieces = make_pieces(fresh, chunk_first);
  const StateDict state = in.sub(kDensePrefix);
  for (Piece& p : pieces) {
    if (pieces.size() == 1) {
      p.rule->load_state_dict(state);
      break;
    }
    // The piece's part of every buffer of the range's shape (one of another
    // shape goes as it is, for the rule to refuse).
    StateDict part;
    part.metadata() = state.metadata();
    for (const auto& [name, buffer] : state) {
      part.insert(name,
                  buffer.shape() == values_.shape() ? buffer.narrow(p.begin, p.count) : buffer);
    }
    p.rule->load_state_dict(part);
  }
  values_ = fresh;
  pieces_ = std::move(pieces);
  chunk_first_ = std::move(chunk_first);
}

SparseTable::SparseTable(SparseTableSpec spec, uint32_t index, uint64_t seed,
                         const optim::OptimizerConfig& config)
    : spec_(std::move(spec)), index_(index), seed_(seed), config_(config) {}

float* SparseTable::row(int64_t slot) const {
  const Block& block = blocks_[static_cast<size_t>(slot / kSparseBlockRows)];
  return block.rows.data() + (slot % kSparseBlockRows) * spec_.dim;
}

size_t SparseTable::home(uint64_t key) const {
  // Fibonacci hashing: the product's top bits, so that an entry's home in an
  // index twice as large is 2 * home or 2 * home + 1 (grow_index's order).
  return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> index_shift_);
}

SparseTable::IndexEntry& SparseTable::entry(uint64_t key) {
  const size_t mask = index_size_ - 1;
  for (size_t i = home(key);; i = (i + 1) & mask) {
    IndexEntry& e = slot_index_[i];
    if (e.slot_plus_one == 0 || e.key == key) return e;
  }
}

void SparseTable::FreeIndex::operator()(IndexEntry* p) const {
  if (bytes == 0) {
    std::free(p);
  } else {
    munmap(p, bytes);
  }
}

std::unique_ptr<SparseTable::IndexEntry[], SparseTable::FreeIndex> SparseTable::allocate_index(
    size_t entries) {
  constexpr size_t kHugePage = size_t{2} << 20;
  const size_t bytes = entries * sizeof(IndexEntry);
  if (bytes < kHugePage) {
    auto* p = static_cast<IndexEntry*>(std::calloc(entries, sizeof(IndexEntry)));
    if (p == nullptr) throw std::bad_alloc();
    return {p, FreeIndex{}};
  }
  // A whole number of huge pages (entries is a power of two), 2 MiB-aligned:
  // map one huge page more and unmap what lies outside the aligned range.
  void* const mapped =
      mmap(nullptr, bytes + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) throw std::bad_alloc();
  const auto start = reinterpret_cast<uintptr_t>(mapped);
  const uintptr_t aligned = (start + kHugePage - 1) & ~(kHugePage - 1);
  if (aligned > start) munmap(mapped, aligned - start);
  if (const size_t tail = start + kHugePage - aligned; tail > 0) {
    munmap(reinterpret_cast<void*>(aligned + bytes), tail);
  }
  auto* p = reinterpret_cast<IndexEntry*>(aligned);
  (void)madvise(p, bytes, MADV_HUGEPAGE);  // advice: small pages where it is not taken
  return {p, FreeIndex{bytes}};
}

void SparseTable::grow_index() {
  const std::unique_ptr<IndexEntry[], FreeIndex> old = std::move(slot_index_);
  const size_t old_size = index_size_;
  const size_t size = std::max<size_t>(1024, old_size * 2);
  slot_index_ = allocate_index(size);
  index_size_ = size;
  index_shift_ = 64 - std::countr_zero(size);
  // In the old index's order, which is that of the entries' homes (but for
  // the few that wrapped around its end): the new index fills front to back
  // instead of at random.
  for (size_t i = 0; i < old_size; ++i) {
    if (old[i].slot_plus_one != 0) entry(old[i].key) = old[i];
  }
}

int64_t SparseTable::slot(uint64_t key) {
  int64_t out = -1;
  slots({&key, 1}, {&out, 1});
  return out;
}

void SparseTable::slots(std::span<const uint64_t> keys, std::span<int64_t> out) {
  // Room for every key up front, so that the prefetched lines stay the index's.
  while ((key_of_.size() + keys.size()) * 2 > index_size_) grow_index();
  constexpr size_t kAhead = 16;
  new_keys_.clear();
  new_rows_.clear();
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i + kAhead < keys.size()) __builtin_prefetch(&slot_index_[home(keys[i + kAhead])]);
    IndexEntry& e = entry(keys[i]);
    if (e.slot_plus_one == 0) {
      const auto slot = static_cast<int64_t>(key_of_.size());
      if (slot % kSparseBlockRows == 0) {
        Tensor rows = Tensor::zeros({kSparseBlockRows, spec_.dim});
        blocks_.push_back(Block{rows, optimizer_over(rows, config_)});
      }
      key_of_.push_back(keys[i]);
      e = IndexEntry{keys[i], static_cast<uint64_t>(slot) + 1};
      new_keys_.push_back(keys[i]);
      new_rows_.push_back(row(slot));
    }
    out[i] = static_cast<int64_t>(e.slot_plus_one) - 1;
  }
  // The new rows' initial values, computed together (a block's data stays
  // where it is when blocks_ grows: the pointers hold).
  init_sparse_rows(seed_, index_, new_keys_, spec_.init_std, static_cast<size_t>(spec_.dim),
                   new_rows_);
}

void SparseTable::read_rows(std::span<const uint64_t> keys, std::span<float> out) {
  const auto dim = static_cast<size_t>(spec_.dim);
  DTRAIN_CHECK(out.size() == keys.size() * dim, "{} floats for {} rows of {}", out.size(),
               keys.size(), dim);
  std::vector<int64_t> slot_of(keys.size());
  slots(keys, slot_of);
  for (size_t i = 0; i < keys.size(); ++i) {
    std::memcpy(out.data() + i * dim, row(slot_of[i]), dim * sizeof(float));
  }
}

std::vector<std::span<const std::byte>> SparseTable::row_bytes(std::span<const uint64_t> keys) {
  std::vector<int64_t> slot_of(keys.size());
  slots(keys, slot_of);
  std::vector<std::span<const std::byte>> out(keys.size());
  const auto bytes = static_cast<size_t>(spec_.dim) * sizeof(float);
  for (size_t i = 0; i < keys.size(); ++i) {
    out[i] = {reinterpret_cast<const std::byte*>(row(slot_of[i])), bytes};
  }
  return out;
}

void SparseTable::apply(std::span<const uint64_t> keys, std::span<const float> grads, float lr) {
  const auto dim = static_cast<size_t>(spec_.dim);
  DTRAIN_CHECK(grads.size() == keys.size() * dim, "{} floats for {} rows of {}", grads.size(),
               keys.size(), dim);
  std::vector<int64_t> slot_of(keys.size());
  slots(keys, slot_of);
  // The rows by block, in arrival order within a block (a counting sort);
  // then one update_sparse per touched block over its run of the gathered rows.
  std::vector<uint32_t> starts(blocks_.size() + 1, 0);
  for (int64_t s : slot_of) ++starts[static_cast<size_t>(s / kSparseBlockRows) + 1];
  for (size_t b = 1; b < starts.size(); ++b) starts[b] += starts[b - 1];
  std::vector<uint32_t> order(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    order[starts[static_cast<size_t>(slot_of[i] / kSparseBlockRows)]++] = static_cast<uint32_t>(i);
  }
  const Tensor gathered = Tensor::empty({static_cast<int64_t>(keys.size()), spec_.dim});
  for (size_t j = 0; j < order.size(); ++j) {
    std::memcpy(gathered.data() + j * dim, grads.data() + order[j] * dim, dim * sizeof(float));
  }
  SparseRows grad;
  grad.num_rows = kSparseBlockRows;
  // The table's rows, random over its blocks, are fetched kAhead rows (in
  // update order) before their update: the update waits for none of them.
  constexpr size_t kAhead = 16;
  size_t fetched = 0;
  for (size_t first = 0; first < order.size();) {
    for (; fetched < std::min(order.size(), first + kAhead); ++fetched) {
      __builtin_prefetch(row(slot_of[order[fetched]]), 1);
    }
    const int64_t b = slot_of[order[first]] / kSparseBlockRows;
    size_t last = first;
    grad.indices.clear();
    for (; last < order.size() && slot_of[order[last]] / kSparseBlockRows == b; ++last) {
      grad.indices.push_back(slot_of[order[last]] % kSparseBlockRows);
    }
    grad.values = gathered.narrow(static_cast<int64_t>(first), static_cast<int64_t>(last - first));
    Block& block = blocks_[static_cast<size_t>(b)];
    block.optimizer->set_lr(lr);
    block.optimizer->update_sparse(0, block.rows, grad);
    first = last;
  }
}

void SparseTable::export_state(StateDict& out) const {
  const std::string prefix = "sparse." + spec_.name + ".";
  const auto n = static_cast<int64_t>(key_of_.size());
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return key_of_[static_cast<size_t>(a)] < key_of_[static_cast<size_t>(b)];
  });
  std::vector<StateDict> block_states;
  std::set<std::string> buffers;
  for (const Block& block : blocks_) {
    block_states.push_back(block.optimizer->state_dict());
    for (const auto& [name, tensor] : block_states.back())
      buffers.insert(name.substr(8));  // "state.0."
  }
  Tensor keys = Tensor::empty({n, 4});
  Tensor values = Tensor::empty({n, spec_.dim});
  Tensor steps = Tensor::empty({n});
  std::map<std::string, Tensor> buffer_values;
  for (const auto& name : buffers) buffer_values[name] = Tensor::zeros({n, spec_.dim});
  const auto dim = static_cast<size_t>(spec_.dim);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t slot = order[static_cast<size_t>(i)];
    const auto b = static_cast<size_t>(slot / kSparseBlockRows);
    const int64_t local = slot % kSparseBlockRows;
    key_to_limbs(key_of_[static_cast<size_t>(slot)], keys.data() + i * 4);
    std::memcpy(values.data() + i * spec_.dim, row(slot), dim * sizeof(float));
    steps.data()[i] = static_cast<float>(std::stoll(block_states[b].metadata().at("state.0.step")));
    for (auto& [name, tensor] : buffer_values) {
      const std::string key = "state.0." + name;
      if (!block_states[b].contains(key)) continue;
      std::memcpy(tensor.data() + i * spec_.dim, block_states[b].at(key).data() + local * spec_.dim,
                  dim * sizeof(float));
    }
  }
  out.insert(prefix + "keys", keys);
  out.insert(prefix + "values", values);
  out.insert(prefix + "steps", steps);
  for (auto& [name, tensor] : buffer_values) out.insert(prefix + name, tensor);
}

void SparseTable::import_state(const StateDict& in) {
  const std::string prefix = "sparse." + spec_.name + ".";
  const StateDict mine = in.sub(prefix);
  const Tensor& keys = mine.at("keys");
  const int64_t n = keys.dim() == 2 ? keys.size(0) : -1;
  if (keys.shape() != Shape{n, 4}) {
    throw UsageError(fmt::format("ps sparse state: '{}keys' has shape {}; expected (n, 4)", prefix,
                                 shape_str(keys.shape())));
  }
  const Shape rows_shape{n, spec_.dim};
  for (const auto& [name, tensor] : mine) {
    const Shape expected = name == "keys" ? Shape{n, 4} : name == "steps" ? Shape{n} : rows_shape;
    if (tensor.shape() != expected) {
      throw UsageError(fmt::format("ps sparse state: '{}{}' has shape {}; expected {}", prefix,
                                   name, shape_str(tensor.shape()), shape_str(expected)));
    }
  }
  const Tensor& values = mine.at("values");
  const Tensor& steps = mine.at("steps");
  // Rebuild into a fresh table, then swap: a failure leaves this one intact.
  SparseTable fresh(spec_, index_, seed_, config_);
  const auto dim = static_cast<size_t>(spec_.dim);
  std::vector<std::string> buffers;
  for (const auto& [name, tensor] : mine) {
    if (name != "keys" && name != "values" && name != "steps") buffers.push_back(name);
  }
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t key = limbs_to_key(keys.data() + i * 4);
    const size_t before = fresh.rows();
    const int64_t slot = fresh.slot(key);
    if (fresh.rows() == before) {
      throw UsageError(
          fmt::format("ps sparse state: table '{}' lists key {} twice", spec_.name, key));
    }
    std::memcpy(fresh.row(slot), values.data() + i * spec_.dim, dim * sizeof(float));
  }
  for (size_t b = 0; b < fresh.blocks_.size(); ++b) {
    const int64_t first = static_cast<int64_t>(b) * kSparseBlockRows;
    const int64_t last = std::min(n, first + kSparseBlockRows);
    float step = 0.0f;
    for (int64_t i = first; i < last; ++i) step = std::max(step, steps.data()[i]);
    if (step <= 0.0f) continue;
    StateDict dict;
    dict.metadata()["optimizer"] = fresh.blocks_[b].optimizer->kind();
    dict.metadata()["lr"] = fmt::format("{}", fresh.blocks_[b].optimizer->lr());
    dict.metadata()["num_parameters"] = "1";
    dict.metadata()["state.0.step"] = std::to_string(static_cast<int64_t>(step));
    for (const auto& name : buffers) {
      Tensor buffer = Tensor::zeros({kSparseBlockRows, spec_.dim});
      std::memcpy(buffer.data(), mine.at(name).data() + first * spec_.dim,
                  static_cast<size_t>(last - first) * dim * sizeof(float));
      dict.insert("state.0." + name, buffer);
    }
    fresh.blocks_[b].optimizer->load_state_dict(dict);
  }
  slot_index_ = std::move(fresh.slot_index_);
  index_size_ = fresh.index_size_;
  index_shift_ = fresh.index_shift_;
  key_of_ = std::move(fresh.key_of_);
  blocks_ = std::move(fresh.blocks_);
}

}  // namespace dtrain::ps
