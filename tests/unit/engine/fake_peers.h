// SPDX-License-Identifier: GPL-2.0-or-later
// Scripted peers for the engine tests: each speaks the real replication protocol over a real
// link (a socket pair or loopback TCP), and does exactly what its script says, so a test can
// put an engine through any transition, refusal, timeout or failover decision on purpose.
//
//   FakeStandby  the peer of an ActiveEngine: answers checkpoints (or not), stalls its reads,
//                closes at a chosen moment, answers or ignores a handover.
//   FakePrimary  the peer of a StandbyEngine: copies a real guest (the kvstore guest on the
//                test backend) with colod's own checkpoint pipeline, then does what the test
//                says: more checkpoints, a handover, a shutdown, bad bytes, silence, a close.
#pragma once

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>

#include "core/checkpoint_pipeline.h"
#include "core/session.h"
#include "proto/handshake.h"
#include "proto/link.h"
#include "tests/support/backend.h"
#include "tests/support/kvstore_guest.h"

namespace colod::test {

inline std::shared_ptr<const proto::KeyRing> engine_test_key() {
    static const auto key = [] {
        std::string material(32, 'k');
        auto made = proto::Key::from_bytes(std::as_bytes(std::span(material)));
        REQUIRE(made);
        return std::make_shared<const proto::KeyRing>(proto::KeySet(std::move(made).value()));
    }();
    return key;
}

class FakeStandby {
public:
    struct Script {
        bool ack = true;                   // answer complete state transfers
        bool close_on_first_state = false; // vanish when the first transfer is announced (mid-sync)
        enum class OnHandover { Close, Error, Ignore } on_handover = OnHandover::Close;
        // COLO: on each CHECKPOINT_REQUEST stop reading this long, reply, and stop reading as
        // long again (while the active side's guest is paused at that checkpoint).
        std::chrono::milliseconds stall{0};
        bool heartbeats = true;
        proto::PeerState claims = proto::PeerState::SecondaryStandby;  // what HELLO says this side is
        int buffer_bytes = 0;  // the socket buffers (0: the system's)
    };

    FakeStandby(proto::Hello identity, Script script)
        : m_identity(std::move(identity)), m_script(script), m_ack(script.ack) {}
    ~FakeStandby() {
        vanish();
        if (m_thread.joinable())
            m_thread.join();
    }

    // For ActiveEngine::set_dialer: one fresh connection per call.
    base::Result<proto::Link> dial() {
        if (m_refuse_dials)
            return base::Error(base::Errc::Failed, "the scripted peer takes no more connections");
        if (m_thread.joinable())
            m_thread.join();  // the previous connection is over (the engine closed it)
        auto ends = TRY(proto::Link::pair(m_script.buffer_bytes));
        {
            std::lock_guard lock(m_mutex);
            m_link = std::make_shared<proto::Link>(std::move(ends.second));
            ++m_connections;
        }
        m_thread = std::thread([this, link = m_link]() mutable { serve(std::move(link)); });
        return std::move(ends.first);
    }

    // From now on, answer complete state transfers (or not).
    void set_ack(bool ack) { m_ack = ack; }
    // From now on, every dial() fails (the connection already made stays).
    void refuse_dials() { m_refuse_dials = true; }

    // The peer goes away: the active side reads EOF.
    void vanish() {
        std::lock_guard lock(m_mutex);
        if (m_link)
            m_link->shutdown();
    }

    template <typename Pred>
    bool wait(Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
        std::unique_lock lock(m_mutex);
        return m_changed.wait_for(lock, scaled(timeout), [&] { return pred(*this); });
    }

    // Read under wait()'s lock, or after the engine stopped.
    uint64_t complete = 0;       // complete checkpoints acknowledged
    uint64_t requests = 0;       // COLO checkpoint requests answered
    uint64_t handovers = 0;
    int connections() const { return m_connections; }
    std::string input;           // console input forwarded to this side
    bool closed = false;         // the current connection ended

private:
    void serve(std::shared_ptr<proto::Link> owned) {
        proto::Link& link = *owned;
        proto::Hello hello = m_identity;
        hello.state = m_script.claims;
        auto shaken = proto::handshake(link, *engine_test_key(), hello, proto::deadline_after(scaled(std::chrono::seconds(5))));
        std::unique_ptr<proto::HeartbeatSender> heartbeats;
        if (shaken && m_script.heartbeats) {
            auto started = proto::HeartbeatSender::start(link, std::chrono::milliseconds(20), [this] { return m_committed.load(); });
            if (started)
                heartbeats = std::move(started).value();
        }
        if (shaken)
            converse(link);
        heartbeats.reset();
        std::lock_guard lock(m_mutex);
        if (m_link == owned)
            m_link.reset();
        owned.reset();  // the socket closes: the active side reads EOF
        closed = true;
        m_changed.notify_all();
    }

