#include "data/csv.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cmath>

#include "core/error.h"
#include "data/class_weights.h"

namespace dtrain::data {

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> split(std::string_view line, char delimiter) {
  std::vector<std::string_view> fields;
  size_t start = 0;
  for (;;) {
    const size_t end = line.find(delimiter, start);
    fields.push_back(trim(line.substr(start, end == std::string_view::npos ? end : end - start)));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return fields;
}

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

class CsvParser {
 public:
  CsvParser(const std::string& path, const CsvOptions& options) : path_(path), options_(options) {}

  TensorDataset parse(std::string_view text) {
    int64_t line_number = 0;
    size_t pos = 0;
    while (pos < text.size() && (options_.limit <= 0 || samples() < options_.limit)) {
      size_t end = text.find('\n', pos);
      if (end == std::string_view::npos) end = text.size();
      const std::string_view line = text.substr(pos, end - pos);
      pos = end + 1;
      ++line_number;
      if (trim(line).empty()) continue;
      if (columns_ == 0) {
        start(line, line_number);
        if (options_.has_header) continue;
      }
      add_row(line, line_number);
    }
    if (samples() == 0) throw DataError(fmt::format("{}: no samples", path_));
    int64_t num_classes = options_.num_classes;
    if (num_classes == 0) num_classes = *std::max_element(labels_.begin(), labels_.end()) + 1;
    const int64_t features = static_cast<int64_t>(columns_) - 1;
    Tensor x = Tensor::from_vector(values_, {samples(), features});
    return TensorDataset(std::move(x), std::move(labels_), num_classes);
  }

 private:
  int64_t samples() const { return static_cast<int64_t>(labels_.size()); }

  // The first non-blank line fixes the column count, names and label column.
  void start(std::string_view line, int64_t line_number) {
    const std::vector<std::string_view> fields = split(line, options_.delimiter);
    columns_ = fields.size();
    if (options_.has_header) {
      for (const std::string_view field : fields) names_.emplace_back(field);
    }
    if (options_.label_index != CsvOptions::kByName) {
      const int64_t n = static_cast<int64_t>(columns_);
      const int64_t index =
          options_.label_index < 0 ? n + options_.label_index : options_.label_index;
      if (index < 0 || index >= n) {
        throw DataError(fmt::format("{}:{}: label column index {} is outside the {} columns", path_,
                                    line_number, options_.label_index, n));
      }
      label_column_ = static_cast<size_t>(index);
    } else {
      if (!options_.has_header) {
        throw DataError(
            fmt::format("{}: label column '{}' is chosen by name, but the file has "
                        "no header; give label_index instead",
                        path_, options_.label_column));
      }
      const auto it = std::find(names_.begin(), names_.end(), options_.label_column);
      if (it == names_.end()) {
        throw DataError(fmt::format("{}:{}: no column '{}' in the header (columns: {})", path_,
                                    line_number, options_.label_column, fmt::join(names_, ", ")));
      }
      label_column_ = static_cast<size_t>(it - names_.begin());
    }
    if (columns_ < 2) {
      throw DataError(fmt::format("{}:{}: {} column, need at least one feature and the label",
                                  path_, line_number, columns_));
    }
  }

  std::string column_name(size_t column) const {
    if (column < names_.size()) return fmt::format("column {} ('{}')", column + 1, names_[column]);
    return fmt::format("column {}", column + 1);
  }

  void add_row(std::string_view line, int64_t line_number) {
    const std::vector<std::string_view> fields = split(line, options_.delimiter);
    if (fields.size() != columns_) {
      throw DataError(fmt::format("{}:{}: {} fields, expected {}", path_, line_number,
                                  fields.size(), columns_));
    }
    for (size_t c = 0; c < columns_; ++c) {
      const std::string_view field = fields[c];
      if (c == label_column_) {
        labels_.push_back(parse_label(field, line_number, c));
        continue;
      }
      float value = 0;
      const auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), value);
      if (ec != std::errc() || end != field.data() + field.size() || field.empty() ||
          !std::isfinite(value)) {
        throw DataError(fmt::format("{}:{}: {}: '{}' is not a finite number", path_, line_number,
                                    column_name(c), field));
      }
      values_.push_back(value);
    }
  }

  // A label: decimal digits naming a class below num_classes (given) or
  // kMaxClasses (inferred). Digit strings of any length are compared as text
  // first, so that no value overflows.
  int64_t parse_label(std::string_view field, int64_t line_number, size_t column) const {
    if (!all_digits(field)) {
      throw DataError(fmt::format("{}:{}: {}: label '{}' is not a non-negative integer", path_,
                                  line_number, column_name(column), field));
    }
    const size_t first = std::min(field.find_first_not_of('0'), field.size() - 1);
    const std::string_view digits = field.substr(first);
    int64_t label = kMaxClasses;  // stands for anything too large to parse
    if (digits.size() <= 18) std::from_chars(digits.data(), digits.data() + digits.size(), label);
    if (options_.num_classes > 0 && label >= options_.num_classes) {
      throw DataError(fmt::format("{}:{}: {}: label {} is outside [0, {})", path_, line_number,
                                  column_name(column), digits, options_.num_classes));
    }
    if (label >= kMaxClasses) {
      throw DataError(fmt::format(
          "{}:{}: {}: label {} is too large: at most {} classes are "
          "supported (labels 0 to {})",
          path_, line_number, column_name(column), digits, kMaxClasses, kMaxClasses - 1));
    }
    return label;
  }

  const std::string& path_;
  const CsvOptions& options_;
  size_t columns_ = 0;
  size_t label_column_ = 0;
  std::vector<std::string> names_;
  std::vector<float> values_;
  std::vector<int64_t> labels_;
};

}  // namespace

TensorDataset read_csv(const std::string& path, const CsvOptions& options, io::FileSystem& fs) {
  if (options.num_classes < 0 || options.num_classes > kMaxClasses) {
    throw UsageError(fmt::format("CSV {}: num_classes {} is outside [0, {}] (0: inferred)", path,
                                 options.num_classes, kMaxClasses));
  }
  const std::string text = io::read_input_file(fs, path, options.max_file_bytes, "CSV file");
  return CsvParser(path, options).parse(text);
}

}  // namespace dtrain::data
