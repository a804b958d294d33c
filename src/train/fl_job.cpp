#include "train/fl_job.h"

#include <memory>
#include <mutex>

#include "core/rng.h"
#include "fl/flat_model.h"
#include "train/model_builder.h"
#include "train/trainer.h"

namespace dtrain::train {

data::PartitionOptions fl_partition_options(const JobConfig& job) {
  data::PartitionOptions p;
  p.kind = job.data.partition.empty() ? "iid" : job.data.partition;
  p.workers = job.fl.clients;
  p.seed = job.seed;
  p.classes_per_worker = job.data.classes_per_worker;
  p.alpha = job.data.dirichlet_alpha;
  p.quantity_sigma = job.data.quantity_sigma;
  p.shards_per_worker = job.data.shards_per_worker;
  return p;
}

compress::Options fl_upload_options(const JobConfig& job) {
  const strategy::CompressionSettings& s = job.compression.settings;
  if (s.local_steps > 1) {
    throw job.lines.error("compression.local_steps",
                          "federated clients already train locally (fl.local_epochs); local SGD "
                          "applies to the training strategies");
  }
  if (s.start_step > 0) {
    throw job.lines.error("compression.start_step",
                          "a federated upload has no dense warm-up; remove the key");
  }
  if (s.codec.momentum > 0.0) {
    throw job.lines.error("compression.momentum",
                          "DGC momentum needs state kept between uploads, which federated "
                          "clients do not keep; remove the key");
  }
  return s.codec;
}

FlJob load_fl_job(const JobConfig& job) {
  FlJob out;
  out.job = job;
  out.data = load_datasets(job);
  check_input_shape(job, out.data.train);
  out.parts = data::partition(out.data.train.labels(), out.data.train.num_classes(),
                              fl_partition_options(job));
  const ModelConfig model_config = job.model;
  const uint64_t seed = job.seed;
  const std::string source = job.source;
  out.make_model = [model_config, seed, source]() -> std::unique_ptr<nn::Module> {
    Rng rng(seed);
    return build_model(model_config, rng, source);
  };
  struct EvalState {
    std::mutex mutex;
    std::unique_ptr<nn::Module> model;
  };
  auto state = std::make_shared<EvalState>();
  state->model = out.make_model();
  out.model_size = fl::flat_size(*state->model);
  const data::TensorDataset test = out.data.test;
  const int64_t batch = job.train.eval_batch_size;
  out.evaluate = [state, test, batch](std::span<const float> weights) {
    std::lock_guard lock(state->mutex);
    fl::load_flat(*state->model, weights);
    const EvalResult r = evaluate(*state->model, test, batch);
    return fl::Evaluation{r.loss, r.accuracy, r.samples};
  };
  return out;
}

}  // namespace dtrain::train
