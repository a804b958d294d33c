#include "train/run_fl.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/error.h"
#include "fl/flat_model.h"
#include "io/file_system.h"
#include "io/safetensors.h"
#include "obs/event_file_writer.h"
#include "tensor/state_dict.h"

namespace dtrain::train {

namespace {

// Metadata keys of a federated checkpoint's identity beyond io's job name
// and model fingerprint: a split of another seed or client count would give
// the clients other data.
constexpr const char* kSeedKey = "seed";
constexpr const char* kClientsKey = "fl_clients";

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// NaN and infinities as JSON null (what nlohmann writes for them anyway).
nlohmann::json number_or_null(double value) {
  return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr);
}

// Why `checkpoint` does not belong to this run, or nullopt.
std::optional<std::string> identity_problem(const io::Checkpoint& checkpoint,
                                            const std::map<std::string, std::string>& expected) {
  for (const auto& [key, value] : expected) {
    const auto it = checkpoint.metadata.find(key);
    if (it == checkpoint.metadata.end()) return fmt::format("carries no '{}'", key);
    if (it->second != value) {
      return fmt::format("written with {} = '{}', this job has '{}'", key, it->second, value);
    }
  }
  return std::nullopt;
}

}  // namespace

std::string format_round_line(const fl::RoundReport& r, int64_t rounds) {
  std::string line = fmt::format("round {}/{}: {} clients", r.round, rounds, r.participated.size());
  std::vector<std::string> notes;
  if (!r.dropped.empty()) notes.push_back(fmt::format("{} dropped", r.dropped.size()));
  if (!r.partial.empty()) notes.push_back(fmt::format("{} partial", r.partial.size()));
  if (r.rejected > 0) notes.push_back(fmt::format("{} rejected", r.rejected));
  if (!notes.empty()) {
    line += " (";
    for (size_t i = 0; i < notes.size(); ++i) line += (i > 0 ? ", " : "") + notes[i];
    line += ")";
  }
  if (r.failed && !r.failure.empty()) {
    line += fmt::format(", FAILED ({}: model unchanged)", r.failure);
  } else if (r.failed) {
    line += ", FAILED (fewer than fl.min_fit_clients updates: model unchanged)";
  }
  if (r.secure) line += ", secure";
  if (std::isfinite(r.train_loss)) line += fmt::format(", train loss {:.4f}", r.train_loss);
  if (r.test) line += fmt::format(", test accuracy {:.2f}%", 100.0 * r.test->accuracy);
  if (r.client_accuracy) {
    line += fmt::format(", client accuracy {:.2f}%", 100.0 * *r.client_accuracy);
  }
  if (r.epsilon) {
    line += fmt::format(", epsilon {:.4g} (classic {:.4g})", *r.epsilon,
                        r.epsilon_classic.value_or(std::nan("")));
  }
  line += fmt::format(", {:.2f} s", r.seconds);
  return line;
}

FlRunRecorder::FlRunRecorder(const JobConfig& job, const fl::ModelFactory& make_model,
                             std::ostream* out, Logger& logger)
    : job_(job),
      make_model_(make_model),
      out_(out),
      logger_(logger),
      checkpoint_dir_(io::join_path(job.output, "checkpoints")) {
  io::default_file_system().create_directories(job_.output);
  model_fingerprint_ = state_fingerprint(make_model_()->state_dict());
  const std::string path = io::join_path(job_.output, "metrics.jsonl");
  metrics_ = std::make_unique<std::ofstream>(path, std::ios::app);
  if (!*metrics_) throw Error(fmt::format("cannot open metrics file {} for appending", path));
  // A run killed mid-line left a torn last line: end it (readers skip it).
  std::ifstream existing(path, std::ios::binary | std::ios::ate);
  if (existing && existing.tellg() > 0) {
    existing.seekg(-1, std::ios::end);
    if (existing.get() != '\n') *metrics_ << '\n';
  }
  if (job_.train.tensorboard) {
    tensorboard_ = std::make_unique<obs::EventFileWriter>(io::join_path(job_.output, "tensorboard"),
                                                          obs::unix_seconds_now());
  }
}

FlRunRecorder::~FlRunRecorder() = default;

io::CheckpointDirectory FlRunRecorder::directory() {
  return io::CheckpointDirectory(checkpoint_dir_, std::max<int64_t>(1, job_.train.keep_checkpoints),
                                 io::default_file_system(), logger_);
}

