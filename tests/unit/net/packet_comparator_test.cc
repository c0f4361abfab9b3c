// SPDX-License-Identifier: GPL-2.0-or-later
// COLO's comparison of the two guests' network frames on real frames: what goes out when, per
// flow and in which order; what counts as the same (a TCP byte stream cut into other segments,
// other timestamps, acks and windows; another IPv4 id) and what does not (payload, FIN, RST,
// the rest of a non-TCP frame); the verdicts for a mismatch, a lag and the size bounds; the
// checkpoint's lifecycle; and random frames.
#include <catch2/catch.hpp>

#include <memory>
#include <random>
#include <vector>

#include "core/net/packet_comparator.h"
#include "tests/support/frame_builder.h"

using namespace colod::core;
using namespace colod::core::net;
using namespace colod::test::frames;
using namespace std::chrono_literals;
using Frame = std::vector<std::byte>;
using Frames = std::vector<Frame>;
using Verdict = PacketComparator::Verdict;

namespace {

const Host4 k_guest{{0x52, 0x54, 0, 0x12, 0x34, 0x56}, 0x0a00000a, 80};
const Host4 k_a{{0x02, 0, 0, 0, 0, 0x02}, 0x0a000002, 40000};
const Host4 k_b{{0x02, 0, 0, 0, 0, 0x03}, 0x0a000003, 40001};
const Host4 k_dns{{0x02, 0, 0, 0, 0, 0x04}, 0x0a000004, 53};

// A segment of the guest's data to `to`. `ack`, `window` and `ip_id` are what the guests may
// fill in differently.
Frame data(const Host4& to, uint32_t seq, const std::string& payload, uint8_t flags = k_ack | k_psh, uint32_t ack = 1,
           uint16_t window = 502, uint16_t ip_id = 1, std::vector<uint8_t> options = {}) {
    return tcp4(k_guest, to, {seq, ack, flags, window, payload, std::move(options)}, ip_id);
}

struct Harness {
    std::vector<Frame> out;
    std::vector<Verdict> verdicts;
    std::unique_ptr<PacketComparator> channel;

    explicit Harness(std::chrono::microseconds max_lag = 10s, uint64_t limit = 1 << 20) {
        channel = std::make_unique<PacketComparator>(
            [this](std::span<const std::byte> frame) { out.emplace_back(frame.begin(), frame.end()); }, max_lag, limit,
            [this](Verdict verdict) { verdicts.push_back(verdict); });
        channel->protect(1);
    }
    void put(const Frame& frame) { channel->put(frame); }
    void secondary(const Frame& frame, uint64_t epoch = 1) { channel->secondary(epoch, frame); }
};

// Whether a comparator finds the primary's frame `p` and the secondary's `s` the same.
bool same(const Frame& p, const Frame& s) {
    Harness h;
    h.put(p);
    h.secondary(s);
    bool released = h.out == Frames{p};
    bool mismatch = h.verdicts == std::vector{Verdict::Mismatch};
    REQUIRE(released != mismatch);  // one or the other, never both nor neither
    return released;
}

}  // namespace

TEST_CASE("a frame goes out as soon as the secondary sent the same, whichever came first", "[net]") {
    Harness h;
    CHECK(h.channel->name() == "net");
    auto p = data(k_a, 100, "hello", k_ack | k_psh, 7, 502, 11, timestamps(1000, 50));
    h.put(p);
    CHECK(h.out.empty());
    CHECK(h.channel->held_bytes() == p.size());
    // The secondary's: another IPv4 id, ack (as far as the primary's), window and timestamp;
    // the primary's frame goes out.
    h.secondary(data(k_a, 100, "hello", k_ack | k_psh, 9, 1000, 99, timestamps(77777, 50)));
    CHECK(h.out == Frames{p});
    CHECK(h.channel->held_bytes() == 0);

    // The secondary first: the primary's frame goes out when it comes.
    auto query = udp4(k_guest, k_dns, "query", 3);
    h.secondary(udp4(k_guest, k_dns, "query", 4));
    CHECK(h.out.size() == 1);
    h.put(query);
    CHECK(h.out == Frames{p, query});

    // An older epoch's frame matches nothing.
    auto late = udp4(k_guest, k_dns, "late");
    h.put(late);
    h.secondary(late, 0);
    CHECK(h.out.size() == 2);
    CHECK(h.verdicts.empty());
    CHECK(h.channel->compare_latency().max < 10'000'000);  // sampled (a bound, not a figure)
}

