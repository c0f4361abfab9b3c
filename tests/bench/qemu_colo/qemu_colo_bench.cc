// SPDX-License-Identifier: GPL-2.0-or-later
// colod beside QEMU's own COLO, in one run on the same KVM (the host's /dev/kvm, or the nested
// one: tests/hostkvm/nested.sh). QEMU is a benchmark peer only; colod does not use it.
//
//   1. "[stop]" — per checkpoint, how long the primary's guest is stopped, at about 0, 256 and
//      4096 dirty pages a checkpoint, checkpoint interval 100 ms on both:
//        colod:  checkpoint-interval 100ms, the embedded kvstore guest, CHURN k (k pages a tick,
//                100 ticks/s); the figure is the primary's own per-checkpoint pause (debug
//                record: vCPUs stopped -> running again, the stop itself included);
//        QEMU:   -accel kvm, migrate with x-colo, x-checkpoint-delay 100, guest churn_guest.S
//                (the same k pages a tick at 100 ticks/s); the figure is the primary's
//                colo_vm_state_change trace, 'run' => 'stop' to 'stop' => 'run' (the vCPU
//                stop itself is not in it: QEMU traces after vm_stop returns). Over TCP with
//                TCP_NODELAY forced on both ends (nodelay_preload.c, checked in QEMU's stderr)
//                and over a unix socket.
//      The ratio per row is colod / QEMU (smaller is better for colod); dirty pages per
//      checkpoint are measured on both sides (colod's debug records; QEMU's
//      migration_bitmap_sync_end trace), not assumed.
//      QEMU's guest takes its rate from its command line, not its console: on these runs the
//      primary QEMU's serial port lost output bytes while COLO checkpoints ran (a reply "PONG"
//      arrived as "P"), which the failover probe below tolerates by asking again.
//   2. "[failover]" — kill -9 of the primary -> the secondary's guest answers its console.
//      colod notices by itself (EOF or heartbeat timeout). QEMU's secondary does not: the bench
//      sends x-colo-lost-heartbeat the moment after the kill, as a perfect external monitor
//      would, so QEMU's figure leaves detection out.
//
// Usage: qemu_colo_bench [Catch2 test spec: "[stop]", "[failover]"]
//   COLOD_BENCH_QUICK=1      short windows, one failover each (CTest's smoke run)
//   COLOD_BENCH_WINDOW_S=N   measured seconds per row (default 10)
//   COLOD_BENCH_KILLS=N      failovers per peer (default 5)
//   COLOD_QEMU=PATH          the QEMU binary (default: qemu-system-x86_64 on PATH)
//   COLOD_KEEP_TEST_DIRS=1   keep each run's directory (QEMU command lines, traces, logs)
// Exits 77 (CTest: skipped) without /dev/kvm or QEMU.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <random>
#include <sstream>

#include <fmt/format.h>

#include "tests/support/bench.h"
#include "tests/support/pair.h"

using namespace colod;
using namespace colod::test;
using namespace colod::test::bench;
using Side = Pair::Side;

namespace {

std::string qemu_binary() {
    if (const char* forced = std::getenv("COLOD_QEMU"); forced && *forced)
        return forced;
    const char* path = std::getenv("PATH");
    std::stringstream dirs(path ? path : "/usr/bin:/bin");
    for (std::string dir; std::getline(dirs, dir, ':');) {
        auto candidate = std::filesystem::path(dir) / "qemu-system-x86_64";
        if (::access(candidate.c_str(), X_OK) == 0)
            return candidate.string();
    }
    return {};
}

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream out;
    out << in.rdbuf();
    return out.str();
}

// A QMP connection (unix socket): commands in, the matching "return"/"error" line out, events
// skipped.
class Qmp {
public:
    static std::optional<Qmp> connect(const std::string& path, std::chrono::milliseconds timeout) {
        auto client = LineClient::connect_unix(path, timeout);
        if (!client || !client->line(timeout))  // the greeting
            return std::nullopt;
        Qmp qmp(std::move(*client));
        if (!qmp.execute(R"({"execute": "qmp_capabilities"})"))
            return std::nullopt;
        return qmp;
    }

