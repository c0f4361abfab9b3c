// SPDX-License-Identifier: GPL-2.0-or-later
#include "proto/link.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <climits>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "base/log.h"
#include "base/thread_name.h"
#include "proto/crc32c.h"
#include "proto/errors.h"
#include "proto/wire.h"

namespace colod::proto {

namespace {

// Bytes of a frame's gather list checksummed, authenticated or encrypted and written per step:
// small enough that the bytes are still in cache when the kernel copies them, large enough to
// keep syscalls few. Also the size of the buffer an encrypted chunk is sealed into.
constexpr size_t kChunk = 256u << 10;
// The most a blocked receive waits for before waking (SO_RCVLOWAT).
constexpr size_t kLowWater = 256u << 10;
// Reads of less than this go through the link's read-ahead buffer, which takes whatever the
// socket holds (up to its size) in one recv: a stream of small frames (a guest's network
// frames, console bytes) costs one system call per many frames instead of two or three per
// frame. Larger reads (a checkpoint's pages) go straight into their destination.
constexpr size_t kReadAhead = 64u << 10;

struct HostPort {
    std::string host;
    std::string port;
};

base::Result<HostPort> split_address(std::string_view address) {
    auto colon = address.rfind(':');
    if (colon == std::string_view::npos || colon + 1 == address.size())
        return base::Error::make(base::Errc::Invalid, "address '{}' is not host:port", address);
    std::string host(address.substr(0, colon));
    std::string port(address.substr(colon + 1));
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    for (char c : port)
        if (c < '0' || c > '9')
            return base::Error::make(base::Errc::Invalid, "address '{}' has a bad port", address);
    return HostPort{host, port};
}

struct AddrInfo {
    addrinfo* list = nullptr;
    ~AddrInfo() {
        if (list)
            ::freeaddrinfo(list);
    }
};

base::Result<void> resolve(std::string_view address, int flags, AddrInfo& out) {
    HostPort hp = TRY(split_address(address));
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = flags | AI_NUMERICSERV;
    const char* host = hp.host.empty() || hp.host == "*" ? nullptr : hp.host.c_str();
    int rc = ::getaddrinfo(host, hp.port.c_str(), &hints, &out.list);
    if (rc != 0)
        return base::Error::make(base::Errc::Invalid, "resolving '{}': {}", address, ::gai_strerror(rc));
    return base::ok();
}

std::string format_address(const sockaddr_storage& ss) {
    char host[INET6_ADDRSTRLEN] = {};
    // SAFETY: the family field tells which sockaddr type the storage holds.
    if (ss.ss_family == AF_INET) {
        auto* in = reinterpret_cast<const sockaddr_in*>(&ss);
        ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        return fmt::format("{}:{}", host, ntohs(in->sin_port));
    }
    if (ss.ss_family == AF_INET6) {
        auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
        ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        return fmt::format("[{}]:{}", host, ntohs(in6->sin6_port));
    }
    return "?";
}

std::string peer_of(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    // SAFETY: getpeername writes at most len bytes into the storage.
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
        return "?";
    return format_address(ss);
}

base::Result<void> tune_socket(int fd) {
    int one = 1;
    if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        return base::Error::from_errno("setsockopt TCP_NODELAY");
    if (::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) != 0)
        return base::Error::from_errno("setsockopt SO_KEEPALIVE");
    return base::ok();
}

int remaining_ms(Deadline deadline) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0)
        return 0;
    return left > INT_MAX ? INT_MAX : int(left);
}

base::Result<base::Fd> make_eventfd() {
    base::Fd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!fd)
        return base::Error::from_errno("eventfd");
    return fd;
}

enum class WaitFor : short { Read = POLLIN, Write = POLLOUT };

