// SPDX-License-Identifier: GPL-2.0-or-later
// The link and the handshake over real loopback sockets, including a listening side that
// models the secondary's accept loop and must survive hostile connections.
#include <catch2/catch.hpp>

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "base/log.h"
#include "proto/crc32c.h"
#include "proto/errors.h"
#include "proto/handshake.h"
#include "proto/link.h"
#include "proto/wire.h"

using namespace colod;
using namespace colod::proto;
using namespace std::chrono_literals;

namespace {

Key key_of(char fill) {
    std::string material(32, fill);
    return Key::from_bytes(std::as_bytes(std::span(material.data(), material.size()))).value();
}

Hello demo_hello(PeerState state) {
    Hello h;
    h.state = state;
    h.vm_name = "demo";
    h.memory_bytes = 64 * kPageSize;
    h.vcpus = 1;
    h.devices = {{"uart0", 1}};
    h.image_hash[0] = std::byte{0x42};
    return h;
}

template <typename T>
Reason reason(const base::Result<T>& r) {
    REQUIRE_FALSE(r.ok());
    return reason_of(r.error());
}

struct Pair {
    Listener listener;
    Link client;
    Link server;
};

Pair make_pair() {
    auto listener = Listener::create("127.0.0.1:0");
    REQUIRE(listener.ok());
    auto client = Link::connect(fmt::format("127.0.0.1:{}", listener->port()), deadline_after(2s));
    REQUIRE(client.ok());
    auto server = listener->accept(deadline_after(2s));
    REQUIRE(server.ok());
    return Pair{std::move(listener).value(), std::move(client).value(), std::move(server).value()};
}

// Runs both sides of a handshake at once.
struct HandshakeResults {
    base::Result<Hello> connecting{base::Error(base::Errc::Failed, "not run")};
    base::Result<Hello> accepting{base::Error(base::Errc::Failed, "not run")};
};

HandshakeResults run_handshake(Pair& p, const Key& ckey, Hello chello, const Key& skey, Hello shello,
                               PeerPolicy cpolicy = {}) {
    HandshakeResults r;
    std::thread t([&] { r.accepting = handshake(p.server, skey, shello, deadline_after(3s)); });
    r.connecting = handshake(p.client, ckey, chello, deadline_after(3s), cpolicy);
    t.join();
    return r;
}

// A 64-page guest with one vCPU, platform sections and the uart device.
struct SmallGuest {
    std::vector<std::byte> memory = std::vector<std::byte>(64 * kPageSize);
    std::vector<std::byte> body = std::vector<std::byte>(100, std::byte{9});
    std::vector<SectionInput> sections() const {
        return {{SectionId::Vcpu, 1, 0, "", body},
                {SectionId::Irqchip, 1, 0, "", body},
                {SectionId::Pit, 1, 0, "", body},
                {SectionId::Clock, 1, 0, "", body},
                {SectionId::Device, 1, 0, "uart0", body}};
    }
};

// Receives one checkpoint on `link` and verifies it completely, skipping heartbeats.
base::Result<std::pair<uint64_t, size_t>> receive_checkpoint(Link& link, StateDecoder& decoder, size_t& heartbeats) {
    Frame frame;
    for (;;) {
        TRY(link.receive_into(frame, deadline_after(5s)));
        if (frame.header.type == MessageType::Heartbeat) {
            ++heartbeats;
            continue;
        }
        if (frame.header.type != MessageType::VmstateSize)
            return error(Reason::UnexpectedMessage, "expected VMSTATE_SIZE");
        auto message = TRY(frame.message());
        TRY(decoder.begin(std::get<VmstateSize>(message)));
        break;
    }
    size_t pieces = 0;
    for (;;) {
        TRY(link.receive_into(frame, deadline_after(5s)));
        if (frame.header.type == MessageType::Heartbeat) {
            ++heartbeats;
            continue;
        }
        DecodedFrame d = TRY(decoder.feed(frame.payload()));
        pieces += d.pieces.size();
        if (d.end)
            return std::pair{d.end->seq, pieces};
    }
}

}  // namespace

