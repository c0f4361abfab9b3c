// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/virtio/net.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "base/log.h"
#include "core/state_io.h"

namespace colod::core::virtio {

namespace {

constexpr auto k_log_interval = std::chrono::seconds(10);
// struct virtio_net_config as far as the offered features define it: mac[6], le16 status.
constexpr uint32_t k_config_size = 8;

// The transport's lock, or none before the device is attached (nothing else can reach it then).
std::unique_lock<std::mutex> lock_of(Transport* transport) {
    return transport ? transport->lock() : std::unique_lock<std::mutex>();
}

base::Error bad_chain(std::string message) { return base::Error(base::Errc::Invalid, std::move(message)); }

}  // namespace

NetDevice::NetDevice(Mac mac, Transmit transmit)
    : m_mac(mac), m_log_name("virtio-net " + net::format_mac(mac)), m_transmit(std::move(transmit)) {}

void NetDevice::set_transmit(Transmit transmit) {
    auto lock = lock_of(m_transport);
    m_transmit = std::move(transmit);
    m_tx_blocked = false;  // the old sink's back-pressure says nothing about the new one
    process_tx();
}

void NetDevice::set_offload_listener(OffloadListener listener) {
    auto lock = lock_of(m_transport);
    m_offload_listener = std::move(listener);
    if (m_offload_listener)
        m_offload_listener(guest_features_locked());
}

void NetDevice::refresh_offloads() {
    auto lock = lock_of(m_transport);
    if (m_offload_listener)
        m_offload_listener(guest_features_locked());
}

uint64_t NetDevice::guest_features() const {
    auto lock = lock_of(m_transport);
    return guest_features_locked();
}

uint64_t NetDevice::guest_features_locked() const {
    return m_transport && m_transport->active() ? m_transport->driver_features() & k_features : 0;
}

bool NetDevice::receive(std::span<const std::byte> frame, const net::VnetHeader& header) {
    auto lock = lock_of(m_transport);
    if (frame.size() < k_min_frame || frame.size() > k_max_frame) {
        ++m_counters.rx_dropped;
        return false;
    }
    // Frames never overtake each other: what waits goes first, and this one straight into the
    // guest only when nothing waits before it. Normally a backlog while the device runs means
    // no buffer was posted (the guest's next one is notified); one loaded with the state may
    // face buffers already posted and a device no resume() reached.
    if (!m_backlog.empty())
        deliver_backlog();
    if (m_backlog.empty() && can_run()) {
        bool pushed = false;
        RxOutcome outcome = deliver(header, frame, pushed);
        if (pushed)
            m_transport->notify_used(k_receive_queue);
        if (outcome == RxOutcome::Delivered)
            return true;
        if (outcome != RxOutcome::NoBuffer)
            return false;
    }
    if (m_backlog.size() >= k_rx_backlog || m_backlog_bytes + frame.size() > k_rx_backlog_bytes) {
        ++m_counters.rx_dropped;
        return false;
    }
    m_backlog.push_back(RxFrame{header, std::vector<std::byte>(frame.begin(), frame.end())});
    m_backlog_bytes += frame.size();
    return true;
}

void NetDevice::tx_ready() {
    auto lock = lock_of(m_transport);
    m_tx_blocked = false;
    process_tx();
}

uint32_t NetDevice::learned_ipv4() const {
    auto lock = lock_of(m_transport);
    return m_learned_ipv4;
}

NetDevice::Counters NetDevice::counters() const {
    auto lock = lock_of(m_transport);
    return m_counters;
}

size_t NetDevice::rx_backlog() const {
    auto lock = lock_of(m_transport);
    return m_backlog.size();
}

void NetDevice::read_config(uint32_t offset, std::span<std::byte> data) {
    std::array<std::byte, k_config_size> config;
    for (size_t i = 0; i < m_mac.size(); ++i)
        config[i] = std::byte{m_mac[i]};
    config[6] = std::byte{static_cast<uint8_t>(k_status_link_up & 0xff)};
    config[7] = std::byte{static_cast<uint8_t>(k_status_link_up >> 8)};
    for (size_t i = 0; i < data.size(); ++i) {
        uint64_t at = uint64_t{offset} + i;
        data[i] = at < k_config_size ? config[at] : std::byte{0};
    }
}

void NetDevice::activate() {
    if (m_offload_listener)
        m_offload_listener(m_transport->driver_features() & k_features);
    process_tx();
    deliver_backlog();
}

void NetDevice::reset() {
    if (m_offload_listener)
        m_offload_listener(0);
}

void NetDevice::queue_notify(uint16_t index) {
    // A notification while quiesced (a doorbell rung before the pause) is not lost: resume()
    // looks at both queues anyway.
    if (index == k_receive_queue)
        deliver_backlog();
    else if (index == k_transmit_queue)
        process_tx();
}

void NetDevice::quiesce() {
    auto lock = lock_of(m_transport);
    m_quiesced = true;
}

void NetDevice::resume() {
    auto lock = lock_of(m_transport);
    m_quiesced = false;
    // Frames the guest queued and frames that arrived while quiesced, or chains pending in a
    // state just loaded.
    process_tx();
    deliver_backlog();
}

bool NetDevice::can_run() const {
    return m_transport && !m_quiesced && m_transport->active();
}

// Copies the chain's readable bytes (header and frame) into m_tx_buffer, once: the guest may
// change its buffers meanwhile, and what was copied is what is checked and sent.
base::Result<void> NetDevice::read_chain(const Chain& chain) {
    m_tx_buffer.resize(static_cast<size_t>(chain.readable_bytes));
    size_t offset = 0;
    for (const Buffer& buffer : chain.readable) {
        auto source = TRY(m_transport->memory().slice(buffer.gpa, buffer.len, GuestMemory::Access::Read));
        std::memcpy(m_tx_buffer.data() + offset, source.data(), buffer.len);
        offset += buffer.len;
    }
    return base::ok();
}

void NetDevice::process_tx() {
    if (!can_run() || m_tx_blocked || !m_transmit)
        return;
    serve_queue(*m_transport, k_transmit_queue, [this](const Chain& chain) -> Served {
        std::optional<base::Error> broken;
        if (!chain.writable.empty())
            broken = bad_chain(fmt::format("transmit chain {} has {} device-writable buffers", chain.head,
                                           chain.writable.size()));
        else if (chain.readable_bytes < k_header_size)
            broken = bad_chain(fmt::format("transmit chain {} of {} bytes is shorter than the {}-byte virtio-net header",
                                           chain.head, chain.readable_bytes, k_header_size));
        else if (chain.readable_bytes - k_header_size > k_max_frame)
            broken = bad_chain(fmt::format("transmit chain {} carries a frame of {} bytes (at most {})", chain.head,
                                           chain.readable_bytes - k_header_size, k_max_frame));
        if (broken) {
            ++m_counters.bad_chains;
            return *broken;
        }
        TRY(read_chain(chain));
        // No offloads were negotiated, so the header has nothing for the device to act on:
        // whatever the driver put in it is ignored.
        auto frame = std::span<const std::byte>(m_tx_buffer).subspan(k_header_size);
        if (frame.size() < k_min_frame) {
            ++m_counters.bad_chains;
            base::log_limited(m_log_name + " short", k_log_interval, base::Level::Warning, base::Event::None,
                              fmt::format("{}: transmit chain {} carries {} bytes, not an Ethernet frame; not sent",
                                          m_log_name, chain.head, frame.size()));
            return used_chain(0);  // given back unsent
        }
        if (!m_transmit(frame)) {
            m_tx_blocked = true;  // the chain stays in the ring until tx_ready()
            return leave_in_ring();
        }
        ++m_counters.tx_frames;
        m_counters.tx_bytes += frame.size();
        learn(frame);
        return used_chain(0);
    });
}

void NetDevice::learn(std::span<const std::byte> frame) {
    auto found = net::sender_address(frame, m_mac);
    if (!found)
        return;
    // An ARP sender address is the guest's own by definition; an IPv4 source may be one it
    // forwards for others, so it serves only until the first ARP.
    if (found->source == net::AddressSource::Arp || m_learned_ipv4 == 0)
        m_learned_ipv4 = found->ipv4;
}

// Header then frame across the chain's writable buffers, in order (the caller checked that
// they hold both).
base::Result<void> NetDevice::write_chain(const Chain& chain, const net::VnetHeader& vnet_header,
                                          std::span<const std::byte> frame) {
    const auto header = vnet_header.encode(1);  // num_buffers = 1: one chain per frame
    size_t total = header.size() + frame.size();
    size_t done = 0;  // bytes of header and frame written so far
    for (const Buffer& buffer : chain.writable) {
        if (done == total)
            break;
        size_t want = std::min<size_t>(buffer.len, total - done);
        auto target = TRY(m_transport->memory().slice(buffer.gpa, want, GuestMemory::Access::Write));
        for (size_t at = 0; at < want;) {
            size_t from = done + at;
            auto source = from < header.size() ? std::span<const std::byte>(header).subspan(from)
                                               : frame.subspan(from - header.size());
            size_t n = std::min(want - at, source.size());
            std::memcpy(target.data() + at, source.data(), n);
            at += n;
        }
        done += want;
    }
    return base::ok();
}

std::optional<net::VnetHeader> NetDevice::header_for_guest(const net::VnetHeader& header,
                                                           std::span<const std::byte>& frame,
                                                           std::vector<std::byte>& scratch, bool& finished_here) {
    using net::VnetHeader;
    const uint64_t features = m_transport->driver_features();
    auto refuse = [&](std::string_view why) -> std::optional<VnetHeader> {
        ++m_counters.bad_headers;
        ++m_counters.rx_dropped;
        base::log_limited(m_log_name + " header", k_log_interval, base::Level::Warning, base::Event::None,
                          fmt::format("{}: a received {}-byte frame {}; dropped", m_log_name, frame.size(), why));
        return std::nullopt;
    };
    VnetHeader out;
    if (header.gso_type != VnetHeader::k_gso_none) {
        const uint8_t kind = header.gso_type & ~VnetHeader::k_gso_ecn;
        const uint64_t needed = kind == VnetHeader::k_gso_tcpv4   ? k_feature_guest_tso4
                                : kind == VnetHeader::k_gso_tcpv6 ? k_feature_guest_tso6
                                                                  : 0;
        if (needed == 0 || (header.gso_type & VnetHeader::k_gso_ecn))
            return refuse(fmt::format("is a segment of kind {:#x}, which the guest cannot be given", header.gso_type));
        if (!(features & needed) || !(features & k_feature_guest_csum))
            return refuse("is a 64 KiB segment and the guest does not take them (now)");
        if (header.gso_size == 0 || !(header.flags & VnetHeader::k_needs_csum))
            return refuse(fmt::format("is a segment with segment size {} and flags {:#x}", header.gso_size, header.flags));
        out.gso_type = header.gso_type;
        out.gso_size = header.gso_size;
        out.hdr_len = header.hdr_len;
    }
    if (header.flags & VnetHeader::k_needs_csum) {
        if (size_t{header.csum_start} + header.csum_offset + 2 > frame.size())
            return refuse(fmt::format("has its checksum to finish at {} + {}, outside it", header.csum_start,
                                      header.csum_offset));
        if (features & k_feature_guest_csum) {
            out.flags = VnetHeader::k_needs_csum;
            out.csum_start = header.csum_start;
            out.csum_offset = header.csum_offset;
        } else {
            scratch.assign(frame.begin(), frame.end());
            net::complete_checksum(scratch, header.csum_start, header.csum_offset);
            frame = scratch;
            finished_here = true;
        }
    } else if ((header.flags & VnetHeader::k_data_valid) && (features & k_feature_guest_csum)) {
        out.flags = VnetHeader::k_data_valid;
    }
    return out;
}

NetDevice::RxOutcome NetDevice::deliver(const net::VnetHeader& given, std::span<const std::byte> frame, bool& pushed) {
    bool finished_here = false;
    auto header = header_for_guest(given, frame, m_rx_scratch, finished_here);
    if (!header)
        return RxOutcome::Dropped;
    Queue& queue = m_transport->queue(k_receive_queue);
    auto broken = [&](const base::Error& why) {
        ++m_counters.rx_dropped;
        m_transport->queue_broken(k_receive_queue, why);
        return RxOutcome::Broken;
    };
    std::optional<Chain> chain;
    for (;;) {
        auto next = queue.peek();
        if (!next)
            return broken(next.error());
        if (next.value()) {
            chain = std::move(next.value());
            break;
        }
        // No buffer: ask for a notification when the driver posts one, and look again in case
        // it did before it could see that request.
        auto more = queue.arm_notifications();
        if (!more)
            return broken(more.error());
        if (!more.value())
            return RxOutcome::NoBuffer;
    }
    if (!chain->readable.empty()) {
        ++m_counters.bad_chains;
        return broken(bad_chain(
            fmt::format("receive chain {} has {} device-readable buffers", chain->head, chain->readable.size())));
    }
    uint64_t total = k_header_size + frame.size();
    uint32_t written = 0;
    if (chain->writable_bytes < total) {
        ++m_counters.bad_chains;
        ++m_counters.rx_dropped;
        base::log_limited(m_log_name + " small", k_log_interval, base::Level::Warning, base::Event::None,
                          fmt::format("{}: receive chain {} holds {} bytes, a {}-byte frame needs {}; frame dropped",
                                      m_log_name, chain->head, chain->writable_bytes, frame.size(), total));
    } else {
        if (auto copied = write_chain(*chain, *header, frame); !copied)
            return broken(copied.error());
        written = static_cast<uint32_t>(total);
    }
    queue.consume();
    if (auto used = queue.push_used(chain->head, written); !used)
        return broken(used.error());
    pushed = true;
    if (written == 0)
        return RxOutcome::Dropped;
    ++m_counters.rx_frames;
    m_counters.rx_bytes += frame.size();
    if (header->gso_type != net::VnetHeader::k_gso_none)
        ++m_counters.rx_gso_frames;
    if (finished_here)
        ++m_counters.rx_csum_done;
    return RxOutcome::Delivered;
}

void NetDevice::deliver_backlog() {
    if (!can_run())
        return;
    bool pushed = false;
    while (!m_backlog.empty()) {
        RxOutcome outcome = deliver(m_backlog.front().header, m_backlog.front().frame, pushed);
        if (outcome == RxOutcome::NoBuffer)
            break;
        m_backlog_bytes -= m_backlog.front().frame.size();
        m_backlog.pop_front();
        if (outcome == RxOutcome::Broken)
            return;  // the queue is unusable until the driver resets the device
    }
    if (pushed)
        m_transport->notify_used(k_receive_queue);
}

// Layout, version 3: u32 learned IPv4 address (0: none), u32 count of backlogged frames, then
// for each, oldest first: its 12-byte virtio-net header (num_buffers 0), u32 length, the
// frame's bytes; then the companion's bytes (u32 length first).
// Versions 1 (the address alone) and 2 (frames without headers) are refused: pairs run one
// version (the peers' HELLO compares device versions), and a state without its backlog would
// lose frames.
// The transport calls this with its lock held (its mutex is not recursive, so the lock is not
// taken here), the device quiesced.
std::vector<std::byte> NetDevice::save_state() const {
    StateWriter w;
    w.put(m_learned_ipv4);
    w.put(static_cast<uint32_t>(m_backlog.size()));
    for (const auto& rx : m_backlog) {
        w.put_bytes(rx.header.encode());
        w.put_blob(rx.frame);
    }
    w.put_blob(m_companion ? m_companion->save_companion() : std::vector<std::byte>{});
    return w.take();
}

base::Result<NetDevice::SavedState> NetDevice::decode_state(uint16_t version, std::span<const std::byte> bytes) const {
    if (version != k_state_version)
        return base::Error::make(base::Errc::Unsupported, "virtio-net state version {} (this build reads {})", version,
                                 k_state_version);
    StateReader r(bytes);
    SavedState s;
    s.learned_ipv4 = r.get<uint32_t>();
    uint32_t count = r.get<uint32_t>();
    if (!r.failed() && count > k_rx_backlog)
        r.fail(fmt::format("receive backlog of {} frames (at most {})", count, k_rx_backlog));
    for (uint32_t i = 0; i < count && !r.failed(); ++i) {
        std::array<std::byte, k_header_size> header{};
        r.get_raw(header.data(), header.size());
        uint32_t size = r.get<uint32_t>();
        if (r.failed())
            break;
        if (size < k_min_frame || size > k_max_frame) {
            r.fail(fmt::format("receive backlog frame {} of {} bytes (an Ethernet frame has {} to {})", i, size,
                               k_min_frame, k_max_frame));
            break;
        }
        if (s.backlog_bytes + size > k_rx_backlog_bytes) {
            r.fail(fmt::format("receive backlog beyond {} bytes at frame {}", k_rx_backlog_bytes, i));
            break;
        }
        if (r.remaining() < size) {  // (checked before allocating)
            r.fail(fmt::format("truncated in receive backlog frame {} ({} bytes, {} left)", i, size, r.remaining()));
            break;
        }
        std::vector<std::byte> frame(size);
        r.get_raw(frame.data(), size);
        s.backlog_bytes += size;
        s.backlog.push_back(RxFrame{net::VnetHeader::decode(header), std::move(frame)});
    }
    s.companion = r.get_blob(k_max_companion_state);
    TRY(r.finish("virtio-net state"));
    if (m_companion)
        TRY(m_companion->check_companion(s.companion));
    if (s.learned_ipv4 != 0 && !net::is_host_ipv4(s.learned_ipv4))
        return base::Error::make(base::Errc::Invalid, "virtio-net state: {} cannot be a guest's address",
                                 net::format_ipv4(s.learned_ipv4));
    return s;
}

base::Result<void> NetDevice::check_state(uint16_t version, std::span<const std::byte> bytes) const {
    TRY(decode_state(version, bytes));
    return base::ok();
}

// Lock held, device quiesced. Frames the device had waiting are replaced, not kept: the saved
// backlog is the one that goes with the guest's memory in the same checkpoint.
base::Result<void> NetDevice::load_state(uint16_t version, std::span<const std::byte> bytes) {
    SavedState s = TRY(decode_state(version, bytes));
    m_learned_ipv4 = s.learned_ipv4;
    m_backlog = std::move(s.backlog);
    m_backlog_bytes = s.backlog_bytes;
    if (m_companion)
        m_companion->load_companion(s.companion);
    return base::ok();
}

}  // namespace colod::core::virtio
