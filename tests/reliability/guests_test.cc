// SPDX-License-Identifier: GPL-2.0-or-later
// Hostile guests, resource bounds and least privilege, each against a real protected pair:
//
//   - a guest that writes garbage to (and reads) every I/O port, forever;
//   - a guest that floods the console without looking whether the UART is ready, with a
//     console client that never reads: held output stays bounded (max-held-output forces a
//     checkpoint, twice that shows the UART busy), the client that never reads is dropped, a
//     reading client keeps getting whole lines;
//   - a guest that triple-faults, and one that halts with interrupts off, once protected: both
//     daemons stop, no takeover, the reason is logged on both sides;
//   - kvstore dirtying all of its scratch memory on every tick (CHURN at the maximum);
//   - the control socket is 0600 and owned by the daemon's user; a key file others may read
//     keeps the daemon from starting.
//
// "Healthy" means: the daemon answers `coloctl status`, the pair stays protected (checkpoints
// keep committing), both sides hold the same memory at a checkpoint, and the daemon's largest
// resident set (VmHWM) stays below a bound. Each scenario adds a row to the reliability table.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/reliability/common.h"
#include "tests/support/tiny_elf.h"

using namespace colod;
using namespace colod::test;
using Side = Pair::Side;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

// The guests, as long-mode code loaded at 1 MiB (boot enters it with paging on, no IDT).
// flood: forever { 63 x 'x', '\n' } to COM1, never reading LSR.
const std::vector<uint8_t> k_flood = {0xba, 0xf8, 0x03, 0x00, 0x00, 0xb9, 0x3f, 0x00, 0x00, 0x00, 0xb0,
                                      0x78, 0xee, 0xff, 0xc9, 0x75, 0xf9, 0xb0, 0x0a, 0xee, 0xeb, 0xef};
// The same, waiting for LSR.THRE before every byte, as a driver should.
const std::vector<uint8_t> k_flood_polling = {
    0xb9, 0x3f, 0x00, 0x00, 0x00, 0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x20, 0x74, 0xf7, 0x66,
    0xba, 0xf8, 0x03, 0xb0, 0x78, 0xee, 0xff, 0xc9, 0x75, 0xec, 0x66, 0xba, 0xfd, 0x03, 0xec,
    0xa8, 0x20, 0x74, 0xf7, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x0a, 0xee, 0xeb, 0xd5};
// garbage: forever, for every port 0..0xffff except colod's own 0x500..0x50f (the power port):
// out al; in al; out eax; in eax, with values from a running sum.
const std::vector<uint8_t> k_garbage = {0x31, 0xdb, 0x31, 0xd2, 0x89, 0xd0, 0x25, 0xf0, 0xff, 0x00, 0x00,
                                        0x3d, 0x00, 0x05, 0x00, 0x00, 0x74, 0x08, 0x89, 0xd8, 0x31, 0xd0,
                                        0xee, 0xec, 0xef, 0xed, 0x81, 0xc3, 0xb9, 0x79, 0x37, 0x9e, 0xff,
                                        0xc2, 0x81, 0xfa, 0x00, 0x00, 0x01, 0x00, 0x72, 0xda, 0xeb, 0xd6};
// Both wait for a byte on COM1 (poll LSR.DR), then: ud2 without an IDT (a triple fault), or
// cli; hlt.
const std::vector<uint8_t> k_triple_on_input = {0xba, 0xfd, 0x03, 0x00, 0x00, 0xec, 0xa8, 0x01, 0x74, 0xfb, 0x0f, 0x0b};
const std::vector<uint8_t> k_halt_on_input = {0xba, 0xfd, 0x03, 0x00, 0x00, 0xec, 0xa8, 0x01, 0x74, 0xfb, 0xfa, 0xf4};

// A daemon with a 64 MiB guest stays below this however the guest behaves: guest RAM, the
// primary's capture buffer (at most RAM) and pre-copy copy (8 MiB), or the secondary's staging
// (at most RAM), plus code, threads and buffers (about 15 MiB).
constexpr uint64_t k_rss_bound_kib = 224 * 1024;

// Writes a tiny guest to a file the pair's config can name.
std::string write_image(const std::string& name, const std::vector<uint8_t>& code) {
    auto path = std::filesystem::temp_directory_path() / fmt::format("colod-guest-{}-{}.elf", name, ::getpid());
    auto elf = make_elf(code);
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(elf.data()),
                                                static_cast<std::streamsize>(elf.size()));
    return path.string();
}

uint64_t status_number(Pair& pair, Side side, const std::string& key) {
    auto json = pair.control(side, "status --json");
    return json ? json_number(*json, key).value_or(0) : 0;
}

// The pair protects the guest and keeps committing checkpoints for `how_long`, while both
// daemons answer status; returns how many checkpoints committed meanwhile.
uint64_t stays_protected(Pair& pair, std::chrono::milliseconds how_long, PeakMemory& peak) {
    uint64_t before = status_number(pair, Side::Primary, "checkpoints");
    auto until = Clock::now() + how_long;
    while (Clock::now() < until) {
        sample_memory(pair, peak);
        auto status = pair.status(Side::Primary);
        REQUIRE(status);
        CHECK(status->state == "protected");
        REQUIRE(pair.status(Side::Secondary));
        std::this_thread::sleep_for(100ms);
    }
    return status_number(pair, Side::Primary, "checkpoints") - before;
}

}  // namespace

