// SPDX-License-Identifier: GPL-2.0-or-later
// A helper thread that runs one direction's FrameCipher over the payload of a large frame while
// the link's own thread moves the bytes through the socket (proto/link.cc): the sender seals
// chunk N+1 while chunk N is written, the receiver opens the bytes that have landed while later
// ones are read. The two passes over every byte (the AEAD, the kernel's copy) then run on two
// cores instead of one after the other.
//
// The work is the same FrameCipher calls, in the same order, as the link makes on its own
// thread for small frames: the bytes on the wire do not change. The link's thread calls
// begin() before it posts the first job and finish_seal() / finish_open() after wait_all():
// the worker's mutex orders those calls with the worker's, so the cipher is used by one
// thread at a time.
//
// Lifetime: a worker stops and joins its thread when destroyed. Jobs point at memory the
// link's caller owns (the EncodedState, the Frame's buffer): the link destroys the worker
// (stop, join) before it returns from a frame on any path that leaves jobs behind, so no job
// outlives the call that posted it.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string_view>
#include <thread>

#include "base/result.h"
#include "proto/link_crypto.h"

namespace colod::proto {

class CipherWorker {
public:
    // Starts the thread, named `name` (at most 15 characters; shown by top -H and perf).
    // Errc::System when no thread can be started: the link then works on its own thread.
    static base::Result<std::unique_ptr<CipherWorker>> start(std::string_view name);
    // Drops the jobs not yet started, abandons the one running after its current slice (at
    // most kSliceBytes) and joins the thread.
    ~CipherWorker();
    CipherWorker(const CipherWorker&) = delete;
    CipherWorker& operator=(const CipherWorker&) = delete;

    // A job's number, counted from 1 over the worker's life; wait_for() takes it.
    using Ticket = uint64_t;
    // The most a job does between two looks at whether it is abandoned.
    static constexpr size_t kSliceBytes = 256u << 10;

    // Seals the next `bytes` payload bytes of the gather list `payload`, starting `offset`
    // bytes into its entry `index`: `cipher.seal(piece, out)` per piece, the ciphertext going
    // to `out` contiguously (encrypted), or authenticated only (out null). The iovec array and
    // the memory behind it and `out` must stay valid until the job is done.
    Ticket seal(FrameCipher& cipher, std::span<const iovec> payload, size_t index, size_t offset, size_t bytes,
                std::byte* out);
    // Opens `bytes` in place (`cipher.open`). Joins a queued open job that ends where these
    // bytes start, so a receiver may post every recv() as it lands.
    Ticket open(FrameCipher& cipher, std::span<std::byte> bytes);

    // Waits until job `ticket` and all before it are done. The first error a job met (the
    // later jobs are then dropped), as the FrameCipher returned it.
    base::Result<void> wait_for(Ticket ticket);
    // Waits until every job posted so far is done.
    base::Result<void> wait_all();

private:
    struct Job {
        enum class Kind { Seal, Open } kind;
        FrameCipher* cipher;
        std::span<const iovec> payload;  // Seal
        size_t index;                    // Seal: where in `payload` it starts
        size_t offset;
        size_t bytes;
        std::byte* out;  // Seal: ciphertext or null; Open: the bytes themselves
        Ticket ticket;
    };

    CipherWorker() = default;
    void run();
    base::Result<void> perform(Job& job);

    std::mutex m_mutex;
    std::condition_variable m_work;  // the worker waits for jobs or stop
    std::condition_variable m_done;  // the link's thread waits for tickets
    std::deque<Job> m_jobs;          // guarded by m_mutex: posted, not started
    Ticket m_posted = 0;             // guarded by m_mutex
    Ticket m_finished = 0;           // guarded by m_mutex
    std::optional<base::Error> m_failure;  // guarded by m_mutex
    bool m_stopping = false;         // guarded by m_mutex
    std::atomic<bool> m_abandon{false};  // read by the worker between slices of a job
    std::thread m_thread;
};

}  // namespace colod::proto
