// GroupTransport: a Transport over a subset of another transport's ranks,
// renumbered 0..k-1 in the order given. Sub-communicators
// (Communicator::split / subgroup) run on it; their distinct tags keep their
// messages apart from the parent's on the shared transport.
//
// Ownership: references the parent transport, which must outlive it (the
// Communicator that creates a sub-communicator documents that it must outlive
// its children). Thread safety and blocking: those of the parent. Errors
// raised by the parent name ranks of the parent.
#pragma once

#include <utility>
#include <vector>

#include "comm/transport/transport.h"

namespace dtrain::comm {

class GroupTransport final : public Transport {
 public:
  // `members[i]` is the parent rank of group rank i; the parent's own rank
  // must be among them.
  GroupTransport(Transport& parent, std::vector<int> members);

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(members_.size()); }

  void send(int peer, uint64_t tag, std::span<const std::byte> payload, const std::string& what,
            Deadline deadline) override {
    parent_.send(parent_rank(peer), tag, payload, what, deadline);
  }
  std::vector<std::byte> recv(int peer, uint64_t tag, const std::string& what,
                              Deadline deadline) override {
    return parent_.recv(parent_rank(peer), tag, what, deadline);
  }
  void recv_into(int peer, uint64_t tag, std::span<std::byte> out, const std::string& what,
                 Deadline deadline) override {
    parent_.recv_into(parent_rank(peer), tag, out, what, deadline);
  }
  void send_owned(int peer, uint64_t tag, OwnedBuffer payload, const std::string& what,
                  Deadline deadline) override {
    parent_.send_owned(parent_rank(peer), tag, std::move(payload), what, deadline);
  }
  void send_parts(int peer, uint64_t tag, std::span<const std::byte> head,
                  std::span<const std::byte> body, const std::string& what,
                  Deadline deadline) override {
    parent_.send_parts(parent_rank(peer), tag, head, body, what, deadline);
  }
  void recv_visit(int peer, uint64_t tag, const std::string& what, Deadline deadline,
                  const MessageVisitor& use) override {
    parent_.recv_visit(parent_rank(peer), tag, what, deadline, use);
  }
  void recv_fold(int peer, uint64_t tag, std::span<std::byte> head, size_t body_bytes,
                 const std::string& what, Deadline deadline, const PieceVisitor& fold,
                 const MessageVisitor& mismatch) override {
    parent_.recv_fold(parent_rank(peer), tag, head, body_bytes, what, deadline, fold, mismatch);
  }
  // Aborts the parent: a failed transport is unusable for every group on it.
  // `culprit` is passed on as is (the ranks in this layer's errors are the
  // parent's).
  void abort(int culprit, const std::string& reason) noexcept override {
    parent_.abort(culprit, reason);
  }
  bool link_shaped() const override { return parent_.link_shaped(); }

 private:
  int parent_rank(int peer) const;

  Transport& parent_;
  std::vector<int> members_;
  int rank_ = -1;
};

}  // namespace dtrain::comm
