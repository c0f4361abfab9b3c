// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/disk/write_log.h"

#include <algorithm>

namespace colod::core::disk {

void WriteLog::append(uint64_t offset, std::span<const std::byte> bytes) {
    if (bytes.empty())
        return;
    proto::DiskWrite write;
    write.offset = offset;
    // SAFETY: the bytes are copied into a string used as a byte buffer.
    write.bytes.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    std::lock_guard lock(m_mutex);
    m_writes.push_back(std::move(write));
    m_bytes.fetch_add(bytes.size(), std::memory_order_relaxed);
}

std::vector<proto::DiskWrites> WriteLog::take(uint64_t seq) {
    std::vector<proto::DiskWrite> writes;
    {
        std::lock_guard lock(m_mutex);
        writes.swap(m_writes);
        m_bytes.store(0, std::memory_order_relaxed);
    }
    return pack_disk_writes(seq, std::move(writes));
}

void WriteLog::clear() {
    std::lock_guard lock(m_mutex);
    m_writes.clear();
    m_bytes.store(0, std::memory_order_relaxed);
}

std::vector<proto::DiskWrites> pack_disk_writes(uint64_t seq, std::vector<proto::DiskWrite> writes) {
    constexpr size_t k_max_writes = proto::kMaxDiskMessageBytes / proto::kDiskSectorSize;
    std::vector<proto::DiskWrites> messages;
    size_t room = 0;  // data bytes the last message can still take (a multiple of the sector)
    for (auto& write : writes) {
        const size_t size = write.bytes.size();
        size_t at = 0;
        while (at < size) {
            if (messages.empty() || room == 0 || messages.back().writes.size() == k_max_writes) {
                messages.push_back(proto::DiskWrites{seq, {}});
                room = proto::kMaxDiskMessageBytes;
            }
            // A write that does not fit is cut where the message is full: sector multiples,
            // since both the room and the write's length are.
            size_t length = std::min(room, size - at);
            if (at == 0 && length == size)
                messages.back().writes.push_back(std::move(write));
            else
                messages.back().writes.push_back(proto::DiskWrite{write.offset + at, write.bytes.substr(at, length)});
            room -= length;
            at += length;
        }
    }
    return messages;
}

}  // namespace colod::core::disk
