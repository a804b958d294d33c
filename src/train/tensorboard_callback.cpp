#include "train/tensorboard_callback.h"

#include <fmt/format.h>

#include <numeric>

#include "io/file_system.h"

namespace dtrain::train {

TensorBoardCallback::TensorBoardCallback(const TensorBoardOptions& options, nn::Module& model)
    : options_(options), model_(model) {
  const double now = obs::unix_seconds_now();
  if (options_.chief) {
    scalars_ = std::make_unique<obs::EventFileWriter>(options_.folder, now);
    if (options_.histogram_every_steps > 0) {
      histograms_ =
          std::make_unique<obs::EventFileWriter>(io::join_path(options_.folder, "histograms"), now);
    }
  }
  worker_ = std::make_unique<obs::EventFileWriter>(
      io::join_path(options_.folder, fmt::format("worker-{}", options_.worker)), now);
}

void TensorBoardCallback::on_step_end(const StepInfo& s) {
  const double now = obs::unix_seconds_now();
  const int64_t every = options_.log_every_steps;
  if (every > 0 && s.step % every == 0) {
    const auto scalar = [&](obs::EventFileWriter& w, const std::string& tag, double value) {
      w.add_scalar(tag, static_cast<float>(value), s.step, now);
    };
    if (scalars_) {
      scalar(*scalars_, "train/loss", s.loss);
      scalar(*scalars_, "train/accuracy", s.accuracy);
      scalar(*scalars_, "train/lr", s.lr);
      scalar(*scalars_, "train/samples_per_s", s.samples_per_s);
      if (s.bytes_per_step > 0.0) scalar(*scalars_, "comm/bytes_per_step", s.bytes_per_step);
      if (s.compression_ratio > 0.0) {
        scalar(*scalars_, "comm/compression_ratio", s.compression_ratio);
      }
      for (const auto& [name, value] : s.extra) scalar(*scalars_, "strategy/" + name, value);
    }
    const int64_t rows = std::accumulate(s.split.begin(), s.split.end(), int64_t{0});
    if (scalars_ && options_.batch_shares && rows > 0) {
      for (size_t r = 0; r < s.split.size(); ++r) {
        scalar(*scalars_, fmt::format("batch/share_worker{}", r),
               double(s.split[r]) / double(rows));
      }
    }
    scalar(*worker_, "throughput/samples_per_s", s.samples_per_s);
    const auto me = static_cast<size_t>(options_.worker);
    if (rows > 0 && me < s.split.size()) {
      scalar(*worker_, "throughput/own_samples_per_s",
             s.samples_per_s * double(s.split[me]) / double(rows));
    }
    if (scalars_) scalars_->flush();
    worker_->flush();
  }
  if (histograms_ && s.step % options_.histogram_every_steps == 0) write_histograms(s.step, now);
}

void TensorBoardCallback::write_histograms(int64_t step, double wall_time) {
  for (const auto& [name, p] : model_.named_parameters()) {
    histograms_->add_histogram("weights/" + name, p.data().span(), step, wall_time);
    if (p.grad().defined()) {
      histograms_->add_histogram("grads/" + name, p.grad().span(), step, wall_time);
    }
  }
  histograms_->flush();
}

void TensorBoardCallback::on_epoch_end(const EpochInfo& e) {
  if (!scalars_) return;
  const double now = obs::unix_seconds_now();
  scalars_->add_scalar("test/loss", static_cast<float>(e.test_loss), e.step, now);
  scalars_->add_scalar("test/accuracy", static_cast<float>(e.test_accuracy), e.step, now);
  scalars_->add_scalar("epoch/samples_per_s", static_cast<float>(e.samples_per_s), e.step, now);
  for (const ModelEval& m : e.extra) {
    scalars_->add_scalar("test/loss_" + m.name, static_cast<float>(m.test_loss), e.step, now);
    scalars_->add_scalar("test/accuracy_" + m.name, static_cast<float>(m.test_accuracy), e.step,
                         now);
  }
  scalars_->flush();
}

void TensorBoardCallback::on_guard(const GuardEvent& g) {
  if (!scalars_) return;
  ++rescues_;
  scalars_->add_scalar("guard/rescues", static_cast<float>(rescues_), g.step,
                       obs::unix_seconds_now());
  scalars_->flush();
}

void TensorBoardCallback::on_train_end(const Summary&) {
  if (scalars_) scalars_->flush();
  if (histograms_) histograms_->flush();
  worker_->flush();
}

}  // namespace dtrain::train