TEST_CASE("messages cross the link in order; EOF, timeout, protocol error and shutdown are distinct") {
    Pair p = make_pair();
    // Before the handshake only handshake frames are delivered: mark both sides as done.
    p.client.set_authenticated(std::nullopt);
    p.server.set_authenticated(std::nullopt);
    REQUIRE(p.client.send(CheckpointRequest{7}, deadline_after(1s)).ok());
    REQUIRE(p.client.send(Heartbeat{6, 123}, deadline_after(1s)).ok());
    auto a = p.server.receive(deadline_after(1s));
    REQUIRE(a.ok());
    REQUIRE(a->header.sequence == 0);
    REQUIRE(std::get<CheckpointRequest>(a->message().value()).seq == 7);
    auto b = p.server.receive(deadline_after(1s));
    REQUIRE(b->header.sequence == 1);
    REQUIRE(std::get<Heartbeat>(b->message().value()) == Heartbeat{6, 123});
    // The return path: same connection, other direction.
    REQUIRE(p.server.send(CheckpointReply{7}, deadline_after(1s)).ok());
    REQUIRE(std::get<CheckpointReply>(p.client.receive(deadline_after(1s))->message().value()).seq == 7);

    auto before = Clock::now();
    auto timeout = p.server.receive(deadline_after(100ms));
    REQUIRE(timeout.error().code() == base::Errc::Timeout);
    REQUIRE(Clock::now() - before >= 100ms);

    std::thread stopper([&] { p.server.shutdown(); });
    auto stopped = p.server.receive(deadline_after(10s));
    stopper.join();
    REQUIRE(stopped.error().code() == base::Errc::Stopped);

    Pair q = make_pair();
    std::vector<std::byte> garbage(64, std::byte{0x5a});
    REQUIRE(q.client.send_raw(garbage, deadline_after(1s)).ok());
    auto bad = q.server.receive(deadline_after(1s));
    REQUIRE(bad.error().code() == base::Errc::Protocol);
    REQUIRE(reason_of(bad.error()) == Reason::BadMagic);

    Pair r = make_pair();
    { Link gone = std::move(r.client); }
    auto eof = r.server.receive(deadline_after(1s));
    REQUIRE(eof.error().code() == base::Errc::Eof);
}

TEST_CASE("a frame sequence gap is refused") {
    Pair p = make_pair();
    auto frame = encode_frame(MessageType::Hello, 1, demo_hello(PeerState::PrimaryActive).encode());
    REQUIRE(p.client.send_raw(frame, deadline_after(1s)).ok());
    REQUIRE(reason(p.server.receive(deadline_after(1s))) == Reason::SequenceGap);
}

TEST_CASE("a half frame then silence times out at the deadline") {
    Pair p = make_pair();
    auto frame = encode_frame(MessageType::Hello, 0, demo_hello(PeerState::PrimaryActive).encode());
    REQUIRE(p.client.send_raw(std::span(frame).first(frame.size() / 2), deadline_after(1s)).ok());
    auto r = p.server.receive(deadline_after(150ms));
    REQUIRE(r.error().code() == base::Errc::Timeout);
}

