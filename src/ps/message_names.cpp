// The names of messages.h's enums, for log lines and errors (messages.cpp
// holds the codec).
#include <string_view>

#include "ps/messages.h"

namespace dtrain::ps {

std::string_view to_string(Kind kind) {
  switch (kind) {
    case Kind::kInit:
      return "init";
    case Kind::kPull:
      return "pull";
    case Kind::kPush:
      return "push";
    case Kind::kPullRows:
      return "pull_rows";
    case Kind::kPushRows:
      return "push_rows";
    case Kind::kStats:
      return "stats";
    case Kind::kGetState:
      return "get_state";
    case Kind::kSetState:
      return "set_state";
    case Kind::kGoodbye:
      return "goodbye";
    case Kind::kHeartbeat:
      return "heartbeat";
    case Kind::kPushCompressed:
      return "compressed push";
    case Kind::kReply:
      return "reply";
  }
  return "unknown";
}

std::string_view to_string(WorkerState state) {
  switch (state) {
    case WorkerState::kLive:
      return "live";
    case WorkerState::kDead:
      return "dead";
    case WorkerState::kFinished:
      return "finished";
  }
  return "unknown";
}

}  // namespace dtrain::ps
