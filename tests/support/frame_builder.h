// SPDX-License-Identifier: GPL-2.0-or-later
// Real Ethernet frames for tests of code that looks into packets: IPv4 and IPv6 TCP and UDP,
// ICMP echo and ARP, with correct IP, TCP, UDP and ICMP checksums (computed here from
// scratch, in full, and independently of core/), and readers that check a frame's TCP
// checksum by a full recomputation and pick its TCP fields out by their fixed offsets.
// Frames carry no 802.1Q tag unless asked and are not padded (as the guest's NIC sends them),
// except ARP (60 bytes, as every stack sends it).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace colod::test::frames {

using Mac = std::array<uint8_t, 6>;
using Ipv6 = std::array<uint8_t, 16>;

inline constexpr uint8_t k_fin = 0x01, k_syn = 0x02, k_rst = 0x04, k_psh = 0x08, k_ack = 0x10;

struct Host4 {
    Mac mac;
    uint32_t ip;  // host byte order
    uint16_t port = 0;
};
struct Host6 {
    Mac mac;
    Ipv6 ip;
    uint16_t port = 0;
};

struct Tcp {
    uint32_t seq = 0;
    uint32_t ack = 0;
    uint8_t flags = k_ack;
    uint16_t window = 64240;
    std::string payload;
    std::vector<uint8_t> options;  // padded to a multiple of 4 with EOL
};

namespace detail {

class Writer {
public:
    void u8(uint8_t v) { m_out.push_back(v); }
    void u16(uint16_t v) {
        u8(static_cast<uint8_t>(v >> 8));
        u8(static_cast<uint8_t>(v));
    }
    void u32(uint32_t v) {
        u16(static_cast<uint16_t>(v >> 16));
        u16(static_cast<uint16_t>(v));
    }
    void bytes(std::span<const uint8_t> b) { m_out.insert(m_out.end(), b.begin(), b.end()); }
    void text(const std::string& s) { m_out.insert(m_out.end(), s.begin(), s.end()); }
    size_t size() const { return m_out.size(); }
    void put16(size_t at, uint16_t v) {
        m_out[at] = static_cast<uint8_t>(v >> 8);
        m_out[at + 1] = static_cast<uint8_t>(v);
    }
    std::vector<uint8_t>& raw() { return m_out; }

private:
    std::vector<uint8_t> m_out;
};

// The plain ones' complement sum (RFC 1071) of `data`, added to `sum`, not folded.
inline uint64_t sum_words(std::span<const uint8_t> data, uint64_t sum = 0) {
    for (size_t i = 0; i < data.size(); i += 2)
        sum += (uint64_t{data[i]} << 8) | (i + 1 < data.size() ? data[i + 1] : 0);
    return sum;
}
inline uint16_t fold(uint64_t sum) {
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return static_cast<uint16_t>(sum);
}
inline uint16_t checksum(std::span<const uint8_t> data, uint64_t initial = 0) {
    return static_cast<uint16_t>(~fold(sum_words(data, initial)));
}

inline void ethernet(Writer& w, const Mac& to, const Mac& from, uint16_t type, int vlan) {
    w.bytes(to);
    w.bytes(from);
    if (vlan >= 0) {
        w.u16(0x8100);
        w.u16(static_cast<uint16_t>(vlan));
    }
    w.u16(type);
}

inline uint64_t pseudo4(uint32_t source, uint32_t destination, uint8_t protocol, size_t length) {
    return uint64_t{source >> 16} + (source & 0xffff) + (destination >> 16) + (destination & 0xffff) + protocol +
           length;
}

inline uint64_t pseudo6(const Ipv6& source, const Ipv6& destination, uint8_t next, size_t length) {
    uint64_t sum = sum_words(source) + sum_words(destination);
    return sum + (length >> 16) + (length & 0xffff) + next;
}

// IPv4 header with its checksum, then `payload` (whose checksum the caller filled in).
inline void ipv4(Writer& w, uint32_t source, uint32_t destination, uint8_t protocol, uint16_t id,
                 std::span<const uint8_t> payload) {
    size_t at = w.size();
    w.u8(0x45);
    w.u8(0);
    w.u16(static_cast<uint16_t>(20 + payload.size()));
    w.u16(id);
    w.u16(0x4000);  // don't fragment
    w.u8(64);
    w.u8(protocol);
    w.u16(0);
    w.u32(source);
    w.u32(destination);
    w.put16(at + 10, checksum(std::span(w.raw()).subspan(at, 20)));
    w.bytes(payload);
}

inline std::vector<uint8_t> tcp_segment(uint16_t source_port, uint16_t destination_port, const Tcp& tcp) {
    std::vector<uint8_t> options = tcp.options;
    while (options.size() % 4)
        options.push_back(0);
    Writer w;
    w.u16(source_port);
    w.u16(destination_port);
    w.u32(tcp.seq);
    w.u32(tcp.ack);
    w.u8(static_cast<uint8_t>(((20 + options.size()) / 4) << 4));
    w.u8(tcp.flags);
    w.u16(tcp.window);
    w.u16(0);  // checksum, below
    w.u16(0);  // urgent pointer
    w.bytes(options);
    w.text(tcp.payload);
    return w.raw();
}

inline std::vector<std::byte> to_bytes(const std::vector<uint8_t>& raw) {
    std::vector<std::byte> out(raw.size());
    for (size_t i = 0; i < raw.size(); ++i)
        out[i] = std::byte{raw[i]};
    return out;
}

inline std::vector<uint8_t> to_raw(std::span<const std::byte> frame) {
    std::vector<uint8_t> raw(frame.size());
    for (size_t i = 0; i < frame.size(); ++i)
        raw[i] = std::to_integer<uint8_t>(frame[i]);
    return raw;
}

inline uint32_t be32(const std::vector<uint8_t>& raw, size_t at) {
    return (uint32_t{raw[at]} << 24) | (uint32_t{raw[at + 1]} << 16) | (uint32_t{raw[at + 2]} << 8) | raw[at + 3];
}
inline uint16_t be16(const std::vector<uint8_t>& raw, size_t at) {
    return static_cast<uint16_t>((raw[at] << 8) | raw[at + 1]);
}

}  // namespace detail

