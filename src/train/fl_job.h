// A federated job assembled from its config: the data, each client's part of
// it, the model and the server's evaluation. The simulation (`dtrain fl`),
// the deployed server (`dtrain fl-server`) and a deployed client (`dtrain
// fl-client`) all start from it, so they see the same split and the same
// initial model for a seed.
//
// The split: the job's [data] partition (data/partition.h; "iid" when
// unset) over fl.clients parts, seeded with the job's seed.
// Errors: what load_datasets() and build_model() throw (DataError,
// ConfigError). Thread safety: make_model and evaluate may be called from
// any thread; evaluate serializes its calls (it owns one model).
// Blocking: load_fl_job reads the data files.
#pragma once

#include <cstdint>
#include <vector>

#include "fl/client_trainer.h"
#include "fl/simulation.h"
#include "train/datasets.h"
#include "train/job_config.h"

namespace dtrain::train {

struct FlJob {
  JobConfig job;
  Datasets data;
  std::vector<std::vector<int64_t>> parts;  // parts[k]: client k's training indices
  fl::ModelFactory make_model;              // every call: the job's initial weights
  fl::Evaluator evaluate;                   // the test set, eval_batch_size at a time
  int64_t model_size = 0;                   // floats in the flat model
};

FlJob load_fl_job(const JobConfig& job);

// How the job's clients upload (fl/upload_codec.h): the [compression]
// table's codec. ConfigError naming the key for what federated uploads
// cannot do: local SGD or a dense warm-up (compression.local_steps,
// compression.start_step: clients already train locally, fl.local_epochs)
// and DGC momentum (compression.momentum: an upload keeps no state between
// rounds); compression.error_feedback is ignored for the same reason.
compress::Options fl_upload_options(const JobConfig& job);

// The partitioner's options for a federated job's client split.
data::PartitionOptions fl_partition_options(const JobConfig& job);

}  // namespace dtrain::train
