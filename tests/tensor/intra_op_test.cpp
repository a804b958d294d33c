// Intra-op threads (tensor/intra_op.h): the fan-out's ranges; its team
// (threads kept across calls, rebuilt when a setting changes, a busy
// team falling back to running the parts in order for nested and concurrent
// calls, a forked child building its own and exiting cleanly); and the
// threaded kernels bit-identical to one thread for 1, 2 and 3 threads, on odd
// batches and batches smaller than the thread count.
#include "tensor/intra_op.h"

#include <cblas.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <latch>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/rng.h"
#include "tensor/conv_implicit.h"
#include "tensor/conv_kernels.h"
#include "tensor/ops.h"
#include "tensor/small_gemm.h"

namespace dtrain {
namespace {

// Sets the thread count for one scope and restores the default after.
class ThreadsFor {
 public:
  explicit ThreadsFor(int threads) { tensor::set_intra_op_threads(threads); }
  ~ThreadsFor() { tensor::set_intra_op_threads(1); }
  ThreadsFor(const ThreadsFor&) = delete;
  ThreadsFor& operator=(const ThreadsFor&) = delete;
};

std::vector<float> random_values(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = rng.uniform(-1.0f, 1.0f);
  return v;
}

// Bitwise equality (NaN payloads and signed zeros included).
template <typename T>
void expect_bits_equal(const std::vector<T>& got, const std::vector<T>& want) {
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(T)), 0);
}

TEST(IntraOp, RangesAreContiguousDisjointAndCoverEverything) {
  EXPECT_EQ(tensor::intra_op_threads(), 1);
  for (int threads : {1, 2, 3}) {
    const ThreadsFor scope(threads);
    for (int64_t n : {0, 1, 2, 5, 7}) {
      std::vector<int> hits(static_cast<size_t>(n), 0);
      std::vector<int64_t> begins(3, -1), ends(3, -1);
      tensor::parallel_for_range(n, [&](int64_t begin, int64_t end, int part) {
        begins[static_cast<size_t>(part)] = begin;
        ends[static_cast<size_t>(part)] = end;
        for (int64_t i = begin; i < end; ++i) ++hits[static_cast<size_t>(i)];
      });
      for (int h : hits) EXPECT_EQ(h, 1) << "threads " << threads << " n " << n;
      const int64_t parts = std::min<int64_t>(threads, n);
      for (int64_t p = 0; p < parts; ++p) {
        EXPECT_LT(begins[static_cast<size_t>(p)], ends[static_cast<size_t>(p)]);
        if (p > 0) {
          EXPECT_EQ(begins[static_cast<size_t>(p)], ends[static_cast<size_t>(p - 1)]);
        }
      }
    }
  }
  tensor::set_intra_op_threads(0);  // clamped
  EXPECT_EQ(tensor::intra_op_threads(), 1);
}

TEST(IntraOp, RethrowsAWorkersExceptionAfterEveryPartFinished) {
  const ThreadsFor scope(3);
  std::vector<int> finished(3, 0);
  EXPECT_THROW(tensor::parallel_for_range(3,
                                          [&](int64_t begin, int64_t, int part) {
                                            finished[static_cast<size_t>(part)] = 1;
                                            if (begin == 2) throw std::runtime_error("part");
                                          }),
               std::runtime_error);
  EXPECT_EQ(finished, (std::vector<int>{1, 1, 1}));
}

// The thread that ran each part of one call (part 0 is the caller's). The
// parts wait for each other, so each runs on a thread of its own: the caller,
// blocked in part 0, cannot take over a part no team thread has started.
std::vector<std::thread::id> part_threads(int64_t n) {
  std::vector<std::thread::id> ids(static_cast<size_t>(n));
  std::latch all_started(n);
  tensor::parallel_for_range(n, [&](int64_t, int64_t, int part) {
    ids[static_cast<size_t>(part)] = std::this_thread::get_id();
    all_started.arrive_and_wait();
  });
  return ids;
}

