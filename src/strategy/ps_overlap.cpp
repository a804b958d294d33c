// PsOverlap (ps_overlap.h): gradient-ready hooks that send each server's
// request of the step as soon as its range of the gradient is final.
#include "strategy/ps_overlap.h"

#include <algorithm>
#include <span>
#include <utility>

#include "core/error.h"
#include "core/finite.h"

namespace dtrain::strategy {

PsOverlap::PsOverlap(ps::Client& client, std::vector<Variable> dense,
                     std::vector<Tensor> zero_grads)
    : client_(client), dense_(std::move(dense)), zero_grads_(std::move(zero_grads)) {
  const ps::ShardPlan& plan = client_.plan();
  DTRAIN_CHECK(plan.tensors().size() == dense_.size(), "plan of {} tensors, {} dense parameters",
               plan.tensors().size(), dense_.size());
  servers_of_.resize(dense_.size());
  needs_.assign(static_cast<size_t>(client_.num_servers()), 0);
  for (int s = 0; s < client_.num_servers(); ++s) {
    for (const ps::ShardSlice& slice : plan.slices(s)) {
      std::vector<int>& servers = servers_of_[slice.tensor];
      if (servers.empty() || servers.back() != s) {
        servers.push_back(s);
        ++needs_[static_cast<size_t>(s)];
      }
    }
  }
  for (size_t k = 0; k < dense_.size(); ++k) index_of_.emplace(dense_[k].impl().get(), k);
  for (size_t k = 0; k < dense_.size(); ++k) {
    hook_ids_.push_back(dense_[k].register_grad_ready_hook([this, k](Variable&) {
      if (step_ != nullptr) on_ready(k);
    }));
  }
}

PsOverlap::~PsOverlap() {
  for (size_t k = 0; k < hook_ids_.size(); ++k) dense_[k].remove_grad_ready_hook(hook_ids_[k]);
}

void PsOverlap::arm(const ps::DensePush& push, uint64_t min_version) {
  step_ = std::make_unique<ps::LayeredStep>(client_, push, min_version);
  grads_ = zero_grads_;
  fired_.assign(dense_.size(), false);
  waiting_ = needs_;
  unfired_ = static_cast<int64_t>(dense_.size());
  poisoned_ = false;
}

void PsOverlap::on_ready(size_t k) {
  if (fired_[k]) return;
  fired_[k] = true;
  --unfired_;
  const Tensor& grad = dense_[k].dense_grad();
  if (!all_finite(std::span<const float>(grad.data(), static_cast<size_t>(grad.numel())))) {
    poisoned_ = true;
  }
  grads_[k] = grad;
  if (poisoned_) return;
  for (int s : servers_of_[k]) {
    if (--waiting_[static_cast<size_t>(s)] == 0) send(s);
  }
}

void PsOverlap::send(int server) {
  step_->send(server, grads_);
  ++requests_;
  if (unfired_ > 0) ++early_requests_;
}

uint64_t PsOverlap::finish(const std::vector<Tensor>& out) {
  end_backward(out);
  return *settle();
}

void PsOverlap::end_backward(const std::vector<Tensor>& out) {
  DTRAIN_CHECK(step_ != nullptr, "end of backward of a step that was not armed");
  DTRAIN_CHECK(!poisoned_, "end of backward after a non-finite gradient");
  DTRAIN_CHECK(in_flight_ == nullptr, "a step still in flight when the next one ends");
  // Unused parameters (no hook fired): their gradient if an earlier pass
  // left one, zeros otherwise; this also sends every server of a worker
  // without rows (no backward ran).
  for (size_t k = 0; k < dense_.size(); ++k) {
    if (fired_[k]) continue;
    fired_[k] = true;
    --unfired_;
    if (dense_[k].has_grad()) grads_[k] = dense_[k].dense_grad();
  }
  for (int s = 0; s < client_.num_servers(); ++s) {
    if (!step_->sent(s)) send(s);
  }
  in_flight_ = std::move(step_);
  out_ = out;
}

bool PsOverlap::replies_pending() const {
  if (in_flight_ == nullptr) return false;
  for (int s = 0; s < client_.num_servers(); ++s) {
    if (!in_flight_->taken(s)) return true;
  }
  return false;
}

void PsOverlap::wait_server(int server) {
  if (in_flight_ == nullptr || in_flight_->taken(server)) return;
  try {
    in_flight_->wait(server, out_);
  } catch (...) {
    in_flight_.reset();
    throw;
  }
}

void PsOverlap::before_layer(const nn::Module& layer) {
  if (in_flight_ == nullptr) return;
  auto found = layer_servers_.find(&layer);
  if (found == layer_servers_.end()) {
    std::vector<int> servers;
    for (const Variable& p : layer.parameters()) {
      const auto k = index_of_.find(p.impl().get());
      if (k == index_of_.end()) continue;  // not a dense parameter of the client
      servers.insert(servers.end(), servers_of_[k->second].begin(), servers_of_[k->second].end());
    }
    std::sort(servers.begin(), servers.end());
    servers.erase(std::unique(servers.begin(), servers.end()), servers.end());
    found = layer_servers_.emplace(&layer, std::move(servers)).first;
  }
  for (int s : found->second) {
    if (in_flight_->taken(s)) continue;
    wait_server(s);
    ++replies_in_forward_;
  }
}

std::optional<uint64_t> PsOverlap::settle() {
  if (in_flight_ == nullptr) return std::nullopt;
  const std::unique_ptr<ps::LayeredStep> step = std::move(in_flight_);
  const uint64_t version = step->finish(out_);
  out_.clear();
  return version;
}

}  // namespace dtrain::strategy
