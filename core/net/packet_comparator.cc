// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/net/packet_comparator.h"

#include <algorithm>
#include <cstring>

#include "core/net/frames.h"
#include "core/net/packet_view.h"

namespace colod::core::net {

namespace {

constexpr uint8_t k_compared_segment_flags = static_cast<uint8_t>(~k_tcp_psh);

std::span<const std::byte> payload_of(const std::vector<std::byte>& bytes, size_t payload, size_t length) {
    return std::span(bytes).subspan(payload, length);
}

bool equal_bytes(std::span<const std::byte> a, std::span<const std::byte> b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

// The earlier of two sequence numbers.
uint32_t seq_min(uint32_t a, uint32_t b) { return seq_before(a, b) ? a : b; }

}  // namespace

size_t PacketComparator::FlowKeyHash::operator()(const FlowKey& key) const {
    // FNV-1a over the fields.
    uint64_t hash = 0xcbf29ce484222325ull;
    auto mix = [&hash](uint8_t b) {
        hash ^= b;
        hash *= 0x100000001b3ull;
    };
    mix(static_cast<uint8_t>(key.kind));
    mix(key.version);
    mix(key.protocol);
    for (uint16_t v : {key.vlan, key.source_port, key.destination_port}) {
        mix(static_cast<uint8_t>(v >> 8));
        mix(static_cast<uint8_t>(v));
    }
    for (uint8_t b : key.source)
        mix(b);
    for (uint8_t b : key.destination)
        mix(b);
    return static_cast<size_t>(hash);
}

PacketComparator::PacketComparator(ReleaseFn release, std::chrono::microseconds max_lag, uint64_t limit,
                                   std::function<void(Verdict)> verdict)
    : m_release(std::move(release)), m_max_lag(max_lag), m_limit(limit), m_verdict(std::move(verdict)) {}

PacketComparator::Shape PacketComparator::shape_of(std::span<const std::byte> frame) {
    Shape shape;
    auto packet = parse_packet(frame);
    if (!packet)
        return shape;  // shorter than an Ethernet header: the "other" flow, compared whole
    shape.key.vlan = packet->vlan;
    if (packet->ethertype == k_ethertype_arp) {
        shape.key.kind = FlowKind::Arp;
        return shape;
    }
    if (packet->ip == IpVersion::None)
        return shape;
    shape.l3 = packet->l3;
    shape.ip_version = static_cast<uint8_t>(packet->ip);
    shape.key.version = shape.ip_version;
    shape.key.protocol = packet->protocol;
    shape.key.source = packet->src;
    shape.key.destination = packet->dst;
    if (auto tcp = tcp_view(frame, *packet)) {
        shape.key.kind = FlowKind::Tcp;
        shape.key.source_port = tcp->source_port;
        shape.key.destination_port = tcp->destination_port;
        shape.seq = tcp->seq;
        shape.ack = tcp->ack;
        shape.flags = tcp->flags;
        shape.payload = tcp->payload;
        shape.payload_length = tcp->payload_length();
        bool fin = tcp->flags & k_tcp_fin;
        shape.end = tcp->seq + static_cast<uint32_t>(shape.payload_length) + (fin ? 1 : 0);
        if (tcp->flags & (k_tcp_syn | k_tcp_rst))
            shape.unit = Unit::Segment;
        else if (shape.payload_length > 0 || fin)
            shape.unit = Unit::Stream;
        else
            shape.unit = Unit::Free;
        return shape;
    }
    if (auto ports = udp_ports(frame, *packet)) {
        shape.key.kind = FlowKind::Udp;
        shape.key.source_port = (*ports)[0];
        shape.key.destination_port = (*ports)[1];
        return shape;
    }
    bool icmp = (packet->ip == IpVersion::V4 && packet->protocol == k_ip_icmp) ||
                (packet->ip == IpVersion::V6 && packet->protocol == k_ip_icmpv6);
    shape.key.kind = icmp && !packet->partial ? FlowKind::Icmp : FlowKind::Ip;
    return shape;
}

namespace {

// Whole-frame equality, apart from the IP header fields each guest fills in by itself.
bool same_frame(std::span<const std::byte> a, std::span<const std::byte> b, size_t l3, uint8_t ip_version) {
    if (a.size() != b.size())
        return false;
    struct Range {
        size_t begin, end;
    };
    std::array<Range, 2> ignored{};
    size_t count = 0;
    if (ip_version == 4) {
        ignored = {Range{l3 + 4, l3 + 6}, Range{l3 + 10, l3 + 12}};  // identification, header checksum
        count = 2;
    } else if (ip_version == 6) {
        // The flow label: the low 4 bits of byte 1, and bytes 2 and 3.
        if ((std::to_integer<uint8_t>(a[l3 + 1]) & 0xf0) != (std::to_integer<uint8_t>(b[l3 + 1]) & 0xf0))
            return false;
        ignored[0] = Range{l3 + 1, l3 + 4};
        count = 1;
    }
    size_t at = 0;
    for (const Range& range : std::span(ignored).first(count)) {
        if (!equal_bytes(a.subspan(at, range.begin - at), b.subspan(at, range.begin - at)))
            return false;
        at = range.end;
    }
    return equal_bytes(a.subspan(at), b.subspan(at));
}

}  // namespace

void PacketComparator::drop_front(Flow& flow) {
    Waiting& front = flow.secondary.front();
    m_secondary_bytes -= front.bytes.size();
    m_waiting_since.erase(front.ordinal);
    flow.secondary.pop_front();
}

PacketComparator::Step PacketComparator::step_whole(Flow& flow, const Held& held) {
    if (flow.secondary.empty())
        return Step::Wait;
    if (!same_frame(held.bytes, flow.secondary.front().bytes, held.shape.l3, held.shape.ip_version))
        return Step::Differ;
    drop_front(flow);
    return Step::Release;
}

PacketComparator::Step PacketComparator::step_segment(Flow& flow, const Held& held) {
    if (flow.secondary.empty())
        return Step::Wait;
    const Shape& p = held.shape;
    const Waiting& other = flow.secondary.front();
    const Shape& s = other.shape;
    bool syn = p.flags & k_tcp_syn;
    if (s.unit != Unit::Segment || (p.flags & k_compared_segment_flags) != (s.flags & k_compared_segment_flags) ||
        (!syn && p.seq != s.seq) ||
        !equal_bytes(payload_of(held.bytes, p.payload, p.payload_length),
                     payload_of(other.bytes, s.payload, s.payload_length)))
        return Step::Differ;
    drop_front(flow);
    if (syn) {
        // Both guests' bytes start after the SYN: from here on, the secondary's are numbered
        // like the primary's (its rewriter learns the offset from the peer's reply).
        flow.verified_valid = true;
        flow.verified = p.end + 1;
    }
    return Step::Release;
}

PacketComparator::Step PacketComparator::step_stream(Flow& flow, const Held& held, bool& compared) {
    const Shape& p = held.shape;
    auto primary_payload = payload_of(held.bytes, p.payload, p.payload_length);
    uint32_t primary_data_end = p.seq + static_cast<uint32_t>(p.payload_length);
    for (;;) {
        if (flow.verified_valid && !seq_before(flow.verified, p.end))
            return Step::Release;  // every byte of it is known equal (now, or a retransmission)
        // The secondary's segments wholly before what is left to compare are retransmissions.
        uint32_t from = flow.verified_valid ? flow.verified : p.seq;
        while (!flow.secondary.empty() && flow.secondary.front().shape.unit == Unit::Stream &&
               !seq_before(from, flow.secondary.front().shape.end))
            drop_front(flow);
        if (flow.secondary.empty())
            return Step::Wait;
        const Waiting& other = flow.secondary.front();
        const Shape& s = other.shape;
        if (s.unit != Unit::Stream)
            return Step::Differ;  // a SYN or RST where the primary has data
        if (!flow.verified_valid) {
            // The first data compared in this epoch: both must cover the primary's first byte.
            if (seq_before(p.seq, s.seq))
                return Step::Differ;
            flow.verified_valid = true;
            flow.verified = p.seq;
        }
        // A gap on either side before the next byte to compare: they differ in what they sent.
        if (seq_before(flow.verified, p.seq) || seq_before(flow.verified, s.seq))
            return Step::Differ;
        uint32_t upto = seq_min(p.end, s.end);
        uint32_t secondary_data_end = s.seq + static_cast<uint32_t>(s.payload_length);
        uint32_t data_upto = seq_min(upto, seq_min(primary_data_end, secondary_data_end));
        uint32_t at = flow.verified;
        if (seq_before(at, data_upto)) {
            size_t length = data_upto - at;
            auto mine = primary_payload.subspan(at - p.seq, length);
            auto theirs = payload_of(other.bytes, s.payload, s.payload_length).subspan(at - s.seq, length);
            if (!equal_bytes(mine, theirs))
                return Step::Differ;
            at = data_upto;
        }
        if (at != upto) {
            // One side's data ends here with a FIN (upto is within both): the other side must
            // end here with a FIN too, not go on with data.
            if (primary_data_end != at || secondary_data_end != at)
                return Step::Differ;
            at = upto;
        }
        compared = true;
        flow.verified = upto;
        if (!seq_before(upto, s.end))
            drop_front(flow);
    }
}

bool PacketComparator::acked_by_secondary(const Shape& shape) const {
    if (shape.key.kind != FlowKind::Tcp || !(shape.flags & k_tcp_ack))
        return true;
    auto it = m_secondary_acks.find(shape.key);
    return it != m_secondary_acks.end() && !seq_before(it->second, shape.ack);
}

void PacketComparator::note_secondary_ack(const Shape& shape) {
    if (shape.key.kind != FlowKind::Tcp || !(shape.flags & k_tcp_ack))
        return;
    auto it = m_secondary_acks.find(shape.key);
    if (it == m_secondary_acks.end()) {
        if (m_secondary_acks.size() >= k_max_flows)
            m_secondary_acks.clear();
        m_secondary_acks.emplace(shape.key, shape.ack);
    } else if (seq_before(it->second, shape.ack)) {
        it->second = shape.ack;
    }
}

void PacketComparator::release_held(uint64_t ordinal, std::vector<Bytes>& out) {
    auto it = m_held_frames.find(ordinal);
    Bytes bytes = std::move(it->second.bytes);
    FlowKey key = it->second.shape.key;
    m_held_frames.erase(it);
    if (auto sealed = m_sealed_flows.find(key); sealed != m_sealed_flows.end()) {
        // An earlier epoch still holds frames of this flow: this one goes out after them.
        for (auto epoch = m_sealed.rbegin(); epoch != m_sealed.rend(); ++epoch) {
            if (epoch->seq == sealed->second) {
                epoch->frames.push_back(std::move(bytes));
                return;
            }
        }
    }
    m_held -= bytes.size();
    out.push_back(std::move(bytes));
}

void PacketComparator::ask(Verdict wanted, Verdict& verdict) {
    if (!m_verdict_pending) {
        m_verdict_pending = true;
        verdict = wanted;
    }
}

void PacketComparator::match(Flow& flow, std::vector<Bytes>& out, Verdict& verdict) {
    auto now = Clock::now();
    while (!flow.primary.empty() && !flow.diverged) {
        uint64_t ordinal = flow.primary.front();
        const Held& held = m_held_frames.at(ordinal);
        if (!acked_by_secondary(held.shape))
            break;  // the secondary may not have the bytes this ack gives up yet
        Step step = Step::Release;
        bool compared = false;
        switch (held.shape.unit) {
        case Unit::Free: break;
        case Unit::Whole:
            step = step_whole(flow, held);
            compared = true;
            break;
        case Unit::Segment:
            step = step_segment(flow, held);
            compared = true;
            break;
        case Unit::Stream: step = step_stream(flow, held, compared); break;
        }
        if (step == Step::Wait)
            break;
        if (step == Step::Differ) {
            // Held until the checkpoint; the secondary's frames of this flow no longer mean
            // anything until then.
            flow.diverged = true;
            while (!flow.secondary.empty())
                drop_front(flow);
            m_mismatches.fetch_add(1, std::memory_order_relaxed);
            ask(Verdict::Mismatch, verdict);
            return;
        }
        if (compared)
            m_latency.add(static_cast<uint64_t>(
                std::chrono::duration_cast<std::chrono::microseconds>(now - held.at).count()));
        flow.primary.pop_front();
        release_held(ordinal, out);
    }
    // Retransmissions of bytes already compared wait for nothing.
    while (flow.verified_valid && !flow.secondary.empty() && flow.secondary.front().shape.unit == Unit::Stream &&
           !seq_before(flow.verified, flow.secondary.front().shape.end))
        drop_front(flow);
}

void PacketComparator::stop_matching(Verdict& verdict) {
    // Every primary frame stays in m_held_frames (sealed at the checkpoint); the flows and
    // the secondary's frames go.
    m_stopped_matching = true;
    m_flows.clear();
    m_waiting_since.clear();
    m_secondary_bytes = 0;
    ask(Verdict::Behind, verdict);
}

PacketComparator::Flow* PacketComparator::flow_for(const FlowKey& key, Verdict& verdict) {
    auto it = m_flows.find(key);
    if (it != m_flows.end())
        return &it->second;
    if (m_flows.size() >= k_max_flows) {
        stop_matching(verdict);
        return nullptr;
    }
    return &m_flows.emplace(key, Flow{}).first->second;
}

void PacketComparator::release(std::vector<Bytes>& out) {
    for (const auto& frame : out)
        m_release(frame);
}

void PacketComparator::put(std::span<const std::byte> frame) {
    std::vector<Bytes> out;
    Verdict verdict = Verdict::Fine;
    {
        std::lock_guard order(m_release_mutex);
        {
            std::lock_guard lock(m_mutex);
            if (!m_comparing) {
                out.emplace_back(frame.begin(), frame.end());
            } else {
                uint64_t ordinal = m_next_ordinal++;
                Shape shape = shape_of(frame);
                m_held_frames.emplace(ordinal, Held{Bytes(frame.begin(), frame.end()), shape, Clock::now()});
                m_held += frame.size();
                if (!m_stopped_matching) {
                    if (Flow* flow = flow_for(shape.key, verdict)) {
                        flow->primary.push_back(ordinal);
                        match(*flow, out, verdict);
                    }
                }
                if (m_held > m_limit)
                    ask(Verdict::Behind, verdict);
            }
        }
        release(out);
    }
    if (verdict != Verdict::Fine && m_verdict)
        m_verdict(verdict);
}

void PacketComparator::secondary(uint64_t epoch, std::span<const std::byte> frame) {
    std::vector<Bytes> out;
    Verdict verdict = Verdict::Fine;
    {
        std::lock_guard order(m_release_mutex);
        {
            std::lock_guard lock(m_mutex);
            if (!m_comparing)
                return;
            Shape shape = shape_of(frame);
            // What the secondary's guest acknowledged it holds, whichever epoch it ran.
            note_secondary_ack(shape);
            if (epoch != m_epoch || m_stopped_matching)
                return;  // an old epoch's frame, or nothing to compare with until a checkpoint
            Flow* flow = flow_for(shape.key, verdict);
            if (flow && flow->diverged)
                flow = nullptr;  // held until the checkpoint
            // The secondary's pure ACKs are not compared, nor retransmissions of bytes compared
            // already; their ack may still let the primary's frames of the flow go.
            bool compared = flow && shape.unit != Unit::Free &&
                            !(shape.unit == Unit::Stream && flow->verified_valid && !seq_before(flow->verified, shape.end));
            if (compared) {
                Waiting waiting;
                if (shape.unit == Unit::Whole) {
                    waiting.bytes.assign(frame.begin(), frame.end());
                } else {
                    // TCP: its payload is all that is compared.
                    auto payload = frame.subspan(shape.payload, shape.payload_length);
                    waiting.bytes.assign(payload.begin(), payload.end());
                    shape.payload = 0;
                }
                waiting.shape = shape;
                waiting.ordinal = m_next_ordinal++;
                m_waiting_since.emplace(waiting.ordinal, Clock::now());
                m_secondary_bytes += waiting.bytes.size();
                flow->secondary.push_back(std::move(waiting));
                if (m_secondary_bytes > m_limit) {
                    stop_matching(verdict);  // the flows are gone
                    flow = nullptr;
                }
            }
            if (flow)
                match(*flow, out, verdict);
        }
        release(out);
    }
    if (verdict != Verdict::Fine && m_verdict)
        m_verdict(verdict);
}

void PacketComparator::check_lag() {
    bool behind = false;
    {
        std::lock_guard lock(m_mutex);
        if (m_comparing && !m_verdict_pending) {
            auto now = Clock::now();
            bool primary_late = !m_held_frames.empty() && now - m_held_frames.begin()->second.at > m_max_lag;
            bool secondary_late = !m_waiting_since.empty() && now - m_waiting_since.begin()->second > m_max_lag;
            if (primary_late || secondary_late) {
                m_verdict_pending = true;
                behind = true;
            }
        }
    }
    if (behind && m_verdict)
        m_verdict(Verdict::Behind);
}

void PacketComparator::reset_epoch(uint64_t epoch) {
    m_held_frames.clear();
    m_flows.clear();
    m_waiting_since.clear();
    m_secondary_bytes = 0;
    m_stopped_matching = false;
    m_verdict_pending = false;
    m_epoch = epoch;
}

void PacketComparator::protect(uint64_t epoch) {
    std::lock_guard lock(m_mutex);
    m_comparing = true;
    m_epoch = epoch;
}

void PacketComparator::captured(uint64_t seq) {
    std::lock_guard lock(m_mutex);
    if (!m_comparing)
        return;
    if (!m_held_frames.empty()) {
        Sealed sealed{seq, {}};
        sealed.frames.reserve(m_held_frames.size());
        for (auto& [ordinal, held] : m_held_frames) {
            m_sealed_flows[held.shape.key] = seq;
            sealed.frames.push_back(std::move(held.bytes));
        }
        m_sealed.push_back(std::move(sealed));
    }
    reset_epoch(seq);
}

void PacketComparator::committed(uint64_t seq) {
    std::lock_guard order(m_release_mutex);
    std::vector<Bytes> out;
    {
        std::lock_guard lock(m_mutex);
        while (!m_sealed.empty() && m_sealed.front().seq <= seq) {
            for (auto& frame : m_sealed.front().frames) {
                m_held -= frame.size();
                out.push_back(std::move(frame));
            }
            m_sealed.pop_front();
        }
        std::erase_if(m_sealed_flows, [seq](const auto& entry) { return entry.second <= seq; });
    }
    release(out);
}

void PacketComparator::release_all() {
    std::lock_guard order(m_release_mutex);
    std::vector<Bytes> out;
    {
        std::lock_guard lock(m_mutex);
        for (auto& sealed : m_sealed)
            for (auto& frame : sealed.frames)
                out.push_back(std::move(frame));
        for (auto& [ordinal, held] : m_held_frames)
            out.push_back(std::move(held.bytes));
        stop_comparing();
    }
    release(out);
}

void PacketComparator::discard_all() {
    std::lock_guard lock(m_mutex);
    stop_comparing();
}

void PacketComparator::stop_comparing() {
    m_sealed.clear();
    m_sealed_flows.clear();
    m_secondary_acks.clear();
    reset_epoch(m_epoch);
    m_held = 0;
    m_comparing = false;
}

uint64_t PacketComparator::held_bytes() const {
    // Without the lock, as OutputComparator: the NIC asks from a vCPU thread under its own
    // lock while the release path holds this channel's.
    return m_held.load(std::memory_order_relaxed);
}

}  // namespace colod::core::net