    // The reply to `command`, or nullopt on EOF or timeout. An {"error": ...} reply is returned
    // as it is: the caller looks at it.
    std::optional<std::string> execute(const std::string& command,
                                       std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        if (!m_client.send(command + "\n"))
            return std::nullopt;
        while (auto reply = m_client.line(timeout)) {  // each event line restarts the wait
            if (reply->find("\"return\"") != std::string::npos || reply->find("\"error\"") != std::string::npos)
                return reply;
        }
        return std::nullopt;
    }

private:
    explicit Qmp(LineClient client) : m_client(std::move(client)) {}
    LineClient m_client;
};

bool is_return(const std::optional<std::string>& reply) {
    return reply && reply->find("\"return\"") != std::string::npos;
}

// One stop of the primary's guest: how long, and the pages dirtied since the last checkpoint.
struct Stop {
    double us;
    uint64_t pages;
};

// The stops in a piece of QEMU's trace log (-msg timestamp=on: "PID@SECONDS.MICROS:event ..."):
// 'run' => 'stop' opens one, 'stop' => 'run' closes it. The migration_bitmap_sync_end in between
// (one a checkpoint) reports the pages newly dirty in the current rate period, which QEMU
// restarts at the first sync a second or more after the last restart: the pages of a
// checkpoint are the rise since the previous sync, or the whole figure after a restart (a
// fall). Only a checkpoint dirtying more than the whole previous second would be miscounted.
std::vector<Stop> qemu_stops(const std::string& log) {
    static const std::regex line(R"(@([0-9]+)\.([0-9]{6}):(colo_vm_state_change Change '(run|stop)' => |)"
                                 R"(migration_bitmap_sync_end dirty_pages ([0-9]+)))");
    std::vector<Stop> out;
    std::optional<double> stopped_at;
    std::optional<uint64_t> period;  // the previous sync's figure
    uint64_t pages = 0;
    for (auto it = std::sregex_iterator(log.begin(), log.end(), line); it != std::sregex_iterator(); ++it) {
        double at = static_cast<double>(std::stoull((*it)[1])) * 1e6 + static_cast<double>(std::stoull((*it)[2]));
        if ((*it)[4] == "run") {
            stopped_at = at;
            pages = 0;
        } else if ((*it)[4] == "stop") {
            if (stopped_at && period)  // the first stop has no previous sync to count from
                out.push_back({at - *stopped_at, pages});
            stopped_at.reset();
        } else {
            uint64_t now = std::stoull((*it)[5]);
            pages = period && now >= *period ? now - *period : now;
            period = now;
        }
    }
    return out;
}

enum class Transport { TcpNodelay, Unix };

// A QEMU COLO pair on this host: secondary (-incoming) and primary, the churn guest in both.
class QemuColo {
public:
    // The guest dirties `pages_per_tick` pages a tick from its first tick (its command line: the
    // primary's console cannot be relied on while COLO runs, see the header).
    QemuColo(Transport transport, uint64_t pages_per_tick) : m_transport(transport), m_pages_per_tick(pages_per_tick) {
        static int serial = 0;
        m_dir = std::filesystem::temp_directory_path() /
                fmt::format("colod-qemu-colo-{}-{}", ::getpid(), serial++);
        std::filesystem::create_directories(m_dir);
        m_console_ports = {free_port(), free_port()};
        m_migration_port = free_port();
    }
    ~QemuColo() {
        m_primary.reset();
        m_secondary.reset();
        if (std::uncaught_exceptions() > 0) {  // a failed REQUIRE: show what QEMU said
            for (const char* name : {"primary", "secondary"}) {
                std::string trace = read_file(m_dir / (std::string(name) + ".trace"));
                fmt::print("--- QEMU {}: {}\n{}--- its trace, last lines:\n{}\n", name,
                           read_file(m_dir / (std::string(name) + ".cmdline")),
                           read_file(m_dir / (std::string(name) + ".err")),
                           trace.substr(trace.size() > 1500 ? trace.size() - 1500 : 0));
            }
        }
        const char* keep = std::getenv("COLOD_KEEP_TEST_DIRS");
        if (keep && std::string(keep) == "1") {
            fmt::print("kept {}\n", m_dir.string());
            return;
        }
        std::error_code ec;
        std::filesystem::remove_all(m_dir, ec);
    }

