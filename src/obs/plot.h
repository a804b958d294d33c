// Training curves of one or more runs as one figure (`dtrain plot`): four
// panels, each with every run overlaid in its own colour (figure.h's
// colour-blind-safe palette) and a legend of the run names below them:
//
//   training loss against step     | test accuracy against step
//   training loss against wall time | test accuracy against wall time
//
// Training loss comes from the step reports (the mean over the samples since
// the previous report), test accuracy from the epoch reports (one point per
// epoch, marked with dots). Wall time is seconds since the run's first event
// (minutes or hours when the longest run is longer than 5 minutes or 5
// hours). Axes have 1-2-5 ticks; the loss axes are logarithmic when the
// plotted losses span more than a decade (max > 10 × min, all positive).
// Non-finite losses are left out (the line breaks there).
//
// Ownership: plain values. Thread safety: pure functions of their inputs
// apart from the file written. Errors: UsageError for no runs, an unknown
// picture extension or a run spec with an empty name; DataError naming the
// run's folder when its metrics cannot be read or it has no step reports;
// io::FileError when the picture cannot be written. Blocking: reads the
// metrics files and writes the picture (whole-file, atomic).
#pragma once

#include <array>
#include <string>
#include <vector>

#include "io/file_system.h"
#include "obs/figure.h"
#include "obs/metrics_log.h"

namespace dtrain::obs {

struct RunMetrics {
  std::string name;  // the legend's
  std::string dir;   // the run folder (names it in errors)
  MetricsLog log;
};

// Reads the run `spec`: "DIR" (named after DIR's last component) or
// "NAME=DIR"; DataError naming DIR when it has no readable metrics.jsonl or
// no step reports.
RunMetrics read_run(io::FileSystem& fs, const std::string& spec);

struct CurvesOptions {
  std::string title;  // above the panels; none when empty
  int width = 1200;   // pixels (PNG) or points (SVG)
  int height = 900;
};

// Where plot_curves() drew (for tests and callers that annotate).
struct CurvesLayout {
  std::array<Rect, 4> plot_areas;  // inside the axes, in panel order above
  Rect legend;
  bool loss_log_scale = false;
  int width = 0, height = 0;
};

// Draws `runs` into `path` (.svg or .png).
CurvesLayout plot_curves(io::FileSystem& fs, const std::string& path,
                         const std::vector<RunMetrics>& runs, const CurvesOptions& options);

}  // namespace dtrain::obs
