// SPDX-License-Identifier: GPL-2.0-or-later
// The embedded kvstore guest running in a real machine (on the test backend), with its console
// on a free loopback port. The scratch helpers know how kvstore's DIRTY/CHURN fill memory: the
// n-th page it touches (n = 1, 2, ...) is scratch page (n - 1) mod S, and its first 64-bit word
// becomes n. So from INFO's pages= count P alone, every scratch page's expected word follows.
#pragma once

#include <catch2/catch.hpp>

#include <cstring>
#include <memory>
#include <string>

#include "core/elf_loader.h"
#include "core/guest_runtime.h"
#include "guests/builtin.h"
#include "tests/support/backend.h"
#include "tests/support/test_net.h"

namespace colod::test {

inline std::span<const std::byte> kvstore_image() {
    auto image = guests::builtin_image("kvstore");
    REQUIRE(image);
    return *image;
}

struct KvstoreGuest {
    std::unique_ptr<core::GuestRuntime> runtime;
    uint64_t image_end = 0;

    static KvstoreGuest boot(uint64_t memory_bytes = 64ull << 20, bool start = true) {
        KvstoreGuest guest;
        core::RuntimeOptions options;
        options.machine.memory_bytes = memory_bytes;
        options.machine.backend = test_backend();
        options.console.host = "127.0.0.1";
        options.console.port = 0;
        auto runtime = core::GuestRuntime::create(options);
        REQUIRE(runtime);
        guest.runtime = std::move(runtime).value();
        auto parsed = core::parse_elf(kvstore_image());
        REQUIRE(parsed);
        guest.image_end = parsed->end;
        if (start) {
            REQUIRE(guest.runtime->boot(kvstore_image(), ""));
            REQUIRE(guest.runtime->open_console());
            REQUIRE(guest.runtime->start());
        }
        return guest;
    }

    core::Machine& machine() { return runtime->machine(); }

    LineClient client() {
        REQUIRE(runtime->console());
        auto c = LineClient::connect("127.0.0.1", runtime->console()->port());
        REQUIRE(c);
        return std::move(*c);
    }

    // Scratch pages in kvstore's order (the RAM above the image; one region below 3 GiB here).
    uint64_t scratch_pages() { return (machine().memory().size() - image_end) / core::k_page_size; }
    uint64_t scratch_word(uint64_t index) {
        uint64_t word = 0;
        std::memcpy(&word, machine().memory().page(image_end / core::k_page_size + index), sizeof(word));
        return word;
    }
    // Checks every scratch page against the pattern that P touches leave. The machine must be
    // paused (or the guest idle). Returns the number of mismatching pages.
    uint64_t scratch_mismatches(uint64_t touches) {
        uint64_t pages = scratch_pages(), bad = 0;
        for (uint64_t k = 0; k < pages; ++k) {
            uint64_t expected = touches > k ? touches - ((touches - 1 - k) % pages) : 0;
            if (scratch_word(k) != expected)
                ++bad;
        }
        return bad;
    }
};

// Parses "ticks=.. keys=.. pages=.." into its three numbers.
struct Info {
    uint64_t ticks = 0, keys = 0, pages = 0;
};
inline Info parse_info(const std::string& line) {
    Info info;
    REQUIRE(std::sscanf(line.c_str(), "ticks=%lu keys=%lu pages=%lu", &info.ticks, &info.keys, &info.pages) == 3);
    return info;
}

}  // namespace colod::test
