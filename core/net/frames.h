// SPDX-License-Identifier: GPL-2.0-or-later
// Ethernet frames the VMM builds or looks into itself: the announcements a secondary sends
// once it has taken over (so that switches and neighbours move the guest's MAC and IPv4
// address to its port), the parser that learns the guest's IPv4 address from frames it sends,
// and MAC addresses as text.
//
// Everything here works on bytes only: no sockets, no guest memory. Frames given to the
// parser are distrusted (they come from the guest): every field is bounds-checked.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace colod::core::net {

using Mac = std::array<uint8_t, 6>;

// The shortest Ethernet frame without its FCS: shorter frames are padded with zeros to it.
inline constexpr size_t k_min_frame = 60;
inline constexpr size_t k_ethernet_header = 14;
inline constexpr uint16_t k_ethertype_ipv4 = 0x0800;
inline constexpr uint16_t k_ethertype_arp = 0x0806;
inline constexpr uint16_t k_ethertype_rarp = 0x8035;
inline constexpr uint16_t k_ethertype_vlan = 0x8100;

// A broadcast RARP "request reverse" (opcode 3) from `mac` asking about `mac`, padded to 60
// bytes: the frame QEMU and others send after a migration. It carries no IPv4 address, so it
// needs none learned; switches update their forwarding table from its source MAC.
std::vector<std::byte> rarp_announce(Mac mac);

// A broadcast gratuitous ARP request from `mac` (RFC 5227 §3 "ARP Announcement": sender and
// target protocol address both `ipv4`, target hardware address zero), padded to 60 bytes.
// Neighbours that cache `ipv4` update it to `mac`. `ipv4` is in host byte order.
std::vector<std::byte> gratuitous_arp(Mac mac, uint32_t ipv4);

enum class AddressSource { Arp, Ipv4 };
struct SenderAddress {
    uint32_t ipv4;  // host byte order
    AddressSource source;
};

// Whether a host could hold `ipv4` (host byte order) as its own unicast address: not in
// 0/8, 127/8, multicast 224/4 or 240/4 (which includes broadcast).
bool is_host_ipv4(uint32_t ipv4);

// The IPv4 address a frame the guest sent claims as its own: the sender protocol address of
// an ARP request or reply whose Ethernet source and sender hardware address are `mac`, else
// the source address of an IPv4 packet whose Ethernet source is `mac`. One 802.1Q tag is
// looked through. Addresses that cannot be a host's own (0.0.0.0 as in ARP probes and DHCP,
// 127/8, multicast, 240/4 and broadcast) give nothing, as does anything truncated or malformed.
std::optional<SenderAddress> sender_address(std::span<const std::byte> frame, Mac mac);
// The address alone (host byte order).
std::optional<uint32_t> sender_ipv4(std::span<const std::byte> frame, Mac mac);

// Lower-case, colon-separated (config::parse_mac reads the config file's form).
std::string format_mac(Mac mac);
// Dotted quad of an address in host byte order.
std::string format_ipv4(uint32_t ipv4);

}  // namespace colod::core::net