    // Starts both QEMUs and COLO; returns once the primary has run a first checkpoint.
    void start() {
        spawn("secondary", m_secondary);
        spawn("primary", m_primary);
        auto secondary_qmp = Qmp::connect(qmp_path("secondary"), std::chrono::seconds(20));
        REQUIRE(secondary_qmp);
        auto primary_qmp = Qmp::connect(qmp_path("primary"), std::chrono::seconds(20));
        REQUIRE(primary_qmp);
        const std::string colo_on =
            R"({"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "x-colo", "state": true}]}})";
        REQUIRE(is_return(secondary_qmp->execute(colo_on)));
        REQUIRE(is_return(primary_qmp->execute(colo_on)));
        REQUIRE(is_return(primary_qmp->execute(
            R"({"execute": "migrate-set-parameters", "arguments": {"x-checkpoint-delay": 100}})")));
        REQUIRE(is_return(primary_qmp->execute(
            fmt::format(R"({{"execute": "migrate", "arguments": {{"uri": "{}"}}}})", migration_uri()))));
        m_primary_qmp.emplace(std::move(*primary_qmp));
        m_secondary_qmp.emplace(std::move(*secondary_qmp));
        REQUIRE(eventually([&] { return qemu_stops(trace("primary")).size() >= 2; }, std::chrono::seconds(60)));
        if (m_transport == Transport::TcpNodelay) {
            // The migration connection itself: the primary connects, the secondary accepts.
            CHECK(read_file(m_dir / "primary.err").find("TCP_NODELAY on fd") != std::string::npos);
            CHECK(read_file(m_dir / "secondary.err").find("TCP_NODELAY on fd") != std::string::npos);
        }
    }

    uint16_t console_port(Side side) const { return m_console_ports[side == Side::Primary ? 0 : 1]; }
    std::string trace(const std::string& name) const { return read_file(m_dir / (name + ".trace")); }
    std::optional<Process>& primary() { return m_primary; }
    Qmp& secondary_qmp() { return *m_secondary_qmp; }

private:
    std::string qmp_path(const std::string& name) const { return (m_dir / (name + ".qmp")).string(); }
    std::string migration_uri() const {
        return m_transport == Transport::Unix ? "unix:" + (m_dir / "migration.sock").string()
                                              : fmt::format("tcp:127.0.0.1:{}", m_migration_port);
    }

    void spawn(const std::string& name, std::optional<Process>& into) {
        bool secondary = name == "secondary";
        std::vector<std::string> argv = {
            qemu_binary(), "-accel", "kvm", "-cpu", "host", "-m", "64M", "-smp", "1", "-display", "none",
            "-nodefaults", "-no-user-config", "-kernel", COLOD_QEMU_CHURN_GUEST, "-append",
            fmt::format("churn {}", m_pages_per_tick), "-serial",
            fmt::format("tcp:127.0.0.1:{},server=on,wait=off,nodelay=on",
                        console_port(secondary ? Side::Secondary : Side::Primary)),
            "-qmp", fmt::format("unix:{},server=on,wait=off", qmp_path(name)), "-msg", "timestamp=on", "-D",
            (m_dir / (name + ".trace")).string(), "-trace", "colo_vm_state_change", "-trace",
            "migration_bitmap_sync_end"};
        if (secondary)
            argv.insert(argv.end(), {"-incoming", migration_uri()});
        std::vector<std::string> env;
        if (m_transport == Transport::TcpNodelay)
            env.push_back(std::string("LD_PRELOAD=") + COLOD_NODELAY_PRELOAD);
        std::ofstream command_line(m_dir / (name + ".cmdline"));
        for (const auto& arg : argv)
            command_line << arg << ' ';
        command_line << '\n';
        auto process = Process::spawn(argv, (m_dir / (name + ".err")).string(), env);
        REQUIRE(process);
        into.emplace(std::move(*process));
    }

    Transport m_transport;
    uint64_t m_pages_per_tick;
    std::filesystem::path m_dir;
    std::array<uint16_t, 2> m_console_ports{};
    uint16_t m_migration_port = 0;
    std::optional<Process> m_secondary, m_primary;
    std::optional<Qmp> m_primary_qmp, m_secondary_qmp;
};

