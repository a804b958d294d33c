// `dtrain fl` at the job level (train/run_fl.h): a tiny synthetic federated
// job's metrics, checkpoints and final weights; resuming equals running
// straight through, bit for bit; bad [fl] keys; the FedAvg paper's models.
#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "fl/flat_model.h"
#include "io/checkpoint.h"
#include "io/file_system.h"
#include "io/safetensors.h"
#include "obs/metrics_log.h"
#include "obs/tensorboard_event.h"
#include "obs/tfrecord.h"
#include "testing/fault_fs.h"
#include "train/job_file.h"
#include "train/model_builder.h"
#include "train/run_fl.h"

#ifndef DTRAIN_SOURCE_DIR
#error "train_tests needs DTRAIN_SOURCE_DIR (tests/train/CMakeLists.txt)"
#endif

namespace dtrain::train {
namespace {

// 600 Gaussian blobs of 4 classes, 10 clients split by label shards, a
// 16-8-4 MLP: a round takes milliseconds.
std::string job_text(const std::string& output, int64_t rounds) {
  return R"([job]
name = "fl-test"
seed = 3
output = ")" +
         output +
         R"("
[data]
dataset = "synthetic"
synthetic_samples = 600
synthetic_classes = 4
partition = "shards"
shards_per_worker = 2
[model]
input_shape = [16]
[[model.layers]]
type = "linear"
out_features = 8
[[model.layers]]
type = "relu"
[[model.layers]]
type = "linear"
out_features = 4
[optimizer]
type = "sgd"
lr = 0.1
[train]
keep_checkpoints = 10
[fl]
clients = 10
fraction = 0.5
local_epochs = 1
local_batch = 10
rounds = )" +
         std::to_string(rounds) + "\n";
}

JobConfig job_for(const std::string& output, int64_t rounds,
                  const std::vector<std::string>& overrides = {}) {
  return parse_job(job_text(output, rounds), "fl-test.toml", overrides).job;
}

std::string run(const JobConfig& job) {
  std::ostringstream out;
  // Warnings of the tests' runs (refused checkpoints) go nowhere.
  Logger quiet(LogLevel::kOff, [](LogLevel, std::string_view) {});
  FlRunOptions options;
  options.out = &out;
  options.logger = &quiet;
  EXPECT_EQ(run_fl(job, options), 0);
  return out.str();
}

std::vector<nlohmann::json> events(const std::string& path, const std::string& name) {
  std::ifstream in(path);
  std::vector<nlohmann::json> found;
  for (std::string line; std::getline(in, line);) {
    nlohmann::json object = nlohmann::json::parse(line);
    if (object.at("event") == name) found.push_back(std::move(object));
  }
  return found;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

TEST(FlRun, ThreeRoundsWriteRoundEventsCheckpointsAndTheFinalWeights) {
  testing::TempDir tmp;
  const JobConfig job = job_for(tmp.path(), 3);
  const std::string out = run(job);

  const std::string metrics = tmp.file("metrics.jsonl");
  const auto rounds = events(metrics, "round");
  ASSERT_EQ(rounds.size(), 3u);
  for (size_t i = 0; i < rounds.size(); ++i) {
    const nlohmann::json& r = rounds[i];
    EXPECT_EQ(r.at("round"), static_cast<int64_t>(i + 1));
    EXPECT_EQ(r.at("sampled"), 5);
    EXPECT_EQ(r.at("participated"), 5);
    EXPECT_EQ(r.at("dropped"), 0);
    EXPECT_EQ(r.at("partial"), 0);
    EXPECT_EQ(r.at("rejected"), 0);
    for (const char* key : {"train_loss", "test_accuracy", "test_loss", "bytes_up", "bytes_down",
                            "seconds", "time"}) {
      EXPECT_TRUE(r.contains(key) && r.at(key).is_number()) << key << " in " << r.dump();
    }
    // The flat model is 16*8+8 + 8*4+4 = 172 floats; 5 clients each way.
    EXPECT_EQ(r.at("bytes_down"), 5 * 172 * 4);
  }
  ASSERT_EQ(events(metrics, "begin").size(), 1u);
  const auto end = events(metrics, "end");
  ASSERT_EQ(end.size(), 1u);
  EXPECT_EQ(end[0].at("rounds"), 3);
  EXPECT_EQ(end[0].at("test_accuracy"), rounds[2].at("test_accuracy"));
  // obs's reader (dtrain plot, the dashboard) skips the round events.
  const obs::MetricsLog log = obs::read_metrics_log(io::default_file_system(), metrics);
  EXPECT_EQ(log.begins, 1);

  // A line per round, then the summary.
  EXPECT_NE(out.find("round 1/3: 5 clients, train loss "), std::string::npos) << out;
  EXPECT_NE(out.find("round 3/3: 5 clients"), std::string::npos) << out;
  EXPECT_NE(out.find("final test accuracy "), std::string::npos) << out;

  // Every round was checkpointed, stamped with the job's identity.
  const std::string checkpoints = tmp.file("checkpoints");
  const io::Checkpoint last = io::read_checkpoint(checkpoints + "/ckpt-3.dtc");
  EXPECT_EQ(last.step, 3);
  EXPECT_EQ(last.metadata.at(std::string(io::kJobNameKey)), "fl-test");
  EXPECT_TRUE(io::default_file_system().exists(checkpoints + "/ckpt-1.dtc"));

  // model.safetensors is the last checkpoint's global model as the model's
  // state_dict.
  Rng rng(job.seed);
  auto model = build_model(job.model, rng, job.source);
  model->load_state_dict(io::load_safetensors(tmp.file("model.safetensors")), true);
  const fl::ServerState state = fl::from_checkpoint(last, fl::flat_size(*model));
  EXPECT_EQ(fl::flatten(*model), state.weights);
}

TEST(FlRun, ResumedAfterTwoRoundsEqualsFourStraightRoundsBitForBit) {
  testing::TempDir straight, resumed;
  run(job_for(straight.path(), 4));
  // Other thread counts on purpose: the result must not depend on them.
  run(job_for(resumed.path(), 2, {"fl.threads=3"}));
  const std::string out = run(job_for(resumed.path(), 4, {"fl.threads=2"}));
  EXPECT_NE(out.find("resuming from "), std::string::npos) << out;
  EXPECT_NE(out.find("round 3/4"), std::string::npos) << out;
  EXPECT_EQ(out.find("round 1/4"), std::string::npos) << out;
  const std::string a = file_bytes(straight.file("model.safetensors"));
  const std::string b = file_bytes(resumed.file("model.safetensors"));
  ASSERT_FALSE(a.empty());
  EXPECT_TRUE(a == b) << "the resumed run's final weights differ from the straight run's";
  // The resumed file holds two begin events and rounds 1..4 once each.
  const auto rounds = events(resumed.file("metrics.jsonl"), "round");
  ASSERT_EQ(rounds.size(), 4u);
  EXPECT_EQ(events(resumed.file("metrics.jsonl"), "begin").size(), 2u);
  EXPECT_EQ(rounds[3].at("test_accuracy"),
            events(straight.file("metrics.jsonl"), "round")[3].at("test_accuracy"));
}

TEST(FlRun, ACompletedRunResumedWritesTheSameWeightsWithoutTraining) {
  testing::TempDir tmp;
  run(job_for(tmp.path(), 2));
  const std::string before = file_bytes(tmp.file("model.safetensors"));
  const std::string out = run(job_for(tmp.path(), 2));
  EXPECT_NE(out.find("resumed after round 2"), std::string::npos) << out;
  EXPECT_EQ(out.find("round 1/2"), std::string::npos) << out;
  EXPECT_EQ(out.find("round 2/2"), std::string::npos) << out;
  EXPECT_EQ(file_bytes(tmp.file("model.safetensors")), before);
}

TEST(FlRun, CheckpointsOfAnotherSeedAreRefusedAndTheRunStartsAfresh) {
  testing::TempDir tmp, fresh;
  run(job_for(tmp.path(), 2, {"job.seed=4"}));
  const std::string out = run(job_for(tmp.path(), 2));
  EXPECT_NE(out.find("no valid checkpoint in "), std::string::npos) << out;
  EXPECT_NE(out.find("round 1/2"), std::string::npos) << out;
  EXPECT_TRUE(io::default_file_system().exists(tmp.file("checkpoints/rejected/ckpt-2.dtc")));
  run(job_for(fresh.path(), 2));
  EXPECT_EQ(file_bytes(tmp.file("model.safetensors")), file_bytes(fresh.file("model.safetensors")));
}

TEST(FlRun, NoResumeSetsEarlierCheckpointsAside) {
  testing::TempDir tmp;
  run(job_for(tmp.path(), 2));
  JobConfig again = job_for(tmp.path(), 3);
  again.resume = false;
  const std::string out = run(again);
  EXPECT_NE(out.find("round 1/3"), std::string::npos) << out;
  EXPECT_TRUE(io::default_file_system().exists(tmp.file("checkpoints/earlier-run/ckpt-2.dtc")));
  EXPECT_TRUE(io::default_file_system().exists(tmp.file("checkpoints/ckpt-3.dtc")));
}

TEST(FlRun, TargetAccuracyStopsTheRunAndTheSummarySaysWhen) {
  testing::TempDir tmp;
  const std::string out = run(job_for(tmp.path(), 50, {"fl.target_accuracy=0.5"}));
  const auto rounds = events(tmp.file("metrics.jsonl"), "round");
  ASSERT_FALSE(rounds.empty());
  ASSERT_LT(rounds.size(), 50u) << "the target was never reached: a weak test job";
  const int64_t last = rounds.back().at("round");
  EXPECT_GE(rounds.back().at("test_accuracy").get<double>(), 0.5);
  EXPECT_NE(out.find("at round " + std::to_string(last) + " (target 50.00%)"), std::string::npos)
      << out;
  EXPECT_EQ(events(tmp.file("metrics.jsonl"), "end")[0].at("reached_round"), last);

  // Run again: the target was reached at the checkpoint's round, so nothing
  // trains, and the summary names the same round.
  const std::string before = file_bytes(tmp.file("model.safetensors"));
  const std::string again = run(job_for(tmp.path(), 50, {"fl.target_accuracy=0.5"}));
  EXPECT_EQ(again.find("round " + std::to_string(last + 1) + "/50"), std::string::npos) << again;
  EXPECT_NE(again.find("at round " + std::to_string(last) + " (target 50.00%)"), std::string::npos)
      << again;
  EXPECT_EQ(file_bytes(tmp.file("model.safetensors")), before);
  EXPECT_EQ(events(tmp.file("metrics.jsonl"), "end")[1].at("reached_round"), last);
}

// DP-FedAvg with secure aggregation at the job level: epsilon in every
// round event and progress line, the budget stop (never above the target,
// exit 0, the model saved), and a resumed run continuing epsilon exactly.
TEST(FlRun, PrivateRoundsReportEpsilonStopAtTheBudgetAndResume) {
  const std::vector<std::string> dp = {"fl.secure_aggregation=true", "fl.dp_clip=1.0",
                                       "fl.dp_noise_multiplier=0.8"};
  testing::TempDir straight, resumed, budget;
  run(job_for(straight.path(), 4, dp));
  const auto rounds = events(straight.file("metrics.jsonl"), "round");
  ASSERT_EQ(rounds.size(), 4u);
  for (const auto& r : rounds) {
    EXPECT_TRUE(r.at("secure").get<bool>());
    EXPECT_GT(r.at("epsilon").get<double>(), 0.0);
    EXPECT_GT(r.at("epsilon_classic").get<double>(), r.at("epsilon").get<double>());
  }
  run(job_for(resumed.path(), 2, dp));
  const std::string out = run(job_for(resumed.path(), 4, dp));
  EXPECT_NE(out.find("round 3/4"), std::string::npos) << out;
  EXPECT_NE(out.find(", secure, "), std::string::npos) << out;
  EXPECT_NE(out.find("epsilon "), std::string::npos) << out;
  const auto again = events(resumed.file("metrics.jsonl"), "round");
  ASSERT_EQ(again.size(), 4u);
  EXPECT_EQ(again[3].at("epsilon"), rounds[3].at("epsilon"));
  EXPECT_EQ(file_bytes(resumed.file("model.safetensors")),
            file_bytes(straight.file("model.safetensors")));

  // A target between rounds 2 and 3's epsilon: two rounds run.
  const double target =
      (rounds[1].at("epsilon").get<double>() + rounds[2].at("epsilon").get<double>()) / 2;
  std::vector<std::string> with_target = dp;
  with_target.push_back("fl.dp_target_epsilon=" + std::to_string(target));
  const std::string stopped = run(job_for(budget.path(), 50, with_target));
  EXPECT_NE(stopped.find("privacy budget: stopped before round 3"), std::string::npos) << stopped;
  const auto budget_rounds = events(budget.file("metrics.jsonl"), "round");
  ASSERT_EQ(budget_rounds.size(), 2u);
  for (const auto& r : budget_rounds) EXPECT_LE(r.at("epsilon").get<double>(), target);
  EXPECT_EQ(events(budget.file("metrics.jsonl"), "privacy_stop").size(), 1u);
  EXPECT_FALSE(file_bytes(budget.file("model.safetensors")).empty());
}

// Unbalanced clients (lognormal sizes, the "quantity" partitioner): every
// sampled client has data and reports.
TEST(FlRun, QuantitySkewedClientsTrain) {
  testing::TempDir tmp;
  run(job_for(tmp.path(), 2, {"data.partition=\"quantity\"", "data.quantity_sigma=1.5"}));
  const auto rounds = events(tmp.file("metrics.jsonl"), "round");
  ASSERT_EQ(rounds.size(), 2u);
  for (const auto& r : rounds) {
    EXPECT_EQ(r.at("participated"), 5) << r.dump();
    EXPECT_EQ(r.at("dropped"), 0) << r.dump();
  }
  const auto begin = events(tmp.file("metrics.jsonl"), "begin");
  EXPECT_EQ(begin[0].at("partition"), "quantity");
}

// The TFRecord payloads of the one event file in `folder`.
std::vector<std::string> tensorboard_events(const std::string& folder) {
  io::FileSystem& fs = io::default_file_system();
  std::vector<std::string> names;
  for (const std::string& name : fs.list_directory(folder)) {
    if (name.rfind("events.out.tfevents.", 0) == 0) names.push_back(name);
  }
  EXPECT_EQ(names.size(), 1u) << folder;
  if (names.size() != 1) return {};
  const std::string blob = fs.read_file(io::join_path(folder, names[0]), io::kUnlimitedBytes);
  std::vector<std::string> payloads;
  size_t at = 0;
  while (at + 12 <= blob.size()) {
    uint64_t length = 0;
    std::memcpy(&length, blob.data() + at, sizeof length);  // little-endian host
    std::string framed;
    obs::append_tfrecord(framed, blob.substr(at + 12, length));
    EXPECT_EQ(blob.substr(at, framed.size()), framed) << "record at " << at;
    payloads.push_back(blob.substr(at + 12, length));
    at += framed.size();
  }
  EXPECT_EQ(at, blob.size());
  return payloads;
}

// The recorder on its own, as the deployed server uses it: a round with
// dropped, partial and rejected clients, its event and its scalars.
TEST(FlRun, RecorderWritesTheRoundsFiguresAsEventAndScalars) {
  testing::TempDir tmp;
  const JobConfig job = job_for(tmp.path(), 100);
  const fl::ModelFactory make_model = [&job] {
    Rng rng(job.seed);
    return std::unique_ptr<nn::Module>(build_model(job.model, rng, job.source));
  };
  std::ostringstream out;
  Logger quiet(LogLevel::kOff, [](LogLevel, std::string_view) {});
  fl::RoundReport r;
  r.round = 7;
  r.sampled = {1, 2, 3, 4, 5};
  r.participated = {1, 2, 3};
  r.dropped = {4, 5};
  r.partial = {3};
  r.rejected = 1;
  r.train_loss = 0.5;
  r.bytes_down = 3440;
  r.bytes_up = 2064;
  r.seconds = 1.25;
  r.test = fl::Evaluation{0.75, 0.625, 120};
  {
    FlRunRecorder recorder(job, make_model, &out, quiet);
    recorder.begin(FlRunStart{});
    recorder.on_round(r);
  }
  EXPECT_NE(out.str().find("round 7/100: 3 clients (2 dropped, 1 partial, 1 rejected), train loss "
                           "0.5000, test accuracy 62.50%, 1.25 s\n"),
            std::string::npos)
      << out.str();
  const auto rounds = events(tmp.file("metrics.jsonl"), "round");
  ASSERT_EQ(rounds.size(), 1u);
  nlohmann::json line = rounds[0];
  line.erase("time");
  EXPECT_EQ(line, nlohmann::json::parse(R"({"event":"round","round":7,"sampled":5,
      "participated":3,"dropped":2,"partial":1,"rejected":1,"failed":false,"train_loss":0.5,
      "bytes_up":2064,"bytes_down":3440,"seconds":1.25,"test_accuracy":0.625,"test_loss":0.75})"));

  const std::vector<std::string> tb = tensorboard_events(tmp.file("tensorboard"));
  const std::vector<std::pair<std::string, double>> want{
      {"fl/train_loss", 0.5},    {"fl/participated", 3.0},   {"fl/dropped", 2.0},
      {"fl/partial", 1.0},       {"fl/rejected", 1.0},       {"fl/bytes_up", 2064.0},
      {"fl/bytes_down", 3440.0}, {"fl/round_seconds", 1.25}, {"test/loss", 0.75},
      {"test/accuracy", 0.625}};
  ASSERT_EQ(tb.size(), want.size() + 1);  // the file-version event first
  for (size_t i = 0; i < want.size(); ++i) {
    const std::string& e = tb[i + 1];
    ASSERT_EQ(e[0], '\x09');  // field 1 (wall time), a double
    uint64_t bits = 0;
    std::memcpy(&bits, e.data() + 1, sizeof bits);
    EXPECT_EQ(e, obs::encode_scalar_event(want[i].first, static_cast<float>(want[i].second), 7,
                                          std::bit_cast<double>(bits)))
        << want[i].first;
  }
}

TEST(FlRun, BadFlKeysAreConfigErrorsNamingTheKey) {
  testing::TempDir tmp;
  const auto key_of = [&](const std::vector<std::string>& overrides) -> std::string {
    try {
      job_for(tmp.path(), 3, overrides);
    } catch (const ConfigError& e) {
      return e.key();
    }
    return "(no error)";
  };
  EXPECT_EQ(key_of({"fl.bogus=1"}), "fl.bogus");
  EXPECT_EQ(key_of({"fl.fraction=1.5"}), "fl.fraction");
  EXPECT_EQ(key_of({"fl.clients=0"}), "fl.clients");
  EXPECT_EQ(key_of({"fl.rounds=0"}), "fl.rounds");
  EXPECT_EQ(key_of({"data.partition=pathological"}), "data.partition");
  EXPECT_EQ(key_of({"data.shards_per_worker=0"}), "data.shards_per_worker");
}

TEST(FlRun, CompressedUploadsCountTheirMessagesAndRefuseWhatUploadsCannotDo) {
  testing::TempDir tmp;
  // The 16 x 8 layer (128 floats) is above min_size 64: fp16 halves it.
  const JobConfig job =
      job_for(tmp.path(), 2, {"compression.type=fp16", "compression.min_size=64"});
  run(job);
  const auto rounds = events(tmp.file("metrics.jsonl"), "round");
  ASSERT_EQ(rounds.size(), 2u);
  for (const nlohmann::json& r : rounds) {
    const int64_t up = r.at("bytes_up");
    EXPECT_GT(up, 5 * (172 * 4 - 128 * 2)) << r.dump();  // the 128 floats at 2 bytes, plus headers
    EXPECT_LT(up, 5 * 172 * 4) << r.dump();
  }

  const auto key_of = [&](const std::vector<std::string>& overrides) -> std::string {
    try {
      fl_upload_options(job_for(tmp.path(), 2, overrides));
    } catch (const ConfigError& e) {
      return e.key();
    }
    return "(no error)";
  };
  EXPECT_EQ(key_of({"compression.type=topk", "compression.local_steps=4"}),
            "compression.local_steps");
  EXPECT_EQ(key_of({"compression.type=topk", "compression.start_step=10"}),
            "compression.start_step");
  EXPECT_EQ(key_of({"compression.type=topk", "compression.momentum=0.9"}), "compression.momentum");
  EXPECT_EQ(key_of({"compression.type=qsgd"}), "(no error)");
}

TEST(FlRun, RoundLineNamesDroppedPartialAndRejectedClients) {
  fl::RoundReport r;
  r.round = 12;
  r.participated = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  r.dropped = {11};
  r.partial = {3, 4};
  r.train_loss = 0.2312;
  r.seconds = 0.84;
  r.test = fl::Evaluation{0.1, 0.97123, 100};
  EXPECT_EQ(format_round_line(r, 100),
            "round 12/100: 10 clients (1 dropped, 2 partial), train loss 0.2312, test accuracy "
            "97.12%, 0.84 s");
  r.dropped.clear();
  r.partial.clear();
  r.rejected = 2;
  r.test.reset();
  EXPECT_EQ(format_round_line(r, 100),
            "round 12/100: 10 clients (2 rejected), train loss 0.2312, 0.84 s");
}

// The FedAvg paper's models as the example job files describe them.
int64_t example_parameters(const std::string& name) {
  const JobConfig job = read_job_file(std::string(DTRAIN_SOURCE_DIR) + "/examples/" + name, {}).job;
  Rng rng(job.seed);
  return build_model(job.model, rng, job.source)->num_parameters();
}

TEST(FlRun, ExampleModelsHaveThePapersParameterCounts) {
  EXPECT_EQ(example_parameters("fl_mnist_2nn.toml"), 199210);
  EXPECT_EQ(example_parameters("fl_mnist_cnn.toml"), 1663370);
}

}  // namespace
}  // namespace dtrain::train
