// SPDX-License-Identifier: GPL-2.0-or-later
// The guest disk's replication (docs/disk.md): each host has its own image ([vm] disk), and the
// secondary's always equals the primary's as of the last committed checkpoint.
//
// DiskSource (the active side) watches the virtio-blk device's writes. During a session's live
// copy it tracks which blocks were written; the copy sends the blocks whose hashes differ from
// the secondary's (DISK_HASHES, DISK_BLOCKS), then the blocks written meanwhile, a few rounds,
// and the first checkpoint carries what is still dirty, read inside its pause. From there on it
// logs every write (disk::WriteLog), and each checkpoint carries its epoch's writes as
// DISK_WRITES, taken inside its pause and sent before its state.
//
// DiskReplica (the standby) answers a session with the hashes of its image, writes the copy's
// blocks into it as they come (before the first checkpoint there is no committed state to keep:
// the engine has already given it up), stages each checkpoint's DISK_WRITES and commits them
// through disk::EpochJournal when it applies that checkpoint, so that memory and disk move
// together. A takeover settles the journal before the guest runs on the image.
//
// COLO mode: the secondary's guest runs between checkpoints and writes its disk through a
// disk::Overlay in front of the image, dropped at each checkpoint it loads and written into the
// image by a takeover that continues the running guest (the standby engine owns it).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "base/result.h"
#include "core/disk/journal.h"
#include "core/disk/write_log.h"
#include "core/session.h"
#include "core/status.h"
#include "proto/messages.h"

namespace colod::core {

namespace virtio {
class BlkDevice;
}

// Blocks the copy hashes and sends: 64 KiB.
inline constexpr uint32_t k_disk_block_bytes = 64 * 1024;
// The hash of one block (BLAKE2b-256), as DISK_HASHES carries it.
proto::DiskHash disk_block_hash(std::span<const std::byte> block);
// Queues a checkpoint's DISK_WRITES on the session, draining the queue every few MiB (it fails a
// peer that leaves too much unread, `timeout` per drain); returns the data bytes queued.
base::Result<uint64_t> send_disk_writes(Session& session, std::vector<proto::DiskWrites> writes,
                                        std::chrono::milliseconds timeout);
// A digest of a whole image (the first 8 bytes of its BLAKE2b-256), for `coloctl digest`: equal
// on both sides at one checkpoint. Reads all of it; the caller keeps writers away meanwhile.
base::Result<uint64_t> disk_digest(disk::BlockBackend& image);

struct DiskFigures {
    uint64_t bytes = 0;            // the disk's size
    uint64_t blocks = 0;           // of k_disk_block_bytes (the last may be shorter)
    uint64_t copied_blocks = 0;    // the live copy: blocks compared so far
    uint64_t sent_blocks = 0;      // the live copy: blocks sent (differed, or written meanwhile)
    uint64_t sent_bytes = 0;       // the live copy and every checkpoint's writes
    uint64_t checkpoint_bytes = 0; // bytes of writes carried by checkpoints

    // As `coloctl status` shows them.
    Status::Disk status() const { return {true, bytes, blocks, copied_blocks, sent_blocks, sent_bytes, checkpoint_bytes}; }
};

class DiskSource {
public:
    // `force_checkpoint` is called (from the disk's doorbell thread, at most once per epoch) when an epoch's
    // writes pass `force_bytes`.
    DiskSource(virtio::BlkDevice& blk, std::function<void()> force_checkpoint, uint64_t force_bytes);
    ~DiskSource();
    DiskSource(const DiskSource&) = delete;
    DiskSource& operator=(const DiskSource&) = delete;

    // Routes the device's writes here (observer) / stops doing so.
    void attach();
    void detach();
    // A session starts: blocks written from now on are tracked for the copy; nothing logged.
    void begin_session();
    // The session ended: nothing is tracked or logged until the next one copies again.
    void end_session();

    // The secondary's DISK_HASHES (the session's receiver thread): queued for copy().
    void on_hashes(proto::DiskHashes hashes);
    // The live copy (the replication thread), before the RAM's: waits for the secondary's
    // hashes (at most `timeout` between two messages), sends the blocks that differ, then the
    // blocks written meanwhile until few are left.
    base::Result<void> copy(Session& session, std::chrono::milliseconds timeout);
    // Inside a checkpoint's pause: its DISK_WRITES (the first checkpoint of a session: the
    // blocks still dirty, read now; later ones: the epoch's logged writes). Logging from here.
    base::Result<std::vector<proto::DiskWrites>> capture(uint64_t seq);

