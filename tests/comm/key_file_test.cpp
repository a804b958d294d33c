// Key files (comm/wire/key_file.h) and the one resolution of the job secret
// (comm::resolve_job_secret): the format round trip, every malformed file
// refused with the file named, the owner and mode checks, and the
// precedence of job file, DTRAIN_KEY_FILE and DTRAIN_JOB_SECRET.
#include "comm/wire/key_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "comm/rendezvous/job_secret.h"
#include "comm/rendezvous/launch_env.h"
#include "core/error.h"
#include "testing/fault_fs.h"

namespace dtrain::comm {
namespace {

using wire::kKeyFileHeader;

void write_private(const std::string& path, const std::string& text, mode_t mode = 0600) {
  std::ofstream(path) << text;
  ASSERT_EQ(chmod(path.c_str(), mode), 0);
}

// The message of the ConfigError `f` throws ("" when it throws none).
template <class F>
std::string config_error(F&& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

const std::string kSecret(64, 'a');
const std::string kOtherSecret(64, 'b');

TEST(KeyFile, NewSecretsAreDistinctHexAndRoundTrip) {
  const std::string a = wire::new_job_secret();
  const std::string b = wire::new_job_secret();
  EXPECT_EQ(a.size(), wire::kKeyFileHexDigits);
  EXPECT_NE(a, b);
  EXPECT_EQ(wire::parse_key_file(wire::key_file_text(a), "f"), a);
  // Without the final newline too.
  EXPECT_EQ(wire::parse_key_file(std::string(kKeyFileHeader) + "\n" + a, "f"), a);
}

TEST(KeyFile, MalformedFilesAreRefusedNamingTheFileAndTheProblem) {
  const std::string header = std::string(kKeyFileHeader) + "\n";
  const struct {
    std::string text;
    const char* problem;
  } cases[] = {
      {"", "empty"},
      {"dtrain job secret v2\n" + kSecret + "\n", "first line"},
      {kSecret + "\n", "first line"},
      {std::string(kKeyFileHeader), "no key"},
      {header + kSecret.substr(0, 40) + "\n", "40 hex digits, not 64 (truncated?)"},
      {header + kSecret + "aa\n", "66 hex digits"},
      {header + "g" + kSecret.substr(1) + "\n", "character 1 of the key"},
      {header + kSecret.substr(0, 63) + "A\n", "character 64 of the key"},
      {header + kSecret + "\n\n", "more than two lines"},
      {header + kSecret + "\r\n", "character 65"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    const std::string message =
        config_error([&] { wire::parse_key_file(c.text, "key file 'k.key'"); });
    EXPECT_TRUE(contains(message, "key file 'k.key'")) << message;
    EXPECT_TRUE(contains(message, c.problem)) << message;
  }
}

TEST(KeyFile, ReadsAPrivateFileAndRefusesOneOthersCanReadOrWrite) {
  testing::TempDir dir;
  const std::string path = dir.file("job.key");
  write_private(path, wire::key_file_text(kSecret));
  EXPECT_EQ(wire::read_key_file(path, "DTRAIN_KEY_FILE"), kSecret);
  for (const mode_t mode : {0640, 0604, 0620, 0602, 0610}) {
    SCOPED_TRACE(mode);
    ASSERT_EQ(chmod(path.c_str(), mode), 0);
    const std::string message = config_error([&] { wire::read_key_file(path, "DTRAIN_KEY_FILE"); });
    EXPECT_TRUE(contains(message, "key file '" + path + "' (DTRAIN_KEY_FILE)")) << message;
    EXPECT_TRUE(contains(message, "chmod 600 " + path)) << message;
  }
}

TEST(KeyFile, RefusesAMissingFileADirectoryAndGarbageNamingThem) {
  testing::TempDir dir;
  EXPECT_TRUE(contains(config_error([&] { wire::read_key_file(dir.file("none.key"), "x"); }),
                       "key file '" + dir.file("none.key") + "' (x): No such file"));
  EXPECT_TRUE(
      contains(config_error([&] { wire::read_key_file(dir.path(), "x"); }), "not a regular file"));
  const std::string garbage = dir.file("garbage.key");
  write_private(garbage, "not a key at all\n");
  const std::string message = config_error([&] { wire::read_key_file(garbage, "x"); });
  EXPECT_TRUE(contains(message, garbage)) << message;
  EXPECT_TRUE(contains(message, "first line")) << message;
  const std::string truncated = dir.file("truncated.key");
  write_private(truncated, wire::key_file_text(kSecret).substr(0, 50));
  EXPECT_TRUE(contains(config_error([&] { wire::read_key_file(truncated, "x"); }), "truncated"));
}

TEST(KeyFile, RefusesAFileOfAnotherOwner) {
  if (geteuid() != 0) GTEST_SKIP() << "only root can give a file to another user";
  testing::TempDir dir;
  const std::string path = dir.file("theirs.key");
  write_private(path, wire::key_file_text(kSecret));
  ASSERT_EQ(chown(path.c_str(), 65534, 65534), 0);
  const std::string message = config_error([&] { wire::read_key_file(path, "x"); });
  EXPECT_TRUE(contains(message, "owned by uid 65534")) << message;
}

TEST(ResolveJobSecret, TakesTheSecretFromTheJobsKeyFileOrDtrainKeyFile) {
  testing::TempDir dir;
  const std::string path = dir.file("job.key");
  write_private(path, wire::key_file_text(kSecret));
  LaunchSettings from_job;
  resolve_job_secret(from_job, path, "job.toml");
  EXPECT_EQ(from_job.job_secret, kSecret);
  EXPECT_EQ(from_job.key_file, path);
  LaunchSettings from_env = resolve_launch_settings({{"DTRAIN_KEY_FILE", path}});
  resolve_job_secret(from_env, "", "job.toml");
  EXPECT_EQ(from_env.job_secret, kSecret);
  // Both, naming one file two ways; and DTRAIN_JOB_SECRET equal to the file's.
  LaunchSettings both = resolve_launch_settings(
      {{"DTRAIN_KEY_FILE", dir.path() + "/./job.key"}, {"DTRAIN_JOB_SECRET", kSecret}});
  resolve_job_secret(both, path, "job.toml");
  EXPECT_EQ(both.job_secret, kSecret);
  // No key file: DTRAIN_JOB_SECRET as it is, or none.
  LaunchSettings plain = resolve_launch_settings({{"DTRAIN_JOB_SECRET", "s"}});
  resolve_job_secret(plain, "", "job.toml");
  EXPECT_EQ(plain.job_secret, "s");
  EXPECT_EQ(plain.key_file, "");
}

TEST(ResolveJobSecret, ConflictsNameBothSources) {
  testing::TempDir dir;
  const std::string path = dir.file("job.key");
  const std::string other = dir.file("other.key");
  write_private(path, wire::key_file_text(kSecret));
  write_private(other, wire::key_file_text(kOtherSecret));
  LaunchSettings two_files = resolve_launch_settings({{"DTRAIN_KEY_FILE", other}});
  std::string message = config_error([&] { resolve_job_secret(two_files, path, "job.toml"); });
  EXPECT_TRUE(contains(message, "DTRAIN_KEY_FILE")) << message;
  EXPECT_TRUE(contains(message, other)) << message;
  EXPECT_TRUE(contains(message, "security.key_file in job.toml names '" + path)) << message;
  LaunchSettings secret_too = resolve_launch_settings({{"DTRAIN_JOB_SECRET", kOtherSecret}});
  message = config_error([&] { resolve_job_secret(secret_too, path, "job.toml"); });
  EXPECT_TRUE(contains(message, "DTRAIN_JOB_SECRET")) << message;
  EXPECT_TRUE(contains(message, path)) << message;
  EXPECT_FALSE(contains(message, kOtherSecret)) << "a message must not print a secret";
  EXPECT_FALSE(contains(message, kSecret)) << "a message must not print a secret";
}

}  // namespace
}  // namespace dtrain::comm
