// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "base/result.h"

namespace colod::core {

class GuestMemory;

struct ElfSegment {
    uint64_t guest_phys;  // p_paddr
    uint64_t file_offset;
    uint64_t file_size;
    uint64_t memory_size;
    bool executable;
};

struct ElfImage {
    uint64_t entry = 0;
    uint64_t end = 0;  // first byte after the highest segment, page-aligned
    std::vector<ElfSegment> segments;
};

// Parses and validates an ELF64 x86-64 executable for direct boot. Every header field that
// could lead outside the file or into the monitor's boot area is checked: a truncated or
// corrupt image is an Invalid error, never a crash. Segments must be PT_LOAD at or above
// COLOD_IMAGE_MIN, not overlap, and the entry point must be in an executable segment.
base::Result<ElfImage> parse_elf(std::span<const std::byte> file);

// Copies the segments into guest RAM (zero-filling each segment's tail). Fails, naming the
// segment, if one does not fit in RAM.
base::Result<void> load_elf(const ElfImage& image, std::span<const std::byte> file, GuestMemory& memory);

}  // namespace colod::core