TEST(IntraOp, TeamThreadsAreKeptAcrossCallsAndRebuiltWhenTheSettingChanges) {
  const ThreadsFor scope(3);
  const auto first = part_threads(3);
  EXPECT_EQ(first[0], std::this_thread::get_id());
  EXPECT_EQ(std::set<std::thread::id>(first.begin(), first.end()).size(), 3u);
  EXPECT_EQ(part_threads(3), first);        // parked between calls, not recreated
  EXPECT_EQ(part_threads(2)[1], first[1]);  // fewer parts than threads: the same team
  tensor::set_intra_op_threads(2);
  const auto rebuilt = part_threads(2);
  EXPECT_EQ(rebuilt[0], std::this_thread::get_id());
  EXPECT_NE(rebuilt[1], rebuilt[0]);
  EXPECT_EQ(part_threads(2), rebuilt);
}

// The spin is a setting like the thread count (clamped at zero); the team
// covers every range with it and without it, across a change.
TEST(IntraOp, SpinSettingIsClampedAndTheTeamWorksWithAndWithoutIt) {
  EXPECT_EQ(tensor::intra_op_spin(), tensor::kDefaultIntraOpSpin);
  const ThreadsFor scope(2);
  std::vector<int> hits(9, 0);
  auto count_hits = [&] {
    for (int round = 0; round < 20; ++round) {
      const auto ids = part_threads(2);
      EXPECT_NE(ids[1], ids[0]);
      tensor::parallel_for_range(9, [&](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i) ++hits[static_cast<size_t>(i)];
      });
    }
  };
  count_hits();
  tensor::set_intra_op_spin(std::chrono::microseconds(-5));
  EXPECT_EQ(tensor::intra_op_spin(), std::chrono::microseconds(0));
  count_hits();
  tensor::set_intra_op_spin(tensor::kDefaultIntraOpSpin);
  count_hits();
  EXPECT_EQ(hits, std::vector<int>(9, 60));
}

// n items, each counted once per coverage, nested fan-outs included.
TEST(IntraOp, NestedAndConcurrentCallsCoverEveryRangeOnce) {
  const ThreadsFor scope(2);
  std::vector<std::atomic<int>> hits(35);
  tensor::parallel_for_range(5, [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) {
      tensor::parallel_for_range(7, [&](int64_t b, int64_t e, int) {
        for (int64_t j = b; j < e; ++j) hits[static_cast<size_t>(i * 7 + j)]++;
      });
    }
  });
  for (const auto& h : hits) EXPECT_EQ(h.load(), 1);
  std::vector<std::vector<int>> counts(2, std::vector<int>(101, 0));
  {
    std::vector<std::jthread> callers;
    for (size_t c = 0; c < counts.size(); ++c) {
      callers.emplace_back([&counts, c] {
        for (int round = 0; round < 20; ++round) {
          tensor::parallel_for_range(101, [&](int64_t begin, int64_t end, int) {
            for (int64_t i = begin; i < end; ++i) counts[c][static_cast<size_t>(i)]++;
          });
        }
      });
    }
  }
  for (const auto& per_caller : counts) {
    for (int h : per_caller) EXPECT_EQ(h, 20);
  }
}

// The launcher forks: a child of a process whose team exists builds a team
// of its own, computes, and exits (its team joined by the exit handlers).
TEST(IntraOp, AForkedChildBuildsItsOwnTeamAndExitsCleanly) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "TSan stops a child of a multithreaded process that starts threads";
#else
  const ThreadsFor scope(2);
  part_threads(2);  // the parent's team exists
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    alarm(60);  // a deadlock in the child ends it with SIGALRM, not a hang
    const auto ids = part_threads(2);
    std::exit(ids[1] != ids[0] && ids[1] != std::thread::id() ? 0 : 3);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "child ended by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
#endif
}

struct ConvResult {
  std::vector<float> y, gx, gw, gb;
};

