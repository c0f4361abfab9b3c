// SPDX-License-Identifier: GPL-2.0-or-later
#include <catch2/catch.hpp>

#include <cstring>

#include "core/guest_memory.h"
#include "core/linux_boot.h"
#include "tests/support/fake_bzimage.h"

using namespace colod::core;
namespace layout = colod::core::linux_layout;

namespace {

template <typename T>
T read_guest(GuestMemory& memory, uint64_t gpa) {
    T value{};
    auto bytes = memory.slice(gpa, sizeof(T), GuestMemory::Access::Read).value();
    std::memcpy(&value, bytes.data(), sizeof(T));
    return value;
}

std::vector<std::byte> bytes_of(std::string_view text) {
    auto span = std::as_bytes(std::span(text.data(), text.size()));
    return {span.begin(), span.end()};
}

}  // namespace

TEST_CASE("the e820 map: conventional memory, the BIOS area reserved, the rest RAM", "[linux_boot]") {
    auto memory = GuestMemory::create(256ull << 20).value();
    auto map = e820_map(memory);
    REQUIRE(map.size() == 3);
    CHECK((map[0].address == 0 && map[0].size == 0x9fc00 && map[0].type == 1));
    CHECK((map[1].address == 0x9fc00 && map[1].size == 0x100000 - 0x9fc00 && map[1].type == 2));
    CHECK((map[2].address == 0x100000 && map[2].size == (256ull << 20) - 0x100000 && map[2].type == 1));
}

TEST_CASE("a bzImage is laid out as the 64-bit boot protocol says", "[linux_boot]") {
    auto memory = GuestMemory::create(256ull << 20).value();
    colod::test::FakeBzImage kernel;
    std::vector<std::byte> initrd(3 * 4096 + 100, std::byte{0x5a});
    std::vector<std::byte> tables(512, std::byte{0xac});
    LinuxBoot boot{kernel.bytes, initrd, "console=ttyS0 quiet", tables, layout::k_acpi_tables + 0x40};
    kvm_sregs sregs_template{};
    sregs_template.apic_base = 0xfee00900;
    auto state = setup_linux_boot(memory, boot, sregs_template).value();

    // Entry: 64-bit, at load address + 0x200, RSI = the zero page, interrupts off.
    CHECK(state.regs.rip == 0x1000000 + 0x200);
    CHECK(state.regs.rsi == layout::k_boot_params);
    CHECK(state.regs.rflags == 0x2);
    CHECK(state.sregs.cs.selector == 0x10);
    CHECK(state.sregs.cs.l == 1);
    CHECK(state.sregs.ds.selector == 0x18);
    CHECK(state.sregs.ss.selector == 0x18);
    CHECK((state.sregs.efer & 0x500) == 0x500);
    CHECK(state.sregs.apic_base == 0xfee00900);  // KVM's value kept
    CHECK(read_guest<uint64_t>(memory, layout::k_gdt + 0x10) == 0x00af9b000000ffffull);
    CHECK(read_guest<uint64_t>(memory, layout::k_gdt + 0x18) == 0x00cf93000000ffffull);

    // The protected-mode kernel at 16 MiB, byte for byte.
    auto loaded = memory.slice(0x1000000, kernel.bytes.size() - 5 * 512, GuestMemory::Access::Read).value();
    CHECK(std::memcmp(loaded.data(), kernel.bytes.data() + 5 * 512, loaded.size()) == 0);

    // The zero page: the kernel's header, then the loader's fields.
    const uint64_t bp = layout::k_boot_params;
    CHECK(read_guest<uint32_t>(memory, bp + 0x202) == 0x53726448);
    CHECK(read_guest<uint16_t>(memory, bp + 0x206) == 0x020f);
    CHECK(read_guest<uint8_t>(memory, bp + 0x210) == 0xff);
    CHECK(read_guest<uint32_t>(memory, bp + 0x228) == layout::k_cmdline);
    CHECK(read_guest<uint64_t>(memory, bp + 0x070) == layout::k_acpi_tables + 0x40);
    uint32_t initrd_at = read_guest<uint32_t>(memory, bp + 0x218);
    CHECK(read_guest<uint32_t>(memory, bp + 0x21c) == initrd.size());
    CHECK(initrd_at % 4096 == 0);
    CHECK(initrd_at + initrd.size() <= (256ull << 20));
    CHECK(initrd_at + initrd.size() > (256ull << 20) - 4096);  // as high as it goes
    CHECK(read_guest<uint8_t>(memory, initrd_at) == 0x5a);
    REQUIRE(read_guest<uint8_t>(memory, bp + 0x1e8) == 3);
    CHECK(read_guest<uint64_t>(memory, bp + 0x2d0 + 20) == 0x9fc00);
    CHECK(read_guest<uint32_t>(memory, bp + 0x2d0 + 20 + 16) == 2);
    CHECK(read_guest<uint64_t>(memory, bp + 0x2d0 + 40 + 8) == (256ull << 20) - 0x100000);

    auto cmdline = memory.slice(layout::k_cmdline, 20, GuestMemory::Access::Read).value();
    CHECK(std::string(reinterpret_cast<const char*>(cmdline.data())) == "console=ttyS0 quiet");
    CHECK(read_guest<uint8_t>(memory, layout::k_acpi_tables) == 0xac);
    CHECK(read_guest<uint8_t>(memory, layout::k_acpi_tables + 511) == 0xac);
    // The page tables map the kernel's entry.
    CHECK(state.sregs.cr3 != 0);
}

