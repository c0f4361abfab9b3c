// SPDX-License-Identifier: GPL-2.0-or-later
// The engine's platform extension (kv_set_extension in guests/kvstore/kvstore.h), which kvstored
// uses to run CHURN on several CPUs and to add POWEROFF: without it the engine answers exactly as
// before, with it CHURN and unknown commands go to the platform and INFO adds its pages.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "guests/kvstore/kvstore.h"

namespace {

std::string g_output;
uint64_t g_ticks = 0;

std::vector<uint64_t> g_churn_calls;
uint64_t g_platform_pages = 0;
std::vector<std::string> g_offered;
bool g_handle = false;

}  // namespace

extern "C" void kv_platform_write(const char* bytes, size_t len) {
    g_output.append(bytes, len);
}

extern "C" uint64_t kv_platform_ticks(void) {
    return g_ticks;
}

namespace {

void record_churn(uint64_t pages) {
    g_churn_calls.push_back(pages);
}

uint64_t platform_pages() {
    return g_platform_pages;
}

int offer(const char* line, size_t len) {
    g_offered.emplace_back(line, len);
    if (!g_handle)
        return 0;
    kv_platform_write("HANDLED\n", 8);
    return 1;
}

// 64 page-aligned pages of scratch, registered after each reset.
struct Scratch {
    Scratch() {
        // SAFETY: the size is a multiple of the alignment, as aligned_alloc requires.
        base = std::aligned_alloc(KV_PAGE_SIZE, 64 * KV_PAGE_SIZE);
        REQUIRE(base != nullptr);
    }
    ~Scratch() { std::free(base); }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    void* base;
};

struct Engine {
    Engine() {
        kv_reset();
        REQUIRE(kv_scratch_add(scratch.base, 64) == 0);
        g_output.clear();
        g_ticks = 0;
        g_churn_calls.clear();
        g_platform_pages = 0;
        g_offered.clear();
        g_handle = false;
    }
    std::string run(std::string_view script) {
        g_output.clear();
        kv_feed(reinterpret_cast<const uint8_t*>(script.data()), script.size());
        return g_output;
    }
    Scratch scratch;
};

const kv_extension k_full = {record_churn, platform_pages, offer};

// Every reply but those of CHURN and unknown commands is the engine's own.
constexpr std::string_view k_script =
    "PING\nSET a 1\nINCR a\nGET a\nDEL a\nGET a\nDIRTY 5\nINFO\nCHURN 65\nCHURN x\n"
    "FROB\nPOWEROFF\n\n   \nSET\n";

}  // namespace

TEST_CASE("without an extension, or with an idle one, the replies are the engine's own",
          "[kvstore]") {
    Engine e;
    const std::string plain = e.run(k_script);
    CHECK(g_offered.empty());

    Engine e2;
    kv_set_extension(&k_full);
    CHECK(e2.run(k_script) == plain);
    // Refused CHURNs never reach the platform; unknown commands are offered, whole.
    CHECK(g_churn_calls.empty());
    CHECK(g_offered == std::vector<std::string>{"FROB", "POWEROFF"});

    Engine e3;
    kv_set_extension(&k_full);
    kv_set_extension(nullptr);
    CHECK(e3.run(k_script) == plain);
    CHECK(g_offered.empty());
}

TEST_CASE("CHURN goes to the platform, and INFO adds the platform's pages", "[kvstore]") {
    Engine e;
    kv_set_extension(&k_full);
    CHECK(e.run("CHURN 7\n") == "OK\n");
    CHECK(g_churn_calls == std::vector<uint64_t>{7});
    // The engine's own rounds stay off: nothing is due, whatever the tick.
    g_ticks = 5;
    CHECK(kv_churn_due(g_ticks) == 0);
    kv_churn(g_ticks);
    CHECK(e.run("DIRTY 3\n") == "OK 3\n");
    g_platform_pages = 700;
    CHECK(e.run("INFO\n") == "ticks=5 keys=0 pages=703\n");
    CHECK(kv_pages_dirtied() == 703);
    CHECK(e.run("CHURN 0\n") == "OK\n");
    CHECK(g_churn_calls == std::vector<uint64_t>{7, 0});
}

TEST_CASE("a command the platform handles gets the platform's reply only", "[kvstore]") {
    Engine e;
    kv_set_extension(&k_full);
    g_handle = true;
    CHECK(e.run("  poweroff  \r\nPING\n") == "HANDLED\nPONG\n");
    CHECK(g_offered == std::vector<std::string>{"  poweroff  "});
    // Known commands, errors of the line and usage errors are never offered.
    CHECK(e.run("PING x\n\x01\n") == "ERR usage: PING\nERR binary data in line\n");
    CHECK(g_offered.size() == 1);
}

TEST_CASE("kv_reset removes the extension", "[kvstore]") {
    Engine e;
    kv_set_extension(&k_full);
    kv_reset();
    REQUIRE(kv_scratch_add(e.scratch.base, 64) == 0);
    g_platform_pages = 50;
    CHECK(e.run("CHURN 2\nFROB\nINFO\n") == "OK\nERR unknown command\nticks=0 keys=0 pages=0\n");
    CHECK(g_churn_calls.empty());
    CHECK(g_offered.empty());
}
