// The convergence guard (train/convergence_guard.h): its rule on scripted
// losses, its state in a string, and a Trainer that it rescues from a
// setting made to diverge.
#include "train/convergence_guard.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/synthetic.h"
#include "strategy/local_strategy.h"
#include "testing/fault_fs.h"
#include "train/model_builder.h"
#include "train/trainer.h"
#include "train_test_util.h"

namespace dtrain::train {
namespace {

GuardConfig config(int64_t window, double margin, int64_t hold) {
  GuardConfig g;
  g.enabled = true;
  g.window = window;
  g.margin = margin;
  g.hold_steps = hold;
  g.snapshot_every = 5;
  return g;
}

TEST(ConvergenceGuard, ANonFiniteLossDivergesAtOnce) {
  ConvergenceGuard guard(config(3, 0.5, 10));
  EXPECT_FALSE(guard.diverged(1.0));
  EXPECT_TRUE(guard.diverged(std::numeric_limits<double>::quiet_NaN()));
  EXPECT_TRUE(guard.diverged(std::numeric_limits<double>::infinity()));
}

TEST(ConvergenceGuard, AWindowMeanAboveTheBestByTheMarginDiverges) {
  ConvergenceGuard guard(config(2, 0.5, 10));
  for (const double loss : {1.0, 1.0, 0.2, 0.2, 0.5, 0.6}) {
    EXPECT_FALSE(guard.diverged(loss)) << loss;
  }
  // First window 1.0, best 0.2: the threshold is 0.2 + 0.5 * 1.0 = 0.7,
  // so (0.6 + 0.75) / 2 = 0.675 is noise and (0.75 + 0.9) / 2 = 0.825 a rise.
  EXPECT_FALSE(guard.diverged(0.75));
  EXPECT_TRUE(guard.diverged(0.9));
}

TEST(ConvergenceGuard, RescuesGoWeakerAndHoldsStepBackOneLevelAtATime) {
  ConvergenceGuard guard(config(2, 0.5, 10));
  guard.rescued(100);
  EXPECT_EQ(guard.level(), 1);
  guard.rescued(103);
  EXPECT_EQ(guard.level(), 2);
  EXPECT_FALSE(guard.relax(112));
  EXPECT_TRUE(guard.relax(113));
  EXPECT_EQ(guard.level(), 1);
  EXPECT_FALSE(guard.relax(120));
  EXPECT_TRUE(guard.relax(123));
  EXPECT_EQ(guard.level(), 0);
  EXPECT_FALSE(guard.relax(1000));
  EXPECT_EQ(guard.rescues(), 2);
  for (int i = 0; i < 5; ++i) guard.rescued(200);
  EXPECT_EQ(guard.level(), strategy::CompressionSettings::kDenseLevel);
}

TEST(ConvergenceGuard, ALevelThatDivergedTwiceIsNotReturnedTo) {
  ConvergenceGuard guard(config(2, 0.5, 10));
  guard.rescued(100);  // level 0 fails once: back to it after the hold
  EXPECT_TRUE(guard.relax(110));
  EXPECT_EQ(guard.level(), 0);
  guard.rescued(150);  // and twice: level 1 is the floor from now on
  EXPECT_EQ(guard.level(), 1);
  EXPECT_EQ(guard.floor(), 1);
  EXPECT_FALSE(guard.relax(1000));
  EXPECT_EQ(guard.level(), 1);
  ConvergenceGuard restored(config(2, 0.5, 10));
  restored.decode(guard.encode());
  EXPECT_EQ(restored.floor(), 1);
  EXPECT_EQ(restored.encode(), guard.encode());
}

TEST(ConvergenceGuard, ItsStateRoundTripsThroughAString) {
  ConvergenceGuard a(config(2, 0.5, 10));
  a.diverged(0.75);
  a.diverged(0.5);
  a.rescued(40);
  ConvergenceGuard b(config(2, 0.5, 10));
  b.decode(a.encode());
  EXPECT_EQ(b.encode(), a.encode());
  EXPECT_EQ(b.level(), 1);
  EXPECT_EQ(b.hold_until(), 50);
  EXPECT_THROW(
      b.decode("level=9 hold_until=1 best=0x1p+0 first=0x1p+0 rescues=0 floor=0 failures=0,0,0,0"),
      DataError);
  EXPECT_THROW(
      b.decode("level=1 hold_until=1 best=0x1p+0 first=0x1p+0 rescues=0 floor=2 failures=0,0,0,0"),
      DataError);
  EXPECT_THROW(b.decode("garbage"), DataError);
}

// A local strategy whose level-0 "compression" ruins the run: from update
// `from` on, its updates take 200 times the learning rate; every weaker
// level trains normally.
class SabotagedStrategy final : public strategy::LocalStrategy {
 public:
  SabotagedStrategy(std::unique_ptr<nn::Module> model, const strategy::OptimizerFactory& make,
                    int64_t from)
      : LocalStrategy(std::move(model), make), from_(from) {}
  bool reduces_communication() const override { return true; }
  void set_communication_level(int level) override {
    level_ = level;
    levels.push_back(level);
  }
  std::string communication() const override { return "level " + std::to_string(level_); }
  void set_learning_rate(float lr) override { lr_ = lr; }
  strategy::StepStats train_step(const Tensor& inputs, std::span<const int64_t> targets) override {
    const bool sabotaged = level_ == 0 && calls_++ >= from_;
    LocalStrategy::set_learning_rate(sabotaged ? 200.0f * lr_ : lr_);
    return LocalStrategy::train_step(inputs, targets);
  }
  std::vector<int> levels;

