// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/standby_engine.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <variant>

#include "base/events.h"
#include "base/log.h"
#include "base/thread_name.h"
#include "core/fence.h"
#include "core/fault.h"
#include "core/guest_network.h"
#include "core/guest_runtime.h"
#include "core/net/vnet_header.h"
#include "core/net/tcp_rewriter.h"
#include "core/page_buffer.h"
#include "core/state_sections.h"
#include "core/uart.h"
#include "core/virtio/blk.h"
#include "core/virtio/net.h"
#include "core/virtio/rng.h"
#include "proto/errors.h"
#include "proto/handshake.h"

namespace colod::core {

using Clock = std::chrono::steady_clock;
using base::Event;
using base::Level;

namespace {

std::string ms_text(Clock::duration d) {
    return fmt::format("{:.1f}", std::chrono::duration<double, std::milli>(d).count());
}

// The failover records also carry COLOD_EVENT=failover, so that
// `journalctl COLOD_EVENT=failover` alone tells the whole story.
const base::LogField k_failover_tag{"EVENT", std::string(base::event_name(Event::Failover))};

using State = StandbyEngine::State;

// Every move the standby engine may make; docs/engines.md shows this table.
constexpr std::array k_table{
    Transition<State>{State::Listening, State::Syncing, "a primary connected"},
    Transition<State>{State::Standby, State::Syncing, "a primary reconnected: a new sync"},
    Transition<State>{State::Syncing, State::Standby, "a complete checkpoint was applied, or the session ended with one committed"},
    Transition<State>{State::Syncing, State::Listening, "the session ended before a complete checkpoint"},
    Transition<State>{State::Syncing, State::Active, "takeover: primary lost (fenced), handover or coloctl failover"},
    Transition<State>{State::Standby, State::Active, "takeover: primary lost (fenced), handover or coloctl failover"},
    Transition<State>{State::Syncing, State::Stopped, "the primary's guest powered off, or stop"},
    Transition<State>{State::Standby, State::Stopped, "the primary's guest powered off, or stop"},
    Transition<State>{State::Listening, State::Stopped, "stop"},
    Transition<State>{State::Active, State::Stopped, "stop"},
};

}  // namespace

std::string_view StandbyEngine::state_name(State state) {
    switch (state) {
    case State::Listening: return "listening";
    case State::Syncing: return "syncing";
    case State::Standby: return "standby";
    case State::Active: return "active";
    case State::Stopped: return "stopped";
    }
    return "?";
}

std::span<const Transition<State>> StandbyEngine::transitions() { return k_table; }

// One session's decoding state, shared by its handlers.
struct StandbyEngine::Context {
    Session& session;
    std::string peer;
    proto::StateDecoder& decoder;
    Staging& staging;
    std::vector<std::string> devices;
    bool first_complete = true;
};

// A complete checkpoint in the making: page runs copied out of the frames, zero runs, and the
// machine state decoded so far. Nothing here touches the machine until apply().
struct StandbyEngine::Staging {
    struct Run {
        uint64_t first_page;
        uint32_t count;
        size_t offset;
    };
    proto::StateKind kind = proto::StateKind::Complete;
    PageBuffer data;  // reused between checkpoints: it only grows
    size_t used = 0;
    std::vector<Run> runs;
    std::vector<proto::ZeroRun> zeros;
    std::optional<MachineStateAssembler> assembler;
    uint64_t pages = 0;

