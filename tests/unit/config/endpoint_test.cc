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

TEST_CASE("console addresses: an endpoint or a unix socket", "[config][endpoint]") {
    auto tcp = parse_console_address("127.0.0.1:4555").value();
    CHECK_FALSE(tcp.is_unix());
    CHECK(tcp.tcp.port == 4555);
    CHECK(tcp.to_string() == "127.0.0.1:4555");
    CHECK(tcp.is_local());
    CHECK(parse_console_address("[::1]:4555").value().is_local());
    // Wildcards and specific addresses other hosts can reach are not local.
    CHECK_FALSE(parse_console_address("0.0.0.0:4555").value().is_local());
    CHECK_FALSE(parse_console_address("[::]:4555").value().is_local());
    CHECK_FALSE(parse_console_address("10.0.0.1:4555").value().is_local());

    auto unix_socket = parse_console_address("unix:/run/colod/./demo-console.sock").value();
    CHECK(unix_socket.is_unix());
    CHECK(unix_socket.unix_path == "/run/colod/demo-console.sock");
    CHECK(unix_socket.to_string() == "unix:/run/colod/demo-console.sock");
    CHECK(unix_socket.is_local());

    auto error = [](std::string_view text) {
        auto result = parse_console_address(text);
        REQUIRE_FALSE(result.ok());
        return result.error().message();
    };
    CHECK(error("10.0.0.1") == k_syntax);
    CHECK(error("unix:demo.sock") == "the path after unix: must be absolute, e.g. unix:/run/colod/demo-console.sock");
    CHECK(error("unix:/run/colod/..") == "the path after unix: must name the socket file, not a directory");
    CHECK(error("unix:/" + std::string(107, 'x')) ==
          "the path after unix: must be at most 107 bytes (the limit of a unix socket address)");
    CHECK(error("/run/colod/demo-console.sock") ==
          "a unix socket is written unix:PATH, e.g. unix:/run/colod/demo-console.sock");
}
