// TraceSink: where timeline events go (obs/trace_writer.h writes them as a
// Chrome trace), and TraceSpan, the RAII span that records one.
//
// Any module may emit events through this interface; none knows the file
// format. There is no global sink: whoever assembles a job creates one and
// passes a `TraceSink*` down (BuildContext, Trainer, strategy options, the
// model via nn::Sequential::set_trace, the communicator); null means off, and
// then a TraceSpan costs one pointer test.
//
// Bounded: the sink knows the current step (the trainer calls set_step()
// before each update) and records only while recording() is true (steps
// N..M of the job's train.trace_steps, plus the set-up before the first step:
// rendezvous and clock alignment). Events outside are dropped, not buffered.
//
// Times are microseconds of the system clock since the Unix epoch
// (trace_now_us()), so that ranks on several machines can be aligned by
// their clock offset (set_clock_offset(), measured after the group forms).
//
// Thread safety: every member may be called from any thread; events of one
// thread appear on that thread's track. Names and categories are copied
// before the call returns. Errors: a sink never throws from the recording
// calls (a failed write is remembered and reported by flush()/close of the
// implementation); set_step may block for one buffered write.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string_view>

namespace dtrain {

// Microseconds of std::chrono::system_clock since the Unix epoch.
int64_t trace_now_us();

// Cristian's clock estimate (Cristian 1989) over several exchanges with a
// reference process: a request sent at local time t0, answered when the
// reference clock read `remote_us`, the answer received at local time t1.
// Assuming the answer was made half-way, this clock minus the reference is
// (t0 + t1) / 2 - remote_us, within +-RTT / 2; of all exchanges the one with
// the smallest round trip (the least queueing) is kept.
class CristianEstimate {
 public:
  void add(int64_t t0_us, int64_t remote_us, int64_t t1_us) {
    if (samples_ > 0 && t1_us - t0_us >= rtt_us_) {
      ++samples_;
      return;
    }
    offset_us_ = (t0_us + t1_us) / 2 - remote_us;
    rtt_us_ = t1_us - t0_us;
    ++samples_;
  }
  int64_t offset_us() const { return offset_us_; }
  int64_t rtt_us() const { return rtt_us_; }
  int samples() const { return samples_; }

 private:
  int64_t offset_us_ = 0;
  int64_t rtt_us_ = 0;
  int samples_ = 0;
};

// A small integer argument shown with an event ("bucket": 3, "bytes": 4096).
struct TraceArg {
  std::string_view key;
  int64_t value = 0;
};

class TraceSink {
 public:
  virtual ~TraceSink() = default;

  // Whether events are recorded now (the current step is in range).
  virtual bool recording() const = 0;
  // The step that is about to run (1-based: the update it will make); a sink
  // may write out its buffer here.
  virtual void set_step(int64_t step) = 0;
  // Names the calling thread's track ("main", "comm", "checkpoint").
  virtual void name_thread(std::string_view name) = 0;
  // This process's system clock minus the reference process's (rank 0), in
  // microseconds, and the round-trip time of the sample it came from.
  virtual void set_clock_offset(int64_t offset_us, int64_t rtt_us) = 0;

  // A finished span of the calling thread: [start_us, start_us + duration_us).
  virtual void complete(std::string_view name, std::string_view category, int64_t start_us,
                        int64_t duration_us, std::span<const TraceArg> args = {}) = 0;
  // An operation that starts on one thread and ends on another (or later):
  // begin and end with the same name, category and id form one async span.
  virtual void async_begin(std::string_view name, std::string_view category, uint64_t id,
                           int64_t ts_us) = 0;
  virtual void async_end(std::string_view name, std::string_view category, uint64_t id,
                         int64_t ts_us) = 0;
  // A moment (a re-formation decided, a rank lost).
  virtual void instant(std::string_view name, std::string_view category, int64_t ts_us,
                       std::span<const TraceArg> args = {}) = 0;
};

// Records [construction, destruction) as a complete event when `sink` is
// non-null and recording at construction. `name` and `category` must stay
// valid until the span ends (string literals, a module's name).
class TraceSpan {
 public:
  TraceSpan(TraceSink* sink, std::string_view name, std::string_view category)
      : sink_(sink != nullptr && sink->recording() ? sink : nullptr) {
    if (sink_ != nullptr) {
      name_ = name;
      category_ = category;
      start_us_ = trace_now_us();
    }
  }
  ~TraceSpan() { end(); }
  TraceSpan(const TraceSpan&) = delete;
  TraceSpan& operator=(const TraceSpan&) = delete;

  // Adds an argument (at most kMaxArgs; later ones are ignored).
  void arg(std::string_view key, int64_t value) {
    if (sink_ != nullptr && args_used_ < kMaxArgs) args_[args_used_++] = {key, value};
  }
  // Ends the span now (the destructor then does nothing).
  void end() {
    if (sink_ == nullptr) return;
    sink_->complete(name_, category_, start_us_, trace_now_us() - start_us_,
                    std::span<const TraceArg>(args_.data(), args_used_));
    sink_ = nullptr;
  }

 private:
  static constexpr size_t kMaxArgs = 3;
  TraceSink* sink_;
  std::string_view name_;
  std::string_view category_;
  int64_t start_us_ = 0;
  std::array<TraceArg, kMaxArgs> args_{};
  size_t args_used_ = 0;
};

}  // namespace dtrain