// Pages a tick for about `per_checkpoint` dirty pages a 100 ms checkpoint at 100 ticks/s.
uint64_t pages_per_tick(uint64_t per_checkpoint) { return (per_checkpoint + 9) / 10; }

constexpr uint64_t k_targets[] = {0, 256, 4096};

std::chrono::milliseconds window() {
    return std::chrono::milliseconds(1000 * env_int("COLOD_BENCH_WINDOW_S", quick() ? 3 : 10));
}
// After a new rate is set, before the window opens: the rounds of the old rate are gone.
constexpr auto k_settle = std::chrono::seconds(2);

struct Figures {
    double pages_mean = 0, stop_p50 = 0, stop_p99 = 0, per_second = 0;
};

Figures stop_figures(const std::vector<Stop>& stops, double seconds) {
    std::vector<double> us;
    double pages = 0;
    for (const auto& s : stops) {
        us.push_back(s.us);
        pages += static_cast<double>(s.pages);
    }
    return {pages / static_cast<double>(stops.size()), percentile(us, 50), percentile(us, 99),
            static_cast<double>(stops.size()) / seconds};
}

// The figures of a measured window: window() of wall time, longer when the side checkpointed
// fewer than 3 times in it (one that falls behind still gives figures), up to a minute.
Figures window_figures(const std::function<std::vector<Stop>()>& stops_so_far) {
    auto t0 = Clock::now();
    std::this_thread::sleep_for(window());  // the measured window itself
    std::vector<Stop> stops;
    REQUIRE(eventually([&] { return (stops = stops_so_far()).size() >= 3; }, std::chrono::seconds(60)));
    return stop_figures(stops, ms_since(t0) / 1000);
}

PairOptions colod_options() {
    PairOptions options;
    options.checkpoint_interval = "100ms";
    options.env = {"COLOD_LOG_LEVEL=debug"};
    return options;
}

void start_protected(Pair& pair) {
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected"));
}

std::vector<Figures> colod_rows() {
    Pair pair(colod_options());
    start_protected(pair);
    auto c = pair.console(Side::Primary);
    REQUIRE(c);
    std::vector<Figures> rows;
    for (uint64_t target : k_targets) {
        REQUIRE(c->command(fmt::format("CHURN {}", pages_per_tick(target))) == "OK");
        std::this_thread::sleep_for(k_settle);  // a deliberate wait: the window starts at the new rate
        size_t from = pair.read_log("primary").size();
        rows.push_back(window_figures([&] {
            std::vector<Stop> stops;
            for (const auto& r : debug_checkpoints(pair.read_log("primary").substr(from)))
                stops.push_back({static_cast<double>(r.pause_us), r.pages});
            return stops;
        }));
    }
    return rows;
}

std::vector<Figures> qemu_rows(Transport transport) {
    std::vector<Figures> rows;
    for (uint64_t target : k_targets) {
        QemuColo qemu(transport, pages_per_tick(target));
        qemu.start();
        std::this_thread::sleep_for(k_settle);  // a deliberate wait: past the first, full checkpoints
        size_t from = qemu.trace("primary").size();
        rows.push_back(window_figures([&] { return qemu_stops(qemu.trace("primary").substr(from)); }));
    }
    return rows;
}

