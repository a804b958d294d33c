// Metrics of binary classifiers: the ROC AUC of scores against 0/1 labels,
// and the scores a model with two class logits gives a data set.
//
// roc_auc() is the probability that a random positive sample scores above a
// random negative one, ties counting one half: the Mann-Whitney U statistic
// over n_pos * n_neg (Hanley & McNeil 1982), computed from average ranks in
// O(n log n) and exactly (integer rank sums, one final division).
//
// Thread safety: pure functions; positive_class_probability() runs the model
// and so needs it to itself (see nn/module.h).
// Errors: UsageError for inputs of different lengths, a label other than 0
// or 1, a NaN score, a sample set without both classes (AUC is undefined),
// or a model whose output is not [batch, 2]; each names the offending value.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "data/dataset.h"
#include "nn/module.h"

namespace dtrain::train {

// ROC AUC in [0, 1] of `scores` (higher means more likely positive) against
// `labels` in {0, 1}, of the same length.
double roc_auc(std::span<const float> scores, std::span<const int64_t> labels);

// softmax(model(x))[:, 1] for every sample of `data`, in order: the
// probability of class 1 under a model with two class logits. The model runs
// in eval mode without recording a graph, `batch_size` samples at a time, and
// is left in the mode it was in.
std::vector<float> positive_class_probability(nn::Module& model, const data::TensorDataset& data,
                                              int64_t batch_size);

}  // namespace dtrain::train
