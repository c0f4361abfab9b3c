// SPDX-License-Identifier: GPL-2.0-or-later
// The pair end to end: real colod-primary and colod-secondary processes, the embedded guest,
// real sockets. Both daemons run on this host over loopback.
#include <catch2/catch.hpp>

#include <atomic>
#include <fstream>
#include <random>
#include <regex>
#include <thread>

#include "tests/support/crash.h"
#include "tests/support/pair.h"
#include "tests/support/tiny_elf.h"

using namespace colod;
using namespace colod::test;
using Side = Pair::Side;
using Clock = std::chrono::steady_clock;


TEST_CASE("a pair syncs, checkpoints under CHURN, and both sides hold the same memory", "[integration][realkvm]") {
    Pair pair;
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected"));
    REQUIRE(pair.wait_state(Side::Secondary, "standby"));
    auto c = pair.console(Side::Primary);
    REQUIRE(c);
    REQUIRE(c->command("CHURN 20") == "OK");
    REQUIRE(eventually([&] { return pair.status(Side::Primary)->checkpoints >= 200; }, std::chrono::seconds(120)));
    for (int round = 0; round < 3; ++round) {
        auto primary = pair.control(Side::Primary, "digest");
        REQUIRE(primary);
        auto secondary = pair.control(Side::Secondary, "digest");
        REQUIRE(secondary);
        INFO("primary " << *primary << " secondary " << *secondary);
        CHECK(*primary == *secondary);
        REQUIRE(pair.control(Side::Primary, "resume"));
        uint64_t seq = std::stoull(*primary);
        REQUIRE(eventually([&] { return pair.status(Side::Primary)->seq > seq + 5; }));
    }
    CHECK(c->command("PING") == "PONG");
}

TEST_CASE("acknowledged INCRs survive the primary's death at random moments", "[integration][realkvm]") {
    const char* env = std::getenv("COLOD_KILL_POINTS");
    auto result = run_kill_rounds(PairOptions{}, env ? std::atoi(env) : 20);
    CHECK(result.violations == 0);
    CHECK(result.takeovers >= result.rounds / 2);
}

TEST_CASE("losing the secondary leaves the primary unprotected within the heartbeat timeout, then re-protected",
          "[integration]") {
    Pair pair;  // heartbeat-timeout 200ms
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected"));
    auto console = pair.console(Side::Primary);
    REQUIRE(console);
    IncrClient client;
    client.start(std::move(*console));
    REQUIRE(eventually([&] { return client.acked() > 20; }));
    client.reset_max_wait();
    auto killed = Clock::now();
    pair.secondary()->signal(SIGKILL);
    REQUIRE(pair.wait_state(Side::Primary, "unprotected", std::chrono::seconds(5)));
    auto detected = Clock::now() - killed;
    uint64_t acked_at_loss = client.acked();
    REQUIRE(eventually([&] { return client.acked() > acked_at_loss + 20; }));
    // A killed process closes its sockets: the loss shows at once, and no client waits for it
    // longer than the heartbeat timeout (plus scheduling slack on a loaded host).
    CHECK(detected < std::chrono::milliseconds(200 + 300));
    CHECK(client.max_wait_us() < (200 + 300) * 1000);

    pair.start_secondary();
    REQUIRE(pair.wait_state(Side::Primary, "protected"));
    REQUIRE(pair.wait_state(Side::Secondary, "standby"));
    uint64_t acked_protected = client.acked();
    REQUIRE(eventually([&] { return client.acked() > acked_protected + 10; }));

    // Now the other direction: the primary dies, the secondary takes over, and a colod-secondary
    // started on the "repaired" host (here: the same host, on the [primary] endpoints) protects it.
    pair.primary()->signal(SIGKILL);
    client.join();
    uint64_t acked = client.acked();
    REQUIRE(pair.wait_state(Side::Secondary, "active"));
    auto& repaired = pair.start_extra(COLOD_SECONDARY_BIN, "", "secondary-on-primary-host");
    REQUIRE(pair.wait_state(Side::Secondary, "protected"));  // the active side, protected again
    REQUIRE(pair.wait_state(Side::Primary, "standby"));      // the new secondary's control socket
    auto on_secondary = pair.console(Side::Secondary);
    REQUIRE(on_secondary);
    uint64_t value = get_counter(*on_secondary);
    CHECK(value >= acked);
    REQUIRE(on_secondary->command("INCR counter") == std::to_string(value + 1));
    // And back: the active side dies, the repaired host takes over on its own console.
    pair.secondary()->signal(SIGKILL);
    REQUIRE(pair.wait_state(Side::Primary, "active"));
    auto on_primary_host = pair.console(Side::Primary);
    REQUIRE(on_primary_host);
    CHECK(get_counter(*on_primary_host) == value + 1);
    (void)repaired;
}

TEST_CASE("a colod-primary whose peer already runs the guest refuses to start", "[integration]") {
    Pair pair;
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected"));
    pair.primary()->signal(SIGKILL);
    REQUIRE(pair.wait_state(Side::Secondary, "active"));
    auto& again = pair.start_primary();
    CHECK(again.exit_code() == 3);
    CHECK_THAT(pair.read_log("primary"), Catch::Contains("refusing to start the guest"));
    CHECK(pair.status(Side::Secondary)->state == "active");
}

