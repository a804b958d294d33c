#include "comm/rendezvous/etcd_client.h"

#include <fmt/format.h>
#include <httplib.h>
#include <sodium.h>

#include <nlohmann/json.hpp>

#include "comm/rendezvous/launch_env.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

using Json = nlohmann::json;
using namespace std::chrono_literals;

std::string base64(const std::string& bytes) {
  std::string out(sodium_base64_ENCODED_LEN(bytes.size(), sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), reinterpret_cast<const unsigned char*>(bytes.data()),
                    bytes.size(), sodium_base64_VARIANT_ORIGINAL);
  out.resize(out.size() - 1);  // the terminator
  return out;
}

// A gateway number: a string of digits ("5"), a JSON number, or absent (0:
// the gateway leaves out fields that hold their default).
int64_t number(const Json& object, const char* name) {
  const auto it = object.find(name);
  if (it == object.end()) return 0;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_string()) {
    try {
      size_t used = 0;
      const std::string& text = it->get_ref<const std::string&>();
      const int64_t value = std::stoll(text, &used);
      if (used == text.size()) return value;
    } catch (const std::exception&) {
    }
  }
  throw DataError(
      fmt::format("etcd reply: field '{}' is {}, not a 64-bit number", name, it->dump()));
}

// One call: its name and endpoint for errors, the POST and the reply's decoding.
class EtcdCall {
 public:
  EtcdCall(const std::string& host, int port, const std::string& endpoint, std::string operation)
      : host_(host), port_(port), endpoint_(endpoint), operation_(std::move(operation)) {}

  [[noreturn]] void fail(const std::string& problem) const {
    throw CommError(-1, fmt::format("etcd {} at {}", operation_, endpoint_), problem);
  }

  std::string decode(const Json& text) const {
    const std::string& b64 = text.get_ref<const std::string&>();
    std::string out(b64.size(), '\0');
    size_t length = 0;
    if (sodium_base642bin(reinterpret_cast<unsigned char*>(out.data()), out.size(), b64.data(),
                          b64.size(), nullptr, &length, nullptr,
                          sodium_base64_VARIANT_ORIGINAL) != 0) {
      throw DataError(
          fmt::format("etcd {} at {}: reply holds '{}', not base64", operation_, endpoint_, b64));
    }
    out.resize(length);
    return out;
  }

  // POSTs `request` to `path`; the reply's JSON.
  Json post(const std::string& path, const Json& request, Deadline deadline) const {
    const auto started = std::chrono::steady_clock::now();
    if (deadline.expired()) {
      throw TimeoutError(-1, fmt::format("etcd {} at {}", operation_, endpoint_), 0ms,
                         "etcd's reply (the deadline had passed before the call)");
    }
    const auto left = std::max(deadline.remaining(), std::chrono::milliseconds(1));
    httplib::Client client(host_, port_);
    client.set_connection_timeout(left);
    client.set_read_timeout(left);
    client.set_write_timeout(left);
    // The body arrives through the receiver: etcd's gateway ends an error
    // reply with an HTTP trailer (Grpc-Trailer-Content-Type), which
    // cpp-httplib 0.11 fails to read after the body was complete. A reply
    // whose status and whole JSON body arrived is taken as it is.
    httplib::Request req;
    req.method = "POST";
    req.path = path;
    req.body = request.dump();
    req.set_header("Content-Type", "application/json");
    int status = 0;
    std::string body;
    req.response_handler = [&status](const httplib::Response& r) {
      status = r.status;
      return true;
    };
    req.content_receiver = [&body](const char* data, size_t size, uint64_t, uint64_t) {
      body.append(data, size);
      return true;
    };
    httplib::Response response;
    httplib::Error error = httplib::Error::Success;
    const bool sent = client.send(req, response, error);
    Json reply = Json::parse(body, nullptr, false);
    if (!sent && (status == 0 || reply.is_discarded())) {
      if (deadline.expired()) {
        throw TimeoutError(-1, fmt::format("etcd {} at {}", operation_, endpoint_),
                           std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::steady_clock::now() - started),
                           "etcd's reply");
      }
      fail(httplib::to_string(error));
    }
    if (reply.is_discarded()) {
      fail(fmt::format("HTTP {}: a reply that is not JSON: '{}'", status, body.substr(0, 200)));
    }
    if (status != 200 || !reply.is_object()) {
      const std::string message =
          reply.is_object() && reply.contains("message") && reply["message"].is_string()
              ? reply["message"].get<std::string>()
              : body.substr(0, 200);
      fail(fmt::format("HTTP {}: {}", status, message));
    }
    return reply;
  }

  EtcdKeyValue key_value(const Json& kv) const {
    EtcdKeyValue out;
    if (kv.contains("key")) out.key = decode(kv["key"]);
    if (kv.contains("value")) out.value = decode(kv["value"]);
    out.create_revision = number(kv, "create_revision");
    out.mod_revision = number(kv, "mod_revision");
    out.version = number(kv, "version");
    out.lease = number(kv, "lease");
    return out;
  }

 private:
  const std::string& host_;
  int port_;
  const std::string& endpoint_;
  std::string operation_;
};

}  // namespace

