// SPDX-License-Identifier: GPL-2.0-or-later
#include <catch2/catch.hpp>

#include <cstring>

#include "core/dirty_bitmap.h"
#include "core/guest_memory.h"
#include "core/page_capture.h"

using namespace colod::core;

namespace {

void fill(GuestMemory& memory, uint64_t page, uint8_t value, size_t offset = 0) {
    std::memset(memory.page(page) + offset, value, k_page_size - offset);
}

bool page_is(std::span<const std::byte> bytes, const std::byte* expected) {
    return bytes.size() == k_page_size && std::memcmp(bytes.data(), expected, k_page_size) == 0;
}

}  // namespace

TEST_CASE("a capture copies the dirty pages with data and only notes the zero ones") {
    auto memory = GuestMemory::create(16 << 20);
    REQUIRE(memory);
    DirtyBitmap dirty(memory->page_count());
    // Pages with data (one only in its last byte), and pages dirtied but all zero.
    fill(*memory, 3, 0xaa);
    fill(*memory, 100, 0x55, k_page_size - 1);
    fill(*memory, 4095, 0x01);
    for (uint64_t page : {3, 7, 100, 2000, 4095})
        dirty.set(page);

    PageCapture capture;
    size_t grown = capture.capture(*memory, dirty);
    CHECK(grown > 0);  // an empty buffer grows to hold the three pages with data
    REQUIRE(capture.size() == 5);
    CHECK(capture.zero_pages() == 2);
    CHECK(std::vector<uint64_t>(capture.pages().begin(), capture.pages().end()) ==
          std::vector<uint64_t>{3, 7, 100, 2000, 4095});
    // The capture is the paused view: later writes to RAM do not change it.
    std::vector<std::byte> page3(memory->page(3), memory->page(3) + k_page_size);
    std::vector<std::byte> page100(memory->page(100), memory->page(100) + k_page_size);
    std::vector<std::byte> zero(k_page_size);
    fill(*memory, 3, 0xff);
    fill(*memory, 7, 0xff);
    CHECK(page_is(capture.bytes_of(3), page3.data()));
    CHECK(page_is(capture.bytes_of(7), zero.data()));
    CHECK(page_is(capture.bytes_of(100), page100.data()));
    CHECK(page_is(capture.bytes_of(2000), zero.data()));
    CHECK(capture.bytes_of(4095)[0] == std::byte{0x01});

    // Once reserved ahead, a capture of the same size does not grow the buffer inside the pause.
    capture.reserve_ahead(memory->size());
    CHECK(capture.capture(*memory, dirty) == 0);
    CHECK(capture.zero_pages() == 1);  // page 7 has data now
    CHECK(capture.bytes_of(7)[0] == std::byte{0xff});
}

TEST_CASE("a capture of a whole cleared guest holds only the pages written since") {
    // A guest that rebooted in place: all of RAM cleared and dirty, a few pages written again.
    uint64_t bytes = 64 << 20;
    auto memory = GuestMemory::create(bytes);
    REQUIRE(memory);
    for (uint64_t page = 0; page < memory->page_count(); page += 7)
        fill(*memory, page, 0x42);
    memory->clear();
    for (uint64_t page = 0; page < memory->page_count(); ++page)
        REQUIRE(memory->page(page)[page % k_page_size] == std::byte{0});
    fill(*memory, 10, 0x10);
    fill(*memory, 11, 0x11);

    DirtyBitmap dirty(memory->page_count());
    for (uint64_t page = 0; page < memory->page_count(); ++page)
        dirty.set(page);
    PageCapture capture;
    capture.capture(*memory, dirty);
    CHECK(capture.size() == memory->page_count());
    CHECK(capture.zero_pages() == memory->page_count() - 2);
    CHECK(capture.capacity() < bytes / 8);  // two pages of data, not the guest's size
    CHECK(capture.bytes_of(11)[100] == std::byte{0x11});
    CHECK(capture.bytes_of(12)[100] == std::byte{0});
}
