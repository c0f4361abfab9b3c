// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/session.h"

#include "base/thread_name.h"

namespace colod::core {

namespace {

// What a queued message costs, for the queue's bound.
size_t queued_size(const proto::Message& message) {
    if (const auto* in = std::get_if<proto::ConsoleInput>(&message))
        return 64 + in->bytes.size();
    if (const auto* out = std::get_if<proto::ConsoleOutput>(&message))
        return 64 + out->bytes.size();
    if (const auto* rng = std::get_if<proto::RngInput>(&message))
        return 64 + rng->bytes.size();
    if (const auto* in = std::get_if<proto::NetInput>(&message))
        return 64 + in->frame.size();
    if (const auto* out = std::get_if<proto::NetOutput>(&message))
        return 64 + out->frame.size();
    return 64;
}

std::string ms_text(std::chrono::microseconds us) { return fmt::format("{}ms", us.count() / 1000.0); }

}  // namespace

Session::Session(proto::Link link, Options options)
    : m_link(std::move(link)), m_options(std::move(options)), m_peer(m_link.peer_address()) {}

base::Result<std::shared_ptr<Session>> Session::start(proto::Link link, Options options) {
    std::shared_ptr<Session> session(new Session(std::move(link), std::move(options)));
    session->m_heartbeats = TRY(proto::HeartbeatSender::start(session->m_link, session->m_options.heartbeat_interval,
                                                             session->m_options.committed_seq));
    session->m_sender = base::named_thread("link-send", [raw = session.get()] {
        raw->sender_loop();
    });
    return session;
}

Session::~Session() { close(); }

void Session::close() {
    {
        std::lock_guard lock(m_mutex);
        if (m_closed)
            return;
        m_closed = true;
    }
    fail(base::Error(base::Errc::Stopped, "the session was closed"));
    m_heartbeats.reset();  // before the link it uses
    if (m_sender.joinable())
        m_sender.join();
    if (m_receiver.joinable())
        m_receiver.join();
}

void Session::fail(base::Error error) {
    {
        std::lock_guard lock(m_mutex);
        if (m_failure)
            return;
        m_failure = std::move(error);
        // Queued checkpoints will never be written: wake their senders.
        for (auto& item : m_queue)
            if (auto* job = std::get_if<StateJob*>(&item)) {
                (*job)->done = true;
                (*job)->error = *m_failure;
            }
        m_queue.clear();
        m_queued_bytes = 0;
    }
    m_link.shutdown();  // aborts a send or receive in progress
    m_changed.notify_all();
    if (m_options.on_failure)
        m_options.on_failure();
}

std::optional<base::Error> Session::failure() const {
    std::lock_guard lock(m_mutex);
    return m_failure;
}

std::optional<base::Error> Session::wait_failure(proto::Deadline deadline) const {
    std::unique_lock lock(m_mutex);
    m_changed.wait_until(lock, deadline, [&] { return m_failure.has_value(); });
    return m_failure;
}

bool Session::post(proto::Message message) { return enqueue(std::move(message), false); }

bool Session::enqueue(proto::Message message, bool front) {
    {
        std::lock_guard lock(m_mutex);
        if (m_failure)
            return false;
        if (enqueue_locked(message, front)) {
            m_changed.notify_all();
            return true;
        }
    }
    fail_unread();
    return false;
}

bool Session::enqueue_locked(proto::Message& message, bool front) {
    size_t bytes = queued_size(message);
    if (m_queued_bytes + bytes > m_options.max_queued_bytes)
        return false;
    if (front)
        m_queue.emplace_front(std::move(message));
    else
        m_queue.emplace_back(std::move(message));
    m_queued_bytes += bytes;
    ++m_queued_total;
    return true;
}

void Session::fail_unread() {
    fail(base::Error::make(base::Errc::Timeout, "the peer does not read: {} KiB queued for it",
                           m_options.max_queued_bytes >> 10));
}

bool Session::post_now(proto::Message message) {
    bool mine;
    {
        std::lock_guard lock(m_mutex);
        if (m_failure)
            return false;
        mine = !m_writing && m_queue.empty();
        if (mine)
            m_writing = true;  // the link is this thread's until it is done; the sender waits
    }
    if (!mine)
        return enqueue(std::move(message), false);  // behind what is queued or being written
    // Only when the socket has room for it now: never wait on the link here.
    auto sent = m_link.send_if_writable(message, proto::deadline_after(m_options.send_timeout));
    bool over = false;
    {
        std::lock_guard lock(m_mutex);
        m_writing = false;
        if (sent && *sent) {
            ++m_queued_total;
            ++m_written_total;
        } else if (sent && !m_failure) {
            // No room: first in the queue (whatever was posted meanwhile came after it).
            over = !enqueue_locked(message, true);
        }
    }
    m_changed.notify_all();
    if (!sent) {
        send_failed(sent.error());
        return false;
    }
    if (over)
        fail_unread();
    return !over;
}

base::Result<void> Session::send_state(const proto::EncodedState& state) {
    StateJob job{&state};
    std::unique_lock lock(m_mutex);
    if (m_failure)
        return *m_failure;
    m_queue.emplace_back(&job);
    ++m_queued_total;
    m_changed.notify_all();
    m_changed.wait(lock, [&] { return job.done; });
    if (job.error)
        return *job.error;
    return base::ok();
}

base::Result<void> Session::flush(proto::Deadline deadline) {
    std::unique_lock lock(m_mutex);
    uint64_t target = m_queued_total;
    m_changed.wait_until(lock, deadline, [&] { return m_written_total >= target || m_failure.has_value(); });
    if (m_written_total >= target)
        return base::ok();
    if (m_failure)
        return *m_failure;
    return base::Error(base::Errc::Timeout, "the peer did not take the queued messages in time");
}

void Session::sender_loop() {
    std::vector<proto::Message> batch;
    for (;;) {
        StateJob* job = nullptr;
        size_t bytes = 0;
        batch.clear();
        {
            std::unique_lock lock(m_mutex);
            m_changed.wait(lock, [&] { return (!m_queue.empty() && !m_writing) || m_failure.has_value(); });
            if (m_failure)
                return;
            if (auto* state = std::get_if<StateJob*>(&m_queue.front())) {
                job = *state;
                m_queue.pop_front();
            } else {
                // Every control message queued up to the next checkpoint (within a bound), in one
                // write: under a stream of a guest's frames a system call per frame would fall
                // behind.
                while (!m_queue.empty() && batch.size() < k_batch_messages && bytes < k_batch_bytes) {
                    auto* message = std::get_if<proto::Message>(&m_queue.front());
                    if (!message)
                        break;
                    bytes += queued_size(*message);
                    batch.push_back(std::move(*message));
                    m_queue.pop_front();
                }
            }
            m_writing = true;
        }
        auto deadline = proto::deadline_after(m_options.send_timeout);
        base::Result<void> sent = base::ok();
        if (job)
            sent = m_link.send_state(*job->state, deadline);
        else if (batch.size() == 1)
            sent = m_link.send(batch.front(), deadline);
        else
            sent = m_link.send_batch(batch, deadline);
        {
            std::lock_guard lock(m_mutex);
            m_writing = false;
            m_queued_bytes -= std::min(bytes, m_queued_bytes);
            if (sent)
                m_written_total += job ? 1 : batch.size();
            if (job) {
                job->done = true;
                if (!sent)
                    job->error = sent.error();
            }
        }
        m_changed.notify_all();
        if (!sent) {
            send_failed(sent.error());
            return;
        }
    }
}

void Session::send_failed(const base::Error& error) {
    // A frame cut short leaves the stream unusable.
    fail(error.code() == base::Errc::Timeout ? base::Error::make(base::Errc::Timeout, "the peer did not read for {} s",
                                                                 m_options.send_timeout.count() / 1000)
                                             : error);
}

base::Error Session::translate(const base::Error& error) const {
    if (error.code() == base::Errc::Timeout)
        return base::Error::make(base::Errc::Timeout, "heartbeat timeout: nothing from the peer for {}",
                                 ms_text(m_options.heartbeat_timeout));
    if (error.code() == base::Errc::Eof)
        return base::Error(base::Errc::Eof, "the peer closed the connection");
    return error;
}

base::Result<void> Session::receive(proto::Frame& frame) {
    for (;;) {
        auto received = m_link.receive_into_idle(frame, m_options.heartbeat_timeout);
        if (!received) {
            // A failure of our own (close, a failed send) explains the receive error better.
            if (auto failure = this->failure())
                return *failure;
            auto error = translate(received.error());
            fail(error);
            return error;
        }
        if (frame.header.type == proto::MessageType::Heartbeat)
            continue;
        return base::ok();
    }
}

void Session::start_receiver(Handler handler) {
    m_receiver = base::named_thread("link-recv", [this, handler = std::move(handler)] {
        receiver_loop(handler);
    });
}

void Session::receiver_loop(Handler handler) {
    proto::Frame frame;
    for (;;) {
        if (!receive(frame))
            return;
        auto message = frame.message();
        if (!message) {
            fail(std::move(message).error());
            return;
        }
        auto disposition = handler(*message);
        if (!disposition) {
            fail(std::move(disposition).error());
            return;
        }
        if (*disposition == Disposition::Inbox) {
            {
                std::lock_guard lock(m_mutex);
                m_inbox.push_back(std::move(*message));
            }
            m_changed.notify_all();
        }
    }
}

}  // namespace colod::core
