// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/net/tcp_rewriter.h"

#include <algorithm>
#include <optional>

#include "core/net/packet_view.h"
#include "core/state_io.h"

namespace colod::core::net {

namespace {

constexpr size_t k_at_checksum = 16;  // field offsets in the TCP header
constexpr size_t k_at_seq = 4;
constexpr size_t k_at_ack = 8;
constexpr uint8_t k_option_end = 0;
constexpr uint8_t k_option_nop = 1;
constexpr uint8_t k_option_sack = 5;
constexpr uint8_t k_option_timestamp = 8;
constexpr size_t k_timestamp_length = 10;

struct Segment {
    PacketView packet;
    TcpView tcp;
};

std::optional<Segment> tcp_segment(std::span<const std::byte> frame) {
    auto packet = parse_packet(frame);
    if (!packet)
        return std::nullopt;
    auto tcp = tcp_view(frame, *packet);
    if (!tcp)
        return std::nullopt;
    return Segment{*packet, *tcp};
}

// Subtracts `offset` from every edge of every SACK block (RFC 2018) in the segment's options;
// a malformed option list ends the walk (the guest's TCP ignores what follows it too).
void rewrite_sack(std::span<std::byte> segment, size_t checksum_at, size_t header_length, uint32_t offset) {
    size_t at = 20;
    while (at < header_length) {
        uint8_t kind = std::to_integer<uint8_t>(segment[at]);
        if (kind == k_option_end)
            return;
        if (kind == k_option_nop) {
            ++at;
            continue;
        }
        if (at + 1 >= header_length)
            return;
        size_t length = std::to_integer<uint8_t>(segment[at + 1]);
        if (length < 2 || at + length > header_length)
            return;
        if (kind == k_option_sack && (length - 2) % 8 == 0) {
            for (size_t edge = at + 2; edge < at + length; edge += 4)
                rewrite_be32(segment, checksum_at, edge, load_be32(segment, edge) - offset);
        }
        at += length;
    }
}

// Where the timestamp option (RFC 7323: TSval at +2, TSecr at +6) sits in the segment, if it
// has a well-formed one.
std::optional<size_t> timestamp_at(std::span<const std::byte> segment, size_t header_length) {
    size_t at = 20;
    while (at < header_length) {
        uint8_t kind = std::to_integer<uint8_t>(segment[at]);
        if (kind == k_option_end)
            return std::nullopt;
        if (kind == k_option_nop) {
            ++at;
            continue;
        }
        if (at + 1 >= header_length)
            return std::nullopt;
        size_t length = std::to_integer<uint8_t>(segment[at + 1]);
        if (length < 2 || at + length > header_length)
            return std::nullopt;
        if (kind == k_option_timestamp)
            return length == k_timestamp_length ? std::optional<size_t>(at) : std::nullopt;
        at += length;
    }
    return std::nullopt;
}

}  // namespace

size_t TcpRewriter::KeyHash::operator()(const Key& key) const {
    // FNV-1a over the fields.
    uint64_t hash = 0xcbf29ce484222325ull;
    auto mix = [&hash](uint8_t b) {
        hash ^= b;
        hash *= 0x100000001b3ull;
    };
    mix(key.version);
    for (uint16_t port : {key.local_port, key.remote_port}) {
        mix(static_cast<uint8_t>(port >> 8));
        mix(static_cast<uint8_t>(port));
    }
    for (uint8_t b : key.local)
        mix(b);
    for (uint8_t b : key.remote)
        mix(b);
    return static_cast<size_t>(hash);
}

TcpRewriter::TcpRewriter(size_t max_connections) : m_max_connections(std::max<size_t>(max_connections, 1)) {}

TcpRewriter::Connection& TcpRewriter::start(const Key& key, State state, uint32_t isn, Clock::time_point now) {
    auto it = m_table.find(key);
    if (it == m_table.end()) {
        if (m_table.size() >= m_max_connections) {
            // Full: the connection idle the longest goes (its rewriting with it).
            m_table.erase(m_lru.front());
            m_lru.pop_front();
            ++m_evicted;
        }
        m_lru.push_back(key);
        it = m_table.emplace(key, Connection{}).first;
        it->second.lru = std::prev(m_lru.end());
    } else {
        // A new connection on the 4-tuple of an old one (or a handshake started again with
        // another ISN): nothing of the old one applies.
        auto lru = it->second.lru;
        it->second = Connection{};
        it->second.lru = lru;
    }
    touch(it, now);
    it->second.state = state;
    it->second.isn = isn;
    return it->second;
}

void TcpRewriter::touch(Table::iterator it, Clock::time_point now) {
    it->second.last = now;
    m_lru.splice(m_lru.end(), m_lru, it->second.lru);
}

void TcpRewriter::erase(Table::iterator it) {
    m_lru.erase(it->second.lru);
    m_table.erase(it);
}

void TcpRewriter::note_guest_timestamp(Connection& connection, std::span<const std::byte> segment,
                                       size_t header_length) {
    auto ts = timestamp_at(segment, header_length);
    connection.guest_ts = ts.has_value();
    if (ts)
        connection.guest_tsval = load_be32(segment, *ts + 2);
}

bool TcpRewriter::learn(Table::iterator it, uint32_t primary_isn_plus_one, std::optional<uint32_t> primary_tsval) {
    Connection& connection = it->second;
    connection.offset = primary_isn_plus_one - 1 - connection.isn;
    connection.state = State::Established;
    if (connection.guest_ts && primary_tsval) {
        connection.ts_known = true;
        connection.ts_offset = *primary_tsval - connection.guest_tsval;
    }
    if (connection.offset == 0 && connection.ts_offset == 0) {
        erase(it);  // both guests chose the same ISN and timestamp origin: nothing to rewrite
        return false;
    }
    return true;
}

void TcpRewriter::inbound(std::span<std::byte> frame, Checksum checksum) {
    auto parsed = tcp_segment(frame);
    if (!parsed)
        return;
    const size_t checksum_at = checksum == Checksum::Partial ? k_no_checksum : k_at_checksum;
    const TcpView& tcp = parsed->tcp;
    Key key{static_cast<uint8_t>(parsed->packet.ip), tcp.destination_port, tcp.source_port, parsed->packet.dst,
            parsed->packet.src};
    bool syn = tcp.flags & k_tcp_syn, ack = tcp.flags & k_tcp_ack, rst = tcp.flags & k_tcp_rst;

    auto segment = frame.subspan(tcp.offset, tcp.end - tcp.offset);
    // The timestamp echo (valid with ACK only): in the peer's acknowledgement of the primary's
    // SYN or SYN-ACK, that segment's TSval.
    auto ts = ack ? timestamp_at(segment, tcp.header_length) : std::nullopt;
    const size_t echo_at = ts.value_or(0) + 6;
    auto echoed = ts ? std::optional<uint32_t>(load_be32(segment, echo_at)) : std::nullopt;

    std::lock_guard lock(m_mutex);
    auto it = m_table.find(key);
    if (it == m_table.end())
        return;
    touch(it, Clock::now());
    Connection& connection = it->second;
    switch (connection.state) {
    case State::SynReceived:
        // The client's first acknowledgement (its handshake ACK, or data if that ACK was
        // lost) acknowledges the primary's SYN-ACK: ack = primary's ISN + 1, and its
        // timestamp echo is the primary's SYN-ACK's TSval.
        if (ack && !syn) {
            if (!learn(it, tcp.ack, echoed))
                return;
        } else {
            if (rst)
                erase(it);  // the client gave up on the handshake
            return;
        }
        break;
    case State::SynSent:
        // The server's SYN-ACK acknowledges the primary's SYN; so does a RST refusing it
        // (which the guest accepts only with its own ISN + 1 as ack).
        if (ack && (syn || rst)) {
            if (!learn(it, tcp.ack, echoed))
                return;
        } else {
            return;
        }
        break;
    case State::Established:
    case State::Closed:
        break;
    }

    if (ack) {
        if (connection.fin_out && !seq_before(tcp.ack, connection.fin_out_end))
            connection.fin_out_acked = true;
        rewrite_be32(segment, checksum_at, k_at_ack, tcp.ack - connection.offset);
        rewrite_sack(segment, checksum_at, tcp.header_length, connection.offset);
        if (echoed && connection.ts_known)
            rewrite_be32(segment, checksum_at, echo_at, echoed.value_or(0) - connection.ts_offset);
    }
    if (tcp.flags & k_tcp_fin) {
        connection.fin_in = true;
        connection.fin_in_end = tcp.seq + static_cast<uint32_t>(tcp.payload_length()) + (syn ? 2 : 1);
    }
    // A RST ends the connection if the guest will accept it (RFC 5961 §3.2: its sequence
    // number is exactly what the guest acknowledged last); a blind one does not end the
    // rewriting of a connection the guest keeps.
    if (rst && (!connection.guest_acked || tcp.seq == connection.guest_ack))
        connection.state = State::Closed;
    if (connection.fin_in_acked && connection.fin_out_acked)
        connection.state = State::Closed;
}

void TcpRewriter::outbound(std::span<std::byte> frame) {
    auto parsed = tcp_segment(frame);
    if (!parsed)
        return;
    const TcpView& tcp = parsed->tcp;
    Key key{static_cast<uint8_t>(parsed->packet.ip), tcp.source_port, tcp.destination_port, parsed->packet.src,
            parsed->packet.dst};
    bool syn = tcp.flags & k_tcp_syn, ack = tcp.flags & k_tcp_ack;
    auto now = Clock::now();

    std::lock_guard lock(m_mutex);
    auto it = m_table.find(key);
    if (syn && !ack) {
        // The guest connects. Its SYN's sequence number is its ISN; the SYN itself passes
        // unchanged (the comparator does not compare a SYN's sequence number).
        Connection* connection = nullptr;
        if (it == m_table.end() || it->second.state != State::SynSent || it->second.isn != tcp.seq) {
            connection = &start(key, State::SynSent, tcp.seq, now);
        } else {
            touch(it, now);
            connection = &it->second;
        }
        // The latest SYN's: the server echoes the primary's latest.
        note_guest_timestamp(*connection, frame.subspan(tcp.offset, tcp.end - tcp.offset), tcp.header_length);
        return;
    }
    bool known = it != m_table.end() && it->second.isn == tcp.seq;
    if (syn && ack && !(known && it->second.state == State::Established)) {
        // The guest accepts (or retransmits its SYN-ACK before the client's ACK came). A
        // SYN-ACK retransmitted after the offset was learnt is rewritten below.
        Connection* connection = nullptr;
        if (known && it->second.state == State::SynReceived) {
            touch(it, now);
            connection = &it->second;
        } else {
            connection = &start(key, State::SynReceived, tcp.seq, now);
        }
        connection->guest_acked = true;
        connection->guest_ack = tcp.ack;
        note_guest_timestamp(*connection, frame.subspan(tcp.offset, tcp.end - tcp.offset), tcp.header_length);
        return;
    }
    if (it == m_table.end())
        return;
    touch(it, now);
    Connection& connection = it->second;
    if (connection.state == State::SynSent || connection.state == State::SynReceived) {
        if (tcp.flags & k_tcp_rst)
            erase(it);  // the guest aborts the handshake
        return;
    }

    // Established or closed.
    uint32_t seq = tcp.seq + connection.offset;
    auto segment = frame.subspan(tcp.offset, tcp.end - tcp.offset);
    rewrite_be32(segment, k_at_checksum, k_at_seq, seq);
    if (connection.ts_known) {
        if (auto ts = timestamp_at(segment, tcp.header_length))
            rewrite_be32(segment, k_at_checksum, *ts + 2, load_be32(segment, *ts + 2) + connection.ts_offset);
    }
    if (ack) {
        connection.guest_acked = true;
        connection.guest_ack = tcp.ack;
        if (connection.fin_in && !seq_before(tcp.ack, connection.fin_in_end))
            connection.fin_in_acked = true;
    }
    if (tcp.flags & k_tcp_fin) {
        connection.fin_out = true;
        connection.fin_out_end = seq + static_cast<uint32_t>(tcp.payload_length()) + (syn ? 2 : 1);
    }
    if (tcp.flags & k_tcp_rst)
        connection.state = State::Closed;
    if (connection.fin_in_acked && connection.fin_out_acked)
        connection.state = State::Closed;
}

namespace {
// One saved connection: key (version, ports, addresses), state, offsets, the closing's progress
// and the guest's last acknowledgement.
constexpr size_t k_saved_entry = 1 + 2 + 2 + 16 + 16 + 1 + 4 + 1 + 4 + 1 + 4 + 4 + 1 + 4;
}  // namespace

std::vector<std::byte> TcpRewriter::save() const {
    std::lock_guard lock(m_mutex);
    std::vector<const std::pair<const Key, Connection>*> saved;
    for (auto key = m_lru.rbegin(); key != m_lru.rend() && saved.size() < k_max_saved; ++key) {
        const auto& entry = *m_table.find(*key);
        if (entry.second.state == State::Established || entry.second.state == State::Closed)
            saved.push_back(&entry);
    }
    StateWriter w;
    w.put(static_cast<uint32_t>(saved.size()));
    for (const auto* entry : saved) {
        const Key& key = entry->first;
        const Connection& c = entry->second;
        w.put(key.version);
        w.put(key.local_port);
        w.put(key.remote_port);
        w.put_raw(key.local.data(), key.local.size());
        w.put_raw(key.remote.data(), key.remote.size());
        w.put(static_cast<uint8_t>(c.state));
        w.put(c.offset);
        w.put(static_cast<uint8_t>(c.ts_known));
        w.put(c.ts_offset);
        w.put(static_cast<uint8_t>(c.fin_out | c.fin_in << 1 | c.fin_out_acked << 2 | c.fin_in_acked << 3));
        w.put(c.fin_out_end);
        w.put(c.fin_in_end);
        w.put(static_cast<uint8_t>(c.guest_acked));
        w.put(c.guest_ack);
    }
    return w.take();
}

namespace {
struct SavedEntry {
    uint8_t version = 0;
    uint16_t local_port = 0, remote_port = 0;
    std::array<uint8_t, 16> local{}, remote{};
    uint8_t state = 0;
    uint32_t offset = 0;
    uint8_t ts_known = 0;
    uint32_t ts_offset = 0;
    uint8_t fins = 0;
    uint32_t fin_out_end = 0, fin_in_end = 0;
    uint8_t guest_acked = 0;
    uint32_t guest_ack = 0;
};

base::Result<std::vector<SavedEntry>> decode_saved(std::span<const std::byte> bytes, size_t max, uint8_t established,
                                                   uint8_t closed) {
    std::vector<SavedEntry> entries;
    if (bytes.empty())
        return entries;
    StateReader r(bytes);
    uint32_t count = r.get<uint32_t>();
    if (!r.failed() && count > max)
        r.fail(fmt::format("{} connections (at most {})", count, max));
    if (!r.failed() && r.remaining() != count * k_saved_entry)
        r.fail(fmt::format("{} connections in {} bytes", count, r.remaining()));
    for (uint32_t i = 0; i < count && !r.failed(); ++i) {
        SavedEntry e;
        e.version = r.get<uint8_t>();
        e.local_port = r.get<uint16_t>();
        e.remote_port = r.get<uint16_t>();
        r.get_raw(e.local.data(), e.local.size());
        r.get_raw(e.remote.data(), e.remote.size());
        e.state = r.get<uint8_t>();
        e.offset = r.get<uint32_t>();
        e.ts_known = r.get<uint8_t>();
        e.ts_offset = r.get<uint32_t>();
        e.fins = r.get<uint8_t>();
        e.fin_out_end = r.get<uint32_t>();
        e.fin_in_end = r.get<uint32_t>();
        e.guest_acked = r.get<uint8_t>();
        e.guest_ack = r.get<uint32_t>();
        if (r.failed())
            break;
        if (e.version != 4 && e.version != 6)
            r.fail(fmt::format("connection {}: IP version {}", i, e.version));
        else if (e.state != established && e.state != closed)
            r.fail(fmt::format("connection {}: state {}", i, e.state));
        else if (e.ts_known > 1 || e.guest_acked > 1 || e.fins > 15)
            r.fail(fmt::format("connection {}: a flag out of range", i));
        entries.push_back(e);
    }
    TRY(r.finish("TCP rewriter table"));
    return entries;
}
}  // namespace

base::Result<void> TcpRewriter::check(std::span<const std::byte> bytes) const {
    TRY(decode_saved(bytes, k_max_saved, static_cast<uint8_t>(State::Established), static_cast<uint8_t>(State::Closed)));
    return base::ok();
}

void TcpRewriter::load(std::span<const std::byte> bytes) {
    auto entries = decode_saved(bytes, k_max_saved, static_cast<uint8_t>(State::Established),
                                static_cast<uint8_t>(State::Closed));
    auto now = Clock::now();
    std::lock_guard lock(m_mutex);
    m_table.clear();
    m_lru.clear();
    if (!entries)
        return;  // check() refused it before the load began; nothing is kept
    // Oldest first, so that the LRU order is the saving side's.
    for (auto e = entries.value().rbegin(); e != entries.value().rend(); ++e) {
        Key key{e->version, e->local_port, e->remote_port, e->local, e->remote};
        if (m_table.size() >= m_max_connections || m_table.contains(key))
            continue;
        m_lru.push_back(key);
        Connection& c = m_table.emplace(key, Connection{}).first->second;
        c.lru = std::prev(m_lru.end());
        c.last = now;
        c.state = static_cast<State>(e->state);
        c.offset = e->offset;
        c.ts_known = e->ts_known != 0;
        c.ts_offset = e->ts_offset;
        c.fin_out = e->fins & 1;
        c.fin_in = e->fins & 2;
        c.fin_out_acked = e->fins & 4;
        c.fin_in_acked = e->fins & 8;
        c.fin_out_end = e->fin_out_end;
        c.fin_in_end = e->fin_in_end;
        c.guest_acked = e->guest_acked != 0;
        c.guest_ack = e->guest_ack;
    }
}

size_t TcpRewriter::expire_idle(Clock::time_point now) {
    std::lock_guard lock(m_mutex);
    size_t removed = 0;
    for (auto it = m_table.begin(); it != m_table.end();) {
        const Connection& connection = it->second;
        bool expired = false;
        switch (connection.state) {
        case State::SynSent:
        case State::SynReceived: expired = now - connection.last > k_handshake_timeout; break;
        case State::Closed: expired = now - connection.last > k_closed_linger; break;
        case State::Established: break;
        }
        if (expired) {
            m_lru.erase(it->second.lru);
            it = m_table.erase(it);
            ++removed;
        } else {
            ++it;
        }
    }
    return removed;
}

size_t TcpRewriter::connections() const {
    std::lock_guard lock(m_mutex);
    return m_table.size();
}

uint64_t TcpRewriter::evicted() const {
    std::lock_guard lock(m_mutex);
    return m_evicted;
}

}  // namespace colod::core::net
