// The picture of `dtrain partition --image FILE`: the labels each worker
// holds under a partitioner (the same counts as partition_table()), drawn as
// a workers × classes heat map with the counts in the cells (obs/heat_map.h).
//
// Thread safety: pure apart from the file written. Errors: what
// data::partition() throws for bad options, UsageError for an extension
// other than .svg/.png, io::FileError when the file cannot be written.
// Blocking: partitions the training set and writes the picture.
#pragma once

#include <string>

#include "obs/heat_map.h"
#include "train/datasets.h"
#include "train/job_config.h"

namespace dtrain::train {

// The partition's label counts: a row per worker, a column per class.
obs::CountMatrix partition_counts(const Datasets& data, const PartitionRequest& request);

// Draws partition_counts() into `path` (.svg or .png); returns its size.
obs::ImageSize write_partition_image(const JobConfig& job, const Datasets& data,
                                     const PartitionRequest& request, const std::string& path);

}  // namespace dtrain::train
