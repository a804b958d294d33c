#include "train/tensorboard_callback.h"

#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "io/file_system.h"
#include "nn/linear.h"
#include "obs/tensorboard_event.h"
#include "obs/tfrecord.h"
#include "testing/fault_fs.h"
#include "train/job_file.h"

namespace dtrain::train {
namespace {

// The events (TFRecord data) of the one event file directly in `folder`.
std::vector<std::string> events_in(const std::string& folder) {
  io::FileSystem& fs = io::default_file_system();
  std::vector<std::string> files;
  for (const std::string& name : fs.list_directory(folder)) {
    if (name.rfind("events.out.tfevents.", 0) == 0) files.push_back(name);
  }
  EXPECT_EQ(files.size(), 1u) << folder;
  if (files.size() != 1) return {};
  const std::string blob = fs.read_file(io::join_path(folder, files[0]), io::kUnlimitedBytes);
  std::vector<std::string> events;
  for (size_t at = 0; at < blob.size();) {
    uint64_t length = 0;
    std::memcpy(&length, blob.data() + at, 8);  // little-endian host
    std::string framed;
    obs::append_tfrecord(framed, blob.substr(at + 12, length));
    EXPECT_EQ(blob.substr(at, framed.size()), framed) << "record at " << at;
    events.push_back(blob.substr(at + 12, length));
    at += framed.size();
  }
  return events;
}

double wall_time_of(const std::string& event) {
  EXPECT_EQ(event[0], '\x09');  // field 1, double
  uint64_t bits = 0;
  std::memcpy(&bits, event.data() + 1, 8);
  return std::bit_cast<double>(bits);
}

struct Scalar {
  std::string tag;
  double value;
  int64_t step;
};

// `events` are the file-version event then exactly these scalars, in order.
void expect_scalars(const std::vector<std::string>& events, const std::vector<Scalar>& want) {
  ASSERT_EQ(events.size(), want.size() + 1);
  EXPECT_EQ(events[0], obs::encode_file_version_event(wall_time_of(events[0])));
  for (size_t i = 0; i < want.size(); ++i) {
    const std::string& e = events[i + 1];
    EXPECT_EQ(e, obs::encode_scalar_event(want[i].tag, static_cast<float>(want[i].value),
                                          want[i].step, wall_time_of(e)))
        << "scalar " << i << ": " << want[i].tag << " at step " << want[i].step;
  }
}

StepInfo step_info(int64_t step) {
  StepInfo s;
  s.step = step;
  s.loss = 1.0 / double(step);
  s.accuracy = 0.1 * double(step);
  s.lr = 0.05;
  s.samples_per_s = 1000.0 + double(step);
  s.bytes_per_step = step == 2 ? 4096.0 : 0.0;
  s.compression_ratio = step == 2 ? 8.0 : 0.0;
  s.split = {30, 10};
  return s;
}

TEST(TensorBoardCallback, TheChiefWritesItsScalarsAtTheLoggedSteps) {
  testing::TempDir dir;
  Rng rng(1);
  nn::Linear model(3, 2, rng);
  {
    TensorBoardCallback tb({dir.file("tb"), 0, true, 2, 0, true}, model);
    for (int64_t step = 1; step <= 4; ++step) tb.on_step_end(step_info(step));
    EpochInfo e;
    e.step = 4;
    e.test_loss = 0.25;
    e.test_accuracy = 0.875;
    e.samples_per_s = 900.0;
    tb.on_epoch_end(e);
    GuardEvent g;
    g.step = 3;
    tb.on_guard(g);
    tb.on_train_end(Summary{});
  }
  expect_scalars(events_in(dir.file("tb")), {{"train/loss", 0.5, 2},
                                             {"train/accuracy", 0.2, 2},
                                             {"train/lr", 0.05, 2},
                                             {"train/samples_per_s", 1002.0, 2},
                                             {"comm/bytes_per_step", 4096.0, 2},
                                             {"comm/compression_ratio", 8.0, 2},
                                             {"batch/share_worker0", 0.75, 2},
                                             {"batch/share_worker1", 0.25, 2},
                                             {"train/loss", 0.25, 4},
                                             {"train/accuracy", 0.4, 4},
                                             {"train/lr", 0.05, 4},
                                             {"train/samples_per_s", 1004.0, 4},
                                             {"batch/share_worker0", 0.75, 4},
                                             {"batch/share_worker1", 0.25, 4},
                                             {"test/loss", 0.25, 4},
                                             {"test/accuracy", 0.875, 4},
                                             {"epoch/samples_per_s", 900.0, 4},
                                             {"guard/rescues", 1.0, 3}});
  expect_scalars(events_in(dir.file("tb/worker-0")),
                 {{"throughput/samples_per_s", 1002.0, 2},
                  {"throughput/own_samples_per_s", 1002.0 * 0.75, 2},
                  {"throughput/samples_per_s", 1004.0, 4},
                  {"throughput/own_samples_per_s", 1004.0 * 0.75, 4}});
  EXPECT_EQ(io::default_file_system().list_directory(dir.file("tb")).size(), 2u)
      << "no histograms folder when they are off";
}

TEST(TensorBoardCallback, TheStrategysFiguresAndExtraModelsGetTagsOfTheirOwn) {
  testing::TempDir dir;
  Rng rng(1);
  nn::Linear model(3, 2, rng);
  {
    TensorBoardCallback tb({dir.file("tb"), 0, true, 2, 0, false}, model);
    StepInfo s;
    s.step = 2;
    s.loss = 0.5;
    s.extra = {{"consensus_distance", 0.125}};
    tb.on_step_end(s);
    EpochInfo e;
    e.step = 2;
    e.extra = {ModelEval{"worker0", 0.75, 0.625}};
    tb.on_epoch_end(e);
  }
  expect_scalars(events_in(dir.file("tb")), {{"train/loss", 0.5, 2},
                                             {"train/accuracy", 0.0, 2},
                                             {"train/lr", 0.0, 2},
                                             {"train/samples_per_s", 0.0, 2},
                                             {"strategy/consensus_distance", 0.125, 2},
                                             {"test/loss", 0.0, 2},
                                             {"test/accuracy", 0.0, 2},
                                             {"epoch/samples_per_s", 0.0, 2},
                                             {"test/loss_worker0", 0.75, 2},
                                             {"test/accuracy_worker0", 0.625, 2}});
}

TEST(TensorBoardCallback, AnotherWorkerWritesOnlyItsOwnFolder) {
  testing::TempDir dir;
  Rng rng(1);
  nn::Linear model(3, 2, rng);
  {
    TensorBoardCallback tb({dir.file("tb"), 1, false, 2, 2, false}, model);
    for (int64_t step = 1; step <= 2; ++step) tb.on_step_end(step_info(step));
    tb.on_epoch_end(EpochInfo{});
  }
  EXPECT_EQ(io::default_file_system().list_directory(dir.file("tb")),
            std::vector<std::string>{"worker-1"});
  expect_scalars(events_in(dir.file("tb/worker-1")),
                 {{"throughput/samples_per_s", 1002.0, 2},
                  {"throughput/own_samples_per_s", 1002.0 * 0.25, 2}});
}

TEST(TensorBoardCallback, HistogramsOfWeightsAndGradients) {
  testing::TempDir dir;
  Rng rng(2);
  nn::Linear model(4, 3, rng);
  std::vector<float> grad(12);
  for (size_t i = 0; i < grad.size(); ++i) grad[i] = 0.5f - 0.1f * float(i);
  Variable weight = model.weight();  // the weight gets a gradient, the bias none
  weight.set_grad(Tensor::from_span(grad, Shape({3, 4})));
  {
    TensorBoardCallback tb({dir.file("tb"), 0, true, 0, 3, false}, model);
    for (int64_t step = 1; step <= 6; ++step) tb.on_step_end(step_info(step));
  }
  const std::vector<std::string> events = events_in(dir.file("tb/histograms"));
  ASSERT_EQ(events.size(), 1u + 2 * 3);  // steps 3 and 6: weight, grad of weight, bias
  for (int64_t step : {3, 6}) {
    const size_t at = step == 3 ? 1 : 4;
    EXPECT_EQ(events[at], obs::encode_histogram_event(
                              "weights/weight", obs::make_histogram(model.weight().data().span()),
                              step, wall_time_of(events[at])));
    EXPECT_EQ(events[at + 1], obs::encode_histogram_event("grads/weight", obs::make_histogram(grad),
                                                          step, wall_time_of(events[at + 1])));
    EXPECT_EQ(events[at + 2], obs::encode_histogram_event(
                                  "weights/bias", obs::make_histogram(model.bias().data().span()),
                                  step, wall_time_of(events[at + 2])));
  }
  // log_every_steps 0: no scalars, only the version events.
  EXPECT_EQ(events_in(dir.file("tb")).size(), 1u);
}

TEST(TensorBoardCallback, AnUnwritableFolderIsNamed) {
  testing::TempDir dir;
  io::default_file_system().write_file(dir.file("file"), "x");
  Rng rng(1);
  nn::Linear model(3, 2, rng);
  try {
    TensorBoardCallback tb({dir.file("file/tb"), 0, true, 1, 0, false}, model);
    ADD_FAILURE() << "expected a FileError";
  } catch (const io::FileError& e) {
    EXPECT_EQ(std::string(e.what()),
              "create directory " + dir.file("file/tb") + ": Not a directory");
  }
}

TEST(TensorBoardJobKeys, DefaultsAndChecks) {
  const std::string job =
      "[model]\ninput_shape = [2]\n[[model.layers]]\ntype = \"linear\"\nname = \"fc\"\n"
      "out_features = 2\n[train]\nepochs = 1\n";
  const JobConfig plain = parse_job(job, "job.toml", {}).job;
  EXPECT_TRUE(plain.train.tensorboard);
  EXPECT_EQ(plain.train.histogram_every_steps, 0);
  const JobConfig set =
      parse_job(job, "job.toml", {"train.tensorboard=false", "train.histogram_every_steps=50"}).job;
  EXPECT_FALSE(set.train.tensorboard);
  EXPECT_EQ(set.train.histogram_every_steps, 50);
  try {
    // The job file's integers are checked as they are read (io/toml_table.h).
    parse_job(job + "histogram_every_steps = -5\n", "job.toml", {});
    ADD_FAILURE() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "job.toml:9: 'train.histogram_every_steps': must not be negative, got -5");
  }
}

}  // namespace
}  // namespace dtrain::train
