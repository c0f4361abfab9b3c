// SPDX-License-Identifier: GPL-2.0-or-later
// The link and the handshake over real loopback sockets, including a listening side that
// models the secondary's accept loop and must survive hostile connections.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "base/fd.h"
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


// A man in the middle: a TCP relay between a connecting and an accepting Link that hands every
// frame from the connecting side to `edit` (which decides what goes on: the frame, a changed
// one, several, none) and records the frames of the other direction. Frames pass whole; when
// `edit` sets close, the relay closes both connections after writing what it was given.
class Relay {
public:
    using Bytes = std::vector<std::byte>;
    struct Edit {
        uint64_t index;              // frames from the connecting side so far (HELLO is 0)
        Bytes frame;                 // as it arrived
        std::vector<Bytes>& out;     // what to forward, in order
        const std::vector<Bytes>& backward;  // frames the accepting side sent so far
        bool close = false;
    };

    explicit Relay(std::function<void(Edit&)> edit) : m_edit(std::move(edit)) {
        auto listener = Listener::create("127.0.0.1:0");
        REQUIRE(listener.ok());
        m_target.emplace(std::move(listener).value());
        m_listen = base::Fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t length = sizeof address;
        // SAFETY: sockaddr_in is the sockaddr of an AF_INET socket.
        REQUIRE(::bind(m_listen.get(), reinterpret_cast<sockaddr*>(&address), length) == 0);
        REQUIRE(::listen(m_listen.get(), 1) == 0);
        REQUIRE(::getsockname(m_listen.get(), reinterpret_cast<sockaddr*>(&address), &length) == 0);
        auto client = Link::connect(fmt::format("127.0.0.1:{}", ntohs(address.sin_port)), deadline_after(2s));
        REQUIRE(client.ok());
        m_client.emplace(std::move(client).value());
        m_from_client = base::Fd(::accept4(m_listen.get(), nullptr, nullptr, SOCK_CLOEXEC));
        REQUIRE(m_from_client);
        m_to_server = base::Fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        address.sin_port = htons(m_target->port());
        REQUIRE(::connect(m_to_server.get(), reinterpret_cast<sockaddr*>(&address), length) == 0);
        auto server = m_target->accept(deadline_after(2s));
        REQUIRE(server.ok());
        m_server.emplace(std::move(server).value());
        m_forward = std::thread([this] { forward(); });
        m_backward = std::thread([this] { backward(); });
    }
    ~Relay() { stop(); }
    void stop() {
        ::shutdown(m_from_client.get(), SHUT_RDWR);
        ::shutdown(m_to_server.get(), SHUT_RDWR);
        if (m_forward.joinable())
            m_forward.join();
        if (m_backward.joinable())
            m_backward.join();
    }

    Link& client() { return *m_client; }
    Link& server() { return *m_server; }

    // Both handshakes at once, through the relay.
    HandshakeResults handshake(const KeySet& client_keys, const KeySet& server_keys,
                               Hello client_hello = demo_hello(PeerState::PrimaryActive),
                               Hello server_hello = demo_hello(PeerState::SecondaryStandby)) {
        HandshakeResults r;
        std::thread t([&] { r.accepting = proto::handshake(*m_server, server_keys, server_hello, deadline_after(3s)); });
        r.connecting = proto::handshake(*m_client, client_keys, client_hello, deadline_after(3s));
        t.join();
        return r;
    }
    HandshakeResults handshake(const Key& client_key, const Key& server_key) {
        return handshake(KeySet(client_key), KeySet(server_key));
    }

private:
    static bool read_all(int fd, std::byte* out, size_t n) {
        while (n) {
            ssize_t r = ::recv(fd, out, n, 0);
            if (r <= 0)
                return false;
            out += r;
            n -= size_t(r);
        }
        return true;
    }
    static bool write_all(int fd, const Bytes& bytes) {
        size_t at = 0;
        while (at < bytes.size()) {
            ssize_t w = ::send(fd, bytes.data() + at, bytes.size() - at, MSG_NOSIGNAL);
            if (w <= 0)
                return false;
            at += size_t(w);
        }
        return true;
    }
    static std::optional<Bytes> read_frame(int fd) {
        Bytes frame(kHeaderSize);
        if (!read_all(fd, frame.data(), kHeaderSize))
            return std::nullopt;
        auto header = decode_header(frame);
        if (!header)
            return std::nullopt;
        frame.resize(kHeaderSize + header->body_size());
        if (!read_all(fd, frame.data() + kHeaderSize, header->body_size()))
            return std::nullopt;
        return frame;
    }
    void forward() {
        for (uint64_t index = 0;; ++index) {
            auto frame = read_frame(m_from_client.get());
            if (!frame)
                break;
            std::vector<Bytes> out;
            std::vector<Bytes> backward;
            {
                std::lock_guard lock(m_mutex);
                backward = m_backward_frames;
            }
            Edit e{index, std::move(*frame), out, backward};
            m_edit(e);
            for (const auto& f : out)
                if (!write_all(m_to_server.get(), f))
                    break;
            if (e.close)
                break;
        }
        ::shutdown(m_to_server.get(), SHUT_RDWR);
        ::shutdown(m_from_client.get(), SHUT_RDWR);
    }
    void backward() {
        for (;;) {
            auto frame = read_frame(m_to_server.get());
            if (!frame)
                break;
            {
                // Recorded before it is passed on: once the connecting side has a frame, so has the record.
                std::lock_guard lock(m_mutex);
                m_backward_frames.push_back(*frame);
            }
            if (!write_all(m_from_client.get(), *frame))
                break;
        }
        ::shutdown(m_from_client.get(), SHUT_WR);
    }

