// The Trainer in elastic mode (strategy/elastic.h) with a fake membership over
// one process: a step whose communication failed is redone after the
// re-formation and one at a step boundary changes nothing, so the final
// weights equal a run without either; a worker that joined a running group
// trains only the rest of the job; without a membership a CommError ends
// fit(). The real group re-formation is tested in tests/ft/elastic_mode_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/synthetic.h"
#include "io/output_lock.h"
#include "io/safetensors.h"
#include "optim/optimizer_config.h"
#include "strategy/elastic.h"
#include "strategy/local_strategy.h"
#include "testing/fault_fs.h"
#include "train/chief_output_lock.h"
#include "train/model_builder.h"
#include "train/trainer.h"
#include "train_test_util.h"

namespace dtrain::train {
namespace {

using test_util::layer;

JobConfig job_in(const std::string& output) {
  JobConfig job;
  job.name = "elastic-trainer";
  job.seed = 4;
  job.output = output;
  job.resume = false;
  job.model.input_shape = {8};
  LayerConfig fc1 = layer("linear", "fc1", 16);
  LayerConfig relu = layer("relu", "relu");
  LayerConfig fc2 = layer("linear", "fc2", 3);
  job.model.layers = {fc1, relu, fc2};
  job.optimizer.type = "adam";
  job.optimizer.lr = 0.01f;
  job.train.epochs = 2;
  job.train.batch_size = 40;  // 15 steps per epoch
  job.train.log_every_steps = 0;
  return job;
}

data::TensorDataset blobs(int64_t start, int64_t count) {
  data::BlobsOptions o;
  o.samples = 800;
  o.features = 8;
  o.num_classes = 3;
  o.seed = 21;
  return data::make_gaussian_blobs(o).slice(start, count);
}

// LocalStrategy whose train_step throws CommError (before touching the
// model) on call number `fail_at` (0-based), once.
class FlakyStrategy final : public strategy::Strategy {
 public:
  FlakyStrategy(const JobConfig& job, int64_t fail_at) : fail_at_(fail_at) {
    Rng rng(job.seed);
    inner_ = std::make_unique<strategy::LocalStrategy>(
        build_model(job.model, rng), [&job](std::vector<Variable> p) {
          return nn::make_optimizer(job.optimizer, std::move(p));
        });
  }
  std::string name() const override { return "flaky"; }
  int64_t replicas() const override { return 1; }
  nn::Module& model() override { return inner_->model(); }
  void set_learning_rate(float lr) override { inner_->set_learning_rate(lr); }
  StateDict optimizer_state() override { return inner_->optimizer_state(); }
  void load_optimizer_state(const StateDict& state) override {
    inner_->load_optimizer_state(state);
  }
  strategy::StepStats train_step(const Tensor& x, std::span<const int64_t> y) override {
    if (calls_++ == fail_at_) throw CommError(1, "allreduce #9", "rank 1 (pid 42) died");
    return inner_->train_step(x, y);
  }
  int64_t calls() const { return calls_; }
  // The rank and size of the group it trains in (the default: 0 of 1).
  int64_t rank() const override { return rank_; }
  int64_t world_size() const override { return world_; }
  void set_rank(int64_t rank, int64_t world) { rank_ = rank, world_ = world; }
  // The group this strategy trains in (elastic mode), or none.
  void set_membership(strategy::ElasticMembership* membership) { membership_ = membership; }
  strategy::ElasticMembership* elastic() override { return membership_; }

 private:
  std::unique_ptr<strategy::LocalStrategy> inner_;
  strategy::ElasticMembership* membership_ = nullptr;  // the test's, outlives fit()
  int64_t fail_at_;
  int64_t calls_ = 0;
  int64_t rank_ = 0;
  int64_t world_ = 1;
};

class FakeMembership final : public strategy::ElasticMembership {
 public:
  explicit FakeMembership(int64_t due_at_check,
                          std::optional<strategy::TrainingPosition> joined = {})
      : due_at_(due_at_check), joined_(joined) {}
  bool joined_running_group(strategy::TrainingPosition& position) override {
    if (!joined_) return false;
    position = *joined_;
    return true;
  }
  bool reform_due() override { return ++checks_ == due_at_; }
  void reform(strategy::TrainingPosition& position, const std::string& cause) override {
    causes.push_back(cause);
    steps.push_back(position.step);
    if (on_reform) on_reform();
  }
  std::function<void()> on_reform;  // the new generation's roles, set by the test
  std::vector<std::string> causes;
  std::vector<int64_t> steps;

