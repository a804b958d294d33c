#include "obs/plot.h"

#include <cairo.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace dtrain::obs {

namespace {

const Rgb kFrame{0.25, 0.25, 0.25};
const Rgb kGrid{0.9, 0.9, 0.9};
const Rgb kInk{0.1, 0.1, 0.1};

struct Series {
  std::vector<double> x, y;
  Rgb colour;
  double dash = 0.0;
  bool markers = false;
};

struct Panel {
  std::string title, x_label, y_label;
  bool log_y = false;
  std::vector<Series> series;
};

// An axis: ticks over [lo, hi] and the mapping of data values to a pixel span.
struct Axis {
  std::vector<double> ticks;
  bool log = false;
  double lo = 0.0, hi = 1.0;  // in axis units (log10 of the value on a log axis)

  static Axis make(double min, double max, bool log) {
    Axis a;
    a.log = log;
    a.ticks = log ? log_ticks(min, max) : nice_ticks(min, max);
    a.lo = a.unit(a.ticks.front());
    a.hi = a.unit(a.ticks.back());
    return a;
  }
  double unit(double v) const { return log ? std::log10(v) : v; }
  double fraction(double v) const { return (unit(v) - lo) / (hi - lo); }
  std::string label(size_t i) const {
    const double step = log ? ticks[i] : ticks.size() > 1 ? ticks[1] - ticks[0] : 1.0;
    return tick_label(ticks[i], step);
  }
};

bool usable(double x, double y, bool log_y) {
  return std::isfinite(x) && std::isfinite(y) && (!log_y || y > 0);
}

// Whether a loss panel should be logarithmic: all finite values positive and
// max > 10 × min.
bool spans_a_decade(const std::vector<Series>& series) {
  double lo = std::numeric_limits<double>::infinity(), hi = 0.0;
  for (const Series& s : series) {
    for (const double y : s.y) {
      if (!std::isfinite(y)) continue;
      if (y <= 0) return false;
      lo = std::min(lo, y);
      hi = std::max(hi, y);
    }
  }
  return hi > 10 * lo;
}

void stroke_line(cairo_t* cr, double x0, double y0, double x1, double y1, Rgb c, double width) {
  cairo_set_source_rgb(cr, c.r, c.g, c.b);
  cairo_set_line_width(cr, width);
  cairo_move_to(cr, x0, y0);
  cairo_line_to(cr, x1, y1);
  cairo_stroke(cr);
}

// A panel's plot area and its two axes: data coordinates to pixels. `empty`:
// no series has a usable point (the axes then span 0..1).
struct PanelView {
  Rect area;
  Axis ax, ay;
  bool empty;
  double x(double v) const { return area.x + ax.fraction(v) * area.width; }
  double y(double v) const { return area.y + area.height - ay.fraction(v) * area.height; }
};

// The axes over the usable points of every series.
PanelView panel_view(const Rect& area, const Panel& panel) {
  double x_min = std::numeric_limits<double>::infinity(), x_max = -x_min;
  double y_min = x_min, y_max = -x_min;
  for (const Series& s : panel.series) {
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!usable(s.x[i], s.y[i], panel.log_y)) continue;
      x_min = std::min(x_min, s.x[i]);
      x_max = std::max(x_max, s.x[i]);
      y_min = std::min(y_min, s.y[i]);
      y_max = std::max(y_max, s.y[i]);
    }
  }
  const bool empty = !(x_min <= x_max);
  if (empty) x_min = 0, x_max = 1, y_min = 0, y_max = 1;
  return {area, Axis::make(x_min, x_max, false), Axis::make(y_min, y_max, panel.log_y && !empty),
          empty};
}

// The title, grid, tick labels, axis labels and frame; false (after writing
// "no data") when there is nothing to draw.
bool draw_frame(Figure& figure, const Panel& panel, const PanelView& view) {
  cairo_t* cr = figure.cairo();
  const Rect& area = view.area;
  const bool empty = view.empty;
  figure.text(panel.title, area.x + area.width / 2, area.y - 10, 13, Align::kCenter, false, kInk,
              true);
  for (size_t i = 0; i < view.ax.ticks.size(); ++i) {
    const double x = view.x(view.ax.ticks[i]);
    stroke_line(cr, x, area.y, x, area.y + area.height, kGrid, 1);
    figure.text(view.ax.label(i), x, area.y + area.height + 15, 10, Align::kCenter, false, kInk);
  }
  for (size_t i = 0; i < view.ay.ticks.size(); ++i) {
    const double y = view.y(view.ay.ticks[i]);
    stroke_line(cr, area.x, y, area.x + area.width, y, kGrid, 1);
    figure.text(view.ay.label(i), area.x - 6, y + 3.5, 10, Align::kRight, false, kInk);
  }
  figure.text(panel.x_label, area.x + area.width / 2, area.y + area.height + 34, 11, Align::kCenter,
              false, kInk);
  figure.text(panel.y_label + (panel.log_y && !empty ? " (log scale)" : ""), area.x - 52,
              area.y + area.height / 2, 11, Align::kCenter, true, kInk);
  cairo_set_source_rgb(cr, kFrame.r, kFrame.g, kFrame.b);
  cairo_set_line_width(cr, 1);
  cairo_rectangle(cr, area.x, area.y, area.width, area.height);
  cairo_stroke(cr);
  if (empty) {
    figure.text("no data", area.x + area.width / 2, area.y + area.height / 2, 12, Align::kCenter,
                false, kFrame);
    return false;
  }
  return true;
}

