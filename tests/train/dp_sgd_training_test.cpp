#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "dp_sgd_test_util.h"
#include "optim/optimizer_config.h"
#include "privacy/rdp_accountant.h"
#include "strategy/local_strategy.h"
#include "strategy/mirrored_strategy.h"
#include "testing/fault_fs.h"
#include "testing/test_job.h"
#include "train/dp_sgd.h"
#include "train/job_file.h"
#include "train/model_builder.h"
#include "train/run_job.h"
#include "train/trainer.h"

namespace dtrain::train {
namespace {

using test_util::dp_blobs;
using test_util::dp_job;
using test_util::file_bytes;
using Recorder = test_util::DpRecorder;

data::TensorDataset blobs(int part) { return dp_blobs(part); }

std::unique_ptr<strategy::LocalStrategy> local_for(const JobConfig& job) {
  Rng rng(job.seed);
  return std::make_unique<strategy::LocalStrategy>(
      build_model(job.model, rng),
      [&job](std::vector<Variable> p) { return nn::make_optimizer(job.optimizer, std::move(p)); });
}

Summary fit(const JobConfig& job, Recorder* recorder = nullptr) {
  auto strategy = local_for(job);
  Trainer trainer(job, *strategy, Logger::null());
  if (recorder != nullptr) trainer.add_callback(*recorder);
  return trainer.fit(blobs(1), blobs(2));
}

bool contains(const Recorder& recorder, const std::string& part) { return recorder.said(part); }

TEST(DpSgdTraining, LearnsBlobsAndReportsEpsilonEveryEpoch) {
  testing::TempDir dir;
  Recorder rec;
  const JobConfig job = dp_job(dir.path());
  const Summary s = fit(job, &rec);
  EXPECT_EQ(s.steps, 4 * 19);
  EXPECT_GT(s.test_accuracy, 0.85);
  ASSERT_EQ(rec.epochs.size(), 4u);
  for (size_t e = 0; e < rec.epochs.size(); ++e) {
    ASSERT_TRUE(rec.epochs[e].epsilon.has_value());
    // The accountant's figure for the steps taken so far, independently.
    privacy::RdpAccountant acc;
    acc.step(32.0 / 600.0, 1.0, rec.epochs[e].step);
    const privacy::PrivacySpent want = acc.epsilon(1e-5);
    EXPECT_DOUBLE_EQ(*rec.epochs[e].epsilon, want.balle);
    EXPECT_DOUBLE_EQ(*rec.epochs[e].epsilon_classic, want.classic);
    EXPECT_LT(*rec.epochs[e].epsilon, *rec.epochs[e].epsilon_classic);
    if (e > 0) {
      EXPECT_GT(*rec.epochs[e].epsilon, *rec.epochs[e - 1].epsilon);
    }
  }
  EXPECT_TRUE(contains(rec, "DP-SGD: sample rate q = 0.0533333"));
}

TEST(DpSgdTraining, TheBudgetStopNeverExceedsTheTarget) {
  // A target between epsilon after 40 and after 41 steps: the run stops
  // after step 40 of its 76, writes its final model and reports why.
  privacy::RdpAccountant acc;
  acc.step(32.0 / 600.0, 1.0, 40);
  const double at40 = acc.epsilon(1e-5).balle;
  acc.step(32.0 / 600.0, 1.0, 1);
  const double at41 = acc.epsilon(1e-5).balle;
  testing::TempDir dir;
  JobConfig job = dp_job(dir.path());
  job.privacy.target_epsilon = (at40 + at41) / 2;
  Recorder rec;
  const Summary s = fit(job, &rec);
  EXPECT_EQ(s.steps, 40);
  ASSERT_FALSE(rec.epochs.empty());
  EXPECT_LE(*rec.epochs.back().epsilon, job.privacy.target_epsilon);
  EXPECT_DOUBLE_EQ(*rec.epochs.back().epsilon, at40);
  EXPECT_TRUE(contains(rec, "privacy budget: the next step would spend epsilon"));
  EXPECT_TRUE(contains(rec, "at delta 1e-05; stopping after step 40"));
  EXPECT_FALSE(file_bytes(s.weights_path).empty());
}

TEST(DpSgdTraining, SolvesSigmaFromTheTargetAndStaysWithinIt) {
  testing::TempDir dir;
  JobConfig job = dp_job(dir.path());
  job.privacy.noise_multiplier = 0.0;
  job.privacy.target_epsilon = 2.0;
  job.train.epochs = 2;
  Recorder rec;
  const Summary s = fit(job, &rec);
  EXPECT_EQ(s.steps, 2 * 19);  // the solved sigma lasts the planned steps
  EXPECT_TRUE(contains(rec, "(solved for epsilon 2 over 38 steps)"));
  EXPECT_LE(*rec.epochs.back().epsilon, 2.0);
  EXPECT_GT(*rec.epochs.back().epsilon, 1.99);
}

TEST(DpSgdTraining, ResumingContinuesTheRunAndTheAccountantBitForBit) {
  testing::TempDir straight, stopped;
  Recorder a, b;
  fit(dp_job(straight.path()), &a);
  JobConfig first = dp_job(stopped.path());
  first.train.max_steps = 30;
  first.train.checkpoint_every_steps = 10;
  EXPECT_EQ(fit(first).steps, 30);
  fit(dp_job(stopped.path()), &b);
  EXPECT_EQ(file_bytes(straight.file("model.safetensors")),
            file_bytes(stopped.file("model.safetensors")));
  ASSERT_FALSE(b.epochs.empty());
  EXPECT_EQ(*a.epochs.back().epsilon, *b.epochs.back().epsilon);  // bit for bit
}

TEST(DpSgdTraining, AnEmptyPoissonBatchTakesANoiseOnlyStep) {
  // 20 samples, batch 1: q = 0.05, so about a third of the batches are empty.
  testing::TempDir dir;
  JobConfig job = dp_job(dir.path());
  job.train.batch_size = 1;
  const data::TensorDataset train = blobs(1).slice(0, 20);
  auto strategy = local_for(job);
  DpSgd dp(job, *strategy, train, 100);
  bool saw_empty = false;
  for (int64_t step = 0; step < 40 && !saw_empty; ++step) {
    const Tensor before = strategy->model().parameters()[0].data().clone();
    const strategy::StepStats stats = dp.step(step);
    if (stats.samples != 0) continue;
    saw_empty = true;
    EXPECT_EQ(stats.loss_sum, 0.0);
    const Tensor after = strategy->model().parameters()[0].data();
    EXPECT_NE(before.to_vector(), after.to_vector());  // noise moved the weights
  }
  EXPECT_TRUE(saw_empty);
}

TEST(DpSgdTraining, StrategiesOtherThanLocalAreConfigErrors) {
  testing::TempDir dir;
  JobConfig job = dp_job(dir.path());
  job.model.layers.erase(job.model.layers.begin() + 2);
  Rng rng(1);
  strategy::MirroredStrategy mirrored(
      build_model(job.model, rng),
      [&job] {
        Rng r(7);
        return std::unique_ptr<nn::Module>(build_model(job.model, r));
      },
      2,
      [&job](std::vector<Variable> p) { return nn::make_optimizer(job.optimizer, std::move(p)); });
  Trainer trainer(job, mirrored, Logger::null());
  try {
    trainer.fit(blobs(1), blobs(2));
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("privacy.enabled"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'mirrored'"), std::string::npos) << e.what();
  }
}

std::string job_text(const std::string& privacy_keys, const std::string& extra_layer = "") {
  std::string text = testing::TestJob().synthetic(200, 8, 3).mlp({16}).toml();
  if (!extra_layer.empty()) text += extra_layer;
  return text + "\n[privacy]\n" + privacy_keys;
}

void expect_config_error(const std::string& text, const std::string& part) {
  try {
    parse_job(text, "job.toml", {});
    FAIL() << "expected a ConfigError with " << part;
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(DpSgdJobFile, ReadsThePrivacyTable) {
  const JobFile f = parse_job(
      job_text("enabled = true\nnoise_multiplier = 1.1\nmax_grad_norm = 0.5\ndelta = 1e-6\n"
               "target_epsilon = 3.0\n"),
      "job.toml", {});
  EXPECT_TRUE(f.job.privacy.enabled);
  EXPECT_EQ(f.job.privacy.noise_multiplier, 1.1);
  EXPECT_EQ(f.job.privacy.max_grad_norm, 0.5);
  EXPECT_EQ(f.job.privacy.delta, 1e-6);
  EXPECT_EQ(f.job.privacy.target_epsilon, 3.0);
  EXPECT_FALSE(parse_job(job_text(""), "job.toml", {}).job.privacy.enabled);
}

TEST(DpSgdJobFile, BadValuesAreConfigErrorsNamingTheKey) {
  expect_config_error(job_text("enabled = true\n"), "privacy.enabled");
  expect_config_error(job_text("enabled = true\nnoise_multiplier = -1.0\n"),
                      "privacy.noise_multiplier");
  expect_config_error(job_text("enabled = true\nnoise_multiplier = 1.0\nmax_grad_norm = 0.0\n"),
                      "privacy.max_grad_norm");
  expect_config_error(job_text("enabled = true\nnoise_multiplier = 1.0\ndelta = 1.0\n"),
                      "privacy.delta");
  expect_config_error(job_text("enabled = true\nnoise_multiplier = 1.0\ntarget_epsilon = -2.0\n"),
                      "privacy.target_epsilon");
  expect_config_error(job_text("enabled = true\nnoise_multiplier = 1.0\nclip = 2\n"),
                      "privacy.clip");
}

TEST(DpSgdJobFile, BatchNormWithPrivacyIsAConfigError) {
  const std::string text =
      testing::TestJob().synthetic(200, 8, 3).set("model.input_shape", "[8]").toml() +
      "\n[[model.layers]]\ntype = \"linear\"\nout_features = 4\n"
      "\n[[model.layers]]\ntype = \"batchnorm1d\"\nname = \"bn\"\n"
      "\n[privacy]\nenabled = true\nnoise_multiplier = 1.0\n";
  expect_config_error(text, "batch normalisation mixes the samples");
}

TEST(DpSgdJobFile, StrategiesThatDoNotSumGradientsAreRefusedByTheLauncher) {
  comm::LaunchInfo launch;  // one process, not launched
  const auto refusal = [&](const std::string& distributed) -> std::string {
    const JobConfig job =
        parse_job(job_text("enabled = true\nnoise_multiplier = 1.0\n") + distributed, "job.toml",
                  {})
            .job;
    try {
      job_strategy(job, job_facts(job, launch), Logger::null());
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_EQ(refusal(""), "no error");  // one worker: local
  EXPECT_EQ(refusal("\n[distributed]\nstrategy = \"allreduce\"\nworkers = 2\n"), "no error");
  for (const std::string name : {"mirrored", "ps", "gossip"}) {
    const std::string why = refusal("\n[distributed]\nstrategy = \"" + name + "\"\nworkers = 2\n");
    EXPECT_NE(why.find("privacy.enabled"), std::string::npos) << why;
    EXPECT_NE(why.find("not '" + name + "'"), std::string::npos) << why;
    EXPECT_NE(why.find("'local', or 'allreduce'"), std::string::npos) << why;
  }
  // What allreduce does not combine with, by its key.
  const std::string accumulation = refusal(
      "\n[distributed]\nstrategy = \"allreduce\"\nworkers = 2\n"
      "[distributed.allreduce]\naccumulation_steps = 2\n");
  EXPECT_NE(accumulation.find("accumulation_steps"), std::string::npos) << accumulation;
  EXPECT_NE(accumulation.find("DP-SGD"), std::string::npos) << accumulation;
  const std::string dynamic =
      refusal("\n[distributed]\nstrategy = \"allreduce\"\nworkers = 2\ndynamic_batch = true\n");
  EXPECT_NE(dynamic.find("distributed.dynamic_batch"), std::string::npos) << dynamic;
}

}  // namespace
}  // namespace dtrain::train