TEST_CASE("guest power-off stops both daemons cleanly, without a takeover", "[integration]") {
    // A guest that counts down a few million iterations, then writes 0 to the power port.
    auto image = make_elf({0xb9, 0xc0, 0xc6, 0x2d, 0x00, 0xff, 0xc9, 0x75, 0xfc, 0xba, 0x05, 0x05, 0x00, 0x00, 0x31,
                           0xc0, 0xef, 0xf4});
    PairOptions options;
    Pair probe_dir;  // only for a place to write the image
    std::string path = (probe_dir.dir() / "poweroff.elf").string();
    {
        std::ofstream out(path, std::ios::binary);
        out.write(reinterpret_cast<const char*>(image.data()), static_cast<std::streamsize>(image.size()));
    }
    options.image = path;
    Pair pair(options);
    pair.start_secondary();
    REQUIRE(eventually([&] { return pair.status(Side::Secondary).has_value(); }));
    pair.start_primary();
    CHECK(pair.primary()->exit_code() == 0);
    CHECK(pair.secondary()->exit_code() == 0);
    std::string secondary_log = pair.read_log("secondary");
    CHECK_THAT(secondary_log, !Catch::Contains("failover-begin"));
}

TEST_CASE("coloctl failover hands the guest over with nothing lost", "[integration]") {
    Pair pair;
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected"));
    auto console = pair.console(Side::Primary);
    REQUIRE(console);
    for (int i = 1; i <= 25; ++i)
        REQUIRE(console->command("INCR counter") == std::to_string(i));
    REQUIRE(console->command("SET last planned") == "OK");
    auto reply = pair.control(Side::Primary, "failover", 60000);
    REQUIRE(reply);
    CHECK_THAT(*reply, Catch::Contains("handed over at checkpoint"));
    CHECK(pair.primary()->exit_code() == 0);
    REQUIRE(pair.wait_state(Side::Secondary, "active", std::chrono::seconds(5)));
    auto on_secondary = pair.console(Side::Secondary);
    REQUIRE(on_secondary);
    CHECK(get_counter(*on_secondary) == 25);  // every reply the client saw, and nothing more
    CHECK(on_secondary->command("GET last") == "planned");
    CHECK_THAT(pair.read_log("secondary"), Catch::Contains("planned switchover"));
    CHECK_THAT(pair.read_log("secondary"), !Catch::Contains("fence-run"));
}

TEST_CASE("coloctl stop ends the pair without a takeover", "[integration]") {
    Pair pair;
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected"));
    REQUIRE(pair.control(Side::Primary, "stop"));
    CHECK(pair.primary()->exit_code() == 0);
    CHECK(pair.secondary()->exit_code() == 0);
    CHECK_THAT(pair.read_log("secondary"), Catch::Contains("guest-shutdown"));
    CHECK_THAT(pair.read_log("secondary"), !Catch::Contains("failover-begin"));
}

TEST_CASE("bad configs and keys are refused with the exact reason, before any KVM call", "[integration]") {
    Pair pair;
    auto write = [&](const std::string& name, const std::string& text) {
        std::string path = (pair.dir() / name).string();
        std::ofstream(path) << text;
        return path;
    };
    std::string good;
    {
        std::ifstream in(pair.config());
        good.assign(std::istreambuf_iterator<char>(in), {});
    }
    auto run = [&](const std::string& program, const std::string& config, std::string& out) {
        auto p = Process::spawn({program, "--config", config}, (pair.dir() / "out.log").string());
        REQUIRE(p);
        int code = p->exit_code();
        out = pair.read_log("out");
        std::filesystem::remove(pair.dir() / "out.log");
        return code;
    };
    std::string out;
    // accelerator = kvm first, so a KVM call would show as a KVM error, not the config error.
    std::string kvm_first = std::regex_replace(good, std::regex("accelerator = \\w+"), "accelerator = kvm");
    auto bad_timeout = write("bad1.conf", std::regex_replace(kvm_first, std::regex("heartbeat-timeout = 200ms"),
                                                             "heartbeat-timeout = 30ms"));
    CHECK(run(COLOD_PRIMARY_BIN, bad_timeout, out) == 2);
    CHECK_THAT(out, Catch::Contains("bad1.conf") && Catch::Contains("replication.heartbeat-timeout = 30ms") &&
                        Catch::Contains("must be more than twice heartbeat-interval"));
    CHECK(run(COLOD_SECONDARY_BIN, bad_timeout, out) == 2);
    CHECK_THAT(out, Catch::Contains("heartbeat-timeout"));
    auto typo = write("bad2.conf", std::regex_replace(kvm_first, std::regex("memory ="), "memroy ="));
    CHECK(run(COLOD_PRIMARY_BIN, typo, out) == 2);
    CHECK_THAT(out, Catch::Contains("memroy"));

    // The key file must be private.
    ::chmod((pair.dir() / "demo.key").c_str(), 0644);
    CHECK(run(COLOD_SECONDARY_BIN, pair.config(), out) == 2);
    CHECK_THAT(out, Catch::Contains("demo.key"));
    ::chmod((pair.dir() / "demo.key").c_str(), 0600);

    if (!host_kvm_available()) {
        auto kvm = write("kvm.conf", kvm_first);
        CHECK(run(COLOD_PRIMARY_BIN, kvm, out) == 1);
        CHECK_THAT(out, Catch::Contains("this host has no KVM"));
    }
}
