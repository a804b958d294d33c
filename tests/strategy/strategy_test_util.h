// Shared by the strategy tests: a small MLP (6 -> 16 -> 3) built from a
// seed, an SGD-with-momentum factory, random batches for it, parameter
// snapshots to compare, and workers run as threads over an InProcHub.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "comm/collectives/communicator.h"
#include "comm/transport/inproc_transport.h"
#include "core/rng.h"
#include "nn/activation.h"
#include "nn/linear.h"
#include "nn/sequential.h"
#include "optim/sgd.h"
#include "strategy/strategy.h"

namespace dtrain::strategy::test {

inline std::unique_ptr<nn::Module> make_mlp(uint64_t seed) {
  Rng rng(seed);
  auto model = std::make_unique<nn::Sequential>();
  model->add("fc1", std::make_unique<nn::Linear>(6, 16, rng));
  model->add("relu", std::make_unique<nn::ReLU>());
  model->add("fc2", std::make_unique<nn::Linear>(16, 3, rng));
  return model;
}

inline OptimizerFactory sgd() {
  return [](std::vector<Variable> params) {
    optim::SgdOptions o;
    o.lr = 0.1f;
    o.momentum = 0.9f;
    return nn::Optimizer::make<optim::Sgd>(std::move(params), o);
  };
}

struct Batch {
  Tensor x;
  std::vector<int64_t> y;
};

// `count` batches of `rows` samples with 6 features and labels in [0, 3).
inline std::vector<Batch> make_batches(int count, int64_t rows, uint64_t seed) {
  Rng rng(seed);
  std::vector<Batch> batches;
  for (int b = 0; b < count; ++b) {
    Batch batch{Tensor::empty({rows, 6}), {}};
    for (float& v : batch.x.span()) v = rng.normal();
    for (int64_t i = 0; i < rows; ++i) batch.y.push_back(static_cast<int64_t>(rng.below(3)));
    batches.push_back(std::move(batch));
  }
  return batches;
}

// Every parameter's values, in order.
inline std::vector<std::vector<float>> snapshot(nn::Module& model) {
  std::vector<std::vector<float>> out;
  for (const Variable& p : model.parameters()) out.push_back(p.data().to_vector());
  return out;
}

// The largest |a - b| / max(1e-3, |a|) over every value of two snapshots.
inline double max_relative_difference(const std::vector<std::vector<float>>& a,
                                      const std::vector<std::vector<float>>& b) {
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    for (size_t k = 0; k < a[i].size(); ++k) {
      const double d =
          std::abs(double(a[i][k]) - double(b[i][k])) / std::max(1e-3, std::abs(double(a[i][k])));
      worst = std::max(worst, d);
    }
  }
  return worst;
}

using namespace std::chrono_literals;

inline comm::CommunicatorOptions comm_options(std::chrono::milliseconds timeout = 20s) {
  comm::CommunicatorOptions o;
  o.timeout = timeout;
  o.small_allreduce_bytes = 256;  // the ring for the larger buckets, halving-doubling below
  return o;
}

// Runs body(rank, communicator, hub) on `world` threads; rethrows the first
// rank's error.
inline void run_workers(int world,
                        const std::function<void(int, comm::Communicator&, comm::InProcHub&)>& body,
                        std::chrono::milliseconds timeout = 20s) {
  comm::InProcHub hub(world);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        try {
          auto transport = hub.transport(r);
          comm::Communicator comm(*transport, comm_options(timeout));
          body(r, comm, hub);
        } catch (...) {
          errors[static_cast<size_t>(r)] = std::current_exception();
        }
      });
    }
  }
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace dtrain::strategy::test