// Waits until `fd` is ready, the deadline passes or `wake` is signalled (shutdown).
base::Result<void> wait_ready(int fd, int wake, WaitFor what, Deadline deadline, std::string_view doing) {
    for (;;) {
        pollfd fds[2] = {{fd, static_cast<short>(what), 0}, {wake, POLLIN, 0}};
        int ms = remaining_ms(deadline);
        int rc = ::poll(fds, 2, ms);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            return base::Error::from_errno("poll");
        }
        if (fds[1].revents)
            return base::Error::make(base::Errc::Stopped, "{}: link shut down", doing);
        if (fds[0].revents)
            return base::ok();
        if (ms == 0)
            return base::Error::make(base::Errc::Timeout, "{}: deadline passed", doing);
    }
}

}  // namespace

// ---- Link ----

struct Link::Shared {
    base::Fd fd;
    base::Fd wake;
    LinkSide side = LinkSide::Connecting;
    std::string peer;
    std::atomic<bool> stopped{false};

    std::mutex send_mutex;
    uint64_t send_sequence = 0;             // guarded by send_mutex
    std::optional<FrameCipher> send_cipher; // guarded by send_mutex
    std::vector<std::byte> seal_buffer;     // guarded by send_mutex: one encrypted chunk
    std::vector<iovec> send_iov;            // guarded by send_mutex: the chunk being written
    std::vector<std::byte> batch_buffer;    // guarded by send_mutex: frames of send_batch()
    bool send_broken = false;               // guarded by send_mutex: a frame was cut short

    uint64_t receive_sequence = 0;       // receiving thread only
    std::vector<std::byte> read_ahead;   // receiving thread only: bytes received, not yet read
    size_t read_ahead_at = 0, read_ahead_end = 0;
    size_t receive_low_water = 1;        // receiving thread only: the socket's SO_RCVLOWAT

    void set_receive_low_water(size_t bytes) {
        if (bytes == receive_low_water)
            return;
        int value = int(bytes);
        if (::setsockopt(fd.get(), SOL_SOCKET, SO_RCVLOWAT, &value, sizeof value) == 0)
            receive_low_water = bytes;
    }
    std::optional<FrameCipher> receive_cipher;  // receiving thread only (set by its handshake)
    std::atomic<bool> authenticated{false};
    std::atomic<LinkSecurity> security{LinkSecurity::None};

    std::atomic<int64_t> last_send{0};
    std::atomic<int64_t> last_receive{0};
    std::atomic<uint64_t> bytes_sent{0};
    std::atomic<uint64_t> bytes_received{0};

    // Writes the whole gather list; advances the iovecs in place as the socket takes bytes.
    base::Result<void> write_iov(std::span<iovec> iov, Deadline deadline);
    // Reads exactly n bytes. With `landed`, the first `landed_bytes` of them are handed to it as
    // they arrive, while they are still in cache (checksummed, or decrypted in place).
    // With `idle` above zero the deadline moves to now + idle whenever bytes arrive.
    using Landed = std::function<base::Result<void>(std::span<std::byte>)>;
    base::Result<void> read_exact(std::byte* out, size_t n, Deadline deadline, std::string_view doing,
                                  const Landed& landed = {}, size_t landed_bytes = 0, Clock::duration idle = {});
    base::Result<void> send_frame_locked(const FrameHeader& header, std::span<const iovec> payload, Deadline deadline);
    // The next frame's header: its sequence number and the cipher's flag set, encoded, and the
    // cipher begun on it. Caller holds send_mutex.
    base::Result<HeaderBytes> open_frame_locked(FrameHeader& header);
    // Appends one whole frame (header, payload sealed or in clear, trailer) to batch_buffer.
    // Caller holds send_mutex; the frame takes the next sequence number.
    base::Result<void> append_frame_locked(FrameHeader header, std::span<const std::byte> payload);
};

namespace {
int64_t now_ticks() { return Clock::now().time_since_epoch().count(); }
}  // namespace

Link::Link(std::unique_ptr<Shared> shared) : m(std::move(shared)) {}
Link::Link(Link&&) noexcept = default;
Link& Link::operator=(Link&&) noexcept = default;
Link::~Link() = default;

