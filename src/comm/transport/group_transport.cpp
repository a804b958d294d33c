#include "comm/transport/group_transport.h"

#include <algorithm>

#include "core/error.h"

namespace dtrain::comm {

GroupTransport::GroupTransport(Transport& parent, std::vector<int> members)
    : parent_(parent), members_(std::move(members)) {
  const auto it = std::find(members_.begin(), members_.end(), parent_.rank());
  if (it == members_.end()) {
    throw UsageError(
        fmt::format("GroupTransport: rank {} is not among the group's members", parent_.rank()));
  }
  rank_ = static_cast<int>(it - members_.begin());
}

int GroupTransport::parent_rank(int peer) const {
  if (peer < 0 || peer >= size()) {
    throw UsageError(fmt::format("GroupTransport: peer {} outside group of size {}", peer, size()));
  }
  return members_[static_cast<size_t>(peer)];
}

}  // namespace dtrain::comm