    void reset(proto::StateKind k, uint32_t vcpus, std::vector<std::string> devices) {
        kind = k;
        used = 0;
        runs.clear();
        zeros.clear();
        pages = 0;
        assembler.emplace(vcpus, std::move(devices));
    }
    // False when memory for the staging buffer cannot be had.
    bool add_run(const proto::PageRun& run) {
        size_t bytes = run.data.size();
        if (data.capacity() < used + bytes) {
            // Growing drops the contents: keep what is staged so far.
            PageBuffer bigger;
            if (!bigger.ensure(std::max(used + bytes, data.capacity() * 2)))
                return false;
            std::memcpy(bigger.data(), data.data(), used);
            data = std::move(bigger);
        }
        std::memcpy(data.data() + used, run.data.data(), bytes);
        runs.push_back(Run{run.first_page, run.count, used});
        used += bytes;
        pages += run.count;
        return true;
    }
};

namespace {
// The TCP rewriter's table as the NIC's companion state (virtio::NetDevice::Companion).
class RewriterState final : public virtio::NetDevice::Companion {
public:
    explicit RewriterState(std::shared_ptr<net::TcpRewriter> rewriter) : m_rewriter(std::move(rewriter)) {}
    std::vector<std::byte> save_companion() const override { return m_rewriter->save(); }
    base::Result<void> check_companion(std::span<const std::byte> bytes) const override {
        return m_rewriter->check(bytes);
    }
    void load_companion(std::span<const std::byte> bytes) override { m_rewriter->load(bytes); }

private:
    std::shared_ptr<net::TcpRewriter> m_rewriter;
};
}  // namespace

StandbyEngine::StandbyEngine(GuestRuntime& guest, proto::Hello identity, ReplicationConfig config,
                             proto::Listener listener, Callbacks callbacks)
    : m_guest(guest),
      m_identity(std::move(identity)),
      m_config(std::move(config)),
      m_listener(std::move(listener)),
      m_callbacks(std::move(callbacks)),
      m_machine("standby", State::Listening, k_table, &StandbyEngine::state_name) {
    if (auto* rng = m_guest.machine().linux_devices().rng; rng && colo()) {
        // Room for what the primary lets its guest take in two epochs, and then some.
        m_rng_stream = std::make_shared<virtio::StreamEntropy>(8 << 20);
        rng->set_source(std::make_unique<virtio::SharedEntropy>(m_rng_stream));
    }
    if (GuestNetwork* network = m_guest.network(); network && colo()) {
        // The guest here numbers its TCP connections from its own ISNs until a checkpoint makes
        // it a copy of the primary's: its frames are moved onto the primary's numbers, and the
        // world's acknowledgements back onto its own. For the guest's life: after a takeover the
        // connections opened under the primary still need it.
        m_rewriter = std::make_shared<net::TcpRewriter>();
        network->set_rewriter(m_rewriter);
        // Its table travels in the NIC's state: each checkpoint loaded here replaces it with
        // the active side's (empty for a primary that never took over, which makes the guests
        // number alike: every offset forgotten), and after a takeover the checkpoints this side
        // sends carry its table to the next secondary.
        if (auto* nic = m_guest.machine().linux_devices().net)
            nic->set_companion(std::make_shared<RewriterState>(m_rewriter));
    }
}

StandbyEngine::~StandbyEngine() { stop(); }

void StandbyEngine::set_disk(std::unique_ptr<DiskReplica> disk) {
    m_disk = std::move(disk);
    auto* blk = m_guest.machine().linux_devices().blk;
    if (!m_disk || !blk || !colo())
        return;
    // The guest here runs between checkpoints: its writes stay in front of the image, which
    // holds the last committed checkpoint.
    m_overlay = std::make_shared<disk::Overlay>(m_disk->image());
    if (auto set = blk->set_backend(m_overlay); !set) {
        base::log(Level::Error, Event::Error, "COLO: cannot put the disk's overlay in place: " + set.error().message());
        m_overlay.reset();
        return;
    }
    blk->set_admission([overlay = m_overlay] { return overlay->passing_through() || overlay->bytes() < k_overlay_bytes; });
}

void StandbyEngine::start() {
    m_accept_thread = base::named_thread("standby-accept", [this] {
        accept_loop();
    });
}

void StandbyEngine::stop() {
    std::shared_ptr<Session> session;
    {
        std::lock_guard lock(m_mutex);
        if (m_stop && !m_accept_thread.joinable() && !m_session_thread.joinable())
            return;
        m_stop = true;
        session = m_session;
    }
    if (session)  // outside m_mutex: a failing session calls back into the engine
        session->fail(base::Error(base::Errc::Stopped, "the secondary stopped"));
    m_listener.shutdown();
    m_cv.notify_all();
    if (m_accept_thread.joinable())
        m_accept_thread.join();
    if (m_session_thread.joinable())
        m_session_thread.join();
    std::lock_guard lock(m_mutex);
    move(State::Stopped, "stop");
}

State StandbyEngine::state() const {
    std::lock_guard lock(m_mutex);
    return m_machine.state();
}

void StandbyEngine::observe_transitions(std::function<void(State, State)> observer) {
    std::lock_guard lock(m_mutex);
    m_machine.observe(std::move(observer));
}

bool StandbyEngine::move(State state, const std::string& why) { return m_machine.move(state, why); }

void StandbyEngine::set_state(State state, const std::string& why) {
    bool moved;
    {
        std::lock_guard lock(m_mutex);
        moved = move(state, why);
    }
    if (moved && m_callbacks.changed)
        m_callbacks.changed(why);
}

void StandbyEngine::refuse(proto::Link link, const std::string& why) {
    proto::Hello hello = m_identity;
    // Taking over counts as active: a primary that connects then must not start its guest.
    hello.state = state() == State::Active || m_taking_over.load() ? proto::PeerState::SecondaryActive
                                                                     : proto::PeerState::SecondaryStandby;
    hello.link_security = m_config.link_security;
    // The refusal travels inside the handshake, so only a peer that proves the key learns it.
    (void)proto::handshake(link, *m_config.key, hello, proto::deadline_after(k_handshake_timeout),
                           [&](const proto::Hello&) { return why; });
}

void StandbyEngine::accept_loop() {
    for (;;) {
        auto accepted = m_listener.accept(proto::deadline_after(std::chrono::seconds(1)));
        if (!accepted) {
            if (accepted.error().code() == base::Errc::Stopped)
                return;
            if (accepted.error().code() != base::Errc::Timeout) {
                base::logf(Level::Warning, Event::None, "accepting on {}: {}", m_config.self_address,
                           accepted.error().message());
                std::unique_lock lock(m_mutex);
                m_cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return m_stop; });
            }
            std::lock_guard lock(m_mutex);
            if (m_stop)
                return;
            continue;
        }
        proto::Link link = std::move(accepted).value();
        bool active, busy, stopped;
        std::string paired_with;
        {
            std::lock_guard lock(m_mutex);
            if (m_stop)
                return;
            active = m_machine.state() == State::Active || m_taking_over.load();
            stopped = m_machine.state() == State::Stopped;
            busy = m_session_active;
            paired_with = m_peer;
        }
        if (stopped) {
            // The primary's guest powered off: this daemon is on its way out and protects nothing
            // (a session now would end in a takeover of a guest nobody runs).
            refuse(std::move(link), "this secondary is stopping: the primary's guest powered off");
            continue;
        }
        if (active) {
            refuse(std::move(link), "this side already runs the guest (it took over); start colod-secondary on the "
                                    "other host to protect it");
            continue;
        }
        if (busy) {
            refuse(std::move(link), fmt::format("this secondary is already paired with {}", paired_with));
            continue;
        }
        proto::Hello hello = m_identity;
        hello.state = proto::PeerState::SecondaryStandby;
        hello.link_security = m_config.link_security;
        auto peer = proto::handshake(link, *m_config.key, hello, proto::deadline_after(k_handshake_timeout),
                                     [](const proto::Hello& p) -> std::string {
                                         if (p.state == proto::PeerState::SecondaryStandby)
                                             return "both sides are standing by: one must run the guest";
                                         return {};
                                     });
        if (!peer)
            continue;  // logged by the handshake; keep listening for the real primary
        if (m_session_thread.joinable())
            m_session_thread.join();  // the previous session has ended (not busy)
        std::string address = link.peer_address();
        {
            // Under the takeover lock: a takeover decided since the check above wins, and none
            // can start while this session copies into the guest's RAM (receive_state).
            std::lock_guard takeover(m_takeover_mutex);
            std::lock_guard lock(m_mutex);
            active = m_machine.state() == State::Active || m_machine.state() == State::Stopped;
            if (!active) {
                m_session_active = true;
                m_peer = address;
            }
        }
        if (active) {
            base::log(Level::Notice, Event::HandshakeFailed,
                      fmt::format("closed the link to {}: this side took over or stopped while it connected", address),
                      {{"PEER", address}, {"REASON", "this side took over or stopped"}});
            continue;  // the link closes: the primary reconnects and is refused in the handshake
        }
        Session::Options options;
        options.heartbeat_interval = m_config.heartbeat_interval;
        options.heartbeat_timeout = m_config.heartbeat_timeout;
        options.committed_seq = [this] { return m_committed.load(); };
        auto session = Session::start(std::move(link), std::move(options));
        if (!session) {
            base::logf(Level::Warning, Event::None, "cannot start a session with {}: {}", address,
                       session.error().message());
            std::lock_guard lock(m_mutex);
            m_session_active = false;
            continue;
        }
        m_session_thread = base::named_thread("standby-recv", [this, s = std::move(session).value()]() mutable {
            run_session(std::move(s));
        });
    }
}

