// The trainer's sample assignment across workers: under changing, unequal
// batch splits (dynamic batch sizing) and under data partitions, every
// sample is used exactly once per epoch, counted by sample id. The workers
// are Trainer instances with a recording strategy that only claims a rank
// (no communication: the assignment needs none, which is the point), run
// one after the other. Also PartitionedEpoch itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <set>

#include "core/error.h"
#include "data/partition.h"
#include "optim/sgd.h"
#include "strategy/batch_balancer.h"
#include "testing/fault_fs.h"
#include "train/model_builder.h"
#include "train/partitioned_epoch.h"
#include "train/trainer.h"
#include "train_test_util.h"

namespace dtrain::train {
namespace {

using test_util::layer;

constexpr int64_t kSamples = 101;
constexpr int64_t kClasses = 3;

// Sample i has the single feature i and label i % 3 (labels 0..2).
data::TensorDataset id_dataset(int64_t n) {
  std::vector<float> x(static_cast<size_t>(n));
  std::vector<int64_t> y(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    x[static_cast<size_t>(i)] = static_cast<float>(i);
    y[static_cast<size_t>(i)] = (i * 7 % 11) % kClasses;  // uneven class sizes
  }
  return data::TensorDataset(Tensor::from_vector(x, {n, 1}), std::move(y), kClasses);
}

JobConfig id_job(const std::string& output) {
  JobConfig job;
  job.name = "ids";
  job.seed = 5;
  job.output = output;
  job.resume = false;
  job.model.input_shape = {1};
  LayerConfig fc = layer("linear", "fc", kClasses);
  job.model.layers = {fc};
  job.train.epochs = 2;
  job.train.batch_size = 16;
  job.train.eval_batch_size = 50;
  return job;
}

// Rank `rank` of `world`, recording the sample ids of its rows per epoch.
// Its split changes every step (the same sequence on every rank, as a
// balancer's would) and, with `empty_shares`, sometimes gives a worker no
// rows (a partitioned epoch needs a row for every worker with data left).
class RecordingStrategy : public strategy::Strategy, public Callback {
 public:
  RecordingStrategy(const JobConfig& job, int64_t rank, int64_t world, bool empty_shares)
      : rank_(rank), world_(world), min_weight_(empty_shares ? 0.0 : 1.0) {
    Rng rng(job.seed);
    model_ = build_model(job.model, rng);
    optimizer_ = nn::Optimizer::make<optim::Sgd>(model_->parameters(), optim::SgdOptions{});
    epochs_.emplace_back();
  }
  std::string name() const override { return "recording"; }
  int64_t replicas() const override { return world_; }
  int64_t rank() const override { return rank_; }
  int64_t world_size() const override { return world_; }
  nn::Module& model() override { return *model_; }
  void set_learning_rate(float lr) override { optimizer_->set_lr(lr); }
  StateDict optimizer_state() override { return optimizer_->state_dict(); }
  void load_optimizer_state(const StateDict& state) override { optimizer_->load_state_dict(state); }

  strategy::StepStats train_step(const Tensor& inputs, std::span<const int64_t> targets) override {
    const auto n = static_cast<int64_t>(targets.size());
    for (int64_t i = 0; i < n; ++i) {
      epochs_.back().push_back(static_cast<int64_t>(inputs.data()[i]));
    }
    ++steps_;
    return {0.0, 0, n};
  }
  std::vector<int64_t> batch_split(int64_t batch_rows) const override {
    std::vector<double> weights(static_cast<size_t>(world_));
    for (int64_t w = 0; w < world_; ++w) {
      weights[static_cast<size_t>(w)] =
          min_weight_ + static_cast<double>((w + steps_) % (world_ + 1));
    }
    if (std::accumulate(weights.begin(), weights.end(), 0.0) == 0.0)
      weights.assign(weights.size(), 1.0);
    const std::vector<double> shares = strategy::bounded_shares(weights, 0.0, 1.0);
    return strategy::apportion(batch_rows, shares, 0, batch_rows);
  }
  void on_epoch_end(const EpochInfo&) override { epochs_.emplace_back(); }
  void on_step_end(const StepInfo& info) override { reported_splits_.push_back(info.split); }

