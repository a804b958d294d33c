#include "train/dp_sgd.h"

#include <fmt/format.h>

#include <cmath>

#include "autograd/functions.h"
#include "core/error.h"
#include "core/rng.h"
#include "nn/sequential.h"
#include "privacy/dp_sgd.h"

namespace dtrain::train {

namespace {

// Distinct streams for the sampler and the noise, both from the job seed;
// with several workers each rank's noise stream is split off the step's.
constexpr uint64_t kSamplerStream = 0x5DEECE66DULL;
constexpr uint64_t kNoiseStream = 0xD1B54A32D192ED03ULL;
constexpr uint64_t kRankStream = 0x9E3779B97F4A7C15ULL;

strategy::Strategy& summing_strategy(const JobConfig& job, strategy::Strategy& strategy) {
  if (!strategy.sums_gradients()) {
    throw job.lines.error("privacy.enabled", dp_strategy_refusal(strategy.name()));
  }
  return strategy;
}

std::unique_ptr<nn::PerSampleGradients> per_sample_gradients(const JobConfig& job,
                                                             nn::Module& model) {
  auto* seq = dynamic_cast<nn::Sequential*>(&model);
  if (seq == nullptr) {
    throw job.lines.error("privacy.enabled", "DP-SGD needs a sequential model");
  }
  try {
    return std::make_unique<nn::PerSampleGradients>(*seq);
  } catch (const UsageError& e) {
    throw job.lines.error("privacy.enabled", e.what());
  }
}

}  // namespace

std::string dp_strategy_refusal(std::string_view strategy) {
  return fmt::format(
      "DP-SGD runs on a strategy that sums the workers' clipped gradients: 'local', or "
      "'allreduce' without gradient accumulation, compression, local SGD, dynamic batch sizing "
      "or elastic mode; not '{}'",
      strategy);
}

DpSgd::DpSgd(const JobConfig& job, strategy::Strategy& strategy, const data::TensorDataset& train,
             int64_t planned_steps)
    : job_(job),
      strategy_(summing_strategy(job, strategy)),
      train_(train),
      per_sample_(per_sample_gradients(job, strategy_.model())),
      sampler_(train.size(),
               train.size() > 0 ? std::min(1.0, double(job.train.batch_size) / double(train.size()))
                                : 0.0,
               job.seed ^ kSamplerStream) {
  const PrivacyConfig& p = job.privacy;
  const double q = sampler_.sample_rate();
  sigma_ = p.noise_multiplier;
  bool solved = false;
  if (sigma_ == 0.0) {
    try {
      sigma_ = privacy::solve_noise_multiplier(p.target_epsilon, p.delta, q,
                                               std::max<int64_t>(1, planned_steps));
    } catch (const UsageError& e) {
      throw job.lines.error("privacy.target_epsilon", e.what());
    }
    solved = true;
  }
  const auto workers = static_cast<int>(strategy_.world_size());
  noise_stddev_ = privacy::noise_stddev_per_worker(sigma_, p.max_grad_norm, workers);
  description_ = fmt::format(
      "DP-SGD: sample rate q = {:.6g} (expected batch {:.1f} of {}), noise multiplier {:.6g}{}, "
      "max_grad_norm {}, delta {}{}{}",
      q, sampler_.expected_batch_size(), train.size(), sigma_,
      solved
          ? fmt::format(" (solved for epsilon {} over {} steps)", p.target_epsilon, planned_steps)
          : "",
      p.max_grad_norm, p.delta,
      p.target_epsilon > 0 ? fmt::format(", budget epsilon {}", p.target_epsilon) : "",
      workers > 1
          ? fmt::format("; {} workers, each adding noise of stddev {:.6g}", workers, noise_stddev_)
          : "");
}

strategy::StepStats DpSgd::step(int64_t step) {
  const auto scale = static_cast<float>(1.0 / sampler_.expected_batch_size());
  const strategy::StepStats mine =
      strategy_.step_on_gradients([this, step] { return local_gradients(step); }, scale);
  accountant_.step(sampler_.sample_rate(), sigma_);
  return mine;
}

strategy::StepStats DpSgd::local_gradients(int64_t step) {
  const PrivacyConfig& p = job_.privacy;
  nn::Module& model = strategy_.model();
  model.train();
  const std::vector<int64_t> sampled = sampler_.batch(step);
  const auto [lo, hi] = strategy_.row_range(static_cast<int64_t>(sampled.size()));
  const std::vector<int64_t> indices(sampled.begin() + lo, sampled.begin() + hi);
  const auto n = static_cast<int64_t>(indices.size());
  strategy::StepStats stats;
  stats.samples = n;
  if (n > 0) {
    const data::TensorDataset batch = train_.subset(indices);
    Variable output = per_sample_->forward(batch.features());
    Variable loss = cross_entropy(output, batch.labels());
    // The sum of the per-sample losses: dy_i is sample i's own gradient.
    per_sample_->backward(mul_scalar(loss, static_cast<float>(n)));
    const std::vector<float> factors =
        privacy::clip_factors(per_sample_->squared_norms(), p.max_grad_norm);
    per_sample_->clipped_sum(factors);
    stats.loss_sum = static_cast<double>(loss.item()) * static_cast<double>(n);
    stats.correct = strategy::count_correct(output.data(), batch.labels());
  }
  Rng noise = noise_stream(step);
  for (Variable& param : model.parameters()) {
    privacy::add_gaussian_noise(param.dense_grad().span(), noise_stddev_, noise);
  }
  return stats;
}

Rng DpSgd::noise_stream(int64_t step) const {
  Rng of_step(job_.seed ^ (kNoiseStream * static_cast<uint64_t>(step + 1)));
  if (strategy_.world_size() == 1) return of_step;  // the one-process stream
  return Rng(of_step.next_u64() ^ (kRankStream * static_cast<uint64_t>(strategy_.rank() + 1)));
}

std::optional<std::string> DpSgd::budget_stop(int64_t step) const {
  const PrivacyConfig& p = job_.privacy;
  if (p.target_epsilon <= 0) return std::nullopt;
  if (!accountant_.would_exceed(p.target_epsilon, p.delta, sampler_.sample_rate(), sigma_, 1)) {
    return std::nullopt;
  }
  privacy::RdpAccountant next = accountant_;
  next.step(sampler_.sample_rate(), sigma_);
  return fmt::format(
      "privacy budget: the next step would spend epsilon {:.4g} > target {} at delta {}; "
      "stopping after step {}",
      next.epsilon(p.delta).balle, p.target_epsilon, p.delta, step);
}

std::map<std::string, std::string> DpSgd::checkpoint_metadata() const {
  std::map<std::string, std::string> out;
  for (auto& [key, value] : accountant_.state().to_map()) out["privacy_" + key] = value;
  return out;
}

void DpSgd::restore(const std::map<std::string, std::string>& metadata) {
  std::map<std::string, std::string> state;
  const std::string prefix = "privacy_";
  for (const auto& [key, value] : metadata) {
    if (key.starts_with(prefix)) state[key.substr(prefix.size())] = value;
  }
  accountant_.restore(privacy::RdpAccountantState::from_map(state));
}

}  // namespace dtrain::train
