// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/active_engine.h"

#include <algorithm>
#include <numeric>

#include "base/events.h"
#include "base/log.h"
#include "core/fault.h"
#include "core/guest_runtime.h"
#include "core/state_sections.h"
#include "core/uart.h"
#include "proto/errors.h"
#include "proto/handshake.h"

namespace colod::core {

using Clock = std::chrono::steady_clock;
using base::Event;
using base::Level;

namespace {

// Pre-copy sends all of RAM in transfers of this many pages, so no single transfer needs a huge
// gather list; then re-sends dirty pages until few are left (or they stop shrinking).
// Pre-copy pages are copied out of the running guest a chunk at a time before they are
// checksummed and sent: a page the guest writes while it is on its way would otherwise go out
// different from its CRC (and torn). 8 MiB per chunk keeps the copy buffer small; the copy costs
// far less than the transfer.
constexpr uint64_t k_precopy_chunk_pages = 2048;
constexpr uint64_t k_precopy_done_pages = 2048;
constexpr int k_precopy_max_rounds = 8;

// A stuck but heartbeating peer must not stall the guest's output for ever.
constexpr std::chrono::seconds k_ack_timeout{30};
// A pause longer than this is reported (rate-limited) as checkpoint-slow.
constexpr uint64_t k_slow_pause_us = 20'000;

std::string us_text(std::chrono::microseconds us) { return fmt::format("{}ms", us.count() / 1000.0); }

}  // namespace

struct ActiveEngine::Session {
    explicit Session(proto::Link l) : link(std::move(l)) {}
    proto::Link link;
    std::unique_ptr<proto::HeartbeatSender> heartbeats;
    std::thread receiver;
    std::deque<proto::Message> inbox;    // guarded by ActiveEngine::m_mutex
    std::optional<base::Error> failure;  // guarded by ActiveEngine::m_mutex
};

ActiveEngine::ActiveEngine(GuestRuntime& guest, proto::Hello identity, ReplicationConfig config,
                           proto::PeerState local_state, std::function<void(const std::string&)> on_change)
    : m_guest(guest),
      m_identity(std::move(identity)),
      m_config(std::move(config)),
      m_local_state(local_state),
      m_on_change(std::move(on_change)),
      m_output([this](std::span<const std::byte> bytes) { m_guest.release_output(bytes); },
               m_config.max_held_output, [this] { force_checkpoint(); }),
      // The secondary may lag behind by at most a checkpoint interval before a checkpoint
      // settles the comparison.
      m_comparator([this](std::span<const std::byte> bytes) { m_guest.release_output(bytes); },
                   m_config.checkpoint_interval, m_config.max_held_output,
                   [this](OutputComparator::Verdict verdict) {
                       {
                           std::lock_guard lock(m_mutex);
                           m_verdict = true;
                           if (verdict == OutputComparator::Verdict::Mismatch)
                               ++m_checkpoints_mismatch;
                       }
                       force_checkpoint();
                   }),
      m_dirty(guest.machine().memory().page_count()) {}

ActiveEngine::~ActiveEngine() { stop(); }

base::Result<proto::Link> ActiveEngine::connect(proto::PeerState* peer_state) {
    auto link = proto::Link::connect(m_config.peer_address, proto::deadline_after(k_connect_timeout));
    if (!link)
        return std::move(link).error();
    proto::Hello hello = m_identity;
    hello.state = m_local_state;
    hello.frame_auth = m_config.frame_auth;
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
        m_guest.set_output_sink([this](std::span<const std::byte> bytes) { m_comparator.primary(bytes); });
        m_guest.set_input_tap([this](std::span<const std::byte> bytes) { return forward_input(bytes); });
    } else {
        m_guest.set_output_sink([this](std::span<const std::byte> bytes) { m_output.append(bytes); });
    }
    // max-held-output forces a checkpoint; twice that much held (the checkpoint is slow to
    // commit) and the UART shows its transmitter busy until output is released: the guest
    // slows down instead of the held output growing without bound.
    m_guest.machine().uart().set_transmit_ready([this] {
        uint64_t held = colo() ? m_comparator.held_bytes() : m_output.held_bytes();
        return held < 2 * m_config.max_held_output;
    });
    std::lock_guard lock(m_mutex);
    if (!m_thread.joinable())
        m_thread = std::thread([this] { run(); });
}