void StandbyEngine::run_session(std::shared_ptr<Session> session) {
    const std::string peer = session->peer();
    {
        std::lock_guard lock(m_mutex);
        m_session = session;
        m_peer_state = "connected";
    }
    base::log(Level::Notice, Event::PeerConnected, fmt::format("the primary at {} connected", peer), {{"PEER", peer}});
    m_sync_pages = 0;
    set_state(State::Syncing, fmt::format("syncing from {}", peer));
    if (m_rng_stream)
        m_rng_stream->clear();  // this primary's stream starts where its device stands
    {
        std::lock_guard input(m_net_mutex);
        m_net_input.clear();  // another primary's frames, for a run that is over
        m_net_input_bytes = 0;
    }
    if (m_disk)
        m_disk->begin_session(session);  // the image's hashes, for the primary's copy

    End end{End::Kind::Lost, {}};
    auto shape = proto::StateShape::from_hello(m_identity, platform_section_versions());
    if (auto decoder = proto::StateDecoder::create(shape); !decoder) {
        end.why = decoder.error().message();
    } else {
        Staging staging;
        Context context{*session, peer, decoder.value(), staging, {}};
        for (const auto& device : m_guest.machine().devices())
            context.devices.emplace_back(device->name());
        end = receive_loop(context);
    }
    auto detected = Clock::now();
    bool stopping;
    {
        std::lock_guard lock(m_mutex);
        m_session.reset();
        m_session_active = false;
        m_peer_state = "lost";
        stopping = m_stop;
    }
    session->close();  // heartbeats stop, the link goes
    if (m_disk)
        m_disk->end_session();  // writes of a checkpoint that never came are dropped
    if (!stopping)
        session_ended(end, peer, detected);
}

StandbyEngine::End StandbyEngine::receive_loop(Context& context) {
    proto::Frame frame;
    for (;;) {
        if (auto received = context.session.receive(frame); !received) {
            const auto& error = received.error();
            // Corrupted, replayed or forged bytes: whoever sent them is alive.
            if (error.code() == base::Errc::Protocol || error.code() == base::Errc::Auth)
                return refused(context, error);
            if (error.code() == base::Errc::Timeout)
                return End{End::Kind::Lost, fmt::format("heartbeat timeout: nothing from the primary for {} ms",
                                                        m_config.heartbeat_timeout.count() / 1000)};
            if (error.code() == base::Errc::Eof)
                return End{End::Kind::Lost, "the primary closed the connection"};
            return End{End::Kind::Lost, error.message()};
        }
        Step step;
        if (frame.header.type == proto::MessageType::VmstateSend) {
            step = on_state(context, frame.payload());
        } else if (auto message = frame.message(); !message) {
            step = refused(context, message.error());
        } else if (const auto* size = std::get_if<proto::VmstateSize>(&*message)) {
            step = on_size(context, *size);
        } else if (const auto* request = std::get_if<proto::CheckpointRequest>(&*message)) {
            step = on_checkpoint_request(context, *request);
        } else if (auto* input = std::get_if<proto::ConsoleInput>(&*message)) {
            step = on_console_input(context, *input);
        } else if (const auto* rng = std::get_if<proto::RngInput>(&*message)) {
            step = on_rng_input(context, *rng);
        } else if (auto* net = std::get_if<proto::NetInput>(&*message)) {
            step = on_net_input(context, *net);
        } else if (const auto* blocks = std::get_if<proto::DiskBlocks>(&*message)) {
            step = on_disk_blocks(context, *blocks);
        } else if (auto* writes = std::get_if<proto::DiskWrites>(&*message)) {
            step = on_disk_writes(context, *writes);
        } else if (const auto* planned = std::get_if<proto::Handover>(&*message)) {
            step = on_handover(context, *planned);
        } else if (const auto* off = std::get_if<proto::GuestShutdown>(&*message)) {
            step = on_guest_shutdown(context, *off);
        } else if (const auto* error = std::get_if<proto::ErrorMessage>(&*message)) {
            step = on_peer_error(context, *error);
        } else {
            step = End{End::Kind::Lost, fmt::format("unexpected {} from the primary",
                                                    proto::message_type_name(proto::message_type(*message)))};
        }
        if (step)
            return std::move(*step);
    }
}

StandbyEngine::End StandbyEngine::refused(Context& context, const base::Error& error) {
    std::string why = error.message();
    base::log(Level::Error, Event::CheckpointFailed,
              fmt::format("refused data from {}: {}; the committed state (checkpoint {}) is kept", context.peer, why,
                          m_committed.load()),
              {{"PEER", context.peer}, {"REASON", why}, {"SEQ", std::to_string(m_committed.load())}});
    if (context.session.post(proto::ErrorMessage{static_cast<uint16_t>(proto::reason_of(error)), why}))
        (void)context.session.flush(proto::deadline_after(std::chrono::milliseconds(200)));
    return End{End::Kind::Refused, why};
}

