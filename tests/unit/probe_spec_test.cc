// {index} and what probes aim at.
#include "core/probe_spec.h"

#include <doctest/doctest.h>

namespace workerpool {
namespace {

TEST_CASE("ExpandIndex replaces every {index}, nothing else") {
  CHECK(ExpandIndex("70{index}", 3) == "703");
  CHECK(ExpandIndex("{index}-{index}", 12) == "12-12");
  CHECK(ExpandIndex("${HOME}/{idx}/{index", 1) == "${HOME}/{idx}/{index");
  CHECK(ExpandIndex("", 1) == "");
}

TEST_CASE("tcp probe addresses") {
  Result<ProbeAddress> v4 = ParseTcpProbe("127.0.0.1:7000");
  REQUIRE(v4.ok());
  CHECK(v4->host == "127.0.0.1");
  CHECK(v4->port == 7000);
  Result<ProbeAddress> v6 = ParseTcpProbe("[::1]:80");
  REQUIRE(v6.ok());
  CHECK(v6->host == "::1");
  CHECK(ParseTcpProbe("localhost:1")->host == "127.0.0.1");
  for (const char* bad :
       {"", "127.0.0.1", "host:80", ":80", "1.2.3.4:0", "1.2.3.4:65536",
        "1.2.3.4:8x", "[1.2.3.4]:80", "::1:80"}) {
    CAPTURE(bad);
    CHECK_FALSE(ParseTcpProbe(bad).ok());
  }
}

TEST_CASE("http probe URLs") {
  Result<ProbeAddress> url =
      ParseHttpProbe("http://127.0.0.1:7001/healthz?x=1");
  REQUIRE(url.ok());
  CHECK(url->port == 7001);
  CHECK(url->path == "/healthz?x=1");
  CHECK(url->authority == "127.0.0.1:7001");
  Result<ProbeAddress> bare = ParseHttpProbe("http://localhost");
  REQUIRE(bare.ok());
  CHECK(bare->port == 80);
  CHECK(bare->path == "/");
  CHECK(ParseHttpProbe("http://[::1]/x")->port == 80);
  CHECK(ParseHttpProbe("http://[::1]:81/x")->port == 81);
  for (const char* bad :
       {"https://127.0.0.1/", "127.0.0.1/", "http://", "http://name/x",
        "http://127.0.0.1:80/a b", "http://127.0.0.1:0/"}) {
    CAPTURE(bad);
    CHECK_FALSE(ParseHttpProbe(bad).ok());
  }
}

TEST_CASE("HTTP status lines") {
  CHECK(*ParseHttpStatusLine("HTTP/1.1 200 OK") == 200);
  CHECK(*ParseHttpStatusLine("HTTP/1.0 503 Service Unavailable\r") == 503);
  CHECK(*ParseHttpStatusLine("HTTP/1.1 204\r") == 204);
  for (const char* bad : {"", "HTTP/1.1", "HTTP/1.1 2x0 OK", "SSH-2.0-x y z",
                          "HTTP/1.1 2000 OK"}) {
    CAPTURE(bad);
    CHECK_FALSE(ParseHttpStatusLine(bad).ok());
  }
  CHECK(HttpProbePasses(200));
  CHECK(HttpProbePasses(302));
  CHECK_FALSE(HttpProbePasses(404));
  CHECK_FALSE(HttpProbePasses(500));
}

}  // namespace
}  // namespace workerpool