std::optional<fl::ServerState> FlRunRecorder::load_latest() {
  io::CheckpointDirectory dir = directory();
  const bool had_checkpoints = !dir.steps().empty();
  io::ResumeCheck check;
  // The model's fingerprint is checked below: the checkpoint holds the flat
  // global weights, not the model's state_dict.
  check.identity = {job_.name, ""};
  check.max_step = job_.fl.rounds;
  check.force_identity = job_.force_resume;
  const io::CheckpointValidator base = io::resume_validator(check, logger_);
  const std::map<std::string, std::string> expected{
      {std::string(io::kModelFingerprintKey), model_fingerprint_},
      {kSeedKey, std::to_string(job_.seed)},
      {kClientsKey, std::to_string(job_.fl.clients)}};
  const int64_t model_size = fl::flat_size(*make_model_());
  io::CheckpointLoadOptions options;
  options.validate = [&](const std::string& path,
                         const io::Checkpoint& c) -> std::optional<std::string> {
    if (auto problem = base(path, c)) return problem;
    if (auto problem = identity_problem(c, expected)) {
      if (!job_.force_resume) return problem;
      logger_.warn("{}: {}; resuming anyway (force_resume)", path, *problem);
    }
    try {
      fl::from_checkpoint(c, model_size);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::nullopt;
  };
  std::optional<io::CheckpointDirectory::Found> found = dir.load_latest(options);
  if (!found) {
    if (had_checkpoints && out_ != nullptr) {
      *out_ << fmt::format("no valid checkpoint in {} (refused ones are in {}/{}): starting afresh",
                           checkpoint_dir_, checkpoint_dir_, io::kRejectedFolder)
            << '\n'
            << std::flush;
    }
    return std::nullopt;
  }
  fl::ServerState state = fl::from_checkpoint(found->checkpoint, model_size);
  if (out_ != nullptr) {
    *out_ << fmt::format("resuming from {} (round {})", found->path, state.round) << '\n'
          << std::flush;
  }
  return state;
}

void FlRunRecorder::set_aside_checkpoints() {
  io::CheckpointDirectory dir = directory();
  if (const auto moved = dir.set_aside("earlier-run")) {
    logger_.warn(
        "starting afresh (no resume): moved {} checkpoint(s) of an earlier run (rounds {} "
        "to {}) to {}",
        moved->steps.size(), moved->steps.front(), moved->steps.back(), moved->folder);
  }
}

std::optional<fl::ServerState> FlRunRecorder::resume_or_set_aside() {
  if (job_.resume) return load_latest();
  set_aside_checkpoints();
  return std::nullopt;
}

FlRunStart fl_run_start(const FlJob& fl_job, const std::optional<fl::ServerState>& resume,
                        const std::string& mode) {
  FlRunStart start;
  start.mode = mode;
  start.start_round = resume ? resume->round : 0;
  start.parameters = fl_job.model_size;
  start.train_samples = fl_job.data.train.size();
  start.test_samples = fl_job.data.test.size();
  return start;
}

void FlRunRecorder::write_event(const std::string& json_line) {
  *metrics_ << json_line << '\n';
  metrics_->flush();
  if (!*metrics_) {
    throw Error(
        fmt::format("cannot write metrics file {}", io::join_path(job_.output, "metrics.jsonl")));
  }
}

namespace {

// The test accuracies of rounds 1 .. up_to as metrics.jsonl last recorded
// them (a resumed run's lines replace the earlier run's); lines that do not
// parse are skipped, as obs's reader skips a torn line.
std::map<int64_t, double> recorded_accuracies(const std::string& path, int64_t up_to) {
  std::map<int64_t, double> accuracy;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json object = nlohmann::json::parse(line, nullptr, false);
    if (!object.is_object() || object.value("event", "") != "round") continue;
    const auto round = object.find("round");
    const auto test = object.find("test_accuracy");
    if (round == object.end() || !round->is_number_integer()) continue;
    const int64_t r = round->get<int64_t>();
    if (r > up_to) continue;
    if (test != object.end() && test->is_number()) {
      accuracy[r] = test->get<double>();
    } else {
      accuracy.erase(r);
    }
  }
  return accuracy;
}

}  // namespace

