#include "nn/per_sample_gradients.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "core/error.h"
#include "nn/conv2d.h"
#include "nn/embedding.h"
#include "nn/linear.h"
#include "tensor/blas.h"
#include "tensor/conv_kernels.h"
#include "tensor/ops.h"

namespace dtrain::nn {

namespace {

// Switches off requires_grad on a layer's parameters for the guard's life,
// so that autograd records only what the input gradient needs.
class ParametersFrozen {
 public:
  explicit ParametersFrozen(const Module& layer) : params_(layer.parameters()) {
    for (Variable& p : params_) {
      was_.push_back(p.requires_grad());
      p.set_requires_grad(false);
    }
  }
  ~ParametersFrozen() {
    for (size_t i = 0; i < params_.size(); ++i) params_[i].set_requires_grad(was_[i]);
  }
  ParametersFrozen(const ParametersFrozen&) = delete;
  ParametersFrozen& operator=(const ParametersFrozen&) = delete;

 private:
  std::vector<Variable> params_;
  std::vector<bool> was_;
};

double squared(const float* x, int64_t n) { return ops::dot(x, x, n); }

ops::Conv2dGeometry sample_geometry(const Conv2d& conv, const Tensor& x, const Tensor& dy) {
  ops::Conv2dGeometry g;
  g.n = 1;
  g.c = x.size(1);
  g.h = x.size(2);
  g.w = x.size(3);
  g.k = conv.kernel();
  g.stride = conv.stride();
  g.pad = conv.padding();
  g.oh = dy.size(2);
  g.ow = dy.size(3);
  return g;
}

void set_parameter_grad(const Variable& param, Tensor grad) {
  Variable p = param;  // a handle to the same leaf
  p.zero_grad();
  p.set_grad(std::move(grad));
}

// Indices of an embedding input (integer-valued floats, range-checked by
// the forward pass that already ran).
std::vector<int64_t> embedding_indices(const Tensor& input) {
  std::vector<int64_t> out(static_cast<size_t>(input.numel()));
  const float* v = input.data();
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<int64_t>(v[i]);
  return out;
}

// Each layer kind's two passes, side by side: its share of every sample's
// squared gradient norm (added to norms[i], i < N), and its parameters'
// clipped sum sum_i factors[i] g_i (set as their gradients). x is the layer's
// input, dy the gradient of its output, both with the batch N first.

// x [N, I], dy [N, O]: ||g_i||^2 = ||dy_i||^2 (||x_i||^2 + 1 with a bias).
void linear_norms(const Linear& lin, const Tensor& x, const Tensor& dy,
                  std::vector<double>& norms) {
  const auto n = static_cast<int64_t>(norms.size());
  const double bias = lin.bias().defined() ? 1.0 : 0.0;
  const int64_t in = x.size(1), out = dy.size(1);
  for (int64_t i = 0; i < n; ++i) {
    norms[size_t(i)] += squared(dy.data() + i * out, out) * (squared(x.data() + i * in, in) + bias);
  }
}

// (c o dy)^T x, one GEMM; the bias's sum_i c_i dy_i.
void linear_clipped_sum(const Linear& lin, const Tensor& x, const Tensor& dy,
                        std::span<const float> factors) {
  const auto n = static_cast<int64_t>(factors.size());
  const int64_t in = lin.in_features(), out = lin.out_features();
  Tensor scaled = Tensor::empty({n, out});
  for (int64_t i = 0; i < n; ++i) {
    ops::affine(dy.data() + i * out, factors[size_t(i)], 0.0f, scaled.data() + i * out, out);
  }
  Tensor gw = Tensor::zeros({out, in});
  if (n > 0) {
    blas::sgemm(true, false, out, in, n, 1.0f, scaled.data(), out, x.data(), in, 0.0f, gw.data(),
                in);
  }
  set_parameter_grad(lin.weight(), gw);
  if (lin.bias().defined()) {
    Tensor gb = Tensor::zeros({out});
    if (n > 0) ops::sum_rows(scaled.data(), gb.data(), n, out);
    set_parameter_grad(lin.bias(), gb);
  }
}

// x [N, C, H, W], dy [N, O, OH, OW]: per sample, unfold x_i to U_i
// [C K^2, L] and form dW_i = dy_i U_i^T [O, C K^2] in one reused buffer.
void conv2d_norms(const Conv2d& conv, const Tensor& x, const Tensor& dy,
                  std::vector<double>& norms) {
  const auto n = static_cast<int64_t>(norms.size());
  const ops::Conv2dGeometry g = sample_geometry(conv, x, dy);
  const int64_t o = dy.size(1), rows = g.col_rows(), l = g.oh * g.ow;
  const int64_t in_size = g.c * g.h * g.w;
  std::vector<float> col(static_cast<size_t>(rows * l));
  std::vector<float> dw(static_cast<size_t>(o * rows));
  for (int64_t i = 0; i < n; ++i) {
    const float* dyi = dy.data() + i * o * l;
    ops::im2col(x.data() + i * in_size, g, col.data());
    blas::sgemm(false, true, o, rows, l, 1.0f, dyi, l, col.data(), l, 0.0f, dw.data(), rows);
    double s = squared(dw.data(), o * rows);
    if (conv.bias().defined()) {
      for (int64_t c = 0; c < o; ++c) {
        const double b = ops::sum(dyi + c * l, l);
        s += b * b;
      }
    }
    norms[size_t(i)] += s;
  }
}

// Per sample again: unfold, dW += c_i dy_i U_i^T; the bias c_i sum_l dy_i.
void conv2d_clipped_sum(const Conv2d& conv, const Tensor& x, const Tensor& dy,
                        std::span<const float> factors) {
  const auto n = static_cast<int64_t>(factors.size());
  Tensor gw = Tensor::zeros(conv.weight().shape());
  Tensor gb = Tensor::zeros({conv.out_channels()});
  if (n > 0) {
    const ops::Conv2dGeometry g = sample_geometry(conv, x, dy);
    const int64_t o = dy.size(1), rows = g.col_rows(), l = g.oh * g.ow;
    const int64_t in_size = g.c * g.h * g.w;
    std::vector<float> col(static_cast<size_t>(rows * l));
    for (int64_t i = 0; i < n; ++i) {
      const float c = factors[size_t(i)];
      const float* dyi = dy.data() + i * o * l;
      ops::im2col(x.data() + i * in_size, g, col.data());
      blas::sgemm(false, true, o, rows, l, c, dyi, l, col.data(), l, 1.0f, gw.data(), rows);
      for (int64_t ch = 0; ch < o; ++ch) {
        gb.data()[ch] += static_cast<float>(c * ops::sum(dyi + ch * l, l));
      }
    }
  }
  set_parameter_grad(conv.weight(), gw);
  if (conv.bias().defined()) set_parameter_grad(conv.bias(), gb);
}

// x [N, T] indices, dy [N, T, D]: sample i's rows, repeated indices summed
// before squaring.
void embedding_norms(const Tensor& x, const Tensor& dy, std::vector<double>& norms) {
  const auto n = static_cast<int64_t>(norms.size());
  const int64_t d = dy.size(-1);
  const std::vector<int64_t> idx = embedding_indices(x);
  const int64_t per = n > 0 ? static_cast<int64_t>(idx.size()) / n : 0;
  std::vector<std::pair<int64_t, int64_t>> order(static_cast<size_t>(per));
  std::vector<double> row(static_cast<size_t>(d));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t t = 0; t < per; ++t) order[size_t(t)] = {idx[size_t(i * per + t)], i * per + t};
    std::sort(order.begin(), order.end());
    double s = 0;
    for (size_t a = 0; a < order.size();) {
      std::fill(row.begin(), row.end(), 0.0);
      size_t b = a;
      for (; b < order.size() && order[b].first == order[a].first; ++b) {
        const float* src = dy.data() + order[b].second * d;
        for (int64_t j = 0; j < d; ++j) row[size_t(j)] += src[j];
      }
      for (double v : row) s += v * v;
      a = b;
    }
    norms[size_t(i)] += s;
  }
}

