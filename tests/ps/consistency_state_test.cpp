// ConsistencyState on its own, without sockets: what a sync version holds,
// when it closes and the update it returns.
#include "ps/consistency_state.h"

#include <gtest/gtest.h>

#include "testing/expect_error.h"

namespace dtrain::ps {
namespace {

ServerOptions sync_options(int workers, int backup = 0) {
  ServerOptions o;
  o.num_workers = workers;
  o.backup_workers = backup;
  o.consistency = Consistency::kSync;
  return o;
}

Message push(uint64_t version, int64_t samples, std::vector<float> grad, double loss = 0.0,
             int64_t correct = 0) {
  Message m;
  m.kind = Kind::kPush;
  m.version = version;
  m.samples = samples;
  m.lr = 0.1f;
  m.loss_sum = loss;
  m.correct = correct;
  m.floats = std::move(grad);
  return m;
}

Message rows(uint64_t version, std::vector<uint64_t> keys, std::vector<float> grads) {
  Message m;
  m.kind = Kind::kPushRows;
  m.version = version;
  m.keys = std::move(keys);
  m.floats = std::move(grads);
  return m;
}

// Worker w's pushes of version 0 with three workers: rows, then dense.
void push_worker(ConsistencyState& state, uint32_t w) {
  const float big = 1e4f * 0.1234567f;
  const std::vector<std::vector<float>> dense{{big, 1.0f}, {0.3333333f, 2.0f}, {-big, 3.0f}};
  Message r = rows(0, {w == 1 ? 5u : 9u, 7}, {1.0f + static_cast<float>(w), 0.5f});
  EXPECT_EQ(state.admit_rows(w, r), Admission::kHeld);
  Message m = push(0, 1 + w, dense[w], 0.5 * (w + 1), w);
  EXPECT_EQ(state.admit_push(w, m), Admission::kHeld);
}

TEST(ConsistencyState, AWorkerNeverHeardFromHasTheJoinTimeoutAndThenTheHeartbeatTimeout) {
  using namespace std::chrono_literals;
  ServerOptions o = sync_options(2);
  o.heartbeat_timeout = 100ms;
  o.join_timeout = 1000ms;
  const auto start = ConsistencyState::Clock::now();
  ConsistencyState state(o, Logger::null(), start);
  state.heard(0, start + 50ms);
  state.check_liveness(start + 500ms);  // worker 0 silent 450 ms, worker 1 never heard
  EXPECT_EQ(state.state(0), WorkerState::kDead);
  EXPECT_EQ(state.state(1), WorkerState::kLive);
  state.check_liveness(start + 1001ms);
  EXPECT_EQ(state.state(1), WorkerState::kDead);
}

TEST(ConsistencyState, ASyncVersionClosesOnTheLastPushWithTheSameUpdateInAnyOrder) {
  Logger& logger = Logger::null();
  std::optional<VersionUpdate> first;
  for (const std::vector<uint32_t>& order :
       {std::vector<uint32_t>{0, 1, 2}, std::vector<uint32_t>{2, 0, 1}}) {
    ConsistencyState state(sync_options(3), logger, ConsistencyState::Clock::now());
    for (size_t i = 0; i < order.size(); ++i) {
      EXPECT_FALSE(state.close_version().has_value()) << "closed after " << i << " pushes";
      push_worker(state, order[i]);
    }
    std::optional<VersionUpdate> update = state.close_version();
    ASSERT_TRUE(update.has_value());
    EXPECT_EQ(state.version(), 1u);
    EXPECT_TRUE(update->apply);
    EXPECT_EQ(state.last_totals().samples, 6);
    EXPECT_EQ(state.last_totals().correct, 3);
    EXPECT_DOUBLE_EQ(state.last_totals().loss_sum, 3.0);
    ASSERT_EQ(update->rows.size(), 1u);
    // Keys ascending; key 7 from every worker: (1 + 2 + 3) * 0.5 / 6.
    EXPECT_EQ(update->rows[0].keys, (std::vector<uint64_t>{5, 7, 9}));
    EXPECT_FLOAT_EQ(update->rows[0].grads[1], 0.5f);
    if (!first) {
      first = std::move(update);
    } else {
      EXPECT_EQ(update->grad, first->grad);  // bit for bit
      EXPECT_EQ(update->rows[0].grads, first->rows[0].grads);
    }
  }
}

TEST(ConsistencyState, RowsOfAWorkerWhosePushDoesNotCountAreDiscarded) {
  Logger& logger = Logger::null();
  ConsistencyState state(sync_options(3, 1), logger, ConsistencyState::Clock::now());
  Message straggler = rows(0, {100}, {4.0f});
  EXPECT_EQ(state.admit_rows(2, straggler), Admission::kHeld);
  for (uint32_t w = 0; w < 2; ++w) {
    Message m = push(0, 2, {1.0f});
    state.admit_push(w, m);
  }
  std::optional<VersionUpdate> update = state.close_version();
  ASSERT_TRUE(update.has_value());
  EXPECT_TRUE(update->rows.empty());
  Message late = rows(0, {100}, {4.0f});
  EXPECT_EQ(state.admit_rows(2, late), Admission::kDropped);
  Message late_push = push(0, 2, {1.0f});
  EXPECT_EQ(state.admit_push(2, late_push), Admission::kDropped);
  EXPECT_EQ(state.version(), 1u);
}

TEST(ConsistencyState, PerWorkerStepsComeByWorkerIndexWithZerosForAWorkerNotCounted) {
  Logger& logger = Logger::null();
  ConsistencyState state(sync_options(3, 1), logger, ConsistencyState::Clock::now());
  EXPECT_TRUE(state.last_totals().workers.empty());
  for (const uint32_t w : {1u, 0u}) {  // worker 2 is the backup left out
    Message m = push(0, 2 + w, {1.0f});
    m.compute_s = 0.25 * (w + 1);
    ASSERT_EQ(state.admit_push(w, m), Admission::kHeld);
  }
  ASSERT_TRUE(state.close_version().has_value());
  const std::vector<WorkerStep>& steps = state.last_totals().workers;
  ASSERT_EQ(steps.size(), 3u);
  EXPECT_EQ(steps[0].samples, 2);
  EXPECT_EQ(steps[0].compute_s, 0.25);
  EXPECT_EQ(steps[1].samples, 3);
  EXPECT_EQ(steps[1].compute_s, 0.5);
  EXPECT_EQ(steps[2].samples, 0);
  EXPECT_EQ(steps[2].compute_s, 0.0);
  state.reset(4);  // a loaded state forgets the last version's figures
  EXPECT_TRUE(state.last_totals().workers.empty());
}

TEST(ConsistencyState, ZeroSamplesAdvanceTheVersionWithoutAnUpdate) {
  Logger& logger = Logger::null();
  ConsistencyState state(sync_options(2), logger, ConsistencyState::Clock::now());
  for (uint32_t w = 0; w < 2; ++w) {
    Message r = rows(0, {1}, {1.0f});
    state.admit_rows(w, r);
    Message m = push(0, 0, {1.0f});
    state.admit_push(w, m);
  }
  std::optional<VersionUpdate> update = state.close_version();
  ASSERT_TRUE(update.has_value());
  EXPECT_FALSE(update->apply);
  EXPECT_EQ(state.version(), 1u);
}

TEST(ConsistencyState, AsyncPushesAndRowsAreAppliedAtOnce) {
  Logger& logger = Logger::null();
  ServerOptions o = sync_options(2);
  o.consistency = Consistency::kAsync;
  ConsistencyState state(o, logger, ConsistencyState::Clock::now());
  Message r = rows(7, {1}, {1.0f});
  EXPECT_EQ(state.admit_rows(0, r), Admission::kApplyNow);
  Message m = push(0, 3, {1.0f});
  EXPECT_EQ(state.admit_push(1, m), Admission::kApplyNow);
  EXPECT_EQ(state.version(), 1u);
  EXPECT_EQ(state.clock(1), 1u);
  EXPECT_FALSE(state.close_version().has_value());
}

TEST(ConsistencyState, OutOfOrderRequestsAreRefused) {
  Logger& logger = Logger::null();
  ConsistencyState state(sync_options(2), logger, ConsistencyState::Clock::now());
  Message m = push(0, 1, {1.0f});
  state.admit_push(0, m);
  Message after = rows(0, {1}, {1.0f});
  dtrain::testing::expect_error<Refusal>(
      [&] { state.admit_rows(0, after); },
      "row push from worker 0 for version 0 after its dense push; rows go first");
  Message again = push(0, 1, {1.0f});
  dtrain::testing::expect_error<Refusal>([&] { state.admit_push(0, again); },
                                         "duplicate push from worker 0 for version 0");
  Message future = rows(2, {1}, {1.0f});
  dtrain::testing::expect_error<Refusal>([&] { state.admit_rows(1, future); },
                                         "future row push for version 2: server 0 is at version 0");
}

}  // namespace
}  // namespace dtrain::ps
