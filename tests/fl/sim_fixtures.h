// Small models, datasets and client splits for the client-training and
// simulation tests: a linear layer or a 2-layer MLP over Gaussian blobs,
// each built the same on every call (fixed seeds).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "autograd/functions.h"
#include "core/rng.h"
#include "data/synthetic.h"
#include "fl/client_trainer.h"
#include "fl/flat_model.h"
#include "nn/activation.h"
#include "nn/dropout.h"
#include "nn/linear.h"
#include "nn/sequential.h"

namespace dtrain::fl::fixtures {

inline ModelFactory linear_model(int64_t features, int64_t classes, uint64_t seed = 7) {
  return [=]() -> std::unique_ptr<nn::Module> {
    Rng rng(seed);
    auto model = std::make_unique<nn::Sequential>();
    model->add(std::make_unique<nn::Linear>(features, classes, rng));
    return model;
  };
}

// dropout > 0: a Dropout layer after the ReLU (its Rng is extra state, not
// weights).
inline ModelFactory mlp_model(int64_t features, int64_t hidden, int64_t classes, uint64_t seed = 7,
                              float dropout = 0.0f) {
  return [=]() -> std::unique_ptr<nn::Module> {
    Rng rng(seed);
    auto model = std::make_unique<nn::Sequential>();
    model->add(std::make_unique<nn::Linear>(features, hidden, rng));
    model->add(std::make_unique<nn::ReLU>());
    if (dropout > 0.0f) model->add(std::make_unique<nn::Dropout>(dropout, rng));
    model->add(std::make_unique<nn::Linear>(hidden, classes, rng));
    return model;
  };
}

inline data::TensorDataset blobs(int64_t samples, int64_t features, int64_t classes,
                                 uint64_t seed = 3) {
  data::BlobsOptions o;
  o.samples = samples;
  o.features = features;
  o.num_classes = classes;
  o.seed = seed;
  return data::make_gaussian_blobs(o);
}

// Consecutive index ranges of the given sizes: parts[k] = [sum of sizes
// before k, ... + sizes[k]).
inline std::vector<std::vector<int64_t>> consecutive_parts(const std::vector<int64_t>& sizes) {
  std::vector<std::vector<int64_t>> parts;
  int64_t at = 0;
  for (int64_t size : sizes) {
    std::vector<int64_t> part(static_cast<size_t>(size));
    std::iota(part.begin(), part.end(), at);
    at += size;
    parts.push_back(std::move(part));
  }
  return parts;
}

// `clients` parts of `each` samples.
inline std::vector<std::vector<int64_t>> equal_parts(int64_t clients, int64_t each) {
  return consecutive_parts(std::vector<int64_t>(static_cast<size_t>(clients), each));
}

inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

inline double norm(const std::vector<float>& v) {
  double s = 0.0;
  for (float x : v) s += static_cast<double>(x) * static_cast<double>(x);
  return std::sqrt(s);
}

// The gradient of the mean cross-entropy over the samples at `indices` at
// `weights`, flat (a model without buffers); `loss` receives the loss.
inline std::vector<float> full_batch_gradient(const ModelFactory& make_model,
                                              const data::TensorDataset& dataset,
                                              std::span<const float> weights,
                                              std::span<const int64_t> indices,
                                              double* loss = nullptr) {
  auto model = make_model();
  load_flat(*model, weights);
  model->train();
  model->zero_grad();
  const data::TensorDataset part = dataset.subset(indices);
  Variable l = cross_entropy(model->forward(Variable(part.features())), part.labels());
  l.backward();
  if (loss != nullptr) *loss = l.item();
  std::vector<float> grad;
  for (const Variable& p : model->parameters()) {
    const auto g = p.grad().to_vector();
    grad.insert(grad.end(), g.begin(), g.end());
  }
  return grad;
}

}  // namespace dtrain::fl::fixtures
