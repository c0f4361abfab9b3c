// SPDX-License-Identifier: GPL-2.0-or-later
// The secondary's image moves from one committed checkpoint to the next in one step, whatever
// crashes in between (docs/disk.md). An epoch's writes (the DISK_WRITES of checkpoint N) first
// go into a journal file beside the image and are made durable there; only then are they
// written into the image. Before the next epoch's journal replaces this one, the image is made
// durable, so at every instant either the image is at checkpoint N-1 and the journal holds all
// of N or a torn record, or the image is at N:
//
//   commit(N):  flush the image (N-1 durable) → write journal N, fdatasync → write N into the image
//   open():     a complete journal is written into the image again (idempotent) and flushed;
//               a torn or empty one is ignored (the image is at the checkpoint before it)
//
// The journal's record: a 64-byte header ("COLODJNL", version, seq, the disk's size, the count
// and bytes of the writes), the writes (u64 offset, u32 length, u32 zero, the data), and a
// 40-byte trailer (BLAKE2b-256 of everything before it, "COLODEND"). All integers little-endian.
// The record is complete only if its size, hash, disk size and every extent check out.
//
// Not thread-safe: the standby engine calls it from its receiver, one checkpoint at a time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>

#include "base/fd.h"
#include "base/result.h"
#include "core/disk/image.h"
#include "proto/messages.h"

namespace colod::core::disk {

class EpochJournal {
public:
    // Opens (creating it, mode 0600) the journal at `path` for `image`, and first brings the
    // image to the last checkpoint a complete journal holds. Refused with a message naming the
    // path when the file cannot be opened, read or written, or when replaying fails.
    static base::Result<std::unique_ptr<EpochJournal>> open(BlockBackend& image, std::filesystem::path path);
    // The journal of an image at `image_path`: beside it, `<image>.colod-journal`.
    static std::filesystem::path path_for(const std::filesystem::path& image_path);

    // The checkpoint open() replayed into the image, if it found a complete journal.
    std::optional<uint64_t> recovered() const { return m_recovered; }

    // Moves the image to checkpoint `seq` (the steps above): durable on return. `writes` are
    // that checkpoint's DISK_WRITES in the order they came, each already checked by the
    // decoder; an extent outside the image is refused before anything is written. With no
    // writes nothing happens at all (the image is already at `seq`).
    base::Result<void> commit(uint64_t seq, std::span<const proto::DiskWrites> writes);
    // Makes the image durable and empties the journal: the image alone holds the last
    // checkpoint (before a takeover runs the guest on it, and at a clean stop).
    base::Result<void> settle();

    // Bytes of writes committed and epochs with writes (for status and tests).
    uint64_t committed_bytes() const { return m_committed_bytes; }
    uint64_t committed_epochs() const { return m_committed_epochs; }

    static constexpr size_t k_header_size = 64;
    static constexpr size_t k_entry_header_size = 16;
    static constexpr size_t k_trailer_size = 40;

private:
    EpochJournal(BlockBackend& image, std::filesystem::path path, base::Fd fd)
        : m_image(image), m_path(std::move(path)), m_fd(std::move(fd)) {}
    base::Result<void> recover();
    base::Result<void> truncate();

    BlockBackend& m_image;
    std::filesystem::path m_path;
    base::Fd m_fd;
    bool m_image_dirty = false;  // writes went into the image since its last flush
    std::optional<uint64_t> m_recovered;
    uint64_t m_committed_bytes = 0;
    uint64_t m_committed_epochs = 0;
};

}  // namespace colod::core::disk
