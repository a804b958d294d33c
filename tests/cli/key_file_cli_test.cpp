// Key files through the dtrain executable (docs/security.md, "Where the keys
// come from"): `dtrain keygen` writes a private file and keeps an existing
// one; a job naming a key file trains with 2 workers over tcp under CURVE;
// an unsafe or conflicting key file stops the job with the fix; and two
// processes with different key files cannot talk: the one hosting the
// rendezvous logs the refused handshakes.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "comm/wire/auth.h"
#include "comm/wire/curve.h"
#include "comm/wire/key_file.h"
#include "testing/fault_fs.h"
#include "testing/ports.h"
#include "testing/process.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using testing::CliRun;
using testing::run_dtrain;
using testing::write_file;

const std::string kJob = testing::TestJob()
                             .name("key-file-blobs")
                             .seed(7)
                             .synthetic(600, 10, 3)
                             .mlp({32})
                             .optimizer("sgd", 0.05)
                             .epochs(1)
                             .set("train.max_steps", "8")
                             .batch(48)
                             .toml();

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// `dtrain train` of kJob with the key file and encryption, every link tcp.
std::vector<std::string> train_args(const testing::TempDir& dir, const std::string& key,
                                    const std::string& out) {
  return {"train", dir.file("job.toml"),    "--output", dir.file(out),
          "--set", "security.encrypt=true", "--set",    "security.key_file=\"" + key + "\""};
}

TEST(KeyFileCli, KeygenWritesAPrivateFileAndKeepsAnExistingOne) {
  testing::TempDir dir;
  const std::string key = dir.file("job.key");
  const CliRun made = run_dtrain({"keygen", key});
  ASSERT_TRUE(made.status.ok()) << made.output;
  EXPECT_TRUE(contains(made.output, "wrote " + key + " (mode 0600)")) << made.output;
  EXPECT_EQ(mode_of(key), 0600u);
  const std::string first = read_text(key);
  EXPECT_EQ(comm::wire::parse_key_file(first, key).size(), 64u);
  const CliRun again = run_dtrain({"keygen", key});
  EXPECT_EQ(again.status.code, 2) << again.output;
  EXPECT_TRUE(contains(again.output, key + " exists")) << again.output;
  EXPECT_TRUE(contains(again.output, "--force")) << again.output;
  EXPECT_EQ(read_text(key), first) << "the existing key must be kept";
  const CliRun forced = run_dtrain({"keygen", key, "--force"});
  ASSERT_TRUE(forced.status.ok()) << forced.output;
  EXPECT_NE(read_text(key), first);
  EXPECT_EQ(mode_of(key), 0600u);
}

TEST(KeyFileCli, AJobWithAKeyFileTrainsEncryptedOverTcpWithTwoWorkers) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const std::string key = dir.file("job.key");
  ASSERT_TRUE(run_dtrain({"keygen", key}).status.ok());
  std::vector<std::string> args = train_args(dir, key, "out");
  args.insert(args.end(), {"--workers", "2"});
  const CliRun run = run_dtrain(args, {{"DTRAIN_TCP_ONLY", "1"}});
  ASSERT_TRUE(run.status.ok()) << run.output;
  EXPECT_TRUE(contains(run.output, "done: 1 epochs, 8 steps")) << run.output;
  // Rank 0 logs the server key it uses: the one derived from the key file's
  // secret, so the workers took their secret from the file.
  const comm::JobAuth auth("key-file-blobs", comm::wire::parse_key_file(read_text(key), key), true);
  EXPECT_TRUE(
      contains(run.output, "links encrypted and authenticated with CURVE") &&
      contains(run.output, "server key " + comm::wire::z85_key(auth.curve()->server.public_key)))
      << run.output;
}

TEST(KeyFileCli, AnUnsafeOrConflictingKeyFileStopsTheJobNamingTheFix) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const std::string key = dir.file("job.key");
  ASSERT_TRUE(run_dtrain({"keygen", key}).status.ok());
  ASSERT_EQ(chmod(key.c_str(), 0640), 0);
  std::vector<std::string> args = train_args(dir, key, "unsafe");
  args.insert(args.end(), {"--workers", "2"});
  const CliRun unsafe = run_dtrain(args);
  EXPECT_EQ(unsafe.status.code, 2) << unsafe.output;
  EXPECT_TRUE(contains(unsafe.output, "chmod 600 " + key)) << unsafe.output;
  ASSERT_EQ(chmod(key.c_str(), 0600), 0);
  const CliRun conflict =
      run_dtrain(train_args(dir, key, "conflict"), {{"DTRAIN_JOB_SECRET", "another-secret"}});
  EXPECT_EQ(conflict.status.code, 2) << conflict.output;
  EXPECT_TRUE(contains(conflict.output, "DTRAIN_JOB_SECRET")) << conflict.output;
  EXPECT_TRUE(contains(conflict.output, key)) << conflict.output;
}

// Two processes of one job started by hand (as under mpirun), each with its
// own key file: rank 1 cannot register at rank 0's rendezvous, and rank 0
// logs every refused handshake.
TEST(KeyFileCli, ProcessesWithDifferentKeyFilesCannotTalk) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  for (const char* name : {"a.key", "b.key"}) {
    ASSERT_TRUE(run_dtrain({"keygen", dir.file(name)}).status.ok());
  }
  const std::string coordinator = "127.0.0.1:" + std::to_string(testing::free_loopback_port());
  std::vector<testing::ChildProcess> ranks;
  for (int r = 0; r < 2; ++r) {
    std::vector<std::string> argv = {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", DTRAIN_BINARY};
    for (std::string& a :
         train_args(dir, dir.file(r == 0 ? "a.key" : "b.key"), "out" + std::to_string(r))) {
      argv.push_back(std::move(a));
    }
    argv.insert(argv.end(), {"--rank", std::to_string(r), "--world-size", "2", "--coordinator",
                             coordinator, "--set", "distributed.timeout_ms=4000"});
    ranks.push_back(testing::ChildProcess::spawn(
        argv, {{"OPENBLAS_NUM_THREADS", "1"}, {"DTRAIN_TCP_ONLY", "1"}}));
  }
  for (testing::ChildProcess& rank : ranks) {
    const auto status = rank.wait(Deadline::after(std::chrono::seconds(120)));
    ASSERT_TRUE(status.has_value()) << rank.output();
    EXPECT_FALSE(status->ok()) << rank.output();
  }
  EXPECT_TRUE(contains(ranks[0].output(), "refused a CURVE connection")) << ranks[0].output();
  EXPECT_TRUE(contains(ranks[0].output(), "handshake failed: its CURVE HELLO does not open"))
      << ranks[0].output();
  // Rank 1's timeout says that its handshakes failed.
  EXPECT_TRUE(contains(ranks[1].output(), "the CURVE handshake with it failed"))
      << ranks[1].output();
}

}  // namespace
}  // namespace dtrain