base::Result<Link> Link::connect(std::string_view address, Deadline deadline) {
    AddrInfo ai;
    TRY(resolve(address, 0, ai));
    auto wake = TRY(make_eventfd());
    base::Error last(base::Errc::Failed, fmt::format("connecting to {}: no address", address));
    for (addrinfo* a = ai.list; a; a = a->ai_next) {
        base::Fd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
        if (!fd) {
            last = base::Error::from_errno("socket");
            continue;
        }
        if (::connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0) {
            if (errno != EINPROGRESS) {
                last = base::Error::from_errno(fmt::format("connecting to {}", address));
                continue;
            }
            auto ready = wait_ready(fd.get(), wake.get(), WaitFor::Write, deadline,
                                    fmt::format("connecting to {}", address));
            if (!ready) {
                last = std::move(ready).error();
                if (last.code() == base::Errc::Timeout)
                    return last;
                continue;
            }
            int err = 0;
            socklen_t len = sizeof err;
            ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0) {
                last = base::Error::from_errno(fmt::format("connecting to {}", address), err);
                continue;
            }
        }
        TRY(tune_socket(fd.get()));
        auto shared = std::make_unique<Shared>();
        shared->fd = std::move(fd);
        shared->wake = std::move(wake);
        shared->side = LinkSide::Connecting;
        shared->peer = peer_of(shared->fd.get());
        return Link(std::move(shared));
    }
    return last;
}

LinkSide Link::side() const { return m->side; }
std::string Link::peer_address() const { return m->peer; }

void Link::shutdown() {
    if (!m)
        return;
    m->stopped = true;
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(m->wake.get(), &one, sizeof one);
}

void Link::set_authenticated(std::optional<SessionCiphers> ciphers) {
    LinkSecurity security = LinkSecurity::None;
    if (ciphers) {
        security = ciphers->send.security();
        m->receive_cipher.emplace(std::move(ciphers->receive));
        std::lock_guard lock(m->send_mutex);
        m->send_cipher.emplace(std::move(ciphers->send));
    }
    m->security = security;
    m->authenticated = true;
}
bool Link::authenticated() const { return m->authenticated; }
LinkSecurity Link::security() const { return m->security; }

Clock::time_point Link::last_send() const { return Clock::time_point(Clock::duration(m->last_send.load())); }
Clock::time_point Link::last_receive() const { return Clock::time_point(Clock::duration(m->last_receive.load())); }
uint64_t Link::bytes_sent() const { return m->bytes_sent; }
uint64_t Link::bytes_received() const { return m->bytes_received; }

base::Result<void> Link::Shared::write_iov(std::span<iovec> iov, Deadline deadline) {
    size_t at = 0;
    while (at < iov.size()) {
        if (stopped)
            return base::Error::make(base::Errc::Stopped, "sending to {}: link shut down", peer);
        msghdr msg{};
        msg.msg_iov = &iov[at];
        msg.msg_iovlen = std::min<size_t>(iov.size() - at, IOV_MAX);
        ssize_t n = ::sendmsg(fd.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                TRY(wait_ready(fd.get(), wake.get(), WaitFor::Write, deadline, fmt::format("sending to {}", peer)));
                continue;
            }
            if (errno == EPIPE || errno == ECONNRESET)
                return base::Error(base::Errc::Eof, fmt::format("sending to {}: peer closed the connection", peer),
                                   errno);
            return base::Error::from_errno(fmt::format("sending to {}", peer));
        }
        bytes_sent += size_t(n);
        size_t left = size_t(n);
        while (at < iov.size() && left >= iov[at].iov_len)
            left -= iov[at++].iov_len;
        if (left) {
            iov[at].iov_base = static_cast<std::byte*>(iov[at].iov_base) + left;
            iov[at].iov_len -= left;
        }
    }
    last_send = now_ticks();
    return base::ok();
}

