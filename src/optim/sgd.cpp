#include "optim/sgd.h"

#include <fmt/format.h>

#include "tensor/intra_op.h"

namespace dtrain::optim {

namespace {

// Below this many elements an update is not split over the intra-op threads
// (tensor/intra_op.h): waking a parked team costs more than it saves. The
// team polls between a step's fan-outs (a round trip of ~1 us,
// docs/performance.md), so the bar is 2^14, not 2^16, which left LeNet-5's
// fc1 weight (48,000 floats) serial.
constexpr int64_t kMinSplitElements = int64_t{1} << 14;

std::vector<std::string> sgd_buffers(const SgdOptions& options) {
  if (options.momentum == 0.0f) return {};
  return {"momentum_buffer"};
}
}  // namespace

Sgd::Sgd(std::vector<Shape> shapes, const SgdOptions& options)
    : UpdateRule("sgd", std::move(shapes), options.lr, sgd_buffers(options)), options_(options) {
  if (!(options.momentum >= 0.0f) || !(options.weight_decay >= 0.0f) ||
      !(options.dampening >= 0.0f && options.dampening <= 1.0f)) {
    fail(
        fmt::format("invalid momentum {}, dampening {} or weight_decay {} (momentum and "
                    "weight_decay must be non-negative, dampening in [0, 1])",
                    options.momentum, options.dampening, options.weight_decay));
  }
  if (options.nesterov && (options.momentum <= 0.0f || options.dampening != 0.0f)) {
    fail(
        fmt::format("nesterov momentum needs momentum > 0 and dampening 0, got momentum {} and "
                    "dampening {}",
                    options.momentum, options.dampening));
  }
}

void Sgd::update(size_t index, const Tensor& param, const Tensor& grad) {
  check_dense(index, param, grad);
  next_step(index);
  float* const p = param.data();
  const float* const g = grad.data();
  const int64_t n = param.numel();
  const float neg_lr = -lr();
  const float wd = options_.weight_decay;
  const float momentum = options_.momentum;
  bool first = false;
  float* const buf = momentum == 0.0f ? nullptr : state(index, 0.0f, &first)[0].data();
  const auto keep = static_cast<float>(1.0 - static_cast<double>(options_.dampening));
  const bool nesterov = options_.nesterov;
  auto run = [&](int64_t begin, int64_t end, int) {
    if (buf == nullptr) {
      for (int64_t j = begin; j < end; ++j) {
        const float d = g[j] + wd * p[j];
        p[j] += neg_lr * d;
      }
      return;
    }
    for (int64_t j = begin; j < end; ++j) {
      const float d = g[j] + wd * p[j];
      const float b = first ? d : momentum * buf[j] + keep * d;
      buf[j] = b;
      p[j] += neg_lr * (nesterov ? d + momentum * b : b);
    }
  };
  // Element-wise: any split over the intra-op threads gives the same bits.
  if (n < kMinSplitElements) {
    run(0, n, 0);
  } else {
    tensor::parallel_for_range(n, run);
  }
}

void Sgd::update_sparse(size_t index, const Tensor& param, const SparseRows& grad) {
  check_sparse(index, param, grad);
  if (options_.momentum != 0.0f || options_.weight_decay != 0.0f) {
    Tensor dense = Tensor::zeros(param.shape());
    grad.add_to(dense);
    update(index, param, dense);
    return;
  }
  next_step(index);
  const int64_t row = row_numel(param);
  const float neg_lr = -lr();
  const float* __restrict values = grad.values.data();
  float* __restrict p = param.data();
  for (size_t k = 0; k < grad.indices.size(); ++k) {
    float* __restrict prow = p + grad.indices[k] * row;
    const float* __restrict grow = values + static_cast<int64_t>(k) * row;
    for (int64_t j = 0; j < row; ++j) prow[j] += neg_lr * grow[j];
  }
}

}  // namespace dtrain::optim
