// SPDX-License-Identifier: GPL-2.0-or-later
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <string>

#include "core/dirty_bitmap.h"
#include "core/guest_memory.h"

using namespace colod::core;

TEST_CASE("dirty bitmap sets, merges, counts and lists in order") {
    DirtyBitmap a(200), b(200);
    a.set(0);
    a.set(63);
    a.set(64);
    b.set(199);
    b.set(63);
    a.merge(b);
    CHECK(a.count() == 4);
    CHECK(a.to_list() == std::vector<uint64_t>{0, 63, 64, 199});
    CHECK(a.test(199));
    CHECK_FALSE(a.test(100));
    a.clear();
    CHECK(a.count() == 0);
}

TEST_CASE("guest memory lays RAM out around the MMIO hole and checks every slice") {
    auto memory = GuestMemory::create(64 << 20);
    REQUIRE(memory);
    REQUIRE(memory->regions().size() == 1);
    CHECK(memory->page_count() == (64 << 20) / 4096);
    CHECK(memory->slice(0, 4096, GuestMemory::Access::Read));
    CHECK(memory->slice((64 << 20) - 8, 8, GuestMemory::Access::Read));
    CHECK_FALSE(memory->slice((64 << 20) - 8, 9, GuestMemory::Access::Read));
    CHECK_FALSE(memory->slice(0xfee00000, 4, GuestMemory::Access::Read));
    CHECK_FALSE(memory->slice(~0ull - 1, 4, GuestMemory::Access::Read));
    CHECK(memory->page_index(0x5000).value() == 5);
    CHECK_FALSE(memory->page_index(64 << 20));
}

TEST_CASE("guest memory above 3 GiB continues at 4 GiB") {
    auto memory = GuestMemory::create(3ull << 30 | (16ull << 20));
    REQUIRE(memory);
    REQUIRE(memory->regions().size() == 2);
    CHECK(memory->regions()[1].guest_phys == 4ull << 30);
    CHECK(memory->regions()[1].first_page == (3ull << 30) / 4096);
    CHECK(memory->page_index(4ull << 30).value() == (3ull << 30) / 4096);
    CHECK_FALSE(memory->slice(3ull << 30, 1, GuestMemory::Access::Read));
    CHECK(memory->slice((4ull << 30) + (16ull << 20) - 1, 1, GuestMemory::Access::Read));
}

TEST_CASE("guest memory is left out of the daemon's core dumps") {
    auto memory = GuestMemory::create(8 << 20);
    REQUIRE(memory);
    // /proc/self/smaps: the mapping's header line starts with its address range, and its
    // VmFlags line lists "dd" (VM_DONTDUMP).
    char start[32];
    std::snprintf(start, sizeof start, "%lx-", reinterpret_cast<unsigned long>(memory->all().data()));
    std::ifstream smaps("/proc/self/smaps");
    REQUIRE(smaps);
    bool in_mapping = false, found = false;
    std::string flags;
    for (std::string line; std::getline(smaps, line);) {
        if (line.rfind(start, 0) == 0) {
            in_mapping = true;
            found = true;
        } else if (in_mapping && line.rfind("VmFlags:", 0) == 0) {
            flags = line;
            break;
        }
    }
    REQUIRE(found);
    INFO(flags);
    CHECK(flags.find(" dd") != std::string::npos);
}