TEST_CASE("receive_into_idle times out on silence, not on a frame that keeps arriving slowly") {
    Pair p = make_pair();
    auto frame = encode_frame(MessageType::Hello, 0, demo_hello(PeerState::PrimaryActive).encode());
    // A few bytes every 20 ms: the whole frame takes far longer than the 100 ms idle timeout.
    std::thread trickle([&] {
        for (size_t at = 0; at < frame.size(); at += 16) {
            auto piece = std::span(frame).subspan(at, std::min<size_t>(16, frame.size() - at));
            REQUIRE(p.client.send_raw(piece, deadline_after(1s)).ok());
            std::this_thread::sleep_for(20ms);
        }
    });
    Frame received;
    auto started = std::chrono::steady_clock::now();
    auto r = p.server.receive_into_idle(received, 100ms);
    trickle.join();
    REQUIRE(r.ok());
    CHECK(received.header.type == MessageType::Hello);
    CHECK(std::chrono::steady_clock::now() - started > 100ms);
    // Then silence: Timeout after the idle time.
    auto silent = p.server.receive_into_idle(received, 100ms);
    REQUIRE_FALSE(silent.ok());
    CHECK(silent.error().code() == base::Errc::Timeout);
}

TEST_CASE("send_if_writable sends a small frame while the socket has room and skips it when it is full") {
    Pair p = make_pair();
    p.client.set_authenticated(std::nullopt);
    p.server.set_authenticated(std::nullopt);
    auto sent = p.client.send_if_writable(Heartbeat{1, 2}, deadline_after(1s));
    REQUIRE(sent.ok());
    CHECK(*sent);
    auto beat = p.server.receive(deadline_after(1s));
    REQUIRE(beat.ok());
    CHECK(beat->header.type == MessageType::Heartbeat);
    // Fill the socket (nobody reads) until a raw write would block.
    std::vector<std::byte> chunk(64 << 10);
    while (p.client.send_raw(chunk, deadline_after(50ms)).ok()) {
    }
    auto skipped = p.client.send_if_writable(Heartbeat{1, 3}, deadline_after(1s));
    REQUIRE(skipped.ok());
    CHECK_FALSE(*skipped);
}

TEST_CASE("handshake: matching peers with the right key pair up") {
    Key key = key_of('k');
    for (FrameAuth fa : {FrameAuth::Off, FrameAuth::On}) {
        Pair p = make_pair();
        Hello primary = demo_hello(PeerState::PrimaryActive);
        Hello secondary = demo_hello(PeerState::SecondaryStandby);
        primary.frame_auth = secondary.frame_auth = fa;
        auto r = run_handshake(p, key, primary, key, secondary);
        REQUIRE(r.connecting.ok());
        REQUIRE(r.accepting.ok());
        REQUIRE(r.connecting->state == PeerState::SecondaryStandby);
        REQUIRE(r.accepting->state == PeerState::PrimaryActive);
        REQUIRE(p.client.authenticated());

        // A checkpoint and the acknowledgements, with MACs on every frame when asked for.
        SmallGuest g;
        g.memory[3 * kPageSize] = std::byte{1};
        std::vector<uint64_t> dirty{1, 2, 3, 60};
        auto state = StateEncoder({kMinFramePayload, ZeroScan::On})
                         .encode({1, dirty, [&](uint64_t i) { return std::span(g.memory).subspan(i * kPageSize, kPageSize); },
                                  g.sections()});
        REQUIRE(state.ok());
        REQUIRE(p.client.send_state(state.value(), deadline_after(2s)).ok());
        auto decoder = StateDecoder::create(StateShape::from_hello(secondary)).value();
        size_t heartbeats = 0;
        auto got = receive_checkpoint(p.server, decoder, heartbeats);
        REQUIRE(got.ok());
        REQUIRE(got->first == 1);
        REQUIRE(p.server.send(VmstateReceived{1}, deadline_after(1s)).ok());
        REQUIRE(std::get<VmstateReceived>(p.client.receive(deadline_after(1s))->message().value()).seq == 1);
    }
}

