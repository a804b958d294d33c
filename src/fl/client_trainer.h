// ClientTrainer: one client's local training in a round (McMahan et al.
// 2017, ClientUpdate; Li et al. 2020 for the proximal term). It loads the
// global weights into its own model replica, runs E epochs over the client's
// samples in batches of B (B = 0: all of them at once) with the job's
// optimizer created fresh, and returns w_k - w:
//
//   loss_k(w) = cross_entropy(w) + mu/2 ||w - w_global||^2   (fedprox, mu > 0)
//
// The proximal term is added to the gradients (mu (w - w_global)) before
// each optimizer step, not through autograd. Each epoch visits the client's
// indices in an order drawn from `rng`; the last batch of an epoch may be
// short. `rng` also seeds the model's Dropout layers, so that a client's
// result does not depend on what the trainer ran before. `max_steps` (>= 1;
// default all) stops early: a straggler's partial work, marked partial in the
// update. The update's loss is the mean of the steps' batch losses. A client
// without samples trains nothing and returns samples 0 and a zero delta (an
// aggregator refuses it).
//
// A trainer owns one model (built by the factory) and is reused for many
// clients, one at a time: memory is one model per thread, not per client.
// Thread safety: one thread per trainer; several trainers may share the
// dataset (read only). Errors: UsageError, naming the client and round, for
// weights of the wrong size, an index outside the dataset or a LocalTraining
// out of range (epochs < 1, batch < 0, max_steps < 1, mu < 0). Never blocks.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <span>

#include "core/rng.h"
#include "data/dataset.h"
#include "fl/update.h"
#include "nn/module.h"
#include "optim/optimizer_config.h"

namespace dtrain::fl {

struct LocalTraining {
  int64_t epochs = 1;
  int64_t batch = 10;  // 0: the whole local data
  double proximal_mu = 0.0;
  optim::OptimizerConfig optimizer;
  int64_t max_steps = std::numeric_limits<int64_t>::max();
};

// Local steps a client with `samples` samples takes: epochs * ceil(samples / batch)
// (batch 0: epochs).
int64_t local_steps(int64_t samples, const LocalTraining& training);

using ModelFactory = std::function<std::unique_ptr<nn::Module>()>;

class ClientTrainer {
 public:
  ClientTrainer(const ModelFactory& make_model, const data::TensorDataset& train);

  // The update of client `client` for `round` (samples = indices.size()).
  ClientUpdate train(int64_t client, int64_t round, std::span<const float> global,
                     std::span<const int64_t> indices, const LocalTraining& training, Rng& rng);

  // How many of the samples at `indices` the model with `weights` classifies
  // correctly (argmax of its output; evaluation mode, no graph): a client's
  // own evaluation of the global model (FlConfig::client_eval).
  int64_t count_correct(std::span<const float> weights, std::span<const int64_t> indices);

  nn::Module& model() { return *model_; }

 private:
  std::unique_ptr<nn::Module> model_;
  const data::TensorDataset& train_;
};

}  // namespace dtrain::fl