  // Sample ids of each finished epoch.
  const std::vector<std::vector<int64_t>>& epochs() const { return epochs_; }
  // The split every step's report carried.
  const std::vector<std::vector<int64_t>>& reported_splits() const { return reported_splits_; }

 private:
  int64_t rank_;
  int64_t world_;
  double min_weight_;
  int64_t steps_ = 0;
  std::unique_ptr<nn::Module> model_;
  std::unique_ptr<nn::Optimizer> optimizer_;
  std::vector<std::vector<int64_t>> epochs_;
  std::vector<std::vector<int64_t>> reported_splits_;
};

// Trains every rank of `world` on `job`; returns each rank's recorder.
std::vector<std::unique_ptr<RecordingStrategy>> train_all(const JobConfig& job, int64_t world,
                                                          std::vector<int64_t> order = {}) {
  const data::TensorDataset train = id_dataset(kSamples);
  const data::TensorDataset test = id_dataset(10);
  std::vector<std::unique_ptr<RecordingStrategy>> out;
  for (int64_t r = 0; r < world; ++r) {
    out.push_back(std::make_unique<RecordingStrategy>(job, r, world, job.data.partition.empty()));
  }
  if (order.empty()) {
    order.resize(static_cast<size_t>(world));
    std::iota(order.begin(), order.end(), int64_t{0});
  }
  for (int64_t r : order) {
    Trainer trainer(job, *out[static_cast<size_t>(r)], Logger::null());
    trainer.add_callback(*out[static_cast<size_t>(r)]);
    trainer.fit(train, test);
  }
  return out;
}

// How often each sample id occurs in epoch `e` over all ranks.
std::map<int64_t, int> counts_in_epoch(const std::vector<std::unique_ptr<RecordingStrategy>>& ranks,
                                       size_t e) {
  std::map<int64_t, int> counts;
  for (const auto& r : ranks) {
    if (e < r->epochs().size()) {
      for (int64_t id : r->epochs()[e]) ++counts[id];
    }
  }
  return counts;
}

void expect_each_sample_once(const std::map<int64_t, int>& counts, const std::string& what) {
  EXPECT_EQ(static_cast<int64_t>(counts.size()), kSamples) << what;
  for (const auto& [id, count] : counts) {
    EXPECT_EQ(count, 1) << what << ": sample " << id;
    EXPECT_TRUE(id >= 0 && id < kSamples) << what;
  }
}

TEST(SampleAssignment, SharedBatchesUnderChangingSplitsUseEverySampleOncePerEpoch) {
  testing::TempDir dir;
  const JobConfig job = id_job(dir.path());
  const auto ranks = train_all(job, 3);
  for (size_t e = 0; e < 2; ++e) {
    expect_each_sample_once(counts_in_epoch(ranks, e), "epoch " + std::to_string(e + 1));
  }
}

// Every step's report carries the split it trained with: every worker's
// rows, the same on every rank, summing to the global batch (the epoch's last
// batch may be short).
TEST(SampleAssignment, StepReportsCarryEveryWorkersRows) {
  testing::TempDir dir;
  const JobConfig job = id_job(dir.path());
  const auto ranks = train_all(job, 3);
  const auto& splits = ranks[0]->reported_splits();
  ASSERT_FALSE(splits.empty());
  std::set<std::vector<int64_t>> distinct;
  for (const auto& split : splits) {
    ASSERT_EQ(split.size(), 3u);
    const int64_t rows = std::accumulate(split.begin(), split.end(), int64_t{0});
    EXPECT_GT(rows, 0);
    EXPECT_LE(rows, job.train.batch_size);
    distinct.insert(split);
  }
  EXPECT_GT(distinct.size(), 1u) << "the strategy's split changes every step";
  for (const auto& r : ranks) EXPECT_EQ(r->reported_splits(), splits);
}

class PartitionedAssignment : public ::testing::TestWithParam<std::string> {};

TEST_P(PartitionedAssignment, EveryWorkerTrainsOnItsOwnPartAndEverySampleOnce) {
  testing::TempDir dir;
  JobConfig job = id_job(dir.path());
  job.data.partition = GetParam();
  job.data.classes_per_worker = 1;
  job.data.quantity_sigma = 1.5;  // strongly unequal part sizes
  const int64_t world = 3;
  const auto ranks = train_all(job, world);

  data::PartitionOptions p;
  p.kind = job.data.partition;
  p.workers = world;
  p.seed = job.seed;
  p.classes_per_worker = 1;
  p.quantity_sigma = 1.5;
  const auto parts = data::partition(id_dataset(kSamples).labels(), kClasses, p);
  for (size_t e = 0; e < 2; ++e) {
    expect_each_sample_once(counts_in_epoch(ranks, e), "epoch " + std::to_string(e + 1));
    for (size_t r = 0; r < parts.size(); ++r) {
      std::vector<int64_t> got = ranks[r]->epochs()[e];
      std::sort(got.begin(), got.end());
      EXPECT_EQ(got, parts[r]) << "rank " << r << " epoch " << e + 1;
    }
  }
  // Each rank visits its part in a new order every epoch (parts of > 2).
  for (size_t r = 0; r < parts.size(); ++r) {
    if (parts[r].size() > 2) {
      EXPECT_NE(ranks[r]->epochs()[0], ranks[r]->epochs()[1]) << r;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, PartitionedAssignment,
                         ::testing::Values("iid", "label", "quantity", "dirichlet"));

TEST(SampleAssignment, PartitionedRunResumedMidEpochStillUsesEverySampleOnce) {
  testing::TempDir dir;
  JobConfig job = id_job(dir.path());
  job.data.partition = "quantity";
  job.train.epochs = 1;
  job.train.max_steps = 3;  // stops mid-epoch; rank 0 checkpoints where it stopped
  const auto first = train_all(job, 3);
  job.train.max_steps = 0;
  job.resume = true;
  // Rank 0 writes new checkpoints as it goes: the others resume first.
  const auto second = train_all(job, 3, {1, 2, 0});
  std::map<int64_t, int> counts = counts_in_epoch(first, 0);
  ASSERT_GT(counts.size(), 0u);
  ASSERT_LT(static_cast<int64_t>(counts.size()), kSamples)
      << "the first run was not stopped mid-epoch";
  for (const auto& [id, n] : counts_in_epoch(second, 0)) counts[id] += n;
  expect_each_sample_once(counts, "stopped and resumed epoch");
}

TEST(PartitionedEpoch, TakesTheSplitUntilEveryPartIsUsedAndWorkersOutOfDataGetNone) {
  PartitionedEpoch epoch({{0, 1, 2, 3, 4}, {5}, {}}, 1, 9, 0);
  EXPECT_FALSE(epoch.exhausted());
  EXPECT_EQ(epoch.take(std::vector<int64_t>{2, 2, 2}), (std::vector<int64_t>{5}));
  EXPECT_EQ(epoch.consumed(), (std::vector<int64_t>{2, 1, 0}));
  EXPECT_TRUE(epoch.take(std::vector<int64_t>{2, 2, 2}).empty());  // rank 1 is out of data
  EXPECT_FALSE(epoch.exhausted());
  epoch.take(std::vector<int64_t>{2, 2, 2});
  EXPECT_TRUE(epoch.exhausted());
  EXPECT_EQ(PartitionedEpoch::steps_at_equal_shares({{0, 1, 2, 3, 4}, {5}, {}}, 6), 3);
}

TEST(PartitionedEpoch, RejectsSplitsThatCouldNeverEndTheEpoch) {
  PartitionedEpoch epoch({{0, 1}, {2}}, 0, 1, 0);
  EXPECT_THROW(epoch.take(std::vector<int64_t>{0, 0}), UsageError);
  EXPECT_THROW(epoch.take(std::vector<int64_t>{1}), UsageError);
  EXPECT_THROW(PartitionedEpoch({{0}}, 1, 1, 0), UsageError);
  EXPECT_THROW(PartitionedEpoch::steps_at_equal_shares({{0}, {1, 2}}, 1), UsageError);
}

}  // namespace
}  // namespace dtrain::train