TEST_CASE("a guest writing garbage to every port leaves both daemons healthy and the pair protected",
          "[reliability][guest]") {
    PairOptions options;
    options.image = write_image("garbage", k_garbage);
    Pair pair(options);
    PeakMemory peak;
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected", 30s));
    uint64_t checkpoints = stays_protected(pair, 3s, peak);
    CHECK(checkpoints >= 10);
    auto digests = compare_digests(pair);
    INFO("digests: primary " << digests.primary << ", secondary " << digests.secondary);
    CHECK(digests.equal());
    CHECK(pair.primary()->wait(0ms) == std::nullopt);
    CHECK(pair.secondary()->wait(0ms) == std::nullopt);
    CHECK(peak.peak_kib() < k_rss_bound_kib);
    ReliabilityReport::instance().add("guest: garbage to every port", 1, 0, 0,
                                      digests.equal() && checkpoints >= 10 ? 0 : 1, peak.peak_kib());
    std::filesystem::remove(options.image);
}

// Runs a flooding guest under a protected pair with max-held-output = 64K; see the test cases.
static void flood(const std::string& name, const std::vector<uint8_t>& code, bool polls) {
    PairOptions options;
    options.image = write_image("flood", code);
    options.checkpoint_interval = "1s";  // only the held-output limit makes checkpoints come sooner
    options.extra_replication = "max-held-output = 64K\n";
    Pair pair(options);
    PeakMemory peak;
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected", 30s));

    // One client never reads; another reads everything and checks the lines are whole.
    auto sleeper = pair.console(Side::Primary);
    REQUIRE(sleeper);
    auto reader = pair.console(Side::Primary);
    REQUIRE(reader);
    uint64_t lines = 0, bad_lines = 0, max_held = 0;
    std::string bad_text;
    // At least 4 s, and until the client that never reads has been dropped (its kernel socket
    // buffers fill first).
    auto started = Clock::now();
    auto next_sample = Clock::now();
    auto dropped = [&] { return pair.read_log("primary").find("behind the console output") != std::string::npos; };
    while (Clock::now() < started + 4s || (Clock::now() < started + 60s && !dropped())) {
        auto line = reader->line(2s);
        REQUIRE(line);
        ++lines;
        if (lines > 1 && *line != std::string(63, 'x')) {  // the first may start mid-line
            if (++bad_lines <= 5)
                bad_text += fmt::format("line {}: '{}' ({} bytes)\n", lines, *line, line->size());
        }
        if (Clock::now() >= next_sample) {
            max_held = std::max(max_held, status_number(pair, Side::Primary, "held_output_bytes"));
            sample_memory(pair, peak);
            next_sample = Clock::now() + 100ms;
        }
    }
    uint64_t checkpoints = status_number(pair, Side::Primary, "checkpoints");
    std::string log = pair.read_log("primary");
    INFO(bad_text);
    INFO("lines " << lines << ", bad " << bad_lines << ", max held " << max_held << " bytes, checkpoints "
                  << checkpoints);
    // A guest that waits for THRE loses nothing; one that does not loses what it wrote while
    // the UART showed busy (its lines come out short), as on the chip.
    if (polls)
        CHECK(bad_lines == 0);
    // A 1 s interval: the limit forced the rest.
    double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    CHECK(checkpoints > static_cast<uint64_t>(seconds) * 2);
    // The limit forces a checkpoint at 64 KiB; at 128 KiB the UART shows busy. One write of a
    // few bytes may land past it.
    CHECK(max_held <= 2 * 64 * 1024 + 64);
    CHECK(log.find("behind the console output") != std::string::npos);
    CHECK(peak.peak_kib() < k_rss_bound_kib);
    REQUIRE(pair.wait_state(Side::Primary, "protected"));
    auto digests = compare_digests(pair);
    CHECK(digests.equal());
    uint64_t violations = ((!polls || bad_lines == 0) && max_held <= 2 * 64 * 1024 + 64 && digests.equal()) ? 0 : 1;
    ReliabilityReport::instance().add("guest: console flood (" + name + "), held output bound", 1, 0, 0, violations, peak.peak_kib());
    ReliabilityReport::instance().add("console client that never reads (" + name + ")", 1, 0, 0,
                                      log.find("behind the console output") == std::string::npos, peak.peak_kib());
    std::filesystem::remove(options.image);
}

TEST_CASE("a guest flooding the console and waiting for THRE is slowed: held output bounded, nothing lost, a "
          "client that never reads dropped", "[reliability][guest][bounds]") {
    flood("polling THRE", k_flood_polling, true);
}

TEST_CASE("a guest flooding the console without looking at the UART: held output bounded, a client that never "
          "reads dropped", "[reliability][guest][bounds]") {
    flood("ignoring THRE", k_flood, false);
}