void print_setting(const char* spec) {
    std::ifstream loadavg("/proc/loadavg");
    std::string load;
    std::getline(loadavg, load);
    fmt::print("  KVM: {} backend; QEMU: {}; {} cores, load average {}\n", test_backend(), qemu_binary(),
               std::thread::hardware_concurrency(), load.substr(0, load.find(' ', load.find(' ') + 1)));
    fmt::print("  both: 64 MiB guest, 100 ticks/s, k pages a tick, checkpoint every 100 ms; loopback\n");
    fmt::print("  reproduce: tests/hostkvm/nested.sh -- {} \"{}\"   (or directly where /dev/kvm exists;\n"
               "             COLOD_KEEP_TEST_DIRS=1 keeps QEMU's command lines and traces)\n",
               COLOD_QEMU_COLO_BENCH_BIN, spec);
}

}  // namespace

TEST_CASE("guest stop per checkpoint, colod beside QEMU COLO", "[stop]") {
    fmt::print("\nGuest stop per checkpoint: colod beside QEMU COLO ({} s windows)\n",
               std::chrono::duration_cast<std::chrono::seconds>(window()).count());
    print_setting("[stop]");
    auto colod = colod_rows();
    auto tcp = qemu_rows(Transport::TcpNodelay);
    auto unix_socket = qemu_rows(Transport::Unix);

    fmt::print("\n| dirty pages/ckpt | k/tick | colod pages | colod stop us p50 | p99    | "
               "QEMU tcp pages | stop us p50 | p99     | colod/QEMU p50 | p99   | "
               "QEMU unix pages | stop us p50 | p99     | colod/QEMU p50 | p99   |\n");
    fmt::print("|------------------|--------|-------------|-------------------|--------|"
               "----------------|-------------|---------|----------------|-------|"
               "-----------------|-------------|---------|----------------|-------|\n");
    auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
    for (size_t i = 0; i < std::size(k_targets); ++i) {
        const auto& o = colod[i];
        const auto& t = tcp[i];
        const auto& u = unix_socket[i];
        fmt::print("| ~{:<15} | {:>6} | {:>11.0f} | {:>17.0f} | {:>6.0f} | {:>14.0f} | {:>11.0f} | {:>7.0f} | {:>14.3f} | "
                   "{:>5.3f} | {:>15.0f} | {:>11.0f} | {:>7.0f} | {:>14.3f} | {:>5.3f} |\n",
                   k_targets[i], pages_per_tick(k_targets[i]), o.pages_mean, o.stop_p50, o.stop_p99, t.pages_mean,
                   t.stop_p50, t.stop_p99, ratio(o.stop_p50, t.stop_p50), ratio(o.stop_p99, t.stop_p99), u.pages_mean,
                   u.stop_p50, u.stop_p99, ratio(o.stop_p50, u.stop_p50), ratio(o.stop_p99, u.stop_p99));
    }
    for (size_t i = 0; i < std::size(k_targets); ++i)
        fmt::print("| {:<16} |        | {:>11.1f} |                   |        | {:>14.1f} |             |         "
                   "|                |       | {:>15.1f} |             |         |                |       |\n",
                   fmt::format("ckpt/s ~{}", k_targets[i]), colod[i].per_second, tcp[i].per_second,
                   unix_socket[i].per_second);
    fmt::print("(pages: dirty pages a checkpoint, mean over the window: colod's debug records, QEMU's "
               "migration_bitmap_sync_end trace. Stop: colod, the pause of its per-checkpoint debug record, vCPU stop "
               "included; QEMU, 'run' => 'stop' to 'stop' => 'run' of colo_vm_state_change, vCPU stop not included. "
               "Ratio: colod / QEMU, target <= 0.1.)\n\n");
}

