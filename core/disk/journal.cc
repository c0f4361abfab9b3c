// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/disk/journal.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "core/fault.h"

namespace colod::core::disk {

namespace {

constexpr std::string_view k_magic = "COLODJNL";
constexpr std::string_view k_end_magic = "COLODEND";
constexpr uint32_t k_version = 1;
constexpr size_t k_hash_size = 32;

void store_le(std::byte* at, uint64_t value, size_t bytes) {
    for (size_t i = 0; i < bytes; ++i)
        at[i] = std::byte(value >> (8 * i));
}

uint64_t load_le(const std::byte* at, size_t bytes) {
    uint64_t value = 0;
    for (size_t i = 0; i < bytes; ++i)
        value |= uint64_t(at[i]) << (8 * i);
    return value;
}

// SAFETY: libsodium takes bytes as unsigned char.
const unsigned char* uc(const std::byte* p) { return reinterpret_cast<const unsigned char*>(p); }
unsigned char* uc(std::byte* p) { return reinterpret_cast<unsigned char*>(p); }

class Hasher {
public:
    Hasher() { crypto_generichash_init(&m_state, nullptr, 0, k_hash_size); }
    void add(std::span<const std::byte> bytes) { crypto_generichash_update(&m_state, uc(bytes.data()), bytes.size()); }
    std::array<std::byte, k_hash_size> finish() {
        std::array<std::byte, k_hash_size> out{};
        crypto_generichash_final(&m_state, uc(out.data()), out.size());
        return out;
    }

private:
    crypto_generichash_state m_state;
};

base::Result<void> write_all(int fd, uint64_t offset, std::span<const std::byte> data, const std::filesystem::path& path) {
    size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return base::Error::from_errno(fmt::format("{}: write", path.string()));
        }
        done += static_cast<size_t>(n);
    }
    return base::ok();
}

// Reads exactly `data`; false at the end of the file.
base::Result<bool> read_all(int fd, uint64_t offset, std::span<std::byte> data, const std::filesystem::path& path) {
    size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::pread(fd, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return base::Error::from_errno(fmt::format("{}: read", path.string()));
        }
        if (n == 0)
            return false;
        done += static_cast<size_t>(n);
    }
    return true;
}

base::Result<void> sync(int fd, const std::filesystem::path& path) {
    while (::fdatasync(fd) != 0) {
        if (errno != EINTR)
            return base::Error::from_errno(fmt::format("{}: fdatasync", path.string()));
    }
    return base::ok();
}

struct Header {
    uint64_t seq = 0;
    uint64_t disk_bytes = 0;
    uint64_t count = 0;
    uint64_t data_bytes = 0;
};

std::array<std::byte, EpochJournal::k_header_size> encode_header(const Header& h) {
    std::array<std::byte, EpochJournal::k_header_size> out{};
    std::memcpy(out.data(), k_magic.data(), k_magic.size());
    store_le(&out[8], k_version, 4);
    store_le(&out[16], h.seq, 8);
    store_le(&out[24], h.disk_bytes, 8);
    store_le(&out[32], h.count, 8);
    store_le(&out[40], h.data_bytes, 8);
    return out;
}

}  // namespace

std::filesystem::path EpochJournal::path_for(const std::filesystem::path& image_path) {
    auto path = image_path;
    path += ".colod-journal";
    return path;
}

base::Result<std::unique_ptr<EpochJournal>> EpochJournal::open(BlockBackend& image, std::filesystem::path path) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return base::Error::from_errno(fmt::format("cannot open the disk's journal {}", path.string()));
    std::unique_ptr<EpochJournal> journal(new EpochJournal(image, std::move(path), base::Fd(fd)));
    TRY(journal->recover());
    return journal;
}