    void converse(proto::Link& link) {
        proto::Frame frame;
        uint32_t frames_left = 0;
        proto::VmstateSize size;
        bool first = true;  // this connection's first complete checkpoint: the sync is done
        auto soon = [] { return proto::deadline_after(std::chrono::seconds(5)); };
        for (;;) {
            if (!link.receive_into_idle(frame, std::chrono::seconds(60)))
                return;
            if (frame.header.type == proto::MessageType::VmstateSend) {
                if (--frames_left > 0 || size.kind != proto::StateKind::Complete || !m_ack)
                    continue;
                if (!link.send(proto::VmstateReceived{size.seq}, soon()) || !link.send(proto::VmstateLoaded{size.seq}, soon()))
                    return;
                {
                    std::lock_guard lock(m_mutex);
                    ++complete;
                    m_changed.notify_all();
                }
                m_committed = size.seq;
                if (first && !link.send(proto::CheckpointReady{size.seq}, soon()))
                    return;
                first = false;
                continue;
            }
            auto message = frame.message();
            if (!message)
                return;
            if (const auto* announced = std::get_if<proto::VmstateSize>(&*message)) {
                if (m_script.close_on_first_state)
                    return;
                size = *announced;
                frames_left = size.frames;
            } else if (const auto* request = std::get_if<proto::CheckpointRequest>(&*message)) {
                if (m_script.stall.count())
                    std::this_thread::sleep_for(m_script.stall);  // the fault: this side does not read
                if (!link.send(proto::CheckpointReply{request->seq}, soon()))
                    return;
                if (m_script.stall.count())
                    std::this_thread::sleep_for(m_script.stall);
                std::lock_guard lock(m_mutex);
                ++requests;
                m_changed.notify_all();
            } else if (const auto* in = std::get_if<proto::ConsoleInput>(&*message)) {
                std::lock_guard lock(m_mutex);
                input += in->bytes;
                m_changed.notify_all();
            } else if (std::holds_alternative<proto::Handover>(*message)) {
                {
                    std::lock_guard lock(m_mutex);
                    ++handovers;
                    m_changed.notify_all();
                }
                if (m_script.on_handover == Script::OnHandover::Close)
                    return;
                if (m_script.on_handover == Script::OnHandover::Error) {
                    (void)link.send(proto::ErrorMessage{0, "this standby will not take the guest"}, soon());
                    return;
                }
            }
        }
    }

    proto::Hello m_identity;
    Script m_script;
    std::mutex m_mutex;
    std::condition_variable m_changed;
    std::shared_ptr<proto::Link> m_link;
    int m_connections = 0;
    std::atomic<bool> m_ack;
    std::atomic<bool> m_refuse_dials{false};
    std::atomic<uint64_t> m_committed{0};
    std::thread m_thread;
};

class FakePrimary {
public:
    // `heartbeat_interval`: how often this side shows it is alive when it has nothing to send
    // (an hour makes a primary that goes silent without closing).
    FakePrimary(core::Machine& machine, proto::Hello identity,
                std::chrono::milliseconds heartbeat_interval = std::chrono::milliseconds(20))
        : m_machine(machine), m_identity(std::move(identity)), m_heartbeat_interval(heartbeat_interval),
          m_pipeline(machine, std::chrono::milliseconds(50), scaled(std::chrono::milliseconds(20'000))) {}
    ~FakePrimary() { close(); }

    // Connects to the standby's listener and completes the handshake.
    base::Result<void> connect(uint16_t port) {
        auto link = TRY(proto::Link::connect(fmt::format("127.0.0.1:{}", port), proto::deadline_after(std::chrono::seconds(5))));
        TRY(proto::handshake(link, *engine_test_key(), m_identity, proto::deadline_after(scaled(std::chrono::seconds(5)))));
        core::Session::Options options;
        options.heartbeat_interval = m_heartbeat_interval;
        options.heartbeat_timeout = std::chrono::hours(1);
        m_session = TRY(core::Session::start(std::move(link), options));
        m_session->start_receiver([](proto::Message&) -> base::Result<core::Session::Disposition> {
            return core::Session::Disposition::Inbox;
        });
        return base::ok();
    }

    // The live copy: all of RAM as pre-copy, then the first complete checkpoint; returns its
    // number once the standby said it is ready.
    base::Result<uint64_t> sync() {
        TRY(precopy_all());
        m_pipeline.reserve(m_machine.memory().size());
        uint64_t seq = TRY(checkpoint());
        TRY(m_session->await<proto::CheckpointReady>(seq, proto::deadline_after(scaled(std::chrono::seconds(20)))));
        return seq;
    }
    // A pre-copy round of all of RAM, and nothing after it.
    base::Result<void> precopy_all() {
        TRY(m_pipeline.restart_dirty_log());
        std::vector<uint64_t> pages(m_machine.memory().page_count());
        std::iota(pages.begin(), pages.end(), uint64_t{0});
        return m_pipeline.precopy(*m_session, pages, m_next_seq);
    }
    // One complete checkpoint, acknowledged.
    base::Result<uint64_t> checkpoint() {
        uint64_t seq = m_next_seq++;
        TRY(m_pipeline.run(*m_session, seq, proto::StateKind::Complete, {}));
        m_committed = seq;
        return seq;
    }
    uint64_t committed() const { return m_committed; }
    uint64_t next_seq() const { return m_next_seq; }

    bool post(proto::Message message) { return m_session && m_session->post(std::move(message)); }
    // Waits until the standby ends the session; returns how (EOF when it closed the link).
    std::optional<base::Error> wait_closed() {
        return m_session->wait_failure(proto::deadline_after(scaled(std::chrono::seconds(20))));
    }
    template <typename T>
    base::Result<void> await(uint64_t seq) {
        return m_session->await<T>(seq, proto::deadline_after(scaled(std::chrono::seconds(20))));
    }
    // Ends the session and closes the socket: the standby reads EOF.
    void close() {
        if (m_session)
            m_session->close();
        m_session.reset();
    }

private:
    core::Machine& m_machine;
    proto::Hello m_identity;
    std::chrono::milliseconds m_heartbeat_interval;
    core::CheckpointPipeline m_pipeline;
    std::shared_ptr<core::Session> m_session;
    std::atomic<uint64_t> m_next_seq{1};
    uint64_t m_committed = 0;
};

}  // namespace colod::test
