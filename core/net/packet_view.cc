// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/net/packet_view.h"

#include <algorithm>

#include "core/net/frames.h"

namespace colod::core::net {

namespace {

uint8_t byte_at(std::span<const std::byte> bytes, size_t offset) { return std::to_integer<uint8_t>(bytes[offset]); }

constexpr size_t k_ipv4_header = 20;
constexpr size_t k_ipv6_header = 40;
constexpr size_t k_tcp_header = 20;
constexpr size_t k_udp_header = 8;

void parse_ipv4(std::span<const std::byte> frame, PacketView& view) {
    auto ip = frame.subspan(view.l3);
    if (ip.size() < k_ipv4_header)
        return;
    uint8_t version_ihl = byte_at(ip, 0);
    size_t header = size_t{version_ihl & 0x0fu} * 4;
    size_t total = load_be16(ip, 2);
    if ((version_ihl >> 4) != 4 || header < k_ipv4_header || total < header || total > ip.size())
        return;
    view.ip = IpVersion::V4;
    view.protocol = byte_at(ip, 9);
    view.l4 = view.l3 + header;
    view.ip_end = view.l3 + total;
    // More fragments, or a fragment offset: not a whole transport segment.
    uint16_t fragment = load_be16(ip, 6);
    view.partial = (fragment & 0x3fff) != 0;
    std::copy_n(ip.begin() + 12, 4, reinterpret_cast<std::byte*>(view.src.data()));
    std::copy_n(ip.begin() + 16, 4, reinterpret_cast<std::byte*>(view.dst.data()));
}

void parse_ipv6(std::span<const std::byte> frame, PacketView& view) {
    auto ip = frame.subspan(view.l3);
    if (ip.size() < k_ipv6_header || (byte_at(ip, 0) >> 4) != 6)
        return;
    size_t payload = load_be16(ip, 4);
    if (payload == 0 || k_ipv6_header + payload > ip.size())
        return;  // a jumbogram (hop-by-hop option) or truncated
    view.ip = IpVersion::V6;
    view.protocol = byte_at(ip, 6);
    view.l4 = view.l3 + k_ipv6_header;
    view.ip_end = view.l4 + payload;
    view.partial = view.protocol != k_ip_tcp && view.protocol != k_ip_udp && view.protocol != k_ip_icmpv6;
    std::copy_n(ip.begin() + 8, 16, reinterpret_cast<std::byte*>(view.src.data()));
    std::copy_n(ip.begin() + 24, 16, reinterpret_cast<std::byte*>(view.dst.data()));
}

// The ones' complement sum of the 16-bit words of `segment` (counted from its start) that
// overlap [begin, end), a missing last byte counting as zero.
uint32_t word_sum(std::span<const std::byte> segment, size_t begin, size_t end) {
    uint32_t sum = 0;
    for (size_t i = begin & ~size_t{1}; i < end; i += 2) {
        uint32_t high = byte_at(segment, i);
        uint32_t low = i + 1 < segment.size() ? byte_at(segment, i + 1) : 0;
        sum += (high << 8) | low;
    }
    return sum;
}

uint16_t fold(uint32_t sum) {
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return static_cast<uint16_t>(sum);
}

}  // namespace

uint16_t load_be16(std::span<const std::byte> bytes, size_t offset) {
    return static_cast<uint16_t>((byte_at(bytes, offset) << 8) | byte_at(bytes, offset + 1));
}

uint32_t load_be32(std::span<const std::byte> bytes, size_t offset) {
    return (uint32_t{load_be16(bytes, offset)} << 16) | load_be16(bytes, offset + 2);
}

void store_be32(std::span<std::byte> bytes, size_t offset, uint32_t value) {
    for (size_t i = 0; i < 4; ++i)
        bytes[offset + i] = std::byte(static_cast<uint8_t>(value >> (24 - 8 * i)));
}

std::optional<PacketView> parse_packet(std::span<const std::byte> frame) {
    if (frame.size() < k_ethernet_header)
        return std::nullopt;
    PacketView view;
    size_t type_at = 12;
    view.ethertype = load_be16(frame, type_at);
    if (view.ethertype == k_ethertype_vlan) {
        if (frame.size() < k_ethernet_header + 4)
            return std::nullopt;
        view.vlan = load_be16(frame, 14) & 0x0fff;
        type_at = 16;
        view.ethertype = load_be16(frame, type_at);
    }
    view.l3 = type_at + 2;
    if (view.ethertype == k_ethertype_ipv4)
        parse_ipv4(frame, view);
    else if (view.ethertype == k_ethertype_ipv6)
        parse_ipv6(frame, view);
    return view;
}

std::optional<TcpView> tcp_view(std::span<const std::byte> frame, const PacketView& packet) {
    if (packet.ip == IpVersion::None || packet.partial || packet.protocol != k_ip_tcp)
        return std::nullopt;
    auto segment = frame.subspan(packet.l4, packet.ip_end - packet.l4);
    if (segment.size() < k_tcp_header)
        return std::nullopt;
    size_t header = static_cast<size_t>(byte_at(segment, 12) >> 4) * 4;
    if (header < k_tcp_header || header > segment.size())
        return std::nullopt;
    TcpView tcp;
    tcp.offset = packet.l4;
    tcp.header_length = header;
    tcp.payload = packet.l4 + header;
    tcp.end = packet.ip_end;
    tcp.source_port = load_be16(segment, 0);
    tcp.destination_port = load_be16(segment, 2);
    tcp.seq = load_be32(segment, 4);
    tcp.ack = load_be32(segment, 8);
    tcp.flags = byte_at(segment, 13);
    return tcp;
}

std::optional<std::array<uint16_t, 2>> udp_ports(std::span<const std::byte> frame, const PacketView& packet) {
    if (packet.ip == IpVersion::None || packet.partial || packet.protocol != k_ip_udp ||
        packet.ip_end - packet.l4 < k_udp_header)
        return std::nullopt;
    return std::array<uint16_t, 2>{load_be16(frame, packet.l4), load_be16(frame, packet.l4 + 2)};
}

void rewrite_be32(std::span<std::byte> segment, size_t checksum_at, size_t at, uint32_t value) {
    if (checksum_at == k_no_checksum) {
        store_be32(segment, at, value);
        return;
    }
    uint16_t old_words = fold(word_sum(segment, at, at + 4));
    store_be32(segment, at, value);
    uint16_t new_words = fold(word_sum(segment, at, at + 4));
    uint16_t checksum = load_be16(segment, checksum_at);
    uint32_t sum = uint32_t{static_cast<uint16_t>(~checksum)} + uint32_t{static_cast<uint16_t>(~old_words)} + new_words;
    uint16_t updated = static_cast<uint16_t>(~fold(sum));
    segment[checksum_at] = std::byte(static_cast<uint8_t>(updated >> 8));
    segment[checksum_at + 1] = std::byte(static_cast<uint8_t>(updated));
}

}  // namespace colod::core::net
