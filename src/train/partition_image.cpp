#include "train/partition_image.h"

#include <fmt/format.h>

#include "data/partition.h"
#include "io/file_system.h"

namespace dtrain::train {

obs::CountMatrix partition_counts(const Datasets& data, const PartitionRequest& request) {
  const data::PartitionOptions p = partition_options(request);
  const int64_t classes = data.train.num_classes();
  const auto parts = data::partition(data.train.labels(), classes, p);
  const auto histogram = data::label_histogram(parts, data.train.labels(), classes);
  obs::CountMatrix m;
  for (size_t w = 0; w < histogram.size(); ++w) {
    m.row_labels.push_back(fmt::format("worker {}", w));
    m.counts.insert(m.counts.end(), histogram[w].begin(), histogram[w].end());
  }
  for (int64_t c = 0; c < classes; ++c) m.column_labels.push_back(std::to_string(c));
  return m;
}

obs::ImageSize write_partition_image(const JobConfig& job, const Datasets& data,
                                     const PartitionRequest& request, const std::string& path) {
  obs::HeatMapOptions options;
  options.title = fmt::format("{}: {} training samples in {} parts ({})", job.name,
                              data.train.size(), request.parts, request.kind);
  return obs::draw_heat_map(io::default_file_system(), path, partition_counts(data, request),
                            options);
}

}  // namespace dtrain::train
