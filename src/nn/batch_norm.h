// BatchNorm1d and BatchNorm2d: torch's nn.BatchNorm1d / nn.BatchNorm2d with
// affine weight and bias and tracked running statistics.
//
// Shapes: BatchNorm1d x [N, C]; BatchNorm2d x [N, C, H, W]; output as input.
// Parameters weight [C] (init 1), bias [C] (init 0); buffers running_mean [C]
// (init 0) and running_var [C] (init 1). In training, forward normalises with
// the batch statistics and updates the running ones in place:
//   running = (1 - momentum) * running + momentum * batch
// (the variance term unbiased, as torch), and counts num_batches_tracked,
// which is extra state ("num_batches_tracked" in state_dict metadata, a
// decimal integer). In evaluation it normalises with the running statistics.
// Thread safety: see module.h. Errors: UsageError naming the layer and the
// shapes when the channels differ, or when a training batch has only one
// value per channel (its variance is undefined).
#pragma once

#include <cstdint>

#include "nn/module.h"

namespace dtrain::nn {

class BatchNorm : public Module {
 public:
  Variable forward(const Variable& input) override;
  Shape output_shape(const Shape& input) const override;

  int64_t num_features() const { return num_features_; }
  float eps() const { return eps_; }
  float momentum() const { return momentum_; }
  const Variable& weight() const { return weight_; }
  const Variable& bias() const { return bias_; }
  const Tensor& running_mean() const { return running_mean_; }
  const Tensor& running_var() const { return running_var_; }
  int64_t num_batches_tracked() const { return num_batches_tracked_; }

 protected:
  // input_dims: 2 for [N, C], 4 for [N, C, H, W].
  BatchNorm(std::string kind, int64_t input_dims, int64_t num_features, float eps, float momentum);

  std::map<std::string, std::string> extra_state() const override;
  void load_extra_state(const std::map<std::string, std::string>& values, bool apply) override;

 private:
  int64_t input_dims_;
  int64_t num_features_;
  float eps_;
  float momentum_;
  Variable weight_;
  Variable bias_;
  Tensor running_mean_;
  Tensor running_var_;
  int64_t num_batches_tracked_ = 0;
};

class BatchNorm1d : public BatchNorm {
 public:
  explicit BatchNorm1d(int64_t num_features, float eps = 1e-5f, float momentum = 0.1f)
      : BatchNorm("batch_norm1d", 2, num_features, eps, momentum) {}
};

class BatchNorm2d : public BatchNorm {
 public:
  explicit BatchNorm2d(int64_t num_features, float eps = 1e-5f, float momentum = 0.1f)
      : BatchNorm("batch_norm2d", 4, num_features, eps, momentum) {}
};

}  // namespace dtrain::nn
