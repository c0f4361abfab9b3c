// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/disk_replication.h"

#include <sodium.h>

#include <algorithm>

#include "base/events.h"
#include "base/log.h"
#include "base/thread_name.h"
#include "core/fault.h"
#include "core/virtio/blk.h"

namespace colod::core {

using base::Event;
using base::Level;

namespace {

// DISK_BLOCKS and DISK_HASHES go out through the session's queue, which fails a peer that
// leaves too much of it unread: wait for the queue to drain every so often.
constexpr uint64_t k_flush_every_bytes = 4u << 20;
constexpr size_t k_hashes_per_message = 4096;  // 128 KiB of hashes

uint64_t block_count(uint64_t bytes) { return (bytes + k_disk_block_bytes - 1) / k_disk_block_bytes; }

uint64_t block_length(uint64_t bytes, uint64_t block) {
    return std::min<uint64_t>(k_disk_block_bytes, bytes - block * k_disk_block_bytes);
}

// Messages queued on a session, with a flush whenever enough bytes went in since the last.
class Sender {
public:
    Sender(Session& session, std::chrono::milliseconds timeout) : m_session(session), m_timeout(timeout) {}
    base::Result<void> post(proto::Message message, uint64_t bytes) {
        if (!m_session.post(std::move(message)))
            return m_session.failure().value_or(base::Error(base::Errc::Stopped, "the session ended"));
        m_unflushed += bytes;
        if (m_unflushed >= k_flush_every_bytes)
            return flush();
        return base::ok();
    }
    base::Result<void> flush() {
        m_unflushed = 0;
        return m_session.flush(proto::deadline_after(m_timeout));
    }

private:
    Session& m_session;
    std::chrono::milliseconds m_timeout;
    uint64_t m_unflushed = 0;
};

}  // namespace

proto::DiskHash disk_block_hash(std::span<const std::byte> block) {
    proto::DiskHash out{};
    // SAFETY: libsodium takes bytes as unsigned char.
    crypto_generichash(reinterpret_cast<unsigned char*>(out.data()), out.size(),
                       reinterpret_cast<const unsigned char*>(block.data()), block.size(), nullptr, 0);
    return out;
}

base::Result<uint64_t> send_disk_writes(Session& session, std::vector<proto::DiskWrites> writes,
                                        std::chrono::milliseconds timeout) {
    Sender sender(session, timeout);
    uint64_t total = 0;
    for (auto& message : writes) {
        uint64_t bytes = 0;
        for (const auto& write : message.writes)
            bytes += write.bytes.size();
        TRY(sender.post(std::move(message), bytes));
        total += bytes;
    }
    return total;
}

base::Result<uint64_t> disk_digest(disk::BlockBackend& image) {
    crypto_generichash_state state;
    crypto_generichash_init(&state, nullptr, 0, proto::kDiskHashSize);
    std::vector<std::byte> chunk(1u << 20);
    for (uint64_t at = 0; at < image.size(); at += chunk.size()) {
        auto piece = std::span(chunk).first(std::min<uint64_t>(chunk.size(), image.size() - at));
        TRY(image.read(at, piece));
        // SAFETY: libsodium takes bytes as unsigned char.
        crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(piece.data()), piece.size());
    }
    proto::DiskHash hash{};
    crypto_generichash_final(&state, reinterpret_cast<unsigned char*>(hash.data()), hash.size());
    uint64_t digest = 0;
    for (size_t i = 0; i < 8; ++i)
        digest = digest << 8 | uint64_t(hash[i]);
    return digest;
}

// ---- DiskSource ----

DiskSource::DiskSource(virtio::BlkDevice& blk, std::function<void()> force_checkpoint, uint64_t force_bytes)
    : m_blk(blk),
      m_force_checkpoint(std::move(force_checkpoint)),
      m_force_bytes(force_bytes),
      m_bytes(blk.capacity() * proto::kDiskSectorSize),
      m_blocks(block_count(m_bytes)) {}

DiskSource::~DiskSource() { detach(); }

void DiskSource::attach() {
    virtio::BlkDevice::Observer observer;
    observer.written = [this](uint64_t offset, std::span<const std::byte> bytes) { written(offset, bytes); };
    m_blk.set_observer(std::move(observer));
    // Twice the bound that forces a checkpoint: the guest's requests wait until one takes the
    // log (its pause ends with the device's resume(), which takes them up again).
    m_blk.set_admission(
        [this] { return !m_logging.load(std::memory_order_relaxed) || m_log.bytes() < 2 * m_force_bytes; });
}

