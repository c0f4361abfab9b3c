// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/disk/image.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace colod::core::disk {

namespace {

base::Error refused(const std::filesystem::path& path, std::string why, int err = 0) {
    return base::Error(err ? base::Errc::System : base::Errc::Invalid, fmt::format("{}: {}", path.string(), why), err);
}

}  // namespace

base::Result<std::unique_ptr<FileImage>> FileImage::open(const std::filesystem::path& path) {
    // What the path is, before opening it: open(2) on a directory with O_RDWR says EISDIR, but
    // on a FIFO it would block, and on a device it would open the device.
    struct stat info {};
    if (::stat(path.c_str(), &info) != 0) {
        int err = errno;
        if (err == ENOENT)
            return refused(path, "no such file", err);
        return refused(path, fmt::format("cannot be examined: {}", std::strerror(err)), err);
    }
    if (S_ISDIR(info.st_mode))
        return refused(path, "is a directory, not a disk image");
    if (S_ISBLK(info.st_mode))
        return refused(path, "is a block device (only raw image files are supported)");
    if (!S_ISREG(info.st_mode))
        return refused(path, "not a regular file");
    base::Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOCTTY));
    if (!fd) {
        int err = errno;
        if (err == EROFS)
            return refused(path, "is on a read-only file system (the disk must be writable)", err);
        if (err == EACCES || err == EPERM)
            return refused(path, fmt::format("cannot be opened for writing ({}): the disk must be writable",
                                             std::strerror(err)),
                           err);
        return refused(path, fmt::format("cannot be opened: {}", std::strerror(err)), err);
    }
    // The file opened may not be the one examined (a rename in between): look again, at it.
    if (::fstat(fd.get(), &info) != 0)
        return refused(path, fmt::format("fstat: {}", std::strerror(errno)), errno);
    if (!S_ISREG(info.st_mode))
        return refused(path, "not a regular file");
    uint64_t size = static_cast<uint64_t>(info.st_size);
    if (size == 0)
        return refused(path, "is empty (a disk image has a size: create it with truncate -s or mkfs)");
    if (size % k_sector_size != 0)
        return refused(path, fmt::format("is {} bytes, not a multiple of {} (the sector size)", size, k_sector_size));
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        if (err == EWOULDBLOCK)
            return refused(path, "is in use: another process holds its lock (another colod on this host?)", err);
        return refused(path, fmt::format("flock: {}", std::strerror(err)), err);
    }
    return std::unique_ptr<FileImage>(new FileImage(path, std::move(fd), size));
}

base::Result<void> FileImage::read(uint64_t offset, std::span<std::byte> data) {
    size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::pread(m_fd.get(), data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return base::Error::from_errno(fmt::format("{}: read of {} bytes at {}", m_path.string(), data.size(), offset));
        if (n == 0)  // the file shrank under us
            return base::Error::make(base::Errc::Failed, "{}: end of file at {} (was the image truncated?)",
                                     m_path.string(), offset + done);
        done += static_cast<size_t>(n);
    }
    return base::ok();
}

base::Result<void> FileImage::write(uint64_t offset, std::span<const std::byte> data) {
    size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::pwrite(m_fd.get(), data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return base::Error::from_errno(fmt::format("{}: write of {} bytes at {}", m_path.string(), data.size(), offset));
        if (n == 0)
            return base::Error::make(base::Errc::Failed, "{}: write at {} made no progress", m_path.string(), offset + done);
        done += static_cast<size_t>(n);
    }
    return base::ok();
}

base::Result<void> FileImage::flush() {
    while (::fdatasync(m_fd.get()) != 0) {
        if (errno != EINTR)
            return base::Error::from_errno(fmt::format("{}: fdatasync", m_path.string()));
    }
    return base::ok();
}

}  // namespace colod::core::disk
