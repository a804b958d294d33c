// The data sets a job names ([data]): MNIST (IDX files), CSV files, CTR
// clicks generated from a known model, or Gaussian blobs.
// Errors: DataError for unreadable or malformed files (data/idx.h,
// data/csv.h); ConfigError when the samples do not have the model's input
// shape. Thread safety: pure functions. Blocking: reads the files.
#pragma once

#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/partition.h"
#include "train/job_config.h"

namespace dtrain::train {

struct Datasets {
  data::TensorDataset train;
  data::TensorDataset test;
  // ctr: the generating model's click probability of each test sample.
  std::vector<float> test_click_probability;
};

Datasets load_datasets(const JobConfig& job);

// How a partitioner splits a job's training set, as a text table of the
// labels each part holds (`dtrain partition`).
struct PartitionRequest {
  std::string kind = "iid";  // iid | label | dirichlet | quantity | shards
  int64_t parts = 4;
  uint64_t seed = 1;
  int64_t classes_per_worker = 2;
  double alpha = 0.5;
  double quantity_sigma = 1.0;
  int64_t shards_per_worker = 2;
};
std::string partition_table(const JobConfig& job, const Datasets& data,
                            const PartitionRequest& request);
// The partitioner's options for `request`.
data::PartitionOptions partition_options(const PartitionRequest& request);

// ConfigError on model.input_shape unless `data`'s samples have that shape.
void check_input_shape(const JobConfig& job, const data::TensorDataset& data);

}  // namespace dtrain::train
