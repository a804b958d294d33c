#include "strategy/strategy.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "autograd/functions.h"
#include "core/error.h"
#include "core/finite.h"

namespace dtrain::strategy {

void check_batch(const Tensor& inputs, std::span<const int64_t> targets, bool allow_empty) {
  const auto n = static_cast<int64_t>(targets.size());
  const bool rows_match = inputs.defined() && inputs.dim() > 0 && inputs.size(0) == n;
  const bool ok = n == 0 ? allow_empty && (!inputs.defined() || rows_match) : rows_match;
  if (!ok) {
    throw UsageError(fmt::format("train_step: inputs {} do not match {} targets",
                                 inputs.defined() ? shape_str(inputs.shape()) : "(undefined)", n));
  }
}

namespace {

// Whether every value is finite: x * 0 is 0 for finite x and NaN otherwise,
// so one sum (which vectorises) answers for the whole span.
std::string describe_non_finite(std::span<const float> values) {
  const std::optional<size_t> i = first_non_finite(values);
  return i ? fmt::format("{} at element {}", values[*i], *i) : std::string("none");
}

}  // namespace

void check_finite_gradients(const nn::Module& model) {
  // Names are built only for the message: the check runs every step.
  bool finite = true;
  for (const Variable& p : model.parameters()) {
    if (p.grad().defined()) {
      finite = all_finite(
          std::span<const float>(p.grad().data(), static_cast<size_t>(p.grad().numel())));
    } else if (const SparseRows* rows = p.sparse_grad(); rows != nullptr) {
      finite = all_finite(
          std::span<const float>(rows->values.data(), static_cast<size_t>(rows->values.numel())));
    }
    if (!finite) break;
  }
  if (finite) return;
  for (const auto& [name, p] : model.named_parameters()) {
    std::span<const float> values;
    if (p.grad().defined()) {
      values = std::span<const float>(p.grad().data(), static_cast<size_t>(p.grad().numel()));
    } else if (const SparseRows* rows = p.sparse_grad(); rows != nullptr) {
      values =
          std::span<const float>(rows->values.data(), static_cast<size_t>(rows->values.numel()));
    } else {
      continue;
    }
    if (!all_finite(values)) {
      throw NumericError(fmt::format("the gradient of '{}' is not finite ({})", name,
                                     describe_non_finite(values)));
    }
  }
}

int64_t count_correct(const Tensor& output, std::span<const int64_t> targets) {
  const int64_t n = static_cast<int64_t>(targets.size());
  if (output.dim() != 2 || output.size(0) != n) {
    throw UsageError(fmt::format("count_correct: output {} does not match {} targets",
                                 shape_str(output.shape()), n));
  }
  const int64_t classes = output.size(1);
  const float* row = output.data();
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i, row += classes) {
    int64_t best = 0;
    for (int64_t c = 1; c < classes; ++c) {
      if (row[c] > row[best]) best = c;
    }
    correct += best == targets[static_cast<size_t>(i)] ? 1 : 0;
  }
  return correct;
}

void scale_gradients(nn::Module& model, float scale) {
  for (Variable& p : model.parameters()) {
    for (float& v : p.dense_grad().span()) v *= scale;
  }
}

StepStats Strategy::step_on_gradients(const std::function<StepStats()>& /*local_gradients*/,
                                      float /*scale*/) {
  throw UsageError(fmt::format(
      "strategy '{}' cannot step on gradients computed by its caller: its update is not one sum "
      "of the workers' gradients (strategies 'local' and 'allreduce' can)",
      name()));
}

std::vector<int64_t> Strategy::batch_split(int64_t batch_rows) const {
  const int64_t w = world_size();
  std::vector<int64_t> rows(static_cast<size_t>(w));
  for (int64_t r = 0; r < w; ++r) {
    rows[static_cast<size_t>(r)] = batch_rows * (r + 1) / w - batch_rows * r / w;
  }
  return rows;
}

std::pair<int64_t, int64_t> Strategy::row_range(int64_t batch_rows) const {
  const std::vector<int64_t> rows = batch_split(batch_rows);
  const int64_t r = rank();
  DTRAIN_CHECK(static_cast<int64_t>(rows.size()) == world_size() && r >= 0 && r < world_size(),
               "batch split of {} workers for rank {} of {}", rows.size(), r, world_size());
  int64_t first = 0;
  for (int64_t i = 0; i < r; ++i) first += rows[static_cast<size_t>(i)];
  return {first, first + rows[static_cast<size_t>(r)]};
}

LossFn cross_entropy_loss() {
  return [](const Variable& output, std::span<const int64_t> targets) {
    return cross_entropy(output, targets);
  };
}

}  // namespace dtrain::strategy
