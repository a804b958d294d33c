// The trainer's look-ahead (Strategy::wants_next_inputs / prefetch): a
// strategy that wants it gets, before each step, exactly the inputs its
// next step trains on, never at an epoch's last step or the run's last;
// peeking changes neither the batches nor the result.
#include <gtest/gtest.h>

#include <vector>

#include "core/rng.h"
#include "data/synthetic.h"
#include "strategy/local_strategy.h"
#include "testing/fault_fs.h"
#include "train/model_builder.h"
#include "train/trainer.h"
#include "train_test_util.h"

namespace dtrain::train {
namespace {

using test_util::layer;

JobConfig small_job(const std::string& output) {
  JobConfig job;
  job.name = "look-ahead";
  job.seed = 5;
  job.output = output;
  job.model.input_shape = {4};
  job.model.layers = {layer("linear", "fc1", 8), layer("relu", "relu"), layer("linear", "fc2", 3)};
  job.optimizer.type = "sgd";
  job.optimizer.lr = 0.05f;
  job.train.epochs = 2;
  job.train.batch_size = 32;  // 200 samples: 7 steps an epoch, the last of 8 rows
  job.train.eval_batch_size = 50;
  return job;
}

data::TensorDataset blobs(int64_t samples, uint64_t seed) {
  data::BlobsOptions o;
  o.samples = samples;
  o.features = 4;
  o.num_classes = 3;
  o.seed = seed;
  return data::make_gaussian_blobs(o);
}

// A local strategy that wants the next inputs (or not) and records, in
// order, what it was handed ('P') and what it trained on ('S').
class LookingStrategy final : public strategy::LocalStrategy {
 public:
  LookingStrategy(const JobConfig& job, bool wants)
      : LocalStrategy(model_of(job),
                      [&job](std::vector<Variable> p) {
                        return nn::make_optimizer(job.optimizer, std::move(p));
                      }),
        wants_(wants) {}
  bool wants_next_inputs() const override { return wants_; }
  void prefetch(const Tensor& next_inputs) override {
    events.push_back({'P', next_inputs.to_vector()});
  }
  strategy::StepStats train_step(const Tensor& inputs, std::span<const int64_t> targets) override {
    events.push_back({'S', inputs.to_vector()});
    return LocalStrategy::train_step(inputs, targets);
  }

  struct Event {
    char kind;
    std::vector<float> inputs;
  };
  std::vector<Event> events;

 private:
  static std::unique_ptr<nn::Module> model_of(const JobConfig& job) {
    Rng rng(job.seed);
    return build_model(job.model, rng);
  }
  bool wants_;
};

TEST(TrainerLookAhead, EachStepButAnEpochsLastIsHandedTheNextStepsInputs) {
  testing::TempDir dir;
  const JobConfig job = small_job(dir.path());
  LookingStrategy looking(job, true);
  Trainer(job, looking, Logger::null()).fit(blobs(200, 1), blobs(50, 2));
  // Steps in order; a 'P' right before step i holds step i + 1's inputs.
  std::vector<std::vector<float>> steps;
  std::vector<int> handed_before;  // index of the step each 'P' preceded
  std::vector<std::vector<float>> handed;
  for (const auto& e : looking.events) {
    if (e.kind == 'S') {
      steps.push_back(e.inputs);
    } else {
      handed_before.push_back(static_cast<int>(steps.size()));
      handed.push_back(e.inputs);
    }
  }
  ASSERT_EQ(steps.size(), 14u);
  ASSERT_EQ(handed.size(), 12u);  // none at the epochs' last steps (7 and 14)
  for (size_t k = 0; k < handed.size(); ++k) {
    const int step = handed_before[k];
    SCOPED_TRACE(step);
    EXPECT_NE(step % 7, 6);
    ASSERT_LT(step + 1, 14);
    EXPECT_EQ(handed[k], steps[static_cast<size_t>(step + 1)]);
  }
}

TEST(TrainerLookAhead, PeekingChangesNeitherTheBatchesNorTheResult) {
  testing::TempDir a, b;
  LookingStrategy looking(small_job(a.path()), true);
  LookingStrategy plain(small_job(b.path()), false);
  const JobConfig ja = small_job(a.path()), jb = small_job(b.path());
  Trainer(ja, looking, Logger::null()).fit(blobs(200, 1), blobs(50, 2));
  Trainer(jb, plain, Logger::null()).fit(blobs(200, 1), blobs(50, 2));
  std::vector<std::vector<float>> seen_a, seen_b;
  for (const auto& e : looking.events) {
    if (e.kind == 'S') seen_a.push_back(e.inputs);
  }
  for (const auto& e : plain.events) {
    EXPECT_EQ(e.kind, 'S');
    seen_b.push_back(e.inputs);
  }
  EXPECT_EQ(seen_a, seen_b);
  const StateDict wa = looking.model().state_dict(), wb = plain.model().state_dict();
  for (const auto& [name, t] : wa) EXPECT_EQ(t.to_vector(), wb.at(name).to_vector()) << name;
}

TEST(TrainerLookAhead, TheRunsLastStepIsHandedNothing) {
  // max_steps ends the run inside an epoch: the step after it never runs.
  testing::TempDir dir;
  JobConfig job = small_job(dir.path());
  job.train.max_steps = 4;
  LookingStrategy looking(job, true);
  Trainer(job, looking, Logger::null()).fit(blobs(200, 1), blobs(50, 2));
  ASSERT_EQ(looking.events.size(), 7u);  // P S P S P S S
  EXPECT_EQ(looking.events.back().kind, 'S');
  EXPECT_EQ(looking.events[looking.events.size() - 2].kind, 'S');
}

}  // namespace
}  // namespace dtrain::train
