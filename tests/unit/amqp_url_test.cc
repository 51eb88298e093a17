#include "core/amqp_url.h"

#include <doctest/doctest.h>

#include <string>

namespace workerpool {
namespace {

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST_CASE("ParseAmqpUrl reads credentials, host, port and vhost") {
  Result<AmqpUrl> url = ParseAmqpUrl("amqp://alice:s3cret@broker:5673/prod");
  REQUIRE(url.ok());
  CHECK(url->user == "alice");
  CHECK(url->password == "s3cret");
  CHECK(url->host == "broker");
  CHECK(url->port == 5673);
  CHECK(url->vhost == "prod");
  CHECK_FALSE(url->tls);
}

TEST_CASE("ParseAmqpUrl defaults: guest, port 5672, vhost '/'") {
  Result<AmqpUrl> url = ParseAmqpUrl("amqp://localhost");
  REQUIRE(url.ok());
  CHECK(url->user == "guest");
  CHECK(url->password == "guest");
  CHECK(url->port == 5672);
  CHECK(url->vhost == "/");
}

TEST_CASE("ParseAmqpUrl: a lone trailing slash names the empty vhost") {
  CHECK(ParseAmqpUrl("amqp://h/")->vhost == "");
  CHECK(ParseAmqpUrl("amqp://h/%2f")->vhost == "/");
  CHECK(ParseAmqpUrl("amqp://h/%2Fa")->vhost == "/a");
}

TEST_CASE("ParseAmqpUrl: amqps defaults to port 5671") {
  Result<AmqpUrl> url = ParseAmqpUrl("amqps://u:p@h");
  REQUIRE(url.ok());
  CHECK(url->tls);
  CHECK(url->port == 5671);
}

TEST_CASE("ParseAmqpUrl percent-decodes user and password") {
  Result<AmqpUrl> url = ParseAmqpUrl("amqp://a%40b:p%3Aw@h");
  REQUIRE(url.ok());
  CHECK(url->user == "a@b");
  CHECK(url->password == "p:w");
}

TEST_CASE("ParseAmqpUrl reads IPv6 hosts and query parameters") {
  Result<AmqpUrl> url =
      ParseAmqpUrl("amqp://[::1]:5680?heartbeat=5&connection_timeout=2500");
  REQUIRE(url.ok());
  CHECK(url->host == "::1");
  CHECK(url->port == 5680);
  CHECK(url->heartbeat_s == 5);
  CHECK(url->connection_timeout_ms == 2500);
}

TEST_CASE("ParseAmqpUrl errors name what is wrong and hide the password") {
  struct Case {
    const char* url;
    const char* says;
  } cases[] = {
      {"http://h", "must start with amqp://"},
      {"amqp//guest@h", "must start with amqp://"},
      {"amqp://u:pw@", "no host"},
      {"amqp://u:pw@h:0", "port '0'"},
      {"amqp://u:pw@h:99999", "port '99999'"},
      {"amqp://u:pw@h:x", "port 'x'"},
      {"amqp://u:pw@h/a/b", "may not contain '/'"},
      {"amqp://u:pw@h/%zz", "bad %-escape in the vhost"},
      {"amqp://u:pw@h?heartbeat=x", "heartbeat 'x'"},
      {"amqp://u:pw@h?frame_max=1", "unknown query parameter 'frame_max'"},
      {"amqp://u:pw@h #x", "white space"},
      {"amqp://u:pw@[::1", "unclosed '['"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.url);
    Result<AmqpUrl> url = ParseAmqpUrl(c.url);
    REQUIRE_FALSE(url.ok());
    CHECK(Contains(url.status().message(), c.says));
    CHECK_FALSE(Contains(url.status().message(), "pw"));
  }
}

// What `workerpool check` used to accept (config.cc had a grammar of its own)
// and the service refused at every start; config validation now calls
// ParseAmqpUrl, so these are refused by both (tests/unit/config_test.cc).
TEST_CASE("ParseAmqpUrl refuses what the old config check let through") {
  struct Case {
    const char* url;
    const char* says;
  } cases[] = {
      {"amqp://u:pw@h#frag", "a fragment ('#...') has no meaning here"},
      {"amqp://u:pw@h/a/b", "the vhost may not contain '/'"},
      {"amqp://u:pw@h/%zz", "bad %-escape in the vhost"},
      {"amqp://u%zz:pw@h", "bad %-escape in the user name"},
      {"amqp://u:pw%4@h", "bad %-escape in the password"},
      {"amqp://u:pw@h?frame_max=1", "unknown query parameter 'frame_max'"},
      {"amqp://u:pw@h?heartbeat=65536", "heartbeat '65536'"},
      {"amqp://u:pw@h?heartbeat=", "heartbeat ''"},
      {"amqp://u:pw@h?connection_timeout=0", "connection_timeout '0'"},
      {"amqp://u:pw@h?connection_timeout=-5", "connection_timeout '-5'"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.url);
    Result<AmqpUrl> url = ParseAmqpUrl(c.url);
    REQUIRE_FALSE(url.ok());
    CHECK(Contains(url.status().message(), c.says));
    CHECK_FALSE(Contains(url.status().message(), "pw"));
  }
}

// The errors the old config check gave, word for word: config messages did
// not change for URLs both grammars refused.
TEST_CASE("ParseAmqpUrl errors read as config errors did") {
  CHECK(ParseAmqpUrl("http://h").status().message() ==
        "invalid RabbitMQ URL 'http://h': must start with amqp:// or "
        "amqps://; expected amqp://USER:PASSWORD@HOST[:PORT][/VHOST] (or "
        "amqps://)");
  CHECK(ParseAmqpUrl("amqp://guest:s3cret@:5672").status().message() ==
        "invalid RabbitMQ URL 'amqp://guest:***@:5672': no host; expected "
        "amqp://USER:PASSWORD@HOST[:PORT][/VHOST] (or amqps://)");
  CHECK(ParseAmqpUrl("amqp://h:99999").status().message() ==
        "invalid RabbitMQ URL 'amqp://h:99999': port '99999' is not a number "
        "from 1 to 65535");
}

TEST_CASE("AmqpUrl::Redacted hides the password; Describe names the vhost") {
  Result<AmqpUrl> url = ParseAmqpUrl("amqp://bob:hunter2@h:1234/v%20x");
  REQUIRE(url.ok());
  CHECK(url->Redacted() == "amqp://bob:***@h:1234/v%20x");
  CHECK(url->Describe() == "h:1234 vhost 'v x'");
  CHECK(ParseAmqpUrl("amqp://h")->Redacted() == "amqp://guest:***@h:5672");
}

}  // namespace
}  // namespace workerpool
