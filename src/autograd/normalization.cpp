// batch_norm and embedding: forward beside backward.
//
// batch_norm shape legend: x [N, C] or [N, C, H, W]; statistics per channel
// c over M = N*H*W values; gamma, beta, running_mean, running_var [C].
//   forward   xhat = (x - mean_c) * invstd_c,  y = gamma_c * xhat + beta_c
//   backward  gbeta_c  = sum gy
//             ggamma_c = sum gy * xhat
//             gx = gamma_c * invstd_c / M * (M * gy - gbeta_c - xhat * ggamma_c)  (training)
//             gx = gamma_c * invstd_c * gy                                      (evaluation)
// Training normalises with the biased batch variance and moves the running
// variance toward the unbiased one (M / (M - 1) times), as torch does.
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "autograd/functions.h"
#include "autograd/node.h"
#include "core/error.h"
#include "tensor/ops.h"

namespace dtrain {

using autograd::InputGrad;
using autograd::needs_graph;
using autograd::record;

namespace {

void check_channel_vector(const Tensor& t, int64_t channels, const char* role, const Tensor& x) {
  if (t.shape() != Shape{channels}) {
    throw UsageError(fmt::format("batch_norm: {} {} does not match input {} (expected ({},))", role,
                                 t.defined() ? shape_str(t.shape()) : "(undefined)",
                                 shape_str(x.shape()), channels));
  }
}

}  // namespace

namespace {

// The layout batch_norm sees: x [n, channels, spatial] (spatial = H*W, or 1).
struct BatchNormShape {
  int64_t n = 0;
  int64_t channels = 0;
  int64_t spatial = 1;
  int64_t count() const { return n * spatial; }  // values per channel
};

BatchNormShape check_batch_norm_args(const Tensor& in, const Variable& gamma, const Variable& beta,
                                     const Tensor& running_mean, const Tensor& running_var,
                                     bool training) {
  if (in.dim() != 2 && in.dim() != 4) {
    throw UsageError(fmt::format("batch_norm: input {} is neither [N, C] nor [N, C, H, W]",
                                 shape_str(in.shape())));
  }
  const BatchNormShape shape{in.size(0), in.size(1), in.dim() == 4 ? in.size(2) * in.size(3) : 1};
  if (gamma.defined()) check_channel_vector(gamma.data(), shape.channels, "gamma", in);
  if (beta.defined()) check_channel_vector(beta.data(), shape.channels, "beta", in);
  check_channel_vector(running_mean, shape.channels, "running_mean", in);
  check_channel_vector(running_var, shape.channels, "running_var", in);
  if (training && shape.count() < 2) {
    throw UsageError(
        fmt::format("batch_norm: training needs more than one value per channel, input is {}",
                    shape_str(in.shape())));
  }
  return shape;
}

// Per-channel mean and inverse standard deviation: of the batch in
// training (moving the running statistics), the running ones otherwise.
std::pair<std::vector<float>, std::vector<float>> channel_statistics(
    const float* xs, const BatchNormShape& sh, const Tensor& running_mean,
    const Tensor& running_var, bool training, float momentum, float eps) {
  std::vector<float> mean(static_cast<size_t>(sh.channels));
  std::vector<float> invstd(static_cast<size_t>(sh.channels));
  const int64_t count = sh.count();
  for (int64_t c = 0; c < sh.channels; ++c) {
    double m = 0.0;
    double var = 0.0;
    if (training) {
      for (int64_t i = 0; i < sh.n; ++i) {
        m += ops::sum(xs + (i * sh.channels + c) * sh.spatial, sh.spatial);
      }
      m /= static_cast<double>(count);
      for (int64_t i = 0; i < sh.n; ++i) {
        const float* p = xs + (i * sh.channels + c) * sh.spatial;
        for (int64_t s = 0; s < sh.spatial; ++s) var += (p[s] - m) * (p[s] - m);
      }
      var /= static_cast<double>(count);
      float& rm = running_mean.data()[c];
      float& rv = running_var.data()[c];
      rm = static_cast<float>((1.0 - momentum) * rm + momentum * m);
      rv = static_cast<float>((1.0 - momentum) * rv +
                              momentum * var * static_cast<double>(count) / (count - 1));
    } else {
      m = running_mean.data()[c];
      var = running_var.data()[c];
    }
    mean[c] = static_cast<float>(m);
    invstd[c] = static_cast<float>(1.0 / std::sqrt(var + eps));
  }
  return {std::move(mean), std::move(invstd)};
}

Tensor channel_tensor(const std::vector<double>& values) {
  Tensor t = Tensor::empty({static_cast<int64_t>(values.size())});
  for (size_t c = 0; c < values.size(); ++c) t.data()[c] = static_cast<float>(values[c]);
  return t;
}

// The backward of the legend above, from the saved xhat and invstd.
void batch_norm_backward(const Tensor& gy, std::span<InputGrad> grads, const Tensor& xhat,
                         const Tensor& gamma, const std::vector<float>& invstd,
                         const BatchNormShape& sh, bool training) {
  std::vector<double> gbeta(static_cast<size_t>(sh.channels), 0.0);
  std::vector<double> ggamma(static_cast<size_t>(sh.channels), 0.0);
  const float* gs = gy.data();
  const float* hs = xhat.data();
  for (int64_t i = 0; i < sh.n; ++i) {
    for (int64_t c = 0; c < sh.channels; ++c) {
      const int64_t base = (i * sh.channels + c) * sh.spatial;
      gbeta[c] += ops::sum(gs + base, sh.spatial);
      ggamma[c] += ops::dot(gs + base, hs + base, sh.spatial);
    }
  }
  if (grads[0].needed) {
    Tensor gx = Tensor::empty(xhat.shape());
    float* out = gx.data();
    const auto m = static_cast<float>(sh.count());
    for (int64_t i = 0; i < sh.n; ++i) {
      for (int64_t c = 0; c < sh.channels; ++c) {
        const int64_t base = (i * sh.channels + c) * sh.spatial;
        const float g = gamma.defined() ? gamma.data()[c] : 1.0f;
        const float scale = g * invstd[c];
        if (training) {
          const auto gb = static_cast<float>(gbeta[c]);
          const auto gg = static_cast<float>(ggamma[c]);
          for (int64_t s = 0; s < sh.spatial; ++s) {
            out[base + s] = scale / m * (m * gs[base + s] - gb - hs[base + s] * gg);
          }
        } else {
          for (int64_t s = 0; s < sh.spatial; ++s) out[base + s] = scale * gs[base + s];
        }
      }
    }
    grads[0].set(std::move(gx));
  }
  if (grads[1].needed) grads[1].set(channel_tensor(ggamma));
  if (grads[2].needed) grads[2].set(channel_tensor(gbeta));
}

}  // namespace

Variable batch_norm(const Variable& x, const Variable& gamma, const Variable& beta,
                    const Tensor& running_mean, const Tensor& running_var, bool training,
                    float momentum, float eps) {
  if (!x.defined()) throw UsageError("batch_norm: the input is undefined");
  const Tensor& in = x.data();
  const BatchNormShape sh =
      check_batch_norm_args(in, gamma, beta, running_mean, running_var, training);
  const float* xs = in.data();
  auto [mean, invstd] =
      channel_statistics(xs, sh, running_mean, running_var, training, momentum, eps);

  Tensor xhat = Tensor::empty(in.shape());
  Tensor y = Tensor::empty(in.shape());
  for (int64_t i = 0; i < sh.n; ++i) {
    for (int64_t c = 0; c < sh.channels; ++c) {
      const int64_t base = (i * sh.channels + c) * sh.spatial;
      const float g = gamma.defined() ? gamma.data().data()[c] : 1.0f;
      const float b = beta.defined() ? beta.data().data()[c] : 0.0f;
      for (int64_t s = 0; s < sh.spatial; ++s) {
        const float h = (xs[base + s] - mean[c]) * invstd[c];
        xhat.data()[base + s] = h;
        y.data()[base + s] = g * h + b;
      }
    }
  }
  if (!needs_graph({&x, &gamma, &beta})) return Variable(std::move(y));
  Tensor gamma_data = gamma.defined() ? gamma.data() : Tensor();
  return record("batch_norm", {&x, &gamma, &beta}, std::move(y),
                [xhat, gamma_data, invstd = std::move(invstd), sh, training](
                    const Tensor& gy, std::span<InputGrad> grads) {
                  batch_norm_backward(gy, grads, xhat, gamma_data, invstd, sh, training);
                });
}

// weight [V, D], indices [L] -> y [L, D] with y[i] = weight[indices[i]].
// Backward: SparseRows{indices, gy} on the weight; no dense [V, D] tensor.
Variable embedding(const Variable& weight, std::span<const int64_t> indices) {
  if (!weight.defined()) throw UsageError("embedding: the weight is undefined");
  const Tensor& w = weight.data();
  if (w.dim() != 2) {
    throw UsageError(fmt::format("embedding: weight {} is not [V, D]", shape_str(w.shape())));
  }
  const int64_t vocab = w.size(0);
  const int64_t width = w.size(1);
  const auto count = static_cast<int64_t>(indices.size());
  Tensor y = Tensor::empty({count, width});
  for (int64_t i = 0; i < count; ++i) {
    const int64_t row = indices[i];
    if (row < 0 || row >= vocab) {
      throw UsageError(
          fmt::format("embedding: index {} (position {}) is out of range for weight {}", row, i,
                      shape_str(w.shape())));
    }
    std::memcpy(y.data() + i * width, w.data() + row * width,
                static_cast<size_t>(width) * sizeof(float));
  }
  if (!needs_graph({&weight})) return Variable(std::move(y));
  return record("embedding", {&weight}, std::move(y),
                [ids = std::vector<int64_t>(indices.begin(), indices.end()), vocab](
                    const Tensor& gy, std::span<InputGrad> grads) {
                  SparseRows rows;
                  rows.indices = ids;
                  rows.values = gy.clone();
                  rows.num_rows = vocab;
                  grads[0].sparse = std::move(rows);
                });
}

}  // namespace dtrain