// A TCP segment over IPv4 from `from` to `to` (ports included). `vlan` >= 0 adds an 802.1Q tag.
inline std::vector<std::byte> tcp4(const Host4& from, const Host4& to, const Tcp& tcp, uint16_t ip_id = 1,
                                   int vlan = -1) {
    auto segment = detail::tcp_segment(from.port, to.port, tcp);
    uint16_t sum = detail::checksum(segment, detail::pseudo4(from.ip, to.ip, 6, segment.size()));
    segment[16] = static_cast<uint8_t>(sum >> 8);
    segment[17] = static_cast<uint8_t>(sum);
    detail::Writer w;
    detail::ethernet(w, to.mac, from.mac, 0x0800, vlan);
    detail::ipv4(w, from.ip, to.ip, 6, ip_id, segment);
    return detail::to_bytes(w.raw());
}

// A TCP segment over IPv6 (no extension headers) with the given flow label.
// tcp4()'s frame as a host's TCP stack hands it to a device that finishes checksums (a
// virtio-net header's NEEDS_CSUM, from the TCP header on, the field at 16): the checksum field
// holds the pseudo header's sum, folded and not complemented.
inline std::vector<std::byte> tcp4_unfinished(const Host4& from, const Host4& to, const Tcp& tcp) {
    auto frame = tcp4(from, to, tcp);
    constexpr size_t tcp_at = 14 + 20;
    uint16_t seed = detail::fold(detail::pseudo4(from.ip, to.ip, 6, frame.size() - tcp_at));
    frame[tcp_at + 16] = std::byte(static_cast<uint8_t>(seed >> 8));
    frame[tcp_at + 17] = std::byte(static_cast<uint8_t>(seed));
    return frame;
}

