#include "train/trainer.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "data/synthetic.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "optim/optimizer_config.h"
#include "strategy/local_strategy.h"
#include "strategy/mirrored_strategy.h"
#include "testing/fault_fs.h"
#include "train/model_builder.h"
#include "train_test_util.h"

namespace dtrain::train {
namespace {

using test_util::layer;

JobConfig blobs_job(const std::string& output) {
  JobConfig job;
  job.name = "blobs";
  job.seed = 3;
  job.output = output;
  job.model.input_shape = {8};
  LayerConfig fc1 = layer("linear", "fc1", 16);
  LayerConfig relu = layer("relu", "relu");
  LayerConfig drop = layer("dropout", "drop");
  drop.p = 0.1f;
  LayerConfig fc2 = layer("linear", "fc2", 3);
  job.model.layers = {fc1, relu, drop, fc2};
  job.optimizer.type = "sgd";
  job.optimizer.lr = 0.05f;
  job.optimizer.momentum = 0.9f;
  job.schedule.type = "cosine";
  job.schedule.warmup_steps = 3;
  job.train.epochs = 4;
  job.train.batch_size = 32;
  job.train.log_every_steps = 5;
  job.train.eval_batch_size = 50;
  return job;
}

// One fixed problem (the same centres): `part` 1 is the training set, 2 the
// test set, 4 a third sample.
data::TensorDataset blobs(int64_t samples, int part) {
  data::BlobsOptions o;
  o.samples = 1000;
  o.features = 8;
  o.num_classes = 3;
  o.seed = 11;
  const data::TensorDataset all = data::make_gaussian_blobs(o);
  const int64_t start = part == 1 ? 0 : (part == 2 ? 600 : 800);
  return all.slice(start, std::min<int64_t>(samples, part == 1 ? 600 : 200));
}

std::unique_ptr<strategy::Strategy> local_for(const JobConfig& job) {
  Rng rng(job.seed);
  return std::make_unique<strategy::LocalStrategy>(
      build_model(job.model, rng),
      [&job](std::vector<Variable> p) { return nn::make_optimizer(job.optimizer, std::move(p)); });
}

Summary fit(const JobConfig& job, const data::TensorDataset& train,
            const data::TensorDataset& test) {
  auto strategy = local_for(job);
  Trainer trainer(job, *strategy, Logger::null());
  return trainer.fit(train, test);
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(Trainer, LearnsSeparableBlobs) {
  testing::TempDir dir;
  const Summary s = fit(blobs_job(dir.path()), blobs(600, 1), blobs(200, 2));
  EXPECT_EQ(s.epochs, 4);
  EXPECT_EQ(s.steps, 4 * 19);
  EXPECT_GT(s.test_accuracy, 0.95);
  // The saved weights are the trained model.
  JobConfig job = blobs_job(dir.path());
  Rng rng(99);
  auto model = build_model(job.model, rng);
  model->load_state_dict(io::load_safetensors(s.weights_path));
  EXPECT_NEAR(evaluate(*model, blobs(200, 2), 64).accuracy, s.test_accuracy, 1e-12);
}

TEST(Trainer, SameSeedSameRunBitForBit) {
  testing::TempDir a, b;
  fit(blobs_job(a.path()), blobs(300, 1), blobs(100, 2));
  fit(blobs_job(b.path()), blobs(300, 1), blobs(100, 2));
  EXPECT_EQ(file_bytes(a.file("model.safetensors")), file_bytes(b.file("model.safetensors")));
}

TEST(Trainer, ResumingMidEpochContinuesExactly) {
  // One run straight through; another stopped at step 30 (mid-epoch 2, a
  // checkpoint every 10 steps) and resumed: the final weights are identical
  // (optimizer state, schedule, data position and dropout RNG all restored).
  testing::TempDir straight, stopped;
  const auto train = blobs(600, 1), test = blobs(100, 2);
  fit(blobs_job(straight.path()), train, test);

  JobConfig first = blobs_job(stopped.path());
  first.train.max_steps = 30;
  first.train.checkpoint_every_steps = 10;
  EXPECT_EQ(fit(first, train, test).steps, 30);
  JobConfig second = blobs_job(stopped.path());
  EXPECT_EQ(fit(second, train, test).steps, 4 * 19);
  EXPECT_EQ(file_bytes(straight.file("model.safetensors")),
            file_bytes(stopped.file("model.safetensors")));
}

TEST(Trainer, CorruptNewestCheckpointFallsBackToThePreviousOne) {
  testing::TempDir dir;
  const auto train = blobs(300, 1), test = blobs(100, 2);
  JobConfig job = blobs_job(dir.path());
  job.train.max_steps = 20;
  job.train.checkpoint_every_steps = 5;
  fit(job, train, test);
  // Flip a byte in the newest checkpoint.
  const std::string newest = dir.file("ckpt-20.dtc");
  std::string bytes = file_bytes(newest);
  bytes[bytes.size() / 2] ^= 0x5a;
  std::ofstream(newest, std::ios::binary | std::ios::trunc) << bytes;
  job.train.max_steps = 0;
  auto strategy = local_for(job);
  Trainer trainer(job, *strategy, Logger::null());
  struct Messages : Callback {
    std::vector<std::string> lines;
    void on_train_begin(const RunInfo& info) override { start = info.start_step; }
    void on_message(const std::string& m) override { lines.push_back(m); }
    int64_t start = -1;
  } messages;
  trainer.add_callback(messages);
  trainer.fit(train, test);
  EXPECT_EQ(messages.start, 15);
}

TEST(Trainer, RefusesACheckpointOfAnotherBatchSize) {
  testing::TempDir dir;
  const auto train = blobs(300, 1), test = blobs(100, 2);
  JobConfig job = blobs_job(dir.path());
  job.train.max_steps = 5;
  fit(job, train, test);
  job.train.batch_size = 16;
  EXPECT_THROW(fit(job, train, test), CheckpointError);
  job.resume = false;
  EXPECT_NO_THROW(fit(job, train, test));
}

TEST(Trainer, ATinyTimeIntervalCheckpointsAfterEveryStep) {
  testing::TempDir dir;
  JobConfig job = blobs_job(dir.path());
  job.train.max_steps = 7;
  job.train.keep_checkpoints = 100;
  job.train.checkpoint_every_seconds = 1e-9;
  fit(job, blobs(300, 1), blobs(100, 2));
  io::CheckpointDirectory ckpts(dir.path(), 100, io::default_file_system(), Logger::null());
  EXPECT_EQ(ckpts.steps(), (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(io::read_checkpoint(ckpts.path_for(4)).metadata.at("batch_in_epoch"), "4");
}

TEST(Trainer, WithoutATimeIntervalOnlyEpochEndsCheckpoint) {
  testing::TempDir dir;
  JobConfig job = blobs_job(dir.path());  // 300 samples, batch 32: 10 steps an epoch
  job.train.epochs = 2;
  job.train.keep_checkpoints = 100;
  fit(job, blobs(300, 1), blobs(100, 2));
  io::CheckpointDirectory ckpts(dir.path(), 100, io::default_file_system(), Logger::null());
  EXPECT_EQ(ckpts.steps(), (std::vector<int64_t>{10, 20}));
}

TEST(Trainer, AReportedStepHasThePreviousCheckpointOnDisk) {
  // Checkpoints are written in the background, but handing one over waits
  // for the previous write: when step N is reported, ckpt-(N-1) is complete.
  testing::TempDir dir;
  JobConfig job = blobs_job(dir.path());
  job.train.max_steps = 12;
  job.train.checkpoint_every_steps = 1;
  job.train.keep_checkpoints = 100;
  auto strategy = local_for(job);
  Trainer trainer(job, *strategy, Logger::null());
  struct Check : Callback {
    std::string dir;
    std::vector<int64_t> missing;
    void on_step_end(const StepInfo& s) override {
      if (s.step < 2) return;
      const std::string path = dir + "/ckpt-" + std::to_string(s.step - 1) + ".dtc";
      try {
        if (io::read_checkpoint(path).step != s.step - 1) missing.push_back(s.step - 1);
      } catch (const CheckpointError&) {
        missing.push_back(s.step - 1);
      }
    }
  } check;
  check.dir = dir.path();
  trainer.add_callback(check);
  trainer.fit(blobs(300, 1), blobs(100, 2));
  EXPECT_TRUE(check.missing.empty())
      << "not on disk when the next step was reported: step " << check.missing.front();
}

TEST(Trainer, AFailedBackgroundWriteEndsFitWithACheckpointError) {
  // The output "folder" is a file: no checkpoint can be written.
  testing::TempDir dir;
  const std::string blocked = dir.file("not-a-folder");
  std::ofstream(blocked) << "x";
  JobConfig job = blobs_job(blocked);
  job.resume = false;
  job.train.max_steps = 6;
  job.train.checkpoint_every_steps = 2;
  try {
    fit(job, blobs(300, 1), blobs(100, 2));
    ADD_FAILURE() << "fit() returned although no checkpoint could be written";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("ckpt-2.dtc"), std::string::npos) << e.what();
  }
}

TEST(Trainer, AFreshRunSetsAsideTheCheckpointsOfAnEarlierRun) {
  testing::TempDir dir;
  JobConfig job = blobs_job(dir.path());
  job.resume = false;
  job.train.checkpoint_every_steps = 2;
  job.train.keep_checkpoints = 2;
  job.train.max_steps = 8;
  fit(job, blobs(300, 1), blobs(100, 2));  // leaves ckpt-6 and ckpt-8
  job.train.max_steps = 4;
  fit(job, blobs(300, 1), blobs(100, 2));  // afresh: its own ckpt-2 and ckpt-4 only
  io::CheckpointDirectory now(dir.path(), 2, io::default_file_system(), Logger::null());
  EXPECT_EQ(now.steps(), (std::vector<int64_t>{2, 4}));
  io::CheckpointDirectory aside(dir.file("earlier-run"), 2, io::default_file_system(),
                                Logger::null());
  EXPECT_EQ(aside.steps(), (std::vector<int64_t>{6, 8}));
  job.train.max_steps = 2;
  fit(job, blobs(300, 1), blobs(100, 2));  // afresh again: the previous run's replace those
  EXPECT_EQ(now.steps(), (std::vector<int64_t>{2}));
  EXPECT_EQ(aside.steps(), (std::vector<int64_t>{2, 4}));
}

TEST(Trainer, WritesMetricsAsJsonLines) {
  testing::TempDir dir;
  JobConfig job = blobs_job(dir.path());
  job.train.epochs = 2;
  auto strategy = local_for(job);
  Trainer trainer(job, *strategy, Logger::null());
  JsonLinesWriter metrics(dir.file("metrics.jsonl"), job.train.log_every_steps);
  trainer.add_callback(metrics);
  trainer.fit(blobs(300, 1), blobs(100, 2));
  std::ifstream in(dir.file("metrics.jsonl"));
  std::vector<nlohmann::json> events;
  for (std::string line; std::getline(in, line);) events.push_back(nlohmann::json::parse(line));
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.front()["event"], "begin");
  EXPECT_EQ(events.back()["event"], "end");
  int epochs = 0, steps = 0;
  double previous_time = 0.0;
  for (const auto& e : events) {
    // Wall-clock seconds since the Unix epoch (after 2020), never decreasing
    // by more than a clock step could.
    ASSERT_TRUE(e.contains("time")) << e.dump();
    const double time = e["time"].get<double>();
    EXPECT_GT(time, 1.6e9);
    EXPECT_GE(time, previous_time - 1.0);
    previous_time = time;
    EXPECT_FALSE(e.contains("split")) << "one worker has no split: " << e.dump();
    if (e["event"] == "epoch") ++epochs;
    if (e["event"] == "step") {
      ++steps;
      EXPECT_EQ(e["step"].get<int>() % 5, 0);
    }
  }
  EXPECT_EQ(epochs, 2);
  EXPECT_EQ(steps, 2 * 10 / 5);
}

// A run killed mid-line leaves a torn last line; the next run's events start
// on a line of their own.
TEST(Trainer, MetricsOfAResumedRunStartAfterATornLine) {
  testing::TempDir dir;
  {
    std::ofstream torn(dir.file("metrics.jsonl"));
    torn << "{\"event\":\"begin\"}\n{\"event\":\"st";
  }
  {
    JsonLinesWriter metrics(dir.file("metrics.jsonl"), 1);
    metrics.on_train_begin(RunInfo{});
  }
  std::ifstream in(dir.file("metrics.jsonl"));
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[1], "{\"event\":\"st");
  EXPECT_EQ(nlohmann::json::parse(lines[2])["event"], "begin");
}

TEST(Trainer, MirroredMatchesLocal) {
  testing::TempDir a, b;
  JobConfig job = blobs_job(a.path());
  job.model.layers.erase(job.model.layers.begin() +
                         2);  // no dropout: replicas draw their own masks
  job.train.epochs = 2;
  const auto train = blobs(300, 1), test = blobs(100, 2);
  fit(job, train, test);
  JobConfig mjob = job;
  mjob.output = b.path();
  Rng rng(mjob.seed);
  strategy::MirroredStrategy mirrored(
      build_model(mjob.model, rng),
      [&mjob] {
        Rng r(7);
        return std::unique_ptr<nn::Module>(build_model(mjob.model, r));
      },
      3,
      [&mjob](std::vector<Variable> p) {
        return nn::make_optimizer(mjob.optimizer, std::move(p));
      });
  Trainer trainer(mjob, mirrored, Logger::null());
  trainer.fit(train, test);
  const StateDict x = io::load_safetensors(a.file("model.safetensors"));
  const StateDict y = io::load_safetensors(b.file("model.safetensors"));
  for (const auto& [name, t] : x) {
    const Tensor& u = y.at(name);
    for (int64_t i = 0; i < t.numel(); ++i) {
      EXPECT_NEAR(t.data()[i], u.data()[i], 1e-5 * std::max(1.0f, std::abs(t.data()[i]))) << name;
    }
  }
}

TEST(Evaluate, CountsAccuracyAndLoss) {
  JobConfig job = blobs_job("unused");
  Rng rng(1);
  auto model = build_model(job.model, rng);
  const auto data = blobs(130, 4);
  const EvalResult whole = evaluate(*model, data, 1000);
  const EvalResult batched = evaluate(*model, data, 7);
  EXPECT_EQ(whole.samples, 130);
  EXPECT_NEAR(whole.accuracy, batched.accuracy, 1e-12);
  EXPECT_NEAR(whole.loss, batched.loss, 1e-5);
  EXPECT_THROW(evaluate(*model, data, 0), UsageError);
}

}  // namespace
}  // namespace dtrain::train

