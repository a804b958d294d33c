// A heat map of a matrix of counts (`dtrain partition --image`: the training
// labels each worker holds, workers × classes): one cell per entry, shaded
// from white (0) to dark blue (the largest count), the count written in the
// cell, row and column labels on the left and on top.
//
// The picture's size follows the matrix: heat_map_size() is
//   width  = 110 + 60 × columns,   height = 96 + 30 × rows
// (pixels for PNG, points for SVG), so a 4 × 10 partition is 710 × 216.
//
// Ownership: plain values. Thread safety: pure apart from the file written.
// Errors: UsageError naming the path for an empty matrix, labels that do not
// match its shape, a negative count or an unknown extension (figure.h);
// io::FileError when the picture cannot be written. Blocking: writes the
// picture (whole-file, atomic).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/file_system.h"

namespace dtrain::obs {

struct CountMatrix {
  std::vector<std::string> row_labels;     // e.g. "worker 0"
  std::vector<std::string> column_labels;  // e.g. "0".."9" (the classes)
  std::vector<int64_t> counts;             // row-major, rows × columns
};

struct HeatMapOptions {
  std::string title;                  // above the map; none when empty
  std::string row_axis = "worker";    // what the rows are
  std::string column_axis = "class";  // what the columns are
};

struct ImageSize {
  int width = 0, height = 0;
};

ImageSize heat_map_size(size_t rows, size_t columns);

// Draws `matrix` into `path` (.svg or .png); returns the picture's size.
ImageSize draw_heat_map(io::FileSystem& fs, const std::string& path, const CountMatrix& matrix,
                        const HeatMapOptions& options);

}  // namespace dtrain::obs
