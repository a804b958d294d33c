// FlServer: a round's secure aggregation (fl/fl_server_impl.h; the phases
// of privacy/secagg.h, their deadlines in fl/fl_secagg.h): the setup sent
// to the sampled clients, the answers of each phase, and the phases run in
// turn until the unmasked sum gives the round's mean.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "core/error.h"
#include "fl/fl_server_impl.h"
#include "fl/private_update.h"

namespace dtrain::fl {

void FlServer::Impl::open_secagg(OpenRound& open, const std::vector<int64_t>& sampled,
                                 int64_t round, size_t model_size, RoundReport& report) {
  // The simulation's configuration (graph seed from (seed, round)), with
  // a session number of its own as SecAgg's round: a repeated attempt's
  // messages never pass for the next one's.
  privacy::SecAggConfig config =
      secagg_config(options_.config, static_cast<int64_t>(sampled.size()), options_.seed, round,
                    static_cast<uint64_t>(model_size));
  config.round = ++secagg_sessions_;
  open.secagg.emplace(config);
  FlSecAggSetup setup;
  setup.round = round;
  setup.session = config.round;
  setup.clients = config.clients;
  setup.threshold = config.threshold;
  setup.graph = static_cast<uint8_t>(config.graph);
  setup.degree = config.degree;
  setup.graph_seed = config.graph_seed;
  setup.clip = config.clip;
  setup.vector_length = config.vector_length;
  setup.min_survivors = config.min_survivors;
  setup.mean_samples = options_.mean_samples;
  for (size_t u = 0; u < sampled.size(); ++u) {  // sampled is ascending
    open.secagg->ids.push_back(sampled[u]);
    open.secagg->index[sampled[u]] = static_cast<uint32_t>(u);
    setup.index = static_cast<uint32_t>(u);
    std::vector<std::byte> bytes = encode_secagg_setup(setup);
    report.bytes_down += comm::wire::kHeaderBytes + bytes.size();
    send(clients_.at(sampled[u]).identity, sampled[u], std::move(bytes));
  }
}

void FlServer::Impl::handle_secagg(const comm::wire::Frame& frame, const FlSecAggPayload& answer,
                                   OpenRound* open) {
  const int64_t client = answer.client;
  const char* phase = privacy::secagg_phase_name(answer.phase);
  if (!from_client(frame, client, "a secagg answer", open)) return;
  if (open == nullptr || !open->secagg || answer.round != open->aggregator.round() ||
      answer.session != open->secagg->session) {
    logger_.info("fl server: ignored client {}'s secagg answer of phase {} for round {}: late",
                 client, phase, answer.round);
    return;
  }
  SecAggRound& sa = *open->secagg;
  if (answer.phase != sa.phase || sa.outstanding.count(client) == 0) {
    if (sa.index.count(client) == 0) {
      reject(fmt::format("client {}, round {}, secagg phase {}: not sampled in this round", client,
                         answer.round, phase),
             open);
    } else {
      logger_.info(
          "fl server: ignored client {}'s secagg answer of phase {} in round {} (phase {} is open)",
          client, phase, answer.round, privacy::secagg_phase_name(sa.phase));
    }
    return;
  }
  sa.outstanding.erase(client);
  open->bytes_up += comm::wire::kHeaderBytes + frame.body.size();
  const uint32_t u = sa.index.at(client);
  try {
    switch (answer.phase) {
      case 0:
        sa.server.receive_advertise(u, answer.message);
        break;
      case 1:
        sa.server.receive_share_keys(u, answer.message);
        break;
      case 2:
        if (answer.samples < 1 || !std::isfinite(answer.loss)) {
          throw DataError(
              fmt::format("samples {} and loss {}: expected samples >= 1 and a "
                          "finite loss",
                          answer.samples, answer.loss));
        }
        sa.server.receive_masked_input(u, answer.message);
        sa.meta[client] = {answer.samples, answer.loss};
        break;
      default:
        sa.server.receive_unmasking(u, answer.message);
        break;
    }
  } catch (const DataError& e) {
    reject(fmt::format("client {}, round {}, secagg phase {}: {}", client, answer.round, phase,
                       e.what()),
           open);
    return;
  }
  sa.answered.push_back(client);
}

bool FlServer::Impl::run_secagg(OpenRound& open, Clock::time_point started, milliseconds timeout,
                                RoundReport& report, const std::stop_token& stop) {
  SecAggRound& sa = *open.secagg;
  std::map<uint32_t, privacy::SecAggMessage> outgoing;
  double share = 0;
  for (int phase = 0; phase < 4; ++phase) {
    sa.phase = phase;
    sa.answered.clear();
    sa.outstanding.clear();
    if (phase == 0) {
      sa.outstanding.insert(sa.ids.begin(), sa.ids.end());
    } else {
      for (auto& [u, message] : outgoing) {
        const int64_t id = sa.ids.at(u);
        FlSecAggPayload b;
        b.round = open.aggregator.round();
        b.session = sa.session;
        b.phase = static_cast<uint8_t>(phase);
        b.message = std::move(message);
        std::vector<std::byte> payload = encode_secagg_broadcast(b);
        report.bytes_down += comm::wire::kHeaderBytes + payload.size();
        send(clients_.at(id).identity, id, std::move(payload));
        sa.outstanding.insert(id);
      }
    }
    const std::set<int64_t> asked = sa.outstanding;
    share += options_.secagg.phase_shares[static_cast<size_t>(phase)];
    const Deadline deadline(started +
                            milliseconds(static_cast<int64_t>(std::ceil(share * timeout.count()))));
    while (!sa.outstanding.empty() && !deadline.expired()) {
      if (stop.stop_requested()) return false;
      serve_once(deadline, &open);
    }
    for (int64_t id : sa.outstanding) clients_.at(id).missed = true;
    if (!sa.outstanding.empty()) {
      logger_.warn("fl server: round {}: secagg phase {}: no answer by its deadline from [{}]",
                   open.aggregator.round(), privacy::secagg_phase_name(phase),
                   fmt::join(sa.outstanding, ", "));
    }
    try {
      switch (phase) {
        case 0:
          outgoing = sa.server.finish_advertise();
          break;
        case 1:
          outgoing = sa.server.finish_share_keys();
          break;
        case 2:
          outgoing = sa.server.finish_masked_input();
          break;
        default: {
          privacy::SecAggResult result = sa.server.finish();
          for (uint32_t u : result.included) sa.included.push_back(sa.ids.at(u));
          std::sort(sa.included.begin(), sa.included.end());
          double weight = 0;
          for (int64_t id : sa.included) {
            weight += client_weight(options_.config, sa.meta.at(id).samples, options_.mean_samples);
          }
          Rng noise = server_noise_rng(options_.seed, open.aggregator.round());
          sa.mean_delta =
              secagg_output(result.sum, options_.config, static_cast<int64_t>(sa.ids.size()),
                            static_cast<int64_t>(sa.included.size()), weight, noise);
          break;
        }
      }
    } catch (const CommError& e) {
      std::vector<int64_t> answered = sa.answered;
      std::sort(answered.begin(), answered.end());
      sa.failure = fmt::format(
          "secure aggregation failed in phase {}: {} of {} client(s) answered [{}], threshold {} "
          "({})",
          privacy::secagg_phase_name(phase), answered.size(), asked.size(),
          fmt::join(answered, ", "), sa.threshold, e.what());
      return true;
    }
  }
  return true;
}

}  // namespace dtrain::fl
