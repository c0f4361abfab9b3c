// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/active_engine.h"

#include <algorithm>
#include <array>
#include <numeric>
#include <utility>

#include "base/events.h"
#include "base/log.h"
#include "base/thread_name.h"
#include "core/fault.h"
#include "core/guest_network.h"
#include "core/guest_runtime.h"
#include "core/net/vnet_header.h"
#include "core/net/packet_comparator.h"
#include "core/output_buffer.h"
#include "core/output_comparator.h"
#include "core/uart.h"
#include "core/virtio/rng.h"
#include "proto/errors.h"
#include "proto/handshake.h"

namespace colod::core {

using Clock = std::chrono::steady_clock;
using base::Event;
using base::Level;
using State = ActiveEngine::State;

namespace {

// Pre-copy sends all of RAM, then re-sends dirty pages until few are left (or they stop
// shrinking).
constexpr uint64_t k_precopy_done_pages = 2048;
constexpr int k_precopy_max_rounds = 8;

// Every move the active engine may make; docs/engines.md shows this table.
constexpr std::array k_table{
    Transition<State>{State::Unprotected, State::Syncing, "a standby accepted the handshake"},
    Transition<State>{State::Syncing, State::Protected, "the standby applied the first complete checkpoint"},
    Transition<State>{State::Syncing, State::Unprotected, "peer lost during the sync"},
    Transition<State>{State::Protected, State::Unprotected, "peer lost"},
    Transition<State>{State::Protected, State::Held, "coloctl digest: the guest stays paused at the checkpoint"},
    Transition<State>{State::Held, State::Protected, "coloctl resume (release_hold)"},
    Transition<State>{State::Held, State::Unprotected, "peer lost while held: the guest runs on"},
    Transition<State>{State::Protected, State::HandingOver, "coloctl failover or SIGTERM: the final checkpoint"},
    Transition<State>{State::HandingOver, State::HandedOver, "the standby took the final checkpoint and runs the guest"},
    Transition<State>{State::HandingOver, State::Unprotected, "the handover failed: the guest runs on here"},
    Transition<State>{State::Unprotected, State::Stopped, "stop"},
    Transition<State>{State::Syncing, State::Stopped, "stop"},
    Transition<State>{State::Protected, State::Stopped, "stop"},
    Transition<State>{State::Held, State::Stopped, "stop"},
    Transition<State>{State::HandingOver, State::Stopped, "stop"},
    Transition<State>{State::HandedOver, State::Stopped, "stop"},
};

}  // namespace

std::string_view ActiveEngine::state_name(State state) {
    switch (state) {
    case State::Unprotected: return "unprotected";
    case State::Syncing: return "syncing";
    case State::Protected: return "protected";
    case State::Held: return "held";
    case State::HandingOver: return "handing-over";
    case State::HandedOver: return "handed-over";
    case State::Stopped: return "stopped";
    }
    return "?";
}

std::span<const Transition<State>> ActiveEngine::transitions() { return k_table; }

ActiveEngine::ActiveEngine(GuestRuntime& guest, proto::Hello identity, ReplicationConfig config,
                           proto::PeerState local_state, std::function<void(const std::string&)> on_change)
    : m_guest(guest),
      m_identity(std::move(identity)),
      m_config(std::move(config)),
      m_local_state(local_state),
      m_on_change(std::move(on_change)),
      m_pipeline(guest.machine(), m_config.checkpoint_interval, m_config.ack_timeout),
      m_machine("active", State::Unprotected, k_table, &ActiveEngine::state_name) {
    // The console is the first output channel; packets and disk writes join it as channels of
    // their own.
    auto to_console = [this](std::span<const std::byte> bytes) { m_guest.release_output(bytes); };
    // COLO: the secondary may lag behind by at most a checkpoint interval before a checkpoint
    // settles the comparison.
    auto verdict = [this](OutputComparator::Verdict seen) { compare_verdict(seen); };
    if (colo()) {
        m_console = std::make_unique<OutputComparator>("console", Framing::Stream, to_console,
                                                       m_config.checkpoint_interval, m_config.max_held_output, verdict);
    } else {
        m_console = std::make_unique<OutputBuffer>("console", Framing::Stream, to_console, m_config.max_held_output,
                                                   [this] { force_checkpoint(); });
    }
    m_channels.push_back(m_console.get());
    // The guest's packets: compared with the secondary's guest's in COLO mode, held per epoch
    // until the checkpoint that produced them is loaded on the standby otherwise.
    if (GuestNetwork* network = m_guest.network()) {
        auto to_tap = [network](std::span<const std::byte> frame) { network->release(frame); };
        if (colo())
            m_net = std::make_unique<net::PacketComparator>(to_tap, m_config.checkpoint_interval,
                                                            m_config.max_held_output, verdict);
        else
            m_net = std::make_unique<OutputBuffer>("net", Framing::Datagram, to_tap, m_config.max_held_output,
                                                   [this] { force_checkpoint(); });
        m_channels.push_back(m_net.get());
    }
    if (auto* blk = m_guest.machine().linux_devices().blk)
        m_disk = std::make_unique<DiskSource>(*blk, [this] { force_checkpoint(); }, k_disk_epoch_bytes);
}

void ActiveEngine::compare_verdict(OutputComparator::Verdict verdict) {
    {
        std::lock_guard lock(m_mutex);
        m_verdict = true;
        if (verdict == OutputComparator::Verdict::Mismatch)
            ++m_checkpoints_mismatch;
    }
    force_checkpoint();
}

ActiveEngine::~ActiveEngine() { stop(); }

base::Result<proto::Link> ActiveEngine::connect(proto::PeerState* peer_state) {
    auto link = m_dial ? m_dial() : proto::Link::connect(m_config.peer_address, proto::deadline_after(k_connect_timeout));
    if (!link)
        return std::move(link).error();
    proto::Hello hello = m_identity;
    hello.state = m_local_state;
    hello.link_security = m_config.link_security;
    auto policy = [peer_state](const proto::Hello& peer) -> std::string {
        if (peer_state)
            *peer_state = peer.state;
        if (peer.state != proto::PeerState::SecondaryStandby)
            return fmt::format("the peer is {}: it already runs the guest", proto::peer_state_name(peer.state));
        return {};
    };
    auto peer = proto::handshake(*link, *m_config.key, hello, proto::deadline_after(k_handshake_timeout), policy);
    if (!peer)
        return std::move(peer).error();
    return std::move(link).value();
}

ActiveEngine::ProbeResult ActiveEngine::probe() {
    std::optional<proto::PeerState> peer_state;
    proto::PeerState seen = proto::PeerState::SecondaryStandby;
    auto link = connect(&seen);
    if (link) {
        std::lock_guard lock(m_mutex);
        m_probed.emplace(std::move(link).value());
        return {Probe::Connected, "the peer is standing by"};
    }
    const base::Error& error = link.error();
    if (error.code() == base::Errc::Mismatch &&
        (seen == proto::PeerState::PrimaryActive || seen == proto::PeerState::SecondaryActive))
        return {Probe::PeerActive, error.message()};
    return {Probe::Unreachable, error.message()};
}

void ActiveEngine::start() {
    if (colo()) {
        m_guest.set_output_sink([this](std::span<const std::byte> bytes) { m_console->put(bytes); });
        m_guest.set_input_tap([this](std::span<const std::byte> bytes) { return forward_input(bytes); });
        if (auto* rng = m_guest.machine().linux_devices().rng) {
            m_rng_taken = m_rng_saved = rng->bytes_taken();
            rng->set_source(std::make_unique<virtio::LimitedEntropy>(std::make_unique<virtio::HostEntropy>(),
                                                                     [this] { return rng_allowance(); }));
            rng->set_observer([this](uint64_t offset, std::span<const std::byte> bytes) { forward_rng(offset, bytes); });
        }
        if (GuestNetwork* network = m_guest.network())
            network->set_input_hook([this, network](const net::VnetHeader& header, std::span<const std::byte> frame) {
                forward_frame(*network, header, frame);
            });
    } else {
        m_guest.set_output_sink([this](std::span<const std::byte> bytes) { m_console->put(bytes); });
    }
    // max-held-output forces a checkpoint; twice that much held (the checkpoint is slow to
    // commit) and the UART shows its transmitter busy until output is released: the guest
    // slows down instead of the held output growing without bound.
    m_guest.machine().uart().set_transmit_ready([this] {
        uint64_t held = m_console->held_bytes();
        return held < 2 * m_config.max_held_output;
    });
    // Packets likewise: past twice max-held-output the NIC keeps the guest's frames in its
    // transmit ring (the guest's queue fills and its stack slows down) until output is released.
    if (GuestNetwork* network = m_guest.network()) {
        network->set_sink([this](std::span<const std::byte> frame) {
            if (m_net->held_bytes() >= 2 * m_config.max_held_output)
                return false;
            m_net->put(frame);
            return true;
        });
    }
    if (m_disk)
        m_disk->attach();
    std::lock_guard lock(m_mutex);
    if (!m_thread.joinable())
        m_thread = base::named_thread("replicate", [this] {
            run();
        });
}

void ActiveEngine::stop(HeldOutput held) {
    std::shared_ptr<Session> session;
    {
        std::lock_guard lock(m_mutex);
        m_stop = true;
        session = m_session;
        m_probed.reset();
        m_hold.reset();
    }
    // Outside m_mutex: ending a session calls back into the engine (on_failure).
    if (session)
        session->fail(base::Error(base::Errc::Stopped, "replication stopped"));
    m_cv.notify_all();
    if (m_thread.joinable())
        m_thread.join();
    m_guest.set_input_tap(nullptr);
    if (m_disk) {
        m_disk->detach();
        m_disk->end_session();
    }
    if (GuestNetwork* network = m_guest.network(); network && colo())
        network->set_input_hook(nullptr);  // frames from the tap go straight to the guest again
    m_guest.machine().uart().set_transmit_ready(nullptr);
    if (auto* rng = m_guest.machine().linux_devices().rng; rng && colo()) {
        rng->set_observer(nullptr);
        rng->set_source(std::make_unique<virtio::HostEntropy>());
        rng->entropy_available();
    }
    GuestNetwork* network = m_guest.network();
    if (held == HeldOutput::Release) {
        output_release_all();
        m_guest.set_output_sink(nullptr);  // straight to the console from now on
        if (network)
            network->set_sink(nullptr);  // and the packets straight onto the tap
    } else {
        // Whatever the guest still says was never checkpointed: it must not reach anyone.
        m_guest.set_output_sink([](std::span<const std::byte>) {});
        if (network)
            network->set_sink([](std::span<const std::byte>) { return true; });
        output_discard_all();
    }
}

void ActiveEngine::output_captured(uint64_t seq) {
    for (auto* channel : m_channels) {
        channel->protect(seq);  // the first complete checkpoint of a session starts holding
        channel->captured(seq);
    }
}

void ActiveEngine::output_committed(uint64_t seq) {
    for (auto* channel : m_channels)
        channel->committed(seq);
    m_guest.machine().uart().transmitter_ready();  // held output went: the UART may take bytes again
    if (GuestNetwork* network = m_guest.network())
        network->ready();  // frames the NIC kept back may go now
}

void ActiveEngine::output_release_all() {
    for (auto* channel : m_channels)
        channel->release_all();
    m_guest.machine().uart().transmitter_ready();
    if (GuestNetwork* network = m_guest.network())
        network->ready();  // frames the NIC kept back may go now
}

void ActiveEngine::output_discard_all() {
    for (auto* channel : m_channels)
        channel->discard_all();
    m_guest.machine().uart().transmitter_ready();
    if (GuestNetwork* network = m_guest.network())
        network->ready();  // frames the NIC kept back may go now
}

uint64_t ActiveEngine::held_output_bytes() const {
    uint64_t held = 0;
    for (const auto* channel : m_channels)
        held += channel->held_bytes();
    return held;
}

size_t ActiveEngine::forward_input(std::span<const std::byte> bytes) {
    std::lock_guard lock(m_input_mutex);
    size_t taken = m_guest.machine().uart().push_input(bytes);
    if (taken && m_forwarding && m_input_session) {
        for (size_t at = 0; at < taken; at += proto::kMaxConsoleBytes) {
            size_t n = std::min(taken - at, proto::kMaxConsoleBytes);
            // Queued, never sent here: a stalled link must not hold the input lock (a paused
            // checkpoint takes it). A session that cannot queue is failing; it says so itself.
            (void)m_input_session->post(
                proto::ConsoleInput{m_input_epoch, std::string(reinterpret_cast<const char*>(bytes.data()) + at, n)});
        }
    }
    return taken;
}

void ActiveEngine::forward_frame(GuestNetwork& network, const net::VnetHeader& header, std::span<const std::byte> frame) {
    bool diverged = false;
    {
        // Under the input lock, as console input: a checkpoint's device state and the epoch the
        // frame is tagged with agree (the NIC's backlog is part of that state).
        std::lock_guard lock(m_input_mutex);
        const bool forwarding = m_forwarding && m_input_session;
        // To the secondary first, so that its guest's reply, which the primary's waits for in
        // the comparison, is under way as early as possible. post_now never waits on the link:
        // it writes the frame at once when the link is idle and has room.
        if (forwarding)
            diverged = !m_input_session->post_now(proto::NetInput{
                m_input_epoch, std::string(reinterpret_cast<const char*>(frame.data()), frame.size()), header.encode()});
        // A frame the NIC here drops (its receive backlog is full) the secondary's guest may
        // still get: the guests then run on different input, which a checkpoint puts right.
        if (!network.deliver(frame, header) && forwarding)
            diverged = true;
    }
    // A secondary that misses a frame, or gets one the guest here did not, runs on other input
    // from here: a checkpoint puts it back.
    if (diverged)
        force_checkpoint();
}

void ActiveEngine::forward_rng(uint64_t offset, std::span<const std::byte> bytes) {
    m_rng_taken = offset + bytes.size();
    std::shared_ptr<Session> session;
    {
        std::lock_guard lock(m_rng_mutex);
        session = m_rng_session;
    }
    if (session) {
        // Queued, never sent here (the device's doorbell thread or a vCPU's, under its lock).
        for (size_t at = 0; at < bytes.size(); at += proto::kMaxRngBytes) {
            size_t n = std::min(bytes.size() - at, proto::kMaxRngBytes);
            (void)session->post(proto::RngInput{offset + at, std::string(reinterpret_cast<const char*>(bytes.data()) + at, n)});
        }
    }
    if (m_rng_limited && m_rng_taken - m_rng_saved >= k_rng_epoch_limit / 2)
        force_checkpoint();  // before the guest runs out of its allowance
}

uint64_t ActiveEngine::rng_allowance() const {
    if (!m_rng_limited)
        return UINT64_MAX;
    uint64_t used = m_rng_taken - m_rng_saved;
    return used >= k_rng_epoch_limit ? 0 : k_rng_epoch_limit - used;
}

void ActiveEngine::rng_session(std::shared_ptr<Session> session) {
    auto* rng = m_guest.machine().linux_devices().rng;
    if (!rng || !colo())
        return;
    bool protecting = session != nullptr;
    {
        std::lock_guard lock(m_rng_mutex);
        m_rng_session = std::move(session);
    }
    m_rng_saved = m_rng_taken.load();
    m_rng_limited = protecting;
    if (!protecting)
        rng->entropy_available();  // requests waiting for the allowance go on
}

State ActiveEngine::state() const {
    std::lock_guard lock(m_mutex);
    return m_machine.state();
}

void ActiveEngine::observe_transitions(std::function<void(State, State)> observer) {
    std::lock_guard lock(m_mutex);
    m_machine.observe(std::move(observer));
}

bool ActiveEngine::move(State state, const std::string& why) { return m_machine.move(state, why); }

void ActiveEngine::changed(const std::string& why) {
    if (m_on_change)
        m_on_change(why);
}

void ActiveEngine::force_checkpoint() {
    {
        std::lock_guard lock(m_mutex);
        m_force = true;
    }
    m_cv.notify_all();
}

bool ActiveEngine::wait_until(Session& session, Clock::time_point when) {
    std::unique_lock lock(m_mutex);
    m_cv.wait_until(lock, when, [&] { return m_stop || m_force || session.failed(); });
    if (m_force)
        m_force_pending = true;  // COLO decides per wake-up whether a checkpoint is due
    m_force = false;
    return !m_stop && !session.failed();
}

void ActiveEngine::run() {
    auto backoff = std::chrono::microseconds(100'000);
    std::string last_failure;
    for (;;) {
        std::optional<proto::Link> link;
        {
            std::lock_guard lock(m_mutex);
            if (m_stop)
                break;
            if (m_probed) {
                link.emplace(std::move(*m_probed));
                m_probed.reset();
            }
        }
        if (!link) {
            proto::PeerState seen = proto::PeerState::SecondaryStandby;
            auto connected = connect(&seen);
            if (!connected) {
                // Log each kind of failure once, not every retry.
                if (connected.error().message() != last_failure) {
                    last_failure = connected.error().message();
                    bool active = connected.error().code() == base::Errc::Mismatch &&
                                  (seen == proto::PeerState::PrimaryActive || seen == proto::PeerState::SecondaryActive);
                    base::log(active ? Level::Error : Level::Warning, active ? Event::Error : Event::None,
                              fmt::format("cannot protect the guest: {}: {}; retrying", m_config.peer_address,
                                          last_failure),
                              {{"PEER", m_config.peer_address}, {"REASON", last_failure}});
                }
                std::unique_lock lock(m_mutex);
                m_cv.wait_for(lock, backoff, [&] { return m_stop; });
                backoff = std::min(backoff * 2, m_config.connect_retry);
                continue;
            }
            link.emplace(std::move(connected).value());
        }
        last_failure.clear();
        backoff = std::chrono::microseconds(100'000);
        auto result = run_session(std::move(*link));
        std::string why = result ? "the session ended" : result.error().message();
        {
            std::lock_guard lock(m_mutex);
            // A guest that stopped by itself is not protected again: the daemon stops (and tells
            // the secondary, whose closing of this session may be what ended it).
            if (m_stop || m_machine.state() == State::HandedOver || m_guest.machine().stopped())
                break;
            m_peer_state = "lost";
            move(State::Unprotected, why);
        }
        output_release_all();
        base::log(Level::Warning, Event::PeerLost, fmt::format("peer {} lost: {}", m_config.peer_address, why),
                  {{"PEER", m_config.peer_address}, {"REASON", why}, {"SEQ", std::to_string(m_committed.load())}});
        base::log(Level::Warning, Event::Unprotected,
                  fmt::format("the guest runs unprotected: {}; held output released; waiting for a secondary", why),
                  {{"PEER", m_config.peer_address}, {"REASON", why}});
        changed(fmt::format("unprotected: peer lost ({})", why));
    }
    {
        std::lock_guard lock(m_mutex);
        move(State::Stopped, "stop");
    }
    changed("stopped");
}

base::Result<Session::Disposition> ActiveEngine::on_message(proto::Message& message) {
    if (const auto* output = std::get_if<proto::ConsoleOutput>(&message)) {
        m_console->secondary(output->epoch, std::as_bytes(std::span(output->bytes.data(), output->bytes.size())));
        return Session::Disposition::Handled;
    }
    if (const auto* frame = std::get_if<proto::NetOutput>(&message)) {
        if (m_net && colo())
            m_net->secondary(frame->epoch, std::as_bytes(std::span(frame->frame.data(), frame->frame.size())));
        return Session::Disposition::Handled;
    }
    if (auto* hashes = std::get_if<proto::DiskHashes>(&message)) {
        if (!m_disk)
            return base::Error(base::Errc::Protocol, "DISK_HASHES for a guest without a disk");
        m_disk->on_hashes(std::move(*hashes));
        return Session::Disposition::Handled;
    }
    if (const auto* error = std::get_if<proto::ErrorMessage>(&message))
        return base::Error::make(base::Errc::Protocol, "the peer gave up: {}", error->reason);
    return Session::Disposition::Inbox;  // acks and replies, for the replication thread
}

base::Result<void> ActiveEngine::run_session(proto::Link link) {
    Session::Options options;
    options.heartbeat_interval = m_config.heartbeat_interval;
    options.heartbeat_timeout = m_config.heartbeat_timeout;
    options.committed_seq = [this] { return m_committed.load(); };
    // Never called under m_mutex (the engine ends sessions only outside it).
    options.on_failure = [this] {
        { std::lock_guard lock(m_mutex); }  // a waiter between its check and its wait sees the failure
        m_cv.notify_all();
    };
    auto started = Session::start(std::move(link), std::move(options));
    if (!started)
        return std::move(started).error();
    std::shared_ptr<Session> session = std::move(started).value();
    std::string peer = session->peer();
    bool stopping;
    {
        std::lock_guard lock(m_mutex);
        stopping = m_stop;
        if (!stopping)
            m_session = session;
    }
    if (stopping) {
        session->close();
        return base::Error(base::Errc::Stopped, "replication stopped");
    }
    {
        std::lock_guard lock(m_mutex);
        m_peer_state = "connected";
        move(State::Syncing, "a standby accepted the handshake");
    }
    {
        std::lock_guard input(m_input_mutex);
        m_input_session = session;
        m_forwarding = false;  // from the first complete checkpoint on
    }
    if (m_disk)
        m_disk->begin_session();  // blocks written from here on are sent again
    // The rng's bytes from now on, by their place in its stream: the secondary positions its
    // stream at each checkpoint it loads, so it needs every byte from the session's start.
    rng_session(session);
    base::log(Level::Notice, Event::PeerConnected, fmt::format("connected to the secondary at {}", peer),
              {{"PEER", peer}});
    session->start_receiver([this](proto::Message& message) { return on_message(message); });

    auto result = protect(*session);
    if (!result && result.error().code() == base::Errc::Stopped && m_guest.machine().stopped()) {
        // The guest stopped by itself: keep the link (and its heartbeats) up until the daemon
        // tells the peer why (guest_shutdown) or stops us, so the peer does not take over.
        std::unique_lock lock(m_mutex);
        m_cv.wait(lock, [&] { return m_stop || session->failed(); });
    }

    {
        std::lock_guard input(m_input_mutex);
        m_input_session.reset();
        m_forwarding = false;
    }
    if (m_disk)
        m_disk->end_session();  // the next session copies the disk again
    rng_session(nullptr);
    {
        std::lock_guard lock(m_mutex);
        m_session.reset();
        if (m_machine.state() != State::HandedOver) {
            m_hold.reset();  // never leave the guest paused without a peer
            m_handover_seq = 0;
        }
    }
    session->close();
    return result;
}

base::Result<void> ActiveEngine::protect(Session& session) {
    const std::string& peer = session.peer();
    changed(fmt::format("syncing to {}", peer));
    base::log(Level::Notice, Event::Syncing, fmt::format("live copy of the guest to {} started", peer), {{"PEER", peer}});
    TRY(sync(session));
    bool again = m_ever_protected;
    m_ever_protected = true;
    {
        std::lock_guard lock(m_mutex);
        move(State::Protected, "the standby applied the first complete checkpoint");
    }
    base::log(Level::Notice, again ? Event::Reprotected : Event::Protected,
              fmt::format("the guest is protected by {} (checkpoint {})", peer, m_committed.load()),
              {{"PEER", peer}, {"SEQ", std::to_string(m_committed.load())}});
    changed(fmt::format("protected by {}", peer));
    auto next = Clock::now() + m_config.checkpoint_interval;
    uint64_t mismatches_seen = m_checkpoints_mismatch.load();
    for (;;) {
        {
            // Held at a checkpoint for diagnostics: nothing changes until released.
            std::unique_lock lock(m_mutex);
            m_cv.wait(lock, [&] { return m_machine.state() != State::Held || m_stop || session.failed(); });
        }
        // COLO: wake often enough to notice a secondary that falls behind.
        auto wake = colo() ? std::min(next, Clock::now() + std::chrono::milliseconds(5)) : next;
        if (!wait_until(session, wake)) {
            if (auto failure = session.failure(); failure && failure->code() != base::Errc::Stopped)
                return *failure;
            return base::Error(base::Errc::Stopped, "replication stopped");
        }
        bool forced = false;  // asked for before the interval was due (not a COLO mismatch)
        if (colo()) {
            for (auto* channel : m_channels)
                channel->check_lag();
            std::lock_guard lock(m_mutex);
            bool asked = m_verdict || m_hold_requested || m_handover_requested || m_force_pending;
            m_verdict = false;
            m_force_pending = false;
            if (!asked && Clock::now() < next)
                continue;  // matching output flows: no checkpoint needed yet
            uint64_t mismatches = m_checkpoints_mismatch.load();
            forced = asked && mismatches == mismatches_seen;
            mismatches_seen = mismatches;
        } else {
            std::lock_guard lock(m_mutex);
            forced = std::exchange(m_force_pending, false);
        }
        auto started = Clock::now();
        uint64_t seq = m_next_seq++;
        if (colo()) {
            // The secondary's guest stops first, so its run and its dirty log end here too.
            session.post(proto::CheckpointRequest{seq});
            TRY(session.await<proto::CheckpointReply>(seq, Clock::now() + m_config.ack_timeout));
        }
        if (auto taken = checkpoint(session, seq, proto::StateKind::Complete); !taken) {
            bool link_fault = session.failed();
            if (!link_fault && !m_guest.machine().stopped())
                base::log(Level::Error, Event::CheckpointFailed,
                          fmt::format("checkpoint {} failed: {}", seq, taken.error().message()),
                          {{"SEQ", std::to_string(seq)}, {"REASON", taken.error().message()}});
            return std::move(taken).error();
        }
        if (forced)
            ++m_checkpoints_forced;
        next = started + m_config.checkpoint_interval;
        bool handing_over;
        {
            std::lock_guard lock(m_mutex);
            handing_over = m_machine.state() == State::HandingOver && m_handover_seq == seq;
        }
        if (handing_over) {
            session.post(proto::Handover{seq});
            // The peer takes over and closes the link; then the guest is its.
            auto failure = session.wait_failure(Clock::now() + std::chrono::seconds(30));
            if (!failure || failure->code() != base::Errc::Eof)
                return base::Error::make(base::Errc::Failed, "the peer did not confirm the handover of checkpoint {}",
                                         seq);
            {
                std::lock_guard lock(m_mutex);
                m_handed_over = move(State::HandedOver, "the standby took the final checkpoint and runs the guest");
            }
            m_cv.notify_all();
            return base::Error(base::Errc::Stopped, "handed over");
        }
    }
}

base::Result<void> ActiveEngine::sync(Session& session) {
    GuestMemory& memory = m_guest.machine().memory();
    // Start tracking from now: the full copy below covers everything written before.
    TRY(m_pipeline.restart_dirty_log());
    auto started = Clock::now();
    // The disk first: its blocks that differ, then those written meanwhile; the first
    // checkpoint carries the rest.
    if (m_disk)
        TRY(m_disk->copy(session, m_config.ack_timeout));
    std::vector<uint64_t> pages(memory.page_count());
    std::iota(pages.begin(), pages.end(), uint64_t{0});
    TRY(m_pipeline.precopy(session, pages, m_next_seq));
    fault_point("primary.precopy");
    uint64_t previous = memory.page_count();
    int rounds = 1;
    for (; rounds < k_precopy_max_rounds; ++rounds) {
        m_pipeline.clear_pending();
        uint64_t dirty = TRY(m_pipeline.harvest());
        if (dirty <= k_precopy_done_pages || dirty * 5 > previous * 4)
            break;  // small enough for one short stop, or no longer converging: the final
                    // checkpoint sends these pages (still pending) with what follows
        auto list = m_pipeline.pending_pages();
        TRY(m_pipeline.precopy(session, list, m_next_seq));
        previous = dirty;
    }
    if (rounds == k_precopy_max_rounds)
        m_pipeline.clear_pending();  // the last round sent them
    // Room for all of RAM, up to 256 MiB, in the capture buffer before the first stop, so that a
    // sudden rise of the dirty rate does not pay for growing it inside a pause (growing by tens
    // of MiB there costs tens of ms in page faults). Bigger dirty sets grow it between
    // checkpoints (reserve_ahead).
    m_pipeline.reserve(std::min<uint64_t>(memory.size(), 256ull << 20));
    // The one short stop: what is still dirty, plus all device state, as a complete checkpoint.
    uint64_t seq = m_next_seq++;
    TRY(checkpoint(session, seq, proto::StateKind::Complete));
    ++m_checkpoints_forced;
    TRY(session.await<proto::CheckpointReady>(seq, Clock::now() + m_config.ack_timeout));
    base::log(Level::Notice, Event::Synced,
              fmt::format("initial copy complete: {} pages in {} pre-copy rounds, {:.0f} ms, final stop {} us",
                          memory.page_count(), rounds,
                          std::chrono::duration<double, std::milli>(Clock::now() - started).count(),
                          m_pipeline.pauses().last),
              {{"SEQ", std::to_string(seq)}, {"PAUSE_US", std::to_string(m_pipeline.pauses().last)}});
    return base::ok();
}

base::Result<void> ActiveEngine::checkpoint(Session& session, uint64_t seq, proto::StateKind kind) {
    CheckpointPipeline::Hooks hooks;
    hooks.lock_input = [this] { return std::unique_lock(m_input_mutex); };
    hooks.devices_saved = [this](uint64_t at) {
        // Under the input lock: the UART's saved receive buffer and the epoch forwarded input is
        // tagged with agree; no input slips in between.
        if (colo()) {
            m_input_epoch = at;
            m_forwarding = m_input_session != nullptr;
            m_rng_saved = m_rng_taken.load();  // the devices are quiesced: no byte is being taken
        }
    };
    hooks.paused = [this](uint64_t at, Machine::PauseGuard& paused) {
        // Output so far was produced by this state or an older one: it belongs to `at`.
        output_captured(at);
        std::lock_guard lock(m_mutex);
        if (m_handover_requested) {
            // The guest stops here for good: this checkpoint is its last state on this side.
            m_handover_requested = false;
            if (move(State::HandingOver, "the final checkpoint")) {
                m_handover_seq = at;
                m_hold.emplace(std::move(paused));
            }
        } else if (m_hold_requested) {
            m_hold_requested = false;
            if (move(State::Held, "coloctl digest")) {
                m_hold_seq = at;
                m_hold.emplace(std::move(paused));
            }
        }
    };
    if (m_disk)
        hooks.disk_writes = [this](uint64_t at) { return m_disk->capture(at); };
    hooks.committed = [this](uint64_t at) {
        output_committed(at);
        m_committed = at;
        { std::lock_guard lock(m_mutex); }
        m_cv.notify_all();  // checkpoint_now() and hold waiters
    };
    return m_pipeline.run(session, seq, kind, hooks);
}

base::Result<std::pair<uint64_t, uint64_t>> ActiveEngine::checkpoint_and_hold(std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_mutex);
    if (m_machine.state() == State::Held)
        return base::Error(base::Errc::Invalid, "the guest is already held at a checkpoint");
    if (m_machine.state() != State::Protected)
        return base::Error(base::Errc::Invalid, "the guest is not protected: no checkpoint to take");
    // The next capture takes the hold (checkpoint()); wait until that one has committed.
    m_hold_requested = true;
    m_force = true;
    m_cv.notify_all();
    auto held = [&] { return m_machine.state() == State::Held && m_committed.load() >= m_hold_seq; };
    m_cv.wait_for(lock, timeout, [&] {
        return held() || m_stop || (m_machine.state() != State::Protected && m_machine.state() != State::Held);
    });
    m_hold_requested = false;
    if (held()) {
        // The digest is taken here, after the commit, not in the checkpoint's pause: hashing all
        // of RAM takes seconds on a big or slow guest, and the pause is what the guest and the
        // peer's timeouts see. The guest stays paused by the hold meanwhile; a peer lost during
        // it ends the hold (the guest runs on), which the check below reports.
        uint64_t seq = m_hold_seq;
        lock.unlock();
        uint64_t digest = m_guest.machine().memory().digest();
        lock.lock();
        if (m_machine.state() == State::Held && m_hold_seq == seq)
            return std::make_pair(seq, digest);
        return base::Error(base::Errc::Failed, "the hold ended while the memory digest was taken (peer lost?)");
    }
    if (m_machine.state() == State::Held) {
        m_hold.reset();
        move(State::Protected, "the checkpoint to hold at did not commit in time");
        m_cv.notify_all();
    }
    return base::Error(base::Errc::Failed, "the checkpoint to hold at did not commit (timeout or peer lost)");
}

base::Result<uint64_t> ActiveEngine::handover(std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_mutex);
    if (m_machine.state() == State::Held)
        return base::Error(base::Errc::Invalid, "the guest is held at a checkpoint: 'coloctl resume' first");
    if (m_machine.state() != State::Protected)
        return base::Error(base::Errc::Invalid, "the guest is not protected: there is no peer to hand it to");
    m_handover_requested = true;
    m_force = true;
    m_cv.notify_all();
    auto going = [&] { return m_machine.state() == State::Protected || m_machine.state() == State::HandingOver; };
    bool ended = m_cv.wait_for(lock, timeout, [&] {
        return m_machine.state() == State::HandedOver || m_stop || !going();
    });
    m_handover_requested = false;
    if (m_machine.state() == State::HandedOver)
        return m_handover_seq;
    return base::Error(ended ? base::Errc::Failed : base::Errc::Timeout,
                       ended ? "the handover failed: the guest runs on here (see the log)"
                             : "the handover did not complete in time");
}

bool ActiveEngine::handed_over() const {
    std::lock_guard lock(m_mutex);
    return m_handed_over;
}

void ActiveEngine::release_hold() {
    {
        std::lock_guard lock(m_mutex);
        if (m_machine.state() != State::Held)
            return;
        m_hold.reset();
        move(State::Protected, "coloctl resume (release_hold)");
    }
    m_cv.notify_all();
}

base::Result<uint64_t> ActiveEngine::checkpoint_now(std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_mutex);
    if (m_machine.state() != State::Protected)
        return base::Error(base::Errc::Invalid, "the guest is not protected: no checkpoint to take");
    // The first checkpoint captured from now on: a transfer already in flight holds an older
    // state than the caller asked for.
    uint64_t target = m_next_seq.load();
    m_force = true;
    m_cv.notify_all();
    bool done = m_cv.wait_for(lock, timeout, [&] {
        return m_committed.load() >= target || m_stop || m_machine.state() != State::Protected;
    });
    if (m_committed.load() >= target)
        return m_committed.load();
    return base::Error(done ? base::Errc::Failed : base::Errc::Timeout,
                       done ? "protection was lost before the checkpoint committed" : "the checkpoint did not commit in time");
}

