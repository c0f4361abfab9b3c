// SPDX-License-Identifier: GPL-2.0-or-later
#include "config/endpoint.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <array>

namespace colod::config {

namespace {

constexpr std::string_view k_syntax_rule =
    "expected ADDRESS:PORT with a numeric IPv4 address or a bracketed IPv6 address, "
    "e.g. 10.0.0.1:9400 or [fd00::1]:9400";

base::Error invalid(std::string_view rule) { return base::Error(base::Errc::Invalid, std::string(rule)); }

base::Result<uint16_t> parse_port(std::string_view text) {
    if (text.empty())
        return invalid(k_syntax_rule);
    uint32_t port = 0;
    for (char c : text) {
        if (c < '0' || c > '9')
            return invalid(k_syntax_rule);
        port = port * 10 + static_cast<uint32_t>(c - '0');
        if (port > 65535)
            return invalid("port must be between 1 and 65535");
    }
    if (port == 0)
        return invalid("port must be between 1 and 65535");
    return static_cast<uint16_t>(port);
}

// inet_pton wants a NUL-terminated string; an address is never longer than this.
constexpr size_t k_max_address = INET6_ADDRSTRLEN;

}  // namespace

std::string Endpoint::to_string() const {
    if (family == AddressFamily::Ipv6)
        return fmt::format("[{}]:{}", host, port);
    return fmt::format("{}:{}", host, port);
}

bool Endpoint::is_wildcard() const { return host == "0.0.0.0" || host == "::"; }

bool Endpoint::is_loopback() const {
    if (family == AddressFamily::Ipv6)
        return host == "::1";
    return host.starts_with("127.");
}

base::Result<Endpoint> parse_endpoint(std::string_view text) {
    Endpoint endpoint;
    std::string_view address;
    std::string_view port;
    if (text.starts_with('[')) {
        const size_t close = text.find(']');
        if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
            return invalid(k_syntax_rule);
        address = text.substr(1, close - 1);
        port = text.substr(close + 2);
        endpoint.family = AddressFamily::Ipv6;
    } else {
        const size_t colon = text.rfind(':');
        if (colon == std::string_view::npos)
            return invalid(k_syntax_rule);
        address = text.substr(0, colon);
        port = text.substr(colon + 1);
        if (address.find(':') != std::string_view::npos)
            return invalid("an IPv6 address must be in brackets, e.g. [fd00::1]:9400");
    }
    if (address.empty() || address.size() >= k_max_address)
        return invalid(k_syntax_rule);

    std::array<char, k_max_address> c_address{};
    address.copy(c_address.data(), address.size());
    std::array<unsigned char, sizeof(in6_addr)> binary{};
    const int af = endpoint.family == AddressFamily::Ipv6 ? AF_INET6 : AF_INET;
    if (inet_pton(af, c_address.data(), binary.data()) != 1) {
        if (endpoint.family == AddressFamily::Ipv6)
            return invalid("not a numeric IPv6 address");
        // Letters mean someone wrote a host name; say why that is refused.
        for (char c : address) {
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
                return invalid("host names are not accepted, use a numeric address");
        }
        return invalid("not a numeric IPv4 address (four numbers 0-255, e.g. 10.0.0.1)");
    }
    std::array<char, k_max_address> canonical{};
    if (inet_ntop(af, binary.data(), canonical.data(), canonical.size()) == nullptr)
        return invalid(k_syntax_rule);
    endpoint.host = canonical.data();
    endpoint.port = TRY(parse_port(port));
    return endpoint;
}

constexpr std::string_view k_unix_prefix = "unix:";

std::string ConsoleAddress::to_string() const {
    if (is_unix())
        return fmt::format("{}{}", k_unix_prefix, unix_path.string());
    return tcp.to_string();
}

base::Result<ConsoleAddress> parse_console_address(std::string_view text) {
    ConsoleAddress address;
    if (!text.starts_with(k_unix_prefix)) {
        if (text.starts_with('/'))
            return invalid("a unix socket is written unix:PATH, e.g. unix:/run/colod/demo-console.sock");
        address.tcp = TRY(parse_endpoint(text));
        return address;
    }
    const std::string_view path = text.substr(k_unix_prefix.size());
    if (!path.starts_with('/'))
        return invalid("the path after unix: must be absolute, e.g. unix:/run/colod/demo-console.sock");
    address.unix_path = std::filesystem::path(path).lexically_normal();
    if (!address.unix_path.has_filename())
        return invalid("the path after unix: must name the socket file, not a directory");
    if (address.unix_path.native().size() > k_max_socket_path)
        return invalid(fmt::format("the path after unix: must be at most {} bytes (the limit of a unix socket address)",
                                   k_max_socket_path));
    return address;
}

}  // namespace colod::config