TEST_CASE("flows are independent, and within a flow the primary's order holds", "[net]") {
    Harness h;
    auto a1 = data(k_a, 100, "aaa");
    auto b1 = data(k_b, 500, "bbb");
    auto a_ack = data(k_a, 103, "", k_ack, 9);  // a pure ACK: never compared, but after a1
    h.put(a1);
    h.put(b1);
    h.put(a_ack);
    h.secondary(data(k_b, 500, "bbb"));
    CHECK(h.out == Frames{b1});  // before a1: flows do not wait for each other
    h.secondary(data(k_a, 103, "", k_ack, 9));  // the secondary's pure ACK is dropped
    CHECK(h.out == Frames{b1});
    h.secondary(data(k_a, 100, "aaa"));
    CHECK(h.out == Frames{b1, a1, a_ack});

    auto u1 = udp4(k_guest, k_dns, "one");
    auto u2 = udp4(k_guest, k_dns, "two");
    h.put(u1);
    h.put(u2);
    h.secondary(u1);
    h.secondary(u2);
    CHECK(h.out == Frames{b1, a1, a_ack, u1, u2});
    CHECK(h.verdicts.empty());
}

TEST_CASE("TCP is compared as a byte stream: the guests may cut it into other segments", "[net]") {
    Harness h;
    auto whole = data(k_a, 100, "hello world");
    h.put(whole);
    h.secondary(data(k_a, 100, "hello "));
    CHECK(h.out.empty());
    h.secondary(data(k_a, 106, "world"));
    CHECK(h.out == Frames{whole});

    auto abc = data(k_a, 111, "abc");
    auto def = data(k_a, 114, "def");
    h.put(abc);
    h.put(def);
    h.secondary(data(k_a, 111, "abcdef"));
    CHECK(h.out == Frames{whole, abc, def});

    // Retransmissions of bytes already compared: the primary's go out, the secondary's are
    // dropped.
    auto again = data(k_a, 114, "def");
    h.put(again);
    CHECK(h.out.back() == again);
    h.secondary(data(k_a, 111, "abc"));

    // The FIN is the byte after the data: the primary's waits for the secondary's.
    auto last = data(k_a, 117, "gh", k_ack | k_fin);
    h.put(last);
    h.secondary(data(k_a, 117, "gh"));
    CHECK(h.out.back() == again);
    h.secondary(data(k_a, 119, "", k_ack | k_fin));
    CHECK(h.out.back() == last);
    CHECK(h.verdicts.empty());
    CHECK(h.channel->held_bytes() == 0);
}

TEST_CASE("a handshake: the SYN-ACKs' ISNs differ, the rest is compared", "[net]") {
    Harness h;
    auto syn_ack = data(k_a, 0x10000000, "", k_syn | k_ack, 1001, 64240, 0, {2, 4, 5, 0xb4});
    h.put(syn_ack);
    h.secondary(data(k_a, 0x7000aaaa, "", k_syn | k_ack, 1001, 65160, 0, {2, 4, 5, 0xb4}));
    CHECK(h.out == Frames{syn_ack});
    // From here the secondary's numbers are the primary's (its rewriter's work).
    auto reply = data(k_a, 0x10000001, "OK\n");
    h.put(reply);
    h.secondary(reply);
    CHECK(h.out.back() == reply);
    CHECK(h.verdicts.empty());
    // A SYN is not a SYN-ACK.
    CHECK_FALSE(same(data(k_a, 5, "", k_syn), data(k_a, 5, "", k_syn | k_ack)));
}

TEST_CASE("a flow that differs asks for a checkpoint and is held until it; other flows go on", "[net]") {
    Harness h;
    auto a1 = data(k_a, 100, "abc");
    h.put(a1);
    h.secondary(data(k_a, 100, "abd"));
    CHECK(h.verdicts == std::vector{Verdict::Mismatch});
    CHECK(h.channel->mismatches() == 1);
    auto a2 = data(k_a, 103, "more");
    h.put(a2);
    h.secondary(data(k_a, 103, "more"));  // the flow waits for the checkpoint now
    auto b1 = data(k_b, 7, "x");
    h.put(b1);
    h.secondary(b1);
    CHECK(h.out == Frames{b1});
    CHECK(h.channel->held_bytes() == a1.size() + a2.size());
    CHECK(h.verdicts.size() == 1);  // one verdict until the checkpoint

    h.channel->captured(2);
    CHECK(h.out == Frames{b1});
    h.channel->committed(2);
    CHECK(h.out == Frames{b1, a1, a2});
    CHECK(h.channel->held_bytes() == 0);

    // After the checkpoint the flow is compared again.
    auto a3 = data(k_a, 107, "z");
    h.put(a3);
    h.secondary(a3, 2);
    CHECK(h.out.back() == a3);
    CHECK(h.verdicts.size() == 1);
}

