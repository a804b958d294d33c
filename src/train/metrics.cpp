#include "train/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "tensor/ops.h"

namespace dtrain::train {

namespace {

// Puts a model in eval mode and restores its mode however the scope ends.
class EvalMode {
 public:
  explicit EvalMode(nn::Module& model) : model_(model), was_training_(model.is_training()) {
    model_.eval();
  }
  ~EvalMode() { model_.train(was_training_); }
  EvalMode(const EvalMode&) = delete;
  EvalMode& operator=(const EvalMode&) = delete;

 private:
  nn::Module& model_;  // the caller's, alive for this scope
  bool was_training_;
};

}  // namespace

double roc_auc(std::span<const float> scores, std::span<const int64_t> labels) {
  if (scores.size() != labels.size()) {
    throw UsageError(fmt::format("roc_auc: {} scores but {} labels", scores.size(), labels.size()));
  }
  int64_t positives = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] != 0 && labels[i] != 1) {
      throw UsageError(fmt::format("roc_auc: label {} of sample {} is not 0 or 1", labels[i], i));
    }
    if (std::isnan(scores[i]))
      throw UsageError(fmt::format("roc_auc: score of sample {} is NaN", i));
    positives += labels[i];
  }
  const auto n = static_cast<int64_t>(labels.size());
  const int64_t negatives = n - positives;
  if (positives == 0 || negatives == 0) {
    throw UsageError(
        fmt::format("roc_auc: undefined without both classes: {} positive and {} negative samples",
                    positives, negatives));
  }
  std::vector<int64_t> order(labels.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(), [&scores](int64_t a, int64_t b) {
    return scores[static_cast<size_t>(a)] < scores[static_cast<size_t>(b)];
  });
  // Samples at sorted positions [i, j) share one score and the average of
  // the 1-based ranks i + 1 .. j, which is (i + 1 + j) / 2. Sum twice the
  // positives' ranks to stay in integers.
  int64_t twice_positive_rank_sum = 0;
  for (int64_t i = 0; i < n;) {
    const float score = scores[static_cast<size_t>(order[static_cast<size_t>(i)])];
    int64_t j = i;
    int64_t group_positives = 0;
    while (j < n && scores[static_cast<size_t>(order[static_cast<size_t>(j)])] == score) {
      group_positives += labels[static_cast<size_t>(order[static_cast<size_t>(j)])];
      ++j;
    }
    twice_positive_rank_sum += group_positives * (i + 1 + j);
    i = j;
  }
  // U = R_pos - P (P + 1) / 2; AUC = U / (P N).
  const int64_t twice_u = twice_positive_rank_sum - positives * (positives + 1);
  return static_cast<double>(twice_u) /
         (2.0 * static_cast<double>(positives) * static_cast<double>(negatives));
}

std::vector<float> positive_class_probability(nn::Module& model, const data::TensorDataset& data,
                                              int64_t batch_size) {
  if (batch_size < 1) {
    throw UsageError(fmt::format("positive_class_probability: batch size {} < 1", batch_size));
  }
  const EvalMode eval_mode(model);
  NoGradGuard no_grad;
  std::vector<float> out;
  out.reserve(static_cast<size_t>(data.size()));
  std::vector<float> probabilities;
  for (int64_t start = 0; start < data.size(); start += batch_size) {
    const int64_t rows = std::min(batch_size, data.size() - start);
    const Variable logits = model.forward(Variable(data.slice(start, rows).features()));
    const Tensor& y = logits.data();
    if (y.dim() != 2 || y.size(0) != rows || y.size(1) != 2) {
      throw UsageError(
          fmt::format("positive_class_probability: {} returns {} for a batch of {}, not two class "
                      "logits ({}, 2)",
                      model.label(), shape_str(y.shape()), rows, rows));
    }
    probabilities.resize(static_cast<size_t>(rows * 2));
    ops::softmax_rows(y.data(), probabilities.data(), rows, 2);
    for (int64_t r = 0; r < rows; ++r) out.push_back(probabilities[static_cast<size_t>(r * 2 + 1)]);
  }
  return out;
}

}  // namespace dtrain::train