TEST_CASE("handshake: per-frame authentication rejects a frame without a valid MAC") {
    Key key = key_of('k');
    Pair p = make_pair();
    Hello a = demo_hello(PeerState::PrimaryActive);
    Hello b = demo_hello(PeerState::SecondaryStandby);
    a.frame_auth = b.frame_auth = FrameAuth::On;
    auto r = run_handshake(p, key, a, key, b);
    REQUIRE(r.connecting.ok());
    // The handshake used frames 0 and 1; an injected frame 2 without a MAC is refused.
    auto injected = encode_frame(MessageType::VmstateLoaded, 2, VmstateLoaded{1}.encode());
    REQUIRE(p.client.send_raw(injected, deadline_after(1s)).ok());
    REQUIRE(reason(p.server.receive(deadline_after(1s))) == Reason::FrameAuth);

    // A frame whose MAC is wrong (flag set, tag garbage) is refused too.
    Pair q = make_pair();
    auto r2 = run_handshake(q, key, a, key, b);
    REQUIRE(r2.connecting.ok());
    auto payload = VmstateLoaded{1}.encode();
    std::vector<std::byte> forged;
    ByteWriter w(forged);
    w.bytes(encode_header({kWireVersion, MessageType::VmstateLoaded, 1, 2, uint32_t(payload.size())}));
    w.bytes(payload);
    w.u32(crc32c(payload));
    w.zeros(kMacSize);
    REQUIRE(q.client.send_raw(forged, deadline_after(1s)).ok());
    REQUIRE(reason(q.server.receive(deadline_after(1s))) == Reason::FrameAuth);
}

TEST_CASE("handshake: a wrong key fails authentication on both sides") {
    Pair p = make_pair();
    auto r = run_handshake(p, key_of('a'), demo_hello(PeerState::PrimaryActive), key_of('b'),
                           demo_hello(PeerState::SecondaryStandby));
    REQUIRE(reason(r.connecting) == Reason::AuthFailed);
    REQUIRE(reason(r.accepting) == Reason::AuthFailed);
    REQUIRE(r.accepting.error().code() == base::Errc::Auth);
    REQUIRE_FALSE(p.server.authenticated());
}

TEST_CASE("handshake: a shape mismatch is refused and both sides log the reason") {
    std::mutex mutex;
    std::vector<std::string> logged;
    base::set_log_sink([&](const base::LogRecord& rec) {
        if (rec.event == "handshake-failed") {
            std::lock_guard lock(mutex);
            logged.push_back(rec.message);
        }
    });
    Key key = key_of('k');
    Pair p = make_pair();
    Hello a = demo_hello(PeerState::PrimaryActive);
    Hello b = demo_hello(PeerState::SecondaryStandby);
    b.memory_bytes *= 2;
    auto r = run_handshake(p, key, a, key, b);
    base::set_log_sink({});
    REQUIRE(reason(r.connecting) == Reason::Refused);
    REQUIRE(reason(r.accepting) == Reason::Refused);
    REQUIRE(r.connecting.error().code() == base::Errc::Mismatch);
    REQUIRE(logged.size() == 2);
    for (const auto& line : logged)
        REQUIRE_THAT(line, Catch::Contains("memory size differs"));
}

TEST_CASE("handshake: a primary refuses a peer that is already active, and the peer hears why") {
    Key key = key_of('k');
    Pair p = make_pair();
    PeerPolicy no_second_guest = [](const Hello& peer) -> std::string {
        return peer.state == PeerState::SecondaryActive ? "peer is already active: not starting a second guest" : "";
    };
    auto r = run_handshake(p, key, demo_hello(PeerState::PrimaryStarting), key,
                           demo_hello(PeerState::SecondaryActive), no_second_guest);
    REQUIRE(reason(r.connecting) == Reason::Refused);
    REQUIRE(reason(r.accepting) == Reason::Refused);
    REQUIRE_THAT(r.accepting.error().message(), Catch::Contains("already active"));
}