namespace dtrain::train {
namespace {

// A strategy of a process that joins a job under way at `step` (what a
// restarted ps worker's strategy reports).
class JoiningStrategy final : public strategy::LocalStrategy {
 public:
  JoiningStrategy(const JobConfig& job, Rng& rng, int64_t step)
      : LocalStrategy(build_model(job.model, rng),
                      [&job](std::vector<Variable> p) {
                        return nn::make_optimizer(job.optimizer, std::move(p));
                      }),
        step_(step) {}
  std::optional<int64_t> joined_at_step() const override { return step_; }

 private:
  int64_t step_;
};

class FirstStep final : public Callback {
 public:
  void on_step_end(const StepInfo& s) override {
    if (!first) first = s;
  }
  std::optional<StepInfo> first;
};

TEST(Trainer, AProcessJoiningARunningJobStartsAtItsStepNotAtTheCheckpoint) {
  testing::TempDir dir;
  const auto train = blobs(600, 1), test = blobs(100, 2);  // 19 steps an epoch
  JobConfig first = blobs_job(dir.path());
  first.train.max_steps = 10;
  first.train.checkpoint_every_steps = 5;
  fit(first, train, test);  // leaves a checkpoint at step 10

  JobConfig job = blobs_job(dir.path());
  Rng rng(job.seed);
  JoiningStrategy strategy(job, rng, 23);
  Trainer trainer(job, strategy, Logger::null());
  FirstStep seen;
  trainer.add_callback(seen);
  const Summary summary = trainer.fit(train, test);
  ASSERT_TRUE(seen.first.has_value());
  EXPECT_EQ(seen.first->step, 24);  // not 11: the checkpoint is not where it continues
  EXPECT_EQ(seen.first->epoch, 2);
  EXPECT_EQ(seen.first->step_in_epoch, 5);
  EXPECT_EQ(summary.steps, 4 * 19);
}

}  // namespace
}  // namespace dtrain::train

