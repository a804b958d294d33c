#include "train/datasets.h"

#include <fmt/format.h>

#include "core/error.h"
#include "data/csv.h"
#include "data/ctr.h"
#include "data/idx.h"
#include "data/partition.h"
#include "data/synthetic.h"

namespace dtrain::train {

Datasets load_datasets(const JobConfig& job) {
  const DataConfig& d = job.data;
  Datasets out;
  if (d.dataset == "mnist") {
    data::IdxOptions o;
    o.normalize = d.normalize;
    o.limit = d.train_limit;
    out.train = data::load_mnist(d.path, data::MnistSplit::kTrain, o);
    o.limit = d.test_limit;
    out.test = data::load_mnist(d.path, data::MnistSplit::kTest, o);
  } else if (d.dataset == "csv") {
    data::CsvOptions o;
    o.label_column = d.label_column;
    o.limit = d.train_limit;
    out.train = data::read_csv(d.path, o);
    if (!d.test_path.empty()) {
      o.limit = d.test_limit;
      o.num_classes = out.train.num_classes();
      out.test = data::read_csv(d.test_path, o);
    }
  } else if (d.dataset == "ctr") {
    data::CtrData ctr = data::make_ctr(d.ctr);
    out.train = std::move(ctr.train.samples);
    out.test = std::move(ctr.test.samples);
    out.test_click_probability = std::move(ctr.test.click_probability);
  } else {
    data::BlobsOptions o;
    o.samples = d.synthetic_samples;
    o.features = d.synthetic_features;
    o.num_classes = d.synthetic_classes;
    o.seed = job.seed;
    const data::TensorDataset all = data::make_gaussian_blobs(o);
    const int64_t test = all.size() / 5;
    out.train = all.slice(0, all.size() - test);
    out.test = all.slice(all.size() - test, test);
  }
  return out;
}

data::PartitionOptions partition_options(const PartitionRequest& request) {
  data::PartitionOptions p;
  p.kind = request.kind;
  p.workers = request.parts;
  p.seed = request.seed;
  p.classes_per_worker = request.classes_per_worker;
  p.alpha = request.alpha;
  p.quantity_sigma = request.quantity_sigma;
  p.shards_per_worker = request.shards_per_worker;
  return p;
}

std::string partition_table(const JobConfig& job, const Datasets& data,
                            const PartitionRequest& request) {
  const data::PartitionOptions p = partition_options(request);
  const auto parts = data::partition(data.train.labels(), data.train.num_classes(), p);
  return fmt::format("{} training samples of {} in {} parts ({}):\n", data.train.size(), job.name,
                     request.parts, request.kind) +
         data::format_histogram(
             data::label_histogram(parts, data.train.labels(), data.train.num_classes()));
}

void check_input_shape(const JobConfig& job, const data::TensorDataset& data) {
  const Shape expected(job.model.input_shape.begin(), job.model.input_shape.end());
  if (data.sample_shape() != expected) {
    throw job.lines.error("model.input_shape",
                          fmt::format("the model expects samples of shape {}, the data set has {}",
                                      shape_str(expected), shape_str(data.sample_shape())));
  }
}

}  // namespace dtrain::train