    DiskFigures figures() const;
    // Bytes logged for the next checkpoint.
    uint64_t logged_bytes() const { return m_log.bytes(); }

    static constexpr int k_copy_rounds = 8;
    static constexpr uint64_t k_final_blocks = 64;  // few enough to read inside the first pause

private:
    enum class Mode { Off, Tracking, Logging };
    void written(uint64_t offset, std::span<const std::byte> bytes);
    std::vector<uint64_t> take_dirty();
    base::Result<void> read_block(uint64_t block, std::vector<std::byte>& out);

    virtio::BlkDevice& m_blk;
    std::function<void()> m_force_checkpoint;
    const uint64_t m_force_bytes;
    const uint64_t m_bytes;
    const uint64_t m_blocks;
    disk::WriteLog m_log;

    mutable std::mutex m_mutex;  // taken under the device's transport lock, never around it
    std::condition_variable m_cv;
    Mode m_mode = Mode::Off;               // guarded by m_mutex
    std::atomic<bool> m_logging{false};    // m_mode == Logging, for the device's admission
    std::vector<bool> m_dirty;             // guarded by m_mutex: blocks written while tracking
    bool m_force_asked = false;            // guarded by m_mutex
    std::deque<proto::DiskHashes> m_hashes;  // guarded by m_mutex
    std::atomic<uint64_t> m_copied_blocks{0}, m_sent_blocks{0}, m_sent_bytes{0}, m_checkpoint_bytes{0};
};

class DiskReplica {
public:
    // Opens the journal at `journal` (replaying a complete one into the device's image).
    static base::Result<std::unique_ptr<DiskReplica>> open(virtio::BlkDevice& blk, const std::filesystem::path& journal);
    ~DiskReplica();
    DiskReplica(const DiskReplica&) = delete;
    DiskReplica& operator=(const DiskReplica&) = delete;

    // A session starts: the image's hashes go to the primary from a thread of its own (the
    // receive loop goes on meanwhile); anything staged is dropped.
    void begin_session(std::shared_ptr<Session> session);
    // The session ended: the hashing stops, staged writes are dropped.
    void end_session();
    // The live copy's blocks, into the image now.
    base::Result<void> on_blocks(const proto::DiskBlocks& blocks);
    // A checkpoint's writes, staged until commit(seq). Refused: writes for an older checkpoint
    // than one already staged, or more than k_max_staged_bytes staged.
    base::Result<void> on_writes(proto::DiskWrites writes);
    // Applying checkpoint `seq`: its staged writes go into the image through the journal
    // (durable on return). Staged writes of another checkpoint are an error.
    base::Result<void> commit(uint64_t seq);
    // Before the guest runs on the image here (a takeover).
    base::Result<void> settle();

    std::optional<uint64_t> recovered() const { return m_journal->recovered(); }
    DiskFigures figures() const;
    // The image itself (a COLO secondary's device reads and writes through an overlay in front
    // of it), and its digest (coloctl digest).
    const std::shared_ptr<disk::BlockBackend>& image() const { return m_image; }
    base::Result<uint64_t> digest() const { return disk_digest(*m_image); }

    // What the standby stages for one checkpoint at most: the primary forces a checkpoint
    // long before (max-held-output's kind of bound for disk writes).
    static constexpr uint64_t k_max_staged_bytes = 1ull << 30;

private:
    DiskReplica(virtio::BlkDevice& blk, std::shared_ptr<disk::BlockBackend> image,
                std::unique_ptr<disk::EpochJournal> journal);
    void hash_all(std::shared_ptr<Session> session);

    virtio::BlkDevice& m_blk;
    std::shared_ptr<disk::BlockBackend> m_image;
    std::unique_ptr<disk::EpochJournal> m_journal;
    const uint64_t m_bytes;
    const uint64_t m_blocks;
    std::vector<proto::DiskWrites> m_staged;  // one checkpoint's, in order (session thread)
    uint64_t m_staged_bytes = 0;
    std::atomic<bool> m_stop_hashing{false};
    std::thread m_hasher;
    std::atomic<uint64_t> m_copied_blocks{0}, m_written_bytes{0}, m_committed_bytes{0};
};

}  // namespace colod::core
