// Test hooks of the fault-tolerance tests (cli only; each reads the process's
// environment as given to it):
// - DTRAIN_TEST_KILL_AT_STEP=SLOT:STEP[,SLOT:STEP...]: the first process of
//   launch slot SLOT (DTRAIN_RESTART_COUNT absent or 0; the slot is
//   DTRAIN_RANK: a ps job's server s is slot s, its worker w slot S + w)
//   SIGKILLs itself once STEP is done: a trainer after its global step STEP,
//   a ps server once its version reaches STEP (the first entry naming a slot
//   counts). Replacements never do, so a test sees one failure per named
//   slot per run.
// - DTRAIN_TEST_COMPUTE_SECONDS=RANK:FIXED:PER_ROW[,RANK:FIXED:PER_ROW...]
//   (RANK a worker index or "all"; a RANK entry beats the all one): that
//   worker's compute time is modelled as FIXED + PER_ROW x rows seconds
//   (a modelled compute timer, no sleep), so that a test of dynamic batch
//   sizing sees known step times whatever the machine's load.
// - DTRAIN_TEST_STOP_AT_STEP=SLOT:STEP: as DTRAIN_TEST_KILL_AT_STEP, but the
//   process SIGSTOPs itself (a frozen worker: the test SIGCONTs it, or not).
// - DTRAIN_TEST_JOIN_GATE=FIFO: a replacement worker (DTRAIN_RESTART_COUNT >
//   0) reads one line from that FIFO before it joins, so that a test chooses
//   when it joins (the test's own deadline bounds that wait).
// - DTRAIN_TEST_STEP_MS=MS: every worker sleeps MS milliseconds after each
//   step, so that a short job lasts while a test watches it (the dashboard's
//   browser test).
// - DTRAIN_TEST_AGENT_STOP_BEFORE_CLAIM=1: a per-host agent (cli/etcd_agent.h)
//   logs "agent: stopped before claiming a node index" and SIGSTOPs itself
//   before its first etcd call, so that a test kills it in that phase.
// - DTRAIN_TEST_AGENT_BLIND=1: a per-host agent in restart mode
//   (cli/etcd_restart_agent.h) does not read the group while its workers run
//   (its lease is still watched), so that a test sees it learn a change only
//   from its one read after they ended.
// Errors: ConfigError naming the variable for a malformed value.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "comm/rendezvous/launch_env.h"
#include "core/log.h"
#include "train/callbacks.h"
#include "train/run_job.h"

namespace dtrain::cli {

// VARIABLE=SLOT:N[,SLOT:N...] seen by a process of `slot`: N of the first
// entry naming `slot`; nullopt when the variable is unset, names no such
// entry, or this process is a replacement (DTRAIN_RESTART_COUNT > 0).
// ConfigError naming the variable when an entry is malformed or N is below
// `min_value` (`unit` names N in the message: "STEP", "ROUND").
std::optional<int64_t> test_slot_value(const std::map<std::string, std::string>& env,
                                       const std::string& variable, int64_t slot,
                                       const std::string& unit, int64_t min_value);

// The step at which the process of `slot` is to kill itself; nullopt when
// DTRAIN_TEST_KILL_AT_STEP is unset, names another slot, or this process is a
// replacement.
std::optional<int64_t> test_kill_step(const std::map<std::string, std::string>& env, int slot);

// The step at which the process of `slot` is to SIGSTOP itself (as
// test_kill_step, from DTRAIN_TEST_STOP_AT_STEP).
std::optional<int64_t> test_stop_step(const std::map<std::string, std::string>& env, int slot);

// A trainer callback that SIGKILLs this process after test_kill_step's step
// and SIGSTOPs it after test_stop_step's; nullptr when there is neither.
std::unique_ptr<train::Callback> test_kill_switch(const std::map<std::string, std::string>& env,
                                                  int slot);

// The modelled compute time DTRAIN_TEST_COMPUTE_SECONDS gives worker
// `worker`; nullopt when the variable is unset or names neither it nor all.
std::optional<train::ModelledTime> test_compute_time(const std::map<std::string, std::string>& env,
                                                     int64_t worker);

// DTRAIN_TEST_AGENT_STOP_BEFORE_CLAIM: "1" logs to `logger` and SIGSTOPs
// this process (it returns once continued); unset or empty: nothing.
void test_stop_before_claim(const std::map<std::string, std::string>& env, Logger& logger);

// Whether DTRAIN_TEST_AGENT_BLIND is set (to 1).
bool test_agent_blind(const std::map<std::string, std::string>& env);

// All of the above as the job's hooks for this process.
train::RunHooks test_hooks(const std::map<std::string, std::string>& env,
                           const comm::LaunchInfo& launch);

}  // namespace dtrain::cli
