// SPDX-License-Identifier: GPL-2.0-or-later
// A made-up bzImage: a Linux setup header as Debian's 6.1 kernel has it (boot protocol 2.15,
// relocatable, 64-bit entry, loaded at 16 MiB) in front of `payload` bytes of "kernel". Tests
// change fields to break one rule at a time.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace colod::test {

struct FakeBzImage {
    std::vector<std::byte> bytes;

    explicit FakeBzImage(size_t payload = 64 * 1024, uint8_t setup_sects = 4) {
        bytes.resize((setup_sects + 1u) * 512u + payload);
        put<uint8_t>(0x1f1, setup_sects);
        put<uint16_t>(0x1fe, 0xaa55);
        put<uint8_t>(0x201, 0x6a);  // header runs to 0x26c
        put<uint32_t>(0x202, 0x53726448);
        put<uint16_t>(0x206, 0x020f);
        put<uint8_t>(0x211, 0x01);             // LOADED_HIGH
        put<uint32_t>(0x22c, 0x7fffffff);      // initrd_addr_max
        put<uint32_t>(0x230, 0x200000);        // kernel_alignment
        put<uint8_t>(0x234, 1);                // relocatable
        put<uint16_t>(0x236, 0x7f);            // XLF_KERNEL_64 and friends
        put<uint32_t>(0x238, 0x7ff);           // cmdline_size
        put<uint64_t>(0x258, 0x1000000);       // pref_address
        put<uint32_t>(0x260, 4u << 20);        // init_size
        for (size_t i = (setup_sects + 1u) * 512u; i < bytes.size(); ++i)
            bytes[i] = static_cast<std::byte>(i * 7 + 1);
    }

    template <typename T>
    void put(size_t offset, T value) {
        std::memcpy(bytes.data() + offset, &value, sizeof(T));
    }
    std::string text() const { return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()); }
};

}  // namespace colod::test
