// Arithmetic, linear algebra, activations, reductions and shape functions:
// each forward with its backward rule beside it.
//
// Shape legend: see functions.h. Broadcasting: b either has a's shape, or
// a's trailing dimensions ([K] against [M, K]: "row"), or one element; in
// the row case a is viewed as [M, K] and b's gradient is the column sum.
#include "autograd/functions.h"

#include <fmt/format.h>

#include <cmath>
#include <utility>

#include "autograd/node.h"
#include "core/error.h"
#include "tensor/blas.h"
#include "tensor/ops.h"

namespace dtrain {

using autograd::InputGrad;
using autograd::needs_graph;
using autograd::record;

namespace {

const Tensor& defined_data(const Variable& v, const char* what, const char* role) {
  if (!v.defined()) throw UsageError(fmt::format("{}: {} is an undefined Variable", what, role));
  return v.data();
}

// How b lines up with a: a viewed as [rows, cols], b as [cols].
struct Broadcast {
  int64_t rows = 1;
  int64_t cols = 1;
  bool same = true;
};

Broadcast broadcast_of(const Tensor& a, const Tensor& b, const char* what) {
  if (a.shape() == b.shape()) return {1, a.numel(), true};
  const Shape& as = a.shape();
  const Shape& bs = b.shape();
  bool trailing = bs.size() <= as.size();
  for (size_t i = 0; trailing && i < bs.size(); ++i) {
    trailing = bs[bs.size() - 1 - i] == as[as.size() - 1 - i];
  }
  if (!trailing && b.numel() != 1) {
    throw UsageError(fmt::format(
        "{}: shapes {} and {} do not broadcast (the second must equal the first's trailing "
        "dimensions or hold one element)",
        what, shape_str(as), shape_str(bs)));
  }
  const int64_t cols = b.numel();
  return {cols == 0 ? 0 : a.numel() / cols, cols, false};
}

// The gradient of b from the full-size gradient of a broadcast operation.
Tensor reduce_to(const Tensor& full, const Shape& b_shape, const Broadcast& bc) {
  Tensor out = Tensor::empty(b_shape);
  ops::sum_rows(full.data(), out.data(), bc.rows, bc.cols);
  return out;
}

// out[i] = f(a[i], b[i mod cols]) over a viewed as [rows, cols].
template <typename F>
void broadcast_apply(const float* a, const float* b, float* out, const Broadcast& bc, F f) {
  if (bc.cols == 1) {
    const float s = b[0];
    for (int64_t i = 0; i < bc.rows; ++i) out[i] = f(a[i], s);
    return;
  }
  for (int64_t r = 0; r < bc.rows; ++r) {
    const float* ar = a + r * bc.cols;
    float* orow = out + r * bc.cols;
    for (int64_t j = 0; j < bc.cols; ++j) orow[j] = f(ar[j], b[j]);
  }
}

Tensor unary_map(const Tensor& x, void (*kernel)(const float*, float*, int64_t)) {
  Tensor y = Tensor::empty(x.shape());
  kernel(x.data(), y.data(), x.numel());
  return y;
}

}  // namespace

// ---- arithmetic ----

Variable add(const Variable& a, const Variable& b) {
  const Tensor& x = defined_data(a, "add", "a");
  const Tensor& y = defined_data(b, "add", "b");
  const Broadcast bc = broadcast_of(x, y, "add");
  Tensor out = Tensor::empty(x.shape());
  broadcast_apply(x.data(), y.data(), out.data(), bc, [](float u, float v) { return u + v; });
  if (!needs_graph({&a, &b})) return Variable(std::move(out));
  return record("add", {&a, &b}, std::move(out),
                [bc, b_shape = y.shape()](const Tensor& gy, std::span<InputGrad> g) {
                  if (g[0].needed) g[0].set(gy, false);
                  if (g[1].needed) {
                    if (bc.same) {
                      g[1].set(gy, false);
                    } else {
                      g[1].set(reduce_to(gy, b_shape, bc));
                    }
                  }
                });
}

Variable sub(const Variable& a, const Variable& b) {
  const Tensor& x = defined_data(a, "sub", "a");
  const Tensor& y = defined_data(b, "sub", "b");
  const Broadcast bc = broadcast_of(x, y, "sub");
  Tensor out = Tensor::empty(x.shape());
  broadcast_apply(x.data(), y.data(), out.data(), bc, [](float u, float v) { return u - v; });
  if (!needs_graph({&a, &b})) return Variable(std::move(out));
  return record("sub", {&a, &b}, std::move(out),
                [bc, b_shape = y.shape()](const Tensor& gy, std::span<InputGrad> g) {
                  if (g[0].needed) g[0].set(gy, false);
                  if (g[1].needed) {
                    Tensor gb = bc.same ? Tensor::empty(b_shape) : reduce_to(gy, b_shape, bc);
                    const float* src = bc.same ? gy.data() : gb.data();
                    ops::affine(src, -1.0f, 0.0f, gb.data(), gb.numel());
                    g[1].set(std::move(gb));
                  }
                });
}

Variable mul(const Variable& a, const Variable& b) {
  const Tensor& x = defined_data(a, "mul", "a");
  const Tensor& y = defined_data(b, "mul", "b");
  const Broadcast bc = broadcast_of(x, y, "mul");
  Tensor out = Tensor::empty(x.shape());
  broadcast_apply(x.data(), y.data(), out.data(), bc, [](float u, float v) { return u * v; });
  if (!needs_graph({&a, &b})) return Variable(std::move(out));
  return record("mul", {&a, &b}, std::move(out),
                [bc, x, y](const Tensor& gy, std::span<InputGrad> g) {
                  if (g[0].needed) {
                    Tensor ga = Tensor::empty(x.shape());
                    broadcast_apply(gy.data(), y.data(), ga.data(), bc,
                                    [](float u, float v) { return u * v; });
                    g[0].set(std::move(ga));
                  }
                  if (g[1].needed) {
                    Tensor gb = Tensor::empty(y.shape());
                    if (bc.same) {
                      ops::mul(gy.data(), x.data(), gb.data(), gb.numel());
                    } else {
                      ops::sum_rows_product(gy.data(), x.data(), gb.data(), bc.rows, bc.cols);
                    }
                    g[1].set(std::move(gb));
                  }
                });
}

Variable div(const Variable& a, const Variable& b) {
  const Tensor& x = defined_data(a, "div", "a");
  const Tensor& y = defined_data(b, "div", "b");
  const Broadcast bc = broadcast_of(x, y, "div");
  Tensor out = Tensor::empty(x.shape());
  broadcast_apply(x.data(), y.data(), out.data(), bc, [](float u, float v) { return u / v; });
  if (!needs_graph({&a, &b})) return Variable(std::move(out));
  return record("div", {&a, &b}, out, [bc, out, y](const Tensor& gy, std::span<InputGrad> g) {
    // d(a/b)/da = 1/b; d(a/b)/db = -(a/b)/b.
    Tensor ga = Tensor::empty(out.shape());
    broadcast_apply(gy.data(), y.data(), ga.data(), bc, [](float u, float v) { return u / v; });
    if (g[1].needed) {
      Tensor gb = Tensor::empty(y.shape());
      if (bc.same) {
        ops::mul(ga.data(), out.data(), gb.data(), gb.numel());
      } else {
        ops::sum_rows_product(ga.data(), out.data(), gb.data(), bc.rows, bc.cols);
      }
      ops::affine(gb.data(), -1.0f, 0.0f, gb.data(), gb.numel());
      g[1].set(std::move(gb));
    }
    if (g[0].needed) g[0].set(std::move(ga));
  });
}

Variable add_scalar(const Variable& a, float s) {
  const Tensor& x = defined_data(a, "add_scalar", "a");
  Tensor out = Tensor::empty(x.shape());
  ops::affine(x.data(), 1.0f, s, out.data(), x.numel());
  if (!needs_graph({&a})) return Variable(std::move(out));
  return record("add_scalar", {&a}, std::move(out),
                [](const Tensor& gy, std::span<InputGrad> g) { g[0].set(gy, false); });
}

Variable mul_scalar(const Variable& a, float s) {
  const Tensor& x = defined_data(a, "mul_scalar", "a");
  Tensor out = Tensor::empty(x.shape());
  ops::affine(x.data(), s, 0.0f, out.data(), x.numel());
  if (!needs_graph({&a})) return Variable(std::move(out));
  return record("mul_scalar", {&a}, std::move(out), [s](const Tensor& gy, std::span<InputGrad> g) {
    Tensor gx = Tensor::empty(gy.shape());
    ops::affine(gy.data(), s, 0.0f, gx.data(), gy.numel());
    g[0].set(std::move(gx));
  });
}

Variable neg(const Variable& a) { return mul_scalar(a, -1.0f); }

Variable square(const Variable& a) {
  const Tensor& x = defined_data(a, "square", "a");
  Tensor out = Tensor::empty(x.shape());
  ops::mul(x.data(), x.data(), out.data(), x.numel());
  if (!needs_graph({&a})) return Variable(std::move(out));
  return record("square", {&a}, std::move(out), [x](const Tensor& gy, std::span<InputGrad> g) {
    Tensor gx = Tensor::empty(x.shape());
    const float* xs = x.data();
    const float* gs = gy.data();
    float* out_grad = gx.data();
    for (int64_t i = 0; i < x.numel(); ++i) out_grad[i] = 2.0f * xs[i] * gs[i];
    g[0].set(std::move(gx));
  });
}

Variable exp(const Variable& a) {
  const Tensor& x = defined_data(a, "exp", "a");
  Tensor out = Tensor::empty(x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) out.data()[i] = std::exp(x.data()[i]);
  if (!needs_graph({&a})) return Variable(std::move(out));
  return record("exp", {&a}, out, [out](const Tensor& gy, std::span<InputGrad> g) {
    Tensor gx = Tensor::empty(out.shape());
    ops::mul(gy.data(), out.data(), gx.data(), gx.numel());
    g[0].set(std::move(gx));
  });
}

Variable log(const Variable& a) {
  const Tensor& x = defined_data(a, "log", "a");
  Tensor out = Tensor::empty(x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) out.data()[i] = std::log(x.data()[i]);
  if (!needs_graph({&a})) return Variable(std::move(out));
  return record("log", {&a}, std::move(out), [x](const Tensor& gy, std::span<InputGrad> g) {
    Tensor gx = Tensor::empty(x.shape());
    ops::div(gy.data(), x.data(), gx.data(), gx.numel());
    g[0].set(std::move(gx));
  });
}

// ---- linear algebra ----

// a [N, I], b [I, O] -> [N, O]; ga = gy b^T, gb = a^T gy.
Variable matmul(const Variable& a, const Variable& b) {
  const Tensor& x = defined_data(a, "matmul", "a");
  const Tensor& w = defined_data(b, "matmul", "b");
  if (x.dim() != 2 || w.dim() != 2 || x.size(1) != w.size(0)) {
    throw UsageError(fmt::format("matmul: {} cannot multiply {} (needs [N, I] x [I, O])",
                                 shape_str(x.shape()), shape_str(w.shape())));
  }
  const int64_t n = x.size(0), in = x.size(1), out_features = w.size(1);
  Tensor out = Tensor::empty({n, out_features});
  blas::sgemm(false, false, n, out_features, in, 1.0f, x.data(), in, w.data(), out_features, 0.0f,
              out.data(), out_features);
  if (!needs_graph({&a, &b})) return Variable(std::move(out));
  return record("matmul", {&a, &b}, std::move(out),
                [x, w, n, in, out_features](const Tensor& gy, std::span<InputGrad> g) {
                  if (g[0].needed) {
                    Tensor ga = Tensor::empty(x.shape());
                    blas::sgemm(false, true, n, in, out_features, 1.0f, gy.data(), out_features,
                                w.data(), out_features, 0.0f, ga.data(), in);
                    g[0].set(std::move(ga));
                  }
                  if (g[1].needed) {
                    Tensor gb = Tensor::empty(w.shape());
                    blas::sgemm(true, false, in, out_features, n, 1.0f, x.data(), in, gy.data(),
                                out_features, 0.0f, gb.data(), out_features);
                    g[1].set(std::move(gb));
                  }
                });
}

namespace {

// x [N, I], weight [O, I], bias [O] -> y [N, O] = x w^T + b, and with
// `relu` y = relu(x w^T + b) (clamped in place, y kept for the mask).
// gx = gy' w, gw = gy'^T x, gb = column sums of gy', where gy' = gy, or gy
// masked by y > 0 with `relu`.
Variable linear_impl(const Variable& x, const Variable& weight, const Variable& bias, bool relu,
                     const char* what) {
  const Tensor& in = defined_data(x, what, "input");
  const Tensor& w = defined_data(weight, what, "weight");
  if (in.dim() != 2 || w.dim() != 2 || in.size(1) != w.size(1)) {
    throw UsageError(fmt::format("{}: input {} does not match weight {}", what,
                                 shape_str(in.shape()), shape_str(w.shape())));
  }
  const int64_t n = in.size(0), in_features = in.size(1), out_features = w.size(0);
  if (bias.defined() && bias.data().shape() != Shape{out_features}) {
    throw UsageError(fmt::format("{}: bias {} does not match weight {} (expected ({},))", what,
                                 shape_str(bias.data().shape()), shape_str(w.shape()),
                                 out_features));
  }
  Tensor out = Tensor::empty({n, out_features});
  ops::linear_forward(in.data(), w.data(), bias.defined() ? bias.data().data() : nullptr,
                      out.data(), n, in_features, out_features, relu);
  if (!needs_graph({&x, &weight, &bias})) return Variable(std::move(out));
  Tensor y = relu ? out : Tensor();
  return record(what, {&x, &weight, &bias}, std::move(out),
                [in, w, y, n, in_features, out_features](const Tensor& gy, std::span<InputGrad> g) {
                  Tensor masked;
                  if (y.defined()) {
                    masked = Tensor::empty(y.shape());
                    ops::linear_relu_backward(gy.data(), y.data(), masked.data(), n, in_features,
                                              out_features);
                  }
                  const Tensor& gz = y.defined() ? masked : gy;
                  Tensor gx = g[0].needed ? Tensor::empty(in.shape()) : Tensor();
                  Tensor gw = g[1].needed ? Tensor::empty(w.shape()) : Tensor();
                  Tensor gb = g[2].needed ? Tensor::empty({out_features}) : Tensor();
                  ops::linear_backward(gz.data(), in.data(), w.data(), gx.data(), gw.data(),
                                       gb.data(), n, in_features, out_features);
                  if (g[0].needed) g[0].set(std::move(gx));
                  if (g[1].needed) g[1].set(std::move(gw));
                  if (g[2].needed) g[2].set(std::move(gb));
                });
}

}  // namespace

Variable linear(const Variable& x, const Variable& weight, const Variable& bias) {
  return linear_impl(x, weight, bias, false, "linear");
}

Variable linear_relu(const Variable& x, const Variable& weight, const Variable& bias) {
  return linear_impl(x, weight, bias, true, "linear_relu");
}

// ---- activations ----

Variable relu(const Variable& x) {
  Tensor y = unary_map(defined_data(x, "relu", "input"), ops::relu);
  if (!needs_graph({&x})) return Variable(std::move(y));
  return record("relu", {&x}, y, [y](const Tensor& gy, std::span<InputGrad> g) {
    Tensor gx = Tensor::empty(y.shape());
    ops::relu_backward(gy.data(), y.data(), gx.data(), y.numel());
    g[0].set(std::move(gx));
  });
}

Variable sigmoid(const Variable& x) {
  Tensor y = unary_map(defined_data(x, "sigmoid", "input"), ops::sigmoid);
  if (!needs_graph({&x})) return Variable(std::move(y));
  return record("sigmoid", {&x}, y, [y](const Tensor& gy, std::span<InputGrad> g) {
    Tensor gx = Tensor::empty(y.shape());
    const float* ys = y.data();
    const float* gs = gy.data();
    for (int64_t i = 0; i < y.numel(); ++i) gx.data()[i] = gs[i] * ys[i] * (1.0f - ys[i]);
    g[0].set(std::move(gx));
  });
}

Variable tanh(const Variable& x) {
  Tensor y = unary_map(defined_data(x, "tanh", "input"), ops::tanh);
  if (!needs_graph({&x})) return Variable(std::move(y));
  return record("tanh", {&x}, y, [y](const Tensor& gy, std::span<InputGrad> g) {
    Tensor gx = Tensor::empty(y.shape());
    const float* ys = y.data();
    const float* gs = gy.data();
    for (int64_t i = 0; i < y.numel(); ++i) gx.data()[i] = gs[i] * (1.0f - ys[i] * ys[i]);
    g[0].set(std::move(gx));
  });
}

Variable gelu(const Variable& x) {
  const Tensor& in = defined_data(x, "gelu", "input");
  Tensor y = unary_map(in, ops::gelu);
  if (!needs_graph({&x})) return Variable(std::move(y));
  return record("gelu", {&x}, std::move(y), [in](const Tensor& gy, std::span<InputGrad> g) {
    Tensor gx = Tensor::empty(in.shape());
    ops::gelu_backward(gy.data(), in.data(), gx.data(), in.numel());
    g[0].set(std::move(gx));
  });
}

namespace {

// [..., K] viewed as [M, K].
std::pair<int64_t, int64_t> rows_of_last_dim(const Tensor& x, const char* what) {
  if (x.dim() == 0) {
    throw UsageError(fmt::format("{}: needs at least one dimension, got a scalar", what));
  }
  const int64_t k = x.size(-1);
  return {k == 0 ? 0 : x.numel() / k, k};
}

}  // namespace

Variable softmax(const Variable& x) {
  const Tensor& in = defined_data(x, "softmax", "input");
  const auto [m, k] = rows_of_last_dim(in, "softmax");
  Tensor y = Tensor::empty(in.shape());
  ops::softmax_rows(in.data(), y.data(), m, k);
  if (!needs_graph({&x})) return Variable(std::move(y));
  return record("softmax", {&x}, y, [y, m, k](const Tensor& gy, std::span<InputGrad> g) {
    Tensor gx = Tensor::empty(y.shape());
    ops::softmax_backward_rows(gy.data(), y.data(), gx.data(), m, k);
    g[0].set(std::move(gx));
  });
}

Variable log_softmax(const Variable& x) {
  const Tensor& in = defined_data(x, "log_softmax", "input");
  const auto [m, k] = rows_of_last_dim(in, "log_softmax");
  Tensor y = Tensor::empty(in.shape());
  ops::log_softmax_rows(in.data(), y.data(), m, k);
  if (!needs_graph({&x})) return Variable(std::move(y));
  return record("log_softmax", {&x}, y, [y, m, k](const Tensor& gy, std::span<InputGrad> g) {
    Tensor gx = Tensor::empty(y.shape());
    ops::log_softmax_backward_rows(gy.data(), y.data(), gx.data(), m, k);
    g[0].set(std::move(gx));
  });
}

Variable dropout(const Variable& x, float p, bool training, Rng& rng) {
  const Tensor& in = defined_data(x, "dropout", "input");
  if (!(p >= 0.0f && p <= 1.0f)) {
    throw UsageError(fmt::format("dropout: probability {} is outside [0, 1]", p));
  }
  if (!training || p == 0.0f) return x;
  const float keep_scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  Tensor mask = Tensor::empty(in.shape());
  float* ms = mask.data();
  for (int64_t i = 0; i < in.numel(); ++i) ms[i] = rng.uniform() < p ? 0.0f : keep_scale;
  Tensor y = Tensor::empty(in.shape());
  ops::mul(in.data(), ms, y.data(), in.numel());
  if (!needs_graph({&x})) return Variable(std::move(y));
  return record("dropout", {&x}, std::move(y), [mask](const Tensor& gy, std::span<InputGrad> g) {
    Tensor gx = Tensor::empty(mask.shape());
    ops::mul(gy.data(), mask.data(), gx.data(), gx.numel());
    g[0].set(std::move(gx));
  });
}

// ---- reductions ----

Variable sum(const Variable& x) {
  const Tensor& in = defined_data(x, "sum", "input");
  Tensor out = Tensor::scalar(static_cast<float>(ops::sum(in.data(), in.numel())));
  if (!needs_graph({&x})) return Variable(std::move(out));
  return record("sum", {&x}, std::move(out),
                [shape = in.shape()](const Tensor& gy, std::span<InputGrad> g) {
                  g[0].set(Tensor::full(shape, gy.item()));
                });
}

Variable mean(const Variable& x) {
  const Tensor& in = defined_data(x, "mean", "input");
  if (in.numel() == 0) throw UsageError("mean: the input has no elements");
  const auto count = static_cast<double>(in.numel());
  Tensor out = Tensor::scalar(static_cast<float>(ops::sum(in.data(), in.numel()) / count));
  if (!needs_graph({&x})) return Variable(std::move(out));
  return record("mean", {&x}, std::move(out),
                [shape = in.shape(), count](const Tensor& gy, std::span<InputGrad> g) {
                  g[0].set(Tensor::full(shape, static_cast<float>(gy.item() / count)));
                });
}

Variable sum_rows(const Variable& x) {
  const Tensor& in = defined_data(x, "sum_rows", "input");
  if (in.dim() == 0) throw UsageError("sum_rows: needs at least one dimension, got a scalar");
  Shape rest(in.shape().begin() + 1, in.shape().end());
  const int64_t rows = in.size(0);
  const int64_t cols = shape_numel(rest);
  Tensor out = Tensor::empty(rest);
  ops::sum_rows(in.data(), out.data(), rows, cols);
  if (!needs_graph({&x})) return Variable(std::move(out));
  return record("sum_rows", {&x}, std::move(out),
                [shape = in.shape(), rows, cols](const Tensor& gy, std::span<InputGrad> g) {
                  Tensor gx = Tensor::empty(shape);
                  for (int64_t r = 0; r < rows; ++r) {
                    std::copy_n(gy.data(), cols, gx.data() + r * cols);
                  }
                  g[0].set(std::move(gx));
                });
}

// ---- shape ----

Variable reshape(const Variable& x, Shape shape) {
  const Tensor& in = defined_data(x, "reshape", "input");
  Tensor out = in.reshape(std::move(shape));
  if (!needs_graph({&x})) return Variable(std::move(out));
  return record("reshape", {&x}, std::move(out),
                [in_shape = in.shape()](const Tensor& gy, std::span<InputGrad> g) {
                  g[0].set(gy.reshape(in_shape), false);
                });
}

Variable flatten(const Variable& x) {
  const Tensor& in = defined_data(x, "flatten", "input");
  if (in.dim() == 0) throw UsageError("flatten: needs a batch dimension, got a scalar");
  return reshape(x, {in.size(0), in.size(0) == 0 ? 0 : in.numel() / in.size(0)});
}

}  // namespace dtrain
