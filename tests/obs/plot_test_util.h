// Helpers of the plot, heat-map and metrics-log tests: a scratch folder,
// metrics.jsonl lines as JsonLinesWriter writes them, and a reader of the
// SVG that cairo writes (its <path> elements) and of PNG headers.
// Thread safety: none needed (one test per thread).
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace dtrain::obs::testing {

// A fresh folder under /tmp, removed with its content by the destructor.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "dtrain-plot-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline void write_text(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline std::string begin_line(double time, int64_t start_step = 0) {
  return "{\"event\":\"begin\",\"job\":\"t\",\"strategy\":\"allreduce\",\"workers\":2,\"epochs\":2,"
         "\"steps_per_epoch\":10,\"start_step\":" +
         std::to_string(start_step) + ",\"time\":" + std::to_string(time) + "}\n";
}

inline std::string step_line(int64_t step, double loss, double time) {
  std::ostringstream s;
  s.precision(17);
  s << "{\"event\":\"step\",\"step\":" << step << ",\"epoch\":" << 1 + (step - 1) / 10
    << ",\"lr\":0.1,\"loss\":" << loss << ",\"accuracy\":0.5,\"samples_per_s\":1000.0,"
    << "\"split\":[64,64],\"time\":" << time << "}\n";
  return s.str();
}

inline std::string epoch_line(int64_t epoch, double accuracy, double time) {
  std::ostringstream s;
  s.precision(17);
  s << "{\"event\":\"epoch\",\"epoch\":" << epoch << ",\"step\":" << epoch * 10
    << ",\"train_loss\":0.5,\"train_accuracy\":0.8,\"test_loss\":0.4,\"test_accuracy\":" << accuracy
    << ",\"samples_per_s\":900.0,\"seconds\":3.0,\"time\":" << time << "}\n";
  return s.str();
}

// One <path .../> element of cairo's SVG: its style and the commands of its
// "d" attribute (M, L, C, Z...) in order.
struct SvgPath {
  std::string style;
  std::vector<char> commands;
  bool stroked_in(const std::string& rgb) const {
    return style.find("fill:none") != std::string::npos &&
           style.find("stroke:" + rgb + ";") != std::string::npos;
  }
  size_t points() const {  // M and L commands: one per data point of a polyline
    size_t n = 0;
    for (const char c : commands) n += c == 'M' || c == 'L';
    return n;
  }
};

// The <path> elements outside <defs> (the glyph outlines live inside it).
inline std::vector<SvgPath> svg_paths(const std::string& svg) {
  std::vector<SvgPath> paths;
  size_t at = svg.find("</defs>");
  at = at == std::string::npos ? 0 : at;
  while ((at = svg.find("<path ", at)) != std::string::npos) {
    const size_t end = svg.find("/>", at);
    const std::string element = svg.substr(at, end - at);
    at = end;
    SvgPath p;
    const size_t style = element.find("style=\"");
    if (style != std::string::npos) {
      p.style = element.substr(style + 7, element.find('"', style + 7) - style - 7);
    }
    const size_t d = element.find(" d=\"");
    if (d != std::string::npos) {
      for (size_t i = d + 4; i < element.size() && element[i] != '"'; ++i) {
        if (std::isalpha(static_cast<unsigned char>(element[i])) && element[i] != 'e') {
          p.commands.push_back(element[i]);
        }
      }
    }
    paths.push_back(std::move(p));
  }
  return paths;
}

// The texts of the transparent text layer (figure.h), in drawing order.
inline std::vector<std::string> svg_texts(const std::string& svg) {
  std::vector<std::string> texts;
  size_t at = 0;
  while ((at = svg.find("<text ", at)) != std::string::npos) {
    const size_t open_end = svg.find('>', at);
    const size_t close = svg.find("</text>", open_end);
    texts.push_back(svg.substr(open_end + 1, close - open_end - 1));
    at = close;
  }
  return texts;
}

// Width and height from a PNG's IHDR chunk (0, 0 when it is no PNG).
struct PngHeader {
  bool signature_ok = false;
  uint32_t width = 0, height = 0;
};
inline PngHeader png_header(const std::string& bytes) {
  static const std::string kSignature("\x89PNG\r\n\x1a\n", 8);
  PngHeader h;
  if (bytes.size() < 24 || bytes.compare(0, 8, kSignature) != 0 ||
      bytes.compare(12, 4, "IHDR") != 0) {
    return h;
  }
  h.signature_ok = true;
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = v << 8 | static_cast<unsigned char>(bytes[at + i]);
    return v;
  };
  h.width = be32(16);
  h.height = be32(20);
  return h;
}

}  // namespace dtrain::obs::testing
