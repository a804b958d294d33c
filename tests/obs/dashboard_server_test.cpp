// The dashboard server on port 0 against a temporary run folder, asked with
// cpp-httplib's client and with raw HTTP requests (so that paths reach the
// server exactly as written: "..", "%2e%2e", absolute forms): the token
// rules, 404 for unknown paths, 4xx and never a byte of a file outside the
// run for traversal attempts and planted symlinks, `since` offsets that
// return only complete new lines (also while a thread appends), the
// workers' states from processes.jsonl, the checkpoint list and the page.
#include "obs/dashboard_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/deadline.h"
#include "core/error.h"
#include "testing/fault_fs.h"

namespace dtrain::obs {
namespace {

using namespace std::chrono_literals;

constexpr const char* kSecret = "TOP-SECRET-OUTSIDE-THE-RUN";

void write_text(const std::string& path, const std::string& text, bool append = false) {
  std::ofstream out(path, append ? std::ios::app : std::ios::trunc);
  out << text;
}

// A raw HTTP/1.1 request for `target` (sent byte for byte) and the reply's
// status and body.
struct RawReply {
  int status = 0;
  std::string text;
};
RawReply raw_get(int port, const std::string& target, const std::string& extra_headers = "") {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  RawReply reply;
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0) {
    const std::string request = "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
                                extra_headers + "Connection: close\r\n\r\n";
    (void)!write(fd, request.data(), request.size());
    char buffer[4096];
    for (ssize_t n; (n = read(fd, buffer, sizeof buffer)) > 0;)
      reply.text.append(buffer, size_t(n));
  }
  close(fd);
  if (reply.text.rfind("HTTP/1.1 ", 0) == 0) reply.status = std::stoi(reply.text.substr(9, 3));
  return reply;
}

class DashboardServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    run_ = tmp_.file("run");
    outside_ = tmp_.file("outside");
    std::filesystem::create_directories(run_);
    std::filesystem::create_directories(outside_);
    write_text(outside_ + "/secret.jsonl",
               fmt::format("{{\"event\":\"step\",\"x\":\"{}\"}}\n", kSecret));
    DashboardOptions o;
    o.run_dir = run_;
    server_ = std::make_unique<DashboardServer>(o);
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client_->set_read_timeout(10, 0);
  }

  httplib::Result get(const std::string& path) {
    return client_->Get(path, httplib::Headers{{"X-Dtrain-Token", server_->token()}});
  }
  nlohmann::json get_json(const std::string& path) {
    auto r = get(path);
    EXPECT_TRUE(r) << path;
    if (!r) return nullptr;
    EXPECT_EQ(r->status, 200) << path << ": " << r->body;
    return nlohmann::json::parse(r->body);
  }
  std::string with_token(const std::string& path) const {
    return path + (path.find('?') == std::string::npos ? "?" : "&") + "token=" + server_->token();
  }

  testing::TempDir tmp_;
  std::string run_;
  std::string outside_;
  std::unique_ptr<DashboardServer> server_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(DashboardServerTest, TheTokenIsRandomHexAndTheUrlCarriesIt) {
  EXPECT_EQ(server_->token().size(), 32u);
  EXPECT_EQ(server_->token().find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(server_->token(), random_token());
  EXPECT_EQ(server_->url(),
            fmt::format("http://127.0.0.1:{}/?token={}", server_->port(), server_->token()));
  EXPECT_GT(server_->port(), 0);
}

TEST_F(DashboardServerTest, EveryRouteNeedsTheToken) {
  for (const std::string path : {"/", "/api/metrics", "/api/ranks", "/api/processes", "/api/job",
                                 "/api/checkpoints", "/nothing-here"}) {
    auto none = client_->Get(path);
    ASSERT_TRUE(none) << path;
    EXPECT_EQ(none->status, 401) << path;
    auto wrong = client_->Get(path + "?token=" + std::string(32, '0'));
    ASSERT_TRUE(wrong) << path;
    EXPECT_EQ(wrong->status, 403) << path;
    auto shorter = client_->Get(path, {{"X-Dtrain-Token", server_->token().substr(1)}});
    ASSERT_TRUE(shorter) << path;
    EXPECT_EQ(shorter->status, 403) << path;
  }
  auto by_query = client_->Get(with_token("/api/metrics"));
  ASSERT_TRUE(by_query);
  EXPECT_EQ(by_query->status, 200);
  auto page = get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_EQ(page->body, std::string(dashboard_page()));
}

TEST_F(DashboardServerTest, UnknownPathsAre404) {
  for (const std::string path : {"/api", "/api/", "/api/metrics/x", "/metrics.jsonl", "/index.html",
                                 "/api/file?name=metrics.jsonl"}) {
    auto r = get(path);
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 404) << path;
  }
}