base::Result<void> Link::Shared::read_exact(std::byte* out, size_t n, Deadline deadline, std::string_view doing,
                                           const Landed& landed, size_t landed_bytes, Clock::duration idle) {
    size_t got = 0;
    auto take = [&](size_t r) -> base::Result<void> {  // out[got, got + r) just filled
        if (landed && got < landed_bytes)
            TRY(landed({out + got, std::min(got + r, landed_bytes) - got}));
        got += r;
        return base::ok();
    };
    while (got < n) {
        if (read_ahead_at < read_ahead_end) {
            size_t r = std::min(n - got, read_ahead_end - read_ahead_at);
            std::memcpy(out + got, read_ahead.data() + read_ahead_at, r);
            read_ahead_at += r;
            TRY(take(r));
            continue;
        }
        if (stopped)
            return base::Error::make(base::Errc::Stopped, "{}: link shut down", doing);
        const bool ahead = n - got < kReadAhead;
        if (ahead && read_ahead.size() < kReadAhead)
            read_ahead.resize(kReadAhead);
        ssize_t r = ahead ? ::recv(fd.get(), read_ahead.data(), read_ahead.size(), MSG_DONTWAIT)
                          : ::recv(fd.get(), out + got, n - got, MSG_DONTWAIT);
        if (r > 0) {
            bytes_received += size_t(r);
            if (idle > Clock::duration::zero())
                deadline = Clock::now() + idle;
            if (ahead) {
                read_ahead_at = 0;
                read_ahead_end = size_t(r);
            } else {
                TRY(take(size_t(r)));
            }
            continue;
        }
        if (r == 0)
            return base::Error::make(base::Errc::Eof, "{}: peer closed the connection{}", doing,
                                     got ? fmt::format(" after {} of {} bytes", got, n) : std::string());
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            // Wake only once a good share of what is missing has arrived: on hosts where
            // system calls are dear, a poll+recv pair per few kilobytes costs more than the
            // copy itself.
            set_receive_low_water(std::min(n - got, kLowWater));
            auto ready = wait_ready(fd.get(), wake.get(), WaitFor::Read, deadline, doing);
            if (!ready && ready.error().code() == base::Errc::Timeout && idle > Clock::duration::zero()) {
                // Bytes below the low-water mark do not wake poll: they still prove the peer
                // alive. Look once more before giving up.
                int queued = 0;
                if (::ioctl(fd.get(), FIONREAD, &queued) == 0 && queued > 0) {
                    deadline = Clock::now() + idle;
                    set_receive_low_water(1);
                    continue;
                }
            }
            TRY(std::move(ready));
            continue;
        }
        if (errno == ECONNRESET)
            return base::Error(base::Errc::Eof, fmt::format("{}: connection reset by peer", doing), errno);
        return base::Error::from_errno(doing);
    }
    last_receive = now_ticks();
    return base::ok();
}

// Writes one frame: header, payload gather list in chunks (each checksummed, authenticated or
// encrypted just before it is written), trailer (CRC or tag). Caller holds send_mutex.
base::Result<void> Link::Shared::send_frame_locked(const FrameHeader& header_in, std::span<const iovec> payload,
                                                   Deadline deadline) {
    if (send_broken)
        return base::Error::make(base::Errc::Failed, "sending to {}: an earlier frame was cut short", peer);
    FrameHeader header = header_in;
    HeaderBytes head = TRY(open_frame_locked(header));
    FrameCipher* cipher = send_cipher ? &*send_cipher : nullptr;
    const bool encrypting = cipher && cipher->security() == LinkSecurity::Encrypted;
    if (encrypting && seal_buffer.size() < kChunk)
        seal_buffer.resize(kChunk);
    // From the first byte on, a failure leaves a partial frame in the stream.
    send_broken = true;
    // SAFETY: iovec wants non-const pointers; sendmsg only reads them.
    iovec head_iov{const_cast<std::byte*>(head.data()), head.size()};
    Crc32c crc;
    std::vector<iovec>& chunk = send_iov;  // no allocation per frame once it has grown
    chunk.clear();
    chunk.push_back(head_iov);
    size_t chunk_bytes = head.size();
    size_t sealed = 0;  // bytes of seal_buffer in this chunk (its last iovec)
    auto flush = [&]() -> base::Result<void> {
        TRY(write_iov(chunk, deadline));
        chunk.clear();
        chunk_bytes = 0;
        sealed = 0;
        return base::ok();
    };
    for (const auto& v : payload) {
        auto* p = static_cast<std::byte*>(v.iov_base);
        size_t left = v.iov_len;
        while (left) {
            size_t take = std::min(left, kChunk - std::min(chunk_bytes, kChunk));
            if (take == 0) {
                TRY(flush());
                continue;
            }
            std::span<const std::byte> piece(p, take);
            if (encrypting) {
                // The ciphertext goes to the chunk buffer, one iovec for the whole chunk.
                std::byte* out = seal_buffer.data() + sealed;
                TRY(cipher->seal(piece, out));
                if (sealed)
                    chunk.back().iov_len += take;
                else
                    chunk.push_back({out, take});
                sealed += take;
            } else {
                if (cipher)
                    TRY(cipher->seal(piece, nullptr));
                else
                    crc.update(piece);
                chunk.push_back({p, take});
            }
            chunk_bytes += take;
            p += take;
            left -= take;
            if (chunk_bytes >= kChunk || chunk.size() >= IOV_MAX)
                TRY(flush());
        }
    }
    std::array<std::byte, kTagSize> trailer{};
    if (cipher) {
        trailer = TRY(cipher->finish_seal());
    } else {
        store_be32(trailer.data(), crc.value());
    }
    chunk.push_back({trailer.data(), header.trailer_size()});
    TRY(flush());
    send_broken = false;
    ++send_sequence;
    return base::ok();
}

