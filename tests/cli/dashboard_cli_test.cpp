// The dashboard from the command line, with the real dtrain binary:
// `dtrain train --dashboard 0` prints the URL and copies the job file; a
// launched job leaves processes.jsonl (start, exit, reform, job_end) and one
// ranks/rank-<slot>.jsonl per worker; `dtrain serve RUN_DIR` answers with the
// token until SIGTERM, then exits 0.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "testing/fault_fs.h"
#include "testing/test_job.h"

namespace dtrain::testing {
namespace {

using namespace std::chrono_literals;

const std::string kJob = TestJob()
                             .name("dash")
                             .seed(5)
                             .synthetic(600, 10, 3)
                             .mlp({16})
                             .optimizer("adam", 0.01)
                             .epochs(2)
                             .batch(50)
                             .set("train.log_every_steps", "4")
                             .toml();

std::vector<nlohmann::json> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

// The port and token of the first "dashboard: http://127.0.0.1:PORT/?token=T"
// in `text` (T: 32 hex digits). (No std::regex: GCC 12 warns inside it at -O1.)
struct DashboardUrl {
  int port = 0;
  std::string token;
};
std::optional<DashboardUrl> find_url(const std::string& text) {
  constexpr std::string_view kStart = "dashboard: http://127.0.0.1:";
  const size_t at = text.find(kStart);
  if (at == std::string::npos) return std::nullopt;
  size_t i = at + kStart.size();
  DashboardUrl url;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])) != 0) {
    url.port = url.port * 10 + (text[i++] - '0');
  }
  constexpr std::string_view kToken = "/?token=";
  if (url.port == 0 || text.compare(i, kToken.size(), kToken) != 0) return std::nullopt;
  url.token = text.substr(i + kToken.size(), 32);
  if (url.token.size() != 32 ||
      url.token.find_first_not_of("0123456789abcdef") != std::string::npos)
    return std::nullopt;
  return url;
}

// The chief's logged steps (metrics.jsonl): every worker logs the same ones.
size_t logged_steps(const std::string& out) {
  size_t n = 0;
  for (const auto& e : read_lines(out + "/metrics.jsonl")) n += e["event"] == "step" ? 1 : 0;
  return n;
}

TEST(DashboardCli, OneProcessPrintsTheUrlAndCopiesTheJobFile) {
  TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const CliRun run =
      run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"), "--dashboard", "0"});
  ASSERT_TRUE(run.status.ok()) << run.output;
  EXPECT_TRUE(find_url(run.output).has_value()) << run.output;
  std::ifstream copy(dir.file("out/job.toml"));
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(copy), {}), kJob);
  const auto rank0 = read_lines(dir.file("out/ranks/rank-0.jsonl"));
  ASSERT_EQ(rank0.size(), logged_steps(dir.file("out")));
  ASSERT_GT(rank0.size(), 0u);
  EXPECT_EQ(rank0[0]["rows"], 50);
  EXPECT_FALSE(std::filesystem::exists(dir.file("out/processes.jsonl")));
}

TEST(DashboardCli, ALaunchedElasticJobRecordsItsProcessesAndRanks) {
  TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const CliRun run = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file("out"),
                                 "--workers", "3", "--elastic", "--dashboard", "0"});
  ASSERT_TRUE(run.status.ok()) << run.output;
  // The workers got --dashboard too; only the launcher serves (one URL).
  size_t urls = 0;
  for (size_t at = run.output.find("dashboard: http"); at != std::string::npos;
       at = run.output.find("dashboard: http", at + 1))
    ++urls;
  EXPECT_EQ(urls, 1u) << run.output;
  const auto events = read_lines(dir.file("out/processes.jsonl"));
  std::vector<int> started, exited;
  bool reform = false, end = false;
  for (const auto& e : events) {
    EXPECT_GT(e["time"].get<double>(), 1.6e9);
    if (e["event"] == "start") started.push_back(e["slot"].get<int>());
    if (e["event"] == "exit") {
      exited.push_back(e["slot"].get<int>());
      EXPECT_EQ(e["status"], 0) << e.dump();
    }
    if (e["event"] == "reform") {
      reform = true;
      EXPECT_EQ(e["generation"], 0);
      EXPECT_EQ(e["members"], nlohmann::json::array({0, 1, 2}));
    }
    if (e["event"] == "job_end") {
      end = true;
      EXPECT_EQ(e["status"], 0);
      EXPECT_EQ(&e, &events.back());
    }
  }
  EXPECT_EQ(started, (std::vector<int>{0, 1, 2}));
  std::sort(exited.begin(), exited.end());
  EXPECT_EQ(exited, (std::vector<int>{0, 1, 2}));
  EXPECT_TRUE(reform);
  EXPECT_TRUE(end);
  for (int slot = 0; slot < 3; ++slot) {
    const auto lines = read_lines(dir.file(fmt::format("out/ranks/rank-{}.jsonl", slot)));
    ASSERT_EQ(lines.size(), logged_steps(dir.file("out"))) << slot;
    ASSERT_GT(lines.size(), 0u);
    EXPECT_EQ(lines[0]["group_rank"], slot);
    EXPECT_GT(lines[0]["rows"].get<int>(), 0);
  }
}

TEST(DashboardCli, ServeAnswersWithTheTokenUntilSigterm) {
  TempDir dir;
  std::filesystem::create_directories(dir.file("run"));
  write_file(dir.file("run/metrics.jsonl"), "{\"event\":\"step\",\"step\":1}\n");
  ChildProcess serve = ChildProcess::spawn(
      {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", DTRAIN_BINARY, "serve", dir.file("run")}, {});
  ASSERT_TRUE(wait_for_output(serve, "dashboard: http://")) << serve.output();
  ASSERT_TRUE(wait_for_output(serve, ")\n")) << serve.output();
  const auto url = find_url(serve.output());
  ASSERT_TRUE(url.has_value()) << serve.output();
  httplib::Client client("127.0.0.1", url->port);
  client.set_read_timeout(10, 0);
  auto ok = client.Get("/api/metrics?since=0&token=" + url->token);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  EXPECT_EQ(nlohmann::json::parse(ok->body)["events"].size(), 1u);
  auto refused = client.Get("/api/metrics");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 401);
  serve.signal(SIGTERM);
  const auto status = serve.wait(Deadline::after(30s));
  ASSERT_TRUE(status.has_value()) << "dtrain serve did not exit within 30 s of SIGTERM";
  EXPECT_TRUE(status->ok()) << status->describe() << serve.output();
}

TEST(DashboardCli, ServeRefusesAMissingFolder) {
  TempDir dir;
  const CliRun run = run_dtrain({"serve", dir.file("nothing")});
  EXPECT_EQ(run.status.code, 2) << run.output;
  EXPECT_NE(run.output.find("is not a folder"), std::string::npos) << run.output;
}

}  // namespace
}  // namespace dtrain::testing