 private:
  int64_t due_at_;
  int64_t checks_ = 0;
  std::optional<strategy::TrainingPosition> joined_;
};

TEST(TrainerElastic, ReformsRedoTheFailedStepAndEndWithTheFaultFreeWeights) {
  testing::TempDir dir;
  const data::TensorDataset train = blobs(0, 600), test = blobs(600, 200);
  const JobConfig clean_job = job_in(dir.file("clean"));
  FlakyStrategy clean(clean_job, -1);
  Trainer(clean_job, clean, Logger::null()).fit(train, test);

  const JobConfig job = job_in(dir.file("elastic"));
  FlakyStrategy flaky(job, 7);    // the 8th step's communication fails
  FakeMembership membership(20);  // a worker waits after step 20 (of 30)
  flaky.set_membership(&membership);
  Trainer trainer(job, flaky, Logger::null());
  const Summary summary = trainer.fit(train, test);

  EXPECT_EQ(summary.steps, 30);
  EXPECT_EQ(flaky.calls(), 31);  // one redone
  ASSERT_EQ(membership.causes.size(), 2u);
  EXPECT_NE(membership.causes[0].find("rank 1 (pid 42) died"), std::string::npos);
  EXPECT_EQ(membership.causes[1], "a worker is waiting to join");
  EXPECT_EQ(membership.steps, (std::vector<int64_t>{7, 20}));
  const StateDict a = io::load_safetensors(dir.file("clean") + "/model.safetensors");
  const StateDict b = io::load_safetensors(dir.file("elastic") + "/model.safetensors");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a.entries()[i].second.to_vector(), b.entries()[i].second.to_vector())
        << a.entries()[i].first;
  }
}

TEST(TrainerElastic, AWorkerThatJoinedARunningGroupTrainsTheRest) {
  testing::TempDir dir;
  const JobConfig job = job_in(dir.file("out"));
  FlakyStrategy strategy(job, -1);
  FakeMembership membership(-1, strategy::TrainingPosition{18, 1, 3});
  strategy.set_membership(&membership);
  Trainer trainer(job, strategy, Logger::null());
  const Summary summary = trainer.fit(blobs(0, 600), blobs(600, 200));
  EXPECT_EQ(summary.steps, 30);
  EXPECT_EQ(strategy.calls(), 12);
}

TEST(TrainerElastic, WithoutAMembershipACommErrorEndsFit) {
  testing::TempDir dir;
  const JobConfig job = job_in(dir.file("out"));
  FlakyStrategy strategy(job, 3);
  Trainer trainer(job, strategy, Logger::null());
  EXPECT_THROW(trainer.fit(blobs(0, 600), blobs(600, 200)), CommError);
}

// Whether another process (or open file) holds `folder`'s lock.
bool lock_taken(const std::string& folder) {
  try {
    io::OutputLock::acquire(folder, io::LockRecord{1, "h", "t", "probe"}, Logger::null());
    return false;
  } catch (const UsageError&) {
    return true;
  }
}

// The steps of the checkpoints in `folder`, ascending.
std::vector<int64_t> checkpoint_steps(const std::string& folder) {
  std::vector<int64_t> steps;
  for (const auto& e : std::filesystem::directory_iterator(folder)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with("ckpt-")) steps.push_back(std::stoll(name.substr(5)));
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

// A worker whose role changes at a re-formation after step 10 (of 30), with
// one shared folder: the checkpoints (every 5 steps) and the final weights
// are written only while it is rank 0 and holds the folder's lock.
struct RoleChange {
  int64_t rank_before = 0;
  int64_t rank_after = 0;
  bool taken_at_reform = false;  // seen from outside, while the group re-forms
  bool held_at_end = false;
  std::vector<int64_t> steps;
  bool weights = false;
};

RoleChange train_through_role_change(const std::string& folder, int64_t before, int64_t after) {
  JobConfig job = job_in(folder);
  job.train.checkpoint_every_steps = 5;
  job.train.keep_checkpoints = 10;
  FlakyStrategy strategy(job, -1);
  strategy.set_rank(before, 2);
  FakeMembership membership(10);
  RoleChange r;
  r.rank_before = before;
  r.rank_after = after;
  membership.on_reform = [&] {
    r.taken_at_reform = lock_taken(folder);
    strategy.set_rank(after, 2);
  };
  strategy.set_membership(&membership);
  ChiefOutputLock lock({folder, io::LockRecord{7, "h", "t", "worker"}, std::chrono::seconds(0), 0},
                       Logger::null());
  Trainer trainer(job, strategy, Logger::null());
  trainer.set_output_lock(&lock);
  trainer.fit(blobs(0, 600), blobs(600, 200));
  r.held_at_end = lock.held();
  r.steps = checkpoint_steps(folder);
  r.weights = std::filesystem::exists(folder + "/model.safetensors");
  return r;
}

TEST(TrainerElastic, ARankZeroDemotedByAReformationWritesNoMoreAndLetsTheLockGo) {
  testing::TempDir dir;
  const RoleChange r = train_through_role_change(dir.file("shared"), 0, 1);
  EXPECT_TRUE(r.taken_at_reform);
  EXPECT_FALSE(r.held_at_end);
  EXPECT_FALSE(lock_taken(dir.file("shared")));
  EXPECT_EQ(r.steps, (std::vector<int64_t>{5}));  // step 10's is the new rank 0's
  EXPECT_FALSE(r.weights);
}

TEST(TrainerElastic, AWorkerPromotedToRankZeroTakesTheLockThenWrites) {
  testing::TempDir dir;
  const RoleChange r = train_through_role_change(dir.file("shared"), 1, 0);
  EXPECT_FALSE(r.taken_at_reform);
  EXPECT_TRUE(r.held_at_end);
  EXPECT_EQ(r.steps, (std::vector<int64_t>{10, 15, 20, 25, 30}));
  EXPECT_TRUE(r.weights);
}

}  // namespace
}  // namespace dtrain::train