base::Result<void> Link::send(const Message& message, Deadline deadline) {
    auto payload = encode_message(message);
    FrameHeader header{kWireVersion, message_type(message), 0, 0, uint32_t(payload.size())};
    // SAFETY: see send_frame_locked.
    iovec iov{payload.data(), payload.size()};
    std::lock_guard lock(m->send_mutex);
    return m->send_frame_locked(header, std::span(&iov, payload.empty() ? 0 : 1), deadline);
}

base::Result<HeaderBytes> Link::Shared::open_frame_locked(FrameHeader& header) {
    header.sequence = send_sequence;
    if (send_cipher)
        header.flags |= static_cast<uint16_t>(send_cipher->flag());
    HeaderBytes head = encode_header(header);
    if (send_cipher)
        TRY(send_cipher->begin(header.sequence, head));
    return head;
}

base::Result<void> Link::Shared::append_frame_locked(FrameHeader header, std::span<const std::byte> payload) {
    HeaderBytes head = TRY(open_frame_locked(header));
    FrameCipher* cipher = send_cipher ? &*send_cipher : nullptr;
    size_t at = batch_buffer.size();
    batch_buffer.resize(at + head.size() + payload.size() + header.trailer_size());
    std::byte* out = batch_buffer.data() + at;
    std::memcpy(out, head.data(), head.size());
    out += head.size();
    std::array<std::byte, kTagSize> trailer{};
    if (cipher) {
        if (cipher->security() == LinkSecurity::Encrypted) {
            TRY(cipher->seal(payload, out));
        } else {
            TRY(cipher->seal(payload, nullptr));
            std::memcpy(out, payload.data(), payload.size());
        }
        trailer = TRY(cipher->finish_seal());
    } else {
        std::memcpy(out, payload.data(), payload.size());
        Crc32c crc;
        crc.update(payload);
        store_be32(trailer.data(), crc.value());
    }
    std::memcpy(out + payload.size(), trailer.data(), header.trailer_size());
    ++send_sequence;
    return base::ok();
}