TEST_CASE("what does not fit is refused before anything is written", "[linux_boot]") {
    auto memory = GuestMemory::create(64ull << 20).value();
    colod::test::FakeBzImage kernel;
    kvm_sregs sregs{};
    // 16 MiB + 4 MiB init_size + 32 MiB slack fits 64 MiB; an initrd of 50 MiB does not.
    std::vector<std::byte> initrd(50u << 20);
    auto too_big = setup_linux_boot(memory, LinuxBoot{kernel.bytes, initrd, "", {}, 0}, sregs);
    REQUIRE_FALSE(too_big.ok());
    CHECK(too_big.error().message() ==
          "an initrd of 50 MiB does not fit between the kernel (up to 20 MiB) and the end of low guest memory (64 MiB): "
          "give the guest more memory");
    CHECK(read_guest<uint32_t>(memory, 0x1000000) == 0);  // nothing loaded

    std::string long_line(0x800, 'x');
    auto too_long = setup_linux_boot(memory, LinuxBoot{kernel.bytes, {}, long_line, {}, 0}, sregs);
    REQUIRE_FALSE(too_long.ok());
    CHECK(too_long.error().message() == "kernel command line of 2048 bytes (this kernel takes at most 2047)");

    auto small = GuestMemory::create(32ull << 20).value();
    auto no_room = setup_linux_boot(small, LinuxBoot{kernel.bytes, {}, "", {}, 0}, sregs);
    REQUIRE_FALSE(no_room.ok());
    CHECK(no_room.error().message() ==
          "this kernel needs at least 52 MiB of guest memory (loaded at 0x1000000, 4 MiB while it boots)");

    auto garbage = bytes_of(std::string(8192, 'g'));
    auto not_linux = setup_linux_boot(memory, LinuxBoot{garbage, {}, "", {}, 0}, sregs);
    REQUIRE_FALSE(not_linux.ok());
    CHECK(not_linux.error().message() == "not a bzImage: no boot flag 0xAA55 and \"HdrS\" magic in the setup header");
}

TEST_CASE("Debian's kernel parses as a bootable bzImage", "[linux_boot]") {
    // The real thing when the test guest has been built (guests/linux/build.sh), else skipped.
    const char* dir = std::getenv("COLOD_LINUX_GUEST_DIR");
    std::string path = dir ? std::string(dir) + "/vmlinuz" : "";
    FILE* file = path.empty() ? nullptr : std::fopen(path.c_str(), "rb");
    if (!file) {
        WARN("COLOD_LINUX_GUEST_DIR/vmlinuz not available: only the made-up kernels were checked");
        return;
    }
    std::vector<std::byte> head(4096);
    size_t n = std::fread(head.data(), 1, head.size(), file);
    std::fseek(file, 0, SEEK_END);
    long size = std::ftell(file);
    std::fclose(file);
    head.resize(n);
    auto image = colod::base::BzImage::parse(head, static_cast<uint64_t>(size)).value();
    CHECK(image.version >= 0x020c);
    CHECK(image.relocatable);
    CHECK(image.load_address() == 0x1000000);
    CHECK(image.check_fits(256ull << 20).ok());
}
