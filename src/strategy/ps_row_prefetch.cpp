#include "strategy/ps_row_prefetch.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace dtrain::strategy {

namespace {

// The indices an embedding's forward() makes of `inputs` (integer-valued
// floats), or nullopt when one is not an integer in [0, rows): then the
// lookup would fail, and nothing is prefetched for it.
std::optional<std::vector<int64_t>> input_indices(const Tensor& inputs, int64_t rows) {
  const float* values = inputs.data();
  std::vector<int64_t> indices(static_cast<size_t>(inputs.numel()));
  for (size_t i = 0; i < indices.size(); ++i) {
    const float value = values[i];
    if (!(std::floor(value) == value) || value < 0.0f || value >= static_cast<float>(rows)) {
      return std::nullopt;
    }
    indices[i] = static_cast<int64_t>(value);
  }
  return indices;
}

}  // namespace

PsRowPrefetch::PsRowPrefetch(std::vector<TableShape> tables)
    : tables_(std::move(tables)), reads_inputs_(tables_.size(), false), ready_(tables_.size()) {}

void PsRowPrefetch::observe(size_t table, const RowIndex& lookup, const Tensor& inputs) {
  const std::optional<std::vector<int64_t>> indices =
      inputs.defined() ? input_indices(inputs, tables_[table].rows) : std::nullopt;
  reads_inputs_[table] = indices && lookup.same_indices(*indices);
}

std::span<const ps::Client::RowPull> PsRowPrefetch::requests() {
  pending_.clear();
  pulls_.clear();
  if (!next_inputs_.defined() || next_inputs_.numel() == 0) return {};
  for (size_t t = 0; t < tables_.size(); ++t) {
    if (!reads_inputs_[t]) continue;
    std::optional<std::vector<int64_t>> indices = input_indices(next_inputs_, tables_[t].rows);
    if (!indices) continue;
    Pending p{t, RowIndex::of(*indices).unique, {}};
    p.keys.assign(p.unique.begin(), p.unique.end());
    pending_.push_back(std::move(p));
  }
  for (const Pending& p : pending_) {
    const auto count = static_cast<int64_t>(p.keys.size());
    pulls_.push_back({p.table, p.keys, Tensor::empty({count, tables_[p.table].dim})});
  }
  return pulls_;
}

void PsRowPrefetch::arrived() {
  for (size_t k = 0; k < pending_.size(); ++k) {
    ready_[pending_[k].table].emplace(std::move(pending_[k].unique), pulls_[k].out);
  }
  pending_.clear();
  pulls_.clear();
  next_inputs_ = Tensor();
}

void PsRowPrefetch::drop_ready() {
  for (auto& r : ready_) r.reset();
}

void PsRowPrefetch::clear() {
  drop_ready();
  pending_.clear();
  pulls_.clear();
  next_inputs_ = Tensor();
}

bool PsRowPrefetch::take(size_t table, std::span<const int64_t> unique, const Tensor& weight) {
  std::optional<std::pair<std::vector<int64_t>, Tensor>> ready = std::move(ready_[table]);
  ready_[table].reset();
  if (!ready) return false;
  if (!std::equal(unique.begin(), unique.end(), ready->first.begin(), ready->first.end())) {
    ++misses_;
    return false;
  }
  const int64_t dim = weight.size(1);
  const float* src = ready->second.data();
  float* dst = weight.data();
  for (size_t i = 0; i < unique.size(); ++i) {
    std::copy_n(src + static_cast<int64_t>(i) * dim, dim, dst + unique[i] * dim);
  }
  ++hits_;
  return true;
}

}  // namespace dtrain::strategy