ConvResult run_conv(const ops::Conv2dGeometry& g, int64_t out, int threads,
                    const ops::SmallGemmKernels& kernels) {
  const ThreadsFor scope(threads);
  const ops::ImplicitConv conv(g, kernels);
  const auto x = random_values(static_cast<size_t>(g.n * g.c * g.h * g.w), 21);
  const auto w = random_values(static_cast<size_t>(out * g.col_rows()), 22);
  const auto bias = random_values(static_cast<size_t>(out), 23);
  const auto gy = random_values(static_cast<size_t>(g.n * out * g.oh * g.ow), 24);
  std::vector<float> xpad(static_cast<size_t>(conv.padded_floats()));
  conv.pad_input(x.data(), xpad.data());
  std::vector<float> scratch(static_cast<size_t>(conv.scratch_floats(out)));
  ConvResult r{std::vector<float>(gy.size()), std::vector<float>(x.size()),
               std::vector<float>(w.size()), std::vector<float>(bias.size())};
  conv.forward(xpad.data(), w.data(), out, bias.data(), r.y.data(), scratch.data());
  std::vector<float> gscratch(static_cast<size_t>(conv.input_grad_scratch_floats(out)));
  conv.input_grad(gy.data(), w.data(), out, r.gx.data(), gscratch.data());
  std::vector<float> wscratch(static_cast<size_t>(conv.weight_grad_scratch_floats(out)));
  conv.weight_grad(xpad.data(), gy.data(), out, r.gw.data(), r.gb.data(), wscratch.data());
  return r;
}

// R = 25 (conv1: 4 row blocks and a tail row), 150, 18, 27 and 4: the weight
// gradient's row split lands on block boundaries and the tail. Every
// variant of the GEMM kernels the CPU runs (tensor/small_gemm.h).
TEST(IntraOp, ImplicitConvForwardAndGradientsMatchOneThreadBitForBit) {
  struct Case {
    int64_t n, c, h, w, k, pad, o;
  };
  for (const ops::SmallGemmKernels* kernels : ops::small_gemm_variants()) {
    for (const Case& t :
         {Case{5, 1, 28, 28, 5, 2, 6}, Case{3, 6, 14, 14, 5, 0, 16}, Case{2, 2, 5, 7, 3, 1, 17},
          Case{1, 3, 3, 9, 3, 0, 9}, Case{4, 1, 6, 6, 2, 0, 3}}) {
      ops::Conv2dGeometry g{t.n, t.c, t.h, t.w, t.k, 1, t.pad, 0, 0};
      g.oh = t.h + 2 * t.pad - t.k + 1;
      g.ow = t.w + 2 * t.pad - t.k + 1;
      const ConvResult one = run_conv(g, t.o, 1, *kernels);
      for (int threads : {2, 3}) {
        SCOPED_TRACE(::testing::Message()
                     << kernels->isa << ": n " << t.n << " c " << t.c << " threads " << threads);
        const ConvResult many = run_conv(g, t.o, threads, *kernels);
        expect_bits_equal(many.y, one.y);
        expect_bits_equal(many.gx, one.gx);
        expect_bits_equal(many.gw, one.gw);
        expect_bits_equal(many.gb, one.gb);
      }
    }
  }
}

struct PoolResult {
  std::vector<float> y, gx;
  std::vector<int32_t> argmax;
};

PoolResult run_pool(const ops::Conv2dGeometry& g, int64_t planes, int threads) {
  const ThreadsFor scope(threads);
  const auto x = random_values(static_cast<size_t>(planes * g.h * g.w), 31);
  const auto gy = random_values(static_cast<size_t>(planes * g.oh * g.ow), 32);
  PoolResult r{std::vector<float>(gy.size()), std::vector<float>(x.size()),
               std::vector<int32_t>(gy.size())};
  ops::max_pool2d_forward(x.data(), planes, g, r.y.data(), r.argmax.data());
  ops::relu_after_max_pool(r.y.data(), r.argmax.data(), static_cast<int64_t>(r.y.size()));
  ops::max_pool2d_backward(gy.data(), r.argmax.data(), planes, g, r.gx.data());
  return r;
}

TEST(IntraOp, MaxPoolForwardAndBackwardMatchOneThreadBitForBit) {
  // 2x2 stride 2 (the fast path) and 3x3 stride 2 padded (the general one).
  ops::Conv2dGeometry two{1, 1, 8, 6, 2, 2, 0, 4, 3};
  ops::Conv2dGeometry three{1, 1, 7, 7, 3, 2, 1, 4, 4};
  for (const ops::Conv2dGeometry& g : {two, three}) {
    for (int64_t planes : {1, 2, 7}) {
      const PoolResult one = run_pool(g, planes, 1);
      for (int threads : {2, 3}) {
        SCOPED_TRACE(::testing::Message()
                     << "k " << g.k << " planes " << planes << " threads " << threads);
        const PoolResult many = run_pool(g, planes, threads);
        expect_bits_equal(many.y, one.y);
        expect_bits_equal(many.argmax, one.argmax);
        expect_bits_equal(many.gx, one.gx);
      }
    }
  }
}