// c_i dy scattered into a dense [V, D].
void embedding_clipped_sum(const Embedding& emb, const Tensor& x, const Tensor& dy,
                           std::span<const float> factors) {
  const auto n = static_cast<int64_t>(factors.size());
  const int64_t d = emb.embedding_dim();
  Tensor gw = Tensor::zeros(emb.weight().shape());
  const std::vector<int64_t> idx = embedding_indices(x);
  const int64_t per = n > 0 ? static_cast<int64_t>(idx.size()) / n : 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t t = 0; t < per; ++t) {
      const int64_t r = i * per + t;
      ops::axpy(factors[size_t(i)], dy.data() + r * d, gw.data() + idx[size_t(r)] * d, d);
    }
  }
  set_parameter_grad(emb.weight(), gw);
}

}  // namespace

PerSampleGradients::PerSampleGradients(Sequential& model) : model_(model) { add_layers(model); }

void PerSampleGradients::add_layers(Sequential& seq) {
  for (size_t i = 0; i < seq.size(); ++i) {
    Module& layer = seq[i];
    if (auto* nested = dynamic_cast<Sequential*>(&layer)) {
      add_layers(*nested);
      continue;
    }
    Step step{&layer};
    if (!layer.parameters().empty()) {
      Kind kind;
      if (dynamic_cast<Linear*>(&layer) != nullptr) {
        kind = Kind::kLinear;
      } else if (dynamic_cast<Conv2d*>(&layer) != nullptr) {
        kind = Kind::kConv2d;
      } else if (dynamic_cast<Embedding*>(&layer) != nullptr) {
        kind = Kind::kEmbedding;
      } else {
        throw UsageError(fmt::format(
            "{}: DP-SGD needs per-sample gradients, which only linear, conv2d and embedding "
            "layers provide; a {} layer has parameters{}",
            layer.label(), layer.kind(),
            layer.kind().starts_with("batch_norm")
                ? " and mixes the samples of a batch (remove it from the model)"
                : ""));
      }
      step.cut = static_cast<int>(cuts_.size());
      cuts_.push_back(Cut{kind, &layer, {}, {}, {}, {}});
    }
    steps_.push_back(step);
  }
}