// One series: its line (broken at unusable points), then its dots.
void draw_series(cairo_t* cr, const Series& s, const PanelView& view, bool log_y) {
  bool pen_down = false, any = false;
  for (size_t i = 0; i < s.x.size(); ++i) {
    if (!usable(s.x[i], s.y[i], log_y)) {
      pen_down = false;
      continue;
    }
    if (pen_down) {
      cairo_line_to(cr, view.x(s.x[i]), view.y(s.y[i]));
    } else {
      cairo_move_to(cr, view.x(s.x[i]), view.y(s.y[i]));
    }
    pen_down = any = true;
  }
  if (!any) return;
  cairo_save(cr);
  cairo_set_source_rgb(cr, s.colour.r, s.colour.g, s.colour.b);
  cairo_set_line_width(cr, 2);
  cairo_set_line_cap(cr, CAIRO_LINE_CAP_ROUND);
  cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
  if (s.dash > 0) cairo_set_dash(cr, &s.dash, 1, 0);
  cairo_stroke(cr);
  cairo_restore(cr);
  // Dots: every point of a marked series, and points without a usable
  // neighbour (a line through one point draws nothing).
  cairo_set_source_rgb(cr, s.colour.r, s.colour.g, s.colour.b);
  const auto point = [&](size_t i) { return usable(s.x[i], s.y[i], log_y); };
  for (size_t i = 0; i < s.x.size(); ++i) {
    if (!point(i)) continue;
    const bool isolated = (i == 0 || !point(i - 1)) && (i + 1 == s.x.size() || !point(i + 1));
    if (!s.markers && !isolated) continue;
    cairo_new_sub_path(cr);
    cairo_arc(cr, view.x(s.x[i]), view.y(s.y[i]), 3.5, 0, 2 * M_PI);
  }
  cairo_fill(cr);
}

void draw_panel(Figure& figure, const Rect& area, const Panel& panel) {
  const PanelView view = panel_view(area, panel);
  if (!draw_frame(figure, panel, view)) return;
  for (const Series& s : panel.series) draw_series(figure.cairo(), s, view, panel.log_y);
}

// Seconds, minutes or hours, after the longest run.
struct TimeUnit {
  double seconds;
  const char* name;
};
TimeUnit time_unit_for(double longest_seconds) {
  if (longest_seconds > 5 * 3600) return {3600, "h"};
  if (longest_seconds > 300) return {60, "min"};
  return {1, "s"};
}

std::array<Panel, 4> curves_panels(const std::vector<RunMetrics>& runs) {
  double longest = 0;
  for (const RunMetrics& r : runs) {
    for (const StepPoint& p : r.log.steps) {
      if (std::isfinite(p.time - r.log.start_time))
        longest = std::max(longest, p.time - r.log.start_time);
    }
    for (const EpochPoint& p : r.log.epochs) {
      if (std::isfinite(p.time - r.log.start_time))
        longest = std::max(longest, p.time - r.log.start_time);
    }
  }
  const TimeUnit unit = time_unit_for(longest);
  const std::string time_label = fmt::format("wall time since the run's start ({})", unit.name);
  std::array<Panel, 4> panels;
  panels[0] = {"Training loss by step", "step", "training loss", false, {}};
  panels[1] = {"Test accuracy by step", "step", "test accuracy (%)", false, {}};
  panels[2] = {"Training loss by wall time", time_label, "training loss", false, {}};
  panels[3] = {"Test accuracy by wall time", time_label, "test accuracy (%)", false, {}};
  for (size_t i = 0; i < runs.size(); ++i) {
    const MetricsLog& log = runs[i].log;
    Series by_step{{}, {}, series_colour(i), series_dash(i), false};
    Series loss_by_time = by_step, acc_by_step = by_step;
    acc_by_step.markers = true;
    Series acc_by_time = acc_by_step;
    for (const StepPoint& p : log.steps) {
      by_step.x.push_back(static_cast<double>(p.step));
      by_step.y.push_back(p.loss);
      if (std::isfinite(p.time - log.start_time)) {
        loss_by_time.x.push_back((p.time - log.start_time) / unit.seconds);
        loss_by_time.y.push_back(p.loss);
      }
    }
    for (const EpochPoint& p : log.epochs) {
      acc_by_step.x.push_back(static_cast<double>(p.step));
      acc_by_step.y.push_back(100 * p.test_accuracy);
      if (std::isfinite(p.time - log.start_time)) {
        acc_by_time.x.push_back((p.time - log.start_time) / unit.seconds);
        acc_by_time.y.push_back(100 * p.test_accuracy);
      }
    }
    panels[0].series.push_back(std::move(by_step));
    panels[1].series.push_back(std::move(acc_by_step));
    panels[2].series.push_back(std::move(loss_by_time));
    panels[3].series.push_back(std::move(acc_by_time));
  }
  panels[0].log_y = spans_a_decade(panels[0].series);
  panels[2].log_y = spans_a_decade(panels[2].series);
  return panels;
}

