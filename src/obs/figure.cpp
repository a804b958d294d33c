#include "obs/figure.h"

#include <cairo-svg.h>
#include <cairo.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <map>

#include "core/error.h"
#include "io/atomic_file.h"

namespace dtrain::obs {

namespace {

constexpr const char* kFont = "DejaVu Sans";

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

cairo_status_t append_to_string(void* closure, const unsigned char* data, unsigned int length) {
  static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
  return CAIRO_STATUS_SUCCESS;
}

void check_status(cairo_status_t status, const std::string& path, const char* what) {
  if (status != CAIRO_STATUS_SUCCESS) {
    throw DataError(
        fmt::format("cannot draw '{}': cairo {}: {}", path, what, cairo_status_to_string(status)));
  }
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// cairo's SVG backend names each surface after a process-wide counter
// ("surface12"); renumbering them in order of appearance makes the output a
// function of the drawing alone.
std::string renumber_surfaces(const std::string& svg) {
  static constexpr std::string_view kWord = "surface";
  std::map<std::string, int> numbers;
  std::string out;
  out.reserve(svg.size());
  size_t at = 0;
  while (true) {
    const size_t found = svg.find(kWord, at);
    if (found == std::string::npos) break;
    size_t digits_end = found + kWord.size();
    while (digits_end < svg.size() && std::isdigit(static_cast<unsigned char>(svg[digits_end]))) {
      ++digits_end;
    }
    out.append(svg, at, found + kWord.size() - at);
    const std::string digits = svg.substr(found + kWord.size(), digits_end - found - kWord.size());
    if (!digits.empty()) {
      const auto [it, added] = numbers.emplace(digits, static_cast<int>(numbers.size()) + 1);
      out += std::to_string(it->second);
    }
    at = digits_end;
  }
  out.append(svg, at);
  return out;
}

}  // namespace

ImageFormat image_format_for(const std::string& path) {
  const std::string name = lower(path);
  if (ends_with(name, ".svg")) return ImageFormat::kSvg;
  if (ends_with(name, ".png")) return ImageFormat::kPng;
  throw UsageError(fmt::format(
      "cannot draw '{}': unknown picture format (the file name must end in .svg or .png)", path));
}

Rgb series_colour(size_t index) {
  static constexpr std::array<std::array<int, 3>, 7> kOkabeIto = {{{0, 114, 178},
                                                                   {213, 94, 0},
                                                                   {0, 158, 115},
                                                                   {204, 121, 167},
                                                                   {230, 159, 0},
                                                                   {86, 180, 233},
                                                                   {0, 0, 0}}};
  const auto& c = kOkabeIto[index % kOkabeIto.size()];
  return {c[0] / 255.0, c[1] / 255.0, c[2] / 255.0};
}

double series_dash(size_t index) {
  return index < 7 ? 0.0 : 3.0 + 3.0 * static_cast<double>((index / 7 - 1) % 3);
}

void Figure::CairoDeleter::operator()(cairo_surface_t* surface) const {
  cairo_surface_destroy(surface);
}
void Figure::CairoDeleter::operator()(cairo_t* cr) const { cairo_destroy(cr); }

Figure::Figure(std::string path, int width, int height)
    : path_(std::move(path)), width_(width), height_(height), format_(image_format_for(path_)) {
  if (width <= 0 || height <= 0) {
    throw UsageError(
        fmt::format("cannot draw '{}': size {}x{} is not positive", path_, width, height));
  }
  if (format_ == ImageFormat::kSvg) {
    surface_.reset(cairo_svg_surface_create_for_stream(append_to_string, &svg_, width, height));
  } else {
    surface_.reset(cairo_image_surface_create(CAIRO_FORMAT_ARGB32, width, height));
  }
  check_status(cairo_surface_status(surface_.get()), path_, "surface");
  cr_.reset(cairo_create(surface_.get()));
  check_status(cairo_status(cr_.get()), path_, "context");
  cairo_set_source_rgb(cr_.get(), 1, 1, 1);
  cairo_paint(cr_.get());
}

double Figure::text_width(const std::string& text, double size, bool bold) {
  cairo_save(cr_.get());
  cairo_select_font_face(cr_.get(), kFont, CAIRO_FONT_SLANT_NORMAL,
                         bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr_.get(), size);
  cairo_text_extents_t extents;
  cairo_text_extents(cr_.get(), text.c_str(), &extents);
  cairo_restore(cr_.get());
  return extents.x_advance;
}

void Figure::text(const std::string& text, double x, double y, double size, Align align,
                  bool vertical, Rgb colour, bool bold) {
  const double width = text_width(text, size, bold);
  const double shift = align == Align::kLeft ? 0.0 : align == Align::kCenter ? width / 2 : width;
  cairo_save(cr_.get());
  cairo_select_font_face(cr_.get(), kFont, CAIRO_FONT_SLANT_NORMAL,
                         bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr_.get(), size);
  cairo_set_source_rgb(cr_.get(), colour.r, colour.g, colour.b);
  cairo_translate(cr_.get(), x, y);
  if (vertical) cairo_rotate(cr_.get(), -M_PI / 2);
  cairo_move_to(cr_.get(), -shift, 0);
  cairo_show_text(cr_.get(), text.c_str());
  cairo_restore(cr_.get());
  if (vertical) {
    labels_.push_back({text, x, y + shift, size, true});
  } else {
    labels_.push_back({text, x - shift, y, size, false});
  }
}

void Figure::finish(io::FileSystem& fs) {
  check_status(cairo_status(cr_.get()), path_, "drawing");
  std::string bytes;
  if (format_ == ImageFormat::kPng) {
    cairo_surface_flush(surface_.get());
    check_status(cairo_surface_write_to_png_stream(surface_.get(), append_to_string, &bytes), path_,
                 "PNG encoding");
  } else {
    cairo_surface_finish(surface_.get());
    check_status(cairo_surface_status(surface_.get()), path_, "SVG output");
    bytes = renumber_surfaces(svg_);
    std::string layer = "<g id=\"dtrain-text\" fill-opacity=\"0\" font-family=\"DejaVu Sans\">\n";
    for (const Label& l : labels_) {
      layer += fmt::format(
          "<text x=\"{:.2f}\" y=\"{:.2f}\" font-size=\"{:.1f}\"{}>{}</text>\n", l.x, l.y, l.size,
          l.vertical ? fmt::format(" transform=\"rotate(-90 {:.2f} {:.2f})\"", l.x, l.y) : "",
          xml_escape(l.text));
    }
    layer += "</g>\n";
    const size_t end = bytes.rfind("</svg>");
    DTRAIN_CHECK(end != std::string::npos, "cairo's SVG of '{}' has no </svg>", path_);
    bytes.insert(end, layer);
  }
  io::write_file_atomic(fs, path_, bytes);
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(hi > lo)) {  // one value: a unit-wide range around it
    const double pad = lo == 0.0 ? 1.0 : std::abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / std::max(1, target);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude * 10;
  for (const double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * magnitude >= raw) {
      step = m * magnitude;
      break;
    }
  }
  const double first = std::floor(lo / step + 1e-9);
  const double last = std::ceil(hi / step - 1e-9);
  std::vector<double> ticks;
  for (double k = first; k <= last; k += 1.0) ticks.push_back(k * step);
  return ticks;
}

std::vector<double> log_ticks(double lo, double hi) {
  DTRAIN_CHECK(lo > 0 && hi > lo, "log axis over [{}, {}]", lo, hi);
  const bool fine = std::log10(hi / lo) <= 2.0;
  const double first_decade = std::floor(std::log10(lo) + 1e-9);
  std::vector<double> ticks;
  for (double decade = first_decade;; decade += 1.0) {
    for (const double m : fine ? std::vector<double>{1, 2, 5} : std::vector<double>{1}) {
      const double t = m * std::pow(10.0, decade);
      if (t * (1 + 1e-9) < lo) {
        if (ticks.empty()) {
          ticks.push_back(t);
        } else {
          ticks.back() = t;
        }
        continue;
      }
      ticks.push_back(t);
      if (t >= hi * (1 - 1e-9)) return ticks;
    }
  }
}

std::string tick_label(double value, double step) {
  if (std::abs(value) < step * 1e-6) return "0";
  const double magnitude = std::abs(value);
  if (magnitude >= 1e5 || magnitude < 1e-4) return fmt::format("{:.0e}", value);
  const int decimals = std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
  return fmt::format("{:.{}f}", value, decimals);
}

}  // namespace dtrain::obs
