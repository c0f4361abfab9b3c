// SPDX-License-Identifier: GPL-2.0-or-later
// Where a guest's disk lives: a BlockBackend is a fixed-size array of bytes that can be read,
// written and made durable. FileImage is the one colod opens from `[vm] disk`: a raw image
// file on the host, read and written with pread/pwrite at the guest's offsets.
//
// A backend is not thread-safe: its owner (the virtio-blk device, under its transport's lock)
// serialises every call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

#include "base/fd.h"
#include "base/result.h"

namespace colod::core::disk {

// The sector size the device speaks in and every image size is a multiple of.
inline constexpr uint64_t k_sector_size = 512;

class BlockBackend {
public:
    virtual ~BlockBackend() = default;
    // Bytes; a non-zero multiple of k_sector_size that never changes.
    virtual uint64_t size() const = 0;
    // What to call the backend in messages (an image's path).
    virtual std::string describe() const = 0;
    // Reads or writes all of `data` at `offset`; the range lies within size() (the caller
    // checks). A failure may leave a write partly done.
    virtual base::Result<void> read(uint64_t offset, std::span<std::byte> data) = 0;
    virtual base::Result<void> write(uint64_t offset, std::span<const std::byte> data) = 0;
    // Every write that returned before is durable once this returns.
    virtual base::Result<void> flush() = 0;
};

// A raw image file (regular files only: FIXME: a block device, sized with BLKGETSIZE64, would
// do as well but is refused until someone needs and tests it). The file is opened read-write
// and locked (flock, exclusive, not waiting): a second daemon opening the same image on the
// same host is refused instead of corrupting it. flush() is fdatasync(2).
class FileImage final : public BlockBackend {
public:
    // Refused with a message naming the path and why: no such file, not a regular file (a
    // directory says so), no write access (read-only mode bits for a non-root user, a
    // read-only file system, an immutable file), size 0 or not a multiple of 512 bytes, or
    // another process holding its lock.
    static base::Result<std::unique_ptr<FileImage>> open(const std::filesystem::path& path);

    uint64_t size() const override { return m_size; }
    std::string describe() const override { return m_path.string(); }
    base::Result<void> read(uint64_t offset, std::span<std::byte> data) override;
    base::Result<void> write(uint64_t offset, std::span<const std::byte> data) override;
    base::Result<void> flush() override;

    const std::filesystem::path& path() const { return m_path; }

private:
    FileImage(std::filesystem::path path, base::Fd fd, uint64_t size)
        : m_path(std::move(path)), m_fd(std::move(fd)), m_size(size) {}

    std::filesystem::path m_path;
    base::Fd m_fd;
    uint64_t m_size;
};

}  // namespace colod::core::disk