namespace dtrain::train {
namespace {

// A strategy with figures of its own (what gossip reports): every second
// report has measured something, the report's number as
// "consensus_distance" and a "loss" that clashes with the step event's own
// key; the others have nothing new. Its extra model "worker0" is an
// untrained model of another seed, so its accuracy is not model()'s.
class ReportingStrategy final : public strategy::LocalStrategy {
 public:
  ReportingStrategy(const JobConfig& job, Rng& rng, Rng& other_rng)
      : LocalStrategy(build_model(job.model, rng),
                      [&job](std::vector<Variable> p) {
                        return nn::make_optimizer(job.optimizer, std::move(p));
                      }),
        other_(build_model(job.model, other_rng)) {}
  std::vector<std::pair<std::string, double>> report_metrics() override {
    ++reports;
    if (reports % 2 == 1) return {};
    return {{"consensus_distance", double(reports)}, {"loss", -1.0}};
  }
  std::vector<std::pair<std::string, nn::Module*>> extra_eval_models() override {
    return {{"worker0", other_.get()}};
  }
  nn::Module& other() { return *other_; }
  int reports = 0;

 private:
  std::unique_ptr<nn::Module> other_;
};

TEST(Trainer, TheStrategysFiguresAndExtraModelsReachTheMetrics) {
  testing::TempDir dir;
  JobConfig job = blobs_job(dir.path());
  job.train.epochs = 2;  // 10 steps an epoch, a report every 5
  Rng rng(job.seed), other_rng(job.seed + 100);
  ReportingStrategy strategy(job, rng, other_rng);
  Trainer trainer(job, strategy, Logger::null());
  JsonLinesWriter metrics(dir.file("metrics.jsonl"), job.train.log_every_steps);
  std::ostringstream lines;
  PlainProgress progress(lines, job.train.log_every_steps);
  trainer.add_callback(metrics);
  trainer.add_callback(progress);
  const auto test = blobs(100, 2);
  trainer.fit(blobs(300, 1), test);
  EXPECT_EQ(strategy.reports, 4);  // at the report steps only

  const EvalResult other = evaluate(strategy.other(), test, job.train.eval_batch_size);
  const EvalResult primary = evaluate(strategy.model(), test, job.train.eval_batch_size);
  ASSERT_NE(other.accuracy, primary.accuracy) << "the test needs two distinguishable models";
  std::ifstream in(dir.file("metrics.jsonl"));
  int steps = 0, epochs = 0;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json e = nlohmann::json::parse(line);
    if (e["event"] == "step") {
      ++steps;
      if (steps % 2 == 1) {
        EXPECT_FALSE(e.contains("consensus_distance")) << "nothing new, nothing: " << e.dump();
        EXPECT_FALSE(e.contains("strategy_loss")) << e.dump();
      } else {
        EXPECT_DOUBLE_EQ(e.value("consensus_distance", 0.0), double(steps)) << e.dump();
        EXPECT_DOUBLE_EQ(e.value("strategy_loss", 0.0), -1.0) << e.dump();
      }
      EXPECT_GT(e["loss"].get<double>(), 0.0) << "the step's own loss stays: " << e.dump();
    }
    if (e["event"] == "epoch") {
      ++epochs;
      ASSERT_TRUE(e.contains("test_accuracy_worker0")) << e.dump();
      EXPECT_DOUBLE_EQ(e["test_accuracy_worker0"].get<double>(), other.accuracy);
      EXPECT_DOUBLE_EQ(e["test_loss_worker0"].get<double>(), other.loss);
    }
    if (e["event"] == "end") {
      EXPECT_FALSE(e.contains("consensus_distance")) << e.dump();
    }
  }
  EXPECT_EQ(steps, 4);
  EXPECT_EQ(epochs, 2);
  EXPECT_NE(lines.str().find("(global 20): "), std::string::npos) << lines.str();
  EXPECT_NE(lines.str().find(" consensus_distance 4 loss -1\n"), std::string::npos) << lines.str();
  EXPECT_EQ(lines.str().find(" consensus_distance 3"), std::string::npos) << lines.str();
  const size_t step15 = lines.str().find("(global 15): ");
  ASSERT_NE(step15, std::string::npos) << lines.str();
  EXPECT_EQ(lines.str().substr(step15, lines.str().find('\n', step15) - step15).find("consensus"),
            std::string::npos)
      << lines.str();
  EXPECT_NE(lines.str().find(fmt::format("| worker0 {:.2f}% |", 100.0 * other.accuracy)),
            std::string::npos)
      << lines.str();
}

// A strategy without figures adds no keys.
TEST(Trainer, WithoutFiguresTheEventsHaveNoExtraKeys) {
  testing::TempDir dir;
  JobConfig job = blobs_job(dir.path());
  job.train.epochs = 1;
  auto strategy = local_for(job);
  Trainer trainer(job, *strategy, Logger::null());
  JsonLinesWriter metrics(dir.file("metrics.jsonl"), job.train.log_every_steps);
  trainer.add_callback(metrics);
  trainer.fit(blobs(300, 1), blobs(100, 2));
  std::ifstream in(dir.file("metrics.jsonl"));
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json e = nlohmann::json::parse(line);
    EXPECT_FALSE(e.contains("consensus_distance")) << e.dump();
    for (const auto& [key, value] : e.items()) {
      EXPECT_EQ(key.find("_worker"), std::string::npos) << e.dump();
    }
  }
}

}  // namespace
}  // namespace dtrain::train