void DiskSource::detach() {
    m_blk.set_observer({});
    m_blk.set_admission({});
    m_blk.kick();
}

void DiskSource::begin_session() {
    std::lock_guard lock(m_mutex);
    m_mode = Mode::Tracking;
    m_dirty.assign(m_blocks, false);
    m_hashes.clear();
    m_force_asked = false;
    m_log.clear();
    m_copied_blocks = 0;
    m_sent_blocks = 0;
}

void DiskSource::end_session() {
    {
        std::lock_guard lock(m_mutex);
        m_mode = Mode::Off;
        m_logging = false;
        m_dirty.clear();
        m_hashes.clear();
        m_log.clear();
        m_cv.notify_all();
    }
    m_blk.kick();  // requests held back by a full log go on (outside m_mutex: kick takes the device's lock)
}

void DiskSource::written(uint64_t offset, std::span<const std::byte> bytes) {
    bool force = false;
    {
        std::lock_guard lock(m_mutex);
        switch (m_mode) {
        case Mode::Off: return;
        case Mode::Tracking: {
            if (bytes.empty())
                return;
            uint64_t last = std::min(m_blocks - 1, (offset + bytes.size() - 1) / k_disk_block_bytes);
            for (uint64_t block = offset / k_disk_block_bytes; block <= last; ++block)
                m_dirty[block] = true;
            return;
        }
        case Mode::Logging:
            m_log.append(offset, bytes);
            if (!m_force_asked && m_log.bytes() >= m_force_bytes)
                force = m_force_asked = true;
            break;
        }
    }
    if (force && m_force_checkpoint)
        m_force_checkpoint();
}

void DiskSource::on_hashes(proto::DiskHashes hashes) {
    {
        std::lock_guard lock(m_mutex);
        m_hashes.push_back(std::move(hashes));
    }
    m_cv.notify_all();
}

std::vector<uint64_t> DiskSource::take_dirty() {
    std::lock_guard lock(m_mutex);
    std::vector<uint64_t> blocks;
    for (uint64_t block = 0; block < m_dirty.size(); ++block)
        if (m_dirty[block]) {
            blocks.push_back(block);
            m_dirty[block] = false;
        }
    return blocks;
}

base::Result<void> DiskSource::read_block(uint64_t block, std::vector<std::byte>& out) {
    out.resize(block_length(m_bytes, block));
    // The image is read beside the guest's own requests (pread, no shared state): a block the
    // guest writes meanwhile may come out torn, but then it is marked dirty after the write
    // and sent again.
    return m_blk.backend()->read(block * k_disk_block_bytes, out);
}

base::Result<void> DiskSource::copy(Session& session, std::chrono::milliseconds timeout) {
    auto started = std::chrono::steady_clock::now();
    Sender sender(session, timeout);
    std::vector<std::byte> block;
    uint64_t next = 0;  // the next block whose hash is due
    uint64_t differed = 0;
    while (next < m_blocks) {
        proto::DiskHashes hashes;
        {
            std::unique_lock lock(m_mutex);
            auto deadline = std::chrono::steady_clock::now() + timeout;
            while (m_hashes.empty()) {
                if (session.failed())
                    return session.failure().value_or(base::Error(base::Errc::Stopped, "the session ended"));
                if (m_mode != Mode::Tracking)
                    return base::Error(base::Errc::Stopped, "the session ended");
                if (std::chrono::steady_clock::now() >= deadline)
                    return base::Error::make(base::Errc::Timeout,
                                             "the secondary sent no disk hashes for {} ms (block {} of {})",
                                             timeout.count(), next, m_blocks);
                m_cv.wait_for(lock, std::chrono::milliseconds(100));
            }
            hashes = std::move(m_hashes.front());
            m_hashes.pop_front();
        }
        if (hashes.first_block != next || hashes.block_bytes != k_disk_block_bytes ||
            hashes.hashes.size() > m_blocks - next)
            return base::Error::make(base::Errc::Protocol,
                                     "DISK_HASHES for blocks {}+{} of {} bytes, expected block {} of {} ({} bytes each)",
                                     hashes.first_block, hashes.hashes.size(), hashes.block_bytes, next, m_blocks,
                                     k_disk_block_bytes);
        for (const auto& theirs : hashes.hashes) {
            TRY(read_block(next, block));
            if (disk_block_hash(block) != theirs) {
                ++differed;
                ++m_sent_blocks;
                m_sent_bytes += block.size();
                TRY(sender.post(proto::DiskBlocks{next * k_disk_block_bytes,
                                                  std::string(reinterpret_cast<const char*>(block.data()), block.size())},
                                block.size()));
                fault_point("primary.disk-copy");  // the primary's host dies in the middle of the disk's copy
            }
            m_copied_blocks = ++next;
        }
    }
    // Blocks the guest wrote since the copy read them, again, while that converges.
    int rounds = 0;
    for (; rounds < k_copy_rounds; ++rounds) {
        auto dirty = take_dirty();
        if (dirty.size() <= k_final_blocks) {
            std::lock_guard lock(m_mutex);
            for (uint64_t b : dirty)
                m_dirty[b] = true;  // the first checkpoint carries them
            break;
        }
        for (uint64_t b : dirty) {
            TRY(read_block(b, block));
            ++m_sent_blocks;
            m_sent_bytes += block.size();
            TRY(sender.post(
                proto::DiskBlocks{b * k_disk_block_bytes, std::string(reinterpret_cast<const char*>(block.data()), block.size())},
                block.size()));
        }
    }
    TRY(sender.flush());
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count();
    base::logf(Level::Notice, Event::None,
               "disk copied: {} of {} blocks differed from the secondary's image, {} sent in all ({} MiB, {} rounds "
               "over blocks written meanwhile) in {} ms",
               differed, m_blocks, m_sent_blocks.load(), m_sent_bytes.load() >> 20, rounds, ms);
    return base::ok();
}

