// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/net/frames.h"

#include <algorithm>

#include <fmt/format.h>

namespace colod::core::net {

namespace {

constexpr Mac k_broadcast = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
constexpr uint16_t k_arp_hw_ethernet = 1;
constexpr uint16_t k_arp_op_request = 1;
constexpr uint16_t k_arp_op_reply = 2;
constexpr uint16_t k_rarp_op_request_reverse = 3;
// ARP for Ethernet/IPv4 (RFC 826): htype, ptype, hlen, plen, op, sha, spa, tha, tpa.
constexpr size_t k_arp_body = 28;

class FrameWriter {
public:
    void put_mac(const Mac& mac) {
        for (uint8_t b : mac)
            m_out.push_back(std::byte{b});
    }
    void put_u8(uint8_t v) { m_out.push_back(std::byte{v}); }
    void put_u16(uint16_t v) {  // network byte order
        put_u8(static_cast<uint8_t>(v >> 8));
        put_u8(static_cast<uint8_t>(v));
    }
    void put_u32(uint32_t v) {
        put_u16(static_cast<uint16_t>(v >> 16));
        put_u16(static_cast<uint16_t>(v));
    }
    std::vector<std::byte> padded() && {
        if (m_out.size() < k_min_frame)
            m_out.resize(k_min_frame, std::byte{0});
        return std::move(m_out);
    }

private:
    std::vector<std::byte> m_out;
};

// Ethernet header then an Ethernet/IPv4 ARP body.
std::vector<std::byte> arp_frame(uint16_t ethertype, uint16_t op, const Mac& sha, uint32_t spa, const Mac& tha,
                                 uint32_t tpa) {
    FrameWriter w;
    w.put_mac(k_broadcast);
    w.put_mac(sha);
    w.put_u16(ethertype);
    w.put_u16(k_arp_hw_ethernet);
    w.put_u16(k_ethertype_ipv4);
    w.put_u8(6);
    w.put_u8(4);
    w.put_u16(op);
    w.put_mac(sha);
    w.put_u32(spa);
    w.put_mac(tha);
    w.put_u32(tpa);
    return std::move(w).padded();
}

uint16_t u16_at(std::span<const std::byte> bytes, size_t offset) {
    return static_cast<uint16_t>((std::to_integer<uint16_t>(bytes[offset]) << 8) | std::to_integer<uint16_t>(bytes[offset + 1]));
}
uint32_t u32_at(std::span<const std::byte> bytes, size_t offset) {
    return (uint32_t{u16_at(bytes, offset)} << 16) | u16_at(bytes, offset + 2);
}
bool mac_at(std::span<const std::byte> bytes, size_t offset, const Mac& mac) {
    for (size_t i = 0; i < mac.size(); ++i)
        if (std::to_integer<uint8_t>(bytes[offset + i]) != mac[i])
            return false;
    return true;
}

}  // namespace

bool is_host_ipv4(uint32_t ipv4) {
    uint8_t first = static_cast<uint8_t>(ipv4 >> 24);
    return first != 0 && first != 127 && first < 224;
}

std::vector<std::byte> rarp_announce(Mac mac) {
    return arp_frame(k_ethertype_rarp, k_rarp_op_request_reverse, mac, 0, mac, 0);
}

std::vector<std::byte> gratuitous_arp(Mac mac, uint32_t ipv4) {
    return arp_frame(k_ethertype_arp, k_arp_op_request, mac, ipv4, Mac{}, ipv4);
}

std::optional<SenderAddress> sender_address(std::span<const std::byte> frame, Mac mac) {
    if (frame.size() < k_ethernet_header || !mac_at(frame, 6, mac))
        return std::nullopt;
    size_t offset = 12;
    uint16_t ethertype = u16_at(frame, offset);
    if (ethertype == k_ethertype_vlan) {
        offset += 4;
        if (frame.size() < offset + 2)
            return std::nullopt;
        ethertype = u16_at(frame, offset);
    }
    auto body = frame.subspan(offset + 2);
    std::optional<SenderAddress> found;
    if (ethertype == k_ethertype_arp) {
        if (body.size() < k_arp_body || u16_at(body, 0) != k_arp_hw_ethernet || u16_at(body, 2) != k_ethertype_ipv4 ||
            std::to_integer<uint8_t>(body[4]) != 6 || std::to_integer<uint8_t>(body[5]) != 4)
            return std::nullopt;
        uint16_t op = u16_at(body, 6);
        if ((op != k_arp_op_request && op != k_arp_op_reply) || !mac_at(body, 8, mac))
            return std::nullopt;
        found = SenderAddress{u32_at(body, 14), AddressSource::Arp};
    } else if (ethertype == k_ethertype_ipv4) {
        // Version 4 and a header of at least 20 bytes (IHL >= 5); the source is at byte 12.
        if (body.size() < 20)
            return std::nullopt;
        uint8_t version_ihl = std::to_integer<uint8_t>(body[0]);
        if ((version_ihl >> 4) != 4 || (version_ihl & 0x0f) < 5)
            return std::nullopt;
        found = SenderAddress{u32_at(body, 12), AddressSource::Ipv4};
    }
    if (!found || !is_host_ipv4(found->ipv4))
        return std::nullopt;
    return found;
}

std::optional<uint32_t> sender_ipv4(std::span<const std::byte> frame, Mac mac) {
    auto found = sender_address(frame, mac);
    if (!found)
        return std::nullopt;
    return found->ipv4;
}

std::string format_mac(Mac mac) {
    return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
}

std::string format_ipv4(uint32_t ipv4) {
    return fmt::format("{}.{}.{}.{}", ipv4 >> 24, (ipv4 >> 16) & 0xff, (ipv4 >> 8) & 0xff, ipv4 & 0xff);
}

}  // namespace colod::core::net
