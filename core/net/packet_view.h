// SPDX-License-Identifier: GPL-2.0-or-later
// Where the headers of an Ethernet frame are: one 802.1Q tag looked through, IPv4 or IPv6,
// TCP, UDP and ICMP. Shared by COLO's packet comparator (primary) and TCP rewriter (secondary),
// which both look at frames the guests wrote or the network sent: nothing here trusts a length
// field, and a frame that does not parse as what it claims to be is simply not an IP frame.
//
// Offsets only: the view holds no pointer into the frame, so the frame may be rewritten in
// place while its view is used.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

namespace colod::core::net {

inline constexpr uint8_t k_ip_icmp = 1;
inline constexpr uint8_t k_ip_tcp = 6;
inline constexpr uint8_t k_ip_udp = 17;
inline constexpr uint8_t k_ip_icmpv6 = 58;
inline constexpr uint16_t k_ethertype_ipv6 = 0x86dd;

// TCP header flags (byte 13).
inline constexpr uint8_t k_tcp_fin = 0x01;
inline constexpr uint8_t k_tcp_syn = 0x02;
inline constexpr uint8_t k_tcp_rst = 0x04;
inline constexpr uint8_t k_tcp_psh = 0x08;
inline constexpr uint8_t k_tcp_ack = 0x10;

enum class IpVersion : uint8_t { None = 0, V4 = 4, V6 = 6 };

struct PacketView {
    uint16_t ethertype = 0;
    uint16_t vlan = 0;            // the tag's VLAN id (12 bits), 0 without a tag
    size_t l3 = 0;                // where the ethertype's payload starts
    IpVersion ip = IpVersion::None;
    // IP only (ip != None):
    uint8_t protocol = 0;         // IPv4 protocol, or IPv6 next header
    size_t l4 = 0;                // where the IP payload starts
    size_t ip_end = 0;            // where the IP packet ends (its length field; Ethernet padding follows)
    // The IP payload is not a whole transport header and payload: an IPv4 fragment, or an
    // IPv6 packet with extension headers (not walked).
    bool partial = false;
    std::array<uint8_t, 16> src{}, dst{};  // IPv4 addresses in the first 4 bytes
};

// The headers of `frame`. nullopt for a frame shorter than an Ethernet header (or its tag);
// a frame whose ethertype says IPv4/IPv6 but whose IP header is malformed or truncated
// (version, header length, a total length beyond the frame) parses with ip == None.
std::optional<PacketView> parse_packet(std::span<const std::byte> frame);

struct TcpView {
    size_t offset = 0;        // the TCP header in the frame
    size_t header_length = 0; // data offset * 4, options included
    size_t payload = 0;       // where the payload starts
    size_t end = 0;           // where the segment ends (the IP packet's end)
    uint16_t source_port = 0, destination_port = 0;
    uint32_t seq = 0, ack = 0;
    uint8_t flags = 0;
    size_t payload_length() const { return end - payload; }
};

// The TCP segment of an unfragmented IP packet whose header (options included) fits in it.
std::optional<TcpView> tcp_view(std::span<const std::byte> frame, const PacketView& packet);

// Source and destination ports of a UDP datagram (a whole 8-byte header present).
std::optional<std::array<uint16_t, 2>> udp_ports(std::span<const std::byte> frame, const PacketView& packet);

uint16_t load_be16(std::span<const std::byte> bytes, size_t offset);
uint32_t load_be32(std::span<const std::byte> bytes, size_t offset);
void store_be32(std::span<std::byte> bytes, size_t offset, uint32_t value);

// Replaces the 4 bytes at `at` of `segment` (a TCP segment, header first) by `value`, big
// endian, and updates the segment's checksum at `checksum_at` incrementally (RFC 1624, eqn. 3:
// HC' = ~(~HC + ~m + m')). `at` may be odd (a SACK edge after one NOP): the words are those of
// the segment, counted from its start. Neither range may overlap the other. With
// `checksum_at` k_no_checksum the value alone is replaced (a segment whose checksum is still to
// be computed over what it will hold: its field has only the pseudo-header's sum).
inline constexpr size_t k_no_checksum = SIZE_MAX;
void rewrite_be32(std::span<std::byte> segment, size_t checksum_at, size_t at, uint32_t value);

// Sequence-number order (RFC 793 §3.3, modulo 2^32): whether a comes before b.
inline bool seq_before(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) < 0; }

}  // namespace colod::core::net
