// SPDX-License-Identifier: GPL-2.0-or-later
// Move-only owners of file descriptors and memory mappings.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <span>
#include <utility>

namespace colod::base {

class Fd {
public:
    Fd() = default;
    explicit Fd(int fd) : m_fd(fd) {}
    Fd(Fd&& other) noexcept : m_fd(std::exchange(other.m_fd, -1)) {}
    Fd& operator=(Fd&& other) noexcept {
        if (this != &other) {
            reset();
            m_fd = std::exchange(other.m_fd, -1);
        }
        return *this;
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() { reset(); }

    int get() const { return m_fd; }
    bool valid() const { return m_fd >= 0; }
    explicit operator bool() const { return valid(); }
    int release() { return std::exchange(m_fd, -1); }
    void reset() {
        if (m_fd >= 0)
            ::close(m_fd);
        m_fd = -1;
    }

private:
    int m_fd = -1;
};

class Mapping {
public:
    Mapping() = default;
    Mapping(void* addr, size_t size) : m_addr(static_cast<std::byte*>(addr)), m_size(size) {}
    Mapping(Mapping&& other) noexcept
        : m_addr(std::exchange(other.m_addr, nullptr)), m_size(std::exchange(other.m_size, 0)) {}
    Mapping& operator=(Mapping&& other) noexcept {
        if (this != &other) {
            reset();
            m_addr = std::exchange(other.m_addr, nullptr);
            m_size = std::exchange(other.m_size, 0);
        }
        return *this;
    }
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping() { reset(); }

    std::byte* data() const { return m_addr; }
    size_t size() const { return m_size; }
    std::span<std::byte> bytes() const { return {m_addr, m_size}; }
    bool valid() const { return m_addr != nullptr; }
    void reset() {
        if (m_addr)
            ::munmap(m_addr, m_size);
        m_addr = nullptr;
        m_size = 0;
    }

private:
    std::byte* m_addr = nullptr;
    size_t m_size = 0;
};

}  // namespace colod::base
