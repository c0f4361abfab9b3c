// SPDX-License-Identifier: GPL-2.0-or-later
// Linux guests end to end, on real KVM only: Debian's kernel and the project's initramfs
// (guests/linux: busybox and kvstored, the kvstore protocol on ttyS0) under the real daemons.
// Where the host has no /dev/kvm, tests/run.sh runs this inside the nested KVM
// (tests/hostkvm/nested.sh); without KVM at all it exits 77 (CTest: skipped).
//
// Environment: COLOD_LINUX_GUEST_DIR (vmlinuz and initrd.cpio.gz; default: the build tree's),
// COLOD_LINUX_KILLS (kill rounds of the failover test, default 10).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <regex>
#include <thread>

#include "tests/integration/netns/guest_lan.h"
#include "tests/integration/netns/netns.h"
#include "tests/support/incr_client.h"
#include "tests/support/linux_guest.h"
#include "tests/support/pair.h"

using namespace colod;
using namespace colod::test;
using Side = Pair::Side;

namespace {

// Kernel messages that mean the guest is unwell.
const std::regex k_unhealthy(
    "soft lockup|hard LOCKUP|rcu_.*stall|rcu: INFO|blocked for more than|clocksource.*unstable|"
    "Marking clocksource|Oops|BUG:|Kernel panic|general protection|Call Trace",
    std::regex::icase);

// A console the test keeps for a whole guest's life: every line it reads is kept, so the test can
// grep the kernel's messages at the end.
class GuestConsole {
public:
    // `record`: a file in the pair's folder that gets every line too, as it comes (a run that
    // hangs, kept with COLOD_KEEP_TEST_DIRS=1, shows how far the guest got).
    GuestConsole(LineClient client, const std::filesystem::path& record)
        : m_client(std::move(client)), m_record(record, std::ios::app) {}

    // The next line, recorded.
    std::optional<std::string> line(std::chrono::milliseconds timeout) {
        auto line = m_client.line(timeout);
        if (line) {
            m_seen += *line + "\n";
            m_record << *line << std::endl;
        }
        return line;
    }
    // Waits for a line starting with `prefix` (lines before it are kept, not checked); nullopt
    // at the timeout or once the console is closed.
    std::optional<std::string> wait_for(std::string_view prefix, std::chrono::milliseconds timeout) {
        auto deadline = std::chrono::steady_clock::now() + scaled(timeout);
        while (std::chrono::steady_clock::now() < deadline) {
            auto next = line(std::chrono::seconds(1));
            if (next && next->starts_with(prefix))
                return next;
            if (m_client.ended())
                return std::nullopt;  // the daemon closed the console: the guest is gone
        }
        return std::nullopt;
    }
    // Once kvstored answers (wait_kvstored), every line read kept.
    bool ready(std::chrono::milliseconds timeout) { return wait_kvstored(m_client, timeout, &m_seen); }
    // The reply to a command: the next line that is not one of the kernel's messages (those
    // are kept for check_healthy).
    std::optional<std::string> command(std::string_view text, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
        if (!m_client.send(std::string(text) + "\n"))
            return std::nullopt;
        auto reply = line(timeout);
        while (reply && kernel_message(*reply))
            reply = line(timeout);
        return reply;
    }
    const std::string& seen() const { return m_seen; }
    LineClient& client() { return m_client; }

private:
    LineClient m_client;
    std::string m_seen;
    std::ofstream m_record;
};

std::optional<GuestConsole> open_console(Pair& pair, Side side) {
    auto client = pair.console(side, std::chrono::seconds(60));
    if (!client)
        return std::nullopt;
    return GuestConsole(std::move(*client),
                        pair.dir() / (side == Side::Primary ? "console-primary.log" : "console-secondary.log"));
}

// Waits for the guest's initramfs to say how many CPUs the kernel brought online and for
// kvstored to answer (`boot`: "boot" or "reboot", for the message); fails with the guest's
// console and the end of `daemon`'s log when either does not come. Returns the CPU line.
std::string await_kvstored(GuestConsole& console, std::string_view boot, const Pair& pair,
                           const std::string& daemon = "primary") {
    auto cpus = console.wait_for("kvstored-init: ", std::chrono::minutes(3));
    if (!cpus)
        FAIL("the guest's initramfs never ran after its " << boot << "; its console:\n"
                                                          << console.seen() << "\nthe end of " << daemon
                                                          << "'s log:\n" << pair.log_tail(daemon, 8));
    if (!console.ready(std::chrono::minutes(2)))
        FAIL("kvstored never answered after the guest's " << boot << "; its console:\n"
                                                          << console.seen() << "\nthe end of " << daemon
                                                          << "'s log:\n" << pair.log_tail(daemon, 8));
    return *cpus;
}

std::string cpus_online(uint32_t vcpus) { return fmt::format("kvstored-init: {} CPUs online", vcpus); }

uint64_t info_field(const std::string& info, const std::string& name) {
    std::smatch match;
    std::regex pattern(name + "=([0-9]+)");
    REQUIRE(std::regex_search(info, match, pattern));
    return std::stoull(match[1]);
}

// Checks what the guest's kernel said once its initramfs last ran (the lines before are the
// boot's: nested in QEMU's TCG its CPUID makes the kernel warn about XSAVE sizes at every boot).
void check_healthy(const std::string& console_text) {
    size_t from = console_text.rfind("kvstored-init: ");
    std::string after = from == std::string::npos ? console_text : console_text.substr(from);
    std::smatch match;
    bool unwell = std::regex_search(after, match, k_unhealthy);
    INFO("console:\n" << after);
    CHECK_FALSE(unwell);
}

}  // namespace

TEST_CASE("a Linux guest boots standalone with 1 and 4 vCPUs, answers on ttyS0, reboots in place and powers off "
          "cleanly",
          "[linux][standalone]") {
    for (int vcpus : {1, 4}) {
        DYNAMIC_SECTION(vcpus << " vCPUs") {
            Pair pair(linux_options(vcpus));
            auto& primary = pair.start_primary({"--standalone"});
            auto console = open_console(pair, Side::Primary);
            REQUIRE(console);
            // The initramfs says how many CPUs the kernel brought online, then starts kvstored.
            CHECK(await_kvstored(*console, "boot", pair) == cpus_online(vcpus));

            CHECK(console->command("SET k v") == "OK");
            CHECK(console->command("GET k") == "v");
            CHECK(console->command("INCR n") == "1");
            CHECK(console->command("INCR n") == "2");
            CHECK(console->command("DEL k") == "OK");
            CHECK(console->command("GET k") == "NIL");
            CHECK(console->command("DIRTY 100") == "OK 100");
            CHECK(console->command("BOGUS").value_or("").starts_with("ERR"));
            CHECK(console->command("APPEND r1") == "ERR no disk");  // no [vm] disk here
            auto first = console->command("INFO");
            REQUIRE(first);
            REQUIRE(console->command("CHURN 8") == "OK");
            REQUIRE(eventually([&] {
                auto later = console->command("INFO");
                return later && info_field(*later, "ticks") > info_field(*first, "ticks") + 20 &&
                       info_field(*later, "pages") >= info_field(*first, "pages") + 8 * 10;
            }, std::chrono::seconds(60)));
            REQUIRE(console->command("CHURN 0") == "OK");
            // The virtio-rng (found through the ACPI tables, driven by Debian's module) answers.
            for (int i = 0; i < 3; ++i) {
                auto random = console->command("HWRNG 32");
                REQUIRE(random);
                CHECK(std::regex_match(*random, std::regex("[0-9a-f]{64}")));
            }

            check_healthy(console->seen());

            // Reboot from inside: the guest boots again in place, its RAM empty, every vCPU
            // online again, on the same console; the daemon goes on.
            REQUIRE(console->command("SET before-reboot 1") == "OK");
            REQUIRE(console->command("REBOOT") == "OK");
            CHECK(await_kvstored(*console, "reboot", pair) == cpus_online(vcpus));
            CHECK(console->command("GET before-reboot") == "NIL");
            CHECK(console->command("SET after-reboot 2") == "OK");
            CHECK(console->command("GET after-reboot") == "2");
            CHECK(console->command("HWRNG 8").value_or("").size() == 16);
            CHECK_THAT(pair.read_log("primary"), Catch::Contains("rebooted in place (reboot 1)"));

            // Power off from inside: the daemon exits 0, its log says why.
            CHECK(console->command("POWEROFF") == "OK");
            CHECK(primary.exit_code() == 0);
            CHECK_THAT(pair.read_log("primary"), Catch::Contains("power-off"));
            check_healthy(console->seen());
        }
    }
}