base::Result<std::vector<proto::DiskWrites>> DiskSource::capture(uint64_t seq) {
    Mode mode;
    {
        std::lock_guard lock(m_mutex);
        mode = m_mode;
        m_force_asked = false;
    }
    std::vector<proto::DiskWrites> messages;
    if (mode == Mode::Tracking) {
        // The session's first checkpoint: the blocks still dirty, as they are now (the guest
        // is paused), are its writes; every write from here on is logged.
        std::vector<proto::DiskWrite> writes;
        std::vector<std::byte> block;
        for (uint64_t b : take_dirty()) {
            TRY(read_block(b, block));
            writes.push_back(
                proto::DiskWrite{b * k_disk_block_bytes, std::string(reinterpret_cast<const char*>(block.data()), block.size())});
        }
        {
            std::lock_guard lock(m_mutex);
            m_mode = Mode::Logging;
            m_logging = true;
            m_log.clear();
        }
        messages = disk::pack_disk_writes(seq, std::move(writes));
    } else if (mode == Mode::Logging) {
        messages = m_log.take(seq);
    }
    uint64_t bytes = 0;
    for (const auto& message : messages)
        for (const auto& write : message.writes)
            bytes += write.bytes.size();
    m_checkpoint_bytes += bytes;
    m_sent_bytes += bytes;
    return messages;
}

DiskFigures DiskSource::figures() const {
    DiskFigures f;
    f.bytes = m_bytes;
    f.blocks = m_blocks;
    f.copied_blocks = m_copied_blocks.load();
    f.sent_blocks = m_sent_blocks.load();
    f.sent_bytes = m_sent_bytes.load();
    f.checkpoint_bytes = m_checkpoint_bytes.load();
    return f;
}

// ---- DiskReplica ----

base::Result<std::unique_ptr<DiskReplica>> DiskReplica::open(virtio::BlkDevice& blk, const std::filesystem::path& path) {
    auto backend = blk.backend();
    auto journal = TRY(disk::EpochJournal::open(*backend, path));
    if (journal->recovered())
        base::logf(Level::Notice, Event::None,
                   "disk: {} held checkpoint {} complete: written into {} again (the daemon had stopped between the "
                   "journal and the image)",
                   path.string(), *journal->recovered(), backend->describe());
    return std::unique_ptr<DiskReplica>(new DiskReplica(blk, std::move(backend), std::move(journal)));
}

DiskReplica::DiskReplica(virtio::BlkDevice& blk, std::shared_ptr<disk::BlockBackend> image,
                         std::unique_ptr<disk::EpochJournal> journal)
    : m_blk(blk),
      m_image(std::move(image)),
      m_journal(std::move(journal)),
      m_bytes(blk.capacity() * proto::kDiskSectorSize),
      m_blocks(block_count(m_bytes)) {}

DiskReplica::~DiskReplica() { end_session(); }

