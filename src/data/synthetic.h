// Synthetic datasets for fast tests and examples.
//
// Gaussian blobs: `num_classes` centres drawn once from N(0, center_spread^2)
// per coordinate; sample i has label i % num_classes (balanced classes,
// interleaved) and features centre[label] + N(0, noise^2) per coordinate.
// Everything comes from one Rng(seed), so a seed gives the same dataset on
// every platform. With the defaults the classes are well separated: a linear
// model learns them to high accuracy in a few epochs.
//
// Thread safety: pure function. Errors: UsageError for non-positive sizes.
#pragma once

#include <cstdint>

#include "data/dataset.h"

namespace dtrain::data {

struct BlobsOptions {
  int64_t samples = 1024;
  int64_t features = 16;
  int64_t num_classes = 4;
  float center_spread = 3.0f;  // standard deviation of the centres' coordinates
  float noise = 1.0f;          // standard deviation of samples around their centre
  uint64_t seed = 1;
};

// Features [samples, features], labels in [0, num_classes).
TensorDataset make_gaussian_blobs(const BlobsOptions& options);

}  // namespace dtrain::data
