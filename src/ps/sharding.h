// Key-range sharding of a parameter server's state.
//
// Dense parameters (named float tensors, in model order) are laid end to end
// as one flat key space of total_numel() floats and cut into S contiguous
// ranges: server s holds [s * T / S, (s + 1) * T / S) (integer division), so
// range sizes differ by at most one element and a large tensor is split
// across servers instead of being pinned to one. slices(s) lists which
// [offset, offset + count) of which tensor those flat elements are.
//
// Sparse tables (embedding rows of dimension D, keyed by uint64 ids from a
// huge space): row `key` of table `t` lives on server sparse_server_of(t,
// key, S) (a 64-bit mix of table and key, modulo S) and is created on first
// touch with init_sparse_row(), N(0, init_std) by Box-Muller in float from an
// Rng seeded by a mix of (seed, table, key), so a row's initial value does not depend on which
// worker touches it first nor on the number of servers.
//
// slice_pieces() cuts one slice into the matrices a gradient compressor
// (compress/compressor.h) sees: the client encodes with them, the server
// decodes with them.
//
// Thread safety: ShardPlan is immutable after construction; the functions are
// pure. Errors: UsageError for S < 1, an empty or duplicate tensor name, a
// negative extent, a server index out of range. Never blocks.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "compress/compressor.h"
#include "tensor/tensor.h"

namespace dtrain::ps {

// One dense parameter as the servers know it.
struct DenseSpec {
  std::string name;
  Shape shape;
};

// An embedding table held on the servers.
struct SparseTableSpec {
  std::string name;
  int64_t dim = 0;         // D: floats per row, > 0
  float init_std = 0.01f;  // rows start as N(0, init_std^2); 0 gives zeros
};

// A piece of one dense tensor held by one server.
struct ShardSlice {
  size_t tensor = 0;         // index into the plan's tensors (model order)
  int64_t offset = 0;        // first element within that tensor (row-major)
  int64_t count = 0;         // elements
  int64_t shard_offset = 0;  // where the piece starts within the server's range
};

class ShardPlan {
 public:
  ShardPlan() = default;
  ShardPlan(std::vector<DenseSpec> tensors, int num_servers);

  int num_servers() const { return num_servers_; }
  const std::vector<DenseSpec>& tensors() const { return tensors_; }
  int64_t total_numel() const { return total_; }
  // Flat offset of tensor i's first element.
  int64_t tensor_begin(size_t i) const;
  // Server s's flat range [range_begin(s), range_end(s)).
  int64_t range_begin(int server) const;
  int64_t range_end(int server) const;
  int64_t range_numel(int server) const { return range_end(server) - range_begin(server); }
  // The tensor pieces of server s, in flat order (empty tensors own no piece).
  const std::vector<ShardSlice>& slices(int server) const;

 private:
  void check_server(int server) const;

  std::vector<DenseSpec> tensors_;
  std::vector<int64_t> tensor_begin_;
  int num_servers_ = 0;
  int64_t total_ = 0;
  std::vector<std::vector<ShardSlice>> slices_;
};

// One compressor tensor of a slice: elements [offset_in_slice,
// offset_in_slice + count) of the slice, seen as `layout` (count floats).
struct SlicePiece {
  int64_t offset_in_slice = 0;
  int64_t count = 0;
  compress::TensorLayout layout;
};

// The compressor's view of `slice` (one of plan.slices(s)), in element
// order. For a tensor of rank >= 2 with C = numel / shape[0] columns, a
// slice that crosses a row boundary is cut into up to three pieces, empty
// ones skipped: the leading partial row (1 x a), the whole rows in the
// middle (rows x C) and the trailing partial row (1 x b). A slice within
// one row, or of a tensor of rank < 2, is one 1 x count piece (so PowerSGD
// leaves a vector or a cut through a row dense by its own rule). The one
// rule both ends of a compressed push use.
std::vector<SlicePiece> slice_pieces(const ShardPlan& plan, const ShardSlice& slice);

// The server that holds row `key` of table `table`.
int sparse_server_of(uint32_t table, uint64_t key, int num_servers);
// The same for a batch: out[i] = sparse_server_of(table, keys[i], S), the
// table's mix computed once (out.size() == keys.size(), else UsageError).
void sparse_servers_of(uint32_t table, std::span<const uint64_t> keys, int num_servers,
                       std::span<int> out);
// The position of the first of `keys` that `server` does not hold, or
// keys.size() when it holds them all.
size_t first_key_not_on(uint32_t table, std::span<const uint64_t> keys, int server,
                        int num_servers);

// Writes row `key`'s initial value (out.size() == D) for table `table`.
void init_sparse_row(uint64_t seed, uint32_t table, uint64_t key, float init_std,
                     std::span<float> out);
// The same for many rows at once: rows[i] (dim floats) gets row keys[i]'s
// initial value, bit for bit init_sparse_row's; the arithmetic runs over the
// pairs of many rows together (a pull creating rows creates them here).
void init_sparse_rows(uint64_t seed, uint32_t table, std::span<const uint64_t> keys, float init_std,
                      size_t dim, std::span<float* const> rows);

}  // namespace dtrain::ps
