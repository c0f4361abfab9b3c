// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/guest_network.h"

#include <chrono>

#include "base/log.h"
#include "base/thread_name.h"
#include "core/net/frames.h"
#include "core/net/tcp_rewriter.h"
#include "core/status.h"
#include "core/virtio/net.h"

namespace colod::core {

namespace {
// Gaps between announce rounds: 0, 50, 150, 300 and 500 ms after the takeover, as a switch that
// missed the first one (a port still learning, a dropped broadcast) hears a later one.
constexpr std::chrono::milliseconds k_announce_gap_step{50};
// How often the rewriter's finished handshakes and closed connections are swept.
constexpr std::chrono::seconds k_rewriter_sweep{5};
}  // namespace

base::Result<std::unique_ptr<GuestNetwork>> GuestNetwork::open(const std::string& tap_name, virtio::NetDevice& nic) {
    auto tap = TRY(net::Tap::open(tap_name));
    std::unique_ptr<GuestNetwork> network(new GuestNetwork(std::move(tap), nic));
    GuestNetwork* self = network.get();
    nic.set_transmit([self](std::span<const std::byte> frame) { return self->transmit(frame); });
    nic.set_offload_listener([self](uint64_t features) { self->set_offloads(features); });
    return network;
}

GuestNetwork::GuestNetwork(net::Tap tap, virtio::NetDevice& nic) : m_tap(std::move(tap)), m_nic(nic) {}

GuestNetwork::~GuestNetwork() {
    m_nic.set_transmit([](std::span<const std::byte>) { return true; });  // dropped from now on
    m_nic.set_offload_listener(nullptr);
    std::unique_ptr<net::TapReader> reader;
    {
        std::lock_guard lock(m_mutex);
        m_stopping = true;
        reader = std::move(m_reader);
    }
    m_announce_wake.notify_all();
    if (reader)
        reader->stop();
    if (m_announcer.joinable())
        m_announcer.join();
}

void GuestNetwork::set_sink(PacketSink sink) {
    {
        std::lock_guard lock(m_sink_mutex);
        m_sink = std::move(sink);
    }
    ready();  // frames refused by the old sink may go to the new one
}

std::shared_ptr<net::TcpRewriter> GuestNetwork::rewriter() {
    std::lock_guard lock(m_rewriter_mutex);
    if (m_rewriter) {
        auto now = std::chrono::steady_clock::now();
        if (now >= m_next_expiry) {
            m_rewriter->expire_idle(now);
            m_next_expiry = now + k_rewriter_sweep;
        }
    }
    return m_rewriter;
}

void GuestNetwork::set_rewriter(std::shared_ptr<net::TcpRewriter> rewriter) {
    std::lock_guard lock(m_rewriter_mutex);
    m_rewriter = std::move(rewriter);
}

bool GuestNetwork::deliver(std::span<const std::byte> frame, const net::VnetHeader& header) {
    if (auto rewriter = this->rewriter()) {
        std::vector<std::byte> copy(frame.begin(), frame.end());
        rewriter->inbound(copy, header.flags & net::VnetHeader::k_needs_csum ? net::TcpRewriter::Checksum::Partial
                                                                             : net::TcpRewriter::Checksum::Full);
        return m_nic.receive(copy, header);
    }
    return m_nic.receive(frame, header);
}

void GuestNetwork::set_offloads(uint64_t guest_features) {
    using virtio::NetDevice;
    unsigned offloads = 0;
    if (guest_features & NetDevice::k_feature_guest_csum) {
        offloads |= net::Tap::k_offload_csum;
        if (guest_features & NetDevice::k_feature_guest_tso4)
            offloads |= net::Tap::k_offload_tso4;
        if (guest_features & NetDevice::k_feature_guest_tso6)
            offloads |= net::Tap::k_offload_tso6;
    }
    // On failure the tap goes on handing over frames as before: the NIC finishes the checksums
    // of those the guest cannot take unfinished and drops the segments it cannot take
    // (bad_headers), and this warning says why.
    if (auto set = m_tap.set_offloads(offloads); !set)
        base::log(base::Level::Warning, base::Event::None, set.error().message(), {{"TAP", m_tap.name()}});
}

void GuestNetwork::set_input_hook(InputHook hook) {
    std::lock_guard lock(m_input_hook_mutex);
    m_input_hook = std::move(hook);
}

void GuestNetwork::from_tap(const net::VnetHeader& header, std::span<const std::byte> frame) {
    std::lock_guard lock(m_input_hook_mutex);
    if (m_input_hook)
        m_input_hook(header, frame);
    else
        (void)deliver(frame, header);  // a frame the NIC cannot take is dropped, as a full queue would
}

bool GuestNetwork::transmit(std::span<const std::byte> frame) {
    std::vector<std::byte> rewritten;
    if (auto rewriter = this->rewriter()) {
        rewritten.assign(frame.begin(), frame.end());
        rewriter->outbound(rewritten);
        frame = rewritten;
    }
    std::lock_guard lock(m_sink_mutex);
    if (m_sink)
        return m_sink(frame);
    // Unprotected: straight out. A tap write never blocks (the fd is non-blocking; a full
    // queue drops the frame), so it may run under the NIC's lock.
    release(frame);
    return true;
}

void GuestNetwork::release(std::span<const std::byte> frame) {
    auto written = m_tap.write(frame);
    // No lock of ours: on the unprotected path this runs under the NIC's transport lock, which
    // is never held together with m_mutex.
    if (!written && !m_release_failed_logged.exchange(true))
        base::log(base::Level::Error, base::Event::None,
                  fmt::format("cannot send the guest's frames onto tap {}: {} (further failures are not logged)",
                              m_tap.name(), written.error().message()),
                  {{"TAP", m_tap.name()}});
}

void GuestNetwork::ready() { m_nic.tx_ready(); }

base::Result<void> GuestNetwork::start_input() {
    if (input_started())
        return base::ok();
    // Before the lock: the NIC's lock is never taken under m_mutex.
    m_nic.refresh_offloads();
    std::lock_guard lock(m_mutex);
    if (m_reader || m_stopping)
        return base::ok();
    // What queued on the tap before belongs to no guest that runs here: drop it.
    std::vector<std::byte> buffer(net::Tap::k_max_frame);
    for (;;) {
        auto got = TRY(m_tap.read(buffer));
        if (!got)
            break;
    }
    m_reader = TRY(net::TapReader::start(
        m_tap, [this](const net::VnetHeader& header, std::span<const std::byte> frame) { from_tap(header, frame); }));
    return base::ok();
}

bool GuestNetwork::input_started() const {
    std::lock_guard lock(m_mutex);
    return m_reader != nullptr;
}

void GuestNetwork::announce() {
    std::lock_guard lock(m_mutex);
    if (m_stopping)
        return;
    m_announce_pending = k_announce_rounds;
    if (!m_announcer.joinable())
        m_announcer = base::named_thread("net-announce", [this] {
            announcer();
        });
    m_announce_wake.notify_all();
}

uint64_t GuestNetwork::announcements() const {
    std::lock_guard lock(m_mutex);
    return m_announced;
}

void GuestNetwork::fill_status(Status& status) const {
    auto& out = status.network;
    const auto nic = m_nic.counters();
    out.present = true;
    out.tap = m_tap.name();
    out.tx_frames = nic.tx_frames;
    out.tx_bytes = nic.tx_bytes;
    out.rx_frames = nic.rx_frames;
    out.rx_bytes = nic.rx_bytes;
    out.rx_dropped = nic.rx_dropped;
    out.bad_chains = nic.bad_chains;
    out.rx_backlog = m_nic.rx_backlog();
    out.tap_dropped = m_tap.dropped();
    out.announcements = announcements();
}

void GuestNetwork::announcer() {
    std::unique_lock lock(m_mutex);
    int round = 0;
    for (;;) {
        m_announce_wake.wait(lock, [&] { return m_stopping || m_announce_pending > 0; });
        if (m_stopping)
            return;
        if (m_announce_pending == k_announce_rounds)
            round = 0;  // a new announce() starts the schedule again
        --m_announce_pending;
        lock.unlock();
        // Asked without m_mutex: vCPUs call into this object holding the NIC's lock, so holding
        // m_mutex while taking it could deadlock.
        const net::Mac mac = m_nic.mac();
        const uint32_t ipv4 = m_nic.learned_ipv4();
        release(net::rarp_announce(mac));
        if (ipv4 != 0)
            release(net::gratuitous_arp(mac, ipv4));
        lock.lock();
        ++m_announced;
        ++round;
        if (m_announce_pending > 0)
            m_announce_wake.wait_for(lock, k_announce_gap_step * round,
                                     [&] { return m_stopping || m_announce_pending == k_announce_rounds; });
    }
}

}  // namespace colod::core
