// PsRowPrefetch: the ps strategy's look-ahead for embedding rows
// (docs/parameter-server.md "Sparse rows"). A CTR step pulls its batch's
// rows before forward, a round trip of its own; with the next step's
// inputs known (Strategy::prefetch), the rows that step will look up ride
// with this step's pull instead (ps::Client::push_step's prefetch): each
// server reads them when it answers that pull, in `sync` once the version
// closed, so they are the values a pull at the next lookup would get (no
// row changes on a server between a version's close and the next one's,
// and a row created by a read takes its value from its key alone).
//
// Which tables: one whose last training lookup read exactly the step's
// inputs (as integers, in order: the model's first layer); its next
// indices are then the next inputs'. The next lookup uses the prefetched
// rows only when its unique indices are exactly the prefetched ones (a
// changed split, an evaluation batch or a table fed from elsewhere pulls as
// before), and only in the step right after the push that brought them
// (clear() between steps; rows from before a failure or a checkpoint load
// are never used).
//
// In `async`/`ssp` the rows are the servers' values when the pull was
// answered, not parked any longer than the pull: at most one step older
// than a pull at the lookup would give (both are admissible there).
//
// Ownership: a value; holds the next inputs (a tensor handle) and the
// prefetched rows. Thread safety: one thread. Errors: none of its own.
// Never blocks.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "ps/client.h"
#include "strategy/row_index.h"
#include "tensor/tensor.h"

namespace dtrain::strategy {

class PsRowPrefetch {
 public:
  // One entry per table: its row count V and width D.
  struct TableShape {
    int64_t rows = 0;
    int64_t dim = 0;
  };
  explicit PsRowPrefetch(std::vector<TableShape> tables);

  // The next step's inputs (undefined: none known).
  void set_next_inputs(const Tensor& next) { next_inputs_ = next; }
  // After a training forward on `inputs`: whether table `table`'s lookup
  // read them.
  void observe(size_t table, const RowIndex& lookup, const Tensor& inputs);
  // The row pulls to send with this step's push (empty when there is no
  // next input or no table reads inputs); valid until the next call.
  std::span<const ps::Client::RowPull> requests();
  // The push that carried requests() returned: its rows are the next
  // step's.
  void arrived();
  // Forgets the prefetched rows not taken (after a step's forward: they
  // were for that step only).
  void drop_ready();
  // Forgets every prefetched row and the next inputs (after a failure, after
  // the servers' state was replaced).
  void clear();

  // At table `table`'s lookup of `unique` (ascending): copies the rows into
  // `weight` [V, D] and returns true when they were prefetched for exactly
  // these indices; false otherwise (the caller pulls them).
  bool take(size_t table, std::span<const int64_t> unique, const Tensor& weight);

  // Lookups served from prefetched rows, and lookups that had prefetched
  // rows for other indices (pulled instead).
  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }

 private:
  struct Pending {
    size_t table = 0;
    std::vector<int64_t> unique;
    std::vector<uint64_t> keys;
  };

  std::vector<TableShape> tables_;
  std::vector<bool> reads_inputs_;  // by table
  Tensor next_inputs_;
  std::vector<Pending> pending_;  // requests()' indices, by entry
  std::vector<ps::Client::RowPull> pulls_;
  // By table: the prefetched unique indices and their rows [u, D].
  std::vector<std::optional<std::pair<std::vector<int64_t>, Tensor>>> ready_;
  int64_t hits_ = 0;
  int64_t misses_ = 0;
};

}  // namespace dtrain::strategy