void ActiveEngine::stop(HeldOutput held) {
    {
        std::lock_guard lock(m_mutex);
        m_stop = true;
        if (m_session)
            m_session->link.shutdown();
        m_probed.reset();
        m_hold.reset();
    }
    m_cv.notify_all();
    if (m_thread.joinable())
        m_thread.join();
    m_guest.set_input_tap(nullptr);
    m_guest.machine().uart().set_transmit_ready(nullptr);
    if (held == HeldOutput::Release) {
        output_release_all();
        m_guest.set_output_sink(nullptr);  // straight to the console from now on
    } else {
        // Whatever the guest still says was never checkpointed: it must not reach anyone.
        m_guest.set_output_sink([](std::span<const std::byte>) {});
        output_discard_all();
    }
}

void ActiveEngine::output_captured(uint64_t seq) {
    if (colo()) {
        // The first complete checkpoint of a session starts the comparison.
        m_comparator.start(seq);
        m_comparator.captured(seq);
    } else {
        m_output.hold();
        m_output.seal(seq);
    }
}

void ActiveEngine::output_committed(uint64_t seq) {
    if (colo())
        m_comparator.committed(seq);
    else
        m_output.release(seq);
}

void ActiveEngine::output_release_all() {
    if (colo())
        m_comparator.release_all();
    else
        m_output.release_all();
}

void ActiveEngine::output_discard_all() {
    m_output.discard_all();
    // The comparator only ever holds output in COLO mode; after stop nothing reaches it.
}

size_t ActiveEngine::forward_input(std::span<const std::byte> bytes) {
    std::lock_guard lock(m_input_mutex);
    size_t taken = m_guest.machine().uart().push_input(bytes);
    if (taken && m_forwarding && m_forward_link) {
        for (size_t at = 0; at < taken; at += proto::kMaxConsoleBytes) {
            size_t n = std::min(taken - at, proto::kMaxConsoleBytes);
            proto::ConsoleInput input{m_input_epoch, std::string(reinterpret_cast<const char*>(bytes.data()) + at, n)};
            // A failing send means the session is failing: the receiver thread says so.
            (void)m_forward_link->send(input, proto::deadline_after(std::chrono::seconds(1)));
        }
    }
    return taken;
}

ActiveEngine::State ActiveEngine::state() const {
    std::lock_guard lock(m_mutex);
    return m_state;
}

void ActiveEngine::set_state(State state, const std::string& why) {
    {
        std::lock_guard lock(m_mutex);
        m_state = state;
    }
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

bool ActiveEngine::wait_until(Clock::time_point when) {
    std::unique_lock lock(m_mutex);
    m_cv.wait_until(lock, when, [&] { return m_stop || m_force || (m_session && m_session->failure); });
    if (m_force)
        m_force_pending = true;  // COLO decides per wake-up whether a checkpoint is due
    m_force = false;
    return !m_stop && !(m_session && m_session->failure);
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
        {
            std::lock_guard lock(m_mutex);
            if (m_stop || m_handed_over)
                break;
            m_peer_state = "lost";
        }
        std::string why = result ? "the session ended" : result.error().message();
        output_release_all();
        base::log(Level::Warning, Event::PeerLost, fmt::format("peer {} lost: {}", m_config.peer_address, why),
                  {{"PEER", m_config.peer_address}, {"REASON", why}, {"SEQ", std::to_string(m_committed.load())}});
        base::log(Level::Warning, Event::Unprotected,
                  fmt::format("the guest runs unprotected: {}; held output released; waiting for a secondary", why),
                  {{"PEER", m_config.peer_address}, {"REASON", why}});
        set_state(State::Unprotected, fmt::format("unprotected: peer lost ({})", why));
    }
    set_state(State::Stopped, "stopped");
}

