// PsOverlap: a ps worker's push overlapped with its backward
// (docs/parameter-server.md "Pushes overlapped with backward"). It registers
// a gradient-ready hook on every dense parameter; during an armed backward,
// as soon as every parameter with floats in server s's range has its final
// gradient, server s's request (ps::LayeredStep: the push and the pull of
// push_step(), unchanged) leaves while backward goes on with the earlier
// layers. Backward produces the last layers' gradients first and the servers
// hold contiguous ranges of the flattened model, so the last server's range
// is usually ready first; server 0's, which holds the first layers, last.
//
// The replies: end_backward() sends what is left and returns at once; the
// step stays in flight. wait_server() takes one server's reply (its range
// copied into the parameters) and before_layer(), a forward pre-hook of the
// next forward (nn/sequential.h), takes the replies of the servers holding
// that layer's parameters, first layers first, so the next forward's first
// layers run while the later ranges are still on their way. settle() takes
// the rest; whoever reads the parameters outside forward calls it first
// (PsStrategy does in every public accessor).
//
// The granularity is a server's range: with one server, or a range that
// ends in the last gradient backward produces, the request leaves when
// backward ends, as today's.
//
// Ownership: the parameters are handles into the strategy's model, which
// outlives this object (the strategy destroys it first); the hooks capture
// `this` and are removed by the destructor. The client must outlive it too.
// Thread safety: the hooks run on the thread calling backward(), the same
// that calls the strategy. Errors: arm() and finish() throw as
// ps::LayeredStep does; a non-finite gradient stops further requests (the
// caller's check then throws NumericError, and the requests already sent
// stay with their servers: the step, and in sync the job, is lost as when a
// push fails). Blocking: the hooks only write to ZeroMQ; finish() waits for
// the replies, bounded by the client's timeout per server.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "autograd/variable.h"
#include "nn/module.h"
#include "ps/client.h"
#include "ps/client_layers.h"

namespace dtrain::strategy {

class PsOverlap {
 public:
  // `dense` in the client's init order; `zero_grads` zeros of their shapes.
  PsOverlap(ps::Client& client, std::vector<Variable> dense, std::vector<Tensor> zero_grads);
  ~PsOverlap();
  PsOverlap(const PsOverlap&) = delete;
  PsOverlap& operator=(const PsOverlap&) = delete;

  // Before backward: the hooks send each server's request with `push`, the
  // pull waiting for min_version.
  void arm(const ps::DensePush& push, uint64_t min_version);
  // After backward: a parameter whose hook did not fire pushes its gradient
  // if it has one, else zeros (as push_step's caller does); the servers not
  // sent yet are sent; waits for every reply and copies the pulled values
  // into `out`. Returns the pull's version. Disarms.
  uint64_t finish(const std::vector<Tensor>& out);
  // finish() without the wait: sends what is left and keeps the step in
  // flight, its replies to be copied into `out` (handles to the
  // parameters' storage, kept until settle()).
  void end_backward(const std::vector<Tensor>& out);
  // Whether some reply of the step in flight is still to be taken.
  bool replies_pending() const;
  // Takes server `server`'s reply of the step in flight (a no-op without
  // one, or once taken). The forward pre-hook: the same for every server
  // holding some of `layer`'s parameters, in server order. A failed wait
  // (TimeoutError / CommError naming the server) drops the step in flight.
  void wait_server(int server);
  void before_layer(const nn::Module& layer);
  // Takes every reply left of the step in flight and ends it; returns the
  // pull's version (nullopt without a step in flight).
  std::optional<uint64_t> settle();
  // Drops an armed step (backward or its checks threw).
  void disarm() { step_.reset(); }

  // Requests sent while some parameter's gradient was still to come, since
  // construction (tests and the benchmark's note).
  int64_t early_requests() const { return early_requests_; }
  // Requests sent, since construction.
  int64_t requests() const { return requests_; }
  // Replies taken by before_layer() (inside the next forward), since
  // construction.
  int64_t replies_in_forward() const { return replies_in_forward_; }

 private:
  void on_ready(size_t k);
  void send(int server);

  ps::Client& client_;  // outlives this object (header)
  std::vector<Variable> dense_;
  std::vector<Tensor> zero_grads_;
  std::vector<int64_t> hook_ids_;
  // By dense parameter: the servers whose ranges hold some of its floats;
  // by server: how many dense parameters it needs.
  std::vector<std::vector<int>> servers_of_;
  std::vector<int64_t> needs_;
  // The armed step: its request, the gradients so far (zeros until a hook
  // fires), the parameters still to fire and each server's count.
  std::unique_ptr<ps::LayeredStep> step_;
  std::vector<Tensor> grads_;
  std::vector<bool> fired_;
  std::vector<int64_t> waiting_;
  int64_t unfired_ = 0;
  bool poisoned_ = false;  // a non-finite gradient: nothing more is sent
  int64_t early_requests_ = 0;
  int64_t requests_ = 0;
  int64_t replies_in_forward_ = 0;
  // The step whose replies are still coming (end_backward() to settle())
  // and where they go; by module: the servers holding its parameters.
  std::unique_ptr<ps::LayeredStep> in_flight_;
  std::vector<Tensor> out_;
  std::unordered_map<const autograd::VariableImpl*, size_t> index_of_;
  std::unordered_map<const nn::Module*, std::vector<int>> layer_servers_;
};

}  // namespace dtrain::strategy
