// The values a parameter server holds and the optimizer rules that update
// them: its dense range (DenseShard) and its sparse rows (SparseTable).
//
// DenseShard is one flat float tensor (the server's [begin, end) of the dense
// key space, sharding.h) with one optimizer rule (optim::make_update_rule) for
// its shape. Every update rule is elementwise, so updating the
// flat range equals updating the full tensors it was cut from.
//
// SparseTable keeps rows of dimension D in blocks of kSparseBlockRows rows,
// each block a [kSparseBlockRows, D] tensor with its own optimizer; a gradient
// touching rows of a block goes through that optimizer's update_sparse(), so
// the core's sparse rules apply (sgd without momentum and weight decay,
// adagrad and adam touch only the pushed rows; sgd with momentum or weight
// decay densifies over the block, as torch does over the whole table). Rows
// are created on first touch, a request's new rows together by
// init_sparse_rows(), and take the next free slots; a block's step count
// (adam's bias correction) counts the updates of that block. A key finds its
// slot through an open-addressing index (linear probing over a power-of-two
// array of (key, slot) pairs, at most half full), one cache line per lookup;
// a batch of keys prefetches the lines ahead. A key's home is its Fibonacci
// hash's top bits, so that growing the index (twice the size, calloc's zero
// pages; from 2 MiB a mapping of transparent huge pages) rewrites it front to
// back rather than at random.
//
// State export (per server, the layout of server.h):
//   "dense.values" [count], "dense.optimizer.<UpdateRule::state_dict() keys>"
//   "sparse.<table>.keys" [n, 4] (16-bit limbs, least significant first),
//   "sparse.<table>.values" [n, D], "sparse.<table>.<buffer>" [n, D],
//   "sparse.<table>.steps" [n]; rows sorted by key.
// Import validates everything before it changes anything.
// Thread safety: none (the server's loop thread; DenseShard::apply uses
// threads of its own inside the call). Errors: UsageError naming
// the problem (sizes, unknown buffers, bad state). Never blocks.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "optim/optimizer_config.h"
#include "optim/update_rule.h"
#include "ps/sharding.h"
#include "tensor/state_dict.h"

namespace dtrain::ps {

inline constexpr int64_t kSparseBlockRows = 256;

// Parallel apply: a range of at least 2 * kApplyChunkFloats floats is cut
// into up to `threads` chunks (whole multiples of 64 floats but the last,
// so that every chunk starts at the same alignment as in one piece), each
// with its own update rule over its part of the values; apply() updates the
// chunks on that many threads (the caller's and threads started for the
// call, joined before it returns). The rules are elementwise and every chunk
// counts the same steps, so the values and the exported state are bit for
// bit those of one rule over the whole range, whatever the thread count.
inline constexpr int64_t kApplyChunkFloats = int64_t{1} << 18;  // 1 MiB
// Each chunk is cut further into pieces of at most kApplyPieceFloats floats
// (multiples of 64 floats), again each with its own rule: apply() copies a
// piece's gradient out of the message into a piece-sized buffer of its
// thread and updates the piece while both are in cache, so the gradient
// crosses memory once instead of being staged whole and read back. Same
// argument, same bits.
inline constexpr int64_t kApplyPieceFloats = int64_t{1} << 16;  // 256 KiB
// The default thread count: the cores, at most 4.
int default_apply_threads();

class DenseShard {
 public:
  // threads <= 0: default_apply_threads().
  DenseShard(std::span<const float> initial, const optim::OptimizerConfig& config, int threads = 0);

  int64_t numel() const { return values_.numel(); }
  std::span<const float> values() const { return values_.span(); }
  // The chunks apply() updates in parallel (1 for a small range).
  size_t chunks() const { return chunk_first_.size() - 1; }
  // Their pieces, each with its own rule (1 for a range of one piece).
  size_t pieces() const { return pieces_.size(); }
  // One optimizer update of the whole range with `grad` (numel() floats).
  void apply(std::span<const float> grad, float lr);
  // The same with the gradient as little-endian f32 bytes at any alignment
  // (a push viewed in its received payload: Message::float_bytes).
  void apply(std::span<const std::byte> grad, float lr);

