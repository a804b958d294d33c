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