base::Result<void> ActiveEngine::run_session(proto::Link link) {
    Session session(std::move(link));
    std::string peer = session.link.peer_address();
    auto heartbeats = proto::HeartbeatSender::start(session.link, m_config.heartbeat_interval,
                                                    [this] { return m_committed.load(); });
    if (!heartbeats)
        return std::move(heartbeats).error();
    session.heartbeats = std::move(heartbeats).value();
    {
        std::lock_guard lock(m_mutex);
        m_session = &session;
        m_peer_state = "connected";
    }
    {
        std::lock_guard input(m_input_mutex);
        m_forward_link = &session.link;
        m_forwarding = false;  // from the first complete checkpoint on
    }
    base::log(Level::Notice, Event::PeerConnected, fmt::format("connected to the secondary at {}", peer),
              {{"PEER", peer}});
    session.receiver = std::thread([this, &session] { receive_loop(session); });

    auto result = [&]() -> base::Result<void> {
        set_state(State::Syncing, fmt::format("syncing to {}", peer));
        base::log(Level::Notice, Event::Syncing, fmt::format("live copy of the guest to {} started", peer),
                  {{"PEER", peer}});
        TRY(sync(session));
        bool again = m_ever_protected;
        m_ever_protected = true;
        base::log(Level::Notice, again ? Event::Reprotected : Event::Protected,
                  fmt::format("the guest is protected by {} (checkpoint {})", peer, m_committed.load()),
                  {{"PEER", peer}, {"SEQ", std::to_string(m_committed.load())}});
        set_state(State::Protected, fmt::format("protected by {}", peer));
        auto next = Clock::now() + m_config.checkpoint_interval;
        for (;;) {
            {
                // Held at a checkpoint for diagnostics: nothing changes until released.
                std::unique_lock lock(m_mutex);
                m_cv.wait(lock, [&] { return !m_hold || m_stop || session.failure.has_value(); });
            }
            // COLO: wake often enough to notice a secondary that falls behind.
            auto wake = colo() ? std::min(next, Clock::now() + std::chrono::milliseconds(5)) : next;
            if (!wait_until(wake)) {
                std::lock_guard lock(m_mutex);
                if (session.failure)
                    return *session.failure;
                return base::Error(base::Errc::Stopped, "replication stopped");
            }
            if (colo()) {
                m_comparator.check_lag();
                std::lock_guard lock(m_mutex);
                bool asked = m_verdict || m_hold_requested || m_handover_requested || m_force_pending;
                m_verdict = false;
                m_force_pending = false;
                if (!asked && Clock::now() < next)
                    continue;  // matching output flows: no checkpoint needed yet
            }
            auto started = Clock::now();
            uint64_t seq = m_next_seq++;
            if (colo()) {
                // The secondary's guest stops first, so its run and its dirty log end here too.
                TRY(session.link.send(proto::CheckpointRequest{seq}, proto::deadline_after(std::chrono::seconds(2))));
                TRY(await<proto::CheckpointReply>(session, seq, Clock::now() + k_ack_timeout));
            }
            if (auto taken = checkpoint(session, seq, proto::StateKind::Complete); !taken) {
                bool link_fault = [&] {
                    std::lock_guard lock(m_mutex);
                    return session.failure.has_value() || m_stop;
                }();
                if (!link_fault && !m_guest.machine().stopped())
                    base::log(Level::Error, Event::CheckpointFailed,
                              fmt::format("checkpoint {} failed: {}", seq, taken.error().message()),
                              {{"SEQ", std::to_string(seq)}, {"REASON", taken.error().message()}});
                return std::move(taken).error();
            }
            next = started + m_config.checkpoint_interval;
            bool handing_over;
            {
                std::lock_guard lock(m_mutex);
                handing_over = m_handover_seq == seq;
            }
            if (handing_over) {
                TRY(session.link.send(proto::Handover{seq}, proto::deadline_after(std::chrono::seconds(2))));
                // The peer takes over and closes the link; then the guest is its.
                std::unique_lock lock(m_mutex);
                m_cv.wait_for(lock, std::chrono::seconds(30), [&] { return m_stop || session.failure.has_value(); });
                if (!session.failure || session.failure->code() != base::Errc::Eof)
                    return base::Error::make(base::Errc::Failed, "the peer did not confirm the handover of checkpoint {}",
                                             seq);
                m_handed_over = true;
                m_cv.notify_all();
                return base::Error(base::Errc::Stopped, "handed over");
            }
        }
    }();
    if (!result && result.error().code() == base::Errc::Stopped && m_guest.machine().stopped()) {
        // The guest stopped by itself: keep the link (and its heartbeats) up until the daemon
        // tells the peer why (guest_shutdown) or stops us, so the peer does not take over.
        std::unique_lock lock(m_mutex);
        m_cv.wait(lock, [&] { return m_stop || session.failure.has_value(); });
    }

    {
        std::lock_guard input(m_input_mutex);
        m_forward_link = nullptr;
        m_forwarding = false;
    }
    {
        std::lock_guard lock(m_mutex);
        m_session = nullptr;
        if (!m_handed_over) {
            m_hold.reset();  // never leave the guest paused without a peer
            m_handover_seq = 0;
        }
    }
    session.link.shutdown();
    session.heartbeats.reset();
    if (session.receiver.joinable())
        session.receiver.join();
    return result;
}