base::Result<void> Link::send_batch(std::span<const Message> messages, Deadline deadline) {
    std::lock_guard lock(m->send_mutex);
    if (m->send_broken)
        return base::Error::make(base::Errc::Failed, "sending to {}: an earlier frame was cut short", m->peer);
    m->batch_buffer.clear();
    for (const Message& message : messages) {
        auto payload = encode_message(message);
        FrameHeader header{kWireVersion, message_type(message), 0, 0, uint32_t(payload.size())};
        // A failure here (the cipher) leaves sequence numbers taken by frames never written.
        m->send_broken = true;
        TRY(m->append_frame_locked(header, payload));
        m->send_broken = false;
    }
    if (m->batch_buffer.empty())
        return base::ok();
    // SAFETY: iovec wants a non-const pointer; sendmsg only reads it.
    iovec iov{m->batch_buffer.data(), m->batch_buffer.size()};
    m->send_broken = true;
    TRY(m->write_iov(std::span(&iov, 1), deadline));
    m->send_broken = false;
    if (m->batch_buffer.capacity() > (1u << 20))
        std::vector<std::byte>().swap(m->batch_buffer);  // a rare large batch does not stay
    return base::ok();
}

base::Result<bool> Link::send_if_writable(const Message& message, Deadline deadline) {
    auto payload = encode_message(message);
    FrameHeader header{kWireVersion, message_type(message), 0, 0, uint32_t(payload.size())};
    // SAFETY: see send_frame_locked.
    iovec iov{payload.data(), payload.size()};
    std::lock_guard lock(m->send_mutex);
    // Under the send mutex nobody else writes: POLLOUT now means the kernel has room for at
    // least a small frame (it reports writable only above its minimum free space).
    pollfd pfd{m->fd.get(), POLLOUT, 0};
    int ready = ::poll(&pfd, 1, 0);
    if (ready < 0)
        return base::Error::from_errno(fmt::format("polling the link to {}", m->peer));
    if (ready == 0 || !(pfd.revents & POLLOUT))
        return false;
    TRY(m->send_frame_locked(header, std::span(&iov, payload.empty() ? 0 : 1), deadline));
    return true;
}

base::Result<void> Link::send_state(const EncodedState& state, Deadline deadline) {
    TRY(send(state.size(), deadline));
    for (size_t i = 0; i < state.frame_count(); ++i) {
        FrameHeader header{kWireVersion, MessageType::VmstateSend, 0, 0, state.frame_payload_length(i)};
        std::lock_guard lock(m->send_mutex);
        TRY(m->send_frame_locked(header, state.frame_iov(i), deadline));
    }
    return base::ok();
}

base::Result<void> Link::send_raw(std::span<const std::byte> bytes, Deadline deadline) {
    // SAFETY: see send_frame_locked (write_iov changes only the iovec, never the bytes).
    iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
    std::lock_guard lock(m->send_mutex);
    return m->write_iov(std::span(&iov, 1), deadline);
}

base::Result<Frame> Link::receive(Deadline deadline) {
    Frame frame;
    TRY(receive_into(frame, deadline));
    return frame;
}

base::Result<void> Link::receive_into(Frame& frame, Deadline deadline) { return receive_frame(frame, deadline, {}); }

base::Result<void> Link::receive_into_idle(Frame& frame, Clock::duration idle) {
    return receive_frame(frame, Clock::now() + idle, idle);
}

