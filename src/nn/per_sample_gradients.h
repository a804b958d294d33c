// PerSampleGradients: per-sample gradient norms and the clipped gradient sum
// of a Sequential model, for DP-SGD (Abadi et al. 2016), without
// materialising any per-sample gradient of the whole model.
//
// Method (capture, then two weight-gradient products per layer): forward()
// runs the model's layers in order and, at each layer with parameters,
// keeps the layer's input x and cuts the graph at its output y (the rest of
// the model reads a fresh leaf holding y's values). backward() runs the loss
// back to the last cut, reads dy there, pushes it through that layer to the
// previous cut, and so on, so that autograd computes only input gradients;
// the parameters' gradients are not formed. From each (x, dy):
//
//   linear   x [N, I], dy [N, O]:  ||g_i||^2 = ||dy_i||^2 (||x_i||^2 + 1)
//            (the + 1 is the bias; Goodfellow 2015's identity: the
//            per-sample weight gradient is the outer product dy_i x_i^T);
//   conv2d   x [N, C, H, W], dy [N, O, OH, OW]: per sample, the unfolded
//            input U_i [C K K, L] (L = OH OW) and dW_i = dy_i U_i^T [O, C K K]
//            are formed one sample at a time (one [O, C K K] buffer, never
//            N of them), ||g_i||^2 = ||dW_i||^2 + ||sum_l dy_i||^2;
//   embedding indices [N, T...], dy [N, T..., D]: the rows of sample i,
//            with repeated indices summed first.
//
// squared_norms() sums these over the layers. clipped_sum(c) then writes
// sum_i c_i g_i into every parameter's grad(): the same weight-gradient
// products with dy's row i scaled by c_i (linear: one GEMM; conv2d: one GEMM
// per sample over its unfolded input again; embedding: a scatter into a
// dense [V, D] gradient, dense because DP noise goes to every row).
// Cost against an ordinary backward pass: the input-gradient products as
// usual, plus per layer one extra pass for the norms (linear: O(N (I + O));
// conv2d: one more weight-gradient product and unfold; embedding: O(N T D)).
//
// The loss given to backward() must be the SUM over samples of per-sample
// losses (a mean loss scaled by N, e.g. backward with seed N): then dy_i is
// the gradient of sample i's own loss.
//
// Layers: Linear, Conv2d and Embedding carry parameters; layers without
// parameters (activations, pooling, flatten, dropout) pass through; nested
// Sequentials are walked. Any other layer with parameters (batch norm mixes
// the samples of a batch, so it has no per-sample gradient) is a UsageError
// at construction naming it.
//
// Ownership: holds a reference to the model, which must outlive it, and the
// captured tensors of the last forward() until the next one. During
// forward() the parameters' requires_grad is switched off and restored
// before it returns (or throws). Thread safety: none (one training thread).
// Errors: UsageError as above, and for backward()/squared_norms()/
// clipped_sum() out of order or with a factor count other than the batch's.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "autograd/variable.h"
#include "nn/module.h"
#include "nn/sequential.h"

namespace dtrain::nn {

class PerSampleGradients {
 public:
  // Throws UsageError naming the first layer with parameters that is not
  // linear, conv2d or embedding.
  explicit PerSampleGradients(Sequential& model);

  // The model's output for `inputs` (first extent N, the batch), with the
  // captures for backward(). The model's train/eval mode is the caller's.
  Variable forward(const Tensor& inputs);
  // Backward from `loss` (a scalar: the sum of per-sample losses) through
  // every cut; afterwards squared_norms() and clipped_sum() may be called.
  void backward(const Variable& loss);

  // ||g_i||^2 over all parameters of the model, for each of the N samples.
  std::vector<double> squared_norms() const;
  // Sets every parameter's grad() (dense) to sum_i factors[i] g_i.
  void clipped_sum(std::span<const float> factors) const;

 private:
  enum class Kind { kLinear, kConv2d, kEmbedding };
  struct Cut {
    Kind kind;
    Module* layer;
    Tensor input;     // x as the layer saw it
    Variable output;  // y, with the graph back to the previous cut
    Variable leaf;    // a leaf over y's values that the rest of the model read
    Tensor grad;      // dy after backward()
  };
  struct Step {
    Module* layer;
    int cut = -1;  // index into cuts_ for a layer with parameters
  };

  void add_layers(Sequential& seq);
  void check_ready(const char* what) const;
  // One pass over the layers: their shares of the squared norms into
  // `norms`, or, when it is null, their clipped sums with `factors`.
  void each_layer(std::vector<double>* norms, std::span<const float> factors) const;

  Sequential& model_;
  std::vector<Step> steps_;
  std::vector<Cut> cuts_;
  int64_t batch_ = 0;
  bool backward_done_ = false;
};

}  // namespace dtrain::nn