void ActiveEngine::receive_loop(Session& session) {
    auto fail = [&](base::Error error) {
        {
            std::lock_guard lock(m_mutex);
            if (!session.failure)
                session.failure = std::move(error);
        }
        session.link.shutdown();  // also aborts a send in progress
        m_cv.notify_all();
    };
    proto::Frame frame;
    for (;;) {
        auto received = session.link.receive_into_idle(frame, m_config.heartbeat_timeout);
        if (!received) {
            const auto& error = received.error();
            if (error.code() == base::Errc::Timeout)
                fail(base::Error::make(base::Errc::Timeout, "heartbeat timeout: nothing from the peer for {}",
                                       us_text(m_config.heartbeat_timeout)));
            else if (error.code() == base::Errc::Eof)
                fail(base::Error(base::Errc::Eof, "the peer closed the connection"));
            else
                fail(error);
            return;
        }
        auto message = frame.message();
        if (!message) {
            fail(std::move(message).error());
            return;
        }
        if (std::holds_alternative<proto::Heartbeat>(*message))
            continue;
        if (const auto* output = std::get_if<proto::ConsoleOutput>(&*message)) {
            m_comparator.secondary(output->epoch, output->bytes);
            continue;
        }
        if (const auto* error = std::get_if<proto::ErrorMessage>(&*message)) {
            fail(base::Error::make(base::Errc::Protocol, "the peer gave up: {}", error->reason));
            return;
        }
        {
            std::lock_guard lock(m_mutex);
            session.inbox.push_back(std::move(*message));
        }
        m_cv.notify_all();
    }
}

template <typename T>
base::Result<void> ActiveEngine::await(Session& session, uint64_t seq, Clock::time_point deadline) {
    std::unique_lock lock(m_mutex);
    for (;;) {
        auto it = std::find_if(session.inbox.begin(), session.inbox.end(), [&](const proto::Message& m) {
            const T* typed = std::get_if<T>(&m);
            return typed && typed->seq == seq;
        });
        if (it != session.inbox.end()) {
            session.inbox.erase(it);
            return base::ok();
        }
        if (session.failure)
            return *session.failure;
        if (m_stop)
            return base::Error(base::Errc::Stopped, "replication stopped");
        if (m_cv.wait_until(lock, deadline) == std::cv_status::timeout && Clock::now() >= deadline)
            return base::Error::make(base::Errc::Timeout, "no {} for checkpoint {} within {} s",
                                     proto::message_type_name(T::type), seq,
                                     std::chrono::duration_cast<std::chrono::seconds>(k_ack_timeout).count());
    }
}