TEST_F(DashboardServerTest, TraversalAttemptsGet4xxAndNoFileContents) {
  write_text(run_ + "/metrics.jsonl", "{\"event\":\"begin\"}\n");
  const std::string rel = std::filesystem::relative(outside_ + "/secret.jsonl", run_).string();
  const std::vector<std::string> targets = {
      "/api/../../etc/passwd",
      "/../../../../etc/passwd",
      "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
      "/api/%2e%2e/%2e%2e/etc/passwd",
      "/api/metrics/..%2f..%2f..%2fetc%2fpasswd",
      "/etc/passwd",
      "//etc/passwd",
      "/api/job/../../../../etc/passwd",
      "/api/" + rel,
      "/" + outside_ + "/secret.jsonl",
      "http://127.0.0.1/etc/passwd",
      "/api/metrics?since=0&file=/etc/passwd&path=" + outside_ + "/secret.jsonl",
  };
  for (const std::string& target : targets) {
    const RawReply r = raw_get(server_->port(), with_token(target));
    EXPECT_NE(r.text.find("HTTP/1.1 "), std::string::npos) << target;
    EXPECT_EQ(r.text.find("root:"), std::string::npos) << target;
    EXPECT_EQ(r.text.find(kSecret), std::string::npos) << target;
    if (target.rfind("/api/metrics?", 0) == 0) {
      EXPECT_EQ(r.status, 200) << target;  // the extra parameters are ignored
    } else {
      EXPECT_GE(r.status, 400) << target;
      EXPECT_LT(r.status, 500) << target;
    }
  }
  // Without the token the same attempts are refused before any routing.
  EXPECT_EQ(raw_get(server_->port(), "/api/../../etc/passwd").status, 401);
}

TEST_F(DashboardServerTest, SymlinksOutOfTheRunAreRefused) {
  std::filesystem::create_symlink(outside_ + "/secret.jsonl", run_ + "/metrics.jsonl");
  std::filesystem::create_symlink(outside_ + "/secret.jsonl", run_ + "/processes.jsonl");
  std::filesystem::create_symlink(outside_ + "/secret.jsonl", run_ + "/job.toml");
  std::filesystem::create_symlink(outside_, run_ + "/ranks");
  std::filesystem::create_symlink(outside_ + "/secret.jsonl", run_ + "/ckpt-7.dtc");
  for (const std::string path : {"/api/metrics", "/api/processes", "/api/job", "/api/ranks"}) {
    auto r = get(path);
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 403) << path << ": " << r->body;
    EXPECT_EQ(r->body.find(kSecret), std::string::npos) << path;
    EXPECT_NE(r->body.find("symlink"), std::string::npos) << r->body;
  }
  EXPECT_EQ(get_json("/api/checkpoints")["checkpoints"].size(), 0u);
  // A symlink planted among the rank files is left out, the real one is read.
  std::filesystem::remove(run_ + "/ranks");
  std::filesystem::create_directories(run_ + "/ranks");
  write_text(run_ + "/ranks/rank-0.jsonl", "{\"step\":1,\"samples_per_s\":10}\n");
  std::filesystem::create_symlink(outside_ + "/secret.jsonl", run_ + "/ranks/rank-1.jsonl");
  auto r = get("/api/ranks");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body.find(kSecret), std::string::npos);
  const auto ranks = nlohmann::json::parse(r->body)["ranks"];
  ASSERT_EQ(ranks.size(), 1u) << r->body;
  EXPECT_EQ(ranks[0]["rank"], 0);
}

