// SPDX-License-Identifier: GPL-2.0-or-later
// The secondary's TCP rewriter on real frames: the offset learnt from both kinds of handshake,
// sequence and acknowledgement numbers (and SACK blocks) moved with checksums that a full
// recomputation accepts, what a checkpoint, a close and the table's bound do, and frames it
// must leave alone.
#include <catch2/catch.hpp>

#include <random>
#include <vector>

#include "core/net/tcp_rewriter.h"
#include "tests/support/frame_builder.h"

using namespace colod::core::net;
using namespace colod::test::frames;
using namespace std::chrono_literals;

namespace {

const Host4 k_client{{0x02, 0, 0, 0, 0, 0x02}, 0x0a000002, 40000};
const Host4 k_guest{{0x52, 0x54, 0, 0x12, 0x34, 0x56}, 0x0a00000a, 80};
const Host4 k_server{{0x02, 0, 0, 0, 0, 0x03}, 0x0a000003, 443};
const Host4 k_guest_client{{0x52, 0x54, 0, 0x12, 0x34, 0x56}, 0x0a00000a, 50000};

constexpr uint32_t k_client_isn = 1000;
constexpr uint32_t k_primary_isn = 0x10000000;
constexpr uint32_t k_secondary_isn = 0xf0000010;  // the offset wraps around 2^32

// Frames whose rewritten bytes the test does not look at.
void outbound(TcpRewriter& rewriter, std::vector<std::byte> frame) { rewriter.outbound(frame); }

// A client connects to the guest: its SYN, the secondary guest's SYN-ACK, the client's ACK
// of the primary's SYN-ACK. Returns the rewritten ACK.
std::vector<std::byte> accept(TcpRewriter& rewriter, const Host4& client = k_client) {
    auto syn = tcp4(client, k_guest, {k_client_isn, 0, k_syn});
    auto before = syn;
    rewriter.inbound(syn);
    CHECK(syn == before);  // nothing known about it yet
    auto syn_ack = tcp4(k_guest, client, {k_secondary_isn, k_client_isn + 1, k_syn | k_ack});
    before = syn_ack;
    rewriter.outbound(syn_ack);
    CHECK(syn_ack == before);  // the SYN-ACK's sequence number cannot be known yet
    auto ack = tcp4(client, k_guest, {k_client_isn + 1, k_primary_isn + 1, k_ack});
    rewriter.inbound(ack);
    return ack;
}

}  // namespace

TEST_CASE("a connection to the guest: the offset comes from the client's ACK of the primary's SYN-ACK", "[net]") {
    TcpRewriter rewriter;
    auto ack = accept(rewriter);
    CHECK(tcp_fields(ack).ack == k_secondary_isn + 1);
    CHECK(tcp_checksum_valid(ack));
    CHECK(rewriter.connections() == 1);

    // The guest's data: its sequence number moves onto the primary's.
    auto reply = tcp4(k_guest, k_client, {k_secondary_isn + 1, k_client_isn + 1, k_ack | k_psh, 502, "hello"});
    rewriter.outbound(reply);
    CHECK(tcp_fields(reply).seq == k_primary_isn + 1);
    CHECK(tcp_fields(reply).ack == k_client_isn + 1);  // the client's numbers are shared
    CHECK(tcp_checksum_valid(reply));

    // The client's acknowledgement and SACK blocks move back; its timestamps stay.
    Tcp sacked{k_client_isn + 1, k_primary_isn + 6, k_ack};
    sacked.options = timestamps(7, 8);
    auto blocks = sack({{k_primary_isn + 100, k_primary_isn + 200}, {k_primary_isn + 300, k_primary_isn + 400}});
    sacked.options.insert(sacked.options.end(), blocks.begin(), blocks.end());
    auto in = tcp4(k_client, k_guest, sacked);
    rewriter.inbound(in);
    auto fields = tcp_fields(in);
    CHECK(fields.ack == k_secondary_isn + 6);
    CHECK(fields.sack == std::vector<std::pair<uint32_t, uint32_t>>{{k_secondary_isn + 100, k_secondary_isn + 200},
                                                                     {k_secondary_isn + 300, k_secondary_isn + 400}});
    CHECK(tcp_checksum_valid(in));

    // SACK edges at odd offsets in the header (one NOP before the option).
    Tcp odd{k_client_isn + 1, k_primary_isn + 6, k_ack};
    odd.options = sack({{k_primary_isn + 10, k_primary_isn + 20}}, 1);
    auto odd_frame = tcp4(k_client, k_guest, odd);
    rewriter.inbound(odd_frame);
    CHECK(tcp_fields(odd_frame).sack ==
          std::vector<std::pair<uint32_t, uint32_t>>{{k_secondary_isn + 10, k_secondary_isn + 20}});
    CHECK(tcp_checksum_valid(odd_frame));

    // Another connection is not touched.
    auto other = tcp4(Host4{k_client.mac, k_client.ip, 40001}, k_guest, {5, k_primary_isn + 1, k_ack});
    auto before = other;
    rewriter.inbound(other);
    CHECK(other == before);
}

