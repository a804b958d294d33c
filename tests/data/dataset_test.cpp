#include "data/dataset.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "data/synthetic.h"

namespace dtrain::data {
namespace {

TEST(TensorDataset, ValidatesLabelsAndShapes) {
  const Tensor x = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {3, 2});
  const TensorDataset ds(x, {0, 2, 1}, 3);
  EXPECT_EQ(ds.size(), 3);
  EXPECT_EQ(ds.sample_shape(), (Shape{2}));
  EXPECT_EQ(ds.sample_numel(), 2);
  try {
    TensorDataset(x, {0, 3, 1}, 3);
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), "dataset: label 3 of sample 1 is outside [0, 3)");
  }
  EXPECT_THROW(TensorDataset(x, {0, 1}, 3), UsageError);
  EXPECT_THROW(TensorDataset(Tensor::scalar(1.0f), {0}, 3), UsageError);
  EXPECT_THROW(TensorDataset(x, {0, 0, 0}, 0), UsageError);
}

TEST(TensorDataset, SliceSharesAndSubsetCopies) {
  const Tensor x = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {3, 2});
  const TensorDataset ds(x, {0, 2, 1}, 3);
  const TensorDataset tail = ds.slice(1, 2);
  EXPECT_EQ(tail.labels(), (std::vector<int64_t>{2, 1}));
  EXPECT_TRUE(tail.features().same_storage(x));
  EXPECT_EQ(tail.features().to_vector(), (std::vector<float>{3, 4, 5, 6}));
  const std::vector<int64_t> pick{2, 0, 2};
  const TensorDataset sub = ds.subset(pick);
  EXPECT_FALSE(sub.features().same_storage(x));
  EXPECT_EQ(sub.features().to_vector(), (std::vector<float>{5, 6, 1, 2, 5, 6}));
  EXPECT_EQ(sub.labels(), (std::vector<int64_t>{1, 0, 1}));
  EXPECT_THROW(ds.slice(2, 2), UsageError);
  const std::vector<int64_t> bad{3};
  EXPECT_THROW(ds.subset(bad), UsageError);
}

TEST(GaussianBlobs, DeterministicBalancedAndSeparable) {
  const BlobsOptions options{.samples = 400, .features = 8, .num_classes = 4, .seed = 3};
  const TensorDataset a = make_gaussian_blobs(options);
  const TensorDataset b = make_gaussian_blobs(options);
  EXPECT_EQ(a.features().to_vector(), b.features().to_vector());
  EXPECT_EQ(a.labels(), b.labels());
  BlobsOptions other = options;
  other.seed = 4;
  EXPECT_NE(make_gaussian_blobs(other).features().to_vector(), a.features().to_vector());
  EXPECT_EQ(a.features().shape(), (Shape{400, 8}));
  std::vector<int64_t> counts(4, 0);
  for (const int64_t label : a.labels()) ++counts[static_cast<size_t>(label)];
  EXPECT_EQ(counts, (std::vector<int64_t>{100, 100, 100, 100}));

  // Nearest class mean classifies almost every sample correctly.
  std::vector<std::vector<double>> mean(4, std::vector<double>(8, 0.0));
  for (int64_t i = 0; i < 400; ++i) {
    for (int64_t f = 0; f < 8; ++f) {
      mean[static_cast<size_t>(a.labels()[i])][f] += a.features().at({i, f}) / 100.0;
    }
  }
  int correct = 0;
  for (int64_t i = 0; i < 400; ++i) {
    int64_t best = 0;
    double best_distance = 1e300;
    for (int64_t c = 0; c < 4; ++c) {
      double d = 0;
      for (int64_t f = 0; f < 8; ++f) {
        const double diff = a.features().at({i, f}) - mean[static_cast<size_t>(c)][f];
        d += diff * diff;
      }
      if (d < best_distance) best_distance = d, best = c;
    }
    correct += best == a.labels()[i];
  }
  EXPECT_GT(correct, 380);
  EXPECT_THROW(make_gaussian_blobs({.samples = 0}), UsageError);
}

}  // namespace
}  // namespace dtrain::data