void FlRunRecorder::begin(const FlRunStart& start) {
  started_ = unix_now();
  last_round_ = start.start_round;
  if (start.start_round > 0 && job_.fl.target_accuracy > 0.0) {
    // A resumed run: the round that first reached the target may be behind.
    for (const auto& [round, accuracy] :
         recorded_accuracies(io::join_path(job_.output, "metrics.jsonl"), start.start_round)) {
      if (accuracy >= job_.fl.target_accuracy) {
        reached_round_ = round;
        reached_accuracy_ = accuracy;
        break;
      }
    }
  }
  const fl::FlConfig& f = job_.fl;
  write_event(nlohmann::json{
      {"event", "begin"},
      {"job", job_.name},
      {"strategy", "fl-" + f.algorithm},
      {"mode", start.mode},
      {"clients", f.clients},
      {"clients_per_round", f.clients_per_round()},
      {"rounds", f.rounds},
      {"local_epochs", f.local_epochs},
      {"local_batch", f.local_batch},
      {"server_optimizer", f.server_optimizer.type},
      {"partition", job_.data.partition.empty() ? std::string("iid") : job_.data.partition},
      {"start_round", start.start_round},
      {"parameters", start.parameters},
      {"train_samples", start.train_samples},
      {"test_samples", start.test_samples},
      {"time",
       started_}}.dump());
  if (out_ != nullptr) {
    *out_ << fmt::format(
                 "{}: {} {} clients, {} per round, {} rounds (E = {}, B = {}), {} parameters{}",
                 job_.name, f.algorithm, f.clients, f.clients_per_round(), f.rounds, f.local_epochs,
                 f.local_batch == 0 ? std::string("all") : std::to_string(f.local_batch),
                 start.parameters,
                 start.start_round > 0 ? fmt::format(", resumed after round {}", start.start_round)
                                       : std::string())
          << '\n'
          << std::flush;
  }
}

void FlRunRecorder::on_round(const fl::RoundReport& r) {
  last_round_ = r.round;
  if (r.test) {
    last_test_ = r.test;
    if (!reached_round_ && job_.fl.target_accuracy > 0.0 &&
        r.test->accuracy >= job_.fl.target_accuracy) {
      reached_round_ = r.round;
      reached_accuracy_ = r.test->accuracy;
    }
  }
  if (out_ != nullptr) *out_ << format_round_line(r, job_.fl.rounds) << '\n' << std::flush;
  const double now = unix_now();
  nlohmann::json line{{"event", "round"},
                      {"round", r.round},
                      {"sampled", r.sampled.size()},
                      {"participated", r.participated.size()},
                      {"dropped", r.dropped.size()},
                      {"partial", r.partial.size()},
                      {"rejected", r.rejected},
                      {"failed", r.failed},
                      {"train_loss", number_or_null(r.train_loss)},
                      {"bytes_up", r.bytes_up},
                      {"bytes_down", r.bytes_down},
                      {"seconds", r.seconds},
                      {"time", now}};
  if (r.test) {
    line["test_accuracy"] = number_or_null(r.test->accuracy);
    line["test_loss"] = number_or_null(r.test->loss);
  }
  if (r.client_accuracy) line["client_accuracy"] = number_or_null(*r.client_accuracy);
  if (r.secure) line["secure"] = true;
  if (!r.failure.empty()) line["failure"] = r.failure;
  if (r.epsilon) line["epsilon"] = number_or_null(*r.epsilon);
  if (r.epsilon_classic) line["epsilon_classic"] = number_or_null(*r.epsilon_classic);
  write_event(line.dump());
  if (tensorboard_) {
    obs::EventFileWriter& w = *tensorboard_;
    const auto scalar = [&](const char* tag, double value) {
      w.add_scalar(tag, static_cast<float>(value), r.round, now);
    };
    if (std::isfinite(r.train_loss)) scalar("fl/train_loss", r.train_loss);
    scalar("fl/participated", static_cast<double>(r.participated.size()));
    scalar("fl/dropped", static_cast<double>(r.dropped.size()));
    scalar("fl/partial", static_cast<double>(r.partial.size()));
    scalar("fl/rejected", static_cast<double>(r.rejected));
    scalar("fl/bytes_up", static_cast<double>(r.bytes_up));
    scalar("fl/bytes_down", static_cast<double>(r.bytes_down));
    scalar("fl/round_seconds", r.seconds);
    if (r.test) {
      scalar("test/loss", r.test->loss);
      scalar("test/accuracy", r.test->accuracy);
    }
    if (r.client_accuracy) scalar("fl/client_accuracy", *r.client_accuracy);
    w.flush();
  }
}

void FlRunRecorder::privacy_stop(const std::string& message) {
  if (out_ != nullptr) *out_ << message << '\n' << std::flush;
  write_event(
      nlohmann::json{{"event", "privacy_stop"}, {"message", message}, {"time", unix_now()}}.dump());
}