TEST_CASE("a frame whose checksum is still to be computed (NEEDS_CSUM) has its numbers moved and its checksum field left",
          "[net]") {
    TcpRewriter rewriter;
    accept(rewriter);
    Tcp sacked{k_client_isn + 1, k_primary_isn + 6, k_ack | k_psh, 502, std::string(3000, 'x')};
    sacked.options = sack({{k_primary_isn + 100, k_primary_isn + 200}}, 2);
    auto in = tcp4(k_client, k_guest, sacked);
    // The field as a host leaves it for the device: any value stands for the pseudo-header's sum.
    const size_t tcp = tcp_offset(detail::to_raw(in));
    in[tcp + 16] = std::byte{0x12};
    in[tcp + 17] = std::byte{0x34};
    rewriter.inbound(in, TcpRewriter::Checksum::Partial);
    auto fields = tcp_fields(in);
    CHECK(fields.ack == k_secondary_isn + 6);
    CHECK(fields.sack == std::vector<std::pair<uint32_t, uint32_t>>{{k_secondary_isn + 100, k_secondary_isn + 200}});
    CHECK(in[tcp + 16] == std::byte{0x12});
    CHECK(in[tcp + 17] == std::byte{0x34});
}

TEST_CASE("a connection from the guest: the offset comes from the server's SYN-ACK", "[net]") {
    TcpRewriter rewriter;
    auto syn = tcp4(k_guest_client, k_server, {k_secondary_isn, 0, k_syn});
    auto before = syn;
    rewriter.outbound(syn);
    CHECK(syn == before);
    CHECK(rewriter.connections() == 1);
    // The server acknowledges the primary's SYN.
    auto syn_ack = tcp4(k_server, k_guest_client, {77, k_primary_isn + 1, k_syn | k_ack});
    rewriter.inbound(syn_ack);
    CHECK(tcp_fields(syn_ack).ack == k_secondary_isn + 1);
    CHECK(tcp_fields(syn_ack).seq == 77);
    CHECK(tcp_checksum_valid(syn_ack));
    auto ack = tcp4(k_guest_client, k_server, {k_secondary_isn + 1, 78, k_ack, 64240, "GET /"});
    rewriter.outbound(ack);
    CHECK(tcp_fields(ack).seq == k_primary_isn + 1);
    CHECK(tcp_checksum_valid(ack));
}