TEST_CASE("flags count where they change the stream: FIN and RST; PSH does not", "[net]") {
    CHECK_FALSE(same(data(k_a, 100, "", k_ack | k_fin), data(k_a, 100, "q")));
    CHECK_FALSE(same(data(k_a, 100, "", k_rst | k_ack), data(k_a, 100, "q")));
    CHECK_FALSE(same(data(k_a, 100, "", k_rst), data(k_a, 101, "", k_rst)));
    CHECK(same(data(k_a, 100, "", k_rst | k_ack, 5), data(k_a, 100, "", k_rst | k_ack, 6)));
    CHECK(same(data(k_a, 100, "abc", k_ack | k_psh), data(k_a, 100, "abc", k_ack)));
    // Data at another sequence number is other data.
    CHECK_FALSE(same(data(k_a, 100, "abc"), data(k_a, 101, "abc")));
    // A FIN the secondary sends on with data: the FIN's place holds data there.
    Harness h;
    h.put(data(k_a, 100, "abc", k_ack | k_fin));
    h.secondary(data(k_a, 100, "abc"));
    CHECK(h.verdicts.empty());
    h.secondary(data(k_a, 103, "d"));
    CHECK(h.verdicts == std::vector{Verdict::Mismatch});
    CHECK(h.out.empty());
}

TEST_CASE("timestamps, acks and windows are not compared", "[net]") {
    CHECK(same(data(k_a, 100, "abc", k_ack, 1, 502, 1, timestamps(100, 5)),
               data(k_a, 100, "abc", k_ack, 900, 30000, 2, timestamps(99999, 6))));
}

TEST_CASE("an ack goes out only once the secondary acknowledged as far", "[net]") {
    // The peer forgets what it sees acknowledged: the secondary must hold those bytes first.
    Harness h;
    auto reply = data(k_a, 100, "abc", k_ack | k_psh, 500);
    h.put(reply);
    h.secondary(data(k_a, 100, "abc", k_ack | k_psh, 400));  // same bytes, it has less input
    CHECK(h.out.empty());
    auto pure = data(k_a, 103, "", k_ack, 600);  // a pure ACK: after reply, and further still
    h.put(pure);
    h.secondary(data(k_a, 103, "", k_ack, 550));
    CHECK(h.out == Frames{reply});
    h.secondary(data(k_a, 103, "", k_ack, 600));
    CHECK(h.out == Frames{reply, pure});
    // Acknowledged as far already (in sequence order, across the wrap): out at once.
    auto window = data(k_a, 103, "", k_ack, 590, 9000);
    h.put(window);
    CHECK(h.out.back() == window);

    // The secondary's acks outlast a checkpoint (the state it loads holds what it acked).
    h.channel->captured(2);
    h.channel->committed(2);
    auto again = data(k_a, 103, "", k_ack, 600);
    h.put(again);
    CHECK(h.out.back() == again);
    auto wrapped = data(k_b, 1, "", k_ack, 5);
    h.secondary(data(k_b, 1, "", k_ack, 0xfffffff0), 2);
    h.put(wrapped);
    CHECK(h.out.size() == 4);
    h.secondary(data(k_b, 1, "", k_ack, 5), 2);
    CHECK(h.out.back() == wrapped);

    // Waiting for an ack is a lag like any other: past the bound it asks for a checkpoint,
    // which sends the frame once the secondary holds the primary's state.
    Harness slow(0us);
    auto late = data(k_a, 100, "", k_ack, 700);
    slow.put(late);
    slow.channel->check_lag();
    CHECK(slow.verdicts == std::vector{Verdict::Behind});
    slow.channel->captured(2);
    slow.channel->committed(2);
    CHECK(slow.out == Frames{late});
    CHECK(h.verdicts.empty());
}

