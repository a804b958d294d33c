// ServerCopies: the launcher's view of which live ps servers hold a copy of
// each server's key range, when a dead server's range is taken over by a
// backup (distributed.ps.replicas = R with the takeover on,
// docs/parameter-server.md "A backup takes over"). Range p is served by
// server p and copied to servers (p+1)...(p+R) mod S. When the server that
// serves a range dies, its first live holder in that order takes it over
// (as the workers' clients ask them) and serves it unreplicated for the
// rest of the run; a dead backup is no longer a holder. A range whose last
// holder died is lost.
//
// The view is the launcher's own bookkeeping, from the exits it sees: it
// cannot know that a live backup refused a lagging copy (then the workers'
// calls end with their TimeoutError naming the server, and the job stops),
// and it counts a replacement that took a range back as its only holder.
// Both err on the side of stopping the job.
//
// Internal to cli/ (cli/supervisor.h). A value type; not thread-safe.
// Errors: none (a slot out of range is ignored).
#pragma once

#include <cstddef>
#include <vector>

namespace dtrain::cli {

class ServerCopies {
 public:
  // What one server's death did to the ranges it served.
  struct Death {
    struct Range {
      int range = 0;   // the range's original server
      int taker = -1;  // the live holder that serves it now; -1: no copy is left
    };
    std::vector<Range> served;      // the ranges the dead server served, in index order
    bool covered() const;           // every range it served has a live taker
    std::vector<int> lost() const;  // the ranges left without a copy
  };

  ServerCopies(int servers, int replicas);

  // Records that server `dead` died (no replacement counted yet).
  Death record_death(int dead);
  // Records that a replacement of server `slot` serves its own range (taken
  // from a copy or a checkpoint): it becomes that range's only holder.
  void record_replacement(int slot);
  // The servers, in order, that died while holding a copy of `range`.
  const std::vector<int>& died_holding(int range) const {
    return died_holding_[static_cast<size_t>(range)];
  }
  // Whether server `slot`'s death left its range with a live taker (then
  // its slot need not finish for the job to finish).
  bool taken_over(int slot) const;

 private:
  int servers_;
  // By range: its live holders, the serving one first.
  std::vector<std::vector<int>> holders_;
  std::vector<std::vector<int>> died_holding_;
  std::vector<bool> dead_;
};

}  // namespace dtrain::cli
