#include "fl/client_trainer.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "autograd/functions.h"
#include "core/error.h"
#include "fl/flat_model.h"
#include "nn/dropout.h"
#include "nn/optimizer.h"

namespace dtrain::fl {

namespace {

// Adds mu (w - w_global) to every parameter's gradient (FedProx, Li et al.
// 2020, the gradient of mu/2 ||w - w_global||^2). Parameters come first in
// the flat order, so parameter i's global values start where the ones before
// it end. A parameter without a gradient this step gets the proximal term
// alone.
void add_proximal_term(const std::vector<Variable>& parameters, std::span<const float> global,
                       float mu) {
  size_t at = 0;
  for (Variable p : parameters) {
    const Tensor& w = p.data();
    const auto n = static_cast<size_t>(w.numel());
    const float* g0 = global.data() + at;
    if (p.has_grad()) {
      const Tensor& grad = p.dense_grad();
      float* g = grad.data();
      const float* x = w.data();
      for (size_t i = 0; i < n; ++i) g[i] += mu * (x[i] - g0[i]);
    } else {
      Tensor grad = Tensor::empty(w.shape());
      float* g = grad.data();
      const float* x = w.data();
      for (size_t i = 0; i < n; ++i) g[i] = mu * (x[i] - g0[i]);
      p.set_grad(std::move(grad));
    }
    at += n;
  }
}

// Seeds every Dropout layer of `module` from the client's generator: a
// dropout Rng is state outside the flat weights, and a trainer reused for
// another client would otherwise carry it over (results would then depend on
// which thread trained which clients).
void reseed_dropout(nn::Module& module, Rng& rng) {
  if (auto* dropout = dynamic_cast<nn::Dropout*>(&module)) dropout->rng().seed_with(rng.next_u64());
  for (const auto& [name, child] : module.named_children()) reseed_dropout(*child, rng);
}

// Fisher-Yates with the client's generator.
void shuffle(std::vector<int64_t>& order, Rng& rng) {
  for (size_t i = order.size(); i > 1; --i) {
    const auto j = static_cast<size_t>(rng.below(i));
    std::swap(order[i - 1], order[j]);
  }
}

}  // namespace

int64_t local_steps(int64_t samples, const LocalTraining& training) {
  if (samples <= 0) return 0;
  if (training.batch <= 0) return training.epochs;
  return training.epochs * ((samples + training.batch - 1) / training.batch);
}

ClientTrainer::ClientTrainer(const ModelFactory& make_model, const data::TensorDataset& train)
    : model_(make_model()), train_(train) {
  if (model_ == nullptr) throw UsageError("ClientTrainer: the model factory returned no model");
}

ClientUpdate ClientTrainer::train(int64_t client, int64_t round, std::span<const float> global,
                                  std::span<const int64_t> indices, const LocalTraining& training,
                                  Rng& rng) {
  ClientUpdate update;
  update.client = client;
  update.round = round;
  update.samples = static_cast<int64_t>(indices.size());
  const int64_t size = flat_size(*model_);
  if (static_cast<int64_t>(global.size()) != size) {
    throw UsageError(fmt::format("client {}, round {}: global weights have {} values, the model {}",
                                 client, round, global.size(), size));
  }
  if (training.epochs < 1 || training.batch < 0 || training.max_steps < 1 ||
      training.proximal_mu < 0.0) {
    throw UsageError(fmt::format(
        "client {}, round {}: local training of {} epochs, batch {}, max_steps {}, mu {}", client,
        round, training.epochs, training.batch, training.max_steps, training.proximal_mu));
  }
  for (int64_t index : indices) {
    if (index < 0 || index >= train_.size()) {
      throw UsageError(fmt::format("client {}, round {}: sample index {} outside the dataset of {}",
                                   client, round, index, train_.size()));
    }
  }
  if (indices.empty()) {
    update.delta.assign(static_cast<size_t>(size), 0.0f);
    return update;  // samples 0: the aggregator refuses it
  }

  load_flat(*model_, global);
  model_->train();
  reseed_dropout(*model_, rng);
  const std::vector<Variable> parameters = model_->parameters();
  const std::unique_ptr<nn::Optimizer> optimizer =
      nn::make_optimizer(training.optimizer, parameters);
  const auto mu = static_cast<float>(training.proximal_mu);
  const int64_t full = local_steps(update.samples, training);
  const int64_t limit = std::min(full, training.max_steps);
  const int64_t batch = training.batch == 0 ? update.samples : training.batch;

  std::vector<int64_t> order(indices.begin(), indices.end());
  double loss_sum = 0.0;
  int64_t steps = 0;
  for (int64_t epoch = 0; epoch < training.epochs && steps < limit; ++epoch) {
    shuffle(order, rng);
    for (int64_t start = 0; start < update.samples && steps < limit; start += batch) {
      const int64_t rows = std::min(batch, update.samples - start);
      const data::TensorDataset part = train_.subset(std::span<const int64_t>(order).subspan(
          static_cast<size_t>(start), static_cast<size_t>(rows)));
      optimizer->zero_grad();
      Variable output = model_->forward(Variable(part.features()));
      Variable loss = cross_entropy(output, part.labels());
      loss.backward();
      if (mu > 0.0f) add_proximal_term(parameters, global, mu);
      optimizer->step();
      loss_sum += static_cast<double>(loss.item());
      ++steps;
    }
  }
  update.steps = steps;
  update.partial = steps < full;
  update.loss = loss_sum / static_cast<double>(steps);
  update.delta = flatten(*model_);
  for (size_t i = 0; i < update.delta.size(); ++i) update.delta[i] -= global[i];
  return update;
}

int64_t ClientTrainer::count_correct(std::span<const float> weights,
                                     std::span<const int64_t> indices) {
  load_flat(*model_, weights);
  model_->eval();
  const NoGradGuard no_grad;
  constexpr int64_t kChunk = 256;
  int64_t correct = 0;
  const auto total = static_cast<int64_t>(indices.size());
  for (int64_t start = 0; start < total; start += kChunk) {
    const int64_t rows = std::min(kChunk, total - start);
    const data::TensorDataset part =
        train_.subset(indices.subspan(static_cast<size_t>(start), static_cast<size_t>(rows)));
    const Tensor output = model_->forward(Variable(part.features())).data();
    const int64_t classes = output.numel() / rows;
    const float* row = output.data();
    for (int64_t i = 0; i < rows; ++i, row += classes) {
      const auto best = std::max_element(row, row + classes) - row;
      if (best == part.labels()[static_cast<size_t>(i)]) ++correct;
    }
  }
  model_->train();
  return correct;
}

}  // namespace dtrain::fl
