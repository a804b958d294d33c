// RankMetricsWriter: one line per logged step in <output>/ranks/rank-<slot>.jsonl
// with this worker's rows (by its group rank), appended across processes of
// the same slot; a folder that cannot be made is an Error naming it.
#include "train/rank_metrics.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "testing/fault_fs.h"

namespace dtrain::train {
namespace {

std::vector<nlohmann::json> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

StepInfo step(int64_t n, std::vector<int64_t> split) {
  StepInfo s;
  s.step = n;
  s.samples_per_s = 100.0 * double(n);
  s.bytes_per_step = 4096.0;
  s.split = std::move(split);
  return s;
}

TEST(RankMetrics, WritesEveryLogStepWithThisWorkersRows) {
  testing::TempDir tmp;
  int64_t rank = 1;
  {
    RankMetricsWriter w(tmp.path(), 2, 2, 64, [&rank] { return rank; });
    EXPECT_EQ(w.path(), tmp.file("ranks/rank-2.jsonl"));
    for (int64_t n = 1; n <= 4; ++n) w.on_step_end(step(n, {20, 24, 20}));
    rank = 0;  // the group re-formed: slot 2 is rank 0 of two now
    w.on_step_end(step(6, {30, 34}));
  }
  {
    RankMetricsWriter again(tmp.path(), 2, 2, 64, [] { return int64_t{0}; });
    again.on_step_end(step(8, {}));  // alone: the whole batch
  }
  const auto lines = read_lines(tmp.file("ranks/rank-2.jsonl"));
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0]["step"], 2);
  EXPECT_EQ(lines[0]["rows"], 24);
  EXPECT_EQ(lines[0]["samples_per_s"], 200.0);
  EXPECT_EQ(lines[0]["bytes_per_step"], 4096.0);
  EXPECT_GT(lines[0]["time"].get<double>(), 1.6e9);
  EXPECT_EQ(lines[1]["step"], 4);
  EXPECT_EQ(lines[2]["rows"], 30);
  EXPECT_EQ(lines[2]["group_rank"], 0);
  EXPECT_EQ(lines[3]["rows"], 64);
}

TEST(RankMetrics, AnUnwritableFolderIsAnErrorNamingIt) {
  testing::TempDir tmp;
  std::ofstream(tmp.file("ranks")) << "a file where the folder should be";
  try {
    RankMetricsWriter w(tmp.path(), 0, 1, 8, {});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(tmp.file("ranks")), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dtrain::train