inline std::vector<std::byte> tcp6(const Host6& from, const Host6& to, const Tcp& tcp, uint32_t flow_label = 0) {
    auto segment = detail::tcp_segment(from.port, to.port, tcp);
    uint16_t sum = detail::checksum(segment, detail::pseudo6(from.ip, to.ip, 6, segment.size()));
    segment[16] = static_cast<uint8_t>(sum >> 8);
    segment[17] = static_cast<uint8_t>(sum);
    detail::Writer w;
    detail::ethernet(w, to.mac, from.mac, 0x86dd, -1);
    w.u32(0x60000000u | (flow_label & 0xfffff));
    w.u16(static_cast<uint16_t>(segment.size()));
    w.u8(6);
    w.u8(64);
    w.bytes(from.ip);
    w.bytes(to.ip);
    w.bytes(segment);
    return detail::to_bytes(w.raw());
}

// A UDP datagram over IPv4, with its checksum.
inline std::vector<std::byte> udp4(const Host4& from, const Host4& to, const std::string& payload, uint16_t ip_id = 1) {
    detail::Writer u;
    u.u16(from.port);
    u.u16(to.port);
    u.u16(static_cast<uint16_t>(8 + payload.size()));
    u.u16(0);
    u.text(payload);
    auto datagram = u.raw();
    uint16_t sum = detail::checksum(datagram, detail::pseudo4(from.ip, to.ip, 17, datagram.size()));
    if (sum == 0)
        sum = 0xffff;
    datagram[6] = static_cast<uint8_t>(sum >> 8);
    datagram[7] = static_cast<uint8_t>(sum);
    detail::Writer w;
    detail::ethernet(w, to.mac, from.mac, 0x0800, -1);
    detail::ipv4(w, from.ip, to.ip, 17, ip_id, datagram);
    return detail::to_bytes(w.raw());
}

// A UDP datagram over IPv6 (no extension headers) with the given flow label.
inline std::vector<std::byte> udp6(const Host6& from, const Host6& to, const std::string& payload,
                                   uint32_t flow_label = 0) {
    detail::Writer u;
    u.u16(from.port);
    u.u16(to.port);
    u.u16(static_cast<uint16_t>(8 + payload.size()));
    u.u16(0);
    u.text(payload);
    auto datagram = u.raw();
    uint16_t sum = detail::checksum(datagram, detail::pseudo6(from.ip, to.ip, 17, datagram.size()));
    if (sum == 0)
        sum = 0xffff;
    datagram[6] = static_cast<uint8_t>(sum >> 8);
    datagram[7] = static_cast<uint8_t>(sum);
    detail::Writer w;
    detail::ethernet(w, to.mac, from.mac, 0x86dd, -1);
    w.u32(0x60000000u | (flow_label & 0xfffff));
    w.u16(static_cast<uint16_t>(datagram.size()));
    w.u8(17);
    w.u8(64);
    w.bytes(from.ip);
    w.bytes(to.ip);
    w.bytes(datagram);
    return detail::to_bytes(w.raw());
}

// An ICMP echo request (type 8) or reply (type 0) over IPv4.
inline std::vector<std::byte> icmp4_echo(const Host4& from, const Host4& to, bool reply, uint16_t id, uint16_t seq,
                                         const std::string& payload, uint16_t ip_id = 1) {
    detail::Writer m;
    m.u8(reply ? 0 : 8);
    m.u8(0);
    m.u16(0);
    m.u16(id);
    m.u16(seq);
    m.text(payload);
    auto message = m.raw();
    uint16_t sum = detail::checksum(message);
    message[2] = static_cast<uint8_t>(sum >> 8);
    message[3] = static_cast<uint8_t>(sum);
    detail::Writer w;
    detail::ethernet(w, to.mac, from.mac, 0x0800, -1);
    detail::ipv4(w, from.ip, to.ip, 1, ip_id, message);
    return detail::to_bytes(w.raw());
}

