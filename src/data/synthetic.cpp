#include "data/synthetic.h"

#include <fmt/format.h>

#include "core/error.h"
#include "core/rng.h"

namespace dtrain::data {

TensorDataset make_gaussian_blobs(const BlobsOptions& options) {
  if (options.samples < 1 || options.features < 1 || options.num_classes < 1) {
    throw UsageError(
        fmt::format("gaussian blobs: samples, features and num_classes must be "
                    "positive, got {}, {}, {}",
                    options.samples, options.features, options.num_classes));
  }
  Rng rng(options.seed);
  std::vector<float> centers(static_cast<size_t>(options.num_classes * options.features));
  for (float& c : centers) c = rng.normal(0.0f, options.center_spread);

  Tensor features = Tensor::empty({options.samples, options.features});
  std::vector<int64_t> labels(static_cast<size_t>(options.samples));
  float* x = features.data();
  for (int64_t i = 0; i < options.samples; ++i) {
    const int64_t label = i % options.num_classes;
    labels[static_cast<size_t>(i)] = label;
    const float* center = centers.data() + label * options.features;
    for (int64_t f = 0; f < options.features; ++f) {
      x[i * options.features + f] = center[f] + rng.normal(0.0f, options.noise);
    }
  }
  return TensorDataset(std::move(features), std::move(labels), options.num_classes);
}

}  // namespace dtrain::data
