// The TensorBoard messages dtrain writes, encoded by hand (obs/proto_encoder.h)
// with the field numbers of TensorFlow's tensorflow/core/util/event.proto and
// tensorflow/core/framework/summary.proto:
//
//   Event          { double wall_time = 1; int64 step = 2;
//                    oneof what { string file_version = 3; Summary summary = 5; } }
//   Summary        { repeated Value value = 1; }
//   Summary.Value  { string tag = 1;
//                    oneof value { float simple_value = 2; HistogramProto histo = 5; } }
//   HistogramProto { double min = 1, max = 2, num = 3, sum = 4, sum_squares = 5;
//                    repeated double bucket_limit = 6 [packed];
//                    repeated double bucket = 7 [packed]; }
//
// Encoded as libprotobuf would (proto3): a plain scalar that is zero is left
// out; a oneof member (file_version, simple_value, histo) is always written.
//
// Histograms use TensorFlow's default buckets (tensorflow/core/lib/histogram/
// histogram.cc): upper limits ±1e-12·1.1^k up to 1e20, 0, and ±DBL_MAX
// (1551 limits); bucket i counts the values v with limit[i-1] <= v <
// limit[i]. Like TensorFlow's EncodeToProto, a run of empty buckets is
// written as one empty bucket ending at the run's last limit, so a histogram
// of n values has at most 2n + 1 buckets. Non-finite values (NaN, ±inf) are
// not counted; `num` is the number of finite values.
//
// Thread safety: pure functions. Never throws except std::bad_alloc.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dtrain::obs {

// "brain.Event:2": the first event of every file names the format version.
inline constexpr std::string_view kEventFileVersion = "brain.Event:2";

struct Histogram {
  double min = 0.0;  // 0 when there are no finite values
  double max = 0.0;
  double num = 0.0;  // finite values counted
  double sum = 0.0;
  double sum_squares = 0.0;
  std::vector<double> bucket_limit;  // increasing upper limits
  std::vector<double> bucket;        // counts, one per limit
};

// TensorFlow's default upper bucket limits (see above), increasing.
const std::vector<double>& default_bucket_limits();

Histogram make_histogram(std::span<const float> values);

// Serialized Event messages (the data of one TFRecord each).
std::string encode_file_version_event(double wall_time);
std::string encode_scalar_event(std::string_view tag, float value, int64_t step, double wall_time);
std::string encode_histogram_event(std::string_view tag, const Histogram& histogram, int64_t step,
                                   double wall_time);

}  // namespace dtrain::obs