base::Result<void> ActiveEngine::send_live_pages(Session& session, std::span<const uint64_t> all_pages) {
    GuestMemory& memory = m_guest.machine().memory();
    for (size_t first = 0; first < all_pages.size(); first += k_precopy_chunk_pages) {
        auto pages = all_pages.subspan(first, std::min<size_t>(k_precopy_chunk_pages, all_pages.size() - first));
        if (!m_precopy_copy.ensure(pages.size() * k_page_size))
            return base::Error(base::Errc::System, "no memory for the pre-copy buffer");
        for (size_t i = 0; i < pages.size(); ++i)
            std::memcpy(m_precopy_copy.data() + i * k_page_size, memory.page(pages[i]), k_page_size);
        proto::StateInput input;
        input.seq = m_next_seq++;
        input.kind = proto::StateKind::Precopy;
        input.pages = pages;
        input.page_bytes = [this, pages](uint64_t page) {
            size_t at = static_cast<size_t>(std::lower_bound(pages.begin(), pages.end(), page) - pages.begin());
            return std::span<const std::byte>(m_precopy_copy.data() + at * k_page_size, k_page_size);
        };
        proto::StateEncoder encoder(proto::EncoderOptions{k_checkpoint_frame_payload, proto::ZeroScan::On});
        auto encoded = TRY(encoder.encode(input));
        TRY(session.link.send_state(encoded, proto::deadline_after(std::chrono::seconds(60))));
        m_bytes_sent += encoded.size().bytes;
    }
    return base::ok();
}

base::Result<void> ActiveEngine::sync(Session& session) {
    Machine& machine = m_guest.machine();
    GuestMemory& memory = machine.memory();
    // Start tracking from now: the full copy below covers everything written before.
    m_dirty.clear();
    TRY(memory.harvest_dirty(machine.vm(), m_dirty));
    auto started = Clock::now();
    std::vector<uint64_t> pages(memory.page_count());
    std::iota(pages.begin(), pages.end(), uint64_t{0});
    TRY(send_live_pages(session, pages));
    fault_point("primary.precopy");
    uint64_t previous = memory.page_count();
    int rounds = 1;
    for (; rounds < k_precopy_max_rounds; ++rounds) {
        m_dirty.clear();
        TRY(memory.harvest_dirty(machine.vm(), m_dirty));
        uint64_t dirty = m_dirty.count();
        if (dirty <= k_precopy_done_pages || dirty * 5 > previous * 4)
            break;  // small enough for one short stop, or no longer converging: the final
                    // checkpoint sends these pages (m_dirty keeps them) with what follows
        auto list = m_dirty.to_list();
        TRY(send_live_pages(session, list));
        previous = dirty;
    }
    if (rounds == k_precopy_max_rounds)
        m_dirty.clear();  // the last round sent them
    // Room for all of RAM, up to 256 MiB, in the capture buffer before the first stop, so that a
    // sudden rise of the dirty rate does not pay for growing it inside a pause (growing by tens
    // of MiB there costs tens of ms in page faults). Bigger dirty sets grow it between
    // checkpoints (reserve_ahead).
    m_capture.reserve(std::min<uint64_t>(memory.size(), 256ull << 20));
    // The one short stop: what is still dirty, plus all device state, as a complete checkpoint.
    uint64_t seq = m_next_seq++;
    TRY(checkpoint(session, seq, proto::StateKind::Complete));
    TRY(await<proto::CheckpointReady>(session, seq, Clock::now() + k_ack_timeout));
    base::log(Level::Notice, Event::Synced,
              fmt::format("initial copy complete: {} pages in {} pre-copy rounds, {:.0f} ms, final stop {} us",
                          memory.page_count(), rounds,
                          std::chrono::duration<double, std::milli>(Clock::now() - started).count(),
                          m_pauses.summary().last),
              {{"SEQ", std::to_string(seq)}, {"PAUSE_US", std::to_string(m_pauses.summary().last)}});
    return base::ok();
}

