#include "train/run_fl_deploy.h"

#include <fmt/format.h>

#include <optional>

#include "core/error.h"
#include "fl/fl_client.h"
#include "fl/fl_server.h"
#include "fl/flat_model.h"
#include "fl/upload_codec.h"
#include "train/fl_job.h"
#include "train/run_fl.h"

namespace dtrain::train {

namespace {

// client_weight()'s n_bar (fl/private_update.h): the mean samples a client
// holds, public like every n_k; the simulation's value (training samples
// over fl.clients), so that both compute the same estimator.
double fl_mean_samples(const JobConfig& job, const FlJob& fl_job) {
  return static_cast<double>(fl_job.data.train.size()) / static_cast<double>(job.fl.clients);
}

}  // namespace

int run_fl_server(const JobConfig& job, const comm::JobAuth& auth,
                  const FlServerRunOptions& options) {
  Logger& logger = options.logger != nullptr ? *options.logger : Logger::stderr_logger();
  FlJob fl_job = load_fl_job(job);
  FlRunRecorder recorder(job, fl_job.make_model, options.out, logger);
  std::optional<fl::ServerState> resume = recorder.resume_or_set_aside();
  const FlRunStart start = fl_run_start(fl_job, resume, "server");
  fl::FlServerOptions o;
  o.config = job.fl;
  if (!options.server.empty()) o.config.server = options.server;
  o.seed = job.seed;
  o.job_name = job.name;
  if (resume) {
    o.resume = std::move(resume);
  } else {
    o.initial_weights = fl::flatten(*fl_job.make_model());
  }
  o.evaluate = fl_job.evaluate;
  o.upload = fl_upload_options(job);
  if (o.upload.method != compress::Method::kNone) o.layouts = fl::layouts_of(*fl_job.make_model());
  o.mean_samples = fl_mean_samples(job, fl_job);
  o.on_round = [&](const fl::RoundReport& report) { recorder.on_round(report); };
  o.on_checkpoint = [&](const fl::ServerState& state) {
    recorder.checkpoint(state);
    if (options.after_round) options.after_round(state.round);
  };
  // A client training a round stays silent until it answers.
  o.client_timeout =
      std::chrono::milliseconds(static_cast<int64_t>(job.fl.round_timeout_s * 1000.0) + 5000);
  fl::FlServer server(std::move(o), auth, logger);
  if (options.on_listening) options.on_listening(server.endpoint());
  recorder.begin(start);
  const fl::FlServerResult result = server.run();
  const fl::FlServerStats stats = server.stats();
  if (stats.rejected_updates > 0 || stats.dropped_frames > 0) {
    logger.warn("fl server: {} update(s) or join(s) rejected, {} frame(s) dropped",
                stats.rejected_updates, stats.dropped_frames);
  }
  recorder.conclude(result.state, result.last_test, result.budget_stop);
  return 0;
}

int run_fl_client(const JobConfig& job, const comm::JobAuth& auth,
                  const FlClientRunOptions& options) {
  Logger& logger = options.logger != nullptr ? *options.logger : Logger::stderr_logger();
  if (options.client < 0 || options.client >= job.fl.clients) {
    throw ConfigError(fmt::format("--client-id {} is outside [0, {}) (fl.clients of {})",
                                  options.client, job.fl.clients, job.source));
  }
  FlJob fl_job = load_fl_job(job);
  fl::FlClientOptions o;
  o.client = options.client;
  o.server = options.server.empty() ? job.fl.server : options.server;
  o.seed = job.seed;
  o.make_model = fl_job.make_model;
  o.train = &fl_job.data.train;
  o.indices = fl_job.parts[static_cast<size_t>(options.client)];
  o.optimizer = job.optimizer;
  o.upload = fl_upload_options(job);
  o.heartbeat_interval = options.heartbeat_interval;
  o.server_timeout = options.server_timeout;
  o.on_task = options.on_task;
  o.partial_work = job.fl.accepts_partial_work();
  o.fl = job.fl;
  fl::FlClient client(std::move(o), auth, logger);
  const fl::FlClientResult result = client.run();
  logger.info("fl client {}: {} round(s) trained; the job ended after round {}", options.client,
              result.rounds_trained, result.rounds_done);
  return 0;
}

}  // namespace dtrain::train
