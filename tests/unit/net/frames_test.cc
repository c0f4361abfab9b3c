// SPDX-License-Identifier: GPL-2.0-or-later
// The announce frames byte for byte, the parser that learns a guest's IPv4 address, and MAC
// addresses as text.
#include <catch2/catch.hpp>

#include <vector>

#include "core/net/frames.h"

using namespace colod;
using namespace colod::core::net;

namespace {

constexpr Mac k_mac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};

std::vector<std::byte> bytes(std::initializer_list<int> values) {
    std::vector<std::byte> out;
    for (int v : values)
        out.push_back(std::byte(static_cast<uint8_t>(v)));
    return out;
}

std::vector<std::byte> padded(std::vector<std::byte> frame) {
    frame.resize(60, std::byte{0});
    return frame;
}

}  // namespace

TEST_CASE("rarp_announce is a broadcast RARP request reverse for the MAC, 60 bytes") {
    auto frame = rarp_announce(k_mac);
    CHECK(frame == padded(bytes({
                       0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  // to everyone
                       0x52, 0x54, 0x00, 0x12, 0x34, 0x56,  // from the guest's MAC
                       0x80, 0x35,                          // RARP
                       0x00, 0x01, 0x08, 0x00, 6, 4,        // Ethernet, IPv4, lengths
                       0x00, 0x03,                          // request reverse
                       0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0, 0, 0, 0,  // sender
                       0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0, 0, 0, 0,  // target
                   })));
    CHECK(frame.size() == 60);
}

TEST_CASE("gratuitous_arp announces the address as sender and target, 60 bytes") {
    auto frame = gratuitous_arp(k_mac, 0xc0a80a07);
    CHECK(frame == padded(bytes({
                       0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  //
                       0x52, 0x54, 0x00, 0x12, 0x34, 0x56,  //
                       0x08, 0x06,                          // ARP
                       0x00, 0x01, 0x08, 0x00, 6, 4,        //
                       0x00, 0x01,                          // request
                       0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 192, 168, 10, 7,  // sender
                       0, 0, 0, 0, 0, 0, 192, 168, 10, 7,                    // target
                   })));
    // What the parser learns from it is the address it announces.
    CHECK(sender_ipv4(frame, k_mac) == 0xc0a80a07u);
    auto found = sender_address(frame, k_mac);
    REQUIRE(found);
    CHECK(found->source == AddressSource::Arp);
}

TEST_CASE("sender_ipv4 reads ARP and IPv4 frames from the MAC and nothing else") {
    auto ipv4 = padded(bytes({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x00,
                              0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 1, 2, 3, 10, 1, 2, 1}));
    CHECK(sender_ipv4(ipv4, k_mac) == 0x0a010203u);
    CHECK(sender_address(ipv4, k_mac)->source == AddressSource::Ipv4);
    // From another MAC.
    CHECK(!sender_ipv4(ipv4, Mac{0x52, 0x54, 0x00, 0x12, 0x34, 0x57}));
    // Inside one 802.1Q tag.
    auto tagged = ipv4;
    tagged.insert(tagged.begin() + 12, {std::byte{0x81}, std::byte{0x00}, std::byte{0x00}, std::byte{0x05}});
    CHECK(sender_ipv4(tagged, k_mac) == 0x0a010203u);
    // Not IPv4 version 4, or a header length below 20 bytes.
    auto v6 = ipv4;
    v6[14] = std::byte{0x65};
    CHECK(!sender_ipv4(v6, k_mac));
    auto short_ihl = ipv4;
    short_ihl[14] = std::byte{0x44};
    CHECK(!sender_ipv4(short_ihl, k_mac));
    // Addresses no host owns.
    for (uint8_t first : {0, 127, 224, 239, 240, 255}) {
        auto odd = ipv4;
        odd[26] = std::byte{first};
        INFO("first octet " << int(first));
        CHECK(!sender_ipv4(odd, k_mac));
    }
    // Every truncation of both kinds gives nothing rather than reading past the end.
    auto arp = gratuitous_arp(k_mac, 0x0a000001);
    for (size_t len = 0; len < 42; ++len) {
        INFO("truncated to " << len);
        CHECK(!sender_ipv4(std::span(arp).first(len), k_mac));
        CHECK(!sender_ipv4(std::span(ipv4).first(std::min<size_t>(len, 33)), k_mac));
    }
    CHECK(sender_ipv4(std::span(arp).first(42), k_mac) == 0x0a000001u);
    // ARP: a reply counts, RARP and other opcodes do not, nor a sender hardware address that
    // is not the guest's, nor another protocol.
    auto reply = arp;
    reply[21] = std::byte{2};
    CHECK(sender_ipv4(reply, k_mac) == 0x0a000001u);
    auto op3 = arp;
    op3[21] = std::byte{3};
    CHECK(!sender_ipv4(op3, k_mac));
    CHECK(!sender_ipv4(rarp_announce(k_mac), k_mac));
    auto proxied = arp;
    proxied[27] = std::byte{0x99};
    CHECK(!sender_ipv4(proxied, k_mac));
    auto other_protocol = arp;
    other_protocol[16] = std::byte{0x86};
    CHECK(!sender_ipv4(other_protocol, k_mac));
}

TEST_CASE("format_mac and format_ipv4 write the usual forms") {
    CHECK(format_mac(Mac{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}) == "52:54:00:ab:cd:ef");
    CHECK(format_ipv4(0xc0a80a07) == "192.168.10.7");
}