void DiskReplica::begin_session(std::shared_ptr<Session> session) {
    end_session();
    m_stop_hashing = false;
    m_copied_blocks = 0;
    m_hasher = base::named_thread("disk-hash", [this, session = std::move(session)] {
        hash_all(session);
    });
}

void DiskReplica::end_session() {
    m_stop_hashing = true;
    if (m_hasher.joinable())
        m_hasher.join();
    m_staged.clear();
    m_staged_bytes = 0;
}

void DiskReplica::hash_all(std::shared_ptr<Session> session) {
    auto backend = m_image;
    Sender sender(*session, std::chrono::seconds(30));
    std::vector<std::byte> block;
    proto::DiskHashes message{0, k_disk_block_bytes, {}};
    for (uint64_t b = 0; b < m_blocks; ++b) {
        if (m_stop_hashing || session->failed())
            return;
        block.resize(block_length(m_bytes, b));
        if (auto read = backend->read(b * k_disk_block_bytes, block); !read) {
            session->fail(base::Error::make(base::Errc::System, "cannot read the disk image to hash it: {}",
                                            read.error().message()));
            return;
        }
        message.hashes.push_back(disk_block_hash(block));
        if (message.hashes.size() == k_hashes_per_message || b + 1 == m_blocks) {
            uint64_t bytes = message.hashes.size() * proto::kDiskHashSize;
            uint64_t next = b + 1;
            if (!sender.post(std::move(message), bytes))
                return;  // the session failed: it says why
            message = proto::DiskHashes{next, k_disk_block_bytes, {}};
        }
    }
}

base::Result<void> DiskReplica::on_blocks(const proto::DiskBlocks& blocks) {
    if (blocks.offset > m_bytes || blocks.bytes.size() > m_bytes - blocks.offset)
        return base::Error::make(base::Errc::Protocol, "DISK_BLOCKS of {} bytes at {} run past the disk's {} bytes",
                                 blocks.bytes.size(), blocks.offset, m_bytes);
    TRY(m_image->write(blocks.offset, std::as_bytes(std::span(blocks.bytes.data(), blocks.bytes.size()))));
    fault_point("secondary.disk-copy");  // the secondary's host dies with its image half copied
    m_written_bytes += blocks.bytes.size();
    m_copied_blocks = std::max<uint64_t>(m_copied_blocks.load(), (blocks.offset + blocks.bytes.size()) / k_disk_block_bytes);
    return base::ok();
}

base::Result<void> DiskReplica::on_writes(proto::DiskWrites writes) {
    if (!m_staged.empty() && m_staged.front().seq != writes.seq)
        return base::Error::make(base::Errc::Protocol,
                                 "DISK_WRITES for checkpoint {} while those of checkpoint {} wait for their state",
                                 writes.seq, m_staged.front().seq);
    for (const auto& write : writes.writes) {
        if (write.offset > m_bytes || write.bytes.size() > m_bytes - write.offset)
            return base::Error::make(base::Errc::Protocol, "DISK_WRITES of {} bytes at {} run past the disk's {} bytes",
                                     write.bytes.size(), write.offset, m_bytes);
        m_staged_bytes += write.bytes.size();
    }
    if (m_staged_bytes > k_max_staged_bytes)
        return base::Error::make(base::Errc::Protocol, "checkpoint {} carries more than {} MiB of disk writes", writes.seq,
                                 k_max_staged_bytes >> 20);
    m_staged.push_back(std::move(writes));
    return base::ok();
}

base::Result<void> DiskReplica::commit(uint64_t seq) {
    if (!m_staged.empty() && m_staged.front().seq != seq)
        return base::Error::make(base::Errc::Protocol, "checkpoint {} arrived after the disk writes of checkpoint {}", seq,
                                 m_staged.front().seq);
    auto staged = std::move(m_staged);
    m_staged.clear();
    m_staged_bytes = 0;
    TRY(m_journal->commit(seq, staged));
    m_committed_bytes = m_journal->committed_bytes();
    return base::ok();
}

base::Result<void> DiskReplica::settle() { return m_journal->settle(); }

DiskFigures DiskReplica::figures() const {
    DiskFigures f;
    f.bytes = m_bytes;
    f.blocks = m_blocks;
    f.copied_blocks = m_copied_blocks.load();
    f.sent_bytes = m_written_bytes.load();
    f.checkpoint_bytes = m_committed_bytes.load();
    return f;
}

}  // namespace colod::core
