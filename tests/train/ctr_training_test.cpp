// The click-through-rate example in small: embeddings + MLP trained on
// synthetic clicks reach the generating model's own held-out AUC.
#include <gtest/gtest.h>

#include "data/ctr.h"
#include "optim/optimizer_config.h"
#include "strategy/local_strategy.h"
#include "testing/fault_fs.h"
#include "train/metrics.h"
#include "train/model_builder.h"
#include "train/trainer.h"
#include "train_test_util.h"

namespace dtrain::train {
namespace {

using test_util::layer;

// 4 fields of 100 Zipf(1.5) ids in 1024 buckets; strong per-bucket weights
// (stddev 1) so that 100k samples pin them down.
JobConfig tiny_ctr_job(const std::string& output) {
  JobConfig job;
  job.name = "ctr-tiny";
  job.seed = 1;
  job.output = output;
  data::CtrOptions& ctr = job.data.ctr;
  ctr.fields = 4;
  ctr.vocabulary = 100;
  ctr.zipf_exponent = 1.5;
  ctr.hash_buckets = 1024;
  ctr.train_samples = 100000;
  ctr.test_samples = 10000;
  ctr.weight_stddev = 1.0;
  ctr.seed = 1;
  job.model.input_shape = {4};
  LayerConfig emb = layer("embedding", "embedding");
  emb.num_embeddings = 1024;
  emb.embedding_dim = 4;
  LayerConfig flatten = layer("flatten", "flatten");
  LayerConfig fc1 = layer("linear", "fc1", 16);
  LayerConfig relu = layer("relu", "relu");
  LayerConfig fc2 = layer("linear", "fc2", 2);
  job.model.layers = {emb, flatten, fc1, relu, fc2};
  job.optimizer.type = "adagrad";
  job.optimizer.lr = 0.2f;
  job.train.epochs = 2;
  job.train.batch_size = 128;
  job.train.eval_batch_size = 10000;
  job.train.log_every_steps = 0;
  return job;
}

TEST(CtrTraining, HeldOutAucReachesTheGeneratingModels) {
  testing::TempDir dir;
  const JobConfig job = tiny_ctr_job(dir.path());
  const data::CtrData data = data::make_ctr(job.data.ctr);
  Rng rng(job.seed);
  strategy::LocalStrategy strategy(build_model(job.model, rng), [&job](std::vector<Variable> p) {
    return nn::make_optimizer(job.optimizer, std::move(p));
  });
  Trainer trainer(job, strategy, Logger::null());
  const Summary summary = trainer.fit(data.train.samples, data.test.samples);
  EXPECT_EQ(summary.steps, 2 * 782);

  const std::vector<int64_t>& labels = data.test.samples.labels();
  const double generating = roc_auc(data.test.click_probability, labels);
  const double learned =
      roc_auc(positive_class_probability(strategy.model(), data.test.samples, 1000), labels);
  // The generating model is the best any model can do on these samples
  // (about 0.86 here); an untrained model scores about 0.5. Measured gap
  // with this seed: 0.006. Bound: 0.01, the example's target.
  EXPECT_GT(generating, 0.8);
  EXPECT_LT(generating - learned, 0.01) << "learned " << learned << ", generating " << generating;
}

}  // namespace
}  // namespace dtrain::train