base::Result<void> ActiveEngine::checkpoint(Session& session, uint64_t seq, proto::StateKind kind) {
    Machine& machine = m_guest.machine();
    GuestMemory& memory = machine.memory();
    MachineState state;
    uint64_t pause_us = 0;
    {
        auto started = Clock::now();
        auto paused = machine.pause();
        if (!paused.paused())
            return base::Error(base::Errc::Stopped, "the guest has stopped");
        auto stopped = Clock::now();
        // m_dirty may already hold pages a pre-copy round harvested but did not send: add to
        // them, capture everything, and only then start afresh.
        TRY(memory.harvest_dirty(machine.vm(), m_dirty));
        auto harvested = Clock::now();
        m_capture.capture(memory, m_dirty);
        m_dirty.clear();
        auto copied = Clock::now();
        // The UART's saved receive buffer and the epoch forwarded input is tagged with must
        // agree: no input slips in between.
        std::unique_lock input(m_input_mutex);
        state = TRY(machine.save_state());
        if (colo()) {
            m_input_epoch = seq;
            m_forwarding = m_forward_link != nullptr;
        }
        input.unlock();
        fault_point("primary.paused");
        auto us = [](Clock::duration d) { return std::chrono::duration_cast<std::chrono::microseconds>(d).count(); };
        m_pause_breakdown = fmt::format("stop {} us, harvest {} us, copy {} us, device state {} us", us(stopped - started),
                                        us(harvested - stopped), us(copied - harvested), us(Clock::now() - copied));
        // Output so far was produced by this state or an older one: it belongs to `seq`.
        output_captured(seq);
        pause_us = static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started).count());
        std::lock_guard lock(m_mutex);
        if (m_handover_requested) {
            // The guest stops here for good: this checkpoint is its last state on this side.
            m_handover_requested = false;
            m_handover_seq = seq;
            m_hold.emplace(std::move(paused));
        } else if (m_hold_requested) {
            m_hold_requested = false;
            m_hold_seq = seq;
            m_hold_digest = memory.digest();
            m_hold.emplace(std::move(paused));
        }
    }  // the guest runs again (unless held): the transfer overlaps its execution

    EncodedSections sections(state);
    proto::StateInput input;
    input.seq = seq;
    input.kind = kind;
    input.pages = m_capture.pages();
    input.page_bytes = [this](uint64_t page) { return m_capture.bytes_of(page); };
    input.sections = sections.inputs();
    proto::StateEncoder encoder(proto::EncoderOptions{k_checkpoint_frame_payload, proto::ZeroScan::On});
    auto encoded = TRY(encoder.encode(input));
    auto sent_at = Clock::now();
    fault_point("primary.before-send");
    TRY(session.link.send_state(encoded, proto::deadline_after(std::chrono::seconds(60))));
    m_bytes_sent += encoded.size().bytes;
    fault_point("primary.sent");
    TRY(await<proto::VmstateReceived>(session, seq, Clock::now() + k_ack_timeout));
    fault_point("primary.received");
    TRY(await<proto::VmstateLoaded>(session, seq, Clock::now() + k_ack_timeout));
    fault_point("primary.loaded");
    output_committed(seq);
    fault_point("primary.released");
    m_capture.reserve_ahead(m_guest.machine().memory().size());  // the transfer no longer needs the buffer: grow it now if needed

    uint64_t pages = m_capture.size();
    m_committed = seq;
    ++m_checkpoints;
    m_dirty_last = pages;
    m_dirty_total += pages;
    m_pauses.add(pause_us);
    m_cv.notify_all();  // checkpoint_now() waiters
    auto round_trip = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - sent_at);
    base::log(Level::Debug, Event::None,
              fmt::format("checkpoint {}: {} pages, pause {} us ({}), transfer and apply {} us", seq, pages, pause_us,
                          m_pause_breakdown, round_trip.count()),
              {{"SEQ", std::to_string(seq)}, {"PAUSE_US", std::to_string(pause_us)}});
    if (pause_us > k_slow_pause_us || round_trip > m_config.checkpoint_interval * 2) {
        auto now = Clock::now();
        if (now - m_last_slow_log > std::chrono::seconds(10)) {
            m_last_slow_log = now;
            base::log(Level::Warning, Event::CheckpointSlow,
                      fmt::format("checkpoint {} was slow: pause {} us ({}), {} dirty pages, transfer and apply {} ms",
                                  seq, pause_us, m_pause_breakdown, pages, round_trip.count() / 1000),
                      {{"SEQ", std::to_string(seq)}, {"PAUSE_US", std::to_string(pause_us)}});
        }
    }
    return base::ok();
}