base::Result<void> EpochJournal::recover() {
    struct stat st {};
    if (::fstat(m_fd.get(), &st) != 0)
        return base::Error::from_errno(fmt::format("{}: stat", m_path.string()));
    const uint64_t file_bytes = static_cast<uint64_t>(st.st_size);
    if (file_bytes == 0)
        return base::ok();  // nothing journaled: the image alone is the last checkpoint
    // Anything but a complete record was torn by a crash while it was written: the image was
    // made durable at the checkpoint before it (commit's first step), so it is ignored.
    auto torn = [&] { return truncate(); };
    std::array<std::byte, k_header_size> header{};
    if (file_bytes < k_header_size + k_trailer_size || !TRY(read_all(m_fd.get(), 0, header, m_path)))
        return torn();
    if (std::memcmp(header.data(), k_magic.data(), k_magic.size()) != 0 || load_le(&header[8], 4) != k_version)
        return torn();
    Header h{load_le(&header[16], 8), load_le(&header[24], 8), load_le(&header[32], 8), load_le(&header[40], 8)};
    if (h.disk_bytes != m_image.size())
        return base::Error::make(base::Errc::Invalid,
                                 "{} holds checkpoint {} of a disk of {} bytes, but {} has {} bytes: remove the "
                                 "journal if the image was replaced on purpose",
                                 m_path.string(), h.seq, h.disk_bytes, m_image.describe(), m_image.size());
    if (h.count > file_bytes / k_entry_header_size || h.data_bytes > file_bytes ||
        k_header_size + h.count * k_entry_header_size + h.data_bytes + k_trailer_size != file_bytes)
        return torn();

    // First pass: the hash and every extent; second: into the image.
    Hasher hasher;
    hasher.add(header);
    std::vector<std::byte> buffer;
    auto walk = [&](bool apply) -> base::Result<bool> {
        uint64_t at = k_header_size;
        for (uint64_t i = 0; i < h.count; ++i) {
            std::array<std::byte, k_entry_header_size> entry{};
            if (!TRY(read_all(m_fd.get(), at, entry, m_path)))
                return false;
            uint64_t offset = load_le(&entry[0], 8), length = load_le(&entry[8], 4);
            if (length == 0 || length % k_sector_size != 0 || offset % k_sector_size != 0 || offset > m_image.size() ||
                length > m_image.size() - offset || length > file_bytes)
                return false;
            buffer.resize(length);
            if (!TRY(read_all(m_fd.get(), at + k_entry_header_size, buffer, m_path)))
                return false;
            if (apply) {
                TRY(m_image.write(offset, buffer));
            } else {
                hasher.add(entry);
                hasher.add(buffer);
            }
            at += k_entry_header_size + length;
        }
        return true;
    };
    if (!TRY(walk(false)))
        return torn();
    std::array<std::byte, k_trailer_size> trailer{};
    if (!TRY(read_all(m_fd.get(), file_bytes - k_trailer_size, trailer, m_path)))
        return torn();
    auto hash = hasher.finish();
    if (std::memcmp(trailer.data(), hash.data(), k_hash_size) != 0 ||
        std::memcmp(&trailer[k_hash_size], k_end_magic.data(), k_end_magic.size()) != 0)
        return torn();
    if (!TRY(walk(true)))
        return torn();
    m_image_dirty = true;
    m_recovered = h.seq;
    return settle();
}

base::Result<void> EpochJournal::truncate() {
    if (::ftruncate(m_fd.get(), 0) != 0)
        return base::Error::from_errno(fmt::format("{}: truncate", m_path.string()));
    return sync(m_fd.get(), m_path);
}

base::Result<void> EpochJournal::commit(uint64_t seq, std::span<const proto::DiskWrites> writes) {
    Header h{seq, m_image.size(), 0, 0};
    for (const auto& message : writes)
        for (const auto& write : message.writes) {
            if (write.offset > m_image.size() || write.bytes.size() > m_image.size() - write.offset)
                return base::Error::make(base::Errc::Invalid,
                                         "checkpoint {} writes {} bytes at {}, outside the disk of {} bytes", seq,
                                         write.bytes.size(), write.offset, m_image.size());
            ++h.count;
            h.data_bytes += write.bytes.size();
        }
    if (h.count == 0)
        return base::ok();

    // 1. The epoch before is durable in the image: the journal may hold another one now.
    if (m_image_dirty) {
        TRY(m_image.flush());
        m_image_dirty = false;
    }
    // 2. The journal record, made durable.
    auto header = encode_header(h);
    Hasher hasher;
    hasher.add(header);
    TRY(write_all(m_fd.get(), 0, header, m_path));
    uint64_t at = k_header_size;
    for (const auto& message : writes)
        for (const auto& write : message.writes) {
            std::array<std::byte, k_entry_header_size> entry{};
            store_le(&entry[0], write.offset, 8);
            store_le(&entry[8], write.bytes.size(), 4);
            auto data = std::as_bytes(std::span(write.bytes.data(), write.bytes.size()));
            hasher.add(entry);
            hasher.add(data);
            TRY(write_all(m_fd.get(), at, entry, m_path));
            TRY(write_all(m_fd.get(), at + k_entry_header_size, data, m_path));
            at += k_entry_header_size + data.size();
        }
    std::array<std::byte, k_trailer_size> trailer{};
    auto hash = hasher.finish();
    std::memcpy(trailer.data(), hash.data(), k_hash_size);
    std::memcpy(&trailer[k_hash_size], k_end_magic.data(), k_end_magic.size());
    TRY(write_all(m_fd.get(), at, trailer, m_path));
    at += k_trailer_size;
    if (::ftruncate(m_fd.get(), static_cast<off_t>(at)) != 0)
        return base::Error::from_errno(fmt::format("{}: truncate", m_path.string()));
    TRY(sync(m_fd.get(), m_path));
    fault_point("secondary.disk-journaled");  // a crash here: open() finishes the checkpoint
    // 3. Into the image; flushed before the next record replaces this one (or by settle()).
    m_image_dirty = true;
    for (const auto& message : writes)
        for (const auto& write : message.writes)
            TRY(m_image.write(write.offset, std::as_bytes(std::span(write.bytes.data(), write.bytes.size()))));
    m_committed_bytes += h.data_bytes;
    ++m_committed_epochs;
    return base::ok();
}

base::Result<void> EpochJournal::settle() {
    if (m_image_dirty) {
        TRY(m_image.flush());
        m_image_dirty = false;
    }
    return truncate();
}

}  // namespace colod::core::disk