TEST_CASE("a standalone Linux guest keeps fsync'd records on its ext4 disk through a reboot; the disk is clean "
          "after power-off",
          "[linux][disk-standalone]") {
    PairOptions options = linux_options(1);
    options.extra_vm = "disk = disk.img\n";  // beside the config: the pair's folder
    Pair pair(options);
    const std::string image = (pair.dir() / "disk.img").string();
    auto made = run_shell(fmt::format("truncate -s 64M {0} && mkfs.ext4 -q -F {0} 2>&1", image));
    INFO(made.second);
    REQUIRE(made.first == 0);

    auto& primary = pair.start_primary({"--standalone"});
    auto console = open_console(pair, Side::Primary);
    REQUIRE(console);
    await_kvstored(*console, "boot", pair);
    CHECK_THAT(pair.read_log("primary"), Catch::Contains("disk " + image + ": 67108864 bytes, serial disk.img"));
    CHECK(console->command("RECORDS") == "0 0");
    std::string expected;
    for (int n = 1; n <= 100; ++n) {
        std::string token = fmt::format("rec-{}-{}", n, n * 7919 % 1000);
        REQUIRE(console->command("APPEND " + token) == fmt::format("OK {}", n));
        expected += fmt::format("{} {}\n", n, token);
    }
    CHECK(console->command("RECORDS") == "100 100");
    CHECK(console->command("RECORD 37") == fmt::format("37 rec-37-{}", 37 * 7919 % 1000));
    CHECK(console->command("RECORD 101") == "ERR no record 101");
    CHECK(console->command("APPEND") == "ERR usage: APPEND token (1..64 printable bytes, no space)");
    check_healthy(console->seen());
    // A reboot in place keeps the disk (only RAM and device state go back to power-on): the
    // guest mounts it again and goes on counting.
    REQUIRE(console->command("REBOOT") == "OK");
    await_kvstored(*console, "reboot", pair);
    CHECK(console->command("RECORDS") == "100 100");
    CHECK(console->command("APPEND after-reboot") == "OK 101");
    expected += "101 after-reboot\n";
    check_healthy(console->seen());
    CHECK(console->command("POWEROFF") == "OK");
    CHECK(primary.exit_code(scaled(std::chrono::seconds(60))) == 0);
    // The guest unmounted the disk before it powered off: the file system is clean, and holds
    // every record the guest acknowledged.
    auto fsck = run_shell(fmt::format("e2fsck -fn {} 2>&1", image));
    INFO("e2fsck -fn:\n" << fsck.second);
    CHECK(fsck.first == 0);
    auto records = run_shell(fmt::format("debugfs -R 'cat /records' {} 2>/dev/null", image));
    CHECK(records.first == 0);
    CHECK(records.second == expected);
}

