#include "obs/heat_map.h"

#include <cairo.h>
#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "obs/figure.h"

namespace dtrain::obs {

namespace {

constexpr double kCellWidth = 60, kCellHeight = 30;
constexpr double kLeft = 90, kRight = 20, kTop = 66, kBottom = 30;

// White to Okabe & Ito's blue (0, 114, 178), darkened towards the top.
Rgb shade(double t) {
  const Rgb high{0.0, 0.30, 0.50};
  return {1 + (high.r - 1) * t, 1 + (high.g - 1) * t, 1 + (high.b - 1) * t};
}

}  // namespace

ImageSize heat_map_size(size_t rows, size_t columns) {
  return {static_cast<int>(kLeft + kRight + kCellWidth * static_cast<double>(columns)),
          static_cast<int>(kTop + kBottom + kCellHeight * static_cast<double>(rows))};
}

ImageSize draw_heat_map(io::FileSystem& fs, const std::string& path, const CountMatrix& matrix,
                        const HeatMapOptions& options) {
  const size_t rows = matrix.row_labels.size(), columns = matrix.column_labels.size();
  if (rows == 0 || columns == 0) {
    throw UsageError(
        fmt::format("cannot draw '{}': the matrix is empty ({} x {})", path, rows, columns));
  }
  if (matrix.counts.size() != rows * columns) {
    throw UsageError(fmt::format("cannot draw '{}': {} counts for {} x {} labels", path,
                                 matrix.counts.size(), rows, columns));
  }
  if (std::any_of(matrix.counts.begin(), matrix.counts.end(), [](int64_t c) { return c < 0; })) {
    throw UsageError(fmt::format("cannot draw '{}': a count is negative", path));
  }
  const ImageSize size = heat_map_size(rows, columns);
  Figure figure(path, size.width, size.height);
  cairo_t* cr = figure.cairo();
  const int64_t largest =
      std::max<int64_t>(1, *std::max_element(matrix.counts.begin(), matrix.counts.end()));
  const Rgb ink{0.1, 0.1, 0.1};
  if (!options.title.empty()) {
    // Shrunk to fit a narrow map (few classes).
    const double title_size =
        std::min(14.0, 14.0 * (size.width - 20) / figure.text_width(options.title, 14, true));
    figure.text(options.title, size.width / 2.0, 20, title_size, Align::kCenter, false, ink, true);
  }
  figure.text(options.column_axis, kLeft + kCellWidth * static_cast<double>(columns) / 2, kTop - 26,
              11, Align::kCenter, false, ink);
  figure.text(options.row_axis, 14, kTop - 8, 11, Align::kLeft, false, ink);
  for (size_t c = 0; c < columns; ++c) {
    figure.text(matrix.column_labels[c], kLeft + (static_cast<double>(c) + 0.5) * kCellWidth,
                kTop - 8, 11, Align::kCenter, false, ink);
  }
  for (size_t r = 0; r < rows; ++r) {
    const double y = kTop + static_cast<double>(r) * kCellHeight;
    figure.text(matrix.row_labels[r], kLeft - 8, y + kCellHeight / 2 + 4, 11, Align::kRight, false,
                ink);
    for (size_t c = 0; c < columns; ++c) {
      const int64_t count = matrix.counts[r * columns + c];
      const double t = static_cast<double>(count) / static_cast<double>(largest);
      const Rgb fill = shade(t);
      const double x = kLeft + static_cast<double>(c) * kCellWidth;
      cairo_set_source_rgb(cr, fill.r, fill.g, fill.b);
      cairo_rectangle(cr, x, y, kCellWidth, kCellHeight);
      cairo_fill(cr);
      figure.text(std::to_string(count), x + kCellWidth / 2, y + kCellHeight / 2 + 4, 10,
                  Align::kCenter, false, t > 0.5 ? Rgb{1, 1, 1} : ink);
    }
  }
  cairo_set_source_rgb(cr, 0.25, 0.25, 0.25);
  cairo_set_line_width(cr, 1);
  cairo_rectangle(cr, kLeft, kTop, kCellWidth * static_cast<double>(columns),
                  kCellHeight * static_cast<double>(rows));
  cairo_stroke(cr);
  figure.finish(fs);
  return size;
}

}  // namespace dtrain::obs
