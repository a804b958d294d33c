// Clock alignment (measure_clock_offset) and the communicator's trace spans,
// with ranks as threads of one process: one clock, so every rank's offset
// must lie within half its round trip of zero.
#include "comm/collectives/clock_offset.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collective_test_util.h"
#include "core/error.h"
#include "core/trace.h"
#include "testing/expect_error.h"

namespace dtrain::comm {
namespace {

using testing::run_ranks;

CommunicatorOptions options() {
  CommunicatorOptions o;
  o.timeout = std::chrono::seconds(20);
  return o;
}

TEST(ClockOffset, WithinHalfTheRoundTripOnOneClock) {
  for (const int ranks : {1, 2, 3, 4}) {
    SCOPED_TRACE(ranks);
    run_ranks(ranks, [](int rank, Transport& transport) {
      Communicator comm(transport, options());
      const ClockOffset c = measure_clock_offset(comm, 5);
      if (rank == 0) {
        EXPECT_EQ(c.offset_us, 0);
        EXPECT_EQ(c.rtt_us, 0);
      } else {
        EXPECT_GE(c.rtt_us, 0);
        EXPECT_LE(2 * std::abs(c.offset_us), c.rtt_us + 1);  // +1: integer halving
      }
    });
  }
}

TEST(ClockOffset, RoundsMustBePositive) {
  run_ranks(1, [](int, Transport& transport) {
    Communicator comm(transport, options());
    dtrain::testing::expect_usage_error([&] { measure_clock_offset(comm, 0); },
                                        "clock alignment: rounds 0 < 1");
  });
}

// Records complete events with the recording thread's name.
class RecordingSink final : public TraceSink {
 public:
  struct Event {
    std::string name, category, thread;
  };
  bool recording() const override { return true; }
  void set_step(int64_t) override {}
  void name_thread(std::string_view name) override {
    std::lock_guard lock(mutex_);
    names_.emplace_back(std::this_thread::get_id(), std::string(name));
  }
  void set_clock_offset(int64_t, int64_t) override {}
  void complete(std::string_view name, std::string_view category, int64_t, int64_t,
                std::span<const TraceArg>) override {
    std::lock_guard lock(mutex_);
    std::string thread = "unnamed";
    for (const auto& [id, n] : names_) {
      if (id == std::this_thread::get_id()) thread = n;
    }
    events.push_back({std::string(name), std::string(category), thread});
  }
  void async_begin(std::string_view, std::string_view, uint64_t, int64_t) override {}
  void async_end(std::string_view, std::string_view, uint64_t, int64_t) override {}
  void instant(std::string_view, std::string_view, int64_t, std::span<const TraceArg>) override {}

  std::vector<Event> events;

 private:
  std::mutex mutex_;
  std::vector<std::pair<std::thread::id, std::string>> names_;
};

TEST(CommunicatorTrace, CollectivesAreSpansOnTheThreadThatRunsThem) {
  run_ranks(2, [](int, Transport& transport) {
    RecordingSink sink;
    Communicator comm(transport, options());
    comm.set_trace(&sink);
    std::vector<float> data(10, 1.0f);
    comm.allreduce_async(data, ReduceOp::kSum).wait(Deadline::after(std::chrono::seconds(20)));
    comm.broadcast(data, 0);
    comm.set_trace(nullptr);
    comm.allreduce(data, ReduceOp::kSum);  // not recorded
    ASSERT_EQ(sink.events.size(), 2u);
    EXPECT_EQ(sink.events[0].name, "allreduce");
    EXPECT_EQ(sink.events[0].category, "comm");
    EXPECT_EQ(sink.events[0].thread, "comm");
    EXPECT_EQ(sink.events[1].name, "broadcast");
    EXPECT_EQ(sink.events[1].thread, "unnamed");  // the caller's
  });
}

}  // namespace
}  // namespace dtrain::comm