StandbyEngine::Step StandbyEngine::on_state(Context& context, std::span<const std::byte> payload) {
    auto handled = receive_state(context, payload);
    if (handled)
        return std::nullopt;
    const auto code = handled.error().code();
    if (code == base::Errc::Eof || code == base::Errc::Timeout || code == base::Errc::Stopped)
        return End{End::Kind::Lost, handled.error().message()};  // the session failed: the primary may be gone
    return refused(context, handled.error());
}

StandbyEngine::Step StandbyEngine::on_size(Context& context, const proto::VmstateSize& size) {
    if (auto begun = context.decoder.begin(size); !begun)
        return refused(context, begun.error());
    context.staging.reset(size.kind, m_guest.machine().vcpu_count(), context.devices);
    return std::nullopt;
}

StandbyEngine::Step StandbyEngine::on_checkpoint_request(Context& context, const proto::CheckpointRequest& request) {
    // COLO: stop the guest here first, so its run ends with the primary's.
    if (colo() && m_guest.running() && !m_colo_pause)
        m_colo_pause.emplace(m_guest.machine().pause());
    context.session.post(proto::CheckpointReply{request.seq});
    return std::nullopt;
}

StandbyEngine::Step StandbyEngine::on_console_input(Context&, proto::ConsoleInput& input) {
    if (colo()) {
        {
            std::lock_guard input_lock(m_input_mutex);
            m_input.push_back(std::move(input));
        }
        feed_input();
    }
    return std::nullopt;
}

StandbyEngine::Step StandbyEngine::on_rng_input(Context& context, const proto::RngInput& input) {
    if (!m_rng_stream)
        return std::nullopt;  // nothing here takes them (checkpoint mode: the state carries them)
    if (auto added = m_rng_stream->add(input.offset, std::as_bytes(std::span(input.bytes))); !added)
        return refused(context, added.error());
    if (auto* rng = m_guest.machine().linux_devices().rng)
        rng->entropy_available();  // a request of the guest here may wait for them
    return std::nullopt;
}

StandbyEngine::Step StandbyEngine::on_disk_blocks(Context& context, const proto::DiskBlocks& blocks) {
    if (!m_disk)
        return refused(context, base::Error(base::Errc::Protocol, "DISK_BLOCKS for a guest without a disk"));
    // The copy writes the image: never beside a takeover (which decides under this lock), and
    // from here on the old committed state (if any) is gone, as with the RAM's copy.
    std::lock_guard takeover(m_takeover_mutex);
    if (state() == State::Active)
        return refused(context, base::Error(base::Errc::Invalid, "this side took over: it no longer takes a copy"));
    m_committed_valid = false;
    if (auto written = m_disk->on_blocks(blocks); !written)
        return refused(context, written.error());
    return std::nullopt;
}

StandbyEngine::Step StandbyEngine::on_disk_writes(Context& context, proto::DiskWrites& writes) {
    if (!m_disk)
        return refused(context, base::Error(base::Errc::Protocol, "DISK_WRITES for a guest without a disk"));
    if (auto staged = m_disk->on_writes(std::move(writes)); !staged)
        return refused(context, staged.error());
    return std::nullopt;
}

StandbyEngine::Step StandbyEngine::on_net_input(Context&, proto::NetInput& frame) {
    if (!colo() || !m_guest.network())
        return std::nullopt;  // nothing here takes them (checkpoint mode: the state carries them)
    {
        std::lock_guard input(m_net_mutex);
        if (frame.epoch < m_epoch.load())
            return std::nullopt;  // already inside the loaded checkpoint
        if (m_net_input.size() >= k_net_input_frames || m_net_input_bytes + frame.frame.size() > k_net_input_bytes) {
            // The guest here falls behind the primary's input (it is paused, or not started): it
            // misses this frame, runs on other input, and the comparison sends a checkpoint.
            m_net_input_dropped.fetch_add(1, std::memory_order_relaxed);
            return std::nullopt;
        }
        m_net_input_bytes += frame.frame.size();
        m_net_input.push_back(std::move(frame));
    }
    feed_frames();
    return std::nullopt;
}

void StandbyEngine::feed_frames() {
    GuestNetwork* network = m_guest.network();
    std::lock_guard input(m_net_mutex);
    while (!m_net_input.empty()) {
        auto& front = m_net_input.front();
        if (front.epoch > m_epoch.load())
            return;  // for a run that has not started yet
        if (front.epoch == m_epoch.load() && network)
            (void)network->deliver(std::as_bytes(std::span(front.frame.data(), front.frame.size())),
                                   net::VnetHeader::decode(front.header));
        m_net_input_bytes -= front.frame.size();
        m_net_input.pop_front();
    }
}

void StandbyEngine::send_frame(std::span<const std::byte> frame) {
    std::shared_ptr<Session> session;
    {
        std::lock_guard lock(m_mutex);
        session = m_session;
    }
    // A vCPU thread, under the NIC's lock: never wait on the link (written now if it has room).
    if (session)
        (void)session->post_now(
            proto::NetOutput{m_epoch.load(), std::string(reinterpret_cast<const char*>(frame.data()), frame.size())});
}

StandbyEngine::Step StandbyEngine::on_handover(Context&, const proto::Handover& handover) {
    bool held;
    {
        std::lock_guard takeover(m_takeover_mutex);
        held = m_committed_valid && m_committed.load() == handover.seq;
    }
    if (held)
        return End{End::Kind::Handover,
                   fmt::format("planned switchover: the primary stopped its guest at checkpoint {}", handover.seq)};
    return End{End::Kind::Lost,
               fmt::format("the primary handed over checkpoint {}, which this side does not hold", handover.seq)};
}

StandbyEngine::Step StandbyEngine::on_guest_shutdown(Context&, const proto::GuestShutdown& shutdown) {
    return End{End::Kind::Shutdown, {}, shutdown.exit_code};
}

StandbyEngine::Step StandbyEngine::on_peer_error(Context&, const proto::ErrorMessage& error) {
    return End{End::Kind::Lost, fmt::format("the primary gave up: {}", error.reason)};
}