TEST_CASE("timestamps: the offset of the guests' TSval origins is learnt from the peer's echo, TSval moves out and "
          "TSecr back", "[net]") {
    constexpr uint32_t primary_ts = 0x10000, secondary_ts = 0xfff00000;  // wraps, as random origins do
    auto with_ts = [](Tcp tcp, uint32_t value, uint32_t echo) {
        tcp.options = timestamps(value, echo);
        return tcp;
    };
    SECTION("a client connects") {
        TcpRewriter rewriter;
        auto syn = tcp4(k_client, k_guest, with_ts({k_client_isn, 0, k_syn}, 500, 0));
        rewriter.inbound(syn);
        auto syn_ack = tcp4(k_guest, k_client, with_ts({k_secondary_isn, k_client_isn + 1, k_syn | k_ack}, secondary_ts, 500));
        rewriter.outbound(syn_ack);
        // The client echoes the primary's SYN-ACK's TSval.
        auto ack = tcp4(k_client, k_guest, with_ts({k_client_isn + 1, k_primary_isn + 1, k_ack}, 510, primary_ts));
        rewriter.inbound(ack);
        CHECK(tcp_fields(ack).timestamps == std::vector<std::pair<uint32_t, uint32_t>>{{510, secondary_ts}});
        CHECK(tcp_checksum_valid(ack));
        // 40 ms later on both guests' clocks.
        auto reply = tcp4(k_guest, k_client,
                          with_ts({k_secondary_isn + 1, k_client_isn + 1, k_ack | k_psh, 502, "hi"}, secondary_ts + 40, 510));
        rewriter.outbound(reply);
        CHECK(tcp_fields(reply).timestamps == std::vector<std::pair<uint32_t, uint32_t>>{{primary_ts + 40, 510}});
        CHECK(tcp_fields(reply).seq == k_primary_isn + 1);
        CHECK(tcp_checksum_valid(reply));
        auto later = tcp4(k_client, k_guest, with_ts({k_client_isn + 1, k_primary_isn + 3, k_ack}, 560, primary_ts + 40));
        rewriter.inbound(later);
        CHECK(tcp_fields(later).timestamps == std::vector<std::pair<uint32_t, uint32_t>>{{560, secondary_ts + 40}});
        CHECK(tcp_checksum_valid(later));
    }
    SECTION("the guest connects") {
        TcpRewriter rewriter;
        auto syn = tcp4(k_guest_client, k_server, with_ts({k_secondary_isn, 0, k_syn}, secondary_ts, 0));
        rewriter.outbound(syn);
        auto syn_ack = tcp4(k_server, k_guest_client, with_ts({7000, k_primary_isn + 1, k_syn | k_ack}, 900, primary_ts));
        rewriter.inbound(syn_ack);
        CHECK(tcp_fields(syn_ack).timestamps == std::vector<std::pair<uint32_t, uint32_t>>{{900, secondary_ts}});
        auto data = tcp4(k_guest_client, k_server, with_ts({k_secondary_isn + 1, 7001, k_ack, 502, "GET"}, secondary_ts + 5, 900));
        rewriter.outbound(data);
        CHECK(tcp_fields(data).timestamps == std::vector<std::pair<uint32_t, uint32_t>>{{primary_ts + 5, 900}});
        CHECK(tcp_checksum_valid(data));
    }
    SECTION("the same ISN but other timestamp origins: the connection is kept for its timestamps") {
        TcpRewriter rewriter;
        auto syn = tcp4(k_client, k_guest, with_ts({k_client_isn, 0, k_syn}, 500, 0));
        rewriter.inbound(syn);
        auto syn_ack = tcp4(k_guest, k_client, with_ts({k_primary_isn, k_client_isn + 1, k_syn | k_ack}, secondary_ts, 500));
        rewriter.outbound(syn_ack);
        auto ack = tcp4(k_client, k_guest, with_ts({k_client_isn + 1, k_primary_isn + 1, k_ack}, 510, primary_ts));
        rewriter.inbound(ack);
        CHECK(rewriter.connections() == 1);
        CHECK(tcp_fields(ack).ack == k_primary_isn + 1);
        auto reply = tcp4(k_guest, k_client, with_ts({k_primary_isn + 1, k_client_isn + 1, k_ack, 502, "x"}, secondary_ts + 1, 510));
        rewriter.outbound(reply);
        CHECK(tcp_fields(reply).timestamps.at(0).first == primary_ts + 1);
    }
    SECTION("a peer without timestamps: only the sequence numbers move") {
        TcpRewriter rewriter;
        auto ack = accept(rewriter);
        CHECK(tcp_fields(ack).timestamps.empty());
        auto reply = tcp4(k_guest, k_client, {k_secondary_isn + 1, k_client_isn + 1, k_ack | k_psh, 502, "hello"});
        rewriter.outbound(reply);
        CHECK(tcp_fields(reply).seq == k_primary_isn + 1);
        CHECK(tcp_checksum_valid(reply));
    }
}