base::Result<void> Link::receive_frame(Frame& frame, Deadline deadline, Clock::duration idle) {
    std::string doing = fmt::format("receiving from {}", m->peer);
    HeaderBytes head;
    TRY(m->read_exact(head.data(), head.size(), deadline, doing, {}, 0, idle));
    FrameHeader header = TRY(decode_header(head));
    if (header.sequence != m->receive_sequence)
        return error(Reason::SequenceGap, "frame {} from {} where frame {} was due", header.sequence, m->peer,
                     m->receive_sequence);
    bool authenticated = m->authenticated;
    if (!authenticated && header.type != MessageType::Hello && header.type != MessageType::Auth &&
        header.type != MessageType::Error)
        return error(Reason::Unauthenticated, "{} from {} before authentication", message_type_name(header.type),
                     m->peer);
    // With link security every frame carries the session's flag: a frame in clear, or tagged
    // where it should be sealed, is refused before its body is read (no downgrade mid-session).
    FrameCipher* cipher = m->receive_cipher ? &*m->receive_cipher : nullptr;
    const uint16_t want = cipher ? static_cast<uint16_t>(cipher->flag()) : 0;
    if (header.flags != want) {
        if (cipher)
            return error(Reason::FrameAuth, "{} frame {} from {} has flags {:#06x} where link-security {} wants {:#06x}",
                         message_type_name(header.type), header.sequence, m->peer, header.flags,
                         link_security_name(cipher->security()), want);
        return error(Reason::BadFlags, "{} frame {} from {} has flags {:#06x} on a link without link security",
                     message_type_name(header.type), header.sequence, m->peer, header.flags);
    }
    size_t body = header.body_size();
    if (frame.m_buffer.size() < body)
        frame.m_buffer.resize(body);
    if (cipher)
        TRY(cipher->begin(header.sequence, head));
    Crc32c crc;
    auto landed = [&](std::span<std::byte> bytes) -> base::Result<void> {
        if (cipher)
            return cipher->open(bytes);
        crc.update(bytes);
        return base::ok();
    };
    TRY(m->read_exact(frame.m_buffer.data(), body, deadline, doing, landed, header.payload_length, idle));
    frame.header = header;
    if (cipher) {
        std::span<const std::byte, kTagSize> tag(frame.m_buffer.data() + header.payload_length, kTagSize);
        auto opened = cipher->finish_open(tag);
        if (!opened && reason_of(opened.error()) == Reason::FrameAuth)
            return error(Reason::FrameAuth, "{} frame {} from {}: its tag does not match (changed, forged, replayed "
                                            "or not sealed with this session's key)",
                         message_type_name(header.type), header.sequence, m->peer);
        TRY(std::move(opened));
    } else {
        uint32_t sent_crc = load_be32(frame.m_buffer.data() + header.payload_length);
        if (sent_crc != crc.value())
            return error(Reason::PayloadCrc, "{} frame {} from {}: CRC {:#010x}, computed {:#010x}",
                         message_type_name(header.type), header.sequence, m->peer, sent_crc, crc.value());
    }
    ++m->receive_sequence;
    return base::ok();
}

// ---- Listener ----

struct Listener::Shared {
    base::Fd fd;
    base::Fd wake;
    std::string local;
    uint16_t port = 0;
};

Listener::Listener(std::unique_ptr<Shared> shared) : m(std::move(shared)) {}
Listener::Listener(Listener&&) noexcept = default;
Listener& Listener::operator=(Listener&&) noexcept = default;
Listener::~Listener() = default;

base::Result<Listener> Listener::create(std::string_view address) {
    AddrInfo ai;
    TRY(resolve(address, AI_PASSIVE, ai));
    base::Error last(base::Errc::Failed, fmt::format("listening on {}: no address", address));
    for (addrinfo* a = ai.list; a; a = a->ai_next) {
        base::Fd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
        if (!fd) {
            last = base::Error::from_errno("socket");
            continue;
        }
        int one = 1;
        ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (::bind(fd.get(), a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd.get(), 16) != 0) {
            last = base::Error::from_errno(fmt::format("listening on {}", address));
            continue;
        }
        auto shared = std::make_unique<Shared>();
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        // SAFETY: getsockname writes at most len bytes into the storage.
        ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len);
        shared->local = format_address(ss);
        // SAFETY: sin_port and sin6_port sit at the same offset.
        shared->port = ntohs(reinterpret_cast<const sockaddr_in*>(&ss)->sin_port);
        shared->fd = std::move(fd);
        shared->wake = TRY(make_eventfd());
        return Listener(std::move(shared));
    }
    return last;
}

uint16_t Listener::port() const { return m->port; }
std::string Listener::local_address() const { return m->local; }

void Listener::shutdown() {
    if (!m)
        return;
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(m->wake.get(), &one, sizeof one);
}

