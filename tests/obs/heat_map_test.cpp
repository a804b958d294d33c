#include "obs/heat_map.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "plot_test_util.h"

namespace dtrain::obs {
namespace {

CountMatrix matrix(size_t rows, size_t columns) {
  CountMatrix m;
  for (size_t r = 0; r < rows; ++r) m.row_labels.push_back("worker " + std::to_string(r));
  for (size_t c = 0; c < columns; ++c) m.column_labels.push_back(std::to_string(c));
  for (size_t i = 0; i < rows * columns; ++i)
    m.counts.push_back(static_cast<int64_t>(i * 37 % 101));
  return m;
}

TEST(HeatMapTest, PngSizeFollowsWorkersTimesClasses) {
  testing::ScratchDir dir;
  for (const auto& [rows, columns] :
       std::vector<std::pair<size_t, size_t>>{{4, 10}, {2, 3}, {7, 1}}) {
    const std::string out = dir.file("p.png");
    const ImageSize size = draw_heat_map(io::default_file_system(), out, matrix(rows, columns), {});
    EXPECT_EQ(size.width, static_cast<int>(110 + 60 * columns));
    EXPECT_EQ(size.height, static_cast<int>(96 + 30 * rows));
    const testing::PngHeader header = testing::png_header(testing::read_text(out));
    EXPECT_TRUE(header.signature_ok);
    EXPECT_EQ(header.width, static_cast<uint32_t>(size.width));
    EXPECT_EQ(header.height, static_cast<uint32_t>(size.height));
  }
  EXPECT_EQ(heat_map_size(4, 10).width, 710);
  EXPECT_EQ(heat_map_size(4, 10).height, 216);
}

TEST(HeatMapTest, SvgHasOneCellAndOneCountPerEntryAndTheLabels) {
  testing::ScratchDir dir;
  const std::string out = dir.file("p.svg");
  const CountMatrix m = matrix(3, 4);
  draw_heat_map(io::default_file_system(), out, m, {"labels per worker", "worker", "class"});
  const std::string svg = testing::read_text(out);
  EXPECT_NE(svg.find("width=\"350pt\" height=\"186pt\""), std::string::npos);
  const std::vector<std::string> texts = testing::svg_texts(svg);
  for (size_t i = 0; i < m.counts.size(); ++i) {
    EXPECT_NE(std::find(texts.begin(), texts.end(), std::to_string(m.counts[i])), texts.end());
  }
  for (const char* label : {"worker 0", "worker 2", "labels per worker", "class"}) {
    EXPECT_NE(std::find(texts.begin(), texts.end(), label), texts.end()) << label;
  }
  // One filled rectangle per cell (a zero count's white too); the background
  // is a <rect>, the frame a stroked path.
  size_t filled = 0;
  for (const testing::SvgPath& p : testing::svg_paths(svg)) {
    filled +=
        p.style.find("stroke:none;fill-rule:nonzero;fill:") != std::string::npos && p.points() == 5;
  }
  EXPECT_EQ(filled, m.counts.size());
}

TEST(HeatMapTest, RefusesAMatrixThatDoesNotMatchItsLabels) {
  testing::ScratchDir dir;
  const std::string out = dir.file("p.svg");
  CountMatrix m = matrix(2, 3);
  m.counts.pop_back();
  try {
    draw_heat_map(io::default_file_system(), out, m, {});
    ADD_FAILURE() << "expected a UsageError";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), "cannot draw '" + out + "': 5 counts for 2 x 3 labels");
  }
  try {
    draw_heat_map(io::default_file_system(), out, CountMatrix{}, {});
    ADD_FAILURE() << "expected a UsageError";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), "cannot draw '" + out + "': the matrix is empty (0 x 0)");
  }
  try {
    draw_heat_map(io::default_file_system(), dir.file("p.jpg"), matrix(1, 1), {});
    ADD_FAILURE() << "expected a UsageError";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), "cannot draw '" + dir.file("p.jpg") +
                                         "': unknown picture format (the file name must end in "
                                         ".svg or .png)");
  }
}

}  // namespace
}  // namespace dtrain::obs