TEST_CASE("UDP, ICMP, ARP and other frames are compared whole, but for the IPv4 id and checksum and IPv6 flow label",
          "[net]") {
    CHECK(same(udp4(k_guest, k_dns, "answer", 1), udp4(k_guest, k_dns, "answer", 2)));
    CHECK_FALSE(same(udp4(k_guest, k_dns, "answer"), udp4(k_guest, k_dns, "answeR")));
    auto ttl = udp4(k_guest, k_dns, "answer");
    ttl[14 + 8] = std::byte{63};  // the rest of the IP header is compared
    CHECK_FALSE(same(udp4(k_guest, k_dns, "answer"), ttl));
    Host4 other_mac = k_dns;
    other_mac.mac[5] = 0x99;  // so is the Ethernet header
    CHECK_FALSE(same(udp4(k_guest, k_dns, "answer"), udp4(k_guest, other_mac, "answer")));

    CHECK(same(icmp4_echo(k_guest, k_a, true, 7, 1, "ping", 10), icmp4_echo(k_guest, k_a, true, 7, 1, "ping", 20)));
    CHECK_FALSE(same(icmp4_echo(k_guest, k_a, true, 7, 1, "ping"), icmp4_echo(k_guest, k_a, true, 7, 2, "ping")));

    Host6 guest6{k_guest.mac, {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10}, 53};
    Host6 client6{k_a.mac, {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}, 5353};
    CHECK(same(udp6(guest6, client6, "answer", 0x12345), udp6(guest6, client6, "answer", 0xabcde)));
    CHECK_FALSE(same(udp6(guest6, client6, "answer"), udp6(guest6, client6, "Answer")));

    CHECK(same(arp_request(k_guest, k_a.ip), arp_request(k_guest, k_a.ip)));
    CHECK_FALSE(same(arp_request(k_guest, k_a.ip), arp_request(k_guest, k_b.ip)));

    Frame lldp(60, std::byte{0x01});
    lldp[12] = std::byte{0x88};
    lldp[13] = std::byte{0xcc};
    Frame lldp2 = lldp;
    lldp2[40] = std::byte{0x02};
    CHECK(same(lldp, lldp));
    CHECK_FALSE(same(lldp, lldp2));
    CHECK_FALSE(same(lldp, Frame(lldp.begin(), lldp.end() - 1)));
}

TEST_CASE("a frame left unmatched longer than the lag bound asks for a checkpoint", "[net]") {
    {
        Harness h(0us);
        h.put(udp4(k_guest, k_dns, "alone"));
        h.channel->check_lag();
        h.channel->check_lag();  // one verdict per epoch
        CHECK(h.verdicts == std::vector{Verdict::Behind});
        h.channel->captured(2);
        h.channel->check_lag();  // the checkpoint sealed it: nothing waits in the new epoch
        CHECK(h.verdicts.size() == 1);
    }
    {
        Harness h(0us);  // the secondary's frame with no primary's
        h.secondary(udp4(k_guest, k_dns, "alone"));
        h.channel->check_lag();
        CHECK(h.verdicts == std::vector{Verdict::Behind});
    }
    {
        Harness h(1h);  // in bound
        h.put(udp4(k_guest, k_dns, "alone"));
        h.channel->check_lag();
        CHECK(h.verdicts.empty());
    }
}

TEST_CASE("held bytes, waiting bytes and flows are bounded", "[net]") {
    {
        auto frame = udp4(k_guest, k_dns, std::string(100, 'x'));
        Harness h(10s, 2 * frame.size());
        h.put(frame);
        h.put(frame);
        CHECK(h.verdicts.empty());
        h.put(frame);  // past the limit: a checkpoint; the frames stay held
        h.put(frame);
        CHECK(h.verdicts == std::vector{Verdict::Behind});
        CHECK(h.channel->held_bytes() == 4 * frame.size());
        h.secondary(frame);  // still compared
        CHECK(h.out.size() == 1);
    }
    {
        auto frame = udp4(k_guest, k_dns, std::string(100, 'y'));
        Harness h(10s, 2 * frame.size());
        for (int i = 0; i < 3; ++i)  // the secondary runs ahead past the limit
            h.secondary(frame);
        CHECK(h.verdicts == std::vector{Verdict::Behind});
        h.put(frame);  // nothing is compared until the checkpoint
        CHECK(h.out.empty());
        h.channel->captured(2);
        h.channel->committed(2);
        CHECK(h.out == Frames{frame});
        h.put(frame);  // and afterwards again
        h.secondary(frame, 2);
        CHECK(h.out.size() == 2);
    }
    {
        Harness h;
        for (uint32_t i = 0; i <= PacketComparator::k_max_flows; ++i) {
            Host4 to = k_dns;
            to.port = static_cast<uint16_t>(i);
            to.ip = k_dns.ip + (i >> 16);
            h.put(udp4(k_guest, to, "q"));
        }
        CHECK(h.verdicts == std::vector{Verdict::Behind});
        h.channel->release_all();
        CHECK(h.out.size() == PacketComparator::k_max_flows + 1);
    }
}

