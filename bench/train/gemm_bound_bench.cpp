// The GEMM-only bound of one training step: the time OpenBLAS (one thread)
// needs for the matrix products of the MNIST MLP or LeNet-5 at batch B, and
// nothing else, as samples per second. A training step can be no faster than
// its matrix products done by the same BLAS, so a trainer's figure divided by
// this one says how much of the machine it uses beyond them.
//
// The products per step (N = B samples; a layer maps I to O features, a
// convolution has R = C*K*K unfolded rows and Q output pixels per sample):
//   linear:  forward [N, I].[I, O]; weight gradient [O, N].[N, I];
//            input gradient [N, O].[O, I] (not for the first layer)
//   conv2d:  as one batch-wide im2col product, forward [N*Q, R].[R, O];
//            weight gradient [R, N*Q].[N*Q, O]; input gradient
//            [N*Q, O].[O, R] (not for the first layer)
// Each product is timed both ways round (C or C^T = B^T . A^T, the same
// flops) and the faster is kept: the bound is the best this BLAS does.
// MLP 784-256-256-10; LeNet-5 conv(1->6, 5x5, pad 2) on 28x28, pool,
// conv(6->16, 5x5) on 14x14, pool, linear 400-120-84-10.
// Prints one JSON line per repetition: {"model", "samples_per_s", "gflop_per_s",
// "mflop_per_step"}; GEMM_BOUND_VERBOSE=1 also prints each product's GFLOP/s
// both ways round on stderr.
// Usage: gemm_bound_bench mlp|lenet5 STEPS REPS [BATCH]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "tensor/blas.h"

namespace {

struct Product {
  int64_t m, n, k;  // C[m, n] = A[m, k] . B[k, n]
};

void add_linear(std::vector<Product>& p, int64_t batch, int64_t in, int64_t out, bool first) {
  p.push_back({batch, out, in});
  p.push_back({out, in, batch});
  if (!first) p.push_back({batch, in, out});
}

void add_conv(std::vector<Product>& p, int64_t batch, int64_t rows, int64_t pixels, int64_t out,
              bool first) {
  const int64_t nq = batch * pixels;
  p.push_back({nq, out, rows});
  p.push_back({rows, out, nq});
  if (!first) p.push_back({nq, rows, out});
}

std::vector<Product> products(const std::string& model, int64_t batch) {
  std::vector<Product> p;
  if (model == "mlp") {
    add_linear(p, batch, 784, 256, true);
    add_linear(p, batch, 256, 256, false);
    add_linear(p, batch, 256, 10, false);
  } else {
    add_conv(p, batch, 1 * 5 * 5, 28 * 28, 6, true);
    add_conv(p, batch, 6 * 5 * 5, 10 * 10, 16, false);
    add_linear(p, batch, 400, 120, false);
    add_linear(p, batch, 120, 84, false);
    add_linear(p, batch, 84, 10, false);
  }
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s mlp|lenet5 STEPS REPS [BATCH]\n", argv[0]);
    return 2;
  }
  const std::string model = argv[1];
  const int steps = std::atoi(argv[2]);
  const int reps = std::atoi(argv[3]);
  const int64_t batch = argc > 4 ? std::atoll(argv[4]) : 128;
  const std::vector<Product> ps = products(model, batch);
  struct Buffers {
    std::vector<float> a, b, c;
  };
  std::vector<Buffers> buffers;
  double flop = 0.0;
  for (const Product& p : ps) {
    const auto size = [](int64_t x, int64_t y) { return static_cast<size_t>(x * y); };
    buffers.push_back({std::vector<float>(size(p.m, p.k), 0.01f),
                       std::vector<float>(size(p.k, p.n), 0.02f),
                       std::vector<float>(size(p.m, p.n))});
    flop += 2.0 * static_cast<double>(p.m * p.n * p.k);
  }
  // transposed[i]: compute C^T [n, m] = B^T [n, k] . A^T [k, m] instead.
  std::vector<bool> transposed(ps.size(), false);
  auto run = [&](size_t i) {
    const Product& p = ps[i];
    Buffers& b = buffers[i];
    if (transposed[i]) {
      dtrain::blas::sgemm(false, false, p.n, p.m, p.k, 1.0f, b.b.data(), p.k, b.a.data(), p.m, 0.0f,
                          b.c.data(), p.m);
    } else {
      dtrain::blas::sgemm(false, false, p.m, p.n, p.k, 1.0f, b.a.data(), p.k, b.b.data(), p.n, 0.0f,
                          b.c.data(), p.n);
    }
  };
  auto seconds_of = [&](size_t i) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < 10; ++t) run(i);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  for (size_t i = 0; i < ps.size(); ++i) {
    run(i);
    const double straight = seconds_of(i);
    transposed[i] = true;
    run(i);
    const double turned = seconds_of(i);
    transposed[i] = turned < straight;
    if (std::getenv("GEMM_BOUND_VERBOSE") != nullptr) {
      std::fprintf(stderr, "%ld x %ld x %ld: %.1f / %.1f GFLOP/s\n", long(ps[i].m), long(ps[i].n),
                   long(ps[i].k), 2e-8 * double(ps[i].m * ps[i].n * ps[i].k) / straight,
                   2e-8 * double(ps[i].m * ps[i].n * ps[i].k) / turned);
    }
  }
  auto step = [&] {
    for (size_t i = 0; i < ps.size(); ++i) run(i);
  };
  for (int i = 0; i < 5; ++i) step();
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < steps; ++i) step();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf(
        "{\"model\": \"%s\", \"samples_per_s\": %.1f, \"gflop_per_s\": %.1f, "
        "\"mflop_per_step\": %.2f}\n",
        model.c_str(), static_cast<double>(steps * batch) / seconds, flop * steps / seconds * 1e-9,
        flop * 1e-6);
    std::fflush(stdout);
  }
  return 0;
}
