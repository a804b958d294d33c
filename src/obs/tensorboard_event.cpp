#include "obs/tensorboard_event.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "obs/proto_encoder.h"

namespace dtrain::obs {

namespace {

std::vector<double> make_default_bucket_limits() {
  std::vector<double> positive;
  for (double v = 1.0e-12; v < 1.0e20; v *= 1.1) positive.push_back(v);
  positive.push_back(DBL_MAX);
  std::vector<double> limits;
  limits.reserve(2 * positive.size() + 1);
  for (auto it = positive.rbegin(); it != positive.rend(); ++it) limits.push_back(-*it);
  limits.push_back(0.0);
  limits.insert(limits.end(), positive.begin(), positive.end());
  return limits;
}

// An Event with its wall time and step (left out when zero, as proto3 does).
ProtoEncoder event_header(int64_t step, double wall_time) {
  ProtoEncoder event;
  if (wall_time != 0.0) event.double_field(1, wall_time);
  if (step != 0) event.int64_field(2, step);
  return event;
}

std::string summary_event(const ProtoEncoder& value, int64_t step, double wall_time) {
  ProtoEncoder summary;
  summary.message(1, value);
  ProtoEncoder event = event_header(step, wall_time);
  event.message(5, summary);
  return event.take();
}

void optional_double(ProtoEncoder& out, int field, double value) {
  if (value != 0.0) out.double_field(field, value);
}

}  // namespace

const std::vector<double>& default_bucket_limits() {
  static const std::vector<double> limits = make_default_bucket_limits();
  return limits;
}

Histogram make_histogram(std::span<const float> values) {
  const std::vector<double>& limits = default_bucket_limits();
  std::vector<double> counts(limits.size(), 0.0);
  Histogram h;
  h.min = DBL_MAX;
  h.max = -DBL_MAX;
  for (const float f : values) {
    if (!std::isfinite(f)) continue;
    const double v = f;
    h.min = std::min(h.min, v);
    h.max = std::max(h.max, v);
    h.num += 1.0;
    h.sum += v;
    h.sum_squares += v * v;
    // Finite floats are below DBL_MAX, so the index is in range.
    counts[static_cast<size_t>(std::upper_bound(limits.begin(), limits.end(), v) -
                               limits.begin())] += 1.0;
  }
  if (h.num == 0.0) h.min = h.max = 0.0;
  // Runs of empty buckets collapse into one (TensorFlow's EncodeToProto).
  for (size_t i = 0; i < limits.size();) {
    double end = limits[i];
    const double count = counts[i];
    ++i;
    if (count <= 0.0) {
      while (i < limits.size() && counts[i] <= 0.0) end = limits[i++];
    }
    h.bucket_limit.push_back(end);
    h.bucket.push_back(count);
  }
  return h;
}

std::string encode_file_version_event(double wall_time) {
  ProtoEncoder event = event_header(0, wall_time);
  event.bytes_field(3, kEventFileVersion);
  return event.take();
}

std::string encode_scalar_event(std::string_view tag, float value, int64_t step, double wall_time) {
  ProtoEncoder v;
  v.bytes_field(1, tag);
  v.float_field(2, value);
  return summary_event(v, step, wall_time);
}

std::string encode_histogram_event(std::string_view tag, const Histogram& histogram, int64_t step,
                                   double wall_time) {
  ProtoEncoder histo;
  optional_double(histo, 1, histogram.min);
  optional_double(histo, 2, histogram.max);
  optional_double(histo, 3, histogram.num);
  optional_double(histo, 4, histogram.sum);
  optional_double(histo, 5, histogram.sum_squares);
  if (!histogram.bucket_limit.empty()) histo.packed_doubles(6, histogram.bucket_limit);
  if (!histogram.bucket.empty()) histo.packed_doubles(7, histogram.bucket);
  ProtoEncoder v;
  v.bytes_field(1, tag);
  v.message(5, histo);
  return summary_event(v, step, wall_time);
}

}  // namespace dtrain::obs