TEST_F(DashboardServerTest, SinceReturnsOnlyCompleteNewLines) {
  const std::string a = "{\"event\":\"step\",\"step\":1}\n",
                    b = "{\"event\":\"step\",\"step\":2}\n";
  write_text(run_ + "/metrics.jsonl", a + b + "{\"event\":\"st");
  nlohmann::json m = get_json("/api/metrics?since=0");
  ASSERT_EQ(m["events"].size(), 2u);
  EXPECT_EQ(m["events"][1]["step"], 2);
  EXPECT_EQ(m["offset"], a.size() + b.size());
  EXPECT_EQ(m["size"], a.size() + b.size() + 12);
  // Nothing new is complete yet.
  m = get_json(fmt::format("/api/metrics?since={}", a.size() + b.size()));
  EXPECT_EQ(m["events"].size(), 0u);
  EXPECT_EQ(m["offset"], a.size() + b.size());
  write_text(run_ + "/metrics.jsonl", "ep\",\"step\":3}\nnot json\n{\"event\":\"end\"}\n", true);
  m = get_json(fmt::format("/api/metrics?since={}", a.size() + b.size()));
  ASSERT_EQ(m["events"].size(), 2u) << m.dump();
  EXPECT_EQ(m["events"][0]["step"], 3);
  EXPECT_EQ(m["events"][1]["event"], "end");
  EXPECT_EQ(m["bad_lines"], 1);
  EXPECT_EQ(m["offset"], m["size"]);
  // From the middle of the first line: that line's rest is not an object.
  m = get_json("/api/metrics?since=5");
  EXPECT_EQ(m["bad_lines"], 2);
  auto beyond = get(fmt::format("/api/metrics?since={}", 100000));
  ASSERT_TRUE(beyond);
  EXPECT_EQ(beyond->status, 400);
  EXPECT_NE(beyond->body.find("beyond the end"), std::string::npos) << beyond->body;
  for (const std::string bad : {"-1", "abc", "1e3", "99999999999999999999"}) {
    auto r = get("/api/metrics?since=" + bad);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << bad;
  }
}

TEST(DashboardMetrics, ALineLongerThanAChunkIsSkippedNotStuck) {
  testing::TempDir tmp;
  write_text(tmp.file("metrics.jsonl"),
             "{\"x\":\"" + std::string(300, 'y') + "\"}\n{\"event\":\"step\",\"step\":9}\n");
  nlohmann::json m = read_metrics(tmp.path(), 0, 100);
  EXPECT_EQ(m["events"].size(), 0u);
  EXPECT_EQ(m["bad_lines"], 1);
  EXPECT_EQ(m["offset"], 309);
  m = read_metrics(tmp.path(), 309, 100);
  ASSERT_EQ(m["events"].size(), 1u);
  EXPECT_EQ(m["events"][0]["step"], 9);
}

