// Class-weighted cross entropy for training on imbalanced data: a loss
// function for any strategy (LossFn), additive over workers.
//
// Loss of a batch of n samples with targets t_j and class weights w:
//     L = (1 / n) sum_j w[t_j] * CE_j
// the MEAN over samples of the weighted per-sample cross entropy (the
// convention of per-sample weights), computed as torch-style weighted cross
// entropy (normalised by sum_j w[t_j]) times sum_j w[t_j] / n. Unlike
// torch's weight= normalisation, this form adds up over workers: the
// strategies aggregate sum_i n_i L_i / sum_i n_i, which equals L of the
// union of the workers' batches, so W workers still train exactly as one on
// the global batch. With balanced weights sum_j w[t_j] / n is about 1 and
// the two forms nearly agree.
//
// Thread safety: the returned function holds its own copy of the weights;
// calls are independent. Errors: UsageError (from cross_entropy) when the
// weights do not have one entry per class of the model's output; at
// construction, for a negative or non-finite weight. Never blocks.
#pragma once

#include <vector>

#include "strategy/strategy.h"

namespace dtrain::strategy {

// The loss above with w = class_weights (size C, each >= 0).
LossFn class_weighted_cross_entropy_loss(std::vector<float> class_weights);

}  // namespace dtrain::strategy