TEST_CASE("release_all sends everything held in order; discard_all drops it; both pass through after", "[net]") {
    auto one = udp4(k_guest, k_dns, "one");
    auto two = udp4(k_guest, k_dns, "two");
    auto three = udp4(k_guest, k_dns, "three");
    {
        Harness h;
        h.channel->release_all();
        h.put(one);  // unprotected: straight out
        CHECK(h.out == Frames{one});
    }
    {
        Harness h;
        h.put(one);
        h.channel->captured(2);
        h.put(two);
        h.channel->release_all();
        CHECK(h.out == Frames{one, two});
        CHECK(h.channel->held_bytes() == 0);
        h.put(three);
        CHECK(h.out == Frames{one, two, three});
    }
    {
        Harness h;
        h.put(one);
        h.channel->captured(2);
        h.put(two);
        h.channel->discard_all();
        CHECK(h.out.empty());
        CHECK(h.channel->held_bytes() == 0);
        h.channel->committed(2);
        CHECK(h.out.empty());
        h.put(three);
        CHECK(h.out == Frames{three});
    }
}

TEST_CASE("a flow's order holds across a checkpoint: matched frames wait for the sealed ones", "[net]") {
    Harness h;
    auto a1 = data(k_a, 100, "first");
    h.put(a1);  // never matched in epoch 1
    h.channel->captured(2);
    auto a2 = data(k_a, 105, "second");
    auto b = data(k_b, 1, "other");
    h.put(a2);
    h.secondary(a2, 2);  // matched, but a1 has not gone out yet
    h.put(b);
    h.secondary(b, 2);  // another flow: out at once
    CHECK(h.out == Frames{b});
    CHECK(h.channel->held_bytes() == a1.size() + a2.size());
    h.channel->committed(1);  // not the epoch that holds a1
    CHECK(h.out == Frames{b});
    h.channel->committed(2);
    CHECK(h.out == Frames{b, a1, a2});
    CHECK(h.channel->held_bytes() == 0);
    auto a3 = data(k_a, 111, "third");
    h.put(a3);
    h.secondary(a3, 2);
    CHECK(h.out.back() == a3);
}

TEST_CASE("random frames never upset the comparator, and every primary frame goes out once", "[net]") {
    std::mt19937 rng(42);
    std::vector<Frame> seeds = {data(k_a, 100, "abcdef"), data(k_a, 103, "def", k_ack | k_fin),
                                data(k_b, 9, "", k_syn | k_ack), udp4(k_guest, k_dns, "dns"),
                                icmp4_echo(k_guest, k_a, true, 1, 1, "p"), arp_request(k_guest, k_a.ip)};
    auto random_frame = [&]() {
        Frame frame;
        switch (rng() % 3) {
        case 0:
            frame.resize(rng() % 100);
            for (auto& b : frame)
                b = std::byte(static_cast<uint8_t>(rng()));
            break;
        case 1:
            frame = seeds[rng() % seeds.size()];
            break;
        default:
            frame = seeds[rng() % seeds.size()];
            frame[rng() % frame.size()] = std::byte(static_cast<uint8_t>(rng()));
            frame.resize(rng() % (frame.size() + 1));
            break;
        }
        return frame;
    };
    Harness h(1h, 4096);
    uint64_t epoch = 1;
    size_t put = 0;
    for (int i = 0; i < 20000; ++i) {
        switch (rng() % 40) {
        case 0:
            h.channel->captured(++epoch);
            break;
        case 1:
            h.channel->committed(epoch - rng() % 2);
            break;
        case 2:
            h.channel->check_lag();
            break;
        default:
            if (rng() % 2) {
                h.put(random_frame());
                ++put;
            } else {
                h.secondary(random_frame(), epoch - rng() % 2);
            }
        }
    }
    h.channel->release_all();
    CHECK(h.out.size() == put);
    CHECK(h.channel->held_bytes() == 0);
}
