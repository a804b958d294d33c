#include "comm/rendezvous/host_address.h"

#include <unistd.h>

namespace dtrain::comm {

bool is_wildcard_host(const std::string& host) {
  return host == "*" || host == "0.0.0.0" || host == "::";
}

std::string this_host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "localhost";
  return name;
}

}  // namespace dtrain::comm
