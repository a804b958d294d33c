#include "strategy/mirrored_strategy.h"

#include <fmt/format.h>

#include <algorithm>

#include "autograd/functions.h"
#include "core/error.h"
#include "strategy/registry.h"

namespace dtrain::strategy {

MirroredStrategy::MirroredStrategy(std::unique_ptr<nn::Module> model,
                                   const ModelFactory& make_replica, int64_t replicas,
                                   const OptimizerFactory& make_optimizer, LossFn loss)
    : loss_(std::move(loss)), threads_(replicas), stats_(static_cast<size_t>(replicas)) {
  if (replicas < 1)
    throw UsageError(fmt::format("mirrored: need at least 1 replica, got {}", replicas));
  models_.push_back(std::move(model));
  for (int64_t r = 1; r < replicas; ++r) models_.push_back(make_replica());
  for (const auto& m : models_) {
    params_.push_back(m->parameters());
    std::vector<Tensor> buffers;
    for (auto& [name, buffer] : m->named_buffers()) buffers.push_back(buffer);
    buffers_.push_back(std::move(buffers));
    if (params_.back().size() != params_[0].size() ||
        buffers_.back().size() != buffers_[0].size()) {
      throw UsageError("mirrored: the replica factory built a model with other parameters");
    }
  }
  for (const Variable& p : params_[0]) total_elements_ += p.numel();
  optimizer_ = make_optimizer(params_[0]);
  sync_replicas();
}

void MirroredStrategy::sync_replicas() {
  const StateDict primary = models_[0]->state_dict();
  threads_.run([&](int64_t r) {
    if (r != 0) models_[static_cast<size_t>(r)]->load_state_dict(primary, true);
  });
}

void MirroredStrategy::copy_from_primary(int64_t replica) {
  if (replica == 0) return;
  const auto r = static_cast<size_t>(replica);
  for (size_t i = 0; i < params_[0].size(); ++i)
    params_[r][i].data().copy_from(params_[0][i].data());
  for (size_t i = 0; i < buffers_[0].size(); ++i) buffers_[r][i].copy_from(buffers_[0][i]);
}

void MirroredStrategy::sum_gradients(int64_t thread) {
  // Thread t adds the range [begin, end) of the flattened parameters.
  const int64_t count = threads_.count();
  const int64_t begin = total_elements_ * thread / count;
  const int64_t end = total_elements_ * (thread + 1) / count;
  int64_t offset = 0;
  for (size_t i = 0; i < params_[0].size(); ++i) {
    const int64_t n = params_[0][i].numel();
    const int64_t lo = std::max(begin, offset) - offset;
    const int64_t hi = std::min(end, offset + n) - offset;
    offset += n;
    if (lo >= hi || !params_[0][i].grad().defined()) continue;
    float* dst = params_[0][i].grad().data();
    for (size_t r = 1; r < models_.size(); ++r) {
      const Tensor& g = params_[r][i].grad();
      if (!g.defined()) continue;
      const float* src = g.data();
      for (int64_t k = lo; k < hi; ++k) dst[k] += src[k];
    }
  }
}

StepStats MirroredStrategy::train_step(const Tensor& inputs, std::span<const int64_t> targets) {
  const auto n = static_cast<int64_t>(targets.size());
  check_batch(inputs, targets, /*allow_empty=*/false);
  const int64_t replicas = static_cast<int64_t>(models_.size());
  threads_.run([&](int64_t r) {
    const int64_t begin = n * r / replicas;
    const int64_t rows = n * (r + 1) / replicas - begin;
    nn::Module& model = *models_[static_cast<size_t>(r)];
    model.train();
    model.zero_grad();
    stats_[static_cast<size_t>(r)] = {};
    if (rows == 0) return;
    const auto slice_targets =
        targets.subspan(static_cast<size_t>(begin), static_cast<size_t>(rows));
    Variable output = model.forward(Variable(inputs.narrow(begin, rows)));
    Variable loss = loss_(output, slice_targets);
    mul_scalar(loss, static_cast<float>(rows) / static_cast<float>(n)).backward();
    stats_[static_cast<size_t>(r)] = {static_cast<double>(loss.item()) * static_cast<double>(rows),
                                      count_correct(output.data(), slice_targets), rows};
    // Row-sparse gradients become dense here, each replica on its own thread.
    for (Variable& p : params_[static_cast<size_t>(r)]) {
      if (p.sparse_grad() != nullptr) p.dense_grad();
    }
  });
  // Replica 0 must own a dense gradient for every parameter that any replica
  // has one for, before the threads add into it.
  for (size_t i = 0; i < params_[0].size(); ++i) {
    if (params_[0][i].grad().defined()) continue;
    for (size_t r = 1; r < models_.size(); ++r) {
      if (params_[r][i].grad().defined()) {
        params_[0][i].set_grad(Tensor::zeros(params_[0][i].shape()));
        break;
      }
    }
  }
  threads_.run([this](int64_t t) { sum_gradients(t); });
  check_finite_gradients(*models_[0]);
  optimizer_->step();
  threads_.run([this](int64_t r) { copy_from_primary(r); });
  StepStats total;
  for (const StepStats& s : stats_) total += s;
  return total;
}

namespace {

// `mirrored`: distributed.workers replicas on threads of this process; no
// options of its own.
class MirroredSpec final : public StrategySpec {
 public:
  std::string_view name() const override { return "mirrored"; }
  std::string_view summary() const override {
    return "replicas on threads of one process (--workers N replicas)";
  }
  void read_options(ConfigTable& /*table*/) override {}
  void validate(const JobFacts& job, std::vector<std::string>& warnings) const override {
    refuse_several_processes(job, name());
    refuse_elastic(job, name());
    check_one_process_job(job, name(), warnings);
  }
  ProcessPlan plan(const JobFacts& /*job*/) const override { return {}; }
  bool multi_process(const JobFacts& /*job*/) const override { return false; }
  std::unique_ptr<Strategy> build(const BuildContext& c) const override {
    return std::make_unique<MirroredStrategy>(c.make_model(), c.make_model, workers(c.facts),
                                              c.make_optimizer, c.loss);
  }
  std::unique_ptr<StrategySpec> clone() const override {
    return std::make_unique<MirroredSpec>(*this);
  }
};

}  // namespace

std::unique_ptr<StrategySpec> make_mirrored_spec() { return std::make_unique<MirroredSpec>(); }

}  // namespace dtrain::strategy