    std::function<void(Edit&)> m_edit;
    std::optional<Listener> m_target;
    base::Fd m_listen, m_from_client, m_to_server;
    std::optional<Link> m_client, m_server;
    std::mutex m_mutex;
    std::vector<Bytes> m_backward_frames;  // guarded by m_mutex
    std::thread m_forward, m_backward;
};

// Rewrites a frame's sequence number and header check (what an attacker can always do).
void set_sequence(Relay::Bytes& frame, uint64_t sequence) {
    store_be64(&frame[8], sequence);
    store_be32(&frame[20], crc32c(std::span(frame).first(20)));
}
uint64_t sequence_of(const Relay::Bytes& frame) { return load_be64(&frame[8]); }
MessageType type_of(const Relay::Bytes& frame) { return static_cast<MessageType>(frame[5]); }

// A checkpoint of the 64-page guest in 64 KiB frames (several VMSTATE_SEND frames).
EncodedState multi_frame_checkpoint(SmallGuest& g, uint64_t seq) {
    std::mt19937_64 rng(seq);
    for (auto& b : g.memory)
        b = std::byte(rng());
    std::vector<uint64_t> dirty(64);
    for (uint64_t i = 0; i < 64; ++i)
        dirty[i] = i;
    auto state = StateEncoder({kMinFramePayload, ZeroScan::On})
                     .encode({seq, dirty, [&](uint64_t i) { return std::span(g.memory).subspan(i * kPageSize, kPageSize); },
                              g.sections()});
    REQUIRE(state.ok());
    REQUIRE(state->frame_count() > 3);
    return std::move(state).value();
}