Variable PerSampleGradients::forward(const Tensor& inputs) {
  backward_done_ = false;
  batch_ = inputs.dim() > 0 ? inputs.size(0) : 0;
  Variable x(inputs);
  for (const Step& step : steps_) {
    if (step.cut < 0) {
      x = step.layer->forward(x);
      continue;
    }
    Cut& cut = cuts_[static_cast<size_t>(step.cut)];
    cut.input = x.data();
    cut.grad = Tensor();
    {
      ParametersFrozen frozen(*step.layer);
      cut.output = step.layer->forward(x);
    }
    cut.leaf = Variable(cut.output.data(), /*requires_grad=*/true);
    x = cut.leaf;
  }
  return x;
}

void PerSampleGradients::backward(const Variable& loss) {
  if (!cuts_.empty()) {
    if (!loss.requires_grad()) {
      throw UsageError(
          "PerSampleGradients::backward: the loss does not depend on the model's "
          "parameters (was forward() run under NoGradGuard?)");
    }
    loss.backward();
    for (size_t k = cuts_.size(); k-- > 0;) {
      Cut& cut = cuts_[k];
      cut.grad = cut.leaf.has_grad() ? cut.leaf.dense_grad() : Tensor::zeros(cut.output.shape());
      if (cut.output.requires_grad()) cut.output.backward(cut.grad);
      cut.output = Variable();
      cut.leaf = Variable();
    }
  }
  backward_done_ = true;
}

void PerSampleGradients::check_ready(const char* what) const {
  if (!backward_done_) {
    throw UsageError(
        fmt::format("PerSampleGradients::{}: call forward() and backward() first", what));
  }
}

std::vector<double> PerSampleGradients::squared_norms() const {
  check_ready("squared_norms");
  std::vector<double> norms(static_cast<size_t>(batch_), 0.0);
  each_layer(&norms, {});
  return norms;
}

void PerSampleGradients::clipped_sum(std::span<const float> factors) const {
  check_ready("clipped_sum");
  if (static_cast<int64_t>(factors.size()) != batch_) {
    throw UsageError(fmt::format("PerSampleGradients::clipped_sum: {} factors for a batch of {}",
                                 factors.size(), batch_));
  }
  each_layer(nullptr, factors);
}

void PerSampleGradients::each_layer(std::vector<double>* norms,
                                    std::span<const float> factors) const {
  for (const Cut& cut : cuts_) {
    const Tensor& x = cut.input;
    const Tensor& dy = cut.grad;
    switch (cut.kind) {
      case Kind::kLinear: {
        const auto& lin = static_cast<const Linear&>(*cut.layer);
        norms != nullptr ? linear_norms(lin, x, dy, *norms)
                         : linear_clipped_sum(lin, x, dy, factors);
        break;
      }
      case Kind::kConv2d: {
        const auto& conv = static_cast<const Conv2d&>(*cut.layer);
        norms != nullptr ? conv2d_norms(conv, x, dy, *norms)
                         : conv2d_clipped_sum(conv, x, dy, factors);
        break;
      }
      case Kind::kEmbedding: {
        const auto& emb = static_cast<const Embedding&>(*cut.layer);
        norms != nullptr ? embedding_norms(x, dy, *norms)
                         : embedding_clipped_sum(emb, x, dy, factors);
        break;
      }
    }
  }
}

}  // namespace dtrain::nn
