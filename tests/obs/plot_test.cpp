#include "obs/plot.h"

#include <cairo.h>
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "obs/figure.h"
#include "plot_test_util.h"

namespace dtrain::obs {
namespace {

using testing::begin_line;
using testing::epoch_line;
using testing::read_text;
using testing::step_line;

// A run of `steps` reports (every 5 steps) and an epoch report every 10
// steps; the loss falls from 2.3 by `rate` per report. No three points lie
// on a line: cairo merges collinear segments of a path (a constant loss
// draws as one segment, however many points it has).
std::string run_text(int steps, double rate, double seconds_per_step) {
  std::string text = begin_line(5000.0);
  for (int s = 5; s <= steps; s += 5) {
    text += step_line(s, 2.3 * std::pow(rate, s / 5), 5000.0 + s * seconds_per_step);
    if (s % 10 == 0) {
      text += epoch_line(s / 10, 0.9 - 0.4 * std::pow(0.7, s / 10), 5000.5 + s * seconds_per_step);
    }
  }
  return text;
}

std::string rgb_percent(size_t index) {  // how cairo's SVG writes series_colour(index)
  const Rgb c = series_colour(index);
  auto pct = [](double v) {
    std::string s = fmt::format("{:.6f}", v * 100);  // cairo's _cairo_dtostr
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
    return s + "%";
  };
  return "rgb(" + pct(c.r) + "," + pct(c.g) + "," + pct(c.b) + ")";
}

class PlotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::write_text(metrics_path(dir_.file("dense")), run_text(40, 0.8, 0.5));
    testing::write_text(metrics_path(dir_.file("topk")), run_text(30, 0.9, 0.25));
    testing::write_text(metrics_path(dir_.file("slow")), run_text(20, 0.97, 1.0));
  }
  std::vector<RunMetrics> runs() {
    return {read_run(fs_, dir_.file("dense")), read_run(fs_, "top-k 1%=" + dir_.file("topk")),
            read_run(fs_, dir_.file("slow") + "/")};
  }
  testing::ScratchDir dir_;
  io::FileSystem& fs_ = io::default_file_system();
};

TEST_F(PlotTest, SvgHasFourPanelsOnePathPerRunPerPanelWithEveryPointAndTheLegend) {
  const std::string out = dir_.file("curves.svg");
  const std::vector<RunMetrics> r = runs();
  const CurvesLayout layout = plot_curves(fs_, out, r, {"MNIST", 1000, 800});
  const std::string svg = read_text(out);
  ASSERT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("width=\"1000pt\" height=\"800pt\""), std::string::npos);
  EXPECT_FALSE(layout.loss_log_scale);  // 2.3 down to 2.3 * 0.8^8 = 0.39: under a decade

  const std::vector<std::string> texts = testing::svg_texts(svg);
  auto count_text = [&](const std::string& t) { return std::count(texts.begin(), texts.end(), t); };
  EXPECT_EQ(count_text("Training loss by step"), 1);
  EXPECT_EQ(count_text("Test accuracy by step"), 1);
  EXPECT_EQ(count_text("Training loss by wall time"), 1);
  EXPECT_EQ(count_text("Test accuracy by wall time"), 1);
  EXPECT_EQ(count_text("MNIST"), 1);
  EXPECT_EQ(count_text("dense"), 1);
  EXPECT_EQ(count_text("top-k 1%"), 1);
  EXPECT_EQ(count_text("slow"), 1);

  const std::vector<testing::SvgPath> paths = testing::svg_paths(svg);
  // The four frames of the plot areas.
  EXPECT_EQ(
      std::count_if(paths.begin(), paths.end(),
                    [](const testing::SvgPath& p) { return p.stroked_in("rgb(25%,25%,25%)"); }),
      4);
  for (size_t i = 0; i < r.size(); ++i) {
    std::vector<size_t> points;
    for (const testing::SvgPath& p : paths) {
      if (p.stroked_in(rgb_percent(i))) points.push_back(p.points());
    }
    const size_t steps = r[i].log.steps.size(), epochs = r[i].log.epochs.size();
    // Panel order: loss by step, accuracy by step, loss by time, accuracy by time.
    EXPECT_EQ(points, (std::vector<size_t>{steps, epochs, steps, epochs})) << r[i].name;
  }
}

TEST_F(PlotTest, LossAxisIsLogarithmicOnlyWhenTheLossesSpanMoreThanADecade) {
  const std::string out = dir_.file("c.svg");
  // dense: 2.3 × 0.8^1..0.8^8: 1.84 down to 0.386, under a decade.
  EXPECT_FALSE(plot_curves(fs_, out, {read_run(fs_, dir_.file("dense"))}, {}).loss_log_scale);
  testing::write_text(metrics_path(dir_.file("steep")), run_text(60, 0.6, 0.1));
  EXPECT_TRUE(plot_curves(fs_, out, {read_run(fs_, dir_.file("steep"))}, {}).loss_log_scale);
  EXPECT_NE(read_text(out).find(">training loss (log scale)<"), std::string::npos);
}

