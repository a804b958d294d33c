// Gradient compression: one interface for every strategy (docs/compression.md
// has each method's paper, its message layout and its bytes).
//
// A Compressor serves one stream of gradients: the tensors of a model (the
// allreduce strategy) or the pieces of tensors a worker pushes to its
// parameter servers (the ps strategy). Construction fixes the list of
// tensors, each with a matrix layout (rows x cols; PowerSGD's view, a conv
// kernel [O, I, kh, kw] is O x I*kh*kw, a vector 1 x n); the compressor keeps
// its per-tensor state (error-feedback residuals, DGC momentum, PowerSGD's Q)
// for exactly those tensors.
//
// Two ways to use it:
//  - collective (allreduce): reduce() takes this worker's gradients of a
//    group of tensors (a bucket) and leaves in them the SUM over the workers
//    of what each worker's compressed message decodes to, talking to the
//    other workers through a Group. Each method uses the collective that
//    fits its message: fp16/bf16 a ring allreduce whose messages carry 16-bit
//    values; random-k the values at indices every worker draws alike (a
//    dense allreduce of k floats); top-k a sparse allreduce merging
//    index/value lists; QSGD and sign an allgather of the encoded messages,
//    each decoded and summed; PowerSGD two small dense allreduces (P, then
//    Q) around an orthogonalisation.
//  - point to point (ps push): encode() writes one tensor's message; the
//    receiver's decode_add() (stateless, below) adds the decoded values to
//    its accumulator. A malformed message (an index out of range, a count
//    that does not fit the tensor, an unknown method, non-finite values)
//    throws DataError and adds nothing.
//
// Tensors with fewer than Options::min_size floats are not compressed
// (compresses() is false): the caller sends them dense. PowerSGD also leaves
// dense a matrix where (rows + cols) * rank * min_compression_rate >=
// rows * cols, as PyTorch's hook does.
//
// Error feedback (Stich et al. 2018; Karimireddy et al. 2019): what a worker
// did not send of its gradient (g + e - decode(encode(g + e))) is kept as
// the residual e and added to the next step's gradient. With
// Options::error_feedback false the residual is dropped.
//
// Randomness (random-k's indices, QSGD's rounding) is drawn from generators
// seeded by (seed, step, tensor[, rank]): no generator state to save, and a
// resumed run draws what an uninterrupted one would. random-k's indices do
// not depend on the rank, so every worker sends the same positions.
//
// Ownership: a value owned by its strategy. Thread safety: one thread at a
// time (the strategy may call reduce() from its communicator's thread while
// its own thread does nothing with the compressor). Errors: UsageError for
// bad options, a tensor index out of range or a gradient of the wrong size;
// CommError from the Group; DataError from decode_add(). Blocking: reduce()
// blocks in the Group's collectives (bounded by their deadlines); the rest
// never blocks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/byte_codec.h"

namespace dtrain::compress {

enum class Method : uint8_t {
  kNone = 0,
  kFp16 = 1,
  kBf16 = 2,
  kTopK = 3,
  kRandomK = 4,
  kQsgd = 5,
  kSign = 6,
  kPowerSgd = 7,
};

// "none", "fp16", "bf16", "topk", "randomk", "qsgd", "sign", "powersgd".
std::string_view to_string(Method method);
// nullopt for an unknown name.
std::optional<Method> parse_method(std::string_view name);
// Every method's name, for error messages.
std::vector<std::string> method_names();

struct Options {
  Method method = Method::kNone;
  // top-k, random-k: the share of a tensor's entries sent, in (0, 1].
  double density = 0.01;
  // QSGD: quantisation levels s >= 1 (|g_i| / ||g|| rounded to one of s + 1
  // levels 0, 1/s, ..., 1).
  int levels = 16;
  // QSGD: entries per bucket d, each bucket quantised against its own norm
  // (Alistarh et al. 2017, section 3.1: variance at most min(d / s^2,
  // sqrt(d) / s) ||g||^2 rather than the same with n, the tensor's size);
  // 0 = one bucket for the whole tensor. One f32 norm per bucket goes on the
  // wire. At most 2^32 - 1.
  size_t qsgd_bucket = 512;
  // PowerSGD: the rank r >= 1 of the approximation.
  int rank = 4;
  // Error feedback (top-k, random-k, sign, PowerSGD; fp16, bf16 and QSGD
  // ignore it: they are unbiased or nearly exact).
  bool error_feedback = true;
  // Tensors with fewer floats stay dense.
  size_t min_size = 1024;
  // top-k, random-k: DGC's momentum correction (Lin et al. 2018): the
  // compressor accumulates velocity u = momentum * u + g, sends the top-k
  // (or the drawn k) of the accumulated velocity and zeroes u where sent;
  // 0 turns it off. Pair it with an optimizer without momentum.
  double momentum = 0.0;
  // top-k: DGC's density warm-up: over the first `warmup_steps` compressed
  // steps the density falls geometrically from 0.25 to `density`.
  int64_t warmup_steps = 0;
  // PowerSGD: a matrix is compressed only when rows * cols exceeds
  // (rows + cols) * rank * min_compression_rate.
  double min_compression_rate = 2.0;
  // Seeds the random draws (with the step and the tensor).
  uint64_t seed = 1;
};

// Checks each option alone: UsageError naming the option ("density must be
// in (0, 1], got 0").
void validate(const Options& options);

// One tensor as the compressor sees it: a rows x cols matrix, row-major.
struct TensorLayout {
  size_t rows = 1;
  size_t cols = 0;
  size_t numel() const { return rows * cols; }
};

// A tensor's matrix view from its shape: [d0, d1 * d2 * ...] for two or
// more dimensions with d0 > 0 (a conv kernel [O, I, kh, kw] is O x I*kh*kw),
// 1 x numel otherwise (a vector, a scalar, an empty first dimension).
TensorLayout matrix_layout(std::span<const int64_t> shape);

// What a compressor asks of the group of workers it reduces with. The
// strategies implement it over comm::Communicator (strategy/compress_group.h);
// tests over threads. Every worker calls the same operations in the same
// order with agreeing sizes. Errors: CommError / TimeoutError naming the
// peer.
class Group {
 public:
  virtual ~Group() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: the element-wise sum over the group.
  virtual void allreduce_sum(std::span<float> data) = 0;
  // In place: the sum over the group, with 16-bit values in the messages
  // (bf16, or fp16 scaled per message so that nothing overflows).
  virtual void allreduce_sum_16(std::span<float> data, bool bf16) = 0;
  // Every rank's message (sizes may differ), in rank order.
  virtual std::vector<std::vector<std::byte>> allgather_bytes(std::span<const std::byte> mine) = 0;
  // out (dense, size n) = the sum over the group of each rank's sparse
  // vector (strictly increasing indices < n, one value per index). A peer's
  // malformed list fails the call with CommError naming it.
  virtual void sparse_allreduce_sum(std::span<const uint32_t> indices,
                                    std::span<const float> values, std::span<float> out) = 0;
};

// A compressor's state as named float arrays and exact strings, for
// checkpoints (the strategy stores it beside the optimizer state).
struct State {
  std::vector<std::pair<std::string, std::vector<float>>> arrays;
  std::map<std::string, std::string> metadata;
};

class Compressor {
 public:
  virtual ~Compressor() = default;
  Compressor(const Compressor&) = delete;
  Compressor& operator=(const Compressor&) = delete;

