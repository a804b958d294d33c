// IDX reader: the file format of the MNIST database
// (http://yann.lecun.com/exdb/mnist/), and load_mnist() for its four files.
//
// An IDX file is a 4-byte magic 0x00 0x00 <type> <ndims>, ndims big-endian
// uint32 extents, then the elements. dtrain reads unsigned bytes (type 0x08):
// images with magic 0x00000803 (N, rows, cols) and labels with magic
// 0x00000801 (N). Pixels become floats in [0, 1] (p / 255), optionally
// normalised as (x - mean) / stddev, in a Tensor [N, 1, rows, cols].
//
// Errors: DataError "<file>: <problem>" with expected vs got for a missing
// or unreadable file, a wrong magic, a truncated or over-long file, image and
// label counts that differ, and labels outside [0, num_classes). The whole
// file is validated even when `limit` reads fewer samples.
//
// Ownership: returns fresh tensors. Thread safety: pure functions of their
// arguments. Blocking: reads whole files (MNIST train images: 47 MB).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "io/file_system.h"

namespace dtrain::data {

struct IdxOptions {
  int64_t limit = 0;         // read only the first `limit` samples; 0: all
  bool normalize = false;    // (x - mean) / stddev after scaling to [0, 1]
  float mean = 0.1307f;      // MNIST training-set pixel mean
  float stddev = 0.3081f;    // and standard deviation
  int64_t num_classes = 10;  // labels must lie in [0, num_classes)
};

// Images as [N, 1, rows, cols] floats.
Tensor read_idx_images(const std::string& path, const IdxOptions& options = {},
                       io::FileSystem& fs = io::default_file_system());
// Labels, checked against options.num_classes.
std::vector<int64_t> read_idx_labels(const std::string& path, const IdxOptions& options = {},
                                     io::FileSystem& fs = io::default_file_system());
// An image file and its label file; DataError when their counts differ.
TensorDataset read_idx_dataset(const std::string& images_path, const std::string& labels_path,
                               const IdxOptions& options = {},
                               io::FileSystem& fs = io::default_file_system());

enum class MnistSplit { kTrain, kTest };

// <dir>/train-images-idx3-ubyte + train-labels-idx1-ubyte (60000 samples) or
// t10k-images-idx3-ubyte + t10k-labels-idx1-ubyte (10000). A missing file
// gives a DataError with the hint to run scripts/fetch_mnist.sh.
TensorDataset load_mnist(const std::string& dir, MnistSplit split, const IdxOptions& options = {},
                         io::FileSystem& fs = io::default_file_system());

}  // namespace dtrain::data
