// SPDX-License-Identifier: GPL-2.0-or-later
// Replication throughput over loopback: encode + send + receive + decode of a 64 MiB dirty
// set with each link security (none, encrypted, authenticated; encrypted also with
// ChaCha20-Poly1305) beside a plain socket copy of the same pages (gather writes, no framing or
// checks), all interleaved round by round in the same run, with the ratio of each to none; and
// CRC32C, AES-256-GCM, GMAC, ChaCha20-Poly1305 and BLAKE2b throughput beside memcpy.
//
// Two ways to run the link:
//   both ends   both ends of the link in this process, on this machine's cores (what a host
//               running both would see). The CPU time of each end's thread is printed too.
//   apart       each end alone, with a peer that does as little as a socket allows: the
//               sender's bytes go to a sink that reads them into one small buffer unchecked; the
//               receiver gets a recording of its own sender's checkpoint (made beforehand, not
//               timed) from a plain writer, and checks and decodes it all. The slower of the
//               two ends is what a pair on two hosts could carry, as far as one machine shows.
//
//   proto_bench [--rounds N] [--frame-mib M] [--only NAME-PART] [--security NAME-PART]
//               [--ends both|apart|all]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <sodium.h>

#include "base/fd.h"
#include "base/log.h"
#include "proto/crc32c.h"
#include "proto/handshake.h"
#include "proto/link.h"
#include "proto/link_crypto.h"
#include "proto/messages.h"
#include "proto/state.h"

using namespace colod;
using namespace colod::proto;
using namespace std::chrono_literals;

namespace {

constexpr uint64_t kDirtyBytes = 64ull << 20;
constexpr uint64_t kDirtyPages = kDirtyBytes / kPageSize;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }
double gbs(uint64_t bytes, double s) { return double(bytes) / s / 1e9; }

[[noreturn]] void die(const char* what, const std::string& why) {
    std::fprintf(stderr, "%s: %s\n", what, why.c_str());
    std::exit(1);
}
template <typename T>
T must(base::Result<T> r, const char* what) {
    if (!r)
        die(what, r.error().message());
    return std::move(r).value();
}
void must(base::Result<void> r, const char* what) {
    if (!r)
        die(what, r.error().message());
}

struct Connected {
    Link client;
    Link server;
};

struct Security {
    const char* name;
    LinkSecurity security;
    Aead aead;
};

void run_handshakes(Link& client, Link& server, const Key& key, const Hello& hello, const Security& sec) {
    Hello a = hello, b = hello;
    a.link_security = b.link_security = sec.security;
    a.aead = b.aead = sec.aead;
    b.state = PeerState::SecondaryStandby;
    base::Result<Hello> theirs{base::Error(base::Errc::Failed, "")};
    std::thread t([&] { theirs = handshake(server, key, b, deadline_after(2s)); });
    must(handshake(client, key, a, deadline_after(2s)), "handshake");
    t.join();
    must(std::move(theirs), "handshake (accepting)");
}

Connected connect_pair(const Key& key, const Hello& hello, const Security& sec) {
    auto listener = must(Listener::create("127.0.0.1:0"), "listen");
    auto client = must(Link::connect(fmt::format("127.0.0.1:{}", listener.port()), deadline_after(2s)), "connect");
    auto server = must(listener.accept(deadline_after(2s)), "accept");
    run_handshakes(client, server, key, hello, sec);
    return {std::move(client), std::move(server)};
}

// The ends apart: the client's bytes arrive on `from_client`, the server's come from
// `to_server`, plain blocking sockets the benchmark reads and writes itself.
struct Relayed {
    Link client;
    Link server;
    base::Fd from_client;
    base::Fd to_server;
};

base::Fd plain_listener(uint16_t& port) {
    base::Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    // SAFETY: sockaddr_in is the sockaddr for AF_INET.
    if (!fd || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0 || ::listen(fd.get(), 1) != 0 ||
        ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0)
        die("plain listener", std::strerror(errno));
    port = ntohs(addr.sin_port);
    return fd;
}