std::string etcd_prefix_end(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    auto& last = reinterpret_cast<unsigned char&>(end.back());
    if (last < 0xff) {
      ++last;
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');
}

EtcdClient::EtcdClient(const std::string& endpoint) : endpoint_(endpoint) {
  const HostPort hp = parse_host_port(endpoint, "etcd endpoint");
  host_ = hp.host;
  port_ = hp.port;
}

int64_t EtcdClient::put(const std::string& key, const std::string& value, int64_t lease,
                        Deadline deadline) {
  const EtcdCall call(host_, port_, endpoint_, fmt::format("put '{}'", key));
  Json request{{"key", base64(key)}, {"value", base64(value)}};
  if (lease != 0) request["lease"] = std::to_string(lease);
  const Json reply = call.post("/v3/kv/put", request, deadline);
  return number(reply.value("header", Json::object()), "revision");
}

std::optional<EtcdKeyValue> EtcdClient::get(const std::string& key, Deadline deadline) {
  const EtcdCall call(host_, port_, endpoint_, fmt::format("get '{}'", key));
  const Json reply = call.post("/v3/kv/range", {{"key", base64(key)}}, deadline);
  if (!reply.contains("kvs") || reply["kvs"].empty()) return std::nullopt;
  return call.key_value(reply["kvs"][0]);
}

std::vector<EtcdKeyValue> EtcdClient::range_prefix(const std::string& prefix, Deadline deadline) {
  const EtcdCall call(host_, port_, endpoint_, fmt::format("range '{}*'", prefix));
  const Json reply = call.post(
      "/v3/kv/range", {{"key", base64(prefix)}, {"range_end", base64(etcd_prefix_end(prefix))}},
      deadline);
  std::vector<EtcdKeyValue> out;
  for (const Json& kv : reply.value("kvs", Json::array())) out.push_back(call.key_value(kv));
  return out;
}

int64_t EtcdClient::erase(const std::string& key, Deadline deadline) {
  const EtcdCall call(host_, port_, endpoint_, fmt::format("delete '{}'", key));
  return number(call.post("/v3/kv/deleterange", {{"key", base64(key)}}, deadline), "deleted");
}

int64_t EtcdClient::erase_prefix(const std::string& prefix, Deadline deadline) {
  const EtcdCall call(host_, port_, endpoint_, fmt::format("delete '{}*'", prefix));
  return number(call.post("/v3/kv/deleterange",
                          {{"key", base64(prefix)}, {"range_end", base64(etcd_prefix_end(prefix))}},
                          deadline),
                "deleted");
}

int64_t EtcdClient::lease_grant(int64_t ttl_s, Deadline deadline) {
  const EtcdCall call(host_, port_, endpoint_, fmt::format("lease grant of {} s", ttl_s));
  const Json reply = call.post("/v3/lease/grant", {{"TTL", ttl_s}}, deadline);
  const int64_t id = number(reply, "ID");
  if (id == 0) call.fail(fmt::format("no lease id in the reply {}", reply.dump()));
  return id;
}

int64_t EtcdClient::lease_keepalive(int64_t lease, Deadline deadline) {
  const EtcdCall call(host_, port_, endpoint_, fmt::format("lease keepalive of {}", lease));
  const Json reply = call.post("/v3/lease/keepalive", {{"ID", std::to_string(lease)}}, deadline);
  return number(reply.value("result", Json::object()), "TTL");
}

void EtcdClient::lease_revoke(int64_t lease, Deadline deadline) {
  const EtcdCall call(host_, port_, endpoint_, fmt::format("lease revoke of {}", lease));
  call.post("/v3/lease/revoke", {{"ID", std::to_string(lease)}}, deadline);
}

bool EtcdClient::compare_and_swap(const std::string& key,
                                  const std::optional<std::string>& expected,
                                  const std::string& value, int64_t lease, Deadline deadline) {
  const EtcdCall call(host_, port_, endpoint_, fmt::format("compare-and-swap '{}'", key));
  Json compare{{"key", base64(key)}, {"result", "EQUAL"}};
  if (expected) {
    compare["target"] = "VALUE";
    compare["value"] = base64(*expected);
  } else {
    compare["target"] = "CREATE";  // created at revision 0: does not exist
    compare["create_revision"] = "0";
  }
  Json put{{"key", base64(key)}, {"value", base64(value)}};
  if (lease != 0) put["lease"] = std::to_string(lease);
  const Json request{{"compare", Json::array({compare})},
                     {"success", Json::array({Json{{"requestPut", put}}})}};
  return call.post("/v3/kv/txn", request, deadline).value("succeeded", false);
}

}  // namespace dtrain::comm
