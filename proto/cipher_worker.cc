// SPDX-License-Identifier: GPL-2.0-or-later
#include "proto/cipher_worker.h"

#include <pthread.h>

#include <string>
#include <system_error>

namespace colod::proto {

base::Result<std::unique_ptr<CipherWorker>> CipherWorker::start(std::string_view name) {
    std::unique_ptr<CipherWorker> worker(new CipherWorker());
    try {
        worker->m_thread = std::thread([raw = worker.get()] { raw->run(); });
    } catch (const std::system_error& e) {
        // std::thread reports a failed pthread_create only by throwing.
        return base::Error::from_errno("starting a cipher thread", e.code().value());
    }
    std::string short_name(name.substr(0, 15));
    pthread_setname_np(worker->m_thread.native_handle(), short_name.c_str());
    return worker;
}

CipherWorker::~CipherWorker() {
    {
        std::lock_guard lock(m_mutex);
        m_stopping = true;
        m_jobs.clear();
    }
    m_abandon = true;
    m_work.notify_all();
    if (m_thread.joinable())
        m_thread.join();
}

CipherWorker::Ticket CipherWorker::seal(FrameCipher& cipher, std::span<const iovec> payload, size_t index,
                                        size_t offset, size_t bytes, std::byte* out) {
    std::lock_guard lock(m_mutex);
    Ticket ticket = ++m_posted;
    m_jobs.push_back(Job{Job::Kind::Seal, &cipher, payload, index, offset, bytes, out, ticket});
    m_work.notify_one();
    return ticket;
}

CipherWorker::Ticket CipherWorker::open(FrameCipher& cipher, std::span<std::byte> bytes) {
    std::lock_guard lock(m_mutex);
    if (!m_jobs.empty()) {
        Job& last = m_jobs.back();
        if (last.kind == Job::Kind::Open && last.cipher == &cipher && last.out + last.bytes == bytes.data()) {
            last.bytes += bytes.size();
            return last.ticket;
        }
    }
    Ticket ticket = ++m_posted;
    m_jobs.push_back(Job{Job::Kind::Open, &cipher, {}, 0, 0, bytes.size(), bytes.data(), ticket});
    m_work.notify_one();
    return ticket;
}

base::Result<void> CipherWorker::wait_for(Ticket ticket) {
    std::unique_lock lock(m_mutex);
    m_done.wait(lock, [&] { return m_finished >= ticket || m_failure; });
    if (m_failure)
        return *m_failure;
    return base::ok();
}

base::Result<void> CipherWorker::wait_all() {
    Ticket last;
    {
        std::lock_guard lock(m_mutex);
        last = m_posted;
    }
    return wait_for(last);
}

void CipherWorker::run() {
    std::unique_lock lock(m_mutex);
    for (;;) {
        m_work.wait(lock, [&] { return m_stopping || !m_jobs.empty(); });
        if (m_stopping)
            return;
        Job job = m_jobs.front();
        m_jobs.pop_front();
        if (m_failure)
            continue;  // the frame is lost already
        lock.unlock();
        auto result = perform(job);
        lock.lock();
        if (!result) {
            // The frame is lost: drop what follows and let the waiter see why.
            m_failure = std::move(result).error();
            m_jobs.clear();
        } else {
            m_finished = job.ticket;
        }
        m_done.notify_all();
    }
}

base::Result<void> CipherWorker::perform(Job& job) {
    if (job.kind == Job::Kind::Open) {
        for (size_t at = 0; at < job.bytes; at += kSliceBytes) {
            if (m_abandon)
                return base::Error::make(base::Errc::Stopped, "cipher thread stopped");
            TRY(job.cipher->open({job.out + at, std::min(kSliceBytes, job.bytes - at)}));
        }
        return base::ok();
    }
    size_t index = job.index, offset = job.offset, left = job.bytes, slice = 0;
    std::byte* out = job.out;
    while (left) {
        // The caller sized the job from this gather list: it holds at least `bytes` more.
        const iovec& v = job.payload[index];
        size_t take = std::min(left, v.iov_len - offset);
        if (take == 0) {
            ++index;
            offset = 0;
            continue;
        }
        if (slice >= kSliceBytes) {
            if (m_abandon)
                return base::Error::make(base::Errc::Stopped, "cipher thread stopped");
            slice = 0;
        }
        take = std::min(take, kSliceBytes - slice);
        TRY(job.cipher->seal({static_cast<const std::byte*>(v.iov_base) + offset, take}, out));
        if (out)
            out += take;
        offset += take;
        left -= take;
        slice += take;
    }
    return base::ok();
}

}  // namespace colod::proto
