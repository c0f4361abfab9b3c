// SPDX-License-Identifier: GPL-2.0-or-later
// A userspace TCP proxy to put between colod-primary and colod-secondary: the link faults that
// `tc netem` would give (not in this kernel, see KVM-NOTES.md) and the ones an attacker on the
// path would cause.
//
//   - latency: every chunk is forwarded `delay` after it arrived, in each direction;
//   - "reordering": each chunk gets a random extra delay of up to `jitter`, but never overtakes
//     the chunk before it. TCP never shows reordered bytes to an application; what reordering
//     in the network does to a TCP reader is to hold bytes back until the gap is filled and then
//     hand them over in a burst. So this is what the daemons see of a reordering network: uneven
//     delays, stalls and bursts;
//   - short reads and writes: chunks are written in pieces of random size up to `max_piece`
//     bytes, so the receiver gets many small reads and frames split anywhere;
//   - bit flips: one random bit of each of the next N frames from the primary (after the
//     handshake), in header, payload or CRC alike;
//   - tampering with the CRC fixed up: one byte of page data in the next checkpoint frame is
//     changed and the frame's payload CRC recomputed (what an attacker on the path does, as
//     opposed to a noisy line). The page must be readable on the wire: link-security
//     authenticated or none; a tagged frame keeps its tag (nobody on the path can forge one);
//   - recording the primary's byte stream, and injecting recorded frames into a live stream
//     (replayed old checkpoints);
//   - reordering frames: the next frame of a type is held back and forwarded after the frame
//     that follows it, with their sequence numbers as sent or swapped to fit (header checks
//     fixed up);
//   - truncation: the next frame of a type is cut after half its bytes, and then the connection
//     is closed, or it stays open while every further byte from the primary is dropped (the
//     receiver waits for the rest of the frame);
//   - downgrade: the link_security byte of the HELLO the primary sends on each new connection
//     is rewritten (none or authenticated) and the HELLO's CRC fixed up.
//
// The primary → secondary direction is parsed into frames (the proxy knows the frame header),
// so faults can target whole frames and injected frames land between two frames. Bytes that do
// not parse as frames (a hostile client) are forwarded as they come.
//
// Threads: one accept thread, and per connection a reader and a writer thread per direction.
// All blocking calls are woken by shutdown(2) when the proxy goes.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "base/fd.h"
#include "proto/crc32c.h"
#include "proto/frame.h"

namespace colod::test {

class LinkProxy {
public:
    using Clock = std::chrono::steady_clock;
    using Bytes = std::vector<std::byte>;

    // What one bit flip hit, for the test's log.
    struct Flip {
        uint8_t frame_type = 0;
        uint64_t frame_sequence = 0;
        size_t offset = 0;    // in the frame, header included
        std::string region;   // header, payload, crc or tag
    };
    struct Stats {
        uint64_t connections = 0;
        uint64_t forward_bytes = 0;   // primary → secondary, as forwarded
        uint64_t backward_bytes = 0;  // secondary → primary
        uint64_t forward_frames = 0;
        uint64_t pieces_written = 0;
        std::vector<Flip> flips;
        uint64_t tampered = 0;  // frames changed with the CRC fixed up
        uint64_t injected = 0;  // frames injected
        uint64_t swapped = 0;   // pairs of frames forwarded in swapped order
        uint64_t cut = 0;       // frames cut in the middle
        uint64_t dropped_bytes = 0;     // bytes from the primary dropped after a cut
        uint64_t hellos_rewritten = 0;  // HELLOs whose link_security was rewritten
    };
    // Whether two swapped frames keep their sequence numbers (Renumber::No: each arrives where
    // the other belongs) or swap them too, header checks fixed up (Renumber::Yes: each arrives
    // at the number the receiver expects, so only the frames' tags can tell).
    enum class Renumber { No, Yes };
    // What follows a cut frame's first half: the end of the connection (both ways), or
    // nothing at all, the connection left open (the receiver waits for the rest).
    enum class Cut { Close, Stall };

