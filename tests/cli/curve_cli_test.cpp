// security.encrypt through the dtrain executable: an allreduce job and a
// parameter-server job on loopback with every link under CURVE train to the
// same model as the same jobs in the clear (docs/security.md). Both run
// with DTRAIN_TCP_ONLY=1, so that their links are the tcp ones a job across
// hosts has.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "io/safetensors.h"
#include "testing/fault_fs.h"
#include "testing/process.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using testing::CliRun;
using testing::run_dtrain;
using testing::write_file;

const std::string kJob = testing::TestJob()
                             .name("curve-blobs")
                             .seed(7)
                             .synthetic(600, 10, 3)
                             .mlp({32})
                             .optimizer("sgd", 0.05)
                             .epochs(1)
                             .set("train.max_steps", "8")
                             .batch(48)
                             .toml();

constexpr const char* kEncryptedLine = "links encrypted and authenticated with CURVE";

// Whether two weight files hold the same tensors, value for value.
bool same_weights(const std::string& a, const std::string& b) {
  const StateDict x = io::load_safetensors(a);
  const StateDict y = io::load_safetensors(b);
  if (x.size() != y.size()) return false;
  for (const auto& [name, t] : x) {
    if (!y.contains(name) || y.at(name).numel() != t.numel()) return false;
    const Tensor& u = y.at(name);
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (t.data()[i] != u.data()[i]) return false;
    }
  }
  return true;
}

struct Case {
  const char* name;
  std::vector<std::string> args;
};

TEST(CurveCli, AllreduceAndPsJobsTrainTheSameModelEncrypted) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  for (const Case& c : {Case{"allreduce", {"--workers", "2"}},
                        Case{"ps", {"--strategy", "ps", "--servers", "1", "--workers", "2"}}}) {
    SCOPED_TRACE(c.name);
    std::vector<std::string> clear = {"train", dir.file("job.toml"), "--output",
                                      dir.file(std::string(c.name) + "-clear")};
    clear.insert(clear.end(), c.args.begin(), c.args.end());
    std::vector<std::string> encrypted = {"train",    dir.file("job.toml"),
                                          "--output", dir.file(std::string(c.name) + "-curve"),
                                          "--set",    "security.encrypt=true"};
    encrypted.insert(encrypted.end(), c.args.begin(), c.args.end());
    // Every link over tcp, as across hosts (no ipc, no shared memory).
    const std::map<std::string, std::string> tcp = {{"DTRAIN_TCP_ONLY", "1"}};
    const CliRun a = run_dtrain(clear, tcp);
    ASSERT_TRUE(a.status.ok()) << a.output;
    EXPECT_EQ(a.output.find(kEncryptedLine), std::string::npos) << a.output;
    const CliRun b = run_dtrain(encrypted, tcp);
    ASSERT_TRUE(b.status.ok()) << b.output;
    EXPECT_NE(b.output.find(kEncryptedLine), std::string::npos) << b.output;
    EXPECT_NE(b.output.find("done: 1 epochs, 8 steps"), std::string::npos) << b.output;
    if (std::string(c.name) == "ps") {
      EXPECT_NE(b.output.find("serving at tcp://127.0.0.1:"), std::string::npos) << b.output;
    }
    EXPECT_TRUE(same_weights(dir.file(std::string(c.name) + "-clear/model.safetensors"),
                             dir.file(std::string(c.name) + "-curve/model.safetensors")));
  }
}

TEST(CurveCli, EncryptWithoutASecretFailsWithTheReason) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  // A process of a launched job (as mpirun would start it) without a secret.
  const CliRun run = run_dtrain(
      {"train", dir.file("job.toml"), "--output", dir.file("out"), "--set", "security.encrypt=true",
       "--insecure"},
      {{"DTRAIN_RANK", "0"}, {"DTRAIN_WORLD_SIZE", "2"}, {"DTRAIN_COORDINATOR", "127.0.0.1:1"}});
  EXPECT_FALSE(run.status.ok()) << run.output;
  EXPECT_NE(run.output.find("security.encrypt = true needs a job secret"), std::string::npos)
      << run.output;
}

}  // namespace
}  // namespace dtrain
