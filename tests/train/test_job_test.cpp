// testing::TestJob, the job text the whole-job tests share: it renders a
// job line for line as it would be written by hand (tests assert on the
// parser's line numbers), and that text parses to the job it describes.
#include "testing/test_job.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "core/error.h"
#include "train/job_file.h"

namespace dtrain::testing {
namespace {

// The job dtrain_cli_test's kBlobsJob was before TestJob; its
// BadJobFilesExitWithCode2AndNameTheLine expects fc2's out_features on line 26.
constexpr const char* kHandWritten = R"(
[job]
name = "blobs"
seed = 5

[data]
dataset = "synthetic"
synthetic_samples = 1200
synthetic_features = 10
synthetic_classes = 3

[model]
input_shape = [10]

[[model.layers]]
type = "linear"
name = "fc1"
out_features = 32

[[model.layers]]
type = "relu"

[[model.layers]]
type = "linear"
name = "fc2"
out_features = 3

[optimizer]
type = "adam"
lr = 0.01

[train]
epochs = 3
batch_size = 50
log_every_steps = 10
)";

TEST(TestJob, RendersAJobLineForLineAsWrittenByHand) {
  EXPECT_EQ(TestJob()
                .name("blobs")
                .seed(5)
                .synthetic(1200, 10, 3)
                .mlp({32})
                .optimizer("adam", 0.01)
                .epochs(3)
                .batch(50)
                .set("train.log_every_steps", "10")
                .toml(),
            kHandWritten);
}

TEST(TestJob, ParsesToTheJobItDescribes) {
  const std::string text = TestJob()
                               .name("restart")
                               .seed(3)
                               .synthetic(900, 6, 4)
                               .mlp({16, 8})
                               .optimizer("sgd", 1.0)
                               .set("optimizer.momentum", "0.9")
                               .set("schedule.type", "\"cosine\"")
                               .set("schedule.warmup_steps", "5")
                               .epochs(2)
                               .batch(30)
                               .set("train.checkpoint_every_steps", "1")
                               .set("distributed.strategy", "\"ps\"")
                               .set("distributed.ps.servers", "2")
                               .toml();
  const train::JobFile file = train::parse_job(text, "job.toml", {});
  EXPECT_TRUE(file.notes.empty());
  const train::JobConfig& job = file.job;
  EXPECT_EQ(job.name, "restart");
  EXPECT_EQ(job.seed, 3u);
  EXPECT_EQ(job.data.dataset, "synthetic");
  EXPECT_EQ(job.data.synthetic_samples, 900);
  EXPECT_EQ(job.data.synthetic_features, 6);
  EXPECT_EQ(job.data.synthetic_classes, 4);
  EXPECT_EQ(job.model.input_shape, (std::vector<int64_t>{6}));
  ASSERT_EQ(job.model.layers.size(), 5u);
  const std::vector<std::pair<std::string, int64_t>> linear = {{"fc1", 16}, {"fc2", 8}, {"fc3", 4}};
  for (size_t i = 0; i < linear.size(); ++i) {
    EXPECT_EQ(job.model.layers[2 * i].type, "linear");
    EXPECT_EQ(job.model.layers[2 * i].name, linear[i].first);
    EXPECT_EQ(job.model.layers[2 * i].out_features, linear[i].second);
    if (i + 1 < linear.size()) {
      EXPECT_EQ(job.model.layers[2 * i + 1].type, "relu");
    }
  }
  EXPECT_EQ(job.optimizer.type, "sgd");
  EXPECT_FLOAT_EQ(job.optimizer.lr, 1.0f);
  EXPECT_FLOAT_EQ(job.optimizer.momentum, 0.9f);
  EXPECT_EQ(job.schedule.type, "cosine");
  EXPECT_EQ(job.schedule.warmup_steps, 5);
  EXPECT_EQ(job.train.epochs, 2);
  EXPECT_EQ(job.train.batch_size, 30);
  EXPECT_EQ(job.train.checkpoint_every_steps, 1);
  EXPECT_EQ(job.distributed.strategy, "ps");
  // [distributed.ps] was read: an override's error names the table's line.
  const std::string before = text.substr(0, text.find("[distributed.ps]"));
  const auto line = std::count(before.begin(), before.end(), '\n') + 1;
  try {
    train::parse_job(text, "job.toml", {"distributed.ps.servers=0"});
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(
        std::string(e.what()),
        fmt::format("job.toml:{}: 'distributed.ps.servers': must be at least 1, got 0", line));
  }
}

// Tables in the usual order whatever the order of the calls; a key set again
// keeps its place with the new value; a float always reads back as a float.
TEST(TestJob, TablesKeepTheirOrderAndASecondSetReplaces) {
  EXPECT_EQ(TestJob()
                .set("zeta.k", "1")
                .epochs(1)
                .set("distributed.workers", "2")
                .name("x")
                .set("train.max_steps", "7")
                .epochs(4)
                .set("job.name", "\"y\"")
                .optimizer("adam", 2.0)
                .toml(),
            "\n[job]\nname = \"y\"\n"
            "\n[optimizer]\ntype = \"adam\"\nlr = 2.0\n"
            "\n[train]\nepochs = 4\nmax_steps = 7\n"
            "\n[distributed]\nworkers = 2\n"
            "\n[zeta]\nk = 1\n");
}

TEST(TestJob, AnMlpWithoutItsClassesIsABugOfTheTest) {
  EXPECT_THROW(TestJob().mlp({4}).toml(), InternalError);
  EXPECT_THROW(TestJob().set("epochs", "1"), InternalError);
}

}  // namespace
}  // namespace dtrain::testing