TEST_CASE("the table travels: a rewriter that loads another's saved table rewrites that one's connections alike",
          "[net]") {
    TcpRewriter survivor;  // the secondary that took over: its connections keep their offsets
    accept(survivor);
    auto v6_client = Host6{{0x02, 0, 0, 0, 0, 0x06}, {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}, 40000};
    auto v6_guest = Host6{k_guest.mac, {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10}, 80};
    auto syn_ack6 = tcp6(v6_guest, v6_client, {k_secondary_isn, k_client_isn + 1, k_syn | k_ack});
    survivor.outbound(syn_ack6);
    auto ack6 = tcp6(v6_client, v6_guest, {k_client_isn + 1, k_primary_isn + 1, k_ack});
    survivor.inbound(ack6);
    // A handshake in progress is not saved (the next secondary's guest completes it itself).
    auto half = tcp4(k_guest, Host4{k_client.mac, k_client.ip, 40009}, {k_secondary_isn, 5, k_syn | k_ack});
    survivor.outbound(half);
    REQUIRE(survivor.connections() == 3);

    auto saved = survivor.save();
    REQUIRE(survivor.check(saved));
    TcpRewriter next;  // the new secondary, whose guest is now a copy of the survivor's
    (void)accept(next, Host4{k_client.mac, k_client.ip, 40010});  // an offset of its own, replaced
    next.load(saved);
    CHECK(next.connections() == 2);
    for (auto* rewriter : {&survivor, &next}) {
        auto reply = tcp4(k_guest, k_client, {k_secondary_isn + 1, k_client_isn + 1, k_ack | k_psh, 502, "hello"});
        rewriter->outbound(reply);
        CHECK(tcp_fields(reply).seq == k_primary_isn + 1);
        CHECK(tcp_checksum_valid(reply));
        auto reply6 = tcp6(v6_guest, v6_client, {k_secondary_isn + 1, k_client_isn + 1, k_ack, 502, "x"});
        rewriter->outbound(reply6);
        CHECK(tcp_fields(reply6).seq == k_primary_isn + 1);
    }
    // A primary that never took over has nothing to save: loading that forgets every offset.
    TcpRewriter fresh;
    auto nothing = fresh.save();
    REQUIRE(next.check(nothing));
    next.load(nothing);
    CHECK(next.connections() == 0);
    next.load({});
    CHECK(next.connections() == 0);
}

TEST_CASE("a malformed saved table is refused, naming what is wrong", "[net]") {
    TcpRewriter rewriter;
    accept(rewriter);
    auto saved = rewriter.save();
    REQUIRE(rewriter.check(saved));
    for (size_t cut = 1; cut < saved.size(); ++cut)
        CHECK_FALSE(rewriter.check(std::span(saved).first(cut)));
    auto longer = saved;
    longer.push_back(std::byte{0});
    CHECK_FALSE(rewriter.check(longer));
    auto bad_version = saved;
    bad_version[4] = std::byte{5};  // the first entry's IP version
    auto refused = rewriter.check(bad_version);
    REQUIRE_FALSE(refused);
    CHECK_THAT(refused.error().message(), Catch::Contains("IP version 5"));
    auto bad_state = saved;
    bad_state[4 + 37] = std::byte{0};  // SynSent: never saved
    CHECK_FALSE(rewriter.check(bad_state));
    std::vector<std::byte> too_many(4 + 61 * (TcpRewriter::k_max_saved + 1));
    too_many[2] = std::byte{0x04};
    too_many[3] = std::byte{0x01};  // 0x0401 entries (big-endian, as every state field)
    CHECK_FALSE(rewriter.check(too_many));
    // A refused table never half-loads: load() of it keeps nothing.
    rewriter.load(bad_version);
    CHECK(rewriter.connections() == 0);
}

TEST_CASE("IPv6 connections are rewritten alike", "[net]") {
    Ipv6 client_ip{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2};
    Ipv6 guest_ip{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10};
    Host6 client{k_client.mac, client_ip, 40000};
    Host6 guest{k_guest.mac, guest_ip, 22};
    TcpRewriter rewriter;
    auto syn_ack = tcp6(guest, client, {k_secondary_isn, k_client_isn + 1, k_syn | k_ack});
    rewriter.outbound(syn_ack);
    auto ack = tcp6(client, guest, {k_client_isn + 1, k_primary_isn + 1, k_ack});
    rewriter.inbound(ack);
    CHECK(tcp_fields(ack).ack == k_secondary_isn + 1);
    CHECK(tcp_checksum_valid(ack));
    auto data = tcp6(guest, client, {k_secondary_isn + 1, k_client_isn + 1, k_ack, 100, "SSH-2.0"});
    rewriter.outbound(data);
    CHECK(tcp_fields(data).seq == k_primary_isn + 1);
    CHECK(tcp_checksum_valid(data));
}