void StandbyEngine::session_ended(const End& end, const std::string& peer, Clock::time_point detected) {
    switch (end.kind) {
    case End::Kind::Shutdown:
        base::log(Level::Notice, Event::GuestShutdown,
                  fmt::format("the primary's guest powered off (code {}): stopping without a takeover", end.exit_code),
                  {{"PEER", peer}, {"REASON", fmt::format("exit code {}", end.exit_code)}});
        // The daemon learns first: whoever sees Stopped may rely on its having been told.
        if (m_callbacks.guest_shutdown)
            m_callbacks.guest_shutdown(end.exit_code);
        set_state(State::Stopped, "the guest powered off");
        return;
    case End::Kind::Handover:
        take_over(end.why, detected, Fencing::Skip);  // the primary's guest is stopped for good
        return;
    case End::Kind::Refused: {
        // The primary is alive (it just sent something): it reconnects and copies the guest
        // again. Taking over would make a second guest.
        base::log(Level::Warning, Event::PeerLost,
                  fmt::format("closed the link to {} after refusing its data ({}); keeping checkpoint {} and "
                              "waiting for the primary to reconnect",
                              peer, end.why, m_committed.load()),
                  {{"PEER", peer}, {"REASON", end.why}, {"SEQ", std::to_string(m_committed.load())}});
        if (colo())
            m_colo_pause.reset();
        bool committed;
        {
            std::lock_guard takeover(m_takeover_mutex);
            committed = m_committed_valid;
        }
        set_state(committed ? State::Standby : State::Listening, "waiting for the primary to reconnect");
        return;
    }
    case End::Kind::Lost:
        primary_lost(end.why, detected);
        return;
    }
}

base::Result<void> StandbyEngine::receive_state(Context& context, std::span<const std::byte> payload) {
    proto::StateDecoder& decoder = context.decoder;
    Staging& staging = context.staging;
    fault_point("secondary.frame");
    auto decoded = TRY(decoder.feed(payload));
    m_bytes_received += payload.size();
    GuestMemory& memory = m_guest.machine().memory();
    // A copy writes the guest's RAM: never beside a takeover (which decides under this lock).
    std::unique_lock takeover(m_takeover_mutex, std::defer_lock);
    if (staging.kind == proto::StateKind::Precopy) {
        takeover.lock();
        if (state() == State::Active)
            return base::Error::make(base::Errc::Invalid, "this side took over: it no longer takes a copy");
    }
    for (const auto& piece : decoded.pieces) {
        if (const auto* run = std::get_if<proto::PageRun>(&piece)) {
            if (staging.kind == proto::StateKind::Precopy) {
                // Before the first complete checkpoint there is nothing to protect: write RAM
                // directly. From here on the old committed state (if any) is gone.
                m_committed_valid = false;
                std::memcpy(memory.page(run->first_page), run->data.data(), run->data.size());
                m_sync_pages += run->data.size() / k_page_size;
            } else if (!staging.add_run(*run)) {
                return base::Error::make(base::Errc::System, "no memory to stage checkpoint pages");
            }
        } else if (const auto* zeros = std::get_if<proto::ZeroRun>(&piece)) {
            if (staging.kind == proto::StateKind::Precopy) {
                m_committed_valid = false;
                std::memset(memory.page(zeros->first_page), 0, zeros->count * k_page_size);
                m_sync_pages += zeros->count;
            } else {
                staging.zeros.push_back(*zeros);
                staging.pages += zeros->count;
            }
        } else if (const auto* section = std::get_if<proto::SectionView>(&piece)) {
            TRY(staging.assembler->add(*section));
        }
    }
    if (!decoded.end || staging.kind == proto::StateKind::Precopy)
        return base::ok();  // (a checkpoint, below, never held the takeover lock: apply() takes it)

    uint64_t seq = decoded.end->seq;
    fault_point("secondary.staged");
    context.session.post(proto::VmstateReceived{seq});
    fault_point("secondary.received");
    TRY(apply(context.staging, seq));
    fault_point("secondary.applied");
    context.session.post(proto::VmstateLoaded{seq});
    if (context.first_complete) {
        context.first_complete = false;
        context.session.post(proto::CheckpointReady{seq});
        base::log(Level::Notice, Event::Synced, fmt::format("synced: holding checkpoint {}; ready to take over", seq),
                  {{"SEQ", std::to_string(seq)}});
        set_state(State::Standby, fmt::format("standby: checkpoint {}", seq));
    }
    return base::ok();
}

