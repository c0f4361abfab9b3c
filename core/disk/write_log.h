// SPDX-License-Identifier: GPL-2.0-or-later
// The primary's record of its guest's disk writes since the last checkpoint's capture: what the
// next checkpoint must carry to the secondary (DISK_WRITES, docs/disk.md) so that the
// secondary's image moves to that checkpoint together with its memory.
//
// The virtio-blk device's observer appends every write after it reached the primary's image
// (on a vCPU thread, under the device's lock: append() only copies); the checkpoint takes the
// whole log inside its pause, when no vCPU runs, so the log and the saved machine state end at
// the same instant. Writes stay in the guest's order, overlapping ones included: the secondary
// replays them in that order.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

#include "proto/messages.h"

namespace colod::core::disk {

class WriteLog {
public:
    // Copies one write (offset and length whole sectors; the device guarantees it).
    void append(uint64_t offset, std::span<const std::byte> bytes);
    // Bytes logged since the last take() or clear(). Any thread.
    uint64_t bytes() const { return m_bytes.load(std::memory_order_relaxed); }
    // Everything logged, as the DISK_WRITES messages of checkpoint `seq` (each carrying at most
    // proto::kMaxDiskMessageBytes of data; a longer write is cut at sector boundaries), and an
    // empty log. No message when nothing was written.
    std::vector<proto::DiskWrites> take(uint64_t seq);
    // Forgets everything logged (a new session's copy covers it).
    void clear();

private:
    mutable std::mutex m_mutex;
    std::vector<proto::DiskWrite> m_writes;  // guarded by m_mutex
    std::atomic<uint64_t> m_bytes{0};
};

// Cuts `writes` (in order) into DISK_WRITES messages of checkpoint `seq`, each with at most
// proto::kMaxDiskMessageBytes of data and the protocol's most writes per message.
std::vector<proto::DiskWrites> pack_disk_writes(uint64_t seq, std::vector<proto::DiskWrite> writes);

}  // namespace colod::core::disk