struct LinearResult {
  std::vector<float> y, gx, gw, gb;
  std::vector<float> y_relu, g_relu, g_relu_serial;
};

LinearResult run_linear(int64_t n, int64_t in, int64_t out, int threads) {
  const ThreadsFor scope(threads);
  const auto x = random_values(static_cast<size_t>(n * in), 41);
  const auto w = random_values(static_cast<size_t>(out * in), 42);
  const auto bias = random_values(static_cast<size_t>(out), 43);
  const auto gy = random_values(static_cast<size_t>(n * out), 44);
  LinearResult r{std::vector<float>(gy.size()), std::vector<float>(x.size()),
                 std::vector<float>(w.size()),  std::vector<float>(bias.size()),
                 std::vector<float>(gy.size()), std::vector<float>(gy.size()),
                 std::vector<float>(gy.size())};
  ops::linear_forward(x.data(), w.data(), bias.data(), r.y.data(), n, in, out);
  ops::linear_backward(gy.data(), x.data(), w.data(), r.gx.data(), r.gw.data(), r.gb.data(), n, in,
                       out);
  // The fused ReLU: the same GEMMs, each part clamping its rows, then the
  // mask applied to gy rows split alike.
  ops::linear_forward(x.data(), w.data(), bias.data(), r.y_relu.data(), n, in, out, true);
  ops::linear_relu_backward(gy.data(), r.y_relu.data(), r.g_relu.data(), n, in, out);
  ops::relu_backward(gy.data(), r.y_relu.data(), r.g_relu_serial.data(), n * out);
  return r;
}

// Every element within k * 1e-6 of one thread's, where k is the length of
// its sum (|inputs| <= 1): far below what a wrong or missing row range
// changes, far above the last-bit differences of OpenBLAS's shape-dependent
// kernels (tensor/ops.h).
void expect_sums_close(const std::vector<float>& got, const std::vector<float>& want, int64_t k,
                       const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const double tolerance = static_cast<double>(k) * 1e-6;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(std::abs(static_cast<double>(got[i]) - want[i]) <= tolerance)) ++bad;
  }
  EXPECT_EQ(bad, 0u) << what << ": elements beyond " << tolerance;
}

// OpenBLAS at one thread, so that the dense layer splits its GEMMs itself
// (tensor/ops.h): the MLP's and LeNet-5's shapes at batches 256, 257 and 3
// (fewer rows than some parts), and one below the split threshold.
TEST(IntraOp, LinearWithThreadsMatchesOneThread) {
  openblas_set_num_threads(1);
  struct Case {
    int64_t n, in, out;
  };
  for (const Case& t : {Case{256, 784, 256}, Case{257, 256, 10}, Case{256, 400, 120},
                        Case{3, 2000, 300}, Case{256, 84, 10}, Case{5, 33, 7}}) {
    const LinearResult one = run_linear(t.n, t.in, t.out, 1);
    for (int threads : {2, 3}) {
      SCOPED_TRACE(::testing::Message()
                   << "n " << t.n << " in " << t.in << " out " << t.out << " threads " << threads);
      const LinearResult many = run_linear(t.n, t.in, t.out, threads);
      expect_sums_close(many.y, one.y, t.in, "y");
      expect_sums_close(many.gx, one.gx, t.out, "gx");
      expect_sums_close(many.gw, one.gw, t.n, "gw");
      expect_bits_equal(many.gb, one.gb);  // column sums: split by columns, rows in order
      std::vector<float> clamped = many.y;
      ops::relu(clamped.data(), clamped.data(), static_cast<int64_t>(clamped.size()));
      expect_bits_equal(many.y_relu, clamped);
      expect_bits_equal(many.g_relu, many.g_relu_serial);
    }
  }
}

}  // namespace
}  // namespace dtrain
