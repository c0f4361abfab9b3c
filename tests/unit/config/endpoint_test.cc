// SPDX-License-Identifier: GPL-2.0-or-later
#include <catch2/catch.hpp>

#include "config/endpoint.h"

using namespace colod::config;

namespace {
std::string endpoint_error(std::string_view text) {
    auto result = parse_endpoint(text);
    REQUIRE_FALSE(result.ok());
    return result.error().message();
}
const std::string k_syntax =
    "expected ADDRESS:PORT with a numeric IPv4 address or a bracketed IPv6 address, "
    "e.g. 10.0.0.1:9400 or [fd00::1]:9400";
}  // namespace

TEST_CASE("IPv4 endpoints", "[config][endpoint]") {
    auto endpoint = parse_endpoint("10.0.0.1:9400").value();
    CHECK(endpoint.family == AddressFamily::Ipv4);
    CHECK(endpoint.host == "10.0.0.1");
    CHECK(endpoint.port == 9400);
    CHECK(endpoint.to_string() == "10.0.0.1:9400");
    CHECK_FALSE(endpoint.is_wildcard());
    CHECK_FALSE(endpoint.is_loopback());
    CHECK(parse_endpoint("0.0.0.0:1").value().is_wildcard());
    CHECK(parse_endpoint("127.0.0.2:65535").value().is_loopback());
}

TEST_CASE("IPv6 endpoints are bracketed and canonical", "[config][endpoint]") {
    auto endpoint = parse_endpoint("[fd00:0::0001]:9400").value();
    CHECK(endpoint.family == AddressFamily::Ipv6);
    CHECK(endpoint.host == "fd00::1");
    CHECK(endpoint.to_string() == "[fd00::1]:9400");
    CHECK(parse_endpoint("[::]:4555").value().is_wildcard());
    CHECK(parse_endpoint("[::1]:4555").value().is_loopback());
}

TEST_CASE("bad endpoints say what is wrong", "[config][endpoint]") {
    CHECK(endpoint_error("10.0.0.1") == k_syntax);
    CHECK(endpoint_error("10.0.0.1:") == k_syntax);
    CHECK(endpoint_error(":9400") == k_syntax);
    CHECK(endpoint_error("10.0.0.1:94x") == k_syntax);
    CHECK(endpoint_error("10.0.0.1:-1") == k_syntax);
    CHECK(endpoint_error("[::1]9400") == k_syntax);
    CHECK(endpoint_error("[::1") == k_syntax);
    CHECK(endpoint_error("10.0.0.1:0") == "port must be between 1 and 65535");
    CHECK(endpoint_error("10.0.0.1:65536") == "port must be between 1 and 65535");
    CHECK(endpoint_error("10.0.0.1:999999999999") == "port must be between 1 and 65535");
    CHECK(endpoint_error("host-a.example:9400") == "host names are not accepted, use a numeric address");
    CHECK(endpoint_error("10.0.0.256:9400") == "not a numeric IPv4 address (four numbers 0-255, e.g. 10.0.0.1)");
    CHECK(endpoint_error("10.0.1:9400") == "not a numeric IPv4 address (four numbers 0-255, e.g. 10.0.0.1)");
    CHECK(endpoint_error("fd00::1:9400") == "an IPv6 address must be in brackets, e.g. [fd00::1]:9400");
    CHECK(endpoint_error("[fd00::g]:9400") == "not a numeric IPv6 address");
    CHECK(endpoint_error("[10.0.0.1]:9400") == "not a numeric IPv6 address");
}