// A broadcast ARP request from `from` asking for `target_ip`, padded to 60 bytes.
inline std::vector<std::byte> arp_request(const Host4& from, uint32_t target_ip) {
    detail::Writer w;
    detail::ethernet(w, Mac{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, from.mac, 0x0806, -1);
    w.u16(1);
    w.u16(0x0800);
    w.u8(6);
    w.u8(4);
    w.u16(1);
    w.bytes(from.mac);
    w.u32(from.ip);
    w.bytes(Mac{});
    w.u32(target_ip);
    w.raw().resize(60, 0);
    return detail::to_bytes(w.raw());
}

// TCP options, NOP-aligned as Linux sends them.
inline std::vector<uint8_t> timestamps(uint32_t value, uint32_t echo) {
    detail::Writer w;
    w.u8(1);
    w.u8(1);
    w.u8(8);
    w.u8(10);
    w.u32(value);
    w.u32(echo);
    return w.raw();
}
// SACK blocks; `leading_nops` 2 aligns the edges on 4 bytes, 1 puts them at odd offsets.
inline std::vector<uint8_t> sack(std::initializer_list<std::pair<uint32_t, uint32_t>> blocks, int leading_nops = 2) {
    detail::Writer w;
    for (int i = 0; i < leading_nops; ++i)
        w.u8(1);
    w.u8(5);
    w.u8(static_cast<uint8_t>(2 + 8 * blocks.size()));
    for (auto [left, right] : blocks) {
        w.u32(left);
        w.u32(right);
    }
    return w.raw();
}

// The TCP header's fields of an untagged IPv4 or IPv6 frame built as above.
struct TcpFields {
    uint32_t seq = 0, ack = 0;
    uint8_t flags = 0;
    std::vector<std::pair<uint32_t, uint32_t>> sack;
    std::vector<std::pair<uint32_t, uint32_t>> timestamps;  // (TSval, TSecr), one if present
};

inline size_t tcp_offset(const std::vector<uint8_t>& raw) {
    return detail::be16(raw, 12) == 0x86dd ? 14 + 40 : 14 + size_t{raw[14] & 0x0fu} * 4;
}

inline TcpFields tcp_fields(std::span<const std::byte> frame) {
    auto raw = detail::to_raw(frame);
    size_t tcp = tcp_offset(raw);
    TcpFields fields{detail::be32(raw, tcp + 4), detail::be32(raw, tcp + 8), raw[tcp + 13], {}};
    size_t header = static_cast<size_t>(raw[tcp + 12] >> 4) * 4;
    for (size_t at = tcp + 20; at < tcp + header;) {
        if (raw[at] == 0)
            break;
        if (raw[at] == 1) {
            ++at;
            continue;
        }
        size_t length = raw[at + 1];
        if (raw[at] == 5)
            for (size_t edge = at + 2; edge + 8 <= at + length; edge += 8)
                fields.sack.emplace_back(detail::be32(raw, edge), detail::be32(raw, edge + 4));
        if (raw[at] == 8 && length == 10)
            fields.timestamps.emplace_back(detail::be32(raw, at + 2), detail::be32(raw, at + 6));
        at += length;
    }
    return fields;
}

// Whether the frame's TCP checksum is right, by summing the pseudo header and the whole
// segment, checksum included (RFC 1071: the sum is all ones).
inline bool tcp_checksum_valid(std::span<const std::byte> frame) {
    auto raw = detail::to_raw(frame);
    size_t tcp = tcp_offset(raw);
    uint64_t pseudo = 0;
    size_t length = 0;
    if (detail::be16(raw, 12) == 0x86dd) {
        length = detail::be16(raw, 18);
        Ipv6 source, destination;
        std::copy_n(raw.begin() + 22, 16, source.begin());
        std::copy_n(raw.begin() + 38, 16, destination.begin());
        pseudo = detail::pseudo6(source, destination, 6, length);
    } else {
        size_t ihl = size_t{raw[14] & 0x0fu} * 4;
        length = detail::be16(raw, 16) - ihl;
        pseudo = detail::pseudo4(detail::be32(raw, 26), detail::be32(raw, 30), 6, length);
    }
    return detail::fold(detail::sum_words(std::span(raw).subspan(tcp, length), pseudo)) == 0xffff;
}

}  // namespace colod::test::frames
