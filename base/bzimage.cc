// SPDX-License-Identifier: GPL-2.0-or-later
#include "base/bzimage.h"

#include <cstring>

namespace colod::base {

namespace {

template <typename T>
T read_le(std::span<const std::byte> bytes, size_t offset) {
    T value{};
    std::memcpy(&value, bytes.data() + offset, sizeof(T));  // x86 hosts only: little-endian
    return value;
}

}  // namespace

Result<BzImage> BzImage::parse(std::span<const std::byte> head, uint64_t file_size) {
    if (head.size() < 0x270)
        return Error::make(Errc::Invalid, "not a bzImage: {} bytes is too short for a Linux setup header",
                           file_size);
    if (read_le<uint16_t>(head, 0x1fe) != 0xaa55 || read_le<uint32_t>(head, 0x202) != k_magic)
        return Error(Errc::Invalid, "not a bzImage: no boot flag 0xAA55 and \"HdrS\" magic in the setup header");
    BzImage image;
    image.version = read_le<uint16_t>(head, 0x206);
    if (image.version < k_min_version)
        return Error::make(Errc::Invalid,
                           "Linux boot protocol {}.{:02} is too old: the 64-bit entry needs 2.12 or later "
                           "(kernel 3.8 and newer)",
                           image.version >> 8, image.version & 0xff);
    image.setup_sects = read_le<uint8_t>(head, 0x1f1);
    if (image.setup_sects == 0)
        image.setup_sects = 4;  // the protocol's rule for ancient kernels
    image.loadflags = read_le<uint8_t>(head, 0x211);
    image.initrd_addr_max = read_le<uint32_t>(head, 0x22c);
    image.kernel_alignment = read_le<uint32_t>(head, 0x230);
    image.relocatable = read_le<uint8_t>(head, 0x234) != 0;
    image.xloadflags = read_le<uint16_t>(head, 0x236);
    image.cmdline_size = read_le<uint32_t>(head, 0x238);
    image.pref_address = read_le<uint64_t>(head, 0x258);
    image.init_size = read_le<uint32_t>(head, 0x260);
    image.header_end = 0x202 + static_cast<size_t>(read_le<uint8_t>(head, 0x201));
    image.kernel_offset = (static_cast<size_t>(image.setup_sects) + 1) * 512;
    if (!(image.loadflags & k_loaded_high))
        return Error(Errc::Invalid, "a zImage (loaded below 1 MiB), not a bzImage");
    if (!(image.xloadflags & k_xlf_kernel_64))
        return Error(Errc::Invalid, "a kernel without the 64-bit entry point (XLF_KERNEL_64): colod boots 64-bit "
                                    "x86 kernels only");
    if (image.kernel_offset >= file_size)
        return Error::make(Errc::Invalid, "truncated bzImage: {} setup sectors but the file has {} bytes",
                           image.setup_sects, file_size);
    if (image.header_end > 0x2d0 || image.header_end < 0x250)
        return Error::make(Errc::Invalid, "setup header of {} bytes: not a Linux bzImage header",
                           image.header_end - k_header_offset);
    if (image.relocatable && (image.kernel_alignment == 0 || (image.kernel_alignment & (image.kernel_alignment - 1))))
        return Error::make(Errc::Invalid, "kernel_alignment {:#x} is not a power of two", image.kernel_alignment);
    if (image.pref_address < (1u << 20) || image.pref_address % 4096 != 0 ||
        (image.relocatable && image.pref_address % image.kernel_alignment != 0))
        return Error::make(Errc::Invalid, "preferred load address {:#x} is not usable", image.pref_address);
    if (image.init_size == 0)
        return Error(Errc::Invalid, "init_size 0 in the setup header");
    image.kernel_size = static_cast<size_t>(file_size) - image.kernel_offset;
    if (image.init_size < image.kernel_size)
        return Error::make(Errc::Invalid, "init_size {} is smaller than the {} bytes of kernel", image.init_size,
                           image.kernel_size);
    return image;
}

Result<void> BzImage::check_fits(uint64_t low_ram) const {
    // The kernel, then room for an initrd and the kernel's own early allocations: ask for 32 MiB
    // beyond init_size, far less than any useful Linux guest has.
    constexpr uint64_t k_slack = 32ull << 20;
    uint64_t needed = load_address() + init_size + k_slack;
    if (needed > low_ram)
        return Error::make(Errc::Invalid,
                           "this kernel needs at least {} MiB of guest memory (loaded at {:#x}, {} MiB while it "
                           "boots)",
                           (needed + (1 << 20) - 1) >> 20, load_address(), (init_size + (1 << 20) - 1) >> 20);
    return ok();
}

}  // namespace colod::base