TEST_CASE("a checkpoint makes both guests number alike: every offset is forgotten", "[net]") {
    TcpRewriter rewriter;
    accept(rewriter);
    CHECK(rewriter.connections() == 1);
    rewriter.load({});  // a checkpoint from a primary that never took over
    CHECK(rewriter.connections() == 0);
    // The secondary's guest now holds the primary's socket: its numbers are the primary's.
    auto data = tcp4(k_guest, k_client, {k_primary_isn + 1, k_client_isn + 1, k_ack, 502, "x"});
    auto before = data;
    rewriter.outbound(data);
    CHECK(data == before);
    auto ack = tcp4(k_client, k_guest, {k_client_isn + 1, k_primary_isn + 2, k_ack});
    before = ack;
    rewriter.inbound(ack);
    CHECK(ack == before);
}

TEST_CASE("a handshake in which both guests chose the same ISN keeps nothing", "[net]") {
    TcpRewriter rewriter;
    outbound(rewriter, tcp4(k_guest, k_client, {k_primary_isn, k_client_isn + 1, k_syn | k_ack}));
    auto ack = tcp4(k_client, k_guest, {k_client_isn + 1, k_primary_isn + 1, k_ack});
    auto before = ack;
    rewriter.inbound(ack);
    CHECK(ack == before);
    CHECK(rewriter.connections() == 0);
}

TEST_CASE("closed connections linger, handshakes expire, open ones stay", "[net]") {
    TcpRewriter rewriter;
    auto now = TcpRewriter::Clock::now();
    accept(rewriter);
    // The guest closes: FIN, the client's ACK of it and FIN, the guest's last ACK.
    auto fin = tcp4(k_guest, k_client, {k_secondary_isn + 1, k_client_isn + 1, k_fin | k_ack});
    rewriter.outbound(fin);
    CHECK(tcp_fields(fin).seq == k_primary_isn + 1);
    auto client_fin = tcp4(k_client, k_guest, {k_client_isn + 1, k_primary_isn + 2, k_fin | k_ack});
    rewriter.inbound(client_fin);
    CHECK(tcp_fields(client_fin).ack == k_secondary_isn + 2);
    CHECK(rewriter.expire_idle(now + 1h) == 0);  // not both acked yet: open
    auto last_ack = tcp4(k_guest, k_client, {k_secondary_isn + 2, k_client_isn + 2, k_ack});
    rewriter.outbound(last_ack);
    CHECK(tcp_fields(last_ack).seq == k_primary_isn + 2);
    CHECK(tcp_checksum_valid(last_ack));
    // Closed: still rewriting (a FIN retransmitted in TIME-WAIT), then gone after the linger.
    CHECK(rewriter.connections() == 1);
    CHECK(rewriter.expire_idle(now) == 0);
    auto again = tcp4(k_guest, k_client, {k_secondary_isn + 2, k_client_isn + 2, k_ack});
    rewriter.outbound(again);
    CHECK(tcp_fields(again).seq == k_primary_isn + 2);
    CHECK(rewriter.expire_idle(TcpRewriter::Clock::now() + TcpRewriter::k_closed_linger + 1s) == 1);
    CHECK(rewriter.connections() == 0);

    // A handshake that never completes expires; an established idle connection does not.
    outbound(rewriter, tcp4(k_guest_client, k_server, {k_secondary_isn, 0, k_syn}));
    accept(rewriter);
    CHECK(rewriter.connections() == 2);
    CHECK(rewriter.expire_idle(TcpRewriter::Clock::now() + TcpRewriter::k_handshake_timeout + 1s) == 1);
    CHECK(rewriter.expire_idle(TcpRewriter::Clock::now() + 24h) == 0);
    CHECK(rewriter.connections() == 1);
}