base::Result<std::pair<uint64_t, uint64_t>> ActiveEngine::checkpoint_and_hold(std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_mutex);
    if (m_hold)
        return base::Error(base::Errc::Invalid, "the guest is already held at a checkpoint");
    if (m_state != State::Protected)
        return base::Error(base::Errc::Invalid, "the guest is not protected: no checkpoint to take");
    // The next capture takes the hold (checkpoint()); wait until that one has committed.
    m_hold_requested = true;
    m_force = true;
    m_cv.notify_all();
    m_cv.wait_for(lock, timeout, [&] {
        return (m_hold && m_committed.load() >= m_hold_seq) || m_stop || m_state != State::Protected;
    });
    m_hold_requested = false;
    if (m_hold && m_committed.load() >= m_hold_seq)
        return std::make_pair(m_hold_seq, m_hold_digest);
    m_hold.reset();
    return base::Error(base::Errc::Failed, "the checkpoint to hold at did not commit (timeout or peer lost)");
}

base::Result<uint64_t> ActiveEngine::handover(std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_mutex);
    if (m_state != State::Protected)
        return base::Error(base::Errc::Invalid, "the guest is not protected: there is no peer to hand it to");
    m_handover_requested = true;
    m_force = true;
    m_cv.notify_all();
    bool ended = m_cv.wait_for(lock, timeout, [&] { return m_handed_over || m_stop || m_state != State::Protected; });
    m_handover_requested = false;
    if (m_handed_over)
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
        m_hold.reset();
    }
    m_cv.notify_all();
}

base::Result<uint64_t> ActiveEngine::checkpoint_now(std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_mutex);
    if (m_state != State::Protected)
        return base::Error(base::Errc::Invalid, "the guest is not protected: no checkpoint to take");
    // The first checkpoint captured from now on: a transfer already in flight holds an older
    // state than the caller asked for.
    uint64_t target = m_next_seq.load();
    m_force = true;
    m_cv.notify_all();
    bool done = m_cv.wait_for(lock, timeout, [&] { return m_committed.load() >= target || m_stop || m_state != State::Protected; });
    if (m_committed.load() >= target)
        return m_committed.load();
    return base::Error(done ? base::Errc::Failed : base::Errc::Timeout,
                       done ? "protection was lost before the checkpoint committed" : "the checkpoint did not commit in time");
}

void ActiveEngine::guest_shutdown(int exit_code) {
    {
        std::lock_guard lock(m_mutex);
        if (m_session && !m_session->failure) {
            auto sent = m_session->link.send(proto::GuestShutdown{exit_code}, proto::deadline_after(std::chrono::seconds(2)));
            if (!sent)
                base::logf(Level::Warning, Event::None, "could not tell the secondary about the shutdown: {}",
                           sent.error().message());
        }
    }
    base::log(Level::Notice, Event::GuestShutdown,
              fmt::format("the guest powered off with code {}; the secondary stops too", exit_code),
              {{"REASON", fmt::format("exit code {}", exit_code)}});
    stop(HeldOutput::Release);
}

void ActiveEngine::fill_status(Status& status) const {
    std::lock_guard lock(m_mutex);
    switch (m_state) {
    case State::Unprotected:
        status.state = m_local_state == proto::PeerState::SecondaryActive ? "active" : "unprotected";
        break;
    case State::Syncing: status.state = "syncing"; break;
    case State::Protected: status.state = "protected"; break;
    case State::Stopped: status.state = "stopped"; break;
    }
    status.seq = m_committed.load();
    status.checkpoints = m_checkpoints.load();
    auto pauses = m_pauses.summary();
    status.pause_us.last = pauses.last;
    status.pause_us.p50 = pauses.p50;
    status.pause_us.p99 = pauses.p99;
    status.pause_us.max = pauses.max;
    status.dirty_pages.last = m_dirty_last.load();
    status.dirty_pages.total = m_dirty_total.load();
    status.bytes_sent = m_bytes_sent.load();
    status.held_output_bytes = colo() ? m_comparator.held_bytes() : m_output.held_bytes();
    if (colo()) {
        status.checkpoints_mismatch = m_checkpoints_mismatch.load();
        status.checkpoints_interval = m_checkpoints.load() - status.checkpoints_mismatch;
        auto latency = m_comparator.compare_latency();
        status.compare_us_p50 = latency.p50;
        status.compare_us_p99 = latency.p99;
    }
    status.peer = m_config.peer_address;
    status.peer_state = m_peer_state;
}

}  // namespace colod::core