TEST_CASE("handshake: a reflected challenge is refused") {
    Key key = key_of('k');
    Pair p = make_pair();
    base::Result<Hello> server{base::Error(base::Errc::Failed, "not run")};
    std::thread t([&] { server = handshake(p.server, key, demo_hello(PeerState::SecondaryStandby), deadline_after(3s)); });
    // The attacker copies the server's HELLO, nonce included, and sends it back.
    auto theirs = p.client.receive(deadline_after(2s));
    REQUIRE(theirs.ok());
    Hello echo = std::get<Hello>(theirs->message().value());
    REQUIRE(p.client.send(echo, deadline_after(1s)).ok());
    t.join();
    REQUIRE(reason(server) == Reason::ReflectedChallenge);
    REQUIRE(server.error().code() == base::Errc::Auth);
}

TEST_CASE("handshake: state before authentication is refused") {
    Key key = key_of('k');
    Pair p = make_pair();
    base::Result<Hello> server{base::Error(base::Errc::Failed, "not run")};
    std::thread t([&] { server = handshake(p.server, key, demo_hello(PeerState::SecondaryStandby), deadline_after(3s)); });
    auto frame = encode_frame(MessageType::VmstateSize, 0, VmstateSize{1, 100, 1, 1}.encode());
    REQUIRE(p.client.send_raw(frame, deadline_after(1s)).ok());
    t.join();
    REQUIRE(reason(server) == Reason::Unauthenticated);
}

TEST_CASE("frames from concurrent senders never interleave") {
    Key key = key_of('k');
    Pair p = make_pair();
    auto r = run_handshake(p, key, demo_hello(PeerState::PrimaryActive), key, demo_hello(PeerState::SecondaryStandby));
    REQUIRE(r.connecting.ok());
    SmallGuest g;
    std::mt19937_64 rng(5);
    for (auto& b : g.memory)
        b = std::byte(rng());
    std::vector<uint64_t> dirty(64);
    for (uint64_t i = 0; i < 64; ++i)
        dirty[i] = i;
    auto decoder = StateDecoder::create(StateShape::from_hello(demo_hello(PeerState::PrimaryActive))).value();
    size_t heartbeats = 0;
    constexpr int kCheckpoints = 20;
    base::Result<void> receiver_result;
    std::thread receiver([&] {
        for (int i = 1; i <= kCheckpoints; ++i) {
            auto got = receive_checkpoint(p.server, decoder, heartbeats);
            if (!got) {
                receiver_result = std::move(got).error();
                return;
            }
        }
    });
    {
        auto beats = HeartbeatSender::start(p.client, 1ms, [] { return uint64_t(0); });
        REQUIRE(beats.ok());
        for (int i = 1; i <= kCheckpoints; ++i) {
            auto state = StateEncoder({kMinFramePayload, ZeroScan::On})
                             .encode({uint64_t(i), dirty,
                                      [&](uint64_t n) { return std::span(g.memory).subspan(n * kPageSize, kPageSize); },
                                      g.sections()});
            REQUIRE(state.ok());
            REQUIRE(state->frame_count() > 2);
            REQUIRE(p.client.send_state(state.value(), deadline_after(5s)).ok());
            // A burst of explicit heartbeats from this thread too, racing the sender thread.
            REQUIRE(p.client.send(Heartbeat{uint64_t(i), 0}, deadline_after(1s)).ok());
        }
        REQUIRE_FALSE(beats.value()->failed());
    }
    receiver.join();
    REQUIRE(receiver_result.ok());
    REQUIRE(decoder.last_complete() == kCheckpoints);
    // The explicit heartbeat after checkpoint i is read while waiting for checkpoint i + 1.
    REQUIRE(heartbeats >= kCheckpoints - 1);
}

// ---- A listening secondary faced with hostile connections ----

namespace {

// Models the secondary's accept loop: accept, handshake with a deadline, log and go on.
class TestSecondary {
public:
    explicit TestSecondary(const Key& key) : m_key(key) {
        auto l = Listener::create("127.0.0.1:0");
        REQUIRE(l.ok());
        m_listener.emplace(std::move(l).value());
        m_thread = std::thread([this] { run(); });
    }
    ~TestSecondary() {
        m_listener->shutdown();
        m_thread.join();
    }
    std::string address() const { return fmt::format("127.0.0.1:{}", m_listener->port()); }

