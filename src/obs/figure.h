// Figure: a cairo drawing that becomes an SVG or a PNG file, chosen by the
// output path's extension (".svg", ".png", any case), and the drawing
// helpers the plots share (text, nice axis ticks, a colour-blind-safe
// palette). Used by plot.h (training curves) and heat_map.h.
//
// SVG: cairo's SVG backend draws text as glyph outlines, so dtrain adds a
// transparent text layer (one <text> element per label, at the label's
// place): the names and labels stay searchable and selectable, and tests can
// find them. cairo numbers its surfaces in a process-wide counter ("surface7");
// finish() renumbers them from 1, so the same drawing gives the same bytes.
// PNG: cairo's 8-bit ARGB image, written with cairo's encoder (see
// docs/observability.md#plots-training-curves-and-the-partition-picture on byte stability).
//
// Ownership: Figure owns its cairo surface and context (not copyable).
// Thread safety: one Figure per thread; separate Figures are independent.
// Errors: UsageError for an extension other than .svg/.png (naming the
// path) and a non-positive size; DataError when cairo fails to draw;
// io::FileError when the file cannot be written. finish() writes the file
// atomically (io/atomic_file.h) and blocks for that write.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/file_system.h"

using cairo_t = struct _cairo;
using cairo_surface_t = struct _cairo_surface;

namespace dtrain::obs {

enum class ImageFormat { kSvg, kPng };

// The format named by `path`'s extension; UsageError naming `path` otherwise.
ImageFormat image_format_for(const std::string& path);

struct Rgb {
  double r = 0.0, g = 0.0, b = 0.0;  // each in [0, 1]
};

// Okabe & Ito's colour-blind-safe palette (2008) without its yellow (too pale
// on white): blue, vermillion, bluish green, reddish purple, orange, sky
// blue, black. Runs past the seventh reuse the colours with a dash pattern
// (series_dash()).
Rgb series_colour(size_t index);
// 0 for solid lines, else the dash length in points for the index-th series.
double series_dash(size_t index);

struct Rect {
  double x = 0.0, y = 0.0, width = 0.0, height = 0.0;
};

enum class Align { kLeft, kCenter, kRight };

class Figure {
 public:
  // A white canvas of width × height (pixels for PNG, points for SVG).
  Figure(std::string path, int width, int height);
  ~Figure() = default;
  Figure(const Figure&) = delete;
  Figure& operator=(const Figure&) = delete;

  cairo_t* cairo() { return cr_.get(); }
  int width() const { return width_; }
  int height() const { return height_; }
  ImageFormat format() const { return format_; }

  // Draws `text` in DejaVu Sans of `size` points with its baseline at y,
  // aligned on x; rotated a quarter turn anticlockwise when `vertical`.
  void text(const std::string& text, double x, double y, double size, Align align,
            bool vertical = false, Rgb colour = {}, bool bold = false);
  double text_width(const std::string& text, double size, bool bold = false);

  // Draws nothing more; writes the file through `fs`.
  void finish(io::FileSystem& fs);

 private:
  struct Label {
    std::string text;
    double x, y, size;
    bool vertical;
  };
  std::string path_;
  int width_, height_;
  ImageFormat format_;
  struct CairoDeleter {
    void operator()(cairo_surface_t* surface) const;
    void operator()(cairo_t* cr) const;
  };
  // Declared in this order so that they are destroyed context first, then
  // the surface (which may still write into svg_ as it goes), then svg_.
  std::string svg_;  // the SVG backend's output stream
  std::unique_ptr<cairo_surface_t, CairoDeleter> surface_;
  std::unique_ptr<cairo_t, CairoDeleter> cr_;
  std::vector<Label> labels_;
};

// Axis ticks at "nice" values: multiples of 1, 2 or 5 × 10^k covering
// [lo, hi] with about `target` intervals. Returns the ticks from the first at
// or below lo to the first at or above hi (so they span the data).
std::vector<double> nice_ticks(double lo, double hi, int target = 5);
// Ticks of a log axis over [lo, hi] (0 < lo < hi): 1, 2 and 5 × 10^k when the
// range spans at most two decades, powers of ten otherwise; the first at or
// below lo to the first at or above hi.
std::vector<double> log_ticks(double lo, double hi);
// A tick label: the shortest decimal that tells neighbouring ticks `step`
// apart ("0.25", "1e+04" for very large or small values).
std::string tick_label(double value, double step);

}  // namespace dtrain::obs