void ActiveEngine::guest_shutdown(int exit_code) {
    std::shared_ptr<Session> session;
    {
        std::lock_guard lock(m_mutex);
        session = m_session;
    }
    // Queued and flushed without any lock held: the link may be slow.
    if (session && session->post(proto::GuestShutdown{exit_code})) {
        if (auto sent = session->flush(proto::deadline_after(std::chrono::seconds(2))); !sent)
            base::logf(Level::Warning, Event::None, "could not tell the secondary about the shutdown: {}",
                       sent.error().message());
    }
    base::log(Level::Notice, Event::GuestShutdown,
              fmt::format("the guest powered off with code {}; the secondary stops too", exit_code),
              {{"REASON", fmt::format("exit code {}", exit_code)}});
    stop(HeldOutput::Release);
}

void ActiveEngine::fill_status(Status& status) const {
    if (m_disk)
        status.disk = m_disk->figures().status();
    // Only the state machine's fields are read under the engine's lock, which a checkpoint's
    // pause takes too; the figures have atomics or locks of their own (sorting the pause window
    // under the engine's lock would lengthen a pause that waits for it).
    State state;
    {
        std::lock_guard lock(m_mutex);
        state = m_machine.state();
        status.peer_state = m_peer_state;
    }
    switch (state) {
    case State::Unprotected:
        status.state = m_local_state == proto::PeerState::SecondaryActive ? "active" : "unprotected";
        break;
    case State::Syncing: status.state = "syncing"; break;
    case State::Protected:
    case State::Held:
    case State::HandingOver: status.state = "protected"; break;
    case State::HandedOver:
    case State::Stopped: status.state = "stopped"; break;
    }
    switch (state) {
    case State::Syncing: {
        // The first pass carries every page; later rounds only what the guest dirtied meanwhile.
        double copied = static_cast<double>(m_pipeline.precopy_pages()) /
                        static_cast<double>(std::max<uint64_t>(1, m_guest.machine().memory().page_count()));
        status.sync_progress = std::min(copied, 0.999);
        break;
    }
    case State::Protected:
    case State::Held:
    case State::HandingOver: status.sync_progress = 1; break;
    case State::Unprotected:
    case State::HandedOver:
    case State::Stopped: status.sync_progress = 0; break;
    }
    status.seq = m_committed.load();
    status.checkpoints = m_pipeline.checkpoints();
    status.checkpoints_forced = m_checkpoints_forced.load();
    status.pause_histogram = m_pipeline.pause_histogram();
    auto pauses = m_pipeline.pauses();
    status.pause_us.last = pauses.last;
    status.pause_us.p50 = pauses.p50;
    status.pause_us.p99 = pauses.p99;
    status.pause_us.max = pauses.max;
    status.dirty_pages.last = m_pipeline.dirty_last();
    status.dirty_pages.total = m_pipeline.dirty_total();
    status.bytes_sent = m_pipeline.bytes_sent();
    status.held_output_bytes = held_output_bytes();
    if (colo()) {
        status.checkpoints_mismatch = m_checkpoints_mismatch.load();
        status.checkpoints_interval = status.checkpoints - status.checkpoints_mismatch;
        auto latency = m_console->compare_latency();
        status.compare_us_p50 = latency.p50;
        status.compare_us_p99 = latency.p99;
        if (m_net) {
            auto frames = m_net->compare_latency();
            status.network.compare_us_p50 = frames.p50;
            status.network.compare_us_p99 = frames.p99;
        }
    }
    status.peer = m_config.peer_address;
}

}  // namespace colod::core
