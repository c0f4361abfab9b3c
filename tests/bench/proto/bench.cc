// SPDX-License-Identifier: GPL-2.0-or-later
// Replication throughput over loopback: encode + send + receive + decode of a 64 MiB dirty
// set with each link security (none, encrypted, authenticated; encrypted also with
// ChaCha20-Poly1305), beside a plain socket copy of the same pages (gather writes, no framing
// or checks), all interleaved round by round in the same run, with the ratio of each to none;
// and CRC32C, AES-256-GCM, GMAC, ChaCha20-Poly1305 and BLAKE2b throughput beside memcpy. Both
// ends run in this process on this machine's cores; the CPU time of each end is printed too,
// for what one end could carry on a host of its own.
//
//   proto_bench [--rounds N] [--frame-mib M] [--only NAME-PART] [--security NAME-PART]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

Connected connect_pair(const Key& key, const Hello& hello, LinkSecurity security, Aead aead) {
    auto listener = must(Listener::create("127.0.0.1:0"), "listen");
    auto client = must(Link::connect(fmt::format("127.0.0.1:{}", listener.port()), deadline_after(2s)), "connect");
    auto server = must(listener.accept(deadline_after(2s)), "accept");
    Hello a = hello, b = hello;
    a.link_security = b.link_security = security;
    a.aead = b.aead = aead;
    b.state = PeerState::SecondaryStandby;
    base::Result<Hello> theirs{base::Error(base::Errc::Failed, "")};
    std::thread t([&] { theirs = handshake(server, key, b, deadline_after(2s)); });
    must(handshake(client, key, a, deadline_after(2s)), "handshake");
    t.join();
    must(std::move(theirs), "handshake (accepting)");
    return {std::move(client), std::move(server)};
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

// One checkpoint through the whole path; returns seconds from the start of encoding until the
// receiver has validated END.
double replicate(Connected& c, StateDecoder& decoder, Frame& frame, const Guest& g, std::span<const uint64_t> dirty,
                 uint64_t seq, uint32_t frame_limit) {
    auto start = Clock::now();
    double receiver_cpu = 0;
    std::thread receiver([&] {
        double cpu0 = thread_cpu_seconds();
        must(c.server.receive_into(frame, deadline_after(30s)), "receive VMSTATE_SIZE");
        auto size = must(frame.message(), "decode VMSTATE_SIZE");
        must(decoder.begin(std::get<VmstateSize>(size)), "begin");
        for (;;) {
            must(c.server.receive_into(frame, deadline_after(30s)), "receive VMSTATE_SEND");
            auto decoded = must(decoder.feed(frame.payload()), "decode");
            if (decoded.end)
                break;
        }
        receiver_cpu = thread_cpu_seconds() - cpu0;
    });
    double sender_cpu0 = thread_cpu_seconds();
    std::vector<SectionInput> sections{{SectionId::Vcpu, 1, 0, "", g.body},
                                       {SectionId::Irqchip, 1, 0, "", g.body},
                                       {SectionId::Pit, 1, 0, "", g.body},
                                       {SectionId::Clock, 1, 0, "", g.body}};
    StateEncoder encoder({frame_limit, ZeroScan::On});
    auto state = must(encoder.encode({seq, dirty,
                                      [&](uint64_t p) { return std::span(g.memory).subspan(p * kPageSize, kPageSize); },
                                      sections}),
                      "encode");
    g_encode_seconds.push_back(seconds_since(start));
    must(c.client.send_state(state, deadline_after(30s)), "send_state");
    g_send_seconds.push_back(seconds_since(start));
    g_sender_cpu.push_back(thread_cpu_seconds() - sender_cpu0);
    receiver.join();
    g_receiver_cpu.push_back(receiver_cpu);
    return seconds_since(start);
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
    }
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
    struct Security {
        const char* name;
        LinkSecurity security;
        Aead aead;
    };
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
    for (Set set : {Set{"scattered pages", scattered}, Set{"contiguous pages", contiguous}}) {
        if (!only.empty() && std::string(set.name).find(only) == std::string::npos)
            continue;
        std::vector<Connected> links;
        std::vector<StateDecoder> decoders;
        std::vector<Frame> frames(securities.size());
        std::vector<std::vector<double>> times(securities.size());
        std::vector<std::vector<double>> encode_s(securities.size()), send_s(securities.size());
        std::vector<std::vector<double>> sender_cpu(securities.size()), receiver_cpu(securities.size());
        for (const auto& sec : securities) {
            links.push_back(connect_pair(key, hello, sec.security, sec.aead));
            decoders.push_back(must(StateDecoder::create(StateShape::from_hello(hello)), "decoder"));
        }
        std::vector<double> plain_times;
        // Both receivers reuse their buffers across rounds, as a running secondary does.
        std::vector<std::byte> buffer(4u << 20);
        for (int r = 0; r < rounds; ++r) {
            plain_times.push_back(plain_copy(g.memory.data(), set.dirty, buffer));
            for (size_t i = 0; i < securities.size(); ++i) {
                times[i].push_back(replicate(links[i], decoders[i], frames[i], g, set.dirty, uint64_t(r + 1), frame_limit));
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
        auto one_side = [&](size_t i) { return std::max(median(sender_cpu[i]), median(receiver_cpu[i])); };
        double plain = median(plain_times);
        double plain_best = *std::min_element(plain_times.begin(), plain_times.end());
        double none = median(times[0]);
        double none_best = *std::min_element(times[0].begin(), times[0].end());
        std::printf("%s: plain copy %5.2f GB/s (best round %5.2f)\n", set.name, gbs(kDirtyBytes, plain),
                    gbs(kDirtyBytes, plain_best));
        for (size_t i = 0; i < securities.size(); ++i) {
            double t = median(times[i]);
            double best = *std::min_element(times[i].begin(), times[i].end());
            std::printf("  %-21s %5.2f GB/s | %5.1f %% of none, %5.1f %% of plain | best rounds %5.2f GB/s, %5.1f %% of "
                        "none | encode %.1f ms, last byte sent %.1f ms, END decoded %.1f ms\n",
                        securities[i].name, gbs(kDirtyBytes, t), 100.0 * none / t, 100.0 * plain / t,
                        gbs(kDirtyBytes, best), 100.0 * none_best / best, 1e3 * median(encode_s[i]),
                        1e3 * median(send_s[i]), 1e3 * t);
            std::printf("  %-21s CPU per round: sender %.1f ms, receiver %.1f ms | one side alone %5.2f GB/s, %5.1f %% "
                        "of none\n",
                        "", 1e3 * median(sender_cpu[i]), 1e3 * median(receiver_cpu[i]), gbs(kDirtyBytes, one_side(i)),
                        100.0 * one_side(0) / one_side(i));
        }
    }
    return 0;
}
