// `dtrain train` on synthetic clicks (docs/ctr-example.md): the job-file keys
// of the ctr data set and the embedding layer, and the held-out AUC report.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "core/deadline.h"
#include "testing/fault_fs.h"
#include "testing/process.h"

namespace dtrain {
namespace {

using testing::CliRun;
using testing::run_dtrain;
using testing::write_file;

// 4 fields of 100 ids in 1024 buckets: seconds even under sanitizers.
const char* kCtrJob = R"(
[job]
name = "ctr-small"
seed = 2

[data]
dataset = "ctr"
ctr_fields = 4
ctr_vocabulary = 100
ctr_zipf_exponent = 1.5
ctr_hash_buckets = 1024
ctr_train_samples = 20000
ctr_test_samples = 4000
ctr_weight_stddev = 1.0
ctr_seed = 3

[model]
input_shape = [4]

[[model.layers]]
type = "embedding"
name = "embedding"
num_embeddings = 1024
embedding_dim = 4

[[model.layers]]
type = "flatten"

[[model.layers]]
type = "linear"
out_features = 16

[[model.layers]]
type = "relu"

[[model.layers]]
type = "linear"
out_features = 2

[optimizer]
type = "adagrad"
lr = 0.2

[train]
epochs = 1
batch_size = 128
log_every_steps = 50
)";

std::vector<nlohmann::json> json_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

TEST(DtrainCliCtr, ReportsTheHeldOutAucBesideTheGeneratingModels) {
  testing::TempDir dir;
  std::ofstream(dir.file("ctr.toml")) << kCtrJob;
  const std::string out = dir.file("out");
  const CliRun run =
      run_dtrain({"train", dir.file("ctr.toml"), "--output", out, "--progress", "plain"});
  ASSERT_TRUE(run.status.ok()) << run.status.describe() << "\n" << run.output;
  EXPECT_NE(run.output.find("20000 training / 4000 test samples"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("test AUC 0."), std::string::npos) << run.output;
  EXPECT_NE(run.output.find(" on 4000 samples, generating model 0."), std::string::npos)
      << run.output;

  const std::vector<nlohmann::json> events = json_lines(out + "/metrics.jsonl");
  ASSERT_FALSE(events.empty());
  const nlohmann::json& auc = events.back();
  ASSERT_EQ(auc.at("event"), "auc") << auc.dump();
  EXPECT_EQ(auc.at("test_samples"), 4000);
  const double learned = auc.at("test_auc"), generating = auc.at("generating_model_auc");
  // One short epoch: well above chance, not above the generating model by
  // more than the noise of 4000 samples.
  EXPECT_GT(learned, 0.7);
  EXPECT_GT(generating, 0.8);
  EXPECT_LT(learned, generating + 0.01);
}

// The embedding table's rows live on the parameter servers: workers pull the
// rows a batch touches and push only their gradients. Trained long enough
// (100k samples, 2 epochs: 1564 synchronous steps of 2 x 64 rows), the model
// reaches the generating model's held-out AUC as one process does
// (tests/train/ctr_training_test.cpp). Measured gap 0.005; bound 0.01.
TEST(DtrainCliCtr, ParameterServersWithSparseRowsLearnTheGeneratingModel) {
  testing::TempDir dir;
  std::ofstream(dir.file("ctr.toml")) << kCtrJob;
  const CliRun ps = run_dtrain({"train",      dir.file("ctr.toml"),
                                "--output",   dir.file("ps"),
                                "--strategy", "ps",
                                "--servers",  "2",
                                "--workers",  "2",
                                "--set",      "job.seed=1",
                                "--set",      "data.ctr_seed=1",
                                "--set",      "data.ctr_train_samples=100000",
                                "--set",      "data.ctr_test_samples=10000",
                                "--set",      "train.epochs=2"});
  ASSERT_TRUE(ps.status.ok()) << ps.status.describe() << "\n" << ps.output;
  EXPECT_NE(ps.output.find("strategy ps with 2 workers"), std::string::npos) << ps.output;
  const nlohmann::json auc = json_lines(dir.file("ps") + "/metrics.jsonl").back();
  ASSERT_EQ(auc.at("event"), "auc") << auc.dump();
  const double learned = auc.at("test_auc"), generating = auc.at("generating_model_auc");
  EXPECT_GT(generating, 0.8);
  EXPECT_LT(generating - learned, 0.01) << "learned " << learned << ", generating " << generating;
}

TEST(DtrainCliCtr, OutOfRangeCtrKeysAreConfigErrors) {
  testing::TempDir dir;
  std::ofstream(dir.file("ctr.toml")) << kCtrJob;
  CliRun run = run_dtrain({"train", dir.file("ctr.toml"), "--output", dir.file("out"), "--set",
                           "data.ctr_hash_buckets=16777217"});
  EXPECT_TRUE(run.status.exited && run.status.code == 2) << run.status.describe();
  EXPECT_NE(run.output.find("'data': ctr data: hash_buckets = 16777217 is out of range: needs 1 to "
                            "2^24 (16777216) buckets"),
            std::string::npos)
      << run.output;

  run = run_dtrain({"train", dir.file("ctr.toml"), "--output", dir.file("out"), "--set",
                    "model.layers.0.embedding_dim=0"});
  EXPECT_TRUE(run.status.exited && run.status.code == 2) << run.status.describe();
  EXPECT_NE(run.output.find("'model.layers[0].embedding_dim': embedding 'embedding' needs a "
                            "positive embedding_dim"),
            std::string::npos)
      << run.output;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// `dtrain train` of the small CTR job with S servers and 2 workers into
// `out`, then `extra`.
std::vector<std::string> ps_args(const testing::TempDir& dir, const std::string& out,
                                 const std::string& servers,
                                 const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args = {
      "train", dir.file("ctr.toml"), "--output", dir.file(out), "--strategy", "ps", "--servers",
      servers, "--workers",          "2",        "--progress",  "plain"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// The next step's rows ride with this step's pull (distributed.ps.
// prefetch_rows, on by default): the same weights, byte for byte, as the
// run that pulls them before each forward, with 1 and 2 server processes.
TEST(DtrainCliCtr, RowsPrefetchedWithThePullTrainTheSameBytes) {
  testing::TempDir dir;
  std::ofstream(dir.file("ctr.toml")) << kCtrJob;
  for (const std::string servers : {"1", "2"}) {
    SCOPED_TRACE(servers + " server(s)");
    const CliRun with = run_dtrain(ps_args(dir, "with" + servers, servers));
    ASSERT_TRUE(with.status.ok()) << with.status.describe() << "\n" << with.output;
    const CliRun without = run_dtrain(ps_args(dir, "without" + servers, servers,
                                              {"--set", "distributed.ps.prefetch_rows=false"}));
    ASSERT_TRUE(without.status.ok()) << without.status.describe() << "\n" << without.output;
    // 157 steps: every lookup but each epoch's first took prefetched rows.
    EXPECT_TRUE(has(with.output, "ps worker 0: 156 lookups took prefetched rows, 0 pulled"))
        << with.output;
    EXPECT_FALSE(has(without.output, "lookups took prefetched rows")) << without.output;
    const std::string a = file_bytes(dir.file("with" + servers) + "/model.safetensors");
    ASSERT_FALSE(a.empty());
    EXPECT_TRUE(a == file_bytes(dir.file("without" + servers) + "/model.safetensors"));
  }
}

// Server 1 SIGKILLs itself when its version reaches 5 (cli/test_hooks.h),
// so the workers' next requests, each carrying the next step's row pulls,
// find it dead; server 0 takes its range over (replicas 1, no restart left)
// and answers them, rows included: the run ends with a fault-free run's
// bytes.
TEST(DtrainCliCtr, AServerKilledWithRowPullsOutstandingIsTakenOverAndTheRunEndsTheSame) {
  testing::TempDir dir;
  std::ofstream(dir.file("ctr.toml")) << kCtrJob;
  const std::vector<std::string> covered = {"--replicas", "1", "--max-restarts", "0",
                                            "--no-resume"};
  const CliRun clean = run_dtrain(ps_args(dir, "clean", "2", covered));
  ASSERT_TRUE(clean.status.ok()) << clean.status.describe() << "\n" << clean.output;
  const CliRun killed =
      run_dtrain(ps_args(dir, "killed", "2", covered), {{"DTRAIN_TEST_KILL_AT_STEP", "1:5"}});
  ASSERT_TRUE(killed.status.ok()) << killed.status.describe() << "\n" << killed.output;
  EXPECT_TRUE(has(killed.output, "ps server 0: took over server 1's range")) << killed.output;
  EXPECT_TRUE(has(killed.output, "lookups took prefetched rows, 0 pulled")) << killed.output;
  const std::string a = file_bytes(dir.file("clean") + "/model.safetensors");
  ASSERT_FALSE(a.empty());
  EXPECT_TRUE(a == file_bytes(dir.file("killed") + "/model.safetensors"));
}

}  // namespace
}  // namespace dtrain