 private:
  int64_t from_;
  int64_t calls_ = 0;
  int level_ = 0;
  float lr_ = 0.0f;
};

data::TensorDataset blobs(int part) {
  data::BlobsOptions o;
  o.samples = 900;
  o.features = 8;
  o.num_classes = 3;
  o.seed = 21;
  const data::TensorDataset all = data::make_gaussian_blobs(o);
  return part == 1 ? all.slice(0, 600) : all.slice(600, 300);
}

// The blobs MLP both trainer tests run: sabotaged from update 25 on, 20
// updates an epoch, 6 epochs.
JobConfig sabotaged_job(const std::string& name, const std::string& output) {
  JobConfig job;
  job.name = name;
  job.seed = 4;
  job.output = output;
  job.model.input_shape = {8};
  job.model.layers = {test_util::layer("linear", "fc1", 16), test_util::layer("relu", "relu"),
                      test_util::layer("linear", "fc2", 3)};
  job.optimizer.type = "sgd";
  job.optimizer.lr = 0.05f;
  job.train.epochs = 6;
  job.train.batch_size = 30;
  return job;
}

SabotagedStrategy sabotaged_strategy(const JobConfig& job) {
  Rng rng(job.seed);
  return SabotagedStrategy(
      build_model(job.model, rng),
      [&job](std::vector<Variable> p) { return nn::make_optimizer(job.optimizer, std::move(p)); },
      /*from=*/25);
}

TEST(ConvergenceGuardTrainer, RescuesARunMadeToDivergeAndItStillLearns) {
  testing::TempDir dir;
  JobConfig job = sabotaged_job("guarded", dir.path());
  job.train.log_every_steps = 1;
  job.compression.guard = config(4, 0.3, 1000);
  SabotagedStrategy strategy = sabotaged_strategy(job);
  std::vector<GuardEvent> events;
  struct Recorder : Callback {
    std::vector<GuardEvent>* events = nullptr;
    void on_guard(const GuardEvent& e) override { events->push_back(e); }
  } recorder;
  recorder.events = &events;
  Trainer trainer(job, strategy, Logger::null());
  trainer.add_callback(recorder);
  JsonLinesWriter metrics(dir.file("metrics.jsonl"), 1);
  trainer.add_callback(metrics);
  const Summary s = trainer.fit(blobs(1), blobs(2));

  ASSERT_EQ(events.size(), 1u) << events.back().step << ": " << events.back().reason;
  EXPECT_GE(events[0].step, 26);
  EXPECT_EQ(events[0].from, "level 0");
  EXPECT_EQ(events[0].to, "level 1");
  EXPECT_LT(events[0].restored_step, events[0].step);
  EXPECT_EQ(strategy.levels, std::vector<int>({1}));
  EXPECT_GT(s.test_accuracy, 0.95);
  // metrics.jsonl records the rescue.
  std::ifstream in(dir.file("metrics.jsonl"));
  int guard_lines = 0;
  for (std::string line; std::getline(in, line);) {
    if (nlohmann::json::parse(line)["event"] == "guard") ++guard_lines;
  }
  EXPECT_EQ(guard_lines, 1);
}

TEST(ConvergenceGuardTrainer, WithoutTheGuardTheSameRunStopsOrFails) {
  testing::TempDir dir;
  JobConfig job = sabotaged_job("unguarded", dir.path());
  SabotagedStrategy strategy = sabotaged_strategy(job);
  Trainer trainer(job, strategy, Logger::null());
  // The sabotage is real: unguarded, the run diverges (a NumericError) or
  // ends far below the guarded run's accuracy.
  try {
    const Summary s = trainer.fit(blobs(1), blobs(2));
    EXPECT_LT(s.test_accuracy, 0.9);
  } catch (const NumericError&) {
    SUCCEED();
  }
}

}  // namespace
}  // namespace dtrain::train
