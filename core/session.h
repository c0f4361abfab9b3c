// SPDX-License-Identifier: GPL-2.0-or-later
// One replication session: an authenticated link to the peer and the threads that use it. Both
// engines hold their live session as a shared pointer; it ends (close()) when the engine is done
// with it, whoever still holds a pointer.
//
// Sending: frames go out in the order they were queued. post() queues a control message for the
// sender thread and returns at once, so a vCPU thread, a console thread or a paused checkpoint
// never waits on the network; post_now() writes it from the calling thread instead when the
// queue is empty and the socket has room (still never waiting); send_state() queues a
// checkpoint and waits until it is written. The sender writes the control messages queued
// together in one write (Link::send_batch), up to k_batch_messages or k_batch_bytes.
// Heartbeats go out beside the queue whenever nothing else has for an interval.
//
// Receiving: either the owner's own loop calls receive() (the standby, which decodes checkpoint
// frames in place), or start_receiver() runs a receiver thread that hands each message to a
// handler, which may keep it in the inbox for await() (the active side's acks).
//
// The first failure (the peer silent for heartbeat-timeout, EOF, bad bytes, a send that could
// not finish, close()) ends the session: the link shuts down, every wait returns that error,
// and on_failure is called once.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "base/result.h"
#include "proto/link.h"

namespace colod::core {

class Session {
public:
    struct Options {
        std::chrono::microseconds heartbeat_interval{50'000};
        std::chrono::microseconds heartbeat_timeout{300'000};
        // The committed checkpoint, carried in each heartbeat (heartbeat thread).
        std::function<uint64_t()> committed_seq;
        // Called once, on whichever thread found the failure, after the session has failed.
        std::function<void()> on_failure;
        // A peer that leaves this much queued unread fails the session rather than grow memory.
        size_t max_queued_bytes = 16u << 20;
        // How long one queued frame may take to write before the session fails.
        std::chrono::milliseconds send_timeout{30'000};
    };

    static base::Result<std::shared_ptr<Session>> start(proto::Link link, Options options);
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    const std::string& peer() const { return m_peer; }

    // Queues a control message. False (nothing queued) once the session has failed.
    bool post(proto::Message message);
    // As post(), but written by the calling thread when nothing is queued or being written and
    // the socket has room for it now (it never waits on the link): a guest's network frame
    // then reaches the peer without a hand-off to the sender thread. Else queued.
    bool post_now(proto::Message message);
    // Queues a checkpoint and waits until it is written. `state` must stay valid until then.
    base::Result<void> send_state(const proto::EncodedState& state);
    // Waits until everything queued before is written (or the session fails, or the deadline).
    base::Result<void> flush(proto::Deadline deadline);

    // The owner's receive loop: the next frame, with heartbeats already skipped. A failure ends
    // the session (heartbeat timeout, EOF, bad bytes) and is returned.
    base::Result<void> receive(proto::Frame& frame);

    // Or a receiver thread. The handler sees every message but heartbeats; it returns Inbox to
    // keep the message for await(), Handled when it dealt with it, or an error to end the
    // session.
    enum class Disposition { Handled, Inbox };
    using Handler = std::function<base::Result<Disposition>(proto::Message&)>;
    void start_receiver(Handler handler);
    // Waits for the inbox message of type T for checkpoint `seq`, and takes it out.
    template <typename T>
    base::Result<void> await(uint64_t seq, proto::Deadline deadline);

    // Ends the session with `error` (the first failure wins). Any thread.
    void fail(base::Error error);
    std::optional<base::Error> failure() const;
    bool failed() const { return failure().has_value(); }
    // Blocks until the session has failed (or the deadline passes); returns the failure.
    std::optional<base::Error> wait_failure(proto::Deadline deadline) const;

    // Fails the session (Stopped) if it has not failed yet, and joins its threads. The owner
    // calls it once it no longer uses the session; never from a handler.
    void close();

private:
    struct StateJob {
        const proto::EncodedState* state;
        bool done = false;
        std::optional<base::Error> error;
    };
    using Item = std::variant<proto::Message, StateJob*>;

    Session(proto::Link link, Options options);
    // The most control messages, and bytes of them, the sender writes at once.
    static constexpr size_t k_batch_messages = 256;
    static constexpr size_t k_batch_bytes = 256u << 10;
    bool enqueue(proto::Message message, bool front);
    // Caller holds m_mutex. False, nothing queued, when it would pass max_queued_bytes.
    bool enqueue_locked(proto::Message& message, bool front);
    void fail_unread();  // the session's failure when the peer leaves too much unread
    void send_failed(const base::Error& error);
    void sender_loop();
    void receiver_loop(Handler handler);
    // A receive error as the session reports it (heartbeat timeout, peer closed, or as is).
    base::Error translate(const base::Error& error) const;

    proto::Link m_link;
    Options m_options;
    std::string m_peer;
    std::unique_ptr<proto::HeartbeatSender> m_heartbeats;

    mutable std::mutex m_mutex;
    mutable std::condition_variable m_changed;
    std::deque<Item> m_queue;          // guarded by m_mutex
    size_t m_queued_bytes = 0;         // guarded by m_mutex
    uint64_t m_queued_total = 0;       // items ever queued (guarded by m_mutex)
    uint64_t m_written_total = 0;      // items ever written (guarded by m_mutex)
    bool m_writing = false;            // a thread writes an item now (guarded by m_mutex)
    std::deque<proto::Message> m_inbox;  // guarded by m_mutex
    std::optional<base::Error> m_failure;  // guarded by m_mutex
    bool m_closed = false;             // guarded by m_mutex
    std::thread m_sender;
    std::thread m_receiver;
};

template <typename T>
base::Result<void> Session::await(uint64_t seq, proto::Deadline deadline) {
    std::unique_lock lock(m_mutex);
    for (;;) {
        for (auto it = m_inbox.begin(); it != m_inbox.end(); ++it) {
            const T* typed = std::get_if<T>(&*it);
            if (typed && typed->seq == seq) {
                m_inbox.erase(it);
                return base::ok();
            }
        }
        if (m_failure)
            return *m_failure;
        if (m_changed.wait_until(lock, deadline) == std::cv_status::timeout && proto::Clock::now() >= deadline)
            return base::Error::make(base::Errc::Timeout, "no {} for checkpoint {} in time",
                                     proto::message_type_name(T::type), seq);
    }
}

}  // namespace colod::core