base::Fd plain_connect(uint16_t port) {
    base::Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    // SAFETY: sockaddr_in is the sockaddr for AF_INET.
    if (!fd || ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
        die("plain connect", std::strerror(errno));
    return fd;
}

void write_all(int fd, const std::byte* p, size_t n) {
    while (n) {
        ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            die("plain write", std::strerror(errno));
        p += w;
        n -= size_t(w);
    }
}

void read_all(int fd, std::byte* p, size_t n) {
    while (n) {
        ssize_t r = ::recv(fd, p, n, 0);
        if (r <= 0)
            die("plain read", r == 0 ? "connection closed" : std::strerror(errno));
        p += r;
        n -= size_t(r);
    }
}

Relayed connect_relayed(const Key& key, const Hello& hello, const Security& sec) {
    auto listener = must(Listener::create("127.0.0.1:0"), "listen");
    uint16_t port = 0;
    base::Fd relay = plain_listener(port);
    auto client = must(Link::connect(fmt::format("127.0.0.1:{}", port), deadline_after(2s)), "connect");
    base::Fd from_client(::accept4(relay.get(), nullptr, nullptr, SOCK_CLOEXEC));
    base::Fd to_server = plain_connect(listener.port());
    auto server = must(listener.accept(deadline_after(2s)), "accept");
    // The handshake passes through a pump; the checkpoints then through the benchmark itself.
    base::Fd stop(::eventfd(0, EFD_CLOEXEC));
    std::thread pump([&] {
        std::vector<std::byte> buffer(64u << 10);
        for (;;) {
            pollfd fds[3] = {{from_client.get(), POLLIN, 0}, {to_server.get(), POLLIN, 0}, {stop.get(), POLLIN, 0}};
            if (::poll(fds, 3, -1) < 0 && errno != EINTR)
                die("pump poll", std::strerror(errno));
            if (fds[2].revents)
                return;
            for (int i = 0; i < 2; ++i) {
                if (!fds[i].revents)
                    continue;
                ssize_t n = ::recv(fds[i].fd, buffer.data(), buffer.size(), MSG_DONTWAIT);
                if (n <= 0)
                    die("pump read", n == 0 ? "connection closed" : std::strerror(errno));
                write_all(i == 0 ? to_server.get() : from_client.get(), buffer.data(), size_t(n));
            }
        }
    });
    run_handshakes(client, server, key, hello, sec);
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(stop.get(), &one, sizeof one);
    pump.join();
    return {std::move(client), std::move(server), std::move(from_client), std::move(to_server)};
}

// The baseline: the same dirty pages through a plain blocking TCP loopback connection, sent
// with gather writes of about 256 KiB straight from guest memory (adjacent pages merged) into
// a 4 MiB receive buffer; no framing, no checksums, no validation.
double plain_copy(const std::byte* memory, std::span<const uint64_t> pages, std::vector<std::byte>& buffer) {
    const uint64_t bytes = pages.size() * kPageSize;
    base::Fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    // SAFETY: sockaddr_in is the sockaddr for AF_INET.
    if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0 || ::listen(listener.get(), 1) != 0 ||
        ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0)
        die("plain copy", std::strerror(errno));
    base::Fd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(client.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0)
        die("plain copy connect", std::strerror(errno));
    base::Fd server(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    auto start = Clock::now();
    std::thread receiver([&] {
        uint64_t got = 0;
        while (got < bytes) {
            ssize_t n = ::recv(server.get(), buffer.data(), buffer.size(), 0);
            if (n <= 0)
                die("plain copy recv", std::strerror(errno));
            got += uint64_t(n);
        }
    });
    std::vector<iovec> iov;
    for (uint64_t p : pages) {
        // SAFETY: iovec wants a non-const pointer; sendmsg only reads it.
        auto* at = const_cast<std::byte*>(memory + p * kPageSize);
        if (!iov.empty() && static_cast<std::byte*>(iov.back().iov_base) + iov.back().iov_len == at)
            iov.back().iov_len += kPageSize;
        else
            iov.push_back({at, kPageSize});
    }
    size_t at = 0;
    while (at < iov.size()) {
        // About 256 KiB per call, like the link's chunks.
        size_t count = 0, batch = 0;
        while (at + count < iov.size() && count < 64 && batch < (256u << 10))
            batch += iov[at + count++].iov_len;
        msghdr msg{};
        msg.msg_iov = &iov[at];
        msg.msg_iovlen = count;
        ssize_t n = ::sendmsg(client.get(), &msg, MSG_NOSIGNAL);
        if (n <= 0)
            die("plain copy send", std::strerror(errno));
        size_t left = size_t(n);
        while (left && left >= iov[at].iov_len)
            left -= iov[at++].iov_len;
        if (left) {
            iov[at].iov_base = static_cast<std::byte*>(iov[at].iov_base) + left;
            iov[at].iov_len -= left;
        }
    }
    receiver.join();
    return seconds_since(start);
}

std::vector<double> g_encode_seconds, g_send_seconds;  // per round: encode done, send done
// Per round: CPU time of the sending thread (encode + send) and of the receiving thread. On two
// hosts each side has its own CPUs: bytes / the larger of the two is what one side can carry.
std::vector<double> g_sender_cpu, g_receiver_cpu;

double thread_cpu_seconds() {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + double(ts.tv_nsec) / 1e9;
}

struct Guest {
    uint64_t pages;
    std::vector<std::byte> memory;
    std::vector<std::byte> body = std::vector<std::byte>(16384, std::byte{3});
};

EncodedState encode(const Guest& g, std::span<const uint64_t> dirty, uint64_t seq, uint32_t frame_limit) {
    std::vector<SectionInput> sections{{SectionId::Vcpu, 1, 0, "", g.body},
                                       {SectionId::Irqchip, 1, 0, "", g.body},
                                       {SectionId::Pit, 1, 0, "", g.body},
                                       {SectionId::Clock, 1, 0, "", g.body}};
    StateEncoder encoder({frame_limit, ZeroScan::On});
    return must(encoder.encode({seq, dirty, [&](uint64_t p) { return std::span(g.memory).subspan(p * kPageSize, kPageSize); },
                                sections}),
                "encode");
}

// Receives and decodes one checkpoint, as a secondary does (minus applying it).
void receive_checkpoint(Link& link, StateDecoder& decoder, Frame& frame) {
    must(link.receive_into(frame, deadline_after(30s)), "receive VMSTATE_SIZE");
    auto size = must(frame.message(), "decode VMSTATE_SIZE");
    must(decoder.begin(std::get<VmstateSize>(size)), "begin");
    for (;;) {
        must(link.receive_into(frame, deadline_after(30s)), "receive VMSTATE_SEND");
        auto decoded = must(decoder.feed(frame.payload()), "decode");
        if (decoded.end)
            break;
    }
}

// One checkpoint through the whole path; returns seconds from the start of encoding until the
// receiver has validated END.
double replicate(Connected& c, StateDecoder& decoder, Frame& frame, const Guest& g, std::span<const uint64_t> dirty,
                 uint64_t seq, uint32_t frame_limit) {
    auto start = Clock::now();
    double receiver_cpu = 0;
    std::thread receiver([&] {
        double cpu0 = thread_cpu_seconds();
        receive_checkpoint(c.server, decoder, frame);
        receiver_cpu = thread_cpu_seconds() - cpu0;
    });
    double sender_cpu0 = thread_cpu_seconds();
    auto state = encode(g, dirty, seq, frame_limit);
    g_encode_seconds.push_back(seconds_since(start));
    must(c.client.send_state(state, deadline_after(30s)), "send_state");
    g_send_seconds.push_back(seconds_since(start));
    g_sender_cpu.push_back(thread_cpu_seconds() - sender_cpu0);
    receiver.join();
    g_receiver_cpu.push_back(receiver_cpu);
    return seconds_since(start);
}

// The bytes a checkpoint puts on the wire: VMSTATE_SIZE and each VMSTATE_SEND frame, each with
// its header and its trailer (CRC or tag).
size_t wire_bytes(const EncodedState& state, LinkSecurity security) {
    size_t trailer = security == LinkSecurity::None ? sizeof(uint32_t) : kTagSize;
    size_t n = kHeaderSize + encode_message(state.size()).size() + trailer;
    for (size_t i = 0; i < state.frame_count(); ++i)
        n += kHeaderSize + state.frame_payload_length(i) + trailer;
    return n;
}

struct Alone {
    double seconds;
    double cpu;
};

// The sending end alone: encode and send one checkpoint to a sink that reads the bytes into
// one 256 KiB buffer, over and over, without looking at them: woken per 256 KiB at most, as the
// link's receiver is (SO_RCVLOWAT). Seconds from the start of encoding until the sink has the
// last byte; CPU of the sending thread.
Alone send_alone(Relayed& c, const Guest& g, std::span<const uint64_t> dirty, uint64_t seq, uint32_t frame_limit,
                 LinkSecurity security, std::vector<std::byte>& scratch) {
    auto start = Clock::now();
    double cpu0 = thread_cpu_seconds();
    uint64_t sent0 = c.client.bytes_sent();
    auto state = encode(g, dirty, seq, frame_limit);
    size_t expected = wire_bytes(state, security);
    std::thread sink([&] {
        int low_water = 0;
        for (size_t got = 0; got < expected;) {
            ssize_t r = ::recv(c.from_client.get(), scratch.data(), std::min(expected - got, scratch.size()), MSG_DONTWAIT);
            if (r > 0) {
                got += size_t(r);
                continue;
            }
            if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
                die("sink", r == 0 ? "connection closed" : std::strerror(errno));
            // As the link's receiver does: poll until a good share of what is missing is there.
            int want = int(std::min<size_t>(expected - got, scratch.size()));
            if (want != low_water && ::setsockopt(c.from_client.get(), SOL_SOCKET, SO_RCVLOWAT, &want, sizeof want) == 0)
                low_water = want;
            pollfd pfd{c.from_client.get(), POLLIN, 0};
            ::poll(&pfd, 1, -1);
        }
    });
    must(c.client.send_state(state, deadline_after(30s)), "send_state");
    double cpu = thread_cpu_seconds() - cpu0;
    sink.join();
    double seconds = seconds_since(start);
    if (c.client.bytes_sent() - sent0 != expected)
        die("send alone", fmt::format("{} bytes sent, {} expected", c.client.bytes_sent() - sent0, expected));
    return {seconds, cpu};
}

// Records what the client of `c` sends for one checkpoint (not timed), for receive_alone.
void record_checkpoint(Relayed& c, const Guest& g, std::span<const uint64_t> dirty, uint64_t seq,
                       uint32_t frame_limit, LinkSecurity security, std::vector<std::byte>& record, size_t& recorded) {
    auto state = encode(g, dirty, seq, frame_limit);
    recorded = wire_bytes(state, security);
    if (record.size() < recorded)
        record.resize(recorded);
    std::thread recorder([&] { read_all(c.from_client.get(), record.data(), recorded); });
    must(c.client.send_state(state, deadline_after(30s)), "send_state");
    recorder.join();
}

// The receiving end alone: a plain writer replays a recorded checkpoint while this thread
// receives, checks and decodes it. Seconds until END is decoded; CPU of this thread.
Alone receive_alone(Relayed& c, StateDecoder& decoder, Frame& frame, const std::vector<std::byte>& record,
                    size_t recorded) {
    auto start = Clock::now();
    double cpu0 = thread_cpu_seconds();
    std::thread writer([&] { write_all(c.to_server.get(), record.data(), recorded); });
    receive_checkpoint(c.server, decoder, frame);
    double cpu = thread_cpu_seconds() - cpu0;
    writer.join();
    return {seconds_since(start), cpu};
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    int rounds = 7;
    uint32_t frame_mib = 4;
    std::string only;      // run only the cases whose name contains this
    std::string security_filter;  // and only the link securities whose name contains this (none always runs)
    std::string ends = "all";     // both ends sharing this machine, each end apart, or all
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string arg = argv[i];
        if (arg == "--rounds")
            rounds = std::max(1, std::stoi(argv[i + 1]));
        else if (arg == "--frame-mib")
            frame_mib = uint32_t(std::stoul(argv[i + 1]));
        else if (arg == "--only")
            only = argv[i + 1];
        else if (arg == "--security")
            security_filter = argv[i + 1];
        else if (arg == "--ends")
            ends = argv[i + 1];
    }
    if (ends != "both" && ends != "apart" && ends != "all")
        die("--ends", "both, apart or all");
    base::set_log_level(base::Level::Warning);
    const uint32_t frame_limit = frame_mib << 20;

    // A 128 MiB guest with every other page dirty (scattered: no two dirty pages adjacent), and
    // the contiguous case (the first 64 MiB), both filled with random bytes (no zero pages).
    Guest g;
    g.pages = 2 * kDirtyPages;
    g.memory.resize(g.pages * kPageSize);
    std::mt19937_64 rng(1);
    for (size_t i = 0; i < g.memory.size(); i += 8) {
        uint64_t v = rng() | 1;
        std::memcpy(&g.memory[i], &v, 8);
    }
    std::vector<uint64_t> scattered, contiguous;
    for (uint64_t p = 0; p < kDirtyPages; ++p) {
        scattered.push_back(2 * p);
        contiguous.push_back(p);
    }

    std::string material(32, 'b');
    Key key = must(Key::from_bytes(std::as_bytes(std::span(material.data(), material.size()))), "key");
    Hello hello;
    hello.vm_name = "bench";
    hello.memory_bytes = g.pages * kPageSize;
    hello.vcpus = 1;

    std::printf("proto_bench: %llu MiB dirty set, %u MiB frames, %d rounds (medians)\n",
                (unsigned long long)(kDirtyBytes >> 20), frame_mib, rounds);
    std::printf("crc32c implementation: %s\n",
                crc32c_implementation() == CrcImplementation::Hardware ? "SSE4.2 (3 streams)" : "table");

    // CRC32C and memcpy over the same 64 MiB.
    if (only.empty()) {
        std::vector<std::byte> target(kDirtyBytes);
        std::span<const std::byte> src(g.memory.data(), kDirtyBytes);
        std::vector<double> hw, table, copy;
        volatile uint32_t sink = 0;
        for (int r = 0; r < rounds; ++r) {
            auto t0 = Clock::now();
            sink = sink + crc32c(src);
            hw.push_back(seconds_since(t0));
            t0 = Clock::now();
            Crc32c t(CrcImplementation::Table);
            t.update(src);
            sink = sink + t.value();
            table.push_back(seconds_since(t0));
            t0 = Clock::now();
            std::memcpy(target.data(), src.data(), src.size());
            copy.push_back(seconds_since(t0));
        }
        std::printf("crc32c (dispatch): %6.2f GB/s\n", gbs(kDirtyBytes, median(hw)));
        std::printf("crc32c (table):    %6.2f GB/s\n", gbs(kDirtyBytes, median(table)));
        std::printf("memcpy:            %6.2f GB/s\n", gbs(kDirtyBytes, median(copy)));
    }

    // The frame protections alone over the same 64 MiB, in 256 KiB pieces as the link feeds
    // them: what each link security costs per side, and why AES-256-GCM is the default AEAD
    // where the CPU has AES instructions (see docs/protocol.md §9).
    if (only.empty() && security_filter.empty()) {
        std::vector<std::byte> target(kDirtyBytes);
        std::span<const std::byte> src(g.memory.data(), kDirtyBytes);
        std::array<std::byte, kNonceSize> n1{}, n2{};
        std::array<std::byte, kHashSize> transcript{};
        auto time_cipher = [&](LinkSecurity security, Aead aead) {
            SessionParams params{security, aead, n1, n2, transcript};
            auto c = must(FrameCipher::derive(key, LinkSide::Connecting, params, FrameCipher::Direction::Seal), "cipher");
            HeaderBytes header{};
            std::vector<double> t;
            for (int r = 0; r < rounds; ++r) {
                auto t0 = Clock::now();
                must(c.begin(uint64_t(r), header), "begin");
                for (size_t at = 0; at < src.size(); at += 256u << 10)
                    must(c.seal(src.subspan(at, 256u << 10), target.data() + at), "seal");
                must(c.finish_seal(), "finish");
                t.push_back(seconds_since(t0));
            }
            return gbs(kDirtyBytes, median(t));
        };
        std::printf("aes-256-gcm (encrypted):       %6.2f GB/s\n", time_cipher(LinkSecurity::Encrypted, Aead::Aes256Gcm));
        std::printf("gmac (authenticated):          %6.2f GB/s\n", time_cipher(LinkSecurity::Authenticated, Aead::Aes256Gcm));
        std::printf("chacha20-poly1305 (encrypted): %6.2f GB/s\n",
                    time_cipher(LinkSecurity::Encrypted, Aead::ChaCha20Poly1305));
        std::printf("poly1305 (authenticated):      %6.2f GB/s\n",
                    time_cipher(LinkSecurity::Authenticated, Aead::ChaCha20Poly1305));
        std::vector<double> blake;
        for (int r = 0; r < rounds; ++r) {
            auto t0 = Clock::now();
            crypto_generichash_state state;
            unsigned char mac_key[32] = {1}, mac[32];
            crypto_generichash_init(&state, mac_key, sizeof mac_key, sizeof mac);
            for (size_t at = 0; at < src.size(); at += 256u << 10)
                crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(src.data() + at), 256u << 10);
            crypto_generichash_final(&state, mac, sizeof mac);
            blake.push_back(seconds_since(t0));
        }
        std::printf("keyed blake2b (protocol 1 MAC): %5.2f GB/s\n", gbs(kDirtyBytes, median(blake)));
        std::printf("this host prefers %s\n", std::string(aead_name(preferred_aead())).c_str());
    }

    // Each dirty set through the link with every protection, interleaved round by round so all
    // see the same machine conditions; ratios against none (CRC only) of the same run.
    std::vector<Security> securities;
    for (Security sec : {Security{"none", LinkSecurity::None, Aead::Aes256Gcm},
                         Security{"encrypted", LinkSecurity::Encrypted, Aead::Aes256Gcm},
                         Security{"authenticated", LinkSecurity::Authenticated, Aead::Aes256Gcm},
                         Security{"encrypted, chacha20", LinkSecurity::Encrypted, Aead::ChaCha20Poly1305}})
        if (sec.security == LinkSecurity::None || std::string(sec.name).find(security_filter) != std::string::npos)
            securities.push_back(sec);
    struct Set {
        const char* name;
        std::span<const uint64_t> dirty;
    };
    const size_t n = securities.size();
    for (Set set : {Set{"scattered pages", scattered}, Set{"contiguous pages", contiguous}}) {
        if (!only.empty() && std::string(set.name).find(only) == std::string::npos)
            continue;
        if (ends != "apart") {
            std::vector<Connected> links;
            std::vector<StateDecoder> decoders;
            std::vector<Frame> frames(n);
            std::vector<std::vector<double>> times(n);
            std::vector<std::vector<double>> encode_s(n), send_s(n);
            std::vector<std::vector<double>> sender_cpu(n), receiver_cpu(n);
            for (const auto& sec : securities) {
                links.push_back(connect_pair(key, hello, sec));
                decoders.push_back(must(StateDecoder::create(StateShape::from_hello(hello)), "decoder"));
            }
            std::vector<double> plain_times;
            // Both receivers reuse their buffers across rounds, as a running secondary does.
            std::vector<std::byte> buffer(4u << 20);
            for (int r = 0; r < rounds; ++r) {
                plain_times.push_back(plain_copy(g.memory.data(), set.dirty, buffer));
                for (size_t i = 0; i < n; ++i) {
                    times[i].push_back(
                        replicate(links[i], decoders[i], frames[i], g, set.dirty, uint64_t(r + 1), frame_limit));
                    encode_s[i].push_back(g_encode_seconds.back());
                    send_s[i].push_back(g_send_seconds.back());
                    sender_cpu[i].push_back(g_sender_cpu.back());
                    receiver_cpu[i].push_back(g_receiver_cpu.back());
                }
            }
            g_encode_seconds.clear();
            g_send_seconds.clear();
            g_sender_cpu.clear();
            g_receiver_cpu.clear();
            // What one end could carry on one core of its own: its thread's CPU time.
            auto one_core = [&](size_t i) { return std::max(median(sender_cpu[i]), median(receiver_cpu[i])); };
            double plain = median(plain_times);
            double plain_best = *std::min_element(plain_times.begin(), plain_times.end());
            double none = median(times[0]);
            double none_best = *std::min_element(times[0].begin(), times[0].end());
            std::printf("%s, both ends on this machine: plain copy %5.2f GB/s (best round %5.2f)\n", set.name,
                        gbs(kDirtyBytes, plain), gbs(kDirtyBytes, plain_best));
            for (size_t i = 0; i < n; ++i) {
                double t = median(times[i]);
                double best = *std::min_element(times[i].begin(), times[i].end());
                std::printf("  %-21s %5.2f GB/s | %5.1f %% of none, %5.1f %% of plain | best rounds %5.2f GB/s, %5.1f %% "
                            "of none | encode %.1f ms, last byte sent %.1f ms, END decoded %.1f ms\n",
                            securities[i].name, gbs(kDirtyBytes, t), 100.0 * none / t, 100.0 * plain / t,
                            gbs(kDirtyBytes, best), 100.0 * none_best / best, 1e3 * median(encode_s[i]),
                            1e3 * median(send_s[i]), 1e3 * t);
                std::printf("  %-21s CPU per round: sender %.1f ms, receiver %.1f ms | one core per end %5.2f GB/s, "
                            "%5.1f %% of none\n",
                            "", 1e3 * median(sender_cpu[i]), 1e3 * median(receiver_cpu[i]),
                            gbs(kDirtyBytes, one_core(i)), 100.0 * one_core(0) / one_core(i));
            }
        }
        if (ends != "both") {
            // Per link security one pair whose sender sends to a sink, and one whose receiver
            // gets a recording of its own sender's checkpoint.
            std::vector<Relayed> senders, receivers;
            std::vector<StateDecoder> decoders;
            std::vector<Frame> frames(n);
            std::vector<std::vector<double>> send_t(n), send_cpu(n), receive_t(n), receive_cpu(n);
            for (const auto& sec : securities) {
                senders.push_back(connect_relayed(key, hello, sec));
                receivers.push_back(connect_relayed(key, hello, sec));
                decoders.push_back(must(StateDecoder::create(StateShape::from_hello(hello)), "decoder"));
            }
            std::vector<std::byte> record, scratch(256u << 10);
            for (int r = 0; r < rounds; ++r) {
                for (size_t i = 0; i < n; ++i) {
                    uint64_t seq = uint64_t(r + 1);
                    Alone s = send_alone(senders[i], g, set.dirty, seq, frame_limit, securities[i].security, scratch);
                    size_t recorded = 0;
                    record_checkpoint(receivers[i], g, set.dirty, seq, frame_limit, securities[i].security, record,
                                      recorded);
                    Alone rc = receive_alone(receivers[i], decoders[i], frames[i], record, recorded);
                    send_t[i].push_back(s.seconds);
                    send_cpu[i].push_back(s.cpu);
                    receive_t[i].push_back(rc.seconds);
                    receive_cpu[i].push_back(rc.cpu);
                }
            }
            // A pair on two hosts carries what its slower end carries.
            auto two_hosts = [&](size_t i) { return std::max(median(send_t[i]), median(receive_t[i])); };
            std::printf("%s, each end apart (the sender's peer discards, the receiver's replays a recording):\n",
                        set.name);
            for (size_t i = 0; i < n; ++i) {
                std::printf("  %-21s sender %5.2f GB/s, %5.1f %% of none (CPU %.1f ms) | receiver %5.2f GB/s, %5.1f %% "
                            "of none (CPU %.1f ms) | slower end %5.2f GB/s, %5.1f %% of none\n",
                            securities[i].name, gbs(kDirtyBytes, median(send_t[i])),
                            100.0 * median(send_t[0]) / median(send_t[i]), 1e3 * median(send_cpu[i]),
                            gbs(kDirtyBytes, median(receive_t[i])), 100.0 * median(receive_t[0]) / median(receive_t[i]),
                            1e3 * median(receive_cpu[i]), gbs(kDirtyBytes, two_hosts(i)),
                            100.0 * two_hosts(0) / two_hosts(i));
            }
        }
    }
    return 0;
}
