// SPDX-License-Identifier: GPL-2.0-or-later
// The pair end to end: real colod-primary and colod-secondary processes, the embedded guest,
// real sockets. Both daemons run on this host over loopback.
#include <catch2/catch.hpp>

#include <pwd.h>
#include <unistd.h>

#include <sys/file.h>
#include <sys/mount.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <thread>

#include "proto/auth.h"
#include "tests/support/crash.h"
#include "tests/support/fake_bzimage.h"
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

    // The killed daemon is gone before another takes its place: a process closes its sockets
    // only after unmapping its memory, so its listening port may still be taken for a while
    // after the primary noticed the loss.
    REQUIRE(pair.secondary()->wait());
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

// What Prometheus's own parser and linter say of a scrape: `promtool check metrics` (Debian's
// prometheus package, which packaging/install-deps.sh installs) reads the exposition from stdin
// and exits 0 when it parses and follows the naming conventions. Nullopt without promtool.
struct Promtool {
    int status = -1;
    std::string output;
};
std::optional<Promtool> promtool_check(const std::string& exposition, const std::filesystem::path& dir) {
    if (::access("/usr/bin/promtool", X_OK) != 0)
        return std::nullopt;
    auto input = dir / "scrape.txt", output = dir / "promtool.out";
    std::ofstream(input) << exposition;
    int status = std::system(("/usr/bin/promtool check metrics < '" + input.string() + "' > '" + output.string() +
                              "' 2>&1")
                                 .c_str());
    std::ifstream in(output);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return Promtool{WIFEXITED(status) ? WEXITSTATUS(status) : -1, text};
}

TEST_CASE("both daemons serve Prometheus metrics; the secondary's show the failover", "[integration][metrics]") {
    PairOptions options;
    options.metrics = true;
    Pair pair(options);
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected"));
    REQUIRE(pair.wait_state(Side::Secondary, "standby"));
    auto value = [&](Side side, const std::string& series) -> std::optional<double> {
        auto text = pair.metrics(side);
        if (!text)
            return std::nullopt;
        return metric_value(*text, series);
    };
    auto primary = pair.metrics(Side::Primary);
    REQUIRE(primary);
    INFO(*primary);
    auto checked = promtool_check(*primary, pair.dir());
    if (checked) {
        INFO("promtool check metrics: " << checked->output);
        CHECK(checked->status == 0);
    } else {
        WARN("promtool (Debian's prometheus package) is not installed: the scrape is not checked by Prometheus's parser");
    }
    CHECK(metric_value(*primary, R"(colod_role{vm="demo",role="primary"})") == 1);
    CHECK(metric_value(*primary, R"(colod_state{vm="demo",state="protected"})") == 1);
    CHECK(metric_value(*primary, R"(colod_state{vm="demo",state="standby"})") == 0);
    CHECK(metric_value(*primary, R"(colod_peer_connected{vm="demo"})") == 1);
    CHECK(metric_value(*primary, R"(colod_sync_progress_ratio{vm="demo"})") == 1);
    CHECK(metric_value(*primary, R"(colod_checkpoints_total{vm="demo",cause="forced"})") >= 1);  // the sync's stop
    CHECK(metric_value(*primary, R"(colod_checkpoint_pause_seconds_count{vm="demo"})") >= 1);
    auto secondary = pair.metrics(Side::Secondary);
    REQUIRE(secondary);
    CHECK(metric_value(*secondary, R"(colod_role{vm="demo",role="secondary"})") == 1);
    CHECK(metric_value(*secondary, R"(colod_state{vm="demo",state="standby"})") == 1);
    CHECK(metric_value(*secondary, R"(colod_state{vm="demo",state="protected"})") == 0);
    CHECK(metric_value(*secondary, R"(colod_failovers_total{vm="demo"})") == 0);
    CHECK(metric_value(*secondary, R"(colod_checkpoints_applied_total{vm="demo"})") >= 1);

    // Checkpoints at the interval keep coming; coloctl checkpoint counts as forced.
    const std::string interval = R"(colod_checkpoints_total{vm="demo",cause="interval"})";
    const std::string forced = R"(colod_checkpoints_total{vm="demo",cause="forced"})";
    double before = value(Side::Primary, interval).value_or(0);
    CHECK(eventually([&] { return value(Side::Primary, interval).value_or(0) > before; }, std::chrono::seconds(60)));
    double forced_before = value(Side::Primary, forced).value_or(0);
    REQUIRE(pair.control(Side::Primary, "checkpoint", 30000));
    CHECK(eventually([&] { return value(Side::Primary, forced).value_or(0) > forced_before; }));
    const std::string applied = R"(colod_checkpoints_applied_total{vm="demo"})";
    double applied_before = value(Side::Secondary, applied).value_or(0);
    CHECK(eventually([&] { return value(Side::Secondary, applied).value_or(0) > applied_before; }));

    pair.primary()->signal(SIGKILL);
    REQUIRE(pair.wait_state(Side::Secondary, "active"));
    // The takeover is counted once the guest runs (a moment after the state says active).
    CHECK(eventually([&] { return value(Side::Secondary, R"(colod_failovers_total{vm="demo"})") == 1; }));
    secondary = pair.metrics(Side::Secondary);
    REQUIRE(secondary);
    INFO(*secondary);
    if (auto after = promtool_check(*secondary, pair.dir())) {
        INFO("promtool check metrics: " << after->output);
        CHECK(after->status == 0);
    }
    CHECK(metric_value(*secondary, R"(colod_state{vm="demo",state="active"})") == 1);
    CHECK(metric_value(*secondary, R"(colod_state{vm="demo",state="standby"})") == 0);
    CHECK(metric_value(*secondary, R"(colod_failovers_total{vm="demo"})") == 1);
    CHECK(metric_value(*secondary, R"(colod_last_failover_duration_seconds{vm="demo"})") > 0);
    CHECK(metric_value(*secondary, R"(colod_guest_running{vm="demo"})") == 1);
    CHECK(metric_value(*secondary, R"(colod_peer_connected{vm="demo"})") == 0);
    CHECK_FALSE(pair.metrics(Side::Primary));  // gone with its daemon
}

