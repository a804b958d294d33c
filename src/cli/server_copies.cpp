#include "cli/server_copies.h"

#include <algorithm>

namespace dtrain::cli {

bool ServerCopies::Death::covered() const {
  return std::all_of(served.begin(), served.end(), [](const Range& r) { return r.taker >= 0; });
}

std::vector<int> ServerCopies::Death::lost() const {
  std::vector<int> ranges;
  for (const Range& r : served) {
    if (r.taker < 0) ranges.push_back(r.range);
  }
  return ranges;
}

ServerCopies::ServerCopies(int servers, int replicas)
    : servers_(servers),
      holders_(static_cast<size_t>(std::max(servers, 0))),
      died_holding_(holders_.size()),
      dead_(holders_.size(), false) {
  const int backups = std::clamp(replicas, 0, std::max(servers - 1, 0));
  for (int range = 0; range < servers; ++range) {
    for (int k = 0; k <= backups; ++k) {
      holders_[static_cast<size_t>(range)].push_back((range + k) % servers);
    }
  }
}

ServerCopies::Death ServerCopies::record_death(int dead) {
  Death death;
  if (dead < 0 || dead >= servers_) return death;
  dead_[static_cast<size_t>(dead)] = true;
  for (int range = 0; range < servers_; ++range) {
    std::vector<int>& holders = holders_[static_cast<size_t>(range)];
    const auto at = std::find(holders.begin(), holders.end(), dead);
    if (at == holders.end()) continue;
    died_holding_[static_cast<size_t>(range)].push_back(dead);
    const bool served = at == holders.begin();
    holders.erase(at);
    if (!served) continue;
    // The first live holder takes the range over and ships it to nobody.
    if (holders.size() > 1) holders.erase(holders.begin() + 1, holders.end());
    death.served.push_back({range, holders.empty() ? -1 : holders.front()});
  }
  return death;
}

void ServerCopies::record_replacement(int slot) {
  if (slot < 0 || slot >= servers_) return;
  dead_[static_cast<size_t>(slot)] = false;
  std::vector<int>& holders = holders_[static_cast<size_t>(slot)];
  if (holders.empty()) holders.push_back(slot);
}

bool ServerCopies::taken_over(int slot) const {
  if (slot < 0 || slot >= servers_ || !dead_[static_cast<size_t>(slot)]) return false;
  const std::vector<int>& holders = holders_[static_cast<size_t>(slot)];
  return !holders.empty() && holders.front() != slot;
}

}  // namespace dtrain::cli
