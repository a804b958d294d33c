// The host names and addresses the job's connections bind and advertise:
// whether a listen host means "every interface", and this machine's name
// (what peers use when a process listens on every interface and nothing
// else is advertised). Pure apart from gethostname(2); never blocks, never
// throws; safe from any thread.
#pragma once

#include <string>

namespace dtrain::comm {

// "*", "0.0.0.0" or "::".
bool is_wildcard_host(const std::string& host);

// gethostname(2), or "localhost" when it fails.
std::string this_host_name();

}  // namespace dtrain::comm