    // Waits for the outcome of the n-th connection (0-based).
    base::Result<Hello> outcome(size_t n) {
        std::unique_lock lock(m_mutex);
        m_changed.wait_for(lock, 10s, [&] { return m_outcomes.size() > n; });
        REQUIRE(m_outcomes.size() > n);
        return m_outcomes[n];
    }

private:
    void run() {
        for (;;) {
            auto link = m_listener->accept(deadline_after(60s));
            if (!link) {
                if (link.error().code() == base::Errc::Stopped)
                    return;
                continue;
            }
            auto peer = handshake(link.value(), m_key, demo_hello(PeerState::SecondaryStandby), deadline_after(500ms));
            if (peer) {
                // Prove the session works: take one checkpoint and acknowledge it.
                auto decoder = StateDecoder::create(StateShape::from_hello(peer.value())).value();
                size_t heartbeats = 0;
                auto cp = receive_checkpoint(link.value(), decoder, heartbeats);
                if (!cp)
                    peer = std::move(cp).error();
                else
                    (void)link->send(VmstateLoaded{cp->first}, deadline_after(1s));
            }
            std::lock_guard lock(m_mutex);
            m_outcomes.push_back(std::move(peer));
            m_changed.notify_all();
        }
    }

    const Key& m_key;
    std::optional<Listener> m_listener;
    std::thread m_thread;
    std::mutex m_mutex;
    std::condition_variable m_changed;
    std::vector<base::Result<Hello>> m_outcomes;
};

void real_primary_syncs(const std::string& address, const Key& key) {
    auto link = Link::connect(address, deadline_after(2s));
    REQUIRE(link.ok());
    auto peer = handshake(link.value(), key, demo_hello(PeerState::PrimaryActive), deadline_after(2s));
    REQUIRE(peer.ok());
    SmallGuest g;
    std::vector<uint64_t> dirty{0, 1, 2};
    auto state = StateEncoder().encode(
        {1, dirty, [&](uint64_t i) { return std::span(g.memory).subspan(i * kPageSize, kPageSize); }, g.sections()});
    REQUIRE(link->send_state(state.value(), deadline_after(2s)).ok());
    auto ack = link->receive(deadline_after(2s));
    REQUIRE(ack.ok());
    REQUIRE(std::get<VmstateLoaded>(ack->message().value()).seq == 1);
}

}  // namespace

TEST_CASE("a listening secondary survives hostile connections and still accepts its primary") {
    Key key = key_of('k');
    TestSecondary secondary(key);
    size_t n = 0;

    SECTION("garbage bytes") {
        auto link = Link::connect(secondary.address(), deadline_after(2s));
        std::vector<std::byte> garbage(4096);
        std::mt19937_64 rng(1);
        for (auto& b : garbage)
            b = std::byte(rng());
        (void)link->send_raw(garbage, deadline_after(1s));
        REQUIRE(reason(secondary.outcome(n++)) == Reason::BadMagic);
    }
    SECTION("a wrong key") {
        auto link = Link::connect(secondary.address(), deadline_after(2s));
        auto r = handshake(link.value(), key_of('w'), demo_hello(PeerState::PrimaryActive), deadline_after(2s));
        REQUIRE(reason(r) == Reason::AuthFailed);
        REQUIRE(reason(secondary.outcome(n++)) == Reason::AuthFailed);
    }
    SECTION("a half frame then silence") {
        auto link = Link::connect(secondary.address(), deadline_after(2s));
        auto frame = encode_frame(MessageType::Hello, 0, demo_hello(PeerState::PrimaryActive).encode());
        REQUIRE(link->send_raw(std::span(frame).first(30), deadline_after(1s)).ok());
        auto r = secondary.outcome(n++);
        REQUIRE(r.error().code() == base::Errc::Timeout);
    }
    SECTION("a valid HELLO then a flood") {
        auto link = Link::connect(secondary.address(), deadline_after(2s));
        std::vector<std::byte> flood;
        auto hello = encode_frame(MessageType::Hello, 0, demo_hello(PeerState::PrimaryActive).encode());
        flood.insert(flood.end(), hello.begin(), hello.end());
        for (uint64_t seq = 1; seq < 20000; ++seq) {
            auto f = encode_frame(MessageType::Heartbeat, seq, Heartbeat{seq, 0}.encode());
            flood.insert(flood.end(), f.begin(), f.end());
        }
        (void)link->send_raw(flood, deadline_after(2s));  // the secondary may cut us off midway
        REQUIRE(reason(secondary.outcome(n++)) == Reason::Unauthenticated);
    }
    SECTION("a flood of oversized frames") {
        auto link = Link::connect(secondary.address(), deadline_after(2s));
        FrameHeader h{kWireVersion, MessageType::Hello, 0, 0, 0xFFFFFFF0u};
        auto head = encode_header(h);
        (void)link->send_raw(head, deadline_after(1s));
        REQUIRE(reason(secondary.outcome(n++)) == Reason::LengthOverCap);
    }
    real_primary_syncs(secondary.address(), key);
    REQUIRE(secondary.outcome(n).ok());
}

