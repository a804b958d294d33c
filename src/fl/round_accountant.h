// RoundAccountant: DP-FedAvg's privacy accounting per federated round, the
// one the simulation (fl/simulation.h) and the deployed server
// (fl/fl_server.h) share, so both spend, report, stop and resume alike.
//
// It wraps a privacy::RdpAccountant (Mironov 2017; Mironov, Talwar and Zhang
// 2019) stepped once per APPLIED round at (q, sigma = fl.dp_noise_multiplier);
// a round or an attempt that released nothing is not stepped. The caller
// passes the round's sampling rate q: the simulation's is m / K
// (FlConfig::dp_sampling_rate); the deployed server samples from the clients
// connected at the time and passes sampling_rate(sampled, pool), which is
// never below m / K (docs/federated.md, "Privacy in federated rounds").
// Before each round (or attempt) budget_stop() says whether one more step at
// that q would bring Balle et al.'s epsilon at fl.dp_delta above
// fl.dp_target_epsilon, with the message the run prints. record() puts the
// spent epsilon (Balle's and the classic conversion) into the round's report
// and the accountant's state into the ServerState that is checkpointed, so a
// resumed run continues epsilon bit for bit.
//
// Without DP (config.dp() false) it is inert: budget_stop() is nullopt,
// step() and record() do nothing.
// Ownership: a value; it copies what it needs from the config. Thread
// safety: none (the round loop's thread). Errors: the constructor throws
// UsageError naming `owner` when a DP run resumes after round r > 0 from a
// state without an accountant (its rounds' privacy cost is unknown), and
// what privacy::RdpAccountant throws for a malformed state. Nothing blocks.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "fl/fl_config.h"
#include "fl/server_state.h"
#include "fl/simulation.h"
#include "privacy/rdp_accountant.h"

namespace dtrain::fl {

// The accountant's sampling rate of a round that sampled `sampled` clients
// out of a pool of `pool` (>= sampled, > 0) candidates: sampled / pool.
double sampling_rate(int64_t sampled, int64_t pool);

class RoundAccountant {
 public:
  // `resumed_round`: rounds already done (0: a fresh run); `saved`: the
  // resume state's ServerState::accountant (ignored when resumed_round is 0).
  RoundAccountant(const FlConfig& config, int64_t resumed_round,
                  const std::map<std::string, std::string>& saved, std::string_view owner);

  bool enabled() const { return enabled_; }
  // The budget stop's message when one more round at sampling rate q would
  // exceed fl.dp_target_epsilon, else nullopt (also without DP or target).
  std::optional<std::string> budget_stop(int64_t round, double q) const;
  // Accounts one applied round at sampling rate q.
  void step(double q);
  // The epsilon spent so far into `report`, the accountant's state into `state`.
  void record(RoundReport& report, ServerState& state) const;

 private:
  bool enabled_ = false;
  double sigma_ = 0.0;
  double delta_ = 0.0;
  double target_epsilon_ = 0.0;
  privacy::RdpAccountant accountant_;
};

}  // namespace dtrain::fl
