// Shared by the DP-SGD trainer tests: the job (600 blobs of 8 features, 3
// classes, batch 32: q = 32/600, 19 steps per epoch), its data, a callback
// recording epochs and messages, and file contents to compare.
// Thread safety: a Recorder belongs to one trainer.
#pragma once

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "data/synthetic.h"
#include "train/callbacks.h"
#include "train/job_config.h"
#include "train_test_util.h"

namespace dtrain::train::test_util {

// `dropout`: a dropout layer (p 0.1) before the last linear; without it W
// workers' rows see the same model as one process's.
inline JobConfig dp_job(const std::string& output, bool dropout = true, int64_t hidden = 16) {
  JobConfig job;
  job.name = "dp-blobs";
  job.seed = 5;
  job.output = output;
  job.model.input_shape = {8};
  job.model.layers = {layer("linear", "fc1", hidden), layer("relu", "relu")};
  if (dropout) {
    LayerConfig drop = layer("dropout", "drop");
    drop.p = 0.1f;
    job.model.layers.push_back(drop);
  }
  job.model.layers.push_back(layer("linear", "fc2", 3));
  job.optimizer.type = "sgd";
  job.optimizer.lr = 0.5f;
  job.optimizer.momentum = 0.5f;
  job.train.epochs = 4;
  job.train.batch_size = 32;
  job.train.log_every_steps = 5;
  job.train.eval_batch_size = 100;
  job.privacy.enabled = true;
  job.privacy.noise_multiplier = 1.0;
  job.privacy.max_grad_norm = 1.0;
  job.privacy.delta = 1e-5;
  return job;
}

// Part 1: the 600 training samples; part 2: 200 test samples.
inline data::TensorDataset dp_blobs(int part) {
  data::BlobsOptions o;
  o.samples = 800;
  o.features = 8;
  o.num_classes = 3;
  o.seed = 11;
  const data::TensorDataset all = data::make_gaussian_blobs(o);
  return part == 1 ? all.slice(0, 600) : all.slice(600, 200);
}

struct DpRecorder : Callback {
  std::vector<EpochInfo> epochs;
  std::vector<std::string> messages;
  void on_epoch_end(const EpochInfo& e) override { epochs.push_back(e); }
  void on_message(const std::string& m) override { messages.push_back(m); }
  bool said(const std::string& part) const {
    for (const std::string& m : messages) {
      if (m.find(part) != std::string::npos) return true;
    }
    return false;
  }
};

inline std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace dtrain::train::test_util