TEST_CASE("heartbeats flow when the link is idle and carry the committed sequence") {
    Pair p = make_pair();
    p.client.set_authenticated(std::nullopt);
    p.server.set_authenticated(std::nullopt);
    auto beats = HeartbeatSender::start(p.client, 5ms, [] { return uint64_t(77); });
    REQUIRE(beats.ok());
    for (int i = 0; i < 4; ++i) {
        auto frame = p.server.receive(deadline_after(2s));
        REQUIRE(frame.ok());
        REQUIRE(frame->header.type == MessageType::Heartbeat);
        REQUIRE(std::get<Heartbeat>(frame->message().value()).committed_seq == 77);
    }
    // One thread sends them one after another: the 4th left after the 3rd was counted.
    REQUIRE(beats.value()->sent() >= 3);
}

TEST_CASE("IPv6 loopback works where the host has it") {
    auto listener = Listener::create("[::1]:0");
    if (!listener) {
        WARN("no IPv6 loopback here: " << listener.error().message());
        return;
    }
    REQUIRE_THAT(listener->local_address(), Catch::StartsWith("[::1]:"));
    auto client = Link::connect(fmt::format("[::1]:{}", listener->port()), deadline_after(2s));
    REQUIRE(client.ok());
    auto server = listener->accept(deadline_after(2s));
    REQUIRE(server.ok());
    Key key = key_of('k');
    base::Result<Hello> theirs{base::Error(base::Errc::Failed, "not run")};
    std::thread t([&] { theirs = handshake(server.value(), key, demo_hello(PeerState::SecondaryStandby), deadline_after(2s)); });
    auto mine = handshake(client.value(), key, demo_hello(PeerState::PrimaryActive), deadline_after(2s));
    t.join();
    REQUIRE(mine.ok());
    REQUIRE(theirs.ok());
}

TEST_CASE("connecting to a closed port and accepting with nobody calling fail cleanly") {
    uint16_t port;
    {
        auto listener = Listener::create("127.0.0.1:0");
        port = listener->port();
    }
    auto refused = Link::connect(fmt::format("127.0.0.1:{}", port), deadline_after(1s));
    REQUIRE_FALSE(refused.ok());
    REQUIRE(refused.error().code() == base::Errc::System);
    auto listener = Listener::create("127.0.0.1:0");
    REQUIRE(listener->accept(deadline_after(50ms)).error().code() == base::Errc::Timeout);
    REQUIRE(Link::connect("no-port-here", deadline_after(1s)).error().code() == base::Errc::Invalid);
}
