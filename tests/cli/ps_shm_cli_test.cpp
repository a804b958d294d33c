// The ps's shared-memory data path through the dtrain executable
// (docs/parameter-server.md "Shared memory for same-host links"): servers
// and workers as real processes started by the launcher on private ipc,
// with distributed.ps.shm on (the default) and off. The models are the same
// bytes, with SGD + momentum and with Adam, 1 and 2 servers, and with a
// server SIGKILLed mid-run whose range a backup takes over; the logs show
// that the on runs took the segments and the off runs did not.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "testing/fault_fs.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using testing::CliRun;
using testing::run_dtrain;
using testing::write_file;

// 12 sync steps on blobs (a global batch of 48 over 2 workers).
const std::string kJob = testing::TestJob()
                             .name("ps-shm")
                             .seed(5)
                             .synthetic(600, 10, 3)
                             .mlp({32})
                             .optimizer("sgd", 0.05)
                             .epochs(1)
                             .set("train.max_steps", "12")
                             .batch(48)
                             .toml();

const std::map<std::string, std::vector<std::string>> kOptimizers = {
    {"sgd+momentum", {"--set", "optimizer.momentum=0.9"}},
    {"adam", {"--set", "optimizer.type=\"adam\"", "--set", "optimizer.lr=0.01"}},
};

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

size_t count(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void expect_same_bytes(const std::string& a, const std::string& b) {
  ASSERT_TRUE(std::filesystem::exists(a)) << a;
  ASSERT_TRUE(std::filesystem::exists(b)) << b;
  EXPECT_TRUE(bytes_of(a) == bytes_of(b)) << a << " and " << b << " differ";
}

CliRun train(const testing::TempDir& dir, const std::string& out, const std::string& servers,
             bool shm, const std::vector<std::string>& extra,
             std::map<std::string, std::string> env = {}) {
  std::vector<std::string> args = {
      "train",      dir.file("job.toml"),
      "--output",   dir.file(out),
      "--strategy", "ps",
      "--servers",  servers,
      "--workers",  "2",
      "--set",      std::string("distributed.ps.shm=") + (shm ? "true" : "false")};
  args.insert(args.end(), extra.begin(), extra.end());
  return run_dtrain(args, std::move(env));
}

TEST(PsShmCli, SharedMemoryEndsWithTheSocketPathsBytes) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  for (const auto& [optimizer, extra] : kOptimizers) {
    for (const std::string servers : {"1", "2"}) {
      SCOPED_TRACE(optimizer + ", servers " + servers);
      const std::string tag = optimizer + "-" + servers;
      const CliRun off = train(dir, "off-" + tag, servers, false, extra);
      ASSERT_TRUE(off.status.ok()) << off.output;
      EXPECT_FALSE(has(off.output, "through shared memory")) << off.output;
      const CliRun on = train(dir, "on-" + tag, servers, true, extra);
      ASSERT_TRUE(on.status.ok()) << on.output;
      EXPECT_TRUE(has(on.output, "ps worker 0: dense floats with server 0 through shared memory"))
          << on.output;
      EXPECT_TRUE(has(on.output, "ps server 0: worker 1's dense floats through shared memory"))
          << on.output;
      expect_same_bytes(dir.file("off-" + tag + "/model.safetensors"),
                        dir.file("on-" + tag + "/model.safetensors"));
    }
  }
}

TEST(PsShmCli, ABackupTakesAKilledServersRangeOverAndTheBytesStayTheSocketPaths) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  for (const auto& [optimizer, extra] : kOptimizers) {
    SCOPED_TRACE(optimizer);
    std::vector<std::string> args = extra;
    args.insert(args.end(), {"--replicas", "1", "--max-restarts", "0"});
    const CliRun clean = train(dir, "clean-" + optimizer, "2", false, args);
    ASSERT_TRUE(clean.status.ok()) << clean.output;
    const CliRun killed =
        train(dir, "killed-" + optimizer, "2", true, args, {{"DTRAIN_TEST_KILL_AT_STEP", "1:5"}});
    ASSERT_TRUE(killed.status.ok()) << killed.output;
    EXPECT_TRUE(has(killed.output, "ps server 0: took over server 1's range")) << killed.output;
    // Server 1 and then its acting primary in server 0's process opened
    // worker 0's segment for range 1.
    EXPECT_GE(count(killed.output, "ps server 1: worker 0's dense floats through shared memory"),
              2u)
        << killed.output;
    expect_same_bytes(dir.file("clean-" + optimizer + "/model.safetensors"),
                      dir.file("killed-" + optimizer + "/model.safetensors"));
  }
}

}  // namespace
}  // namespace dtrain