base::Result<void> StandbyEngine::apply(Staging& staging, uint64_t seq) {
    // Validate everything first: the state decodes completely and every device accepts it.
    MachineState state = TRY(staging.assembler->finish());
    Machine& machine = m_guest.machine();
    GuestMemory& memory = machine.memory();
    // COLO: the guest here ran since the last checkpoint (and may still run, or have stopped
    // by itself since).
    bool colo_running = colo() && machine.started();
    {
        std::lock_guard lock(m_takeover_mutex);  // never apply under a takeover in progress
        DirtyBitmap own;
        if (colo_running) {
            // Stop it (CHECKPOINT_REQUEST normally has) and find the pages it wrote: those the
            // primary did not send must come back from the cache of the last checkpoint.
            if (!m_colo_pause && m_guest.running())
                m_colo_pause.emplace(machine.pause());
            own = DirtyBitmap(memory.page_count());
            TRY(memory.harvest_dirty(machine.vm(), own));
        }
        m_committed_valid = false;
        // The disk first: its writes go into the image through the journal, durable before the
        // checkpoint counts as loaded. A failure leaves no committed state to take over from
        // (the image may be part way to this checkpoint).
        if (m_overlay)
            m_overlay->clear();  // the guest here wrote those in a run that ends now
        if (m_disk)
            TRY(m_disk->commit(seq));
        DirtyBitmap sent(colo_running ? memory.page_count() : 0);
        for (const auto& run : staging.runs) {
            std::memcpy(memory.page(run.first_page), staging.data.data() + run.offset, run.count * k_page_size);
            if (m_cache_ready)
                std::memcpy(m_cache.data() + run.first_page * k_page_size, staging.data.data() + run.offset,
                            run.count * k_page_size);
            if (colo_running)
                for (uint64_t p = run.first_page; p < run.first_page + run.count; ++p)
                    sent.set(p);
        }
        for (const auto& zeros : staging.zeros) {
            std::memset(memory.page(zeros.first_page), 0, zeros.count * k_page_size);
            if (m_cache_ready)
                std::memset(m_cache.data() + zeros.first_page * k_page_size, 0, zeros.count * k_page_size);
            if (colo_running)
                for (uint64_t p = zeros.first_page; p < zeros.first_page + zeros.count; ++p)
                    sent.set(p);
        }
        if (colo_running) {
            uint64_t restored = 0;
            own.for_each([&](uint64_t page) {
                if (!sent.test(page)) {
                    std::memcpy(memory.page(page), m_cache.data() + page * k_page_size, k_page_size);
                    ++restored;
                }
            });
            base::logf(Level::Debug, Event::None, "checkpoint {}: {} pages the guest here wrote restored from the cache",
                       seq, restored);
        }
        fault_point("secondary.mid-apply");
        TRY(load_machine_state(state, seq));
        if (colo())
            m_colo_state = std::move(state);
        m_committed = seq;
        m_committed_valid = true;
    }
    if (colo())
        start_colo_guest(seq);
    ++m_checkpoints;
    m_dirty_last = staging.pages;
    m_dirty_total += staging.pages;
    base::log(Level::Debug, Event::None, fmt::format("applied checkpoint {}: {} pages", seq, staging.pages),
              {{"SEQ", std::to_string(seq)}});
    return base::ok();
}

void StandbyEngine::start_colo_guest(uint64_t seq) {
    Machine& machine = m_guest.machine();
    GuestMemory& memory = machine.memory();
    m_epoch = seq;
    if (!m_cache_ready) {
        // The first complete checkpoint: RAM now is its state; keep a copy of all of it.
        if (!m_cache.ensure(memory.size())) {
            base::log(Level::Error, Event::Error, "COLO: no memory for the checkpoint cache (a copy of guest RAM)");
            return;
        }
        std::memcpy(m_cache.data(), memory.page(0), memory.size());
        m_cache_ready = true;
    }
    if (replica_stopped_by_itself()) {
        // The checkpoint just loaded replaced whatever the stopped run left: run again from it.
        StopInfo stopped = machine.stop_info();
        base::log(Level::Warning, Event::Error,
                  fmt::format("COLO: the guest here stopped by itself ({}: {}); it runs again from checkpoint {}",
                              stop_reason_name(stopped.reason), stopped.detail, seq),
                  {{"REASON", std::string(stop_reason_name(stopped.reason))}, {"SEQ", std::to_string(seq)}});
        m_colo_pause.reset();
        if (auto restarted = m_guest.restart(); !restarted) {
            base::log(Level::Error, Event::Error, "COLO: cannot run the guest here again: " + restarted.error().message());
            return;
        }
    }
    if (!m_guest.running() && !machine.stopped()) {
        DirtyBitmap discard(memory.page_count());
        (void)memory.harvest_dirty(machine.vm(), discard);  // track the guest's own writes from here
        m_guest.set_output_sink([this](std::span<const std::byte> bytes) { send_output(bytes); });
        machine.uart().set_space_callback([this] { feed_input(); });
        if (GuestNetwork* network = m_guest.network())
            network->set_sink([this](std::span<const std::byte> frame) {
                send_frame(frame);
                return true;
            });
        if (auto started = m_guest.start(); !started) {
            base::log(Level::Error, Event::Error, "COLO: cannot start the guest here: " + started.error().message());
            return;
        }
        base::logf(Level::Notice, Event::None, "COLO: the guest runs here too, from checkpoint {}", seq);
    }
    m_colo_pause.reset();  // resume
    if (fault_point("secondary.replica-stop"))
        machine.request_stop(StopInfo{StopReason::TripleFault, 0, "fault point secondary.replica-stop"});
    feed_input();
    feed_frames();
}

bool StandbyEngine::replica_stopped_by_itself() const {
    const Machine& machine = m_guest.machine();
    return colo() && machine.started() && machine.stopped() &&
           machine.stop_info().reason != StopReason::Requested;
}

base::Result<void> StandbyEngine::roll_back_replica() {
    Machine& machine = m_guest.machine();
    GuestMemory& memory = machine.memory();
    if (!m_cache_ready || !m_colo_state)
        return base::Error(base::Errc::Invalid, "no checkpoint to go back to");
    DirtyBitmap own(memory.page_count());
    TRY(memory.harvest_dirty(machine.vm(), own));
    own.for_each([&](uint64_t page) {
        std::memcpy(memory.page(page), m_cache.data() + page * k_page_size, k_page_size);
    });
    if (m_overlay)
        m_overlay->clear();  // and its disk writes
    return load_machine_state(*m_colo_state, m_committed.load());
}

base::Result<void> StandbyEngine::load_machine_state(const MachineState& state, uint64_t seq) {
    Machine& machine = m_guest.machine();
    // COLO: the guest here runs beside the primary's, so its clocks go on with the primary's;
    // a checkpoint resumed only on takeover is as if paused since.
    TRY(machine.load_state(state, colo() ? Machine::ClockAtLoad::Continued : Machine::ClockAtLoad::AsCaptured));
    if (m_rng_stream) {
        uint64_t at = machine.linux_devices().rng->bytes_taken();
        m_rng_stream->seek(at);  // the guest continues from there
        base::logf(Level::Debug, Event::None, "checkpoint {}: virtio-rng stream at {}, {} bytes held from there", seq, at,
                   m_rng_stream->held());
    }
    return base::ok();
}