void FlRunRecorder::checkpoint(const fl::ServerState& state) {
  io::Checkpoint c = fl::to_checkpoint(state);
  c.metadata[std::string(io::kJobNameKey)] = job_.name;
  c.metadata[std::string(io::kModelFingerprintKey)] = model_fingerprint_;
  c.metadata[kSeedKey] = std::to_string(job_.seed);
  c.metadata[kClientsKey] = std::to_string(job_.fl.clients);
  directory().write(c);
  last_checkpoint_round_ = state.round;
}

FlRunSummary FlRunRecorder::finish(const fl::ServerState& state,
                                   std::optional<fl::Evaluation> test) {
  FlRunSummary s;
  s.rounds = state.round;
  s.test = test ? test : last_test_;
  s.reached_round = reached_round_;
  s.seconds = started_ > 0.0 ? unix_now() - started_ : 0.0;
  std::unique_ptr<nn::Module> model = make_model_();
  fl::load_flat(*model, state.weights);
  s.weights_path = io::join_path(job_.output, "model.safetensors");
  io::save_safetensors(model->state_dict(), s.weights_path);
  const double target = job_.fl.target_accuracy;
  if (s.reached_round) {
    s.line = fmt::format("reached {:.2f}% at round {} (target {:.2f}%)", 100.0 * reached_accuracy_,
                         *s.reached_round, 100.0 * target);
    if (s.test && s.rounds != *s.reached_round) {
      s.line += fmt::format("; final test accuracy {:.2f}% after {} rounds",
                            100.0 * s.test->accuracy, s.rounds);
    }
  } else if (s.test) {
    s.line = fmt::format("final test accuracy {:.2f}% after {} rounds", 100.0 * s.test->accuracy,
                         s.rounds);
    if (target > 0.0) s.line += fmt::format(" (target {:.2f}% not reached)", 100.0 * target);
  } else {
    s.line = fmt::format("{} rounds done (no test evaluation)", s.rounds);
  }
  s.line += fmt::format(", {:.1f} s; weights in {}", s.seconds, s.weights_path);
  nlohmann::json end{{"event", "end"},       {"rounds", s.rounds},
                     {"seconds", s.seconds}, {"weights", s.weights_path},
                     {"time", unix_now()},   {"rejected_updates", state.rejected_updates}};
  if (s.test) {
    end["test_accuracy"] = number_or_null(s.test->accuracy);
    end["test_loss"] = number_or_null(s.test->loss);
  }
  if (s.reached_round) end["reached_round"] = *s.reached_round;
  write_event(end.dump());
  if (out_ != nullptr) *out_ << s.line << '\n' << std::flush;
  return s;
}

FlRunSummary FlRunRecorder::conclude(const fl::ServerState& state,
                                     std::optional<fl::Evaluation> test,
                                     const std::string& budget_stop) {
  if (!budget_stop.empty()) privacy_stop(budget_stop);
  if (job_.fl.checkpoint_every > 0 && last_checkpoint_round_ != state.round && state.round > 0) {
    checkpoint(state);
  }
  return finish(state, std::move(test));
}

int run_fl(const JobConfig& job, const FlRunOptions& options) {
  Logger& logger = options.logger != nullptr ? *options.logger : Logger::stderr_logger();
  const FlJob fl_job = load_fl_job(job);
  FlRunRecorder recorder(job, fl_job.make_model, options.out, logger);
  std::optional<fl::ServerState> resume = recorder.resume_or_set_aside();
  recorder.begin(fl_run_start(fl_job, resume, "simulation"));

  if (resume && (resume->round >= job.fl.rounds || recorder.reached_round())) {
    // Nothing left to run (all rounds done, or the target reached, which
    // ends the simulation): the final model is the checkpoint's.
    std::optional<fl::Evaluation> test;
    if (fl_job.evaluate) test = fl_job.evaluate(resume->weights);
    recorder.finish(*resume, test);
    return 0;
  }
  fl::SimulationOptions sim;
  sim.config = job.fl;
  sim.seed = job.seed;
  sim.client_optimizer = job.optimizer;
  sim.upload = fl_upload_options(job);
  sim.train = &fl_job.data.train;
  sim.parts = fl_job.parts;
  sim.make_model = fl_job.make_model;
  sim.evaluate = fl_job.evaluate;
  sim.on_round = [&recorder](const fl::RoundReport& r) { recorder.on_round(r); };
  sim.on_checkpoint = [&recorder](const fl::ServerState& s) { recorder.checkpoint(s); };
  sim.resume = std::move(resume);
  const fl::SimulationResult result = fl::run_simulation(sim);
  recorder.conclude(result.state, result.last_test, result.budget_stop);
  return 0;
}

}  // namespace dtrain::train