base::Result<Link> Listener::accept(Deadline deadline) {
    for (;;) {
        TRY(wait_ready(m->fd.get(), m->wake.get(), WaitFor::Read, deadline, fmt::format("accepting on {}", m->local)));
        base::Fd fd(::accept4(m->fd.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
        if (!fd) {
            // The connection may have gone again before accept; wait for the next one.
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED || errno == EINTR)
                continue;
            return base::Error::from_errno("accept4");
        }
        TRY(tune_socket(fd.get()));
        auto shared = std::make_unique<Link::Shared>();
        shared->fd = std::move(fd);
        shared->wake = TRY(make_eventfd());
        shared->side = LinkSide::Accepting;
        shared->peer = peer_of(shared->fd.get());
        return Link(std::move(shared));
    }
}

base::Result<std::pair<Link, Link>> Link::pair(int buffer_bytes) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) != 0)
        return base::Error::from_errno("socketpair");
    base::Fd ends[2] = {base::Fd(fds[0]), base::Fd(fds[1])};
    std::unique_ptr<Shared> shared[2];
    for (int i = 0; i < 2; ++i) {
        if (buffer_bytes > 0) {
            for (int option : {SO_SNDBUF, SO_RCVBUF})
                if (::setsockopt(ends[i].get(), SOL_SOCKET, option, &buffer_bytes, sizeof buffer_bytes) != 0)
                    return base::Error::from_errno("setsockopt SO_SNDBUF/SO_RCVBUF");
        }
        shared[i] = std::make_unique<Shared>();
        shared[i]->fd = std::move(ends[i]);
        shared[i]->wake = TRY(make_eventfd());
        shared[i]->side = i == 0 ? LinkSide::Connecting : LinkSide::Accepting;
        shared[i]->peer = i == 0 ? "pair:accepting" : "pair:connecting";
    }
    return std::pair<Link, Link>(Link(std::move(shared[0])), Link(std::move(shared[1])));
}

// ---- HeartbeatSender ----

struct HeartbeatSender::Shared {
    Link* link = nullptr;
    Clock::duration interval{};
    std::function<uint64_t()> committed_seq;
    mutable std::mutex mutex;
    std::condition_variable wake;
    bool stopping = false;
    std::optional<base::Error> failure;
    std::atomic<uint64_t> sent{0};
    std::thread thread;

    void run() {
        std::unique_lock lock(mutex);
        while (!stopping) {
            auto due = link->last_send() + interval;
            if (Clock::now() < due) {
                wake.wait_until(lock, due);
                continue;
            }
            lock.unlock();
            timespec ts{};
            ::clock_gettime(CLOCK_REALTIME, &ts);
            Heartbeat hb{committed_seq ? committed_seq() : 0, uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec)};
            auto result = link->send_if_writable(hb, Clock::now() + interval * 4);
            lock.lock();
            if (!result) {
                failure = std::move(result).error();
                return;
            }
            if (*result) {
                ++sent;
            } else {
                // The socket is full of earlier frames: skip this beat, try again in an interval.
                wake.wait_for(lock, interval);
            }
        }
    }
};

HeartbeatSender::HeartbeatSender(std::unique_ptr<Shared> shared) : m(std::move(shared)) {}

base::Result<std::unique_ptr<HeartbeatSender>> HeartbeatSender::start(Link& link, Clock::duration interval,
                                                                      std::function<uint64_t()> committed_seq) {
    if (interval <= Clock::duration::zero())
        return base::Error::make(base::Errc::Invalid, "heartbeat interval must be positive");
    auto shared = std::make_unique<Shared>();
    shared->link = &link;
    shared->interval = interval;
    shared->committed_seq = std::move(committed_seq);
    auto* raw = shared.get();
    raw->thread = base::named_thread("heartbeat", [raw] {
        raw->run();
    });
    return std::unique_ptr<HeartbeatSender>(new HeartbeatSender(std::move(shared)));
}

HeartbeatSender::~HeartbeatSender() {
    {
        std::lock_guard lock(m->mutex);
        m->stopping = true;
    }
    m->wake.notify_all();
    if (m->thread.joinable())
        m->thread.join();
}

bool HeartbeatSender::failed() const {
    std::lock_guard lock(m->mutex);
    return m->failure.has_value();
}

std::optional<base::Error> HeartbeatSender::error() const {
    std::lock_guard lock(m->mutex);
    return m->failure;
}

uint64_t HeartbeatSender::sent() const { return m->sent; }

}  // namespace colod::proto
