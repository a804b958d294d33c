// The etcd client against a real etcd (Debian's etcd-server, installed by
// scripts/setup.sh) that the test starts on free loopback ports with a
// temporary data folder and kills at the end; skipped when etcd is missing.
#include "comm/rendezvous/etcd_client.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "testing/etcd_server.h"
#include "testing/ports.h"

namespace dtrain::comm {
namespace {

using namespace std::chrono_literals;

using testing::EtcdServer;

class Etcd : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::etcd_installed()) GTEST_SKIP() << "etcd is not installed (scripts/setup.sh)";
    server_.emplace();
    client_.emplace(testing::ready_etcd_client(*server_));
  }
  EtcdClient& client() { return *client_; }
  std::optional<EtcdServer> server_;
  std::optional<EtcdClient> client_;
};

Deadline soon() { return Deadline::after(10s); }

TEST_F(Etcd, PutGetRangeErase) {
  const int64_t first = client().put("job/a", "1", 0, soon());
  const int64_t second = client().put("job/b", std::string("\0\xff bytes", 8), 0, soon());
  EXPECT_GT(second, first);
  client().put("jobz", "outside the prefix", 0, soon());
  const auto a = client().get("job/a", soon());
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->value, "1");
  EXPECT_EQ(a->version, 1);
  EXPECT_EQ(a->create_revision, first);
  EXPECT_EQ(client().get("job/none", soon()), std::nullopt);
  const std::vector<EtcdKeyValue> range = client().range_prefix("job/", soon());
  ASSERT_EQ(range.size(), 2u);
  EXPECT_EQ(range[0].key, "job/a");
  EXPECT_EQ(range[1].key, "job/b");
  EXPECT_EQ(range[1].value, std::string("\0\xff bytes", 8));
  EXPECT_EQ(client().erase("job/a", soon()), 1);
  EXPECT_EQ(client().erase("job/a", soon()), 0);
  EXPECT_EQ(client().range_prefix("job/", soon()).size(), 1u);
}

TEST(EtcdPrefix, End) {
  EXPECT_EQ(etcd_prefix_end("ab"), "ac");
  EXPECT_EQ(etcd_prefix_end(std::string("a\xff", 2)), "b");
  EXPECT_EQ(etcd_prefix_end(std::string("\xff", 1)), std::string(1, '\0'));
}

TEST_F(Etcd, LeasesKeepKeysAliveUntilRevoked) {
  const int64_t lease = client().lease_grant(30, soon());
  client().put("member/0", "tcp://127.0.0.1:1", lease, soon());
  EXPECT_EQ(client().get("member/0", soon())->lease, lease);
  const int64_t ttl = client().lease_keepalive(lease, soon());
  EXPECT_GT(ttl, 0);
  EXPECT_LE(ttl, 30);
  client().lease_revoke(lease, soon());
  EXPECT_EQ(client().get("member/0", soon()), std::nullopt);  // went with its lease
  EXPECT_EQ(client().lease_keepalive(lease, soon()), 0);
  try {
    client().put("member/1", "x", lease, soon());
    ADD_FAILURE() << "put on a revoked lease";
  } catch (const CommError& e) {
    EXPECT_NE(
        std::string(e.what()).find(fmt::format("etcd put 'member/1' at {}", server_->endpoint())),
        std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("lease not found"), std::string::npos) << e.what();
  }
}

TEST_F(Etcd, CompareAndSwap) {
  EXPECT_TRUE(client().compare_and_swap("gen", std::nullopt, "1", 0, soon()));
  EXPECT_FALSE(client().compare_and_swap("gen", std::nullopt, "2", 0, soon()));  // exists
  EXPECT_FALSE(client().compare_and_swap("gen", "7", "2", 0, soon()));
  EXPECT_EQ(client().get("gen", soon())->value, "1");
  EXPECT_TRUE(client().compare_and_swap("gen", "1", "2", 0, soon()));
  EXPECT_EQ(client().get("gen", soon())->value, "2");
}

TEST_F(Etcd, ErrorsNameTheEndpointAndTheOperation) {
  const int dead = testing::free_loopback_port();
  EtcdClient nobody(fmt::format("127.0.0.1:{}", dead));
  try {
    nobody.get("k", soon());
    ADD_FAILURE() << "a get without etcd";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find(fmt::format("etcd get 'k' at 127.0.0.1:{}", dead)),
              std::string::npos)
        << e.what();
  }
  // An expired deadline is a TimeoutError naming the call.
  try {
    client().get("k", Deadline::after(0ms));
    ADD_FAILURE() << "no timeout";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("etcd get 'k' at " + server_->endpoint()),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(EtcdClient("no-port"), ConfigError);
}

}  // namespace
}  // namespace dtrain::comm