TEST_F(DashboardServerTest, AFileBeingAppendedToIsReadWholeLinesInOrder) {
  constexpr int kLines = 400;
  write_text(run_ + "/metrics.jsonl", "");
  std::jthread writer([this] {
    std::ofstream out(run_ + "/metrics.jsonl", std::ios::app);
    for (int i = 0; i < kLines; ++i) {
      // Each line in two flushed pieces, so that readers see partial lines.
      out << "{\"event\":\"step\",\"step\":" << i << std::flush;
      out << ",\"pad\":\"" << std::string(size_t(i % 50), 'p') << "\"}\n" << std::flush;
    }
  });
  std::vector<int> steps;
  uint64_t offset = 0;
  const Deadline deadline = Deadline::after(60s);
  while (steps.size() < size_t(kLines) && !deadline.expired()) {
    const nlohmann::json m = get_json(fmt::format("/api/metrics?since={}", offset));
    ASSERT_EQ(m["bad_lines"], 0) << m.dump();
    for (const auto& e : m["events"]) steps.push_back(e["step"].get<int>());
    ASSERT_GE(m["offset"].get<uint64_t>(), offset);
    offset = m["offset"].get<uint64_t>();
  }
  ASSERT_EQ(steps.size(), size_t(kLines)) << "read " << steps.size() << " lines within 60 s";
  for (int i = 0; i < kLines; ++i) ASSERT_EQ(steps[size_t(i)], i);
}

TEST(DashboardWorkers, StatesFollowTheLaunchersEvents) {
  auto ev = [](const std::string& text) { return nlohmann::json::parse(text); };
  std::vector<nlohmann::json> events = {
      ev(R"({"event":"start","slot":0,"pid":10,"role":"worker"})"),
      ev(R"({"event":"start","slot":1,"pid":11,"role":"worker"})"),
      ev(R"({"event":"start","slot":2,"pid":12,"role":"worker"})"),
      ev(R"({"event":"reform","generation":0,"members":[0,1,2]})")};
  nlohmann::json s = worker_states(events);
  ASSERT_EQ(s["workers"].size(), 3u);
  for (const auto& w : s["workers"]) EXPECT_EQ(w["state"], "alive") << w.dump();
  EXPECT_EQ(s["group"]["generation"], 0);

  events.push_back(ev(R"({"event":"exit","slot":1,"pid":11,"signal":9})"));
  s = worker_states(events);
  EXPECT_EQ(s["workers"][1]["state"], "killed");
  EXPECT_EQ(s["workers"][1]["exit"], "killed by signal 9");

  events.push_back(ev(R"({"event":"reform","generation":1,"members":[0,2]})"));
  s = worker_states(events);
  EXPECT_EQ(s["workers"][0]["state"], "re-formed");
  EXPECT_EQ(s["workers"][1]["state"], "killed");
  EXPECT_EQ(s["workers"][2]["state"], "re-formed");
  EXPECT_EQ(s["group"]["members"], nlohmann::json::array({0, 2}));

  events.push_back(ev(R"({"event":"restart","slot":1,"pid":21,"role":"worker"})"));
  events.push_back(ev(R"({"event":"exit","slot":2,"pid":12,"status":4})"));
  events.push_back(ev(R"({"event":"exit","slot":0,"pid":10,"status":0})"));
  events.push_back(ev(R"({"event":"job_end","status":4})"));
  s = worker_states(events);
  EXPECT_EQ(s["workers"][0]["state"], "exited");
  EXPECT_EQ(s["workers"][1]["state"], "restarted");
  EXPECT_EQ(s["workers"][1]["pid"], 21);
  EXPECT_EQ(s["workers"][1]["starts"], 2);
  EXPECT_EQ(s["workers"][2]["state"], "failed");
  EXPECT_EQ(s["workers"][2]["exit"], "exited with code 4");
  EXPECT_EQ(s["job_end"]["status"], 4);
}

