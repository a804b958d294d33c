#include "train/job_file.h"

#include <cblas.h>
#include <gtest/gtest.h>

#include "comm/rendezvous/launch_env.h"
#include "core/error.h"
#include "core/log.h"
#include "tensor/intra_op.h"
#include "train/run_job.h"

namespace dtrain::train {
namespace {

const char* kJob = R"(
[job]
name = "t"
seed = 7

[model]
input_shape = [1, 28, 28]

[[model.layers]]
type = "flatten"

[[model.layers]]
type = "linear"
name = "fc1"
out_features = 32

[optimizer]
type = "adam"
lr = 0.001

[train]
epochs = 2
batch_size = 64
)";

JobConfig job_of(const std::string& text, const std::string& source,
                 const std::vector<std::string>& overrides) {
  return parse_job(text, source, overrides).job;
}

std::string error_of(const std::string& text, const std::vector<std::string>& overrides = {}) {
  try {
    parse_job(text, "job.toml", overrides);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

TEST(JobFile, ReadsEverySection) {
  JobConfig job = job_of(kJob, "job.toml", {});
  EXPECT_EQ(job.name, "t");
  EXPECT_EQ(job.seed, 7u);
  EXPECT_EQ(job.model.input_shape, (std::vector<int64_t>{1, 28, 28}));
  ASSERT_EQ(job.model.layers.size(), 2u);
  EXPECT_EQ(job.model.layers[0].name, "0");
  EXPECT_EQ(job.model.layers[1].name, "fc1");
  EXPECT_EQ(job.model.layers[1].out_features, 32);
  EXPECT_EQ(job.optimizer.type, "adam");
  EXPECT_FLOAT_EQ(job.optimizer.lr, 0.001f);
  EXPECT_EQ(job.train.epochs, 2);
  EXPECT_EQ(job.train.batch_size, 64);
}

TEST(JobFile, OverridesApplyBeforeChecking) {
  JobConfig job =
      job_of(kJob, "job.toml",
             {"train.epochs=5", "optimizer.lr=0.5", "job.output=out/x", "distributed.workers=3"});
  EXPECT_EQ(job.train.epochs, 5);
  EXPECT_FLOAT_EQ(job.optimizer.lr, 0.5f);
  EXPECT_EQ(job.output, "out/x");
  EXPECT_EQ(job.distributed.workers, 3);
  EXPECT_EQ(job.train.max_restarts, 0);
  EXPECT_EQ(job_of(kJob, "job.toml", {"train.max_restarts=2"}).train.max_restarts, 2);
  EXPECT_FALSE(job.train.elastic);
  EXPECT_EQ(
      job_of(kJob, "job.toml", {"distributed.link_mbps=100", "distributed.slow_link=[\"1=10\"]"})
          .distributed.slow_link,
      (std::vector<std::string>{"1=10"}));
  const JobConfig elastic = job_of(kJob, "job.toml", {"train.elastic=true", "train.min_workers=2"});
  EXPECT_TRUE(elastic.train.elastic);
  EXPECT_EQ(elastic.train.min_workers, 2);
  EXPECT_EQ(error_of(kJob, {"train.epoch=5"}),
            "job.toml: 'train.epoch': unknown key (known: batch_size, checkpoint_every_seconds, "
            "checkpoint_every_steps, class_weights, drop_last, elastic, epochs, eval_batch_size, "
            "histogram_every_steps, keep_checkpoints, log_every_steps, max_restarts, max_steps, "
            "min_workers, tensorboard, threads, trace, trace_steps)");
  EXPECT_EQ(error_of(kJob, {"noequals"}), "--set: 'noequals': expected key=value");
  EXPECT_DOUBLE_EQ(job_of(kJob, "job.toml", {"train.checkpoint_every_seconds=2.5"})
                       .train.checkpoint_every_seconds,
                   2.5);
  EXPECT_NE(error_of(kJob, {"train.checkpoint_every_seconds=-1.0"})
                .find("'train.checkpoint_every_seconds': must be 0 (off) or positive, got -1"),
            std::string::npos);
}

TEST(JobFile, UnknownKeysNameTheKeyAndLine) {
  std::string text = std::string(kJob) + "\n[data]\npaht = \"x\"\n";
  EXPECT_NE(error_of(text).find("job.toml:26: 'data.paht': unknown key"), std::string::npos)
      << error_of(text);
  EXPECT_NE(error_of("[jobs]\nname = 1\n").find("job.toml:1: 'jobs': unknown key"),
            std::string::npos);
}

TEST(JobFile, WrongTypesNameTheKeyAndLine) {
  std::string text = kJob;
  text.replace(text.find("epochs = 2"), 10, "epochs = \"two\"");
  EXPECT_EQ(error_of(text), "job.toml:22: 'train.epochs': expected an integer, got string");
  text = kJob;
  text.replace(text.find("lr = 0.001"), 10, "lr = -1.0");
  EXPECT_EQ(error_of(text), "job.toml:19: 'optimizer.lr': must be positive, got -1");
  text = kJob;
  text.replace(text.find("type = \"adam\""), 13, "type = \"adma\"");
  EXPECT_EQ(error_of(text),
            "job.toml:18: 'optimizer.type': 'adma' is not one of: sgd, adam, adamw, adagrad");
}

TEST(JobFile, LayerErrors) {
  std::string text = kJob;
  text.replace(text.find("type = \"flatten\""), 16, "type = \"flaten\"");
  EXPECT_NE(error_of(text).find("'model.layers[0].type': 'flaten' is not one of"),
            std::string::npos)
      << error_of(text);
  text = kJob;
  text.replace(text.find("out_features = 32"), 17, "out_feature = 32");
  EXPECT_NE(error_of(text).find("job.toml:15: 'model.layers[1].out_feature': unknown key"),
            std::string::npos)
      << error_of(text);
}

TEST(JobFile, SyntaxErrorsNameTheLine) {
  EXPECT_NE(error_of("[job]\nname = \n").find("job.toml:2:"), std::string::npos)
      << error_of("[job]\nname = \n");
  EXPECT_NE(error_of("[job]\nname = \"x\"\n").find("model.layers"), std::string::npos);
}

}  // namespace
}  // namespace dtrain::train

namespace dtrain::train {
namespace {

TEST(JobFile, OverridesReachLayersByIndex) {
  JobConfig job = job_of(kJob, "job.toml", {"model.layers.1.out_features=64"});
  EXPECT_EQ(job.model.layers[1].out_features, 64);
  EXPECT_EQ(error_of(kJob, {"model.layers.5.out_features=64"}),
            "--set: 'model.layers.5.out_features': 'layers' has 2 entries; expected "
            "layers.<index>.<key>");
  EXPECT_EQ(
      error_of(kJob, {"model.layers.x.out_features=64"}),
      "--set: 'model.layers.x.out_features': 'layers' is an array: expected an index, got 'x'");
}

}  // namespace
}  // namespace dtrain::train

namespace dtrain::train {
namespace {

TEST(JobFileStrategies, EachStrategyReadsItsOwnTable) {
  const std::string text = std::string(kJob) +
                           "\n[distributed]\nstrategy = \"ps\"\nworkers = 3\n\n[distributed.ps]\n"
                           "servers = 2\nconsistency = \"ssp\"\n\n[distributed.allreduce]\n"
                           "bucket_bytes = 4096\n";
  const JobFile file = parse_job(text, "job.toml", {});
  EXPECT_TRUE(file.notes.empty());
  EXPECT_EQ(file.job.distributed.strategy, "ps");
  EXPECT_EQ(file.job.distributed.workers, 3);
  // Every registered strategy's options are there, ready for --strategy.
  EXPECT_EQ(file.job.distributed.strategies.size(), 5u);
  EXPECT_EQ(error_of(text, {"distributed.ps.servers=0"}),
            "job.toml:29: 'distributed.ps.servers': must be at least 1, got 0");
  EXPECT_EQ(error_of(text, {"distributed.ps.consistency=\"eventual\""}),
            "job.toml:29: 'distributed.ps.consistency': 'eventual' is not one of: sync, async, "
            "ssp");
  EXPECT_NE(error_of(text, {"distributed.ps.bucket_bytes=1"})
                .find("'distributed.ps.bucket_bytes': unknown key (known: backup_workers, "
                      "colocate, consistency, overlap, prefetch_rows, replicas, servers, shm, "
                      "staleness, takeover)"),
            std::string::npos);
  EXPECT_NE(error_of(text, {"distributed.ps.consistency=\"async\"", "distributed.ps.overlap=true"})
                .find("'distributed.ps.overlap': pushes overlap backward in consistency 'sync' "
                      "only, not 'async'"),
            std::string::npos);
}

TEST(JobFileStrategies, FlatKeysAreDeprecatedAliasesWithANote) {
  const std::string text =
      std::string(kJob) + "\n[distributed]\nservers = 2\nbucket_bytes = 4096\n";
  const JobFile file = parse_job(text, "job.toml", {});
  ASSERT_EQ(file.notes.size(), 2u);
  EXPECT_EQ(file.notes[0],
            "job.toml:27: 'distributed.bucket_bytes' is deprecated: write it as 'bucket_bytes' in "
            "[distributed.allreduce]");
  EXPECT_EQ(file.notes[1],
            "job.toml:26: 'distributed.servers' is deprecated: write it as 'servers' in "
            "[distributed.ps]");
  // Errors name the key where it was written.
  EXPECT_EQ(error_of(text, {"distributed.servers=0"}),
            "job.toml:25: 'distributed.servers': must be at least 1, got 0");
  EXPECT_EQ(error_of(text, {"distributed.ps.servers=3"}),
            "job.toml: 'distributed.ps.servers': given twice: also as the deprecated "
            "'distributed.servers' (line 26); keep only the one in [distributed.ps]");
}

TEST(JobFileStrategies, AnUnknownStrategyListsTheRegisteredOnes) {
  EXPECT_EQ(error_of(kJob, {"distributed.strategy=\"swarm\""}),
            "job.toml: 'distributed.strategy': 'swarm' is not one of: local, mirrored, allreduce, "
            "ps, gossip");
}

TEST(JobFile, OutputMustNameAFolderAndTheLearningRateBeFinite) {
  EXPECT_NE(error_of(kJob, {"job.output=\"\""}).find("'job.output': must name a folder"),
            std::string::npos);
  EXPECT_EQ(error_of(kJob, {"optimizer.lr=inf"}),
            "job.toml:17: 'optimizer.lr': must be finite, got inf");
}

}  // namespace
}  // namespace dtrain::train

namespace dtrain::train {
namespace {

TEST(JobFileCompression, ReadsTheTableAndOverrides) {
  const JobConfig job =
      job_of(kJob, "job.toml",
             {"compression.type=\"powersgd\"", "compression.rank=2", "compression.start_step=10",
              "compression.guard=true", "compression.min_size=64"});
  const strategy::CompressionSettings& s = job.compression.settings;
  EXPECT_EQ(s.codec.method, compress::Method::kPowerSgd);
  EXPECT_EQ(s.codec.rank, 2);
  EXPECT_EQ(s.codec.min_size, 64u);
  EXPECT_EQ(s.start_step, 10);
  EXPECT_TRUE(job.compression.guard.enabled);
  EXPECT_EQ(s.describe(), "powersgd rank 2 + EF after 10 dense steps");
}

TEST(JobFileCompression, BadSettingsNameTheKey) {
  const auto contains = [](const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
  };
  EXPECT_PRED2(contains, error_of(kJob, {"compression.type=\"zip\""}), "compression.type");
  EXPECT_PRED2(contains, error_of(kJob, {"compression.type=\"zip\""}), "powersgd");
  EXPECT_PRED2(contains, error_of(kJob, {"compression.density=0.0"}), "compression.density");
  EXPECT_PRED2(contains, error_of(kJob, {"compression.density=1.5"}), "compression.density");
  EXPECT_PRED2(contains, error_of(kJob, {"compression.rank=0"}), "compression.rank");
  EXPECT_PRED2(contains, error_of(kJob, {"compression.levels=0"}), "compression.levels");
  EXPECT_PRED2(contains, error_of(kJob, {"compression.local_steps=0"}), "compression.local_steps");
  EXPECT_PRED2(contains, error_of(kJob, {"compression.type=\"topk\"", "compression.local_steps=4"}),
               "compression.local_steps");
  EXPECT_PRED2(contains, error_of(kJob, {"compression.guard=true"}), "compression.guard");
  EXPECT_PRED2(contains, error_of(kJob, {"compression.typo=1"}), "compression.typo");
}

TEST(JobFileCompression, AStrategyThatCannotUseItRefusesIt) {
  comm::LaunchInfo launch;  // one process, not launched
  const auto refusal = [&](const std::vector<std::string>& overrides) -> std::string {
    const JobConfig job = job_of(kJob, "job.toml", overrides);
    try {
      job_strategy(job, job_facts(job, launch), Logger::stderr_logger());
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_NE(refusal({"compression.type=\"fp16\""}).find("compression.type"), std::string::npos);
  EXPECT_NE(refusal({"compression.type=\"fp16\"", "distributed.strategy=\"mirrored\"",
                     "distributed.workers=2"})
                .find("compression.type"),
            std::string::npos);
  EXPECT_NE(refusal({"compression.type=\"topk\"", "compression.guard=true",
                     "distributed.strategy=\"ps\"", "distributed.workers=2"})
                .find("compression.guard"),
            std::string::npos);
  EXPECT_EQ(refusal({"compression.type=\"topk\"", "distributed.workers=2"}), "no error");
}

}  // namespace
}  // namespace dtrain::train

namespace dtrain::train {
namespace {

TEST(JobFileLinks, ReadsTheEmulatedLinkAndRefusesNonsense) {
  const JobConfig job =
      job_of(kJob, "job.toml", {"distributed.link_mbps=100", "distributed.link_latency_ms=1.5"});
  EXPECT_EQ(job.distributed.link_mbps, 100.0);
  EXPECT_EQ(job.distributed.link_latency_ms, 1.5);
  EXPECT_NE(error_of(kJob, {"distributed.link_mbps=-1"}).find("distributed.link_mbps"),
            std::string::npos);
  EXPECT_NE(error_of(kJob, {"distributed.link_latency_ms=2"}).find("needs distributed.link_mbps"),
            std::string::npos);
}

TEST(JobFileLinks, ReadsSlowLinksAndRefusesThemWithoutALink) {
  const JobConfig job = job_of(kJob, "job.toml",
                               {"distributed.link_mbps=1000", "distributed.link_latency_ms=0.1",
                                "distributed.slow_link=[\"3=10\", \"1=2.5\"]"});
  EXPECT_EQ(job.distributed.slow_link, (std::vector<std::string>{"3=10", "1=2.5"}));
  const std::string no_link = error_of(kJob, {"distributed.slow_link=[\"3=10\"]"});
  EXPECT_NE(no_link.find("'distributed.slow_link': needs distributed.link_mbps"), std::string::npos)
      << no_link;
  for (const char* bad : {"[\"3\"]", "[\"x=2\"]", "[\"-1=2\"]", "[\"2=0.5\"]", "[\"all=2\"]"}) {
    const std::string e =
        error_of(kJob, {"distributed.link_mbps=100", std::string("distributed.slow_link=") + bad});
    EXPECT_NE(e.find("distributed.slow_link"), std::string::npos) << bad << ": " << e;
  }
  const SlowLink s = parse_slow_link("3=10", "x", "k");
  EXPECT_EQ(s.rank, 3);
  EXPECT_DOUBLE_EQ(s.factor, 10.0);
}

// The options each worker's transport gets: the slow rank's bandwidth
// divided and latency multiplied by its factor, everyone else's as set.
TEST(JobFileLinks, TheSlowLinkReachesOnlyItsRank) {
  JobConfig job = job_of(kJob, "job.toml",
                         {"distributed.link_mbps=1000", "distributed.link_latency_ms=0.1",
                          "distributed.slow_link=[\"3=10\"]"});
  for (int64_t r = 0; r < 8; ++r) {
    const std::optional<comm::LinkShaperOptions> link = worker_link(job, r, 8);
    ASSERT_TRUE(link.has_value()) << r;
    EXPECT_DOUBLE_EQ(link->mbps, r == 3 ? 100.0 : 1000.0) << r;
    EXPECT_DOUBLE_EQ(link->latency_ms, r == 3 ? 1.0 : 0.1) << r;
  }
  try {
    worker_link(job, 0, 3);
    FAIL() << "rank 3 of 3 workers accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("names rank 3, but the job has 3 workers"),
              std::string::npos)
        << e.what();
  }
  // --slow-link adds entries after the file was checked: the run checks again.
  JobConfig unlinked = job_of(kJob, "job.toml", {});
  EXPECT_FALSE(worker_link(unlinked, 0, 2).has_value());
  unlinked.distributed.slow_link.push_back("1=10");
  EXPECT_THROW(worker_link(unlinked, 0, 2), ConfigError);
}

}  // namespace
}  // namespace dtrain::train

namespace dtrain::train {
namespace {

// train.threads = 2 sets two intra-op threads and OpenBLAS at one thread, so
// the dense layers split their GEMMs over the team (tensor/ops.h) and no
// OpenBLAS thread competes with it; 0 is clamped to 1.
TEST(ComputeThreads, TrainThreadsSetTheIntraOpThreadsAndOpenBlasAtOne) {
  openblas_set_num_threads(2);
  JobConfig job;
  job.train.threads = 2;
  set_compute_threads(job);
  EXPECT_EQ(tensor::intra_op_threads(), 2);
  EXPECT_EQ(openblas_get_num_threads(), 1);
  job.train.threads = 0;
  set_compute_threads(job);
  EXPECT_EQ(tensor::intra_op_threads(), 1);
  EXPECT_EQ(openblas_get_num_threads(), 1);
}

}  // namespace
}  // namespace dtrain::train