TEST_F(PlotTest, ARunWithOneReportAndNoEpochYetIsDrawn) {
  testing::write_text(metrics_path(dir_.file("young")), begin_line(10.0) + step_line(5, 2.3, 11.0) +
                                                            step_line(10, 2.1, 12.0).substr(0, 20));
  const RunMetrics run = read_run(fs_, dir_.file("young"));
  EXPECT_TRUE(run.log.torn_last_line);
  const std::string out = dir_.file("young.svg");
  plot_curves(fs_, out, {run}, {});
  const std::string svg = read_text(out);
  const std::vector<std::string> texts = testing::svg_texts(svg);
  EXPECT_EQ(std::count(texts.begin(), texts.end(), "no data"), 2);  // the accuracy panels
  // A line through one point draws nothing (cairo writes no path for it):
  // the loss panels show the point as a dot.
  for (const testing::SvgPath& p : testing::svg_paths(svg)) {
    EXPECT_FALSE(p.stroked_in(rgb_percent(0)));
  }
  size_t dots = 0;
  for (const testing::SvgPath& p : testing::svg_paths(svg)) {
    dots += p.style.find("fill:" + rgb_percent(0) + ";") != std::string::npos;
  }
  EXPECT_EQ(dots, 3u);  // the two loss panels' and the legend's swatch
}

TEST_F(PlotTest, SvgIsDeterministic) {
  const std::vector<RunMetrics> r = runs();
  plot_curves(fs_, dir_.file("a.svg"), r, {"same", 900, 700});
  plot_curves(fs_, dir_.file("b.svg"), r, {"same", 900, 700});
  EXPECT_EQ(read_text(dir_.file("a.svg")), read_text(dir_.file("b.svg")));
}

TEST_F(PlotTest, PngHasTheRequestedSizeAndEachRunsColourInEveryPanel) {
  const std::string out = dir_.file("curves.PNG");
  const std::vector<RunMetrics> r = runs();
  const CurvesLayout layout = plot_curves(fs_, out, r, {"", 1100, 850});
  const testing::PngHeader header = testing::png_header(read_text(out));
  EXPECT_TRUE(header.signature_ok);
  EXPECT_EQ(header.width, 1100u);
  EXPECT_EQ(header.height, 850u);

  cairo_surface_t* image = cairo_image_surface_create_from_png(out.c_str());
  ASSERT_EQ(cairo_surface_status(image), CAIRO_STATUS_SUCCESS);
  const unsigned char* data = cairo_image_surface_get_data(image);
  const int stride = cairo_image_surface_get_stride(image);
  for (size_t run = 0; run < r.size(); ++run) {
    const Rgb c = series_colour(run);
    const auto want = [](double v) { return static_cast<int>(std::lround(v * 255)); };
    for (size_t panel = 0; panel < 4; ++panel) {
      const Rect& a = layout.plot_areas[panel];
      int exact = 0;
      for (int y = static_cast<int>(a.y); y < static_cast<int>(a.y + a.height); ++y) {
        for (int x = static_cast<int>(a.x); x < static_cast<int>(a.x + a.width); ++x) {
          const unsigned char* px = data + y * stride + 4 * x;  // B, G, R, A (little endian)
          if (px[2] == want(c.r) && px[1] == want(c.g) && px[0] == want(c.b)) ++exact;
        }
      }
      EXPECT_GT(exact, 10) << "run " << r[run].name << " panel " << panel;
    }
  }
  cairo_surface_destroy(image);
}

TEST_F(PlotTest, ErrorsNameTheRunOrTheFile) {
  EXPECT_THROW(
      {
        try {
          plot_curves(fs_, dir_.file("c.svg"), {}, {});
        } catch (const UsageError& e) {
          EXPECT_EQ(std::string(e.what()),
                    "cannot draw '" + dir_.file("c.svg") + "': no runs to plot");
          throw;
        }
      },
      UsageError);
  const std::vector<RunMetrics> r = runs();
  try {
    plot_curves(fs_, dir_.file("c.pdf"), r, {});
    ADD_FAILURE() << "expected a UsageError";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()),
              "cannot draw '" + dir_.file("c.pdf") +
                  "': unknown picture format (the file name must end in .svg or .png)");
  }
  testing::write_text(metrics_path(dir_.file("empty")), begin_line(1.0));
  try {
    read_run(fs_, dir_.file("empty"));
    ADD_FAILURE() << "expected a DataError";
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()), "run '" + dir_.file("empty") +
                                         "': " + metrics_path(dir_.file("empty")) +
                                         " has no step reports (nothing to plot)");
  }
  try {
    read_run(fs_, "=" + dir_.file("dense"));
    ADD_FAILURE() << "expected a UsageError";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), "run '=" + dir_.file("dense") + "': expected DIR or NAME=DIR");
  }
  EXPECT_FALSE(std::filesystem::exists(dir_.file("c.svg")));
  EXPECT_FALSE(std::filesystem::exists(dir_.file("c.pdf")));
}

TEST(NiceTicksTest, UseStepsOfOneTwoOrFiveTimesAPowerOfTen) {
  EXPECT_EQ(nice_ticks(0, 1), (std::vector<double>{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1}));
  EXPECT_EQ(nice_ticks(20, 1400), (std::vector<double>{0, 500, 1000, 1500}));
  EXPECT_EQ(nice_ticks(96.5, 98.2).front(), 96.5);
  EXPECT_EQ(log_ticks(0.03, 2.1), (std::vector<double>{0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5}));
  EXPECT_EQ(log_ticks(1e-4, 3), (std::vector<double>{1e-4, 1e-3, 1e-2, 1e-1, 1, 10}));
  EXPECT_EQ(tick_label(0.6000000000000001, 0.2), "0.6");
  EXPECT_EQ(tick_label(1500, 500), "1500");
  EXPECT_EQ(tick_label(0.05, 0.05), "0.05");
}

}  // namespace
}  // namespace dtrain::obs