TEST_F(DashboardServerTest, ProcessesRanksCheckpointsAndJobFromTheRunFolder) {
  write_text(run_ + "/processes.jsonl",
             "{\"event\":\"start\",\"slot\":0,\"pid\":5,\"role\":\"worker\"}\n"
             "{\"event\":\"exit\",\"slot\":0,\"pid\":5,\"status\":0}\n{\"event\":\"exi");
  std::filesystem::create_directories(run_ + "/ranks");
  std::string lines;
  for (int i = 1; i <= 700; ++i) lines += fmt::format("{{\"step\":{},\"samples_per_s\":1}}\n", i);
  write_text(run_ + "/ranks/rank-2.jsonl", lines);
  write_text(run_ + "/ranks/rank-x.jsonl", lines);
  write_text(run_ + "/ckpt-20.dtc", "12345");
  write_text(run_ + "/ckpt-3.dtc", "1");
  write_text(run_ + "/ckpt-.dtc", "1");
  write_text(run_ + "/job.toml", "[job]\nname = \"dash\"\n");

  const nlohmann::json p = get_json("/api/processes");
  ASSERT_EQ(p["events"].size(), 2u);
  EXPECT_EQ(p["workers"][0]["state"], "exited");
  const nlohmann::json r = get_json("/api/ranks");
  ASSERT_EQ(r["ranks"].size(), 1u);
  EXPECT_EQ(r["ranks"][0]["rank"], 2);
  EXPECT_EQ(r["ranks"][0]["events"].size(), 600u);
  EXPECT_EQ(r["ranks"][0]["events"].back()["step"], 700);
  const nlohmann::json c = get_json("/api/checkpoints");
  ASSERT_EQ(c["checkpoints"].size(), 2u);
  EXPECT_EQ(c["checkpoints"][0]["step"], 3);
  EXPECT_EQ(c["checkpoints"][1]["step"], 20);
  EXPECT_EQ(c["checkpoints"][1]["bytes"], 5);
  const nlohmann::json j = get_json("/api/job");
  EXPECT_EQ(j["text"], "[job]\nname = \"dash\"\n");
}

TEST(DashboardServer, AnEmptyRunFolderGivesEmptyAnswers) {
  testing::TempDir tmp;
  DashboardOptions o;
  o.run_dir = tmp.file("not-yet");
  o.token = "fixed";
  DashboardServer server(o);
  httplib::Client client("127.0.0.1", server.port());
  for (const std::string path :
       {"/api/metrics", "/api/ranks", "/api/processes", "/api/checkpoints", "/api/job"}) {
    auto r = client.Get(path + "?token=fixed");
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 200) << path << r->body;
  }
}

TEST(DashboardServer, ABusyPortIsACommErrorAndABadPortAUsageError) {
  testing::TempDir tmp;
  DashboardOptions o;
  o.run_dir = tmp.path();
  DashboardServer first(o);
  o.port = first.port();
  EXPECT_THROW(DashboardServer second(o), CommError);
  o.port = 70000;
  EXPECT_THROW(DashboardServer third(o), UsageError);
}

TEST(DashboardServer, StartsAndStopsRepeatedly) {
  testing::TempDir tmp;
  DashboardOptions o;
  o.run_dir = tmp.path();
  std::set<std::string> tokens;
  for (int i = 0; i < 20; ++i) {
    DashboardServer server(o);
    tokens.insert(server.token());
    if (i % 2 == 0) {
      httplib::Client client("127.0.0.1", server.port());
      auto r = client.Get("/api/metrics", {{"X-Dtrain-Token", server.token()}});
      ASSERT_TRUE(r);
      EXPECT_EQ(r->status, 200);
    }
  }
  EXPECT_EQ(tokens.size(), 20u);
}

TEST(DashboardPage, IsSelfContained) {
  const std::string page(dashboard_page());
  EXPECT_NE(page.find("<svg class=\"chart\" id=\"chart-loss\""), std::string::npos);
  EXPECT_NE(page.find("id=\"workers\""), std::string::npos);
  // The only URL is the SVG namespace name, never fetched.
  std::string rest = page;
  for (size_t at; (at = rest.find("http://www.w3.org/2000/svg")) != std::string::npos;)
    rest.erase(at, 26);
  EXPECT_EQ(rest.find("http://"), std::string::npos);
  EXPECT_EQ(rest.find("https://"), std::string::npos);
  EXPECT_EQ(rest.find(" src="), std::string::npos);
}

}  // namespace
}  // namespace dtrain::obs
