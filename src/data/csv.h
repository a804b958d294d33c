// CSV reader: numeric feature columns plus one integer label column, into a
// TensorDataset with features [N, F] (F = columns - 1, in file order).
//
// Format: one sample per line, fields separated by `delimiter`, surrounding
// spaces and a trailing '\r' ignored, blank lines skipped; no quoting (the
// fields are numbers). The optional header line names the columns. The label
// column is chosen by name (needs a header) or by index (negative counts from
// the end); labels are non-negative integers ("3", not "3.0").
//
// Errors: DataError "<file>:<line>: column <k> ('<name>'): <problem>" for a
// field that is not a number, a row with the wrong number of fields, a label
// that is negative, fractional or >= num_classes, or, when num_classes is
// inferred, a label of kMaxClasses (data/class_weights.h) or more (labels of
// any length are parsed without overflow); "<file>: ..." for a missing label
// column (listing the header) or a file without samples; "cannot read CSV
// file '<file>': ..." for a path that is not a regular file or a file over
// max_file_bytes (io::read_input_file). UsageError for num_classes outside
// [0, kMaxClasses].
// Thread safety: pure function. Blocking: reads the whole file.
#pragma once

#include <cstdint>
#include <string>

#include "data/dataset.h"
#include "io/file_system.h"

namespace dtrain::data {

struct CsvOptions {
  bool has_header = true;
  std::string label_column = "label";  // by name; used when label_index is unset
  int64_t label_index = kByName;       // by position; -1: the last column
  char delimiter = ',';
  int64_t num_classes = 0;                          // 0: 1 + the largest label
  int64_t limit = 0;                                // read only the first `limit` samples; 0: all
  uint64_t max_file_bytes = io::kMaxDataFileBytes;  // larger files are refused

  static constexpr int64_t kByName = INT64_MIN;
};

TensorDataset read_csv(const std::string& path, const CsvOptions& options = {},
                       io::FileSystem& fs = io::default_file_system());

}  // namespace dtrain::data