// An attacker on the path of an encrypted session: the handshake passes untouched, then
// `attack` edits the checkpoint's frames. Returns what the receiving side made of them.
base::Result<std::pair<uint64_t, size_t>> attacked_checkpoint(std::function<void(Relay::Edit&)> attack) {
    Key key = key_of('k');
    Relay relay([&](Relay::Edit& e) {
        if (e.index < 2)
            e.out.push_back(e.frame);  // HELLO and AUTH
        else
            attack(e);
    });
    auto r = relay.handshake(key, key);
    REQUIRE(r.connecting.ok());
    REQUIRE(r.accepting.ok());
    REQUIRE(relay.server().security() == LinkSecurity::Encrypted);
    SmallGuest g;
    auto state = multi_frame_checkpoint(g, 1);
    // The send may fail once the receiver gives up: what matters is the receiver's verdict.
    std::thread sender([&] { (void)relay.client().send_state(state, deadline_after(3s)); });
    auto decoder = StateDecoder::create(StateShape::from_hello(demo_hello(PeerState::PrimaryActive))).value();
    size_t heartbeats = 0;
    auto got = receive_checkpoint(relay.server(), decoder, heartbeats);
    relay.server().shutdown();
    relay.stop();
    sender.join();
    return got;
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

TEST_CASE("handshake: matching peers with the right key pair up, for every link security and AEAD") {
    Key key = key_of('k');
    struct Setting {
        LinkSecurity security;
        Aead primary_aead;
        Aead secondary_aead;
    };
    for (Setting setting : {Setting{LinkSecurity::Encrypted, Aead::Auto, Aead::Auto},
                            Setting{LinkSecurity::Encrypted, Aead::Aes256Gcm, Aead::ChaCha20Poly1305},
                            Setting{LinkSecurity::Authenticated, Aead::Auto, Aead::Auto},
                            Setting{LinkSecurity::Authenticated, Aead::ChaCha20Poly1305, Aead::ChaCha20Poly1305},
                            Setting{LinkSecurity::None, Aead::Auto, Aead::Auto}}) {
        INFO(link_security_name(setting.security) << ", " << aead_name(setting.primary_aead) << " / "
                                                  << aead_name(setting.secondary_aead));
        Pair p = make_pair();
        Hello primary = demo_hello(PeerState::PrimaryActive);
        Hello secondary = demo_hello(PeerState::SecondaryStandby);
        primary.link_security = secondary.link_security = setting.security;
        primary.aead = setting.primary_aead;
        secondary.aead = setting.secondary_aead;
        auto r = run_handshake(p, key, primary, key, secondary);
        REQUIRE(r.connecting.ok());
        REQUIRE(r.accepting.ok());
        REQUIRE(r.connecting->state == PeerState::SecondaryStandby);
        REQUIRE(r.accepting->state == PeerState::PrimaryActive);
        REQUIRE(r.accepting->key_ids == std::vector<KeyId>{key.id()});
        REQUIRE(p.client.authenticated());
        REQUIRE(p.client.security() == setting.security);
        REQUIRE(p.server.security() == setting.security);

        // A checkpoint and the acknowledgements, sealed as the setting says.
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

        // A batch of network frames in one write: each its own sealed frame, in order, and
        // the frames after it numbered on.
        std::vector<Message> batch;
        for (uint64_t i = 0; i < 40; ++i)
            batch.push_back(NetInput{i, std::string(60 + 37 * i, char('a' + i % 26))});
        batch.push_back(VmstateLoaded{7});
        REQUIRE(p.client.send_batch(batch, deadline_after(2s)).ok());
        REQUIRE(p.client.send(VmstateLoaded{8}, deadline_after(1s)).ok());
        for (uint64_t i = 0; i < 40; ++i) {
            auto frame = p.server.receive(deadline_after(1s));
            REQUIRE(frame.ok());
            auto input = std::get<NetInput>(frame->message().value());
            CHECK(input.epoch == i);
            CHECK(input.frame == std::string(60 + 37 * i, char('a' + i % 26)));
        }
        REQUIRE(std::get<VmstateLoaded>(p.server.receive(deadline_after(1s))->message().value()).seq == 7);
        REQUIRE(std::get<VmstateLoaded>(p.server.receive(deadline_after(1s))->message().value()).seq == 8);
    }
}

TEST_CASE("encrypted link: no guest byte crosses in clear, and a frame in clear or merely tagged is refused") {
    // A relay that records what crosses shows the page bytes never appear on the wire.
    Key key = key_of('k');
    std::vector<std::byte> wire;
    Relay relay([&](Relay::Edit& e) {
        wire.insert(wire.end(), e.frame.begin(), e.frame.end());
        e.out.push_back(e.frame);
    });
    auto r = relay.handshake(key, key);
    REQUIRE(r.connecting.ok());
    SmallGuest g;
    const std::string marker = "GUEST-SECRET-0123456789";
    std::memcpy(&g.memory[5 * kPageSize + 100], marker.data(), marker.size());
    auto state = StateEncoder({kMinFramePayload, ZeroScan::On})
                     .encode({1, std::vector<uint64_t>{5}, [&](uint64_t i) { return std::span(g.memory).subspan(i * kPageSize, kPageSize); },
                              g.sections()});
    REQUIRE(relay.client().send_state(state.value(), deadline_after(2s)).ok());
    auto decoder = StateDecoder::create(StateShape::from_hello(demo_hello(PeerState::PrimaryActive))).value();
    size_t heartbeats = 0;
    REQUIRE(receive_checkpoint(relay.server(), decoder, heartbeats).ok());
    relay.stop();
    std::string seen(reinterpret_cast<const char*>(wire.data()), wire.size());
    REQUIRE(seen.find(marker) == std::string::npos);
    REQUIRE(seen.find("uart0") != std::string::npos);  // the HELLOs are in clear: the check can see

    // Frames that do not carry the session's seal: refused, whatever their CRC or tag say.
    Pair p = make_pair();
    auto r2 = run_handshake(p, key, demo_hello(PeerState::PrimaryActive), key, demo_hello(PeerState::SecondaryStandby));
    REQUIRE(r2.connecting.ok());
    // The handshake used frames 0 and 1; a plain frame 2 with a valid CRC is refused.
    auto injected = encode_frame(MessageType::VmstateLoaded, 2, VmstateLoaded{1}.encode());
    REQUIRE(p.client.send_raw(injected, deadline_after(1s)).ok());
    REQUIRE(reason(p.server.receive(deadline_after(1s))) == Reason::FrameAuth);
    for (uint16_t flags : {uint16_t(FrameFlag::Tag), uint16_t(FrameFlag::Sealed)}) {
        Pair q = make_pair();
        REQUIRE(run_handshake(q, key, demo_hello(PeerState::PrimaryActive), key, demo_hello(PeerState::SecondaryStandby))
                    .connecting.ok());
        auto payload = VmstateLoaded{1}.encode();
        std::vector<std::byte> forged;
        ByteWriter w(forged);
        w.bytes(encode_header({kWireVersion, MessageType::VmstateLoaded, flags, 2, uint32_t(payload.size())}));
        w.bytes(payload);
        w.zeros(kTagSize);
        REQUIRE(q.client.send_raw(forged, deadline_after(1s)).ok());
        INFO("flags " << flags);
        REQUIRE(reason(q.server.receive(deadline_after(1s))) == Reason::FrameAuth);
    }
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

// ---- An attacker on the path of an encrypted session (the default) ----

TEST_CASE("encrypted link, hostile path: a flipped bit in the ciphertext or the tag is refused") {
    for (size_t where : {size_t(kHeaderSize + 20), size_t(kHeaderSize + 40000), size_t(0)}) {
        INFO("offset " << where << " (0: the tag's last byte)");
        auto got = attacked_checkpoint([&](Relay::Edit& e) {
            if (e.index == 4 && type_of(e.frame) == MessageType::VmstateSend)
                e.frame[where ? where : e.frame.size() - 1] ^= std::byte{0x10};
            e.out.push_back(e.frame);
        });
        REQUIRE(reason(got) == Reason::FrameAuth);
    }
}

TEST_CASE("encrypted link, hostile path: a changed header is refused, its check fixed up or not") {
    // Without the fix-up the header check catches it; with it, the header's place in the tag does.
    auto plain = attacked_checkpoint([](Relay::Edit& e) {
        if (e.index == 3)
            e.frame[17] ^= std::byte{0x01};  // the length: caught by the header check alone
        e.out.push_back(e.frame);
    });
    REQUIRE(reason(plain) == Reason::HeaderCheck);
    for (size_t byte : {size_t(5), size_t(7)}) {  // the type, a flag bit
        INFO("header byte " << byte);
        auto fixed = attacked_checkpoint([&](Relay::Edit& e) {
            if (byte == 5 && e.index == 2 && type_of(e.frame) == MessageType::VmstateSize) {
                e.frame[5] = std::byte(uint8_t(MessageType::VmstateLoaded));  // within its cap too
                set_sequence(e.frame, sequence_of(e.frame));                 // fixes the header check
            }
            if (byte == 7 && e.index == 3) {
                e.frame[7] ^= std::byte{0x06};  // Sealed → Tag: a downgrade of one frame
                set_sequence(e.frame, sequence_of(e.frame));
            }
            e.out.push_back(e.frame);
        });
        REQUIRE(reason(fixed) == Reason::FrameAuth);
    }
}

TEST_CASE("encrypted link, hostile path: a replayed frame is refused, with its old or a fitting sequence number") {
    Relay::Bytes kept;
    auto as_is = attacked_checkpoint([&](Relay::Edit& e) {
        if (e.index == 3)
            kept = e.frame;
        e.out.push_back(e.frame);
        if (e.index == 4)
            e.out.push_back(kept);  // frame 3 again, as it was
    });
    REQUIRE(reason(as_is) == Reason::SequenceGap);
    auto renumbered = attacked_checkpoint([&](Relay::Edit& e) {
        if (e.index == 3)
            kept = e.frame;
        if (e.index == 4) {
            set_sequence(kept, sequence_of(e.frame));  // frame 3's bytes where frame 4 belongs
            e.out.push_back(kept);
            return;
        }
        e.out.push_back(e.frame);
    });
    REQUIRE(reason(renumbered) == Reason::FrameAuth);
}

TEST_CASE("encrypted link, hostile path: reordered frames are refused, renumbered or not") {
    for (bool renumber : {false, true}) {
        INFO("renumbered " << renumber);
        Relay::Bytes held;
        auto got = attacked_checkpoint([&](Relay::Edit& e) {
            if (e.index == 3) {
                held = e.frame;
                return;
            }
            if (e.index == 4) {
                if (renumber) {
                    uint64_t first = sequence_of(held);
                    set_sequence(held, sequence_of(e.frame));
                    set_sequence(e.frame, first);
                }
                e.out.push_back(e.frame);
                e.out.push_back(held);
                return;
            }
            e.out.push_back(e.frame);
        });
        REQUIRE(reason(got) == (renumber ? Reason::FrameAuth : Reason::SequenceGap));
    }
}

TEST_CASE("encrypted link, hostile path: dropped or truncated frames are refused or end the session unapplied") {
    // A frame dropped and the rest renumbered to hide the gap: the next frame's tag fails.
    uint64_t dropped = 0;
    auto renumbered = attacked_checkpoint([&](Relay::Edit& e) {
        if (e.index == 3) {
            dropped = 1;
            return;
        }
        if (dropped)
            set_sequence(e.frame, sequence_of(e.frame) - dropped);
        e.out.push_back(e.frame);
    });
    REQUIRE(reason(renumbered) == Reason::FrameAuth);
    // A frame cut short with its length rewritten to match: the tag fails.
    auto shortened = attacked_checkpoint([&](Relay::Edit& e) {
        if (e.index == 4) {
            uint32_t length = load_be32(&e.frame[16]);
            e.frame.erase(e.frame.begin() + ptrdiff_t(kHeaderSize + length - 100), e.frame.begin() + ptrdiff_t(kHeaderSize + length));
            store_be32(&e.frame[16], length - 100);
            set_sequence(e.frame, sequence_of(e.frame));
        }
        e.out.push_back(e.frame);
    });
    REQUIRE(reason(shortened) == Reason::FrameAuth);
    // The stream cut in the middle of a frame, or after a whole frame: the receiver sees the end
    // of the connection before END, so nothing of the checkpoint is ever applied.
    for (bool mid_frame : {true, false}) {
        INFO("cut mid-frame " << mid_frame);
        auto cut = attacked_checkpoint([&](Relay::Edit& e) {
            if (e.index == 4) {
                if (mid_frame)
                    e.out.push_back(Relay::Bytes(e.frame.begin(), e.frame.begin() + 1000));
                e.close = true;
                return;
            }
            e.out.push_back(e.frame);
        });
        REQUIRE_FALSE(cut.ok());
        REQUIRE(cut.error().code() == base::Errc::Eof);
    }
}

TEST_CASE("encrypted link, hostile path: a frame sent back to the side that sealed it is refused") {
    // Both directions count from the same sequence numbers, so the accepting side's sealed
    // frame 2 fits exactly where the connecting side's frame 2 belongs: only the per-direction
    // keys tell them apart.
    Key key = key_of('k');
    Relay relay([](Relay::Edit& e) {
        if (e.index == 2 && e.backward.size() >= 3 && sequence_of(e.backward[2]) == sequence_of(e.frame)) {
            e.out.push_back(e.backward[2]);
            return;
        }
        e.out.push_back(e.frame);
    });
    auto r = relay.handshake(key, key);
    REQUIRE(r.connecting.ok());
    REQUIRE(relay.server().send(Heartbeat{5, 6}, deadline_after(1s)).ok());
    REQUIRE(relay.client().receive(deadline_after(2s)).ok());  // the relay has recorded it
    REQUIRE(relay.client().send(Heartbeat{7, 8}, deadline_after(1s)).ok());
    REQUIRE(reason(relay.server().receive(deadline_after(2s))) == Reason::FrameAuth);
}

TEST_CASE("handshake: a HELLO rewritten on the path to ask for less security fails authentication on both sides") {
    // The attacker turns the primary's "encrypted" into "none" and fixes up both CRCs: the
    // secondary then sees two peers that agree on none, but the proofs cover both HELLOs as sent.
    Key key = key_of('k');
    Relay relay([](Relay::Edit& e) {
        if (e.index == 0) {
            uint32_t length = load_be32(&e.frame[16]);
            e.frame[kHeaderSize + 3] = std::byte(uint8_t(LinkSecurity::None));
            store_be32(&e.frame[kHeaderSize + length], crc32c(std::span(e.frame).subspan(kHeaderSize, length)));
        }
        e.out.push_back(e.frame);
    });
    Hello primary = demo_hello(PeerState::PrimaryActive);
    Hello secondary = demo_hello(PeerState::SecondaryStandby);
    secondary.link_security = LinkSecurity::None;  // the side the attacker wants to fool
    auto r = relay.handshake(KeySet(key), KeySet(key), primary, secondary);
    REQUIRE(reason(r.connecting) == Reason::AuthFailed);
    REQUIRE(reason(r.accepting) == Reason::AuthFailed);
    REQUIRE_FALSE(relay.server().authenticated());
}

// ---- Keys: two keys at once while one replaces the other ----

namespace {

// The key id each side logged for its session ("key id …" in peer-authenticated).
struct SessionKeys {
    std::mutex mutex;
    std::vector<std::string> lines;
    SessionKeys() {
        base::set_log_sink([this](const base::LogRecord& rec) {
            if (rec.event == "peer-authenticated") {
                std::lock_guard lock(mutex);
                lines.push_back(rec.message);
            }
        });
    }
    ~SessionKeys() { base::set_log_sink({}); }
    bool both_used(const Key& key) {
        std::lock_guard lock(mutex);
        auto needle = "key id " + key_id_hex(key.id());
        return lines.size() == 2 && lines[0].find(needle) != std::string::npos &&
               lines[1].find(needle) != std::string::npos;
    }
};

// A session that works: a message each way, sealed under the derived keys.
void exchange(Link& a, Link& b) {
    REQUIRE(a.send(CheckpointRequest{3}, deadline_after(1s)).ok());
    auto got = b.receive(deadline_after(1s));
    REQUIRE(got.ok());
    REQUIRE(std::get<CheckpointRequest>(got->message().value()).seq == 3);
    REQUIRE(b.send(CheckpointReply{3}, deadline_after(1s)).ok());
    REQUIRE(a.receive(deadline_after(1s)).ok());
}

}  // namespace

TEST_CASE("key rotation: every overlap of old and new keys pairs up, under the key both hold") {
    Key old_key = key_of('o'), new_key = key_of('n');
    struct Case {
        const char* name;
        KeySet connecting;
        KeySet accepting;
        const Key& expected;
    };
    std::vector<Case> cases;
    cases.push_back({"{old, next new} / {old}", KeySet(old_key, new_key), KeySet(old_key), old_key});
    cases.push_back({"{old, next new} / {new}", KeySet(old_key, new_key), KeySet(new_key), new_key});
    cases.push_back({"{old} / {old, next new}", KeySet(old_key), KeySet(old_key, new_key), old_key});
    cases.push_back({"{new} / {old, next new}", KeySet(new_key), KeySet(old_key, new_key), new_key});
    cases.push_back({"{old, next new} / {old, next new}", KeySet(old_key, new_key), KeySet(old_key, new_key), old_key});
    cases.push_back({"{new, next old} / {old, next new}", KeySet(new_key, old_key), KeySet(old_key, new_key), new_key});
    cases.push_back({"{new} / {new}", KeySet(new_key), KeySet(new_key), new_key});
    for (auto& c : cases) {
        INFO(c.name);
        SessionKeys logged;
        Pair p = make_pair();
        HandshakeResults r;
        std::thread t([&] { r.accepting = handshake(p.server, c.accepting, demo_hello(PeerState::SecondaryStandby), deadline_after(3s)); });
        r.connecting = handshake(p.client, c.connecting, demo_hello(PeerState::PrimaryActive), deadline_after(3s));
        t.join();
        REQUIRE(r.connecting.ok());
        REQUIRE(r.accepting.ok());
        exchange(p.client, p.server);
        REQUIRE(logged.both_used(c.expected));
    }
}

TEST_CASE("key rotation: sides without a key in common are refused, and the log names the key ids") {
    Key old_key = key_of('o'), new_key = key_of('n'), other = key_of('z');
    Pair p = make_pair();
    HandshakeResults r;
    std::thread t([&] { r.accepting = handshake(p.server, KeySet(new_key, other), demo_hello(PeerState::SecondaryStandby), deadline_after(3s)); });
    r.connecting = handshake(p.client, KeySet(old_key), demo_hello(PeerState::PrimaryActive), deadline_after(3s));
    t.join();
    REQUIRE(reason(r.connecting) == Reason::AuthFailed);
    REQUIRE(reason(r.accepting) == Reason::AuthFailed);
    REQUIRE_THAT(r.accepting.error().message(), Catch::Contains("holds none of this side's keys"));
    REQUIRE_THAT(r.accepting.error().message(), Catch::Contains(key_id_hex(old_key.id())));
    REQUIRE_THAT(r.accepting.error().message(), Catch::Contains(key_id_hex(new_key.id())));
}

TEST_CASE("key rotation: a key ring replaced between two handshakes is used from the next one on") {
    Key old_key = key_of('o'), new_key = key_of('n');
    KeyRing ring{KeySet(old_key)};
    auto attempt = [&](const Key& peer_key) {
        Pair p = make_pair();
        HandshakeResults r;
        std::thread t([&] { r.accepting = handshake(p.server, ring, demo_hello(PeerState::SecondaryStandby), deadline_after(3s)); });
        r.connecting = handshake(p.client, peer_key, demo_hello(PeerState::PrimaryActive), deadline_after(3s));
        t.join();
        return r.accepting.ok() && r.connecting.ok();
    };
    REQUIRE(attempt(old_key));
    REQUIRE_FALSE(attempt(new_key));
    ring.replace(KeySet(old_key, new_key));
    REQUIRE(attempt(old_key));
    REQUIRE(attempt(new_key));
    ring.replace(KeySet(new_key));
    REQUIRE_FALSE(attempt(old_key));
    REQUIRE(attempt(new_key));
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

TEST_CASE("handshake: a peer asking for less link security is refused, naming the key and both values") {
    // (After the test above: handshake-failed records are rate-limited per host and reason.)
    Key key = key_of('k');
    for (LinkSecurity weaker : {LinkSecurity::None, LinkSecurity::Authenticated}) {
        Pair p = make_pair();
        Hello ours = demo_hello(PeerState::SecondaryStandby);
        Hello theirs = demo_hello(PeerState::PrimaryActive);
        theirs.link_security = weaker;
        auto r = run_handshake(p, key, theirs, key, ours);
        REQUIRE(reason(r.connecting) == Reason::Refused);
        REQUIRE(reason(r.accepting) == Reason::Refused);
        std::string expected = fmt::format("link-security differs: local encrypted, peer {}", link_security_name(weaker));
        REQUIRE_THAT(r.accepting.error().message(), Catch::Contains(expected));
        REQUIRE_FALSE(p.server.authenticated());
    }
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

// ---- Large frames: several 256 KiB steps of sealing, writing and opening ----

namespace {

constexpr uint64_t kLargePages = 1024;  // 4 MiB of guest memory
constexpr uint32_t kLargeFrame = 1u << 20;  // four steps and a bit per VMSTATE_SEND frame

Hello large_hello(PeerState state) {
    Hello h = demo_hello(state);
    h.memory_bytes = kLargePages * kPageSize;
    return h;
}

// A 4 MiB guest of random bytes (no zero pages: every page crosses as data).
struct LargeGuest {
    std::vector<std::byte> memory = std::vector<std::byte>(kLargePages * kPageSize);
    std::vector<std::byte> body = std::vector<std::byte>(100, std::byte{9});
    explicit LargeGuest(uint64_t seed) {
        std::mt19937_64 rng(seed);
        for (size_t i = 0; i < memory.size(); i += 8) {
            uint64_t v = rng() | 1;
            std::memcpy(&memory[i], &v, 8);
        }
    }
    std::vector<SectionInput> sections() const {
        return {{SectionId::Vcpu, 1, 0, "", body},
                {SectionId::Irqchip, 1, 0, "", body},
                {SectionId::Pit, 1, 0, "", body},
                {SectionId::Clock, 1, 0, "", body},
                {SectionId::Device, 1, 0, "uart0", body}};
    }
    // Every page, in 1 MiB frames; every other page (gather lists of single pages) when
    // `scattered`.
    EncodedState checkpoint(uint64_t seq, bool scattered = false) const {
        std::vector<uint64_t> dirty;
        for (uint64_t i = 0; i < kLargePages; i += scattered ? 2 : 1)
            dirty.push_back(i);
        auto state = StateEncoder({kLargeFrame, ZeroScan::On})
                         .encode({seq, dirty,
                                  [&](uint64_t i) { return std::span(memory).subspan(i * kPageSize, kPageSize); },
                                  sections()});
        REQUIRE(state.ok());
        REQUIRE(state->frame_count() >= (scattered ? 2u : 4u));
        return std::move(state).value();
    }
};

// Receives one checkpoint and compares every page that arrives with the guest's; returns the
// pages compared.
base::Result<uint64_t> receive_and_compare(Link& link, StateDecoder& decoder, const LargeGuest& g) {
    Frame frame;
    TRY(link.receive_into(frame, deadline_after(10s)));
    if (frame.header.type != MessageType::VmstateSize)
        return error(Reason::UnexpectedMessage, "expected VMSTATE_SIZE");
    auto size = TRY(frame.message());
    TRY(decoder.begin(std::get<VmstateSize>(size)));
    uint64_t pages = 0;
    for (;;) {
        TRY(link.receive_into(frame, deadline_after(10s)));
        DecodedFrame d = TRY(decoder.feed(frame.payload()));
        for (const auto& piece : d.pieces) {
            if (const auto* run = std::get_if<PageRun>(&piece)) {
                auto expected = std::span(g.memory).subspan(run->first_page * kPageSize, run->count * kPageSize);
                if (!std::equal(expected.begin(), expected.end(), run->data.begin(), run->data.end()))
                    return base::Error::make(base::Errc::Failed, "pages from {} differ", run->first_page);
                pages += run->count;
            }
        }
        if (d.end)
            return pages;
    }
}

Pair large_pair(LinkSecurity security, Aead aead) {
    Key key = key_of('k');
    Pair p = make_pair();
    Hello primary = large_hello(PeerState::PrimaryActive);
    Hello secondary = large_hello(PeerState::SecondaryStandby);
    primary.link_security = secondary.link_security = security;
    primary.aead = secondary.aead = aead;
    auto r = run_handshake(p, key, primary, key, secondary);
    REQUIRE(r.connecting.ok());
    REQUIRE(r.accepting.ok());
    return p;
}

// An attacker on the path of an encrypted session of the large guest: frames 0 and 1 are the
// handshake, 2 is VMSTATE_SIZE, 3 on are 1 MiB VMSTATE_SEND frames.
base::Result<uint64_t> attacked_large_checkpoint(std::function<void(Relay::Edit&)> attack) {
    Key key = key_of('k');
    Relay relay([&](Relay::Edit& e) {
        if (e.index < 2)
            e.out.push_back(e.frame);
        else
            attack(e);
    });
    auto r = relay.handshake(KeySet(key), KeySet(key), large_hello(PeerState::PrimaryActive),
                             large_hello(PeerState::SecondaryStandby));
    REQUIRE(r.connecting.ok());
    REQUIRE(r.accepting.ok());
    LargeGuest g(7);
    auto state = g.checkpoint(1);
    std::thread sender([&] { (void)relay.client().send_state(state, deadline_after(5s)); });
    auto decoder = StateDecoder::create(StateShape::from_hello(large_hello(PeerState::PrimaryActive))).value();
    auto got = receive_and_compare(relay.server(), decoder, g);
    relay.server().shutdown();
    relay.stop();
    sender.join();
    return got;
}

}  // namespace

TEST_CASE("large frames of several 256 KiB steps cross intact with every link security, pages contiguous or not") {
    struct Setting {
        LinkSecurity security;
        Aead aead;
    };
    for (Setting setting : {Setting{LinkSecurity::Encrypted, Aead::Aes256Gcm},
                            Setting{LinkSecurity::Encrypted, Aead::ChaCha20Poly1305},
                            Setting{LinkSecurity::Authenticated, Aead::Aes256Gcm},
                            Setting{LinkSecurity::Authenticated, Aead::ChaCha20Poly1305},
                            Setting{LinkSecurity::None, Aead::Aes256Gcm}}) {
        INFO(link_security_name(setting.security) << ", " << aead_name(setting.aead));
        Pair p = large_pair(setting.security, setting.aead);
        auto decoder = StateDecoder::create(StateShape::from_hello(large_hello(PeerState::PrimaryActive))).value();
        LargeGuest g(3);
        for (uint64_t seq = 1; seq <= 3; ++seq) {
            INFO("checkpoint " << seq);
            bool scattered = seq == 2;
            auto state = g.checkpoint(seq, scattered);
            base::Result<void> sent;
            std::thread sender([&] { sent = p.client.send_state(state, deadline_after(10s)); });
            auto got = receive_and_compare(p.server, decoder, g);
            sender.join();
            REQUIRE(sent.ok());
            REQUIRE(got.ok());
            CHECK(got.value() == (scattered ? kLargePages / 2 : kLargePages));
            // Small frames between the large ones, both ways.
            REQUIRE(p.server.send(VmstateLoaded{seq}, deadline_after(1s)).ok());
            REQUIRE(std::get<VmstateLoaded>(p.client.receive(deadline_after(1s))->message().value()).seq == seq);
        }
    }
}

TEST_CASE("encrypted link, hostile path, large frames: a flipped bit in a late step or the tag, a replay or a cut is "
          "refused") {
    for (size_t where : {size_t(kHeaderSize + 900000), size_t(0)}) {
        INFO("offset " << where << " (0: the tag's last byte)");
        auto got = attacked_large_checkpoint([&](Relay::Edit& e) {
            if (e.index == 4)
                e.frame[where ? where : e.frame.size() - 1] ^= std::byte{0x10};
            e.out.push_back(e.frame);
        });
        REQUIRE(reason(got) == Reason::FrameAuth);
    }
    Relay::Bytes kept;
    auto renumbered = attacked_large_checkpoint([&](Relay::Edit& e) {
        if (e.index == 3)
            kept = e.frame;
        if (e.index == 4) {
            set_sequence(kept, sequence_of(e.frame));  // frame 3's bytes where frame 4 belongs
            e.out.push_back(kept);
            return;
        }
        e.out.push_back(e.frame);
    });
    REQUIRE(reason(renumbered) == Reason::FrameAuth);
    auto cut = attacked_large_checkpoint([&](Relay::Edit& e) {
        if (e.index == 4) {
            e.out.push_back(Relay::Bytes(e.frame.begin(), e.frame.begin() + 700000));
            e.close = true;
            return;
        }
        e.out.push_back(e.frame);
    });
    REQUIRE_FALSE(cut.ok());
    REQUIRE(cut.error().code() == base::Errc::Eof);
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
        // A HELLO naming the secondary's key (its id is public): the secondary goes on to AUTH.
        Hello claim = demo_hello(PeerState::PrimaryActive);
        claim.aead = Aead::Aes256Gcm;
        claim.key_ids = {key.id()};
        auto hello = encode_frame(MessageType::Hello, 0, claim.encode());
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