void StandbyEngine::feed_input() {
    std::lock_guard lock(m_input_mutex);
    while (!m_input.empty()) {
        auto& front = m_input.front();
        if (front.epoch < m_epoch.load()) {  // already inside the loaded checkpoint
            m_input.pop_front();
            m_input_offset = 0;
            continue;
        }
        if (front.epoch > m_epoch.load())
            return;  // for a run that has not started yet
        auto rest = std::as_bytes(std::span(front.bytes.data() + m_input_offset, front.bytes.size() - m_input_offset));
        size_t taken = m_guest.machine().uart().push_input(rest);
        m_input_offset += taken;
        if (m_input_offset < front.bytes.size())
            return;  // the UART is full: its space callback calls again
        m_input.pop_front();
        m_input_offset = 0;
    }
}

void StandbyEngine::send_output(std::span<const std::byte> bytes) {
    std::shared_ptr<Session> session;
    {
        std::lock_guard lock(m_mutex);
        session = m_session;
    }
    if (!session)
        return;
    // A vCPU thread: queue, never wait on the link.
    for (size_t at = 0; at < bytes.size(); at += proto::kMaxConsoleBytes) {
        size_t n = std::min(bytes.size() - at, proto::kMaxConsoleBytes);
        (void)session->post(
            proto::ConsoleOutput{m_epoch.load(), std::string(reinterpret_cast<const char*>(bytes.data()) + at, n)});
    }
}

void StandbyEngine::primary_lost(const std::string& why, Clock::time_point detected) {
    bool committed;
    {
        std::lock_guard takeover(m_takeover_mutex);
        committed = m_committed_valid;
    }
    if (!committed) {
        base::log(Level::Warning, Event::PeerLost,
                  fmt::format("the primary was lost before a complete checkpoint arrived ({}): nothing to take over "
                              "from; waiting for a primary",
                              why),
                  {{"PEER", m_config.peer_address}, {"REASON", why}});
        set_state(State::Listening, "waiting for a primary");
        return;
    }
    base::log(Level::Warning, Event::PeerLost, fmt::format("the primary is lost: {}", why),
              {{"PEER", m_config.peer_address}, {"REASON", why}, {"SEQ", std::to_string(m_committed.load())}});
    take_over(why, detected, Fencing::Run);
}

bool StandbyEngine::take_over(const std::string& why, Clock::time_point detected, Fencing fencing) {
    std::lock_guard takeover(m_takeover_mutex);
    return take_over_locked(why, detected, fencing);
}

bool StandbyEngine::take_over_locked(const std::string& why, Clock::time_point detected, Fencing fencing) {
    if (state() == State::Active)
        return true;
    if (state() == State::Stopped) {
        // The primary's guest powered off (or this daemon stops): there is nothing to take over.
        base::log(Level::Error, Event::FailoverAborted,
                  fmt::format("failover refused: this secondary has stopped ({})", why),
                  {{"REASON", why}, {"SEQ", std::to_string(m_committed.load())}, k_failover_tag});
        return false;
    }
    if (!m_committed_valid) {
        // Decided under the same lock as every write of it: the RAM here is part of a copy.
        base::log(Level::Error, Event::FailoverAborted,
                  fmt::format("failover refused: the guest's RAM here holds no complete checkpoint ({})", why),
                  {{"REASON", why}, {"SEQ", std::to_string(m_committed.load())}, k_failover_tag});
        return false;
    }
    uint64_t seq = m_committed.load();
    // COLO: the guest here has run since checkpoint `seq` on the primary's input, and the
    // primary released only output this guest wrote too (or output of a checkpoint it holds),
    // so its running state is consistent with everything clients saw: it carries on from
    // there. A guest that is not running (it stopped, or never started) resumes from the
    // checkpoint, as in checkpoint mode.
    bool continue_running = colo() && m_guest.running();
    if (replica_stopped_by_itself()) {
        // COLO, but the guest here stopped by itself since checkpoint `seq`: its RAM and state
        // are those of a run that went wrong. Back to the checkpoint; it starts from there.
        if (auto back = roll_back_replica(); !back) {
            base::log(Level::Error, Event::FailoverAborted,
                      fmt::format("failover refused: the guest here stopped by itself and cannot be put back to "
                                  "checkpoint {}: {}",
                                  seq, back.error().message()),
                      {{"REASON", why}, {"SEQ", std::to_string(seq)}, k_failover_tag});
            return false;
        }
    }
    // From the decision on, a primary that connects (a restarted one, say, while the fence
    // runs) is refused as by an active side, so it does not start a second guest; an aborted
    // takeover stands by again.
    m_taking_over = true;
    struct Clear {
        std::atomic<bool>& flag;
        ~Clear() { flag = false; }
    } clear_taking_over{m_taking_over};
    std::string from = continue_running
                           ? fmt::format("continuing from the running state (COLO; last checkpoint {})", seq)
                           : fmt::format("from checkpoint {}", seq);
    base::log(Level::Notice, Event::FailoverBegin, fmt::format("failover: {}; taking over {}", why, from),
              {{"REASON", why},
               {"SEQ", std::to_string(seq)},
               {"PEER", m_config.peer_address},
               {"RESUME", continue_running ? "running-state" : "checkpoint"},
               k_failover_tag});
    if (fencing == Fencing::Run && !m_config.fence_command.empty()) {
        auto fence = run_fence(m_config.fence_command,
                               {"COLOD_VM=" + m_config.vm_name, "COLOD_PEER=" + m_config.peer_address,
                                "COLOD_SEQ=" + std::to_string(seq), "COLOD_REASON=" + why},
                               m_config.fence_timeout);
        std::string output = fence.output.substr(0, 2000);
        while (!output.empty() && output.back() == '\n')
            output.pop_back();
        base::log(fence.succeeded ? Level::Notice : Level::Error, Event::FenceRun,
                  fmt::format("fence command {} ({} ms){}{}",
                              fence.timed_out ? "timed out" : fmt::format("exited {}", fence.exit_status),
                              fence.duration.count(), output.empty() ? "" : ": ", output),
                  {{"REASON", why},
                   {"FENCE_STATUS", std::to_string(fence.exit_status)},
                   {"FENCE_OUTPUT", output},
                   {"SEQ", std::to_string(seq)},
                   k_failover_tag});
        if (!fence.succeeded) {
            base::log(Level::Error, Event::FailoverAborted,
                      fmt::format("failover aborted: the fence command failed, so the primary may still run; the "
                                  "guest stays stopped here at checkpoint {}. Once you know the primary is down, "
                                  "'coloctl failover' on this side takes over without fencing",
                                  seq),
                      {{"REASON", why}, {"SEQ", std::to_string(seq)}, k_failover_tag});
            set_state(State::Standby, fmt::format("standby: primary lost, fence failed; checkpoint {}", seq));
            return false;
        }
    }
    if (m_disk) {
        // The guest runs on the image from here: the last checkpoint's writes durable in it,
        // and in COLO the running guest's own writes since (or none, if it goes back to the
        // checkpoint).
        if (m_overlay && !continue_running)
            m_overlay->clear();
        base::Result<void> settled = m_disk->settle();
        if (settled && m_overlay)
            settled = m_overlay->commit();
        if (!settled) {
            base::log(Level::Error, Event::FailoverAborted,
                      fmt::format("failover refused: the disk image cannot be made durable at checkpoint {}: {}", seq,
                                  settled.error().message()),
                      {{"REASON", why}, {"SEQ", std::to_string(seq)}, k_failover_tag});
            set_state(State::Standby, fmt::format("standby: primary lost, disk failed; checkpoint {}", seq));
            return false;
        }
    }
    set_state(State::Active, "taking over");
    if (auto* rng = m_guest.machine().linux_devices().rng) {
        // From here on the guest's entropy is this host's own: no primary feeds it any more.
        rng->set_source(std::make_unique<virtio::HostEntropy>());
        rng->entropy_available();
    }
    if (colo()) {
        m_guest.set_output_sink(nullptr);  // the active engine takes the output from here
        {
            std::lock_guard input(m_net_mutex);
            m_net_input.clear();  // the tap feeds the guest from here
            m_net_input_bytes = 0;
        }
        m_colo_pause.reset();  // a checkpoint that will never come stopped it: let it go on
    }
    bool started = m_callbacks.take_over && m_callbacks.take_over();
    auto took = Clock::now() - detected;
    if (!started) {
        base::log(Level::Error, Event::Error, "failover: the guest could not be started here",
                  {{"REASON", why}, {"SEQ", std::to_string(seq)}, k_failover_tag});
        return false;
    }
    m_last_failover_us = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(took).count());
    ++m_failovers;
    base::log(Level::Notice, Event::FailoverDone,
              fmt::format("failover done: the guest runs here {}, {} ms after the decision ({})", from, ms_text(took),
                          why),
              {{"REASON", why},
               {"SEQ", std::to_string(seq)},
               {"DURATION_MS", ms_text(took)},
               {"PEER", m_config.peer_address},
               k_failover_tag});
    return true;
}

