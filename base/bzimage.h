// SPDX-License-Identifier: GPL-2.0-or-later
// The setup header of a Linux x86 bzImage (Documentation/arch/x86/boot.rst, "The real-mode
// kernel header"): what colod needs to know to load a kernel through the 64-bit boot protocol,
// and the checks that tell a loadable kernel from any other file. Shared by config/ (a kernel
// that cannot boot is a config error, before any KVM call) and core/ (the loader).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "base/result.h"

namespace colod::base {

struct BzImage {
    // Offsets in the file (and in boot_params, which holds a copy of the header at 0x1f1).
    static constexpr size_t k_header_offset = 0x1f1;
    static constexpr size_t k_header_end_min = 0x26c;  // through kernel_info_offset (2.15)
    static constexpr uint32_t k_magic = 0x53726448;    // "HdrS" at 0x202
    static constexpr uint16_t k_min_version = 0x020c;  // 2.12: XLF_KERNEL_64, the 64-bit entry
    static constexpr uint8_t k_loaded_high = 0x01;     // loadflags: protected-mode code at 1 MiB+
    static constexpr uint16_t k_xlf_kernel_64 = 0x01;  // xloadflags: has the 64-bit entry point

    uint8_t setup_sects = 0;        // 512-byte sectors of real-mode code after the boot sector
    uint16_t version = 0;           // boot protocol, e.g. 0x020f
    uint8_t loadflags = 0;
    uint16_t xloadflags = 0;
    bool relocatable = false;
    uint32_t kernel_alignment = 0;  // a relocatable kernel's load address must be a multiple
    uint64_t pref_address = 0;      // where a non-relocatable kernel must be loaded
    uint32_t init_size = 0;         // bytes the kernel needs from its load address while it boots
    uint32_t initrd_addr_max = 0;   // highest address an initrd byte may have
    uint32_t cmdline_size = 0;      // longest command line, without the NUL
    size_t header_end = 0;          // the header ends here (0x202 + the byte at 0x201)
    size_t kernel_offset = 0;       // the protected-mode kernel starts here in the file
    size_t kernel_size = 0;         // and runs to the end of the file

    // Parses and checks the first bytes of a file (at least 1 KiB, or the whole file when it
    // is smaller). The error names the rule the file breaks: not a bzImage (no boot flag or
    // "HdrS" magic), a boot protocol older than 2.12, no 64-bit entry point, not loaded high.
    static Result<BzImage> parse(std::span<const std::byte> head, uint64_t file_size);

    // Whether a kernel of this header fits a guest with `low_ram` bytes of RAM below 4 GiB
    // (the kernel needs init_size bytes from its load address); the error says why not.
    Result<void> check_fits(uint64_t low_ram) const;

    // Where the kernel is loaded: pref_address, which a non-relocatable kernel requires and
    // which relocatable ones prefer (16 MiB for Debian's).
    uint64_t load_address() const { return pref_address; }
};

}  // namespace colod::base