namespace {

// A TCP connection to kvstored's port 4555 on the guest (from the test's namespace, the
// switch's side of the guest's LAN), once the guest answers PING there.
std::optional<LineClient> guest_tcp(const GuestLan& lan, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + scaled(timeout);
    while (std::chrono::steady_clock::now() < deadline) {
        auto client = LineClient::connect(lan.guest_ip(), 4555, std::chrono::seconds(2));
        if (client && client->command("PING", std::chrono::seconds(10)) == "PONG")
            return client;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return std::nullopt;
}

// The pings that went unanswered and those sent, from the summary of a `ping -q` that was
// interrupted.
std::optional<std::pair<uint64_t, uint64_t>> ping_lost(Process& ping) {
    static const std::regex k_summary("([0-9]+) packets transmitted, ([0-9]+) (packets )?received");
    while (auto line = ping.line(std::chrono::seconds(30))) {
        std::smatch match;
        if (std::regex_search(*line, match, k_summary)) {
            uint64_t sent = std::stoull(match[1]), received = std::stoull(match[2]);
            return std::pair{sent - std::min(sent, received), sent};
        }
    }
    return std::nullopt;
}

// "1000ms" as 1000.
uint64_t parse_ms(const std::string& text) {
    REQUIRE(text.ends_with("ms"));
    return std::stoull(text.substr(0, text.size() - 2));
}

// How a protected pair run goes.
struct PairRun {
    int kills = 10;
    // The secondary starts first, so the live sync runs while the guest's kernel boots (as when
    // both daemons start together); else it starts once the guest answers.
    bool sync_during_boot = true;
    // The guest reboots in place before the kills.
    bool reboot = true;
};

// A protected Linux pair with `options` (a 256 MiB guest with 2 vCPUs): live sync, 100+
// checkpoints under CHURN on both vCPUs with digests equal, then `run.kills` rounds of kill -9
// of the active side, each checked on the survivor (every acknowledged INCR there, the guest's
// clock going on, its kernel quiet) and followed by a new secondary on the dead side's host,
// which is synced from the survivor: failover and re-protection in both directions. Ends with a
// power-off from inside the guest that stops both daemons cleanly.
//
// With `lan` (the options' guest has its NIC and address on it: GuestLan), each round's client
// talks TCP instead: one connection through the kill, which must see no reset and no reply twice
// (a reply from an epoch the survivor lacks would repeat a value), and the switch must find the
// guest's MAC behind the survivor's host.
void protected_pair_rounds(const PairOptions& options, PairRun run, const GuestLan* lan = nullptr) {
    Pair pair(options);
    // The daemon running on each host (index: Side), replaced as hosts die and are repaired.
    std::array<Process*, 2> on_host{};
    if (run.sync_during_boot)
        on_host[1] = &pair.start_secondary();
    on_host[0] = &pair.start_primary();
    auto host = [](Side side) { return side == Side::Primary ? 0 : 1; };
    Side active_side = Side::Primary;
    auto console = open_console(pair, Side::Primary);
    REQUIRE(console);
    REQUIRE(await_kvstored(*console, "boot", pair) == cpus_online(2));
    if (!run.sync_during_boot)
        on_host[1] = &pair.start_secondary();
    REQUIRE(pair.wait_state(Side::Primary, "protected", std::chrono::minutes(5)));

    const bool colo = options.mode == "colo";
    // Both sides' memory digests at one paused checkpoint (checkpoint mode: in COLO the
    // secondary's guest runs on from each checkpoint, so its memory moves at once).
    auto digests_agree = [&] {
        auto primary = pair.control(Side::Primary, "digest", 60000);
        REQUIRE(primary);
        auto secondary = pair.control(Side::Secondary, "digest", 60000);
        REQUIRE(secondary);
        CHECK(*primary == *secondary);
        REQUIRE(pair.control(Side::Primary, "resume"));
    };
    if (!colo) {
        // 100+ checkpoints while both vCPUs dirty pages; digests equal at paused checkpoints.
        REQUIRE(console->command("CHURN 16") == "OK");
        uint64_t start = pair.status(Side::Primary)->checkpoints;
        REQUIRE(eventually([&] { return pair.status(Side::Primary)->checkpoints >= start + 100; },
                           std::chrono::minutes(5)));
        for (int round = 0; round < 2; ++round)
            digests_agree();
        REQUIRE(console->command("CHURN 0") == "OK");
    }
    check_healthy(console->seen());

    // The guest reboots in place on the primary: the checkpoints after it carry all of its
    // (cleared) RAM and its power-on state, so the digests agree again, and a takeover below
    // lands on the rebooted guest.
    if (run.reboot) {
        REQUIRE(console->command("SET before-reboot 1") == "OK");
        REQUIRE(console->command("REBOOT") == "OK");
        REQUIRE(await_kvstored(*console, "reboot", pair) == cpus_online(2));
        CHECK(console->command("GET before-reboot") == "NIL");
        if (!colo)
            digests_agree();
        CHECK(pair.wait_state(Side::Primary, "protected", std::chrono::seconds(10)));
    }

    // With a LAN, one more client keeps ONE TCP connection through every kill of the run (its
    // own counter): after a takeover the survivor's guest, and then the copy of it that a new
    // secondary holds, must go on numbering it as the client knows it.
    IncrClient lifelong;
    if (lan) {
        auto tcp = guest_tcp(*lan, std::chrono::minutes(2));
        REQUIRE(tcp);
        lifelong.start(std::move(*tcp), "tcp-life", std::chrono::minutes(3));
        REQUIRE(eventually([&] { return lifelong.acked() >= 5 || !lifelong.running(); }, std::chrono::minutes(2)));
    }

    // Kill the active side again and again: the other takes over, a new secondary starts where
    // the dead one was and is synced from it (re-protection in both directions).
    std::mt19937 rng(std::random_device{}());
    uint64_t last_ticks = 0;
    for (int round = 0; round < run.kills; ++round) {
        INFO("round " << round << ", active on the " << (active_side == Side::Primary ? "primary" : "secondary")
                      << " host");
        Side standby_side = active_side == Side::Primary ? Side::Secondary : Side::Primary;
        // The counter goes on across rounds (one guest): the INCRs of this round come on top.
        uint64_t before = 0;
        {
            auto reader = open_console(pair, active_side);
            REQUIRE(reader);
            auto value = reader->command("GET counter");
            REQUIRE(value);
            before = *value == "NIL" ? 0 : std::stoull(*value);
        }
        IncrClient client;
        uint64_t acked_at_kill = 0;
        if (lan) {
            // The counter's key is new each round, so that every reply must be the next value.
            auto tcp = guest_tcp(*lan, std::chrono::minutes(2));
            REQUIRE(tcp);
            // A reply may wait through a whole failover (heartbeat timeout, takeover, the
            // client's TCP retransmission reaching the survivor).
            client.start(std::move(*tcp), fmt::format("tcp-{}", round), std::chrono::minutes(3));
            REQUIRE(eventually([&] { return client.acked() >= 5 || !client.running(); }, std::chrono::minutes(2)));
            if (colo) {
                // The secondary's guest gets the client's frames and answers alike: replies go out
                // as soon as both agree, not one checkpoint each.
                auto checkpoints = [&] { return pair.status(active_side)->checkpoints; };
                uint64_t checkpoints_before = checkpoints(), acked_before = client.acked();
                REQUIRE(eventually([&] { return client.acked() >= acked_before + 40 || !client.running(); },
                                   std::chrono::minutes(2)));
                uint64_t replies = client.acked() - acked_before, taken = checkpoints() - checkpoints_before;
                WARN("round " << round << ": " << replies << " TCP replies compared with " << taken
                              << " checkpoints meanwhile");
                CHECK(taken * 4 <= replies);
            }
        } else {
            auto incr = pair.console(active_side);
            REQUIRE(incr);
            client.start(std::move(*incr), "counter", std::chrono::seconds(30), kernel_message);
        }
        // And pings from the client's side every 100 ms: how many go unanswered across the
        // failover (ping -q prints only its summary, at SIGINT).
        std::optional<Process> ping =
            lan ? Process::spawn({"/usr/bin/ping", "-q", "-n", "-i", "0.1", lan->guest_ip()},
                                 (pair.dir() / fmt::format("ping-{}.err", round)).string())
                : std::nullopt;
        REQUIRE((ping || !lan));
        std::this_thread::sleep_for(std::chrono::milliseconds(500 + rng() % 2000));
        on_host[host(active_side)]->signal(SIGKILL);
        REQUIRE(on_host[host(active_side)]->exit_code() == 128 + SIGKILL);
        acked_at_kill = client.acked();
        if (!lan)
            client.join();
        REQUIRE(pair.wait_state(standby_side, "active", std::chrono::minutes(2)));
        if (lan) {
            // The same connection goes on: replies keep coming from the survivor's guest.
            CHECK(eventually([&] { return client.acked() >= acked_at_kill + 20 || !client.running(); },
                             std::chrono::minutes(3)));
            client.join();
            CHECK_FALSE(client.broken());        // no reset, no timeout: one connection throughout
            CHECK_FALSE(client.bad_reply());
            CHECK_FALSE(client.out_of_order());  // no value seen twice or skipped
            WARN("round " << round << ": the TCP client waited at most " << client.max_wait_us() / 1000
                          << " ms for a reply (the failover included)");
            CHECK(lan->port_of_guest_mac() ==
                  lan->uplink(standby_side == Side::Primary ? GuestLan::Host::Primary : GuestLan::Host::Secondary));
            // The survivor's status shows its NIC at work and the announcements of the takeover.
            auto nic = [&](const std::string& key) {
                auto json = pair.control(standby_side, "status --json");
                return json ? json_number(*json, key).value_or(0) : 0;
            };
            CHECK(eventually([&] { return nic("announcements") >= 1; }, std::chrono::seconds(30)));
            CHECK(nic("tx_frames") > 0);
            CHECK(nic("rx_frames") > 0);

            ping->signal(SIGINT);
            auto lost = ping_lost(*ping);
            REQUIRE(lost);
            WARN("round " << round << ": " << lost->first << " of " << lost->second
                          << " pings (every 100 ms) unanswered across the failover");
            // At most a heartbeat timeout's worth and the takeover's (a second) go unanswered.
            CHECK(lost->first * 100 <= static_cast<uint64_t>(scaled(std::chrono::milliseconds(
                                                                  parse_ms(options.heartbeat_timeout) + 1000))
                                                                  .count()));
        }

        auto survivor = open_console(pair, standby_side);
        REQUIRE(survivor);
        REQUIRE(survivor->ready(std::chrono::minutes(1)));
        auto value = survivor->command(lan ? fmt::format("GET tcp-{}", round) : std::string("GET counter"));
        REQUIRE(value);
        uint64_t counter = *value == "NIL" ? 0 : std::stoull(*value);
        // acked(): the last value a reply carried; sent(): how many INCRs went out.
        if (lan) {
            CHECK(counter >= client.acked());
            CHECK(counter <= client.sent());
        } else {
            CHECK(counter >= std::max(before, client.acked()));
            CHECK(counter <= before + client.sent());
        }
        // The guest's clock goes on from where the checkpoint left it, and keeps going.
        auto info = survivor->command("INFO");
        REQUIRE(info);
        uint64_t ticks = info_field(*info, "ticks");
        CHECK(ticks >= last_ticks);
        REQUIRE(eventually([&] {
            auto later = survivor->command("INFO");
            return later && info_field(*later, "ticks") > ticks + 10;
        }, std::chrono::seconds(60)));
        last_ticks = ticks;

        // The repaired host runs a new secondary, synced from the survivor.
        const std::string& netns = active_side == Side::Primary ? options.primary_netns : options.secondary_netns;
        on_host[host(active_side)] = &pair.start_extra(COLOD_SECONDARY_BIN, netns, fmt::format("secondary-{}", round));
        REQUIRE(pair.wait_state(standby_side, "protected", std::chrono::minutes(5)));
        REQUIRE(pair.wait_state(active_side, "standby", std::chrono::minutes(1)));
        check_healthy(survivor->seen());
        std::swap(active_side, standby_side);
    }

    if (lan) {
        uint64_t acked = lifelong.acked();
        CHECK(eventually([&] { return lifelong.acked() >= acked + 5 || !lifelong.running(); }, std::chrono::minutes(2)));
        lifelong.join();
        CHECK_FALSE(lifelong.broken());
        CHECK_FALSE(lifelong.bad_reply());
        CHECK_FALSE(lifelong.out_of_order());
        WARN("one TCP connection through all " << run.kills << " failovers: " << lifelong.acked()
                                               << " replies, the longest wait " << lifelong.max_wait_us() / 1000
                                               << " ms");
    }

    // The guest powers off: both daemons stop cleanly, nobody takes over.
    auto last = open_console(pair, active_side);
    REQUIRE(last);
    REQUIRE(last->ready(std::chrono::minutes(1)));
    CHECK(last->command("POWEROFF") == "OK");
    CHECK(on_host[host(active_side)]->exit_code() == 0);
    Side standby_side = active_side == Side::Primary ? Side::Secondary : Side::Primary;
    CHECK(on_host[host(standby_side)]->exit_code() == 0);
}

int kill_rounds() {
    const char* env = std::getenv("COLOD_LINUX_KILLS");
    return env ? std::atoi(env) : 10;
}

}  // namespace

TEST_CASE("a protected Linux pair over loopback: live sync, checkpoints under CHURN on every vCPU with equal "
          "memory, failovers both ways with no acknowledged INCR lost, and a clean power-off",
          "[linux][pair]") {
    protected_pair_rounds(linux_options(2), PairRun{kill_rounds()});
}

TEST_CASE("a protected Linux pair across two network namespaces: the same, the replication link a veth",
          "[linux][pair][netns]") {
    if (!netns_available_or_skip())
        return;
    NetnsPairNetwork net;
    protected_pair_rounds(netns_linux_options(net), PairRun{std::max(2, kill_rounds() / 2)});
}

// CI's run on the nested KVM (tests/run.sh). There QEMU's emulated SVM now and then loses a
// guest's own page tables while KVM write-protects its pages for the dirty log — a burst of
// nested page faults, as when a kernel boots under dirty logging (docs/linux-guests.md) — so
// this run protects the guest once it has booted and leaves out the reboot; the runs above do both.
// Its guest has a NIC on a LAN, and each round's client is one TCP connection through the kill.
TEST_CASE("a protected Linux pair in two namespaces, protected once booted: two failovers, TCP through each",
          "[linux][pair-ci]") {
    if (!netns_available_or_skip())
        return;
    NetnsPairNetwork net;
    GuestLan lan(net);
    protected_pair_rounds(lan.on_lan(netns_linux_options(net)), PairRun{2, false, false}, &lan);
}

// A protected guest's reply to POWEROFF is output like any other: held until a checkpoint
// commits. With a long interval the guest powers off before the next one; the daemon then
// releases what it held (the secondary stops too, nothing can bring that state back), and its
// console clients get it before the console closes.
TEST_CASE("a protected guest's last output, held when it powers off, reaches the console",
          "[linux][poweroff-held]") {
    PairOptions options = linux_options(1);
    options.checkpoint_interval = "60s";  // (the most there is) no checkpoint between the reply and the power-off
    Pair pair(options);
    // Unprotected first, so that booting and its replies need no checkpoint.
    auto& primary = pair.start_primary();
    auto console = open_console(pair, Side::Primary);
    REQUIRE(console);
    await_kvstored(*console, "boot", pair);
    auto& secondary = pair.start_secondary();
    REQUIRE(pair.wait_state(Side::Primary, "protected", std::chrono::minutes(5)));
    CHECK(console->command("POWEROFF", scaled(std::chrono::seconds(60))) == "OK");
    CHECK(primary.exit_code(scaled(std::chrono::seconds(60))) == 0);
    CHECK(secondary.exit_code(scaled(std::chrono::seconds(60))) == 0);
    CHECK_THAT(pair.read_log("primary"), Catch::Contains("the guest powered off with code 0"));
}

TEST_CASE("COLO with a Linux guest: the secondary's guest gets the primary's virtio-rng bytes, so replies "
          "built from them compare equal, also after the guest rebooted in place",
          "[linux][colo]") {
    PairOptions options = linux_options(1);
    options.mode = "colo";
    // Long: a reply the secondary cannot match waits for the interval to settle it.
    options.checkpoint_interval = "10s";
    Pair pair(options);
    // The guest runs before a secondary comes (as when an operator protects a running VM): the
    // live copy and the first checkpoints take a booted kernel, its timers armed.
    pair.start_primary();
    auto console = open_console(pair, Side::Primary);
    REQUIRE(console);
    REQUIRE(await_kvstored(*console, "boot", pair) == cpus_online(1));
    pair.start_secondary();
    REQUIRE(pair.wait_state(Side::Primary, "protected", std::chrono::minutes(5)));
    auto counter = [&](const std::string& key) {
        auto json = pair.control(Side::Primary, "status --json");
        REQUIRE(json);
        return json_number(*json, key).value_or(0);
    };
    // Settle: the boot's own output may still be compared.
    REQUIRE(console->command("PING") == "PONG");
    // Console input reaches the secondary's guest and its replies match: no reply waits for the
    // interval (which would mean about one checkpoint per reply).
    uint64_t pings_before = counter("checkpoints");
    for (int i = 0; i < 8; ++i)
        REQUIRE(console->command("PING") == "PONG");
    CHECK(counter("checkpoints") - pings_before <= 1);
    uint64_t checkpoints_before = counter("checkpoints"), mismatches_before = counter("checkpoints_mismatch");
    const int reads = 20;
    std::set<std::string> seen;
    auto reads_started = std::chrono::steady_clock::now();
    for (int i = 0; i < reads; ++i) {
        auto reply = console->command("HWRNG 32");
        REQUIRE(reply);
        INFO("reply " << i << ": " << *reply);
        REQUIRE(std::regex_match(*reply, std::regex("[0-9a-f]{64}")));
        seen.insert(*reply);
    }
    uint64_t checkpoints = counter("checkpoints") - checkpoints_before;
    uint64_t mismatches = counter("checkpoints_mismatch") - mismatches_before;
    WARN(reads << " HWRNG 32 in " << std::chrono::duration<double>(std::chrono::steady_clock::now() - reads_started).count()
               << " s: " << checkpoints << " checkpoints meanwhile, " << mismatches << " for differing output");
    INFO(reads << " HWRNG replies, " << checkpoints << " checkpoints meanwhile (" << mismatches
               << " for differing output); console:\n" << console->seen());
    CHECK(seen.size() == static_cast<size_t>(reads));  // random bytes, not a replayed block
    // The secondary's guest answers each read as the primary's did, so replies are released as
    // soon as both agree. Fed its own host's entropy it would answer differently (a checkpoint
    // per reply), and fed nothing it would not answer (each reply held until the 10 s interval
    // settles it): either way about one checkpoint per reply.
    CHECK(mismatches <= 1);
    CHECK(checkpoints * 4 <= static_cast<uint64_t>(reads));

    // The primary's guest reboots in place; the secondary's replica stops and runs again from
    // the primary's next checkpoint (its rebooted guest). The virtio-rng stream goes on where it
    // was, so the rebooted guests still get the same bytes.
    REQUIRE(console->command("SET before-reboot 1") == "OK");
    REQUIRE(console->command("REBOOT") == "OK");
    REQUIRE(await_kvstored(*console, "reboot", pair) == cpus_online(1));
    CHECK(console->command("GET before-reboot") == "NIL");
    REQUIRE(console->command("SET after-reboot 1") == "OK");
    REQUIRE(pair.wait_state(Side::Primary, "protected", std::chrono::minutes(2)));
    for (int i = 0; i < 4; ++i) {
        auto reply = console->command("HWRNG 32");
        REQUIRE(reply);
        CHECK(std::regex_match(*reply, std::regex("[0-9a-f]{64}")));
    }
    CHECK_THAT(pair.read_log("primary"), Catch::Contains("rebooted in place"));

    // The secondary takes over with a working entropy source of its own.
    pair.primary()->signal(SIGKILL);
    REQUIRE(pair.wait_state(Side::Secondary, "active", std::chrono::minutes(2)));
    auto survivor = open_console(pair, Side::Secondary);
    REQUIRE(survivor);
    REQUIRE(survivor->ready(std::chrono::minutes(1)));
    for (int i = 0; i < 3; ++i) {
        auto reply = survivor->command("HWRNG 64");
        REQUIRE(reply);
        CHECK(std::regex_match(*reply, std::regex("[0-9a-f]{128}")));
    }
    CHECK(survivor->command("GET after-reboot") == "1");  // the rebooted guest, not an older one
    check_healthy(survivor->seen());
    CHECK(survivor->command("POWEROFF") == "OK");
    CHECK(pair.secondary()->exit_code() == 0);
}

// The guest's network (docs/network.md): a client on the guest's LAN keeps ONE TCP connection
// to the guest through kill -9 of the active side, again and again (COLOD_NET_KILLS rounds,
// default 4); CI's [pair-ci] run below does two.
TEST_CASE("a Linux guest's TCP client keeps one connection through failovers both ways", "[linux][net]") {
    if (!netns_available_or_skip())
        return;
    NetnsPairNetwork net;
    GuestLan lan(net);
    const char* kills = std::getenv("COLOD_NET_KILLS");
    protected_pair_rounds(lan.on_lan(netns_linux_options(net)), PairRun{kills ? std::atoi(kills) : 4, false, false}, &lan);
}

// COLO's packets (docs/network.md): both guests get the client's frames, the secondary's frames
// come back to the primary and are compared per connection (its TCP sequence numbers moved onto
// the primary's), and a reply goes out once both guests sent it. The same client and kills as
// above; a takeover continues from the secondary's running guest, its connection still
// rewritten.
TEST_CASE("COLO: a Linux guest's TCP client keeps one connection through failovers both ways, its replies compared",
          "[linux][net-colo]") {
    if (!netns_available_or_skip())
        return;
    NetnsPairNetwork net;
    GuestLan lan(net);
    PairOptions options = lan.on_lan(netns_linux_options(net));
    options.mode = "colo";
    // A frame one guest sent and the other did not waits for at most this before a checkpoint.
    const char* interval = std::getenv("COLOD_NET_COLO_INTERVAL");
    options.checkpoint_interval = interval ? interval : "3s";
    const char* kills = std::getenv("COLOD_NET_KILLS");
    protected_pair_rounds(options, PairRun{kills ? std::atoi(kills) : 4, false, false}, &lan);
}

int main(int argc, char** argv) {
    if (!host_kvm_available()) {
        std::fprintf(stderr, "linux_test: needs /dev/kvm (Linux guests run on KVM only); run it through "
                             "tests/hostkvm/nested.sh where the host has none\n");
        return 77;
    }
    return Catch::Session().run(argc, argv);
}

namespace {

// The disk's counterpart of IncrClient: APPENDs numbered tokens as fast as the replies come, and
// keeps every record the guest acknowledged ("OK n" comes only after the guest's fsync returned).
class AppendClient {
public:
    ~AppendClient() { join(); }
    void start(LineClient client, std::string prefix, std::chrono::milliseconds reply_timeout) {
        m_thread = std::thread([this, c = std::move(client), prefix, reply_timeout]() mutable {
            for (uint64_t k = 1; !m_stop; ++k) {
                std::string token = fmt::format("{}{}", prefix, k);
                ++m_sent;
                auto reply = c.command("APPEND " + token, reply_timeout);
                while (reply && kernel_message(*reply))
                    reply = c.line(reply_timeout);
                if (!reply) {
                    m_broken = true;
                    return;
                }
                std::smatch match;
                static const std::regex k_ok("OK ([0-9]+)");
                if (!std::regex_match(*reply, match, k_ok)) {
                    std::lock_guard lock(m_mutex);
                    m_bad_reply = *reply;
                    return;
                }
                std::lock_guard lock(m_mutex);
                m_acked.emplace_back(std::stoull(match[1]), token);
            }
        });
    }
    // On `side`'s console.
    void start(Pair& pair, Side side, std::string prefix) {
        auto console = pair.console(side, std::chrono::seconds(60));
        REQUIRE(console);
        start(std::move(*console), std::move(prefix), std::chrono::minutes(3));
    }
    // Waits until `n` records are acknowledged in all, or a reply was not `OK n`.
    void await_acked(size_t n) {
        REQUIRE(eventually([&] { return acked_count() >= n || !bad_reply().empty(); }, std::chrono::minutes(2)));
    }
    void join() {
        m_stop = true;
        if (m_thread.joinable())
            m_thread.join();
    }
    uint64_t sent() const { return m_sent; }
    // (n, token) of every acknowledged APPEND, in order.
    std::vector<std::pair<uint64_t, std::string>> acked() const {
        std::lock_guard lock(m_mutex);
        return m_acked;
    }
    size_t acked_count() const {
        std::lock_guard lock(m_mutex);
        return m_acked.size();
    }
    std::string bad_reply() const {
        std::lock_guard lock(m_mutex);
        return m_bad_reply;
    }

private:
    std::thread m_thread;
    std::atomic<bool> m_stop{false}, m_broken{false};
    std::atomic<uint64_t> m_sent{0};
    mutable std::mutex m_mutex;
    std::vector<std::pair<uint64_t, std::string>> m_acked;
    std::string m_bad_reply;
};

// "disk copied: X of Y blocks differed ..." from a daemon's log: the last one's X and Y.
std::optional<std::pair<uint64_t, uint64_t>> disk_copy_figures(const std::string& log) {
    static const std::regex k_copied("disk copied: ([0-9]+) of ([0-9]+) blocks differed");
    std::optional<std::pair<uint64_t, uint64_t>> last;
    for (auto it = std::sregex_iterator(log.begin(), log.end(), k_copied); it != std::sregex_iterator(); ++it)
        last = std::make_pair(std::stoull((*it)[1]), std::stoull((*it)[2]));
    return last;
}

}  // namespace

namespace {

// A protected Linux pair with a disk in `mode`: fsync'd records through kill -9 of the active
// side (COLOD_DISK_KILLS rounds) and of the standby, images compared at held checkpoints.
void disk_pair_rounds(const std::string& mode) {
    PairOptions options = linux_options(1);
    options.mode = mode;
    options.host_dirs = true;
    options.extra_vm = "disk = disk.img\n";  // beside each host's config: an image per host
    Pair pair(options);
    auto image = [&](Side host) { return (pair.host_dir(host) / "disk.img").string(); };
    // The primary's image has the file system; the secondary's is blank: the first copy sends
    // what mkfs wrote.
    auto made = run_shell(fmt::format("truncate -s 64M {0} {1} && mkfs.ext4 -q -F {0} 2>&1", image(Side::Primary),
                                      image(Side::Secondary)));
    INFO(made.second);
    REQUIRE(made.first == 0);

    std::array<Process*, 2> on_host{};
    std::array<std::string, 2> log_of{"primary", "secondary"};
    auto host = [](Side side) { return side == Side::Primary ? 0 : 1; };
    on_host[1] = &pair.start_secondary();
    on_host[0] = &pair.start_primary();
    auto console = open_console(pair, Side::Primary);
    REQUIRE(console);
    await_kvstored(*console, "boot", pair);
    REQUIRE(pair.wait_state(Side::Primary, "protected", std::chrono::minutes(5)));
    auto first = disk_copy_figures(pair.read_log("primary"));
    REQUIRE(first);
    WARN("first copy: " << first->first << " of " << first->second << " blocks of 64 KiB differed");
    CHECK(first->second == 1024);
    CHECK(first->first > 0);
    CHECK(first->first < first->second);  // a blank image matches the primary's unused blocks
    CHECK(console->command("RECORDS") == "0 0");

    // Both images at one paused checkpoint: the digests of both sides (checkpoint, memory,
    // disk) agree, and the files are byte for byte the same.
    auto images_equal = [&](Side active) {
        auto held = pair.control(active, "digest", 60000);
        if (!held) {
            auto reply = daemons::control_request(pair.control_path(active), "digest", 60000);
            FAIL("digest on the active side: " << (reply ? reply->body : reply.error().message()) << "\nits log:\n"
                                               << pair.read_log(log_of[host(active)]));
        }
        auto other = pair.control(active == Side::Primary ? Side::Secondary : Side::Primary, "digest", 60000);
        auto same = run_shell(fmt::format("cmp {} {} 2>&1", image(Side::Primary), image(Side::Secondary)));
        REQUIRE(pair.control(active, "resume"));
        REQUIRE(other);
        CHECK(std::regex_match(*held, std::regex("[0-9]+ [0-9a-f]{16} [0-9a-f]{16}\n")));
        if (mode == "colo") {
            // The secondary's guest runs on from the checkpoint (its memory moves on), but its
            // image stays at it: the checkpoint and the disk's digest agree.
            auto words = [](const std::string& text) {
                std::istringstream in(text);
                std::string seq, memory, disk;
                in >> seq >> memory >> disk;
                return seq + " " + disk;
            };
            CHECK(words(*held) == words(*other));
        } else {
            CHECK(*held == *other);
        }
        INFO(same.second);
        return same.first == 0;
    };

    const char* env = std::getenv("COLOD_DISK_KILLS");
    const int kills = env && *env ? std::atoi(env) : 3;
    std::mt19937 rng(std::random_device{}());
    Side active_side = Side::Primary, standby_side = Side::Secondary;
    uint64_t records = 0;
    for (int round = 0; round < kills; ++round) {
        INFO("round " << round << ": kill -9 of the " << (active_side == Side::Primary ? "primary" : "secondary")
                      << "'s host");
        AppendClient client;
        client.start(pair, active_side, fmt::format("r{}-", round));
        client.await_acked(5);
        // Writes in flight: somewhere inside an epoch.
        std::this_thread::sleep_for(std::chrono::milliseconds(300 + rng() % 2000));
        on_host[host(active_side)]->signal(SIGKILL);
        REQUIRE(on_host[host(active_side)]->exit_code() == 128 + SIGKILL);
        client.join();
        CHECK(client.bad_reply() == std::string());  // shows the reply when it fails
        const auto acked = client.acked();
        REQUIRE(pair.wait_state(standby_side, "active", std::chrono::minutes(2)));

        // Every acknowledged record is on the survivor's disk, nothing beyond what was sent.
        auto survivor = open_console(pair, standby_side);
        REQUIRE(survivor);
        REQUIRE(survivor->ready(std::chrono::minutes(1)));
        auto counted = survivor->command("RECORDS");
        REQUIRE(counted);
        uint64_t count = std::stoull(counted->substr(0, counted->find(' ')));
        WARN("round " << round << ": " << acked.size() << " records acknowledged of " << client.sent()
                      << " sent; the survivor's file has " << count - records << " of them");
        if (!acked.empty())
            CHECK(count >= acked.back().first);
        CHECK(count <= records + client.sent());
        for (const auto& [n, token] : acked)
            CHECK(survivor->command(fmt::format("RECORD {}", n)) == fmt::format("{} {}", n, token));
        // The guest goes on appending on the survivor's disk.
        CHECK(survivor->command("APPEND after-" + std::to_string(round)) == fmt::format("OK {}", count + 1));
        records = count + 1;

        // The repaired host runs a new secondary: its image is copied from the survivor's, only
        // the blocks that differ (those of the lost epoch and those written since).
        const std::string netns = active_side == Side::Primary ? options.primary_netns : options.secondary_netns;
        log_of[host(active_side)] = fmt::format("secondary-{}", round);
        on_host[host(active_side)] = &pair.start_extra(COLOD_SECONDARY_BIN, netns, log_of[host(active_side)], active_side);
        REQUIRE(pair.wait_state(standby_side, "protected", std::chrono::minutes(5)));
        auto copied = disk_copy_figures(pair.read_log(log_of[host(standby_side)]));
        REQUIRE(copied);
        WARN("round " << round << ": re-protection sent " << copied->first << " of " << copied->second << " blocks");
        CHECK(copied->first < copied->second / 4);
        CHECK(images_equal(standby_side));
        check_healthy(survivor->seen());
        std::swap(active_side, standby_side);
    }

    // The standby killed while checkpoints carry writes, and restarted: the pair protects
    // again, the images equal.
    {
        AppendClient client;
        client.start(pair, active_side, "s-");
        client.await_acked(5);
        std::this_thread::sleep_for(std::chrono::milliseconds(300 + rng() % 1000));
        on_host[host(standby_side)]->signal(SIGKILL);
        REQUIRE(on_host[host(standby_side)]->exit_code() == 128 + SIGKILL);
        client.await_acked(20);
        const std::string netns = standby_side == Side::Primary ? options.primary_netns : options.secondary_netns;
        log_of[host(standby_side)] = "secondary-restarted";
        on_host[host(standby_side)] = &pair.start_extra(COLOD_SECONDARY_BIN, netns, log_of[host(standby_side)], standby_side);
        REQUIRE(pair.wait_state(active_side, "protected", std::chrono::minutes(5)));
        client.join();
        CHECK(client.bad_reply() == std::string());  // shows the reply when it fails
        CHECK(images_equal(active_side));
        records = client.acked().empty() ? records : client.acked().back().first;
    }

    // The standby dies between its journal and its image (a fault point: the third checkpoint
    // with writes, once journaled): started again, it finishes that checkpoint from the journal
    // first, then is copied to again.
    {
        AppendClient client;
        client.start(pair, active_side, "j-");
        on_host[host(standby_side)]->signal(SIGKILL);
        REQUIRE(on_host[host(standby_side)]->exit_code() == 128 + SIGKILL);
        const std::string netns = standby_side == Side::Primary ? options.primary_netns : options.secondary_netns;
        log_of[host(standby_side)] = "secondary-journaled";
        on_host[host(standby_side)] = &pair.start_extra(COLOD_SECONDARY_BIN, netns, log_of[host(standby_side)], standby_side,
                                                        {"COLOD_FAULT=secondary.disk-journaled:kill@3"});
        REQUIRE(on_host[host(standby_side)]->exit_code(scaled(std::chrono::minutes(5))) == 128 + SIGKILL);
        log_of[host(standby_side)] = "secondary-replayed";
        on_host[host(standby_side)] = &pair.start_extra(COLOD_SECONDARY_BIN, netns, log_of[host(standby_side)], standby_side);
        REQUIRE(pair.wait_state(active_side, "protected", std::chrono::minutes(5)));
        CHECK_THAT(pair.read_log("secondary-replayed"), Catch::Contains("complete: written into"));
        client.join();
        CHECK(client.bad_reply() == std::string());  // shows the reply when it fails
        CHECK(images_equal(active_side));
    }

    // A clean stop from inside the guest: it unmounts its disk first, so the survivor's file
    // system checks clean and holds the records.
    auto last = open_console(pair, active_side);
    REQUIRE(last);
    REQUIRE(last->ready(std::chrono::minutes(1)));
    CHECK(last->command("POWEROFF") == "OK");
    CHECK(on_host[host(active_side)]->exit_code(scaled(std::chrono::seconds(60))) == 0);
    CHECK(on_host[host(standby_side)]->exit_code(scaled(std::chrono::seconds(60))) == 0);
    auto fsck = run_shell(fmt::format("e2fsck -fn {} 2>&1", image(active_side)));
    INFO("e2fsck -fn:\n" << fsck.second);
    CHECK(fsck.first == 0);
    auto lines = run_shell(fmt::format("debugfs -R 'cat /records' {} 2>/dev/null | wc -l", image(active_side)));
    CHECK(std::stoull(lines.second) >= records);
}

}  // namespace

TEST_CASE("a protected Linux pair with a disk: fsync'd records survive kill -9 of the active side, the images are "
          "equal at a paused checkpoint, and a re-protection sends only the blocks that differ",
          "[linux][disk-pair]") {
    disk_pair_rounds("checkpoint");
}

TEST_CASE("COLO with a disk: the secondary's guest writes an overlay, dropped at each checkpoint and kept by a "
          "takeover; records survive kill -9 of the active side",
          "[linux][disk-colo]") {
    disk_pair_rounds("colo");
}

// Kill -9 in the middle of the disk's live copy (fault points in the copy, docs/reliability.md):
// 1. of the primary, before the secondary holds any checkpoint: there is nothing to take over
//    from, so the secondary waits for a primary; the primary's host restarted, its guest boots
//    from its own image, which holds every acknowledged record, and the copy starts again;
// 2. of the secondary, its image half copied: the primary's guest goes on acknowledging
//    records; a secondary started again is copied to, and the images are equal.
TEST_CASE("the disk's live copy cut by a kill of either side: no acknowledged record lost, protected again",
          "[linux][disk-sync-kill]") {
    PairOptions options = linux_options(1);
    options.host_dirs = true;
    options.extra_vm = "disk = disk.img\n";
    Pair pair(options);
    auto image = [&](Side host) { return (pair.host_dir(host) / "disk.img").string(); };
    // A blank image on the secondary: the copy has many blocks to send.
    auto blank_secondary = [&] {
        auto made = run_shell(fmt::format("rm -f {0}.colod-journal && truncate -s 0 {0} && truncate -s 64M {0} 2>&1",
                                          image(Side::Secondary)));
        INFO(made.second);
        REQUIRE(made.first == 0);
    };
    auto made = run_shell(fmt::format("truncate -s 64M {0} && mkfs.ext4 -q -F {0} 2>&1", image(Side::Primary)));
    INFO(made.second);
    REQUIRE(made.first == 0);
    blank_secondary();
    // Every acknowledged record is in the guest's file, nothing beyond what was sent.
    auto check_records = [](GuestConsole& console, const std::vector<std::pair<uint64_t, std::string>>& acked,
                            uint64_t at_most) {
        auto counted = console.command("RECORDS");
        REQUIRE(counted);
        INFO("RECORDS: " << *counted << "\nthe guest's console:\n" << console.seen());
        REQUIRE(std::regex_match(*counted, std::regex("[0-9]+ [0-9]+")));
        uint64_t count = std::stoull(counted->substr(0, counted->find(' ')));
        if (!acked.empty())
            CHECK(count >= acked.back().first);
        CHECK(count <= at_most);
        for (const auto& [n, token] : acked)
            CHECK(console.command(fmt::format("RECORD {}", n)) == fmt::format("{} {}", n, token));
        return count;
    };
    auto images_equal = [&] {
        auto held = pair.control(Side::Primary, "digest", 60000);
        auto other = pair.control(Side::Secondary, "digest", 60000);
        auto same = run_shell(fmt::format("cmp {} {} 2>&1", image(Side::Primary), image(Side::Secondary)));
        REQUIRE(pair.control(Side::Primary, "resume"));
        REQUIRE(held);
        CHECK(held == other);
        INFO(same.second);
        CHECK(same.first == 0);
    };

    // 1. The primary alone first, acknowledging records; then the secondary comes, and the
    //    primary's host dies at the third block the copy sends.
    auto& doomed = pair.start_extra(COLOD_PRIMARY_BIN, "", "primary-doomed", Side::Primary,
                                    {"COLOD_FAULT=primary.disk-copy:kill@3"});
    std::vector<std::pair<uint64_t, std::string>> acked;
    uint64_t sent = 0;
    {
        auto console = open_console(pair, Side::Primary);
        REQUIRE(console);
        await_kvstored(*console, "boot", pair, "primary-doomed");
        AppendClient client;
        client.start(pair, Side::Primary, "p-");
        client.await_acked(10);
        pair.start_secondary();
        REQUIRE(doomed.exit_code(scaled(std::chrono::minutes(5))) == 128 + SIGKILL);
        client.join();
        CHECK(client.bad_reply() == std::string());  // shows the reply when it fails
        acked = client.acked();
        sent = client.sent();
    }
    CHECK_THAT(pair.read_log("primary-doomed"), !Catch::Contains("disk copied:"));  // it died within the copy
    REQUIRE(eventually([&] { return pair.read_log("secondary").find("lost before a complete checkpoint") !=
                                    std::string::npos; },
                       std::chrono::minutes(2)));
    CHECK_THAT(pair.read_log("secondary"), !Catch::Contains("failover"));  // no takeover from a half copy
    WARN("the primary died in the disk's copy with " << acked.size() << " records acknowledged of " << sent);

    // The primary's host back: its guest boots from its image, every acknowledged record in it,
    // and the secondary, still waiting, is copied to from the start.
    auto& primary = pair.start_primary();
    auto console = open_console(pair, Side::Primary);
    REQUIRE(console);
    await_kvstored(*console, "boot after the kill", pair);
    REQUIRE(pair.wait_state(Side::Primary, "protected", std::chrono::minutes(5)));
    uint64_t records = check_records(*console, acked, sent);
    images_equal();

    // 2. The secondary's host dies with its image half copied (blanked first, so the copy is
    //    long); the primary goes on, and the secondary started again is copied to.
    check_healthy(console->seen());
    console.reset();  // every console client gets the guest's output: the APPENDs' replies too
    {
        AppendClient client;
        client.start(pair, Side::Primary, "s-");
        client.await_acked(5);
        pair.secondary()->signal(SIGKILL);
        REQUIRE(pair.secondary()->exit_code() == 128 + SIGKILL);
        blank_secondary();
        auto& half = pair.start_extra(COLOD_SECONDARY_BIN, "", "secondary-half", Side::Secondary,
                                      {"COLOD_FAULT=secondary.disk-copy:kill@3"});
        REQUIRE(half.exit_code(scaled(std::chrono::minutes(5))) == 128 + SIGKILL);
        auto copies = [&] {
            std::string log = pair.read_log("primary");
            size_t n = 0;
            for (size_t at = log.find("disk copied:"); at != std::string::npos; at = log.find("disk copied:", at + 1))
                ++n;
            return n;
        };
        CHECK(copies() == 1);  // the first copy only: this one died half way
        size_t before = client.acked_count();
        client.await_acked(before + 5);
        pair.start_extra(COLOD_SECONDARY_BIN, "", "secondary-again", Side::Secondary);
        REQUIRE(pair.wait_state(Side::Primary, "protected", std::chrono::minutes(5)));
        client.join();
        CHECK(client.bad_reply() == std::string());  // shows the reply when it fails
        console = open_console(pair, Side::Primary);
        REQUIRE(console);
        REQUIRE(console->ready(std::chrono::minutes(1)));
        records = check_records(*console, client.acked(), records + client.sent());
        images_equal();
    }
    CHECK(console->command("POWEROFF") == "OK");
    CHECK(primary.exit_code(scaled(std::chrono::seconds(60))) == 0);
    auto fsck = run_shell(fmt::format("e2fsck -fn {} 2>&1", image(Side::Primary)));
    INFO("e2fsck -fn:\n" << fsck.second);
    CHECK(fsck.first == 0);
    auto lines = run_shell(fmt::format("debugfs -R 'cat /records' {} 2>/dev/null | wc -l", image(Side::Primary)));
    CHECK(std::stoull(lines.second) >= records);
}

TEST_CASE("re-protecting a 1 GiB disk of which 1 % changed sends about 1 % of it", "[linux][disk-reprotect]") {
    PairOptions options = linux_options(1);
    options.host_dirs = true;
    options.extra_vm = "disk = disk.img\n";
    Pair pair(options);
    auto image = [&](Side host) { return (pair.host_dir(host) / "disk.img").string(); };
    // The secondary's image: the primary's, with 1 % of its 64 KiB blocks (164 of 16384)
    // overwritten at random places, as if it had fallen behind.
    auto made = run_shell(fmt::format(
        "truncate -s 1G {0} && mkfs.ext4 -q -F {0} && cp --sparse=always {0} {1} && "
        "for i in $(shuf -i 0-16383 -n 164); do dd if=/dev/urandom of={1} bs=64K seek=$i count=1 conv=notrunc "
        "status=none || exit 1; done 2>&1",
        image(Side::Primary), image(Side::Secondary)));
    INFO(made.second);
    REQUIRE(made.first == 0);
    auto& secondary = pair.start_secondary();
    auto& primary = pair.start_primary();
    auto console = open_console(pair, Side::Primary);
    REQUIRE(console);
    await_kvstored(*console, "boot", pair);
    REQUIRE(pair.wait_state(Side::Primary, "protected", std::chrono::minutes(10)));
    auto copied = disk_copy_figures(pair.read_log("primary"));
    REQUIRE(copied);
    auto status = pair.control(Side::Primary, "status --json");
    REQUIRE(status);
    uint64_t sent_bytes = json_number(*status, "sent_bytes").value_or(0);
    WARN("re-protection of a 1 GiB disk with 164 blocks changed: " << copied->first << " of " << copied->second
                                                                   << " blocks differed; " << sent_bytes
                                                                   << " bytes sent (" << sent_bytes * 100.0 / (1 << 30)
                                                                   << " % of the disk)");
    CHECK(copied->second == 16384);
    CHECK(copied->first >= 164);        // every changed block, and those the booting guest wrote
    CHECK(copied->first <= 164 + 200);  // but not the rest
    CHECK(sent_bytes < (1u << 30) / 20);
    auto held = pair.control(Side::Primary, "digest", 60000);
    auto other = pair.control(Side::Secondary, "digest", 60000);
    REQUIRE(pair.control(Side::Primary, "resume"));
    REQUIRE(held);
    CHECK(held == other);
    CHECK(console->command("POWEROFF") == "OK");
    CHECK(primary.exit_code(scaled(std::chrono::seconds(60))) == 0);
    CHECK(secondary.exit_code(scaled(std::chrono::seconds(60))) == 0);
}