base::Result<uint64_t> StandbyEngine::failover_now() {
    // One decision under the takeover lock: no primary can connect and start copying into the
    // guest's RAM between these checks and the guest starting (the accept loop claims a
    // session under the same lock).
    std::lock_guard takeover(m_takeover_mutex);
    {
        std::lock_guard lock(m_mutex);
        if (m_machine.state() == State::Active)
            return base::Error(base::Errc::Invalid, "this side already runs the guest");
        if (m_machine.state() == State::Stopped)
            return base::Error(base::Errc::Invalid, "this secondary has stopped: nothing to take over");
        if (m_session_active)
            return base::Error(base::Errc::Invalid,
                               "a primary is connected: ask the primary ('coloctl --role primary failover') for a "
                               "planned switchover");
    }
    if (!m_committed_valid)
        return base::Error(base::Errc::Invalid, "no complete checkpoint to take over from");
    if (!take_over_locked("ordered by coloctl failover (the operator confirmed the primary is down)", Clock::now(),
                          Fencing::Skip))
        return base::Error(base::Errc::Failed, "the takeover failed (see the log: fence-run, failover-aborted)");
    return m_committed.load();
}

StandbyEngine::Digest StandbyEngine::digest() {
    std::lock_guard lock(m_takeover_mutex);  // no apply in between
    Digest out{m_committed.load(), m_guest.machine().memory().digest(), std::nullopt};
    if (m_disk)
        out.disk = m_disk->digest();  // the image: the committed checkpoint (not a COLO run's overlay)
    return out;
}

void StandbyEngine::fill_status(Status& status) const {
    if (m_disk)
        status.disk = m_disk->figures().status();
    std::lock_guard lock(m_mutex);
    switch (m_machine.state()) {
    case State::Listening:
    case State::Standby: status.state = "standby"; break;
    case State::Syncing: status.state = "syncing"; break;
    case State::Active: status.state = "active"; break;
    case State::Stopped: status.state = "stopped"; break;
    }
    switch (m_machine.state()) {
    case State::Syncing: {
        double copied = static_cast<double>(m_sync_pages.load()) /
                        static_cast<double>(std::max<uint64_t>(1, m_guest.machine().memory().page_count()));
        status.sync_progress = std::min(copied, 0.999);
        break;
    }
    case State::Standby: status.sync_progress = 1; break;
    case State::Listening:
    case State::Active:
    case State::Stopped: status.sync_progress = 0; break;
    }
    auto taken = failovers();
    status.failovers = taken.count;
    status.last_failover_us = taken.last_us;
    status.seq = m_committed.load();
    status.checkpoints = m_checkpoints.load();
    status.checkpoints_applied = status.checkpoints;
    status.dirty_pages.last = m_dirty_last.load();
    status.dirty_pages.total = m_dirty_total.load();
    status.peer = m_session_active ? m_peer : m_config.peer_address;
    status.peer_state = m_peer_state;
    status.network.input_dropped = m_net_input_dropped.load(std::memory_order_relaxed);
}

}  // namespace colod::core