  void export_state(StateDict& out) const;
  // Replaces values and optimizer state from a dict of export_state()'s layout.
  void import_state(const StateDict& in);

 private:
  struct Piece {
    int64_t begin = 0;
    int64_t count = 0;
    std::unique_ptr<optim::UpdateRule> rule;
  };
  // The pieces of the range over `values`, rules fresh, and where each
  // chunk's pieces start (chunk_first_'s layout).
  std::vector<Piece> make_pieces(const Tensor& values, std::vector<size_t>& chunk_first) const;

  optim::OptimizerConfig config_;
  int threads_ = 1;
  Tensor values_;
  // chunk c: pieces [chunk_first_[c], chunk_first_[c + 1]); declared before
  // pieces_, whose initialiser fills it.
  std::vector<size_t> chunk_first_;
  std::vector<Piece> pieces_;
  std::vector<Tensor> grad_;  // per chunk, a piece's gradient as the rules take it
};

class SparseTable {
 public:
  SparseTable(SparseTableSpec spec, uint32_t index, uint64_t seed,
              const optim::OptimizerConfig& config);

  const SparseTableSpec& spec() const { return spec_; }
  size_t rows() const { return key_of_.size(); }
  // Copies the rows of `keys` into out (keys.size() * D floats), creating
  // missing rows.
  void read_rows(std::span<const uint64_t> keys, std::span<float> out);
  // The rows of `keys` as views of their bytes in the table (a pull reply's
  // Message::float_parts, encoded without a copy in between), creating
  // missing rows. Valid until the table next changes (apply, import_state).
  std::vector<std::span<const std::byte>> row_bytes(std::span<const uint64_t> keys);
  // Applies gradient rows (keys.size() * D floats) with `lr`; duplicates sum.
  void apply(std::span<const uint64_t> keys, std::span<const float> grads, float lr);

  void export_state(StateDict& out) const;
  void import_state(const StateDict& in);

 private:
  struct Block {
    Tensor rows;  // [kSparseBlockRows, D]
    std::unique_ptr<optim::UpdateRule> optimizer;
  };
  // All zero bytes: empty (so that a fresh index is the kernel's zero pages,
  // written by nobody before grow_index's inserts).
  struct IndexEntry {
    uint64_t key;
    uint64_t slot_plus_one;  // 0: empty
  };
  // calloc's (bytes 0) or, from 2 MiB, its own mapping (allocate_index).
  struct FreeIndex {
    size_t bytes;  // (unique_ptr value-initialises it: 0)
    void operator()(IndexEntry* p) const;
  };
  // `entries` zeroed entries: calloc's below 2 MiB; from there a mapping
  // advised to use transparent huge pages, so that filling it faults once
  // per 2 MiB instead of once per 4 KiB (the kernel falls back to small
  // pages where it has none). std::bad_alloc when there is no memory.
  static std::unique_ptr<IndexEntry[], FreeIndex> allocate_index(size_t entries);
  // The slot of `key`, creating the row when missing.
  int64_t slot(uint64_t key);
  // The slots of `keys` (rows created when missing, in the order of keys).
  void slots(std::span<const uint64_t> keys, std::span<int64_t> out);
  // The index entry holding `key`, or the empty entry where it would go.
  IndexEntry& entry(uint64_t key);
  size_t home(uint64_t key) const;
  void grow_index();
  float* row(int64_t slot) const;

  SparseTableSpec spec_;
  uint32_t index_ = 0;
  uint64_t seed_ = 0;
  optim::OptimizerConfig config_;
  std::unique_ptr<IndexEntry[], FreeIndex> slot_index_;  // key -> slot
  size_t index_size_ = 0;         // slot_index_'s entries: a power of two (or 0)
  int index_shift_ = 64;          // 64 - log2(index_size_)
  std::vector<uint64_t> key_of_;  // by slot
  std::vector<Block> blocks_;
  // slots()'s rows created in this call, initialised together; reused.
  std::vector<uint64_t> new_keys_;
  std::vector<float*> new_rows_;
};

// uint64 key <-> four 16-bit limbs stored exactly as floats.
void key_to_limbs(uint64_t key, float* limbs);
uint64_t limbs_to_key(const float* limbs);

}  // namespace dtrain::ps
