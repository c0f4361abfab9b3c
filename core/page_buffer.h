// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstring>

#include "base/fd.h"

namespace colod::core {

// A growable buffer of whole pages for checkpoint data, mapped with MAP_POPULATE: its memory
// is faulted in when it grows, in one system call, not page by page on first write (a fault
// per 4 KiB page is dear, especially on a host that is itself virtualised). Growing drops the
// contents.
class PageBuffer {
public:
    std::byte* data() const { return m_map.data(); }
    size_t capacity() const { return m_map.size(); }

    // Makes room for at least `bytes`; returns false if memory could not be had.
    bool ensure(size_t bytes) {
        if (bytes <= m_map.size())
            return true;
        size_t rounded = (bytes + (2u << 20) - 1) & ~size_t((2u << 20) - 1);
        void* addr = ::mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (addr == MAP_FAILED)
            return false;
        m_map = base::Mapping(addr, rounded);
        return true;
    }

private:
    base::Mapping m_map;
};

}  // namespace colod::core