TEST_CASE("a protected guest that triple-faults or halts with interrupts off stops the pair without a takeover",
          "[reliability][guest]") {
    struct Case {
        std::string name, reason;
        const std::vector<uint8_t>* code;
    };
    for (const Case& c : {Case{"triple-fault", "triple-fault", &k_triple_on_input},
                          Case{"halt with interrupts off", "halted", &k_halt_on_input}}) {
        DYNAMIC_SECTION(c.name) {
            PairOptions options;
            options.image = write_image("stop", *c.code);
            Pair pair(options);
            PeakMemory peak;
            pair.start_secondary();
            pair.start_primary();
            REQUIRE(pair.wait_state(Side::Primary, "protected", 30s));
            REQUIRE(pair.wait_state(Side::Secondary, "standby"));
            sample_memory(pair, peak);
            auto console = pair.console(Side::Primary);
            REQUIRE(console);
            console->send("!\n");  // the console feeds the guest whole lines
            // The primary's guest stops: it says why, tells the secondary, and exits 1 (the
            // guest failed; systemd may restart it: a fresh boot, not a copy of the failed one).
            CHECK(pair.primary()->exit_code(15s) == 1);
            int secondary_exit = pair.secondary()->exit_code(15s);
            std::string primary_log = pair.read_log("primary"), secondary_log = pair.read_log("secondary");
            INFO("primary log:\n" << primary_log << "\nsecondary log:\n" << secondary_log);
            CHECK_THAT(event_line(primary_log, "guest-stopped").text, Catch::Contains(c.reason));
            CHECK(event_line(secondary_log, "guest-shutdown"));
            CHECK_FALSE(event_line(secondary_log, "failover-begin"));
            CHECK(secondary_exit == 0);
            bool right = pair.primary()->exit_code() == 1 && secondary_exit == 0 &&
                         !event_line(secondary_log, "failover-begin");
            ReliabilityReport::instance().add("guest: " + c.name + " while protected", 1, 0, 0, right ? 0 : 1,
                                              peak.peak_kib());
            std::filesystem::remove(options.image);
        }
    }
}

TEST_CASE("a guest dirtying all its scratch memory on every tick stays protected with bounded memory",
          "[reliability][guest][bounds]") {
    Pair pair;
    PeakMemory peak;
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected", 30s));
    auto console = pair.console(Side::Primary);
    REQUIRE(console);
    // CHURN beyond the scratch area names its size.
    auto refused = console->command("CHURN 100000000");
    REQUIRE(refused);
    auto at = refused->find("scratch memory of ");
    REQUIRE(at != std::string::npos);
    uint64_t scratch = std::stoull(refused->substr(at + 18));
    REQUIRE(console->command(fmt::format("CHURN {}", scratch)) == "OK");
    uint64_t dirty_before = status_number(pair, Side::Primary, "total");
    uint64_t checkpoints = stays_protected(pair, 3s, peak);
    uint64_t dirtied = status_number(pair, Side::Primary, "total") - dirty_before;
    INFO("scratch " << scratch << " pages, " << checkpoints << " checkpoints, " << dirtied << " pages sent");
    CHECK(checkpoints >= 5);
    CHECK(dirtied >= scratch);
    REQUIRE(console->command("CHURN 0") == "OK");
    auto digests = compare_digests(pair);
    CHECK(digests.equal());
    CHECK(peak.peak_kib() < k_rss_bound_kib);
    ReliabilityReport::instance().add("guest: dirties all scratch RAM every tick", 1, 0, 0,
                                      digests.equal() && checkpoints >= 5 ? 0 : 1, peak.peak_kib());
}

TEST_CASE("least privilege: the control socket is 0600 and the daemon's own; a readable key stops the daemon",
          "[reliability][privilege]") {
    Pair pair;
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected", 30s));
    uint64_t violations = 0;
    for (Side side : {Side::Primary, Side::Secondary}) {
        struct stat st {};
        REQUIRE(::stat(pair.control_path(side).c_str(), &st) == 0);
        CHECK(S_ISSOCK(st.st_mode));
        CHECK((st.st_mode & 07777) == 0600);
        CHECK(st.st_uid == ::geteuid());
        if ((st.st_mode & 07777) != 0600 || st.st_uid != ::geteuid())
            ++violations;
    }
    pair.primary()->signal(SIGTERM);
    pair.primary()->exit_code();
    pair.secondary()->signal(SIGTERM);
    pair.secondary()->exit_code();

    std::filesystem::permissions(pair.dir() / "demo.key", std::filesystem::perms::group_read,
                                 std::filesystem::perm_options::add);
    auto& refused = pair.start_primary();
    int code = refused.exit_code(15s);
    std::string log = pair.read_log("primary");
    INFO(log);
    CHECK(code == 2);
    CHECK_THAT(log, Catch::Contains("demo.key"));
    if (code != 2)
        ++violations;
    ReliabilityReport::instance().add("least privilege: socket mode, key file mode", 3, 0, 0, violations, 0);
}