namespace {

struct FailoverFigures {
    std::vector<double> answered_ms;
    int failed = 0;
};

FailoverFigures colod_failovers(int rounds, std::mt19937& rng) {
    FailoverFigures out;
    for (int round = 0; round < rounds; ++round) {
        Pair pair(colod_options());
        start_protected(pair);
        {
            auto c = pair.console(Side::Primary);
            REQUIRE(c);
            REQUIRE(c->command(fmt::format("CHURN {}", pages_per_tick(256))) == "OK");
        }
        // The kill lands at a random phase of the checkpoint cycle (a deliberate random wait).
        std::this_thread::sleep_for(std::chrono::milliseconds(300 + rng() % 300));
        auto killed = Clock::now();
        ::kill(pair.primary()->pid(), SIGKILL);
        double ms = console_answers_ms(pair.console_ip(Side::Secondary), pair.console_port(Side::Secondary), killed,
                                       scaled(std::chrono::seconds(10)));
        if (ms < 0)
            ++out.failed;
        else
            out.answered_ms.push_back(ms);
    }
    return out;
}

FailoverFigures qemu_failovers(int rounds, std::mt19937& rng) {
    FailoverFigures out;
    for (int round = 0; round < rounds; ++round) {
        QemuColo qemu(Transport::TcpNodelay, pages_per_tick(256));
        qemu.start();
        std::this_thread::sleep_for(std::chrono::milliseconds(300 + rng() % 300));
        auto killed = Clock::now();
        ::kill(qemu.primary()->pid(), SIGKILL);
        // What an ideal monitor would do at once: QEMU's secondary takes over only when told.
        auto reply = qemu.secondary_qmp().execute(R"({"execute": "x-colo-lost-heartbeat"})");
        auto colo_mode_none = [&] {
            auto status = qemu.secondary_qmp().execute(R"({"execute": "query-colo-status"})");
            return status && status->find("\"mode\": \"none\"") != std::string::npos;
        };
        if (!is_return(reply)) {
            // QEMU refuses the command once its secondary has left COLO mode by itself (its
            // incoming thread saw the connection break first): a takeover all the same.
            fmt::print("  QEMU's secondary answered x-colo-lost-heartbeat with {}\n", reply.value_or("nothing"));
            CHECK(reply);
            CHECK(colo_mode_none());
        }
        bool done = eventually(colo_mode_none, std::chrono::seconds(30));
        double ms = done ? console_answers_ms("127.0.0.1", qemu.console_port(Side::Secondary), killed,
                                              scaled(std::chrono::seconds(10)), "PING", "PONG")
                         : -1;
        if (ms < 0)
            ++out.failed;
        else
            out.answered_ms.push_back(ms);
    }
    return out;
}

}  // namespace

TEST_CASE("failover, colod beside QEMU COLO", "[failover]") {
    int rounds = env_int("COLOD_BENCH_KILLS", quick() ? 1 : 5);
    fmt::print("\nFailover: kill -9 of the primary -> the secondary's guest answers its console ({} rounds each)\n",
               rounds);
    print_setting("[failover]");
    std::mt19937 rng(4242);
    auto colod = colod_failovers(rounds, rng);
    auto qemu = qemu_failovers(rounds, rng);
    fmt::print("\n| peer                                               | rounds | no answer | ms p50  | max     |\n");
    fmt::print("|----------------------------------------------------|--------|-----------|---------|---------|\n");
    fmt::print("| colod (detects the loss itself: EOF or heartbeat)  | {:>6} | {:>9} | {:>7.1f} | {:>7.1f} |\n", rounds,
               colod.failed, percentile(colod.answered_ms, 50), percentile(colod.answered_ms, 100));
    fmt::print("| QEMU COLO (x-colo-lost-heartbeat sent by the bench | {:>6} | {:>9} | {:>7.1f} | {:>7.1f} |\n", rounds,
               qemu.failed, percentile(qemu.answered_ms, 50), percentile(qemu.answered_ms, 100));
    fmt::print("|   right after the kill: detection not included)    |        |           |         |         |\n");
    fmt::print("(QEMU's secondary never takes over by itself: without x-colo-lost-heartbeat it waits for ever.)\n\n");
    CHECK(colod.failed == 0);
    CHECK(qemu.failed == 0);
}

int main(int argc, char** argv) {
    if (!host_kvm_available() || qemu_binary().empty()) {
        fmt::print(stderr, "qemu_colo_bench: needs /dev/kvm and qemu-system-x86_64 ({}); run it as "
                           "tests/hostkvm/nested.sh -- {} on a machine without KVM\n",
                   !host_kvm_available() ? "no usable /dev/kvm" : "no QEMU on PATH", COLOD_QEMU_COLO_BENCH_BIN);
        return 77;
    }
    return Catch::Session().run(argc, argv);
}
