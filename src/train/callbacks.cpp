#include "train/callbacks.h"

#include <fmt/format.h>
#include <fmt/ostream.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tensor/storage_pool.h"

namespace dtrain::train {

std::string format_duration(double seconds) {
  const auto total = static_cast<int64_t>(seconds + 0.5);
  const int64_t h = total / 3600, m = (total / 60) % 60, s = total % 60;
  return h > 0 ? fmt::format("{}:{:02}:{:02}", h, m, s) : fmt::format("{}:{:02}", m, s);
}

namespace {

// " 412 KB/step (x24.3)": what a worker sent per update, and the
// compression ratio; empty when nothing was counted.
std::string traffic(const StepInfo& s) {
  if (s.bytes_per_step <= 0.0 && s.compression_ratio <= 0.0) return "";
  const std::string ratio =
      s.compression_ratio > 0.0 ? fmt::format(" (x{:.1f})", s.compression_ratio) : "";
  return fmt::format(" {:.1f} KB/step{}", s.bytes_per_step / 1024.0, ratio);
}

// " consensus_distance 0.00123": the strategy's figures; empty without any.
std::string strategy_figures(const StepInfo& s) {
  std::string out;
  for (const auto& [name, value] : s.extra) out += fmt::format(" {} {:.3g}", name, value);
  return out;
}

std::string begin_line(const RunInfo& i) {
  return fmt::format(
      "{}: {} parameters, {} training / {} test samples, {} epochs x {} steps, strategy {} "
      "with {} worker{}{}",
      i.job_name, i.parameters, i.train_samples, i.test_samples, i.epochs, i.steps_per_epoch,
      i.strategy, i.workers, i.workers == 1 ? "" : "s",
      i.start_step > 0 ? fmt::format(", resumed at step {}", i.start_step) : "");
}

std::string epoch_line(const EpochInfo& e) {
  std::string extra;
  for (const ModelEval& m : e.extra) {
    extra += fmt::format(" | {} {:.2f}%", m.name, 100.0 * m.test_accuracy);
  }
  if (e.epsilon) {
    extra += fmt::format(" | epsilon {:.3f} (classic {:.3f}) at delta {:g}", *e.epsilon,
                         e.epsilon_classic.value_or(0.0), e.delta);
  }
  return fmt::format(
      "epoch {} done: train loss {:.4f} acc {:.2f}% | test loss {:.4f} acc {:.2f}%{} | {:.0f} "
      "samples/s | {}",
      e.epoch, e.train_loss, 100.0 * e.train_accuracy, e.test_loss, 100.0 * e.test_accuracy, extra,
      e.samples_per_s, format_duration(e.seconds));
}

// The JSON key of one of the strategy's figures: its name, or
// "strategy_<name>" where the name is one of the event's own keys.
std::string figure_key(const nlohmann::json& line, const std::string& name) {
  return line.contains(name) ? "strategy_" + name : name;
}

std::string summary_line(const Summary& s) {
  return fmt::format(
      "done: {} epochs, {} steps in {}: test accuracy {:.2f}% (best {:.2f}%), test loss {:.4f}, "
      "{:.0f} samples/s{}",
      s.epochs, s.steps, format_duration(s.seconds), 100.0 * s.test_accuracy,
      100.0 * s.best_test_accuracy, s.test_loss, s.samples_per_s,
      s.weights_path.empty() ? "" : ", weights " + s.weights_path);
}

}  // namespace

void ProgressBar::on_train_begin(const RunInfo& info) {
  out_ << begin_line(info) << '\n' << std::flush;
}

void ProgressBar::on_step_end(const StepInfo& s) {
  if (!s.extra.empty()) figures_ = strategy_figures(s);
  const auto now = std::chrono::steady_clock::now();
  if (s.step_in_epoch != s.steps_per_epoch && now - last_draw_ < std::chrono::milliseconds(100))
    return;
  last_draw_ = now;
  constexpr int kWidth = 24;
  const double done =
      s.steps_per_epoch > 0 ? double(s.step_in_epoch) / double(s.steps_per_epoch) : 0.0;
  const int filled = static_cast<int>(done * kWidth);
  fmt::print(
      out_, "\r\033[Kepoch {} [{}{}] {}/{} loss {:.4f} acc {:.2f}% lr {:.4g} {:.0f} samples/s{}{}",
      s.epoch, std::string(static_cast<size_t>(filled), '#'),
      std::string(static_cast<size_t>(kWidth - filled), '.'), s.step_in_epoch, s.steps_per_epoch,
      s.loss, 100.0 * s.accuracy, s.lr, s.samples_per_s, traffic(s), figures_);
  out_ << std::flush;
  line_open_ = true;
}

void ProgressBar::on_epoch_end(const EpochInfo& info) {
  out_ << (line_open_ ? "\r\033[K" : "") << epoch_line(info) << '\n' << std::flush;
  line_open_ = false;
}

void ProgressBar::on_train_end(const Summary& summary) {
  out_ << (line_open_ ? "\r\033[K" : "") << summary_line(summary) << '\n' << std::flush;
  line_open_ = false;
}

void ProgressBar::on_message(const std::string& message) {
  out_ << (line_open_ ? "\r\033[K" : "") << message << '\n' << std::flush;
  line_open_ = false;
}

void PlainProgress::on_train_begin(const RunInfo& info) {
  out_ << begin_line(info) << '\n' << std::flush;
}

void PlainProgress::on_step_end(const StepInfo& s) {
  if (log_every_steps_ <= 0 || s.step % log_every_steps_ != 0) return;
  fmt::print(
      out_,
      "epoch {} step {}/{} (global {}): loss {:.4f} acc {:.2f}% lr {:.4g} {:.0f} samples/s{}{}\n",
      s.epoch, s.step_in_epoch, s.steps_per_epoch, s.step, s.loss, 100.0 * s.accuracy, s.lr,
      s.samples_per_s, traffic(s), strategy_figures(s));
  out_ << std::flush;
}

void PlainProgress::on_epoch_end(const EpochInfo& info) {
  out_ << epoch_line(info) << '\n' << std::flush;
}
void PlainProgress::on_train_end(const Summary& summary) {
  out_ << summary_line(summary) << '\n' << std::flush;
}
void PlainProgress::on_message(const std::string& message) {
  out_ << message << '\n' << std::flush;
}

JsonLinesWriter::JsonLinesWriter(const std::string& path, int64_t log_every_steps)
    : path_(path), out_(path, std::ios::app), log_every_steps_(log_every_steps) {
  if (!out_) throw Error(fmt::format("cannot open metrics file {} for appending", path));
  // A run killed mid-line left a torn last line: end it, so that this run's
  // first event starts a line of its own (readers skip the torn one).
  std::ifstream existing(path, std::ios::binary | std::ios::ate);
  if (existing && existing.tellg() > 0) {
    existing.seekg(-1, std::ios::end);
    if (existing.get() != '\n') out_ << '\n';
  }
}

void JsonLinesWriter::write(nlohmann::json line) {
  line["time"] =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  out_ << line.dump() << '\n';
  out_.flush();
  if (!out_) throw Error(fmt::format("cannot write metrics file {}", path_));
}

void JsonLinesWriter::on_train_begin(const RunInfo& i) {
  write(nlohmann::json{{"event", "begin"},
                       {"job", i.job_name},
                       {"strategy", i.strategy},
                       {"workers", i.workers},
                       {"epochs", i.epochs},
                       {"steps_per_epoch", i.steps_per_epoch},
                       {"start_step", i.start_step},
                       {"parameters", i.parameters},
                       {"train_samples", i.train_samples},
                       {"test_samples", i.test_samples}});
}

void JsonLinesWriter::on_step_end(const StepInfo& s) {
  if (log_every_steps_ <= 0 || s.step % log_every_steps_ != 0) return;
  nlohmann::json line{{"event", "step"},
                      {"step", s.step},
                      {"epoch", s.epoch},
                      {"lr", s.lr},
                      {"loss", s.loss},
                      {"accuracy", s.accuracy},
                      {"samples_per_s", s.samples_per_s}};
  if (s.bytes_per_step > 0.0 || s.compression_ratio > 0.0) {
    line["bytes_per_step"] = s.bytes_per_step;
    line["compression_ratio"] = s.compression_ratio;
  }
  if (!s.split.empty()) line["split"] = s.split;
  for (const auto& [name, value] : s.extra) line[figure_key(line, name)] = value;
  write(std::move(line));
}

void JsonLinesWriter::on_guard(const GuardEvent& g) {
  write(nlohmann::json{{"event", "guard"},
                       {"step", g.step},
                       {"restored_step", g.restored_step},
                       {"reason", g.reason},
                       {"from", g.from},
                       {"to", g.to},
                       {"hold_steps", g.hold_steps}});
}

void JsonLinesWriter::on_epoch_end(const EpochInfo& e) {
  nlohmann::json line{{"event", "epoch"},
                      {"epoch", e.epoch},
                      {"step", e.step},
                      {"train_loss", e.train_loss},
                      {"train_accuracy", e.train_accuracy},
                      {"test_loss", e.test_loss},
                      {"test_accuracy", e.test_accuracy},
                      {"samples_per_s", e.samples_per_s},
                      {"seconds", e.seconds}};
  for (const ModelEval& m : e.extra) {
    line["test_accuracy_" + m.name] = m.test_accuracy;
    line["test_loss_" + m.name] = m.test_loss;
  }
  // The process's storage pool since start (tensor/storage_pool.h): the
  // difference between two epochs is what a steady-state epoch allocates.
  const StoragePoolStats pool = storage_pool().stats();
  line["storage_fresh_allocations"] = pool.fresh_allocations;
  line["storage_cached_allocations"] = pool.cached_allocations;
  line["storage_cached_bytes"] = pool.cached_bytes;
  if (e.epsilon) {
    line["epsilon"] = *e.epsilon;
    line["epsilon_classic"] = e.epsilon_classic.value_or(0.0);
    line["delta"] = e.delta;
  }
  write(std::move(line));
}

void JsonLinesWriter::on_train_end(const Summary& s) {
  write(nlohmann::json{{"event", "end"},
                       {"epochs", s.epochs},
                       {"steps", s.steps},
                       {"test_loss", s.test_loss},
                       {"test_accuracy", s.test_accuracy},
                       {"best_test_accuracy", s.best_test_accuracy},
                       {"samples_per_s", s.samples_per_s},
                       {"seconds", s.seconds},
                       {"weights", s.weights_path}});
}

}  // namespace dtrain::train
