#include "obs/metrics_log.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dtrain::obs {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// One line of the file being parsed, for the fields' accessors and errors.
class Line {
 public:
  Line(const nlohmann::json& object, const std::string& path, int64_t number)
      : object_(object), path_(path), number_(number) {}

  [[noreturn]] void fail(const std::string& problem) const {
    throw DataError(fmt::format("metrics file '{}' line {}: {}", path_, number_, problem));
  }

  // A number field; null reads as NaN; `fallback` when absent and optional.
  double number(const char* key, bool required, double fallback = 0.0) const {
    const auto it = object_.find(key);
    if (it == object_.end()) {
      if (required) fail(fmt::format("{} event without \"{}\"", event(), key));
      return fallback;
    }
    if (it->is_null()) return kNaN;
    if (!it->is_number()) {
      fail(fmt::format("\"{}\" is {}, expected a number", key, it->type_name()));
    }
    return it->get<double>();
  }

  int64_t integer(const char* key) const {
    const auto it = object_.find(key);
    if (it == object_.end()) fail(fmt::format("{} event without \"{}\"", event(), key));
    if (!it->is_number_integer()) {
      fail(fmt::format("\"{}\" is {}, expected an integer", key, it->type_name()));
    }
    return it->get<int64_t>();
  }

  std::string event() const { return object_.at("event").get<std::string>(); }

 private:
  const nlohmann::json& object_;
  const std::string& path_;
  int64_t number_;
};

StepPoint read_step(const Line& line) {
  StepPoint p;
  p.step = line.integer("step");
  p.epoch = line.integer("epoch");
  p.loss = line.number("loss", true);
  p.accuracy = line.number("accuracy", true);
  p.lr = line.number("lr", false);
  p.samples_per_s = line.number("samples_per_s", false);
  p.bytes_per_step = line.number("bytes_per_step", false);
  p.compression_ratio = line.number("compression_ratio", false);
  p.time = line.number("time", false, kNaN);
  return p;
}

EpochPoint read_epoch(const Line& line) {
  EpochPoint p;
  p.epoch = line.integer("epoch");
  p.step = line.integer("step");
  p.test_loss = line.number("test_loss", true);
  p.test_accuracy = line.number("test_accuracy", true);
  p.train_loss = line.number("train_loss", false, kNaN);
  p.train_accuracy = line.number("train_accuracy", false, kNaN);
  p.samples_per_s = line.number("samples_per_s", false);
  p.seconds = line.number("seconds", false);
  p.time = line.number("time", false, kNaN);
  return p;
}

// Appends `point` keyed by key(point), first dropping the kept points whose
// key is not below it (a resumed run reports them again: the later wins).
template <typename Point, typename Key>
void append_replacing(std::vector<Point>& points, Point point, Key key, int64_t& replaced) {
  while (!points.empty() && key(points.back()) >= key(point)) {
    points.pop_back();
    ++replaced;
  }
  points.push_back(point);
}

// The "begin" object that ends `raw` after a torn fragment, or a discarded
// value: the suffix from some '{' after the first character that parses as
// a whole {"event": "begin", ...} object.
nlohmann::json resumed_begin(std::string_view raw) {
  for (size_t at = raw.find('{', 1); at != std::string_view::npos; at = raw.find('{', at + 1)) {
    nlohmann::json object = nlohmann::json::parse(raw.substr(at), nullptr, false);
    if (!object.is_discarded() && object.is_object() && object.value("event", "") == "begin") {
      return object;
    }
  }
  return nlohmann::json(nlohmann::json::value_t::discarded);
}

}  // namespace

MetricsLog parse_metrics_log(std::string_view text, const std::string& path) {
  MetricsLog log;
  log.path = path;
  log.start_time = kNaN;
  int64_t number = 0;
  size_t at = 0;
  while (at < text.size()) {
    ++number;
    const size_t end = text.find('\n', at);
    const bool terminated = end != std::string_view::npos;
    const std::string_view raw = text.substr(at, terminated ? end - at : std::string_view::npos);
    at = terminated ? end + 1 : text.size();
    if (raw.find_first_not_of(" \t\r") == std::string_view::npos) continue;

    nlohmann::json object = nlohmann::json::parse(raw, nullptr, /*allow_exceptions=*/false);
    if (object.is_discarded()) {
      if (!terminated) {  // the writer was cut off inside its last line
        log.torn_last_line = true;
        break;
      }
      // A run killed inside a line and resumed: the writer appended the new
      // "begin" to the torn fragment.
      object = resumed_begin(raw);
      if (!object.is_discarded()) ++log.torn_before_resume;
    }
    if (object.is_discarded()) {
      throw DataError(fmt::format("metrics file '{}' line {}: not a JSON object: '{}'", path,
                                  number, raw.substr(0, 60)));
    }
    const Line line(object, path, number);
    if (!object.is_object())
      line.fail(fmt::format("a JSON {}, expected an object", object.type_name()));
    const auto event = object.find("event");
    if (event == object.end() || !event->is_string()) line.fail("no \"event\" name");
    const double time = line.number("time", false, kNaN);
    if (std::isnan(log.start_time) && !std::isnan(time)) log.start_time = time;

    const std::string& name = event->get_ref<const std::string&>();
    if (name == "begin") {
      ++log.begins;
    } else if (name == "step") {
      append_replacing(
          log.steps, read_step(line), [](const StepPoint& p) { return p.step; },
          log.replaced_points);
    } else if (name == "epoch") {
      append_replacing(
          log.epochs, read_epoch(line), [](const EpochPoint& p) { return p.epoch; },
          log.replaced_points);
    }
  }
  return log;
}

MetricsLog read_metrics_log(io::FileSystem& fs, const std::string& path) {
  return parse_metrics_log(io::read_input_file(fs, path, io::kMaxDataFileBytes, "metrics file"),
                           path);
}

std::string metrics_path(const std::string& run_dir) {
  return io::join_path(run_dir, "metrics.jsonl");
}

}  // namespace dtrain::obs