TEST_CASE("a metrics port another process holds stops the daemon at start, naming the key", "[integration][metrics]") {
    PairOptions options;
    options.metrics = true;
    Pair pair(options);
    // Something else listens on the primary's metrics port.
    base::Fd holder(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(pair.metrics_port(Side::Primary));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(holder.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0);
    REQUIRE(::listen(holder.get(), 1) == 0);
    auto& primary = pair.start_primary({"--standalone"});
    CHECK(primary.exit_code() == 1);
    CHECK_THAT(pair.read_log("primary"),
               Catch::Contains(fmt::format("primary.metrics: cannot listen on 127.0.0.1:{}: bind: Address already in use",
                                           pair.metrics_port(Side::Primary))));
}

TEST_CASE("a bad vm.disk stops either daemon at start, naming the key, the image and the reason", "[integration][disk]") {
    // A Linux guest (a made-up bzImage: neither daemon gets as far as loading it) whose disk is
    // opened before any KVM call, so this runs on hosts without KVM too.
    PairOptions options;
    options.guest = "kernel = vmlinuz\n";
    options.extra_vm = "disk = disk.img\n";
    Pair pair(options);
    std::ofstream(pair.dir() / "vmlinuz", std::ios::binary) << colod::test::FakeBzImage().text();
    {
        std::ifstream in(pair.config());
        std::string text(std::istreambuf_iterator<char>(in), {});
        std::ofstream(pair.config()) << std::regex_replace(text, std::regex("accelerator = \\w+"), "accelerator = kvm");
    }
    const std::filesystem::path image = pair.dir() / "disk.img";
    auto run = [&](const std::string& program) {
        auto p = Process::spawn({program, "--config", pair.config()}, (pair.dir() / "out.log").string());
        REQUIRE(p);
        int code = p->exit_code();
        std::string out = pair.read_log("out");
        std::filesystem::remove(pair.dir() / "out.log");
        return std::pair{code, out};
    };
    auto refused = [&](const std::string& reason) {
        for (const char* program : {COLOD_PRIMARY_BIN, COLOD_SECONDARY_BIN}) {
            INFO(program << ", expecting: " << reason);
            auto [code, out] = run(program);
            INFO(out);
            CHECK(code == 1);
            CHECK_THAT(out, Catch::Contains("vm.disk: " + image.string() + ": " + reason));
        }
    };
    SECTION("missing") { refused("no such file"); }
    SECTION("a directory") {
        std::filesystem::create_directory(image);
        refused("is a directory");
    }
    SECTION("empty") {
        std::ofstream(image).close();
        refused("is empty");
    }
    SECTION("not whole sectors") {
        std::ofstream(image) << std::string(4097, 'x');
        refused("is 4097 bytes, not a multiple of 512");
    }
    SECTION("held by another process") {
        std::ofstream(image) << std::string(4096, 'x');
        base::Fd holder(::open(image.c_str(), O_RDWR | O_CLOEXEC));
        REQUIRE(::flock(holder.get(), LOCK_EX | LOCK_NB) == 0);
        refused("is in use");
    }
    SECTION("on a read-only file system") {
        // Root opens a file of mode 0444 for writing all the same: a read-only bind mount of the
        // pair's folder is what refuses root too.
        std::ofstream(pair.dir() / "real.img") << std::string(4096, 'x');
        std::filesystem::create_directory(pair.dir() / "ro");
        if (::mount(pair.dir().c_str(), (pair.dir() / "ro").c_str(), nullptr, MS_BIND, nullptr) != 0) {
            WARN("no bind mount here (" << std::strerror(errno) << "): the read-only case is not tested");
            return;
        }
        bool read_only = ::mount(nullptr, (pair.dir() / "ro").c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY,
                                 nullptr) == 0;
        if (read_only) {
            std::filesystem::create_symlink(pair.dir() / "ro" / "real.img", image);
            // The message names the path as configured (the link).
            refused("is on a read-only file system");
        } else {
            WARN("no read-only bind mount here: the read-only case is not tested");
        }
        ::umount2((pair.dir() / "ro").c_str(), MNT_DETACH);
    }
    SECTION("a good image passes (the daemon stops later, at KVM, where there is none)") {
        // What the daemon sees, not what the tests count (COLOD_HOST_KVM=0 leaves an emulating
        // KVM usable to the daemon).
        if (::access("/dev/kvm", R_OK | W_OK) == 0)
            return;  // it would boot the made-up kernel
        std::ofstream(image) << std::string(4096, 'x');
        auto [code, out] = run(COLOD_PRIMARY_BIN);
        INFO(out);
        CHECK(code != 0);
        CHECK_THAT(out, !Catch::Contains("vm.disk"));
        CHECK_THAT(out, Catch::Contains("disk " + image.string() + ": 4096 bytes, serial disk.img"));
        CHECK_THAT(out, Catch::Contains("/dev/kvm"));
    }
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
    // ... and owned by the user the daemon runs as: the refusal names the file, owner and mode.
    if (passwd* nobody = ::getpwnam("nobody"); nobody && ::geteuid() == 0) {
        REQUIRE(::chown((pair.dir() / "demo.key").c_str(), nobody->pw_uid, nobody->pw_gid) == 0);
        CHECK(run(COLOD_PRIMARY_BIN, pair.config(), out) == 2);
        CHECK_THAT(out, Catch::Contains("demo.key") && Catch::Contains("owned by nobody") && Catch::Contains("0600"));
        REQUIRE(::chown((pair.dir() / "demo.key").c_str(), 0, 0) == 0);
    }
    // The replaced per-frame MAC switch is refused, naming what replaced it.
    auto old_switch = write("bad3.conf", std::regex_replace(kvm_first, std::regex("auth-key-file = demo.key\n"),
                                                            "auth-key-file = demo.key\nframe-auth = off\n"));
    CHECK(run(COLOD_SECONDARY_BIN, old_switch, out) == 2);
    CHECK_THAT(out, Catch::Contains("replication.frame-auth = off: was replaced by link-security"));

    if (::access("/dev/kvm", R_OK | W_OK) != 0) {  // the daemon's view (see the bad-disk case)
        auto kvm = write("kvm.conf", kvm_first);
        CHECK(run(COLOD_PRIMARY_BIN, kvm, out) == 1);
        CHECK_THAT(out, Catch::Contains("this host has no KVM"));
    }
}

namespace {

// Replaces the first line starting with `key =` in the pair's config (or adds it to
// [replication] when `line` is given and no such line exists; removes it when `line` is empty).
void set_replication_line(Pair& pair, const std::string& key, const std::string& line) {
    std::string text;
    {
        std::ifstream in(pair.config());
        text.assign(std::istreambuf_iterator<char>(in), {});
    }
    std::regex existing("\n" + key + " = [^\n]*\n");
    if (std::regex_search(text, existing))
        text = std::regex_replace(text, existing, line.empty() ? "\n" : "\n" + line + "\n", std::regex_constants::format_first_only);
    else if (!line.empty())
        text = std::regex_replace(text, std::regex("\n\\[primary\\]\n"), "\n" + line + "\n[primary]\n");
    std::ofstream(pair.config()) << text;
}

std::string key_id_of(const std::filesystem::path& file) {
    auto key = proto::Key::load_file(file.string());
    REQUIRE(key);
    return proto::key_id_hex(key->id());
}

}  // namespace

TEST_CASE("the pair's key is replaced while the guest runs: reload, both keys, a new session under the new key",
          "[integration]") {
    Pair pair;
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected"));
    const std::string old_id = key_id_of(pair.dir() / "demo.key");
    {
        std::ofstream next(pair.dir() / "demo-2.key", std::ios::binary);
        std::mt19937_64 rng(std::random_device{}());
        for (int i = 0; i < 32; ++i)
            next.put(static_cast<char>(rng()));
    }
    ::chmod((pair.dir() / "demo-2.key").c_str(), 0600);
    const std::string new_id = key_id_of(pair.dir() / "demo-2.key");

    // 1. Both hosts learn the next key: coloctl reload on one, SIGHUP on the other. Neither
    //    stops, the guest stays protected.
    set_replication_line(pair, "auth-key-file-next", "auth-key-file-next = demo-2.key");
    auto reloaded = pair.control(Side::Secondary, "reload");
    REQUIRE(reloaded);
    CHECK_THAT(*reloaded, Catch::Contains("key id " + old_id) && Catch::Contains("auth-key-file-next") &&
                              Catch::Contains("key id " + new_id));
    pair.primary()->signal(SIGHUP);
    REQUIRE(eventually([&] { return pair.read_log("primary").find("keys reloaded") != std::string::npos; }));
    CHECK(pair.wait_state(Side::Primary, "protected", std::chrono::seconds(5)));

    // 2. The new key becomes current on the secondary's host only (the file is shared here:
    //    only the daemon that reloads sees the change). A bad key file changes nothing first.
    ::chmod((pair.dir() / "demo-2.key").c_str(), 0644);
    auto refused = daemons::control_request(pair.control_path(Side::Secondary), "reload", 10000);
    REQUIRE(refused);
    CHECK_FALSE(refused->ok);
    CHECK_THAT(refused->body, Catch::Contains("demo-2.key") && Catch::Contains("0644"));
    ::chmod((pair.dir() / "demo-2.key").c_str(), 0600);
    set_replication_line(pair, "auth-key-file", "auth-key-file = demo-2.key");
    set_replication_line(pair, "auth-key-file-next", "");
    reloaded = pair.control(Side::Secondary, "reload");
    REQUIRE(reloaded);
    CHECK_THAT(*reloaded, Catch::Contains("key id " + new_id) && !Catch::Contains("key id " + old_id));

    // 3. A new session: the secondary (holding only the new key) restarts; the primary (old and
    //    new) reconnects, and both agree on the new key.
    size_t primary_from = pair.read_log("primary").size();
    pair.secondary()->signal(SIGTERM);
    CHECK(pair.secondary()->exit_code() == 0);
    pair.start_secondary();
    REQUIRE(pair.wait_state(Side::Primary, "protected"));
    std::string since = pair.read_log("primary").substr(primary_from);
    INFO("primary log since the secondary's restart:\n" << since);
    CHECK_THAT(since, Catch::Contains("link-security encrypted") && Catch::Contains("key id " + new_id));

    // 4. The primary drops the old key too; the session goes on, the old key is gone for good.
    reloaded = pair.control(Side::Primary, "reload");
    REQUIRE(reloaded);
    CHECK_THAT(*reloaded, !Catch::Contains("key id " + old_id));
    auto console = pair.console(Side::Primary);
    REQUIRE(console);
    CHECK(console->command("PING") == "PONG");
    CHECK(pair.status(Side::Primary)->state == "protected");
}

TEST_CASE("link-security none warns at every start; a mismatch between the sides is refused", "[integration]") {
    PairOptions options;
    options.extra_replication = "link-security = none\n";
    Pair pair(options);
    pair.start_secondary();
    REQUIRE(eventually([&] { return pair.status(Side::Secondary).has_value(); }));
    CHECK_THAT(pair.read_log("secondary"), Catch::Contains("link-security = none") &&
                                               Catch::Contains("anyone on the path can read them"));
    // The primary asks for the default (encrypted): refused on both sides, naming the key and
    // both values; the primary runs its guest unprotected.
    set_replication_line(pair, "link-security", "");
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "unprotected"));
    REQUIRE(eventually([&] {
        return pair.read_log("secondary").find("link-security differs: local none, peer encrypted") != std::string::npos;
    }));
    CHECK_THAT(pair.read_log("primary"), Catch::Contains("link-security differs: local encrypted, peer none"));
}