    // Listens on `listen_ip` (a free port) and forwards each connection to target.
    static std::unique_ptr<LinkProxy> start(const std::string& listen_ip, const std::string& target_ip,
                                            uint16_t target_port) {
        std::unique_ptr<LinkProxy> proxy(new LinkProxy(target_ip, target_port));
        proxy->m_listener = base::Fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        int one = 1;
        ::setsockopt(proxy->m_listener.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        sockaddr_in address{};
        address.sin_family = AF_INET;
        ::inet_pton(AF_INET, listen_ip.c_str(), &address.sin_addr);
        // SAFETY: sockaddr_in is the sockaddr of an AF_INET socket.
        if (::bind(proxy->m_listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
            ::listen(proxy->m_listener.get(), 64) != 0)
            return nullptr;
        socklen_t length = sizeof(address);
        ::getsockname(proxy->m_listener.get(), reinterpret_cast<sockaddr*>(&address), &length);
        proxy->m_listen_ip = listen_ip;
        proxy->m_port = ntohs(address.sin_port);
        proxy->m_accept = std::thread([p = proxy.get()] { p->accept_loop(); });
        return proxy;
    }

    ~LinkProxy() {
        m_stop = true;
        ::shutdown(m_listener.get(), SHUT_RDWR);
        if (m_accept.joinable())
            m_accept.join();
        std::list<std::unique_ptr<Connection>> connections;
        {
            std::lock_guard lock(m_mutex);
            connections.swap(m_connections);
        }
        for (auto& c : connections)
            c->close();
        connections.clear();  // joins their threads
    }

    uint16_t port() const { return m_port; }
    std::string endpoint() const { return fmt::format("{}:{}", m_listen_ip, m_port); }

    // Faults; each takes effect from the next chunk on.
    void set_delay(std::chrono::microseconds one_way, std::chrono::microseconds jitter = {}) {
        m_delay_us = one_way.count();
        m_jitter_us = jitter.count();
    }
    void set_max_piece(size_t bytes) { m_max_piece = bytes; }
    // Flips one random bit in each of the next `frames` primary → secondary frames after the
    // handshake (its first two frames, HELLO and AUTH, are left alone), in any frame type, or
    // only in frames of `type`.
    void flip_bits(int frames, std::optional<proto::MessageType> type = std::nullopt) {
        std::lock_guard lock(m_mutex);
        m_flip_type = type;
        m_flips_armed = frames;
    }
    // Changes one byte of page data in the next checkpoint frame that carries page data and
    // recomputes the payload CRC, so the frame is well formed but says something the primary
    // never sent.
    void tamper_next_page() { m_tamper_armed = true; }
    // Holds back the next primary → secondary frame of `type` after the handshake and forwards
    // it right after the frame that follows it.
    void swap_next(proto::MessageType type, Renumber renumber) {
        std::lock_guard lock(m_mutex);
        m_swap_type = type;
        m_swap_renumber = renumber;
    }
    // Forwards only the first half of the next primary → secondary frame of `type` after the
    // handshake; then closes the connection, or drops every further byte from the primary while
    // keeping the connection open.
    void cut_next(proto::MessageType type, Cut how) {
        std::lock_guard lock(m_mutex);
        m_cut_type = type;
        m_cut_how = how;
    }
    // While set, the HELLO the primary sends on each new connection asks for this link
    // security (proto::LinkSecurity's number) instead of its own, the HELLO's CRC fixed up;
    // nullopt forwards HELLOs as sent.
    void rewrite_hello(std::optional<uint8_t> link_security) {
        std::lock_guard lock(m_mutex);
        m_hello_security = link_security;
    }
    // Keeps every connection's primary → secondary frames (recordings()).
    void record(bool on) { m_record = on; }
    std::vector<std::vector<Bytes>> recordings() {
        std::lock_guard lock(m_mutex);
        return m_recordings;
    }
    // Puts `frames` into the live primary → secondary stream of the newest connection, between
    // two frames. False when there is no connection.
    bool inject(const std::vector<Bytes>& frames) {
        std::lock_guard lock(m_mutex);
        if (m_connections.empty())
            return false;
        auto& pipe = m_connections.back()->forward;
        {
            std::lock_guard plock(pipe.mutex);
            for (const auto& frame : frames)
                pipe.queue.push_back(Chunk{Clock::now(), frame, false});
        }
        pipe.cv.notify_all();
        m_stats.injected += frames.size();
        return true;
    }

    Stats stats() {
        std::lock_guard lock(m_mutex);
        return m_stats;
    }

private:
    struct Chunk {
        Clock::time_point due;
        Bytes bytes;
        bool eof = false;
        bool close = false;  // close the connection, both ways (after the bytes before it)
    };
    // What becomes of one frame from the primary.
    enum class Route { Forward, Hold, CutClose, CutStall };
    // One direction of one connection.
    struct Pipe {
        std::mutex mutex;
        std::condition_variable cv;
        std::deque<Chunk> queue;
        size_t queued = 0;
        Clock::time_point last_due{};
        bool closed = false;
    };
    struct Connection {
        base::Fd client;  // the primary's side
        base::Fd server;  // the secondary's side
        Pipe forward, backward;
        std::vector<std::thread> threads;
        size_t recording = 0;
        void close() {
            ::shutdown(client.get(), SHUT_RDWR);
            ::shutdown(server.get(), SHUT_RDWR);
            for (Pipe* p : {&forward, &backward}) {
                std::lock_guard lock(p->mutex);
                p->closed = true;
                p->cv.notify_all();
            }
        }
        ~Connection() {
            for (auto& t : threads)
                if (t.joinable())
                    t.join();
        }
    };

    LinkProxy(std::string target_ip, uint16_t target_port)
        : m_target_ip(std::move(target_ip)), m_target_port(target_port), m_rng(std::random_device{}()) {}

    // Flow control: a reader stops reading while this much is queued, so a slow link pushes
    // back on the sender as TCP would.
    static constexpr size_t k_max_queued = 8u << 20;

    void accept_loop() {
        while (!m_stop) {
            int fd = ::accept4(m_listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
            if (fd < 0) {
                if (m_stop || (errno != EINTR && errno != ECONNABORTED))
                    return;
                continue;
            }
            base::Fd client(fd);
            base::Fd server(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
            sockaddr_in address{};
            address.sin_family = AF_INET;
            address.sin_port = htons(m_target_port);
            ::inet_pton(AF_INET, m_target_ip.c_str(), &address.sin_addr);
            // SAFETY: sockaddr_in is the sockaddr of an AF_INET socket.
            if (::connect(server.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0)
                continue;  // the secondary is not there: the client sees the connection close
            int one = 1;
            ::setsockopt(client.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            ::setsockopt(server.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            auto connection = std::make_unique<Connection>();
            connection->client = std::move(client);
            connection->server = std::move(server);
            Connection* c = connection.get();
            {
                std::lock_guard lock(m_mutex);
                if (m_stop)
                    return;
                ++m_stats.connections;
                c->recording = m_recordings.size();
                m_recordings.emplace_back();
                m_connections.push_back(std::move(connection));
            }
            c->threads.emplace_back([this, c] { read_frames(*c); });
            c->threads.emplace_back([this, c] { write_loop(*c, c->forward, c->server.get(), true); });
            c->threads.emplace_back([this, c] { read_raw(*c, c->server.get(), c->backward); });
            c->threads.emplace_back([this, c] { write_loop(*c, c->backward, c->client.get(), false); });
        }
    }

    Clock::time_point due_time(Pipe& pipe) {
        int64_t extra = m_delay_us;
        if (int64_t jitter = m_jitter_us; jitter > 0) {
            std::lock_guard lock(m_rng_mutex);
            extra += static_cast<int64_t>(m_rng() % static_cast<uint64_t>(jitter + 1));
        }
        auto due = Clock::now() + std::chrono::microseconds(extra);
        // Never before the chunk ahead of it: the stream keeps its order.
        if (due < pipe.last_due)
            due = pipe.last_due;
        pipe.last_due = due;
        return due;
    }

    // Queues a chunk, waiting while the pipe is full. False once the pipe is closed.
    bool enqueue(Pipe& pipe, Bytes bytes, bool eof = false, bool close = false) {
        std::unique_lock lock(pipe.mutex);
        pipe.cv.wait(lock, [&] { return pipe.closed || pipe.queued < k_max_queued; });
        if (pipe.closed)
            return false;
        pipe.queued += bytes.size();
        pipe.queue.push_back(Chunk{due_time(pipe), std::move(bytes), eof, close});
        pipe.cv.notify_all();
        return true;
    }

    void read_raw(Connection& c, int fd, Pipe& pipe) {
        std::vector<std::byte> buffer(64 * 1024);
        for (;;) {
            ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
            if (n <= 0) {
                enqueue(pipe, {}, true);
                return;
            }
            {
                std::lock_guard lock(m_mutex);
                m_stats.backward_bytes += static_cast<uint64_t>(n);
            }
            if (!enqueue(pipe, Bytes(buffer.begin(), buffer.begin() + n)))
                return;
        }
        (void)c;
    }

    // The primary's stream, frame by frame (or raw once it stops looking like frames).
    void read_frames(Connection& c) {
        Bytes pending;
        std::vector<std::byte> buffer(256 * 1024);
        bool raw = false;
        bool dropping = false;  // after a cut: nothing more reaches the secondary
        std::optional<Bytes> held;  // a frame held back to be swapped with the next one
        uint64_t frames = 0;
        for (;;) {
            ssize_t n = ::recv(c.client.get(), buffer.data(), buffer.size(), 0);
            if (n <= 0) {
                if (!pending.empty() && !dropping)
                    enqueue(c.forward, std::move(pending));
                enqueue(c.forward, {}, true);
                return;
            }
            if (dropping) {
                std::lock_guard lock(m_mutex);
                m_stats.dropped_bytes += static_cast<uint64_t>(n);
                continue;
            }
            pending.insert(pending.end(), buffer.begin(), buffer.begin() + n);
            for (;;) {
                if (raw) {
                    if (!pending.empty() && !enqueue(c.forward, std::exchange(pending, {})))
                        return;
                    break;
                }
                if (pending.size() < proto::kHeaderSize)
                    break;
                auto header = proto::decode_header(std::span(pending).first(proto::kHeaderSize));
                if (!header) {
                    raw = true;
                    continue;
                }
                size_t size = proto::kHeaderSize + header->body_size();
                if (pending.size() < size)
                    break;
                Bytes frame(pending.begin(), pending.begin() + static_cast<ptrdiff_t>(size));
                pending.erase(pending.begin(), pending.begin() + static_cast<ptrdiff_t>(size));
                Route route = fault_frame(c, frame, *header, frames++);
                if (route == Route::Hold) {
                    held = std::move(frame);
                    continue;
                }
                if (route == Route::CutClose || route == Route::CutStall) {
                    frame.resize(frame.size() / 2);
                    if (!enqueue(c.forward, std::move(frame)))
                        return;
                    if (route == Route::CutClose) {
                        enqueue(c.forward, {}, false, true);
                        return;  // the close ends this thread's recv
                    }
                    std::lock_guard lock(m_mutex);
                    m_stats.dropped_bytes += pending.size();
                    pending.clear();
                    dropping = true;
                    break;
                }
                if (held) {
                    bool renumber;
                    {
                        std::lock_guard lock(m_mutex);
                        renumber = m_swap_renumber == Renumber::Yes;
                        ++m_stats.swapped;
                    }
                    if (renumber) {
                        uint64_t first = sequence_of(*held);
                        set_sequence(*held, sequence_of(frame));
                        set_sequence(frame, first);
                    }
                    if (!enqueue(c.forward, std::move(frame)) || !enqueue(c.forward, std::move(*held)))
                        return;
                    held.reset();
                    continue;
                }
                if (!enqueue(c.forward, std::move(frame)))
                    return;
            }
        }
    }

    static uint64_t sequence_of(const Bytes& frame) {
        uint64_t value = 0;
        for (size_t i = 8; i < 16; ++i)
            value = (value << 8) | uint64_t(frame[i]);
        return value;
    }
    // Writes `sequence` into the frame's header and fixes up the header check.
    static void set_sequence(Bytes& frame, uint64_t sequence) {
        for (size_t i = 0; i < 8; ++i)
            frame[8 + i] = std::byte(sequence >> (56 - 8 * i));
        uint32_t check = proto::crc32c(std::span<const std::byte>(frame.data(), 20));
        for (size_t i = 0; i < 4; ++i)
            frame[20 + i] = std::byte(check >> (24 - 8 * i));
    }

    Route fault_frame(Connection& c, Bytes& frame, const proto::FrameHeader& header, uint64_t index) {
        std::lock_guard lock(m_mutex);
        ++m_stats.forward_frames;
        // HELLO: u16 protocol_version, u8 state, u8 link_security, … (docs/protocol.md, section
        // 2); in clear with a CRC, which the attacker recomputes.
        if (index == 0 && header.type == proto::MessageType::Hello && m_hello_security && !header.tagged() &&
            header.payload_length >= 4) {
            std::byte* payload = frame.data() + proto::kHeaderSize;
            payload[3] = std::byte(*m_hello_security);
            uint32_t crc = proto::crc32c(std::span<const std::byte>(payload, header.payload_length));
            for (size_t i = 0; i < 4; ++i)
                payload[header.payload_length + i] = std::byte(crc >> (24 - 8 * i));
            ++m_stats.hellos_rewritten;
        }
        if (m_record)
            m_recordings[c.recording].push_back(frame);
        if (index < 2)
            return Route::Forward;  // the handshake: a flip there is a failed authentication, tested elsewhere
        if (m_swap_type && *m_swap_type == header.type) {
            m_swap_type.reset();
            return Route::Hold;
        }
        if (m_cut_type && *m_cut_type == header.type && frame.size() >= 2) {
            m_cut_type.reset();
            ++m_stats.cut;
            return m_cut_how == Cut::Close ? Route::CutClose : Route::CutStall;
        }
        if (m_tamper_armed && header.type == proto::MessageType::VmstateSend && tamper(frame, header)) {
            m_tamper_armed = false;
            ++m_stats.tampered;
        }
        if (m_flips_armed > 0 && (!m_flip_type || *m_flip_type == header.type)) {
            --m_flips_armed;
            size_t offset;
            int bit;
            {
                std::lock_guard rng(m_rng_mutex);
                offset = m_rng() % frame.size();
                bit = static_cast<int>(m_rng() % 8);
            }
            frame[offset] ^= std::byte(1u << bit);
            std::string region = offset < proto::kHeaderSize                                 ? "header"
                                 : offset < proto::kHeaderSize + header.payload_length ? "payload"
                                 : header.tagged()                                     ? "tag"
                                                                                          : "crc";
            m_stats.flips.push_back(Flip{static_cast<uint8_t>(header.type), header.sequence, offset, region});
        }
        return Route::Forward;
    }

    static uint32_t be32(const std::byte* p) {
        return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
    }

    // VMSTATE_SEND payload: u64 seq, u32 frame index, u32 reserved, then sections. A RAM
    // section (id 1) first: 12-byte section header, u32 run count, u32 reserved, 16 bytes per
    // run, then the data of the data runs. Changes byte 100 of the last data page.
    static bool tamper(Bytes& frame, const proto::FrameHeader& header) {
        std::byte* payload = frame.data() + proto::kHeaderSize;
        size_t length = header.payload_length;
        if (length < 16 + 12 + 8 || payload[16] != std::byte{1})
            return false;
        uint32_t body = be32(payload + 16 + 8);
        uint32_t runs = be32(payload + 16 + 12);
        size_t table = 16 + 12 + 8;
        size_t data = table + size_t(runs) * 16;
        size_t data_bytes = 0;
        for (uint32_t r = 0; r < runs; ++r) {
            const std::byte* run = payload + table + size_t(r) * 16;
            if (run[12] == std::byte{0})
                data_bytes += size_t(be32(run + 8)) * 4096;
        }
        if (data_bytes == 0 || data + data_bytes > 16 + 12 + size_t(body) || data + data_bytes > length)
            return false;
        payload[data + data_bytes - 4096 + 100] ^= std::byte{0x5a};
        if (header.tagged())
            return true;  // the tag covers the payload: there is no checksum to fix up
        uint32_t crc = proto::crc32c(std::span<const std::byte>(payload, length));
        std::byte* trailer = payload + length;
        for (int i = 0; i < 4; ++i)
            trailer[i] = std::byte(crc >> (24 - 8 * i));
        return true;
    }

    void write_loop(Connection& c, Pipe& pipe, int fd, bool forward) {
        for (;;) {
            Chunk chunk;
            {
                std::unique_lock lock(pipe.mutex);
                for (;;) {
                    if (pipe.closed)
                        return;
                    if (!pipe.queue.empty()) {
                        auto due = pipe.queue.front().due;
                        if (Clock::now() >= due)
                            break;
                        pipe.cv.wait_until(lock, due);
                        continue;
                    }
                    pipe.cv.wait(lock);
                }
                chunk = std::move(pipe.queue.front());
                pipe.queue.pop_front();
                pipe.queued -= std::min(pipe.queued, chunk.bytes.size());
                pipe.cv.notify_all();
            }
            if (chunk.eof) {
                ::shutdown(fd, SHUT_WR);
                return;
            }
            if (chunk.close) {
                c.close();
                return;
            }
            size_t at = 0;
            while (at < chunk.bytes.size()) {
                size_t piece = chunk.bytes.size() - at;
                if (size_t max = m_max_piece; max > 0) {
                    std::lock_guard rng(m_rng_mutex);
                    piece = std::min(piece, 1 + m_rng() % max);
                }
                ssize_t n = ::send(fd, chunk.bytes.data() + at, piece, MSG_NOSIGNAL);
                if (n <= 0) {
                    c.close();
                    return;
                }
                at += static_cast<size_t>(n);
                std::lock_guard lock(m_mutex);
                ++m_stats.pieces_written;
                if (forward)
                    m_stats.forward_bytes += static_cast<uint64_t>(n);
            }
        }
    }

    std::string m_target_ip;
    uint16_t m_target_port;
    std::string m_listen_ip;
    uint16_t m_port = 0;
    base::Fd m_listener;
    std::thread m_accept;
    std::atomic<bool> m_stop{false};

    std::atomic<int64_t> m_delay_us{0};
    std::atomic<int64_t> m_jitter_us{0};
    std::atomic<size_t> m_max_piece{0};
    std::atomic<bool> m_tamper_armed{false};
    std::atomic<bool> m_record{false};

    std::mutex m_rng_mutex;
    std::mt19937_64 m_rng;

    std::mutex m_mutex;  // guards everything below
    std::list<std::unique_ptr<Connection>> m_connections;
    std::vector<std::vector<Bytes>> m_recordings;
    int m_flips_armed = 0;
    std::optional<proto::MessageType> m_flip_type;
    std::optional<proto::MessageType> m_swap_type;
    Renumber m_swap_renumber = Renumber::No;
    std::optional<proto::MessageType> m_cut_type;
    Cut m_cut_how = Cut::Close;
    std::optional<uint8_t> m_hello_security;
    Stats m_stats;
};

}  // namespace colod::test