  Method method() const { return options_.method; }
  const Options& options() const { return options_; }
  size_t tensor_count() const { return layouts_.size(); }
  const TensorLayout& layout(size_t tensor) const;
  // Whether tensor `tensor` is compressed; false: its caller sends it dense.
  virtual bool compresses(size_t tensor) const;

  // Collective. grads[i] holds this worker's gradient of tensors[i] (each
  // compresses() true); on return it holds the sum over the group of the
  // decoded messages. `step` counts compressed updates from 0 (density
  // warm-up, random draws). Updates the tensors' residuals.
  virtual void reduce(std::span<const size_t> tensors, std::span<const std::span<float>> grads,
                      Group& group, int64_t step) = 0;

  // Point to point: appends tensor `tensor`'s message for gradient `grad`
  // (residual added, and updated) to `out`. `rank` is the sender's (QSGD's
  // draws differ per worker).
  virtual void encode(size_t tensor, std::span<const float> grad, int64_t step, int rank,
                      ByteWriter& out) = 0;

  // Bytes of the messages this compressor sent since construction, as
  // counted by the compressor itself (its own payloads, not the
  // collectives' framing).
  uint64_t payload_bytes() const { return payload_bytes_; }

  // Checkpoints: every tensor's residual and method state. load() throws
  // UsageError for a state of another method or another tensor list.
  virtual State save() const;
  virtual void load(const State& state);
  // Forgets every residual and warm start (a run resumed at another worker
  // count).
  virtual void reset();

 protected:
  Compressor(Options options, std::vector<TensorLayout> layouts);
  // UsageError unless `tensor` is in range, compressed (compresses()) and
  // `floats` is its size.
  void check_tensor(size_t tensor, size_t floats) const;
  // reduce()'s arguments: as many gradients as tensors, each as
  // check_tensor(), no tensor twice.
  void check_reduce(std::span<const size_t> tensors, std::span<const std::span<float>> grads) const;
  // Whether this method keeps residuals (error_feedback and a biased method:
  // top-k, random-k, sign, PowerSGD).
  bool keeps_residual() const;
  // Error feedback: residual of tensor `t` (empty when the method keeps
  // none), sized on first use.
  std::vector<float>& residual(size_t tensor);
  void count_payload(uint64_t bytes) { payload_bytes_ += bytes; }
  // A method's further per-tensor state (DGC's "velocity", PowerSGD's "q"),
  // saved, loaded and reset with the residuals. `per_tensor` is a member of
  // the derived object (alive as long as this one), one vector per tensor,
  // empty until used.
  void add_state(std::string kind, std::vector<std::vector<float>>* per_tensor);
  // The floats of state array `kind` ("residual", or one of add_state's)
  // of tensor `tensor`; load() refuses another size, and refuses the array
  // altogether where this is 0 (state these options do not keep). Default:
  // numel, and 0 for "residual" unless keeps_residual().
  virtual size_t state_floats(std::string_view kind, size_t tensor) const;

  Options options_;
  std::vector<TensorLayout> layouts_;
  std::vector<std::vector<float>> residuals_;

 private:
  std::vector<std::pair<std::string, std::vector<std::vector<float>>*>> all_state();

  uint64_t payload_bytes_ = 0;
  std::vector<std::pair<std::string, std::vector<std::vector<float>>*>> extra_state_;
};

// A compressor of `options.method` over `layouts` (validate()d first).
// Method kNone has none: UsageError.
std::unique_ptr<Compressor> make_compressor(const Options& options,
                                            std::vector<TensorLayout> layouts);

// Decodes a message of encode() for a tensor of `layout` and adds
// `weight` times its values to `out` (layout.numel() floats). Stateless.
// DataError naming `context` (e.g. "push from worker 3") on a malformed
// message; `out` is then unchanged.
void decode_add(std::span<const std::byte> message, const TensorLayout& layout, float weight,
                std::span<float> out, std::string_view context);

}  // namespace dtrain::compress
