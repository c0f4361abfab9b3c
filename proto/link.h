// SPDX-License-Identifier: GPL-2.0-or-later
// The replication link: one TCP connection per pair; the secondary listens, the primary
// connects, and the reverse direction of the same connection is the return path.
//
// Threads: any number of threads may send (a sender holds the link for one whole frame, so a
// heartbeat can go out between two frames of a checkpoint but never inside one); one thread
// receives; shutdown() may be called from any thread and makes every blocked or later call
// return base::Errc::Stopped.
//
// After the handshake every frame is sealed as the session's link security says (link_crypto.h):
// encrypted and authenticated, or authenticated, or CRC only.
//
// Errors tell the failover logic what happened: Errc::Eof (peer closed), Errc::Timeout (the
// deadline passed), Errc::Protocol (malformed bytes: see reason_of), Errc::Auth (a peer that
// has not proved the key, or a frame whose tag fails), Errc::Stopped (shutdown), Errc::System
// (the socket failed). After any error of a send or receive the byte stream is no longer
// trustworthy: close the link.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "proto/auth.h"
#include "proto/frame.h"
#include "proto/link_crypto.h"
#include "proto/messages.h"
#include "proto/state.h"

namespace colod::proto {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

inline Deadline deadline_after(Clock::duration d) { return Clock::now() + d; }

// One received frame. The payload buffer is reused by Link::receive_into, so a receiver that
// reads frame after frame allocates only when a frame is larger than any before it. Spans
// taken from payload() (and the pieces a StateDecoder made of it) stay valid until the next
// receive_into on the same Frame: stage what you keep before receiving again.
class Frame {
public:
    FrameHeader header;
    std::span<const std::byte> payload() const { return {m_buffer.data(), header.payload_length}; }
    // The typed message (not for VMSTATE_SEND: feed payload() to a StateDecoder).
    base::Result<Message> message() const { return decode_message(header.type, payload()); }

private:
    friend class Link;
    std::vector<std::byte> m_buffer;
};

class Link {
public:
    // Connects to "host:port" ("10.0.0.2:9400", "[fd00::2]:9400", "localhost:9400").
    static base::Result<Link> connect(std::string_view address, Deadline deadline);
    // Two ends of one in-process connection (a Unix socket pair): the first connects, the second
    // accepts. `buffer_bytes` above zero sets both ends' socket buffers (tests stall a link by
    // filling them). For tests that run both sides of a pair in one process.
    static base::Result<std::pair<Link, Link>> pair(int buffer_bytes = 0);

    Link(Link&&) noexcept;
    Link& operator=(Link&&) noexcept;
    ~Link();

    LinkSide side() const;
    std::string peer_address() const;

    // Sends one control message as one frame.
    base::Result<void> send(const Message& message, Deadline deadline);
    // Sends control messages as consecutive frames, each sealed on its own as send() would,
    // in one write: a run of small frames (a guest's network frames) costs one system call
    // and one pass through the kernel's TCP stack instead of one per frame.
    base::Result<void> send_batch(std::span<const Message> messages, Deadline deadline);
    // Sends one small control message only if the socket takes it now; false (nothing written)
    // when the send buffer is full of earlier frames: those tell the peer this side is alive
    // as soon as it reads them, and waiting behind them would only make a slow reader look dead.
    base::Result<bool> send_if_writable(const Message& message, Deadline deadline);
    // Sends a checkpoint: VMSTATE_SIZE, then each VMSTATE_SEND frame from the memory the
    // EncodedState points at, in chunks: each chunk is checksummed (none), authenticated
    // (authenticated: then written straight from that memory) or encrypted into a chunk-sized
    // buffer (encrypted) just before it is written, on the caller's thread. The guest need not
    // be paused: the EncodedState points at copies.
    base::Result<void> send_state(const EncodedState& state, Deadline deadline);
    // Sends a frame with any header fields and payload, unchecked. For tests that play a
    // misbehaving peer; never used by colod itself.
    base::Result<void> send_raw(std::span<const std::byte> bytes, Deadline deadline);

    // Receives the next frame: header checks, sequence (each direction counts frames from 0;
    // a gap is Reason::SequenceGap), before authentication only HELLO, AUTH and ERROR (else
    // Reason::Unauthenticated), then the CRC, or with link security the frame's flag and tag
    // (Reason::FrameAuth; an encrypted payload is decrypted in place as it lands). The
    // deadline covers the whole frame.
    base::Result<Frame> receive(Deadline deadline);
    base::Result<void> receive_into(Frame& frame, Deadline deadline);
    // The same, for a session's liveness: fails with Timeout only after `idle` passes with no
    // byte arriving, so a long frame on a slow link is not mistaken for a dead peer.
    base::Result<void> receive_into_idle(Frame& frame, Clock::duration idle);

    // Marks the peer as authenticated (called by handshake() on the receiving thread). With
    // ciphers (link-security authenticated or encrypted) every later frame is sealed with
    // `send`, and every frame received must carry the session's flag and open with `receive`.
    struct SessionCiphers {
        FrameCipher send;
        FrameCipher receive;
    };
    void set_authenticated(std::optional<SessionCiphers> ciphers);
    bool authenticated() const;
    // What protects the frames now: None before the handshake and for link-security none.
    LinkSecurity security() const;

    // Aborts blocked and future calls with Errc::Stopped. Safe from any thread.
    void shutdown();

    // Wall-clock facts for heartbeats and status.
    Clock::time_point last_send() const;
    Clock::time_point last_receive() const;
    uint64_t bytes_sent() const;
    uint64_t bytes_received() const;

private:
    friend class Listener;
    struct Shared;
    explicit Link(std::unique_ptr<Shared> shared);
    base::Result<void> receive_frame(Frame& frame, Deadline deadline, Clock::duration idle);
    std::unique_ptr<Shared> m;
};

class Listener {
public:
    // Listens on "host:port"; port 0 picks a free port (see port()).
    static base::Result<Listener> create(std::string_view address);

    Listener(Listener&&) noexcept;
    Listener& operator=(Listener&&) noexcept;
    ~Listener();

    // Waits for the next connection until the deadline (Errc::Timeout) or shutdown()
    // (Errc::Stopped).
    base::Result<Link> accept(Deadline deadline);
    uint16_t port() const;
    std::string local_address() const;
    void shutdown();

private:
    struct Shared;
    explicit Listener(std::unique_ptr<Shared> shared);
    std::unique_ptr<Shared> m;
};

// Sends HEARTBEAT on a link whenever nothing has been sent for `interval`, from its own
// thread, until destroyed or a send fails (then failed() is true and error() says why).
// `committed_seq` is called on that thread. Destroy it before the link.
class HeartbeatSender {
public:
    static base::Result<std::unique_ptr<HeartbeatSender>> start(Link& link, Clock::duration interval,
                                                                 std::function<uint64_t()> committed_seq);
    ~HeartbeatSender();
    bool failed() const;
    std::optional<base::Error> error() const;
    uint64_t sent() const;

private:
    struct Shared;
    explicit HeartbeatSender(std::unique_ptr<Shared> shared);
    std::unique_ptr<Shared> m;
};

}  // namespace colod::proto
