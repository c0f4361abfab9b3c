// SPDX-License-Identifier: GPL-2.0-or-later
#include <catch2/catch.hpp>

#include <elf.h>

#include <cstring>
#include <random>

#include "core/elf_loader.h"
#include "core/guest_memory.h"
#include "tests/support/tiny_elf.h"

using namespace colod::core;

namespace {

// A minimal valid image: one R+X segment of 16 code bytes at 1 MiB with a 8 KiB memory size.
std::vector<std::byte> make_elf(uint64_t paddr = 0x100000, uint64_t entry = 0x100000) {
    std::vector<uint8_t> code(16);
    for (size_t i = 0; i < code.size(); ++i)
        code[i] = static_cast<uint8_t>(0xa0 + i);
    return colod::test::make_elf(code, paddr, 0x2000, entry);
}

Elf64_Phdr* phdr(std::vector<std::byte>& file) {
    return reinterpret_cast<Elf64_Phdr*>(file.data() + sizeof(Elf64_Ehdr));
}
Elf64_Ehdr* ehdr(std::vector<std::byte>& file) { return reinterpret_cast<Elf64_Ehdr*>(file.data()); }

std::string parse_error(const std::vector<std::byte>& file) {
    auto result = parse_elf(file);
    REQUIRE_FALSE(result);
    return result.error().message();
}

}  // namespace

TEST_CASE("ELF loader loads segments and zero-fills the tail") {
    auto file = make_elf();
    auto image = parse_elf(file);
    REQUIRE(image);
    CHECK(image->entry == 0x100000);
    CHECK(image->end == 0x102000);
    auto memory = GuestMemory::create(16 << 20);
    REQUIRE(memory);
    std::memset(memory->all().data() + 0x100000, 0xee, 0x2000);
    REQUIRE(load_elf(*image, file, *memory));
    auto loaded = memory->slice(0x100000, 0x2000, GuestMemory::Access::Read);
    REQUIRE(loaded);
    CHECK((*loaded)[0] == std::byte{0xa0});
    CHECK((*loaded)[15] == std::byte{0xaf});
    CHECK((*loaded)[16] == std::byte{0});
    CHECK((*loaded)[0x1fff] == std::byte{0});
}

TEST_CASE("ELF loader names what is wrong") {
    auto good = make_elf();
    {
        std::vector<std::byte> tiny(good.begin(), good.begin() + 10);
        CHECK_THAT(parse_error(tiny), Catch::Contains("too short"));
    }
    {
        auto f = good;
        f[0] = std::byte{'X'};
        CHECK_THAT(parse_error(f), Catch::Contains("no ELF magic"));
    }
    {
        auto f = good;
        ehdr(f)->e_machine = EM_AARCH64;
        CHECK_THAT(parse_error(f), Catch::Contains("not x86-64"));
    }
    {
        auto f = good;
        ehdr(f)->e_type = ET_DYN;
        CHECK_THAT(parse_error(f), Catch::Contains("ET_EXEC"));
    }
    {
        auto f = good;
        ehdr(f)->e_phoff = 1 << 30;
        CHECK_THAT(parse_error(f), Catch::Contains("outside the file"));
    }
    {
        auto f = good;
        phdr(f)->p_filesz = 4096;
        CHECK_THAT(parse_error(f), Catch::Contains("outside the"));
    }
    {
        auto f = good;
        phdr(f)->p_filesz = 0x3000;
        CHECK_THAT(parse_error(f), Catch::Contains("exceeds memory size"));
    }
    {
        auto f = make_elf(0x1000, 0x1000);
        CHECK_THAT(parse_error(f), Catch::Contains("boot area"));
    }
    {
        auto f = make_elf(0x100000, 0x200000);
        CHECK_THAT(parse_error(f), Catch::Contains("entry point"));
    }
    {
        auto f = good;
        phdr(f)->p_paddr = ~0ull - 0x100;
        CHECK_THAT(parse_error(f), Catch::Contains("overflows"));
    }
    {
        auto f = good;
        phdr(f)->p_type = PT_NOTE;
        CHECK_THAT(parse_error(f), Catch::Contains("no loadable segment"));
    }
}

TEST_CASE("ELF segment beyond RAM is refused at load") {
    auto file = make_elf(0x2000000, 0x2000000);  // 32 MiB, in a 16 MiB guest
    auto image = parse_elf(file);
    REQUIRE(image);
    auto memory = GuestMemory::create(16 << 20);
    REQUIRE(memory);
    auto loaded = load_elf(*image, file, *memory);
    REQUIRE_FALSE(loaded);
    CHECK_THAT(loaded.error().message(), Catch::Contains("does not fit"));
}

TEST_CASE("ELF loader survives hundreds of random mutations and truncations") {
    auto good = make_elf();
    auto memory = GuestMemory::create(16 << 20);
    REQUIRE(memory);
    std::mt19937_64 rng(12345);
    int accepted = 0;
    for (int round = 0; round < 500; ++round) {
        auto f = good;
        int flips = 1 + static_cast<int>(rng() % 8);
        for (int i = 0; i < flips; ++i)
            f[rng() % f.size()] = std::byte{static_cast<unsigned char>(rng())};
        if (rng() % 4 == 0)
            f.resize(rng() % f.size());
        auto image = parse_elf(f);
        if (image) {
            ++accepted;
            // Whatever parses must load or fail cleanly, never write outside guest RAM.
            (void)load_elf(*image, f, *memory);
        }
    }
    INFO("mutations accepted: " << accepted);
    CHECK(accepted < 500);
}
