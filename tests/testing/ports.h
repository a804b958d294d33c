// Loopback TCP ports for tests that start servers by port number (a
// coordinator under mpirun, etcd). A port free now may be taken before the
// caller binds it: the window is short, and the tests that use these say so.
// Never blocks; thread-safe (no state).
#pragma once

namespace dtrain::testing {

// A port on 127.0.0.1 that the kernel just handed out and released.
int free_loopback_port();

// Whether `port` on 127.0.0.1 can be bound right now.
bool loopback_port_is_free(int port);

}  // namespace dtrain::testing