// Legend entries left to right, wrapped into rows; returns the rows' height.
double draw_legend(Figure& figure, const std::vector<RunMetrics>& runs, double top, bool draw) {
  constexpr double kRow = 22, kSwatch = 14, kGap = 28, kMargin = 20;
  double x = kMargin, y = top;
  for (size_t i = 0; i < runs.size(); ++i) {
    const double width = kSwatch + 6 + figure.text_width(runs[i].name, 12);
    if (x > kMargin && x + width > figure.width() - kMargin) {
      x = kMargin;
      y += kRow;
    }
    if (draw) {
      const Rgb c = series_colour(i);
      cairo_t* cr = figure.cairo();
      cairo_set_source_rgb(cr, c.r, c.g, c.b);
      cairo_rectangle(cr, x, y, kSwatch, kSwatch);
      cairo_fill(cr);
      figure.text(runs[i].name, x + kSwatch + 6, y + 11.5, 12, Align::kLeft, false, kInk);
    }
    x += width + kGap;
  }
  return y + kRow - top;
}

}  // namespace

RunMetrics read_run(io::FileSystem& fs, const std::string& spec) {
  RunMetrics run;
  const size_t eq = spec.find('=');
  if (eq != std::string::npos) {
    run.name = spec.substr(0, eq);
    run.dir = spec.substr(eq + 1);
    if (run.name.empty() || run.dir.empty()) {
      throw UsageError(fmt::format("run '{}': expected DIR or NAME=DIR", spec));
    }
  } else {
    run.dir = spec;
    std::string trimmed = spec;
    while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
    run.name = io::base_name(trimmed);
  }
  run.log = read_metrics_log(fs, metrics_path(run.dir));
  if (run.log.steps.empty()) {
    throw DataError(fmt::format("run '{}': {} has no step reports (nothing to plot)", run.dir,
                                metrics_path(run.dir)));
  }
  return run;
}

CurvesLayout plot_curves(io::FileSystem& fs, const std::string& path,
                         const std::vector<RunMetrics>& runs, const CurvesOptions& options) {
  if (runs.empty()) throw UsageError(fmt::format("cannot draw '{}': no runs to plot", path));
  Figure figure(path, options.width, options.height);
  CurvesLayout layout;
  layout.width = options.width;
  layout.height = options.height;
  const double title_height = options.title.empty() ? 0 : 34;
  if (!options.title.empty()) {
    figure.text(options.title, options.width / 2.0, 24, 16, Align::kCenter, false, kInk, true);
  }
  const double legend_height = draw_legend(figure, runs, 0, false);
  const double legend_top = options.height - legend_height - 8;
  layout.legend = {0, legend_top, static_cast<double>(options.width), legend_height};
  draw_legend(figure, runs, legend_top, true);

  // Each cell of the 2 × 2 grid keeps room for its title, tick labels and
  // axis labels around the plot area.
  constexpr double kLeft = 78, kRight = 18, kTop = 30, kBottom = 50;
  const double cell_width = options.width / 2.0;
  const double cell_height = (legend_top - title_height) / 2.0;
  const std::array<Panel, 4> panels = curves_panels(runs);
  layout.loss_log_scale = panels[0].log_y;
  for (size_t i = 0; i < 4; ++i) {
    const double x = (i % 2) * cell_width, y = title_height + (i / 2) * cell_height;
    const Rect area{x + kLeft, y + kTop, cell_width - kLeft - kRight, cell_height - kTop - kBottom};
    if (area.width < 20 || area.height < 20) {
      throw UsageError(fmt::format("cannot draw '{}': {}x{} is too small for four panels", path,
                                   options.width, options.height));
    }
    draw_panel(figure, area, panels[i]);
    layout.plot_areas[i] = area;
  }
  figure.finish(fs);
  return layout;
}

}  // namespace dtrain::obs