TEST_CASE("a RST closes only when the guest would accept it", "[net]") {
    TcpRewriter rewriter;
    accept(rewriter);
    outbound(rewriter, tcp4(k_guest, k_client, {k_secondary_isn + 1, k_client_isn + 1, k_ack, 502, "hi"}));
    auto far = TcpRewriter::Clock::now() + TcpRewriter::k_closed_linger + 1s;
    // Blind: not at what the guest acknowledged; the connection stays open.
    auto blind = tcp4(k_client, k_guest, {k_client_isn + 5000, k_primary_isn + 3, k_rst | k_ack});
    rewriter.inbound(blind);
    CHECK(tcp_fields(blind).ack == k_secondary_isn + 3);
    CHECK(rewriter.expire_idle(far) == 0);
    auto reset = tcp4(k_client, k_guest, {k_client_isn + 1, k_primary_isn + 3, k_rst | k_ack});
    rewriter.inbound(reset);
    CHECK(tcp_checksum_valid(reset));
    CHECK(rewriter.expire_idle(far) == 1);
}

TEST_CASE("the table is bounded: the connection idle longest goes, and is counted", "[net]") {
    TcpRewriter rewriter(4);
    for (uint16_t port = 1; port <= 6; ++port)
        outbound(rewriter, tcp4(k_guest, Host4{k_client.mac, k_client.ip, port}, {k_secondary_isn, 9, k_syn | k_ack}));
    CHECK(rewriter.connections() == 4);
    CHECK(rewriter.evicted() == 2);
    // Ports 1 and 2 went first: their ACKs pass as they are; port 3's is rewritten.
    auto lost = tcp4(Host4{k_client.mac, k_client.ip, 1}, k_guest, {9, k_primary_isn + 1, k_ack});
    auto before = lost;
    rewriter.inbound(lost);
    CHECK(lost == before);
    auto kept = tcp4(Host4{k_client.mac, k_client.ip, 3}, k_guest, {9, k_primary_isn + 1, k_ack});
    rewriter.inbound(kept);
    CHECK(tcp_fields(kept).ack == k_secondary_isn + 1);
}

TEST_CASE("frames that are not whole TCP segments pass unchanged", "[net]") {
    TcpRewriter rewriter;
    accept(rewriter);
    auto data = tcp4(k_guest, k_client, {k_secondary_isn + 1, k_client_isn + 1, k_ack, 502, "payload"});
    std::vector<std::vector<std::byte>> frames;
    frames.push_back(udp4(k_guest, k_client, "udp"));
    frames.push_back(arp_request(k_guest, k_client.ip));
    frames.emplace_back(data.begin(), data.begin() + 14 + 20 + 10);  // cut in the TCP header
    frames.emplace_back(data.begin(), data.begin() + 10);             // not even Ethernet
    auto lying = data;
    lying[14 + 3] = std::byte{0xff};  // an IPv4 total length beyond the frame
    frames.push_back(lying);
    auto fragment = data;
    fragment[14 + 6] = std::byte{0x20};  // more fragments
    frames.push_back(fragment);
    for (auto& frame : frames) {
        auto before = frame;
        rewriter.outbound(frame);
        rewriter.inbound(frame);
        CHECK(frame == before);
    }
}

TEST_CASE("random bytes never upset the rewriter", "[net]") {
    std::mt19937 rng(1234);
    TcpRewriter rewriter(64);
    auto valid = tcp4(k_guest, k_client, {k_secondary_isn, k_client_isn + 1, k_syn | k_ack});
    for (int i = 0; i < 20000; ++i) {
        std::vector<std::byte> frame;
        if (i % 2) {
            frame.resize(rng() % 120);
            for (auto& b : frame)
                b = std::byte(static_cast<uint8_t>(rng()));
        } else {
            // A valid frame with a few bytes changed and perhaps cut short: it parses further.
            frame = valid;
            for (int flips = 0; flips < 3; ++flips)
                frame[rng() % frame.size()] = std::byte(static_cast<uint8_t>(rng()));
            frame.resize(rng() % (frame.size() + 1));
        }
        if (rng() % 2)
            rewriter.inbound(frame);
        else
            rewriter.outbound(frame);
        if (i % 5000 == 0)
            rewriter.load({});  // a checkpoint from a primary that never took over
    }
    CHECK(rewriter.connections() <= 64);
}
