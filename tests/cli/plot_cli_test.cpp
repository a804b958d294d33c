// `dtrain plot` and `dtrain partition --image` through the dtrain executable:
// two real (tiny) training runs plotted into a PNG and an SVG, the SVG the
// same bytes from two processes, and the errors' exit codes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "cli_test_util.h"
#include "testing/fault_fs.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using testing::CliRun;
using testing::run_dtrain;
using testing::write_file;

// 600 samples of 3 classes, batch 50: 12 updates an epoch, a report every 3.
const std::string kPlotJob = testing::TestJob()
                                 .name("plotted")
                                 .seed(3)
                                 .synthetic(600, 10, 3)
                                 .mlp({16})
                                 .optimizer("sgd", 0.1)
                                 .epochs(2)
                                 .batch(50)
                                 .set("train.log_every_steps", "3")
                                 .toml();

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Width and height from a PNG's IHDR chunk; {0, 0} when it is no PNG.
std::pair<uint32_t, uint32_t> png_size(const std::string& bytes) {
  if (bytes.size() < 24 || bytes.compare(0, 8, std::string("\x89PNG\r\n\x1a\n", 8)) != 0 ||
      bytes.compare(12, 4, "IHDR") != 0) {
    return {0, 0};
  }
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = v << 8 | static_cast<unsigned char>(bytes[at + i]);
    return v;
  };
  return {be32(16), be32(20)};
}

TEST(PlotCli, PlotsTwoRealRunsIntoAPngAndAStableSvg) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kPlotJob);
  for (const std::string run : {"sgd", "faster"}) {
    const CliRun train = run_dtrain({"train", dir.file("job.toml"), "--output", dir.file(run),
                                     "--workers", "2", "--progress", "none", "--set",
                                     run == "faster" ? "optimizer.lr=0.3" : "optimizer.lr=0.1"});
    ASSERT_TRUE(train.status.ok()) << train.output;
  }
  const CliRun png = run_dtrain({"plot", dir.file("sgd"), "lr 0.3=" + dir.file("faster"), "-o",
                                 dir.file("curves.png"), "--title", "two runs", "--width", "900",
                                 "--height", "700"});
  ASSERT_TRUE(png.status.ok()) << png.output;
  EXPECT_NE(png.output.find("wrote " + dir.file("curves.png") + " (2 runs; sgd: up to step "),
            std::string::npos)
      << png.output;
  EXPECT_NE(png.output.find("; lr 0.3: up to step "), std::string::npos) << png.output;
  EXPECT_EQ(png_size(file_bytes(dir.file("curves.png"))),
            (std::pair<uint32_t, uint32_t>{900, 700}));

  for (const std::string name : {"a.svg", "b.svg"}) {
    const CliRun svg =
        run_dtrain({"plot", dir.file("sgd"), dir.file("faster"), "-o", dir.file(name)});
    ASSERT_TRUE(svg.status.ok()) << svg.output;
  }
  const std::string svg = file_bytes(dir.file("a.svg"));
  EXPECT_NE(svg.find(">faster</text>"), std::string::npos);
  EXPECT_EQ(svg, file_bytes(dir.file("b.svg")));
}

TEST(PlotCli, ErrorsExitWithTheirKindsCode) {
  testing::TempDir dir;
  std::filesystem::create_directories(dir.file("empty"));
  write_file(dir.file("empty/metrics.jsonl"), "{\"event\":\"begin\",\"time\":1}\n");
  CliRun run = run_dtrain({"plot", dir.file("empty"), "-o", dir.file("c.png")});
  EXPECT_EQ(run.status.code, 3) << run.output;
  EXPECT_NE(run.output.find("dtrain: error: run '" + dir.file("empty") + "': " + dir.file("empty") +
                            "/metrics.jsonl has no step reports"),
            std::string::npos)
      << run.output;
  run = run_dtrain({"plot", dir.file("empty"), "-o", dir.file("c.jpeg")});
  EXPECT_EQ(run.status.code, 2) << run.output;
  EXPECT_NE(run.output.find("unknown picture format"), std::string::npos) << run.output;
  run = run_dtrain({"plot", "-o", dir.file("c.png")});
  EXPECT_EQ(run.status.code, 2) << run.output;
  EXPECT_FALSE(std::filesystem::exists(dir.file("c.png")));
}

TEST(PlotCli, PartitionImageIsAWorkersByClassesHeatMap) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kPlotJob);
  const CliRun run =
      run_dtrain({"partition", dir.file("job.toml"), "--kind", "label", "--workers", "4",
                  "--classes-per-worker", "2", "--image", dir.file("parts.png")});
  ASSERT_TRUE(run.status.ok()) << run.output;
  // 3 classes, 4 workers: 110 + 60 x 3 by 96 + 30 x 4.
  EXPECT_NE(run.output.find("wrote " + dir.file("parts.png") + " (290x216)"), std::string::npos)
      << run.output;
  EXPECT_EQ(png_size(file_bytes(dir.file("parts.png"))), (std::pair<uint32_t, uint32_t>{290, 216}));
}

}  // namespace
}  // namespace dtrain
