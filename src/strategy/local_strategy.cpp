#include "strategy/local_strategy.h"

#include <fmt/format.h>

#include "core/error.h"
#include "strategy/registry.h"

namespace dtrain::strategy {

LocalStrategy::LocalStrategy(std::unique_ptr<nn::Module> model,
                             const OptimizerFactory& make_optimizer, LossFn loss)
    : model_(std::move(model)),
      optimizer_(make_optimizer(model_->parameters())),
      loss_(std::move(loss)) {}

StepStats LocalStrategy::train_step(const Tensor& inputs, std::span<const int64_t> targets) {
  const auto n = static_cast<int64_t>(targets.size());
  check_batch(inputs, targets, /*allow_empty=*/false);
  model_->train();
  Variable output = model_->forward(Variable(inputs));
  Variable loss = loss_(output, targets);
  optimizer_->zero_grad();
  loss.backward();
  check_finite_gradients(*model_);
  optimizer_->step();
  return {static_cast<double>(loss.item()) * static_cast<double>(n),
          count_correct(output.data(), targets), n};
}

StepStats LocalStrategy::step_on_gradients(const std::function<StepStats()>& local_gradients,
                                           float scale) {
  optimizer_->zero_grad();
  const StepStats stats = local_gradients();
  scale_gradients(*model_, scale);
  check_finite_gradients(*model_);
  optimizer_->step();
  return stats;
}

namespace {

// `local`: one model in this process; no options.
class LocalSpec final : public StrategySpec {
 public:
  std::string_view name() const override { return "local"; }
  std::string_view summary() const override { return "one model in this process"; }
  void read_options(ConfigTable& /*table*/) override {}
  void validate(const JobFacts& job, std::vector<std::string>& warnings) const override {
    refuse_several_processes(job, name());
    if (job.workers != 1) {
      throw job.where.error("distributed.workers",
                            fmt::format("strategy 'local' runs one worker, not {}", job.workers));
    }
    refuse_elastic(job, name());
    check_one_process_job(job, name(), warnings);
  }
  ProcessPlan plan(const JobFacts& /*job*/) const override { return {}; }
  bool multi_process(const JobFacts& /*job*/) const override { return false; }
  bool sums_gradients(const JobFacts& /*job*/) const override { return true; }
  std::unique_ptr<Strategy> build(const BuildContext& c) const override {
    return std::make_unique<LocalStrategy>(c.make_model(), c.make_optimizer, c.loss);
  }
  std::unique_ptr<StrategySpec> clone() const override {
    return std::make_unique<LocalSpec>(*this);
  }
};

}  // namespace

std::unique_ptr<StrategySpec> make_local_spec() { return std::make_unique<LocalSpec>(); }

}  // namespace dtrain::strategy
