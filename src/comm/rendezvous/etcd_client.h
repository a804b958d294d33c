// A small blocking client of etcd's v3 API through its JSON gateway
// (HTTP/1.1 POSTs of JSON to /v3/..., https://etcd.io/docs/v3.4/dev-guide/api_grpc_gateway/),
// the groundwork of an etcd rendezvous backend (issue #19): keys and values,
// leases as liveness, and a compare-and-swap transaction.
//
// Why the gateway and cpp-httplib: etcd 3.4 (Debian's etcd-server) serves
// the gateway on its client port; its requests are plain JSON, which dtrain
// already reads (nlohmann-json), over HTTP, for which dtrain already links
// cpp-httplib (the live page). gRPC would add a code generator and a large
// runtime for five calls. Keys and values are bytes: the gateway carries
// them base64-encoded (libsodium's codec), and 64-bit numbers as strings.
//
// Every call takes a Deadline, which bounds connecting, sending and reading
// (one connection per call: no state between calls, nothing to go stale when
// etcd restarts). Errors: TimeoutError when the deadline passes (naming the
// endpoint and the operation), CommError for a refused connection, an HTTP
// error or an error etcd reports ("etcd put 'k' at 127.0.0.1:2379 ...: HTTP
// 400: etcdserver: requested lease not found"), DataError for a reply that
// is not the JSON expected. Thread safety: an EtcdClient holds only its
// endpoint; its methods may be called from several threads at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/deadline.h"

namespace dtrain::comm {

struct EtcdKeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;  // writes since creation
  int64_t lease = 0;    // 0: none
};

class EtcdClient {
 public:
  // `endpoint`: "host:port" of etcd's client URL (http). Throws ConfigError
  // for a malformed one; connects only when called.
  explicit EtcdClient(const std::string& endpoint);

  const std::string& endpoint() const { return endpoint_; }

  // Sets `key` to `value`, attached to `lease` when not 0 (the key goes when
  // the lease does). Returns the store's revision after the write.
  int64_t put(const std::string& key, const std::string& value, int64_t lease, Deadline deadline);
  // The key, or nullopt when it does not exist.
  std::optional<EtcdKeyValue> get(const std::string& key, Deadline deadline);
  // Every key that starts with `prefix`, in key order.
  std::vector<EtcdKeyValue> range_prefix(const std::string& prefix, Deadline deadline);
  // Removes `key`; returns how many keys went (0 or 1).
  int64_t erase(const std::string& key, Deadline deadline);
  // Removes every key that starts with `prefix`; returns how many went.
  int64_t erase_prefix(const std::string& prefix, Deadline deadline);

  // A new lease of `ttl_s` seconds; returns its id.
  int64_t lease_grant(int64_t ttl_s, Deadline deadline);
  // Renews `lease` once; returns its TTL in seconds, or 0 when it no longer
  // exists (expired or revoked: its keys are gone).
  int64_t lease_keepalive(int64_t lease, Deadline deadline);
  // Ends `lease` now, removing its keys. CommError when it does not exist.
  void lease_revoke(int64_t lease, Deadline deadline);

  // One transaction: when `key` holds `expected` (nullopt: when `key` does
  // not exist), sets it to `value` (attached to `lease` when not 0) and
  // returns true; otherwise changes nothing and returns false.
  bool compare_and_swap(const std::string& key, const std::optional<std::string>& expected,
                        const std::string& value, int64_t lease, Deadline deadline);

 private:
  std::string endpoint_;
  std::string host_;
  int port_ = 0;
};

// The end of etcd's range of keys that start with `prefix` (the prefix with
// its last byte below 0xff incremented; "\0" when there is none: every key).
std::string etcd_prefix_end(const std::string& prefix);

}  // namespace dtrain::comm
