// SPDX-License-Identifier: GPL-2.0-or-later
// A Linux guest (guests/linux/: Debian's kernel, kvstored) under the real daemons, on KVM:
//   1. checkpoint pause against dirty pages: the table of pair_bench's [pause] for a Linux guest
//      with 2 vCPUs, CHURN n spread over both (n = 0, 10, 100, 1000 pages a tick);
//   2. live sync time of a 256 MiB and a 1 GiB Linux guest: the secondary is started once the
//      primary's guest answers, and the time to "protected" is set beside a plain memcpy of the
//      same number of bytes, measured in the same run (best of three);
//   3. the guest's network ([net]): TCP request/response latency (p50, p99 of PING on one
//      connection) and bulk throughput (a stream into kvstored's sink) from a client on the
//      guest's LAN, standalone against checkpoint mode (10 and 50 ms) and COLO mode, in one run,
//      each mode's figures also as a ratio to standalone's, and how busy the machine's CPUs
//      were during the bulk transfer and its CPU time per MiB (both hosts share them here);
//   4. the guest's disk ([disk]): 4 KiB synchronous write latency (p50, p99) and IOPS in the
//      guest, standalone against checkpoint mode (10, 50 ms) and COLO mode, and in checkpoint
//      mode the pause and transfer against n disk writes per 10 ms, in one run.
// Needs /dev/kvm (exit 77 without): where the host has none, run it through the nested KVM:
//   HOSTKVM_TCG_THREAD=multi tests/hostkvm/nested.sh --writable build -- build/tests/bench/linux/linux_bench
// (everything is then 50-100 times slower than on hardware: the ratios, not the figures, carry).
// Usage: linux_bench [Catch2 test spec: "[pause]", "[sync]", "[net]", "[disk]"]
//   COLOD_BENCH_QUICK=1  short windows, the 256 MiB sync only (CTest's smoke run)
//   COLOD_LINUX_GUEST_DIR, COLOD_KEEP_TEST_DIRS=1 as for tests/integration/linux.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstring>
#include <fstream>
#include <memory>
#include <regex>

#include <unistd.h>

#include "tests/integration/netns/guest_lan.h"
#include "tests/support/bench.h"
#include "tests/support/linux_guest.h"
#include "tests/support/pause_table.h"
#include "tests/support/process.h"

using namespace colod;
using namespace colod::test;
using namespace colod::test::bench;
using Side = Pair::Side;

namespace {

// The primary's console once kvstored answers on it.
LineClient ready_console(Pair& pair) {
    auto console = pair.console(Side::Primary, std::chrono::seconds(60));
    REQUIRE(console);
    std::string seen;
    bool ready = wait_kvstored(*console, std::chrono::minutes(5), &seen);
    INFO("console:\n" << seen << "\nprimary's log:\n" << pair.read_log("primary"));
    REQUIRE(ready);
    return std::move(*console);
}

// Milliseconds for the best of three memcpys of `bytes` between two buffers already touched.
double memcpy_ms(size_t bytes) {
    auto from = std::make_unique<std::byte[]>(bytes);
    auto to = std::make_unique<std::byte[]>(bytes);
    std::memset(from.get(), 0x5a, bytes);
    std::memset(to.get(), 0, bytes);
    double best = 0;
    for (int i = 0; i < 3; ++i) {
        auto start = Clock::now();
        std::memcpy(to.get(), from.get(), bytes);
        double ms = ms_since(start);
        REQUIRE(to[bytes - 1] == std::byte{0x5a});
        best = i == 0 ? ms : std::min(best, ms);
    }
    return best;
}

}  // namespace

TEST_CASE("checkpoint pause against dirty pages, Linux guest", "[pause]") {
    PairOptions options = linux_options(2);
    options.env = {"COLOD_LOG_LEVEL=debug"};
    std::chrono::milliseconds warm_up = std::chrono::seconds(quick() ? 1 : 2);
    std::chrono::milliseconds window = std::chrono::seconds(quick() ? 2 : 8);
    Pair pair(options);
    pair.start_secondary();
    pair.start_primary();
    LineClient console = ready_console(pair);
    REQUIRE(pair.wait_state(Side::Primary, "protected", std::chrono::minutes(5)));
    fmt::print("Linux guest: {}, 2 vCPUs, memory {}, checkpoint-interval {}, {} backend\n",
               (linux_guest_dir() / "vmlinuz").string(), options.memory, options.checkpoint_interval, test_backend());
    std::vector<PauseRow> rows;
    for (uint64_t n : {0, 10, 100, 1000})
        rows.push_back(measure_pause_row(pair, console, n, warm_up, window));
    print_pause_table(rows, options.checkpoint_interval, warm_up, window);
    REQUIRE(console.command("CHURN 0") == "OK");
}

TEST_CASE("live sync time of a Linux guest against memcpy of its memory", "[sync]") {
    struct Row {
        std::string memory;
        uint64_t bytes;
        double sync_s, memcpy_ms;
    };
    std::vector<Row> rows;
    std::vector<std::pair<std::string, uint64_t>> sizes{{"256M", 256ull << 20}};
    if (!quick())
        sizes.push_back({"1G", 1ull << 30});
    for (const auto& [memory, bytes] : sizes) {
        PairOptions options = linux_options(2, memory);
        options.extra_replication = "connect-retry = 10ms\n";  // the primary finds the secondary at once
        Pair pair(options);
        pair.start_primary();  // unprotected until the secondary comes
        LineClient console = ready_console(pair);
        double copy_ms = memcpy_ms(bytes);
        auto start = Clock::now();
        pair.start_secondary();
        REQUIRE(pair.wait_state(Side::Primary, "protected", std::chrono::minutes(10)));
        rows.push_back(Row{memory, bytes, ms_since(start) / 1000.0, copy_ms});
        REQUIRE(console.command("PING") == "PONG");
    }
    fmt::print("\nLive sync of a Linux guest (2 vCPUs, idle but for its kernel), loopback, {} backend: from "
               "colod-secondary's start to the primary's \"protected\"\n",
               test_backend());
    fmt::print("| memory | sync s  | memcpy ms | sync / memcpy |\n|--------|---------|-----------|---------------|\n");
    for (const auto& r : rows)
        fmt::print("| {:>6} | {:>7.2f} | {:>9.1f} | {:>13.0f} |\n", r.memory, r.sync_s, r.memcpy_ms,
                   r.sync_s * 1000.0 / r.memcpy_ms);
    fmt::print("(sync includes starting colod-secondary and its VM, the handshake, the live pre-copy of every "
               "page and the final stop; memcpy: best of three copies of the same bytes in this process)\n\n");
}

namespace {

struct NetRow {
    std::string mode;
    double p50_ms = 0, p99_ms = 0, mbit_s = 0;
    // Protected modes, during the bulk transfer: checkpoints taken (COLO: how many of them a
    // mismatch asked for) and frames of the primary's input the secondary had to drop.
    uint64_t checkpoints = 0, mismatch = 0, input_dropped = 0;
    // Bytes the checkpoints carried meanwhile (the primary's bytes_sent).
    uint64_t checkpoint_bytes = 0;
    // Frames the primary's NIC wrote into its guest meanwhile, per MiB: a 64 KiB segment
    // (receive offloads, docs/network.md) is one, a 1514-byte frame too.
    double frames_per_mib = 0;
    // COLO, the PINGs: how long the primary's replies waited for the secondary's guest's.
    double compare_p50_ms = 0;
    // The bulk transfer's CPU, whole machine (both hosts' daemons and guests, the client): how
    // busy its CPUs were, and CPU time per MiB delivered.
    double cpu_busy_percent = 0, cpu_ms_per_mib = 0;
};

// The machine's CPU time so far (/proc/stat's "cpu" line, in clock ticks): busy is all but
// idle and iowait.
struct CpuTimes {
    uint64_t busy = 0, total = 0;
};
CpuTimes cpu_times() {
    std::ifstream in("/proc/stat");
    std::string name;
    in >> name;
    REQUIRE(name == "cpu");
    CpuTimes t;
    // user nice system idle iowait irq softirq steal (guest time is inside user already)
    for (int i = 0; i < 8; ++i) {
        uint64_t v = 0;
        in >> v;
        t.total += v;
        if (i != 3 && i != 4)
            t.busy += v;
    }
    REQUIRE(in);
    return t;
}

// The counters a protected row reports for the bulk transfer, read once per side (0 for a side
// that does not answer).
struct BulkCounters {
    uint64_t checkpoints = 0, mismatch = 0, input_dropped = 0, checkpoint_bytes = 0, rx_frames = 0;
};
BulkCounters bulk_counters(Pair& pair) {
    BulkCounters c;
    if (auto primary = pair.control(Side::Primary, "status --json")) {
        c.checkpoints = json_number(*primary, "checkpoints").value_or(0);
        c.mismatch = json_number(*primary, "checkpoints_mismatch").value_or(0);
        c.checkpoint_bytes = json_number(*primary, "bytes_sent").value_or(0);
        if (auto network = primary->find("\"network\": "); network != std::string::npos)
            c.rx_frames = json_number(primary->substr(network), "rx_frames").value_or(0);
    }
    if (auto secondary = pair.control(Side::Secondary, "status --json"))
        c.input_dropped = json_number(*secondary, "input_dropped").value_or(0);
    return c;
}

// A TCP connection to the guest on the LAN once it answers there.
LineClient guest_connection(const GuestLan& lan, uint16_t port, bool ping) {
    auto deadline = Clock::now() + scaled(std::chrono::minutes(2));
    while (Clock::now() < deadline) {
        auto client = LineClient::connect(lan.guest_ip(), port, std::chrono::seconds(2));
        if (client && (!ping || client->command("PING", std::chrono::seconds(30)) == "PONG"))
            return std::move(*client);
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    FAIL("the guest does not answer on " << lan.guest_ip() << ":" << port);
    throw std::logic_error("unreachable");
}

// One mode's figures: `requests` PINGs one after the other on one connection, then `bulk`
// bytes into the guest's sink.
NetRow measure_net(const std::string& mode, const std::string& interval, bool protect, int requests, size_t bulk) {
    NetnsPairNetwork net;
    GuestLan lan(net);
    PairOptions options = lan.on_lan(netns_linux_options(net));
    if (mode == "colo")
        options.mode = "colo";
    if (!interval.empty())
        options.checkpoint_interval = interval;
    Pair pair(options);
    if (protect)
        pair.start_secondary();
    pair.start_primary(protect ? std::vector<std::string>{} : std::vector<std::string>{"--standalone"});
    ready_console(pair);
    if (protect)
        REQUIRE(pair.wait_state(Side::Primary, "protected", std::chrono::minutes(5)));
    LineClient client = guest_connection(lan, 4555, true);
    for (int i = 0; i < 10; ++i)
        REQUIRE(client.command("PING", std::chrono::seconds(60)) == "PONG");
    std::vector<double> latencies;
    for (int i = 0; i < requests; ++i) {
        auto start = Clock::now();
        REQUIRE(client.command("PING", std::chrono::seconds(60)) == "PONG");
        latencies.push_back(ms_since(start));
    }
    NetRow row{mode + (interval.empty() ? "" : " " + interval), percentile(latencies, 50), percentile(latencies, 99), 0};
    if (mode == "colo") {
        auto json = pair.control(Side::Primary, "status --json");
        auto network = json ? json->find("\"network\": ") : std::string::npos;
        if (network != std::string::npos)
            row.compare_p50_ms = static_cast<double>(json_number(json->substr(network), "p50").value_or(0)) / 1000;
    }

    LineClient sink = guest_connection(lan, 4556, false);
    std::string chunk(64 * 1024, 'x');
    BulkCounters before = bulk_counters(pair);
    CpuTimes cpu_before = cpu_times();
    auto start = Clock::now();
    for (size_t sent = 0; sent < bulk; sent += chunk.size())
        REQUIRE(sink.send(chunk));
    sink.shutdown_sending();
    auto count = sink.line(std::chrono::minutes(5));
    double seconds = ms_since(start) / 1000.0;
    CpuTimes cpu_after = cpu_times();
    REQUIRE(count);
    uint64_t received = std::stoull(*count);
    REQUIRE(received == (bulk + chunk.size() - 1) / chunk.size() * chunk.size());
    row.mbit_s = static_cast<double>(received) * 8 / seconds / 1e6;
    uint64_t busy = cpu_after.busy - cpu_before.busy, total = cpu_after.total - cpu_before.total;
    row.cpu_busy_percent = total ? 100.0 * static_cast<double>(busy) / static_cast<double>(total) : 0;
    row.cpu_ms_per_mib = static_cast<double>(busy) * 1000 / static_cast<double>(::sysconf(_SC_CLK_TCK)) /
                         (static_cast<double>(received) / (1 << 20));
    BulkCounters after = bulk_counters(pair);
    row.frames_per_mib = static_cast<double>(after.rx_frames - before.rx_frames) / (static_cast<double>(received) / (1 << 20));
    if (protect) {
        row.checkpoints = after.checkpoints - before.checkpoints;
        row.mismatch = after.mismatch - before.mismatch;
        row.input_dropped = after.input_dropped - before.input_dropped;
        row.checkpoint_bytes = after.checkpoint_bytes - before.checkpoint_bytes;
    }
    return row;
}

}  // namespace

TEST_CASE("the guest's network: TCP latency and bulk throughput, standalone against checkpoint and COLO mode",
          "[net]") {
    if (!netns_available_or_skip())
        return;
    const int requests = quick() ? 50 : 200;
    const size_t bulk = (quick() ? 2u : 16u) << 20;
    std::vector<NetRow> rows;
    rows.push_back(measure_net("standalone", "", false, requests, bulk));
    rows.push_back(measure_net("checkpoint", "10ms", true, requests, bulk));
    rows.push_back(measure_net("checkpoint", "50ms", true, requests, bulk));
    rows.push_back(measure_net("colo", "100ms", true, requests, bulk));
    rows.push_back(measure_net("colo", "400ms", true, requests, bulk));
    rows.push_back(measure_net("colo", "1s", true, requests, bulk));
    fmt::print("\nThe guest's network: a client on its LAN (the test's namespace, a bridge to each host's tap), "
               "{} backend; {} PINGs on one TCP connection, then {} MiB into kvstored's sink\n",
               test_backend(), requests, bulk >> 20);
    fmt::print("| mode | p50 ms | p99 ms | p50 / standalone | reply waited for the secondary, p50 ms | bulk Mbit/s | "
               "bulk / standalone | bulk: checkpoints (mismatch) | bulk: checkpoint MiB | bulk: input dropped | "
               "bulk: CPU busy % | bulk: CPU ms per MiB | bulk: guest frames per MiB |\n"
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const auto& r : rows)
        fmt::print("| {} | {:.2f} | {:.2f} | {:.1f} | {} | {:.1f} | {:.2f} | {} ({}) | {:.1f} | {} | {:.0f} | {:.0f} | {:.0f} |\n",
                   r.mode, r.p50_ms, r.p99_ms, r.p50_ms / rows[0].p50_ms,
                   r.mode.starts_with("colo") ? fmt::format("{:.2f}", r.compare_p50_ms) : std::string("-"), r.mbit_s,
                   r.mbit_s / rows[0].mbit_s, r.checkpoints, r.mismatch,
                   static_cast<double>(r.checkpoint_bytes) / (1 << 20), r.input_dropped, r.cpu_busy_percent,
                   r.cpu_ms_per_mib, r.frames_per_mib);
    fmt::print("(checkpoint mode holds the guest's packets until the next checkpoint is loaded; COLO releases "
               "each as soon as the secondary's guest sent the same, and checkpoints at least every interval: "
               "docs/network.md; CPU: the whole machine's, {} CPUs, both hosts' daemons and guests and the "
               "client)\n\n",
               ::sysconf(_SC_NPROCESSORS_ONLN));
}

namespace {

// A 64 MiB ext4 image on each host (the secondary's a copy of the primary's, so the first copy
// is short), in `mode`, protected unless standalone; returns once kvstored answers.
struct DiskPair {
    std::unique_ptr<Pair> pair;
    LineClient console;
};

DiskPair disk_pair(const std::string& mode, const std::string& interval) {
    PairOptions options = linux_options(1);
    options.host_dirs = true;
    options.extra_vm = "disk = disk.img\n";
    options.primary_env = {"COLOD_LOG_LEVEL=debug"};
    bool protect = mode != "standalone";
    if (protect)
        options.mode = mode;
    if (!interval.empty())
        options.checkpoint_interval = interval;
    auto pair = std::make_unique<Pair>(options);
    auto made = run_shell(fmt::format("truncate -s 64M {0} && mkfs.ext4 -q -F {0} && cp --sparse=always {0} {1} 2>&1",
                                      (pair->host_dir(Side::Primary) / "disk.img").string(),
                                      (pair->host_dir(Side::Secondary) / "disk.img").string()));
    INFO(made.second);
    REQUIRE(made.first == 0);
    if (protect)
        pair->start_secondary();
    pair->start_primary(protect ? std::vector<std::string>{} : std::vector<std::string>{"--standalone"});
    LineClient console = ready_console(*pair);
    if (protect)
        REQUIRE(pair->wait_state(Side::Primary, "protected", std::chrono::minutes(5)));
    return DiskPair{std::move(pair), std::move(console)};
}

struct SyncWriteRow {
    std::string mode;
    double p50_us = 0, p99_us = 0, iops = 0;
    std::string how;  // direct or buffered (the guest's file system took O_DIRECT or not)
};

// DISKSYNC n: n synchronous 4 KiB writes in the guest, timed by the guest.
SyncWriteRow sync_writes(const std::string& mode, LineClient& console, int n) {
    REQUIRE(console.command("DISKSYNC 16", std::chrono::minutes(2)).value_or("").starts_with("OK 16 "));  // warm
    auto reply = console.command(fmt::format("DISKSYNC {}", n), std::chrono::minutes(10));
    REQUIRE(reply);
    std::smatch m;
    INFO("DISKSYNC replied: " << *reply);
    REQUIRE(std::regex_match(*reply, m, std::regex("OK [0-9]+ ([0-9]+) ([0-9]+) [0-9]+ ([0-9]+) (direct|buffered)")));
    return SyncWriteRow{mode, std::stod(m[1]), std::stod(m[2]), n / (std::stod(m[3]) / 1e6), m[4]};
}

struct DiskPauseRow {
    uint64_t n;
    double writes_per_checkpoint, kib_per_checkpoint, pause_p50, pause_p99, transfer_p50, transfer_p99, disk_mb_s;
};

// DISKCHURN n (n 4 KiB writes every 10 ms tick), then a window of the primary's per-checkpoint
// debug records.
DiskPauseRow disk_pause_row(Pair& pair, LineClient& console, uint64_t n, std::chrono::milliseconds warm_up,
                            std::chrono::milliseconds window) {
    REQUIRE(console.command(fmt::format("DISKCHURN {}", n), std::chrono::seconds(60)).value_or("").starts_with("OK"));
    std::this_thread::sleep_for(warm_up);  // the window starts after the first full epochs
    size_t log_from = pair.read_log("primary").size();
    auto t0 = Clock::now();
    std::this_thread::sleep_for(window);  // the measurement window itself
    double seconds = ms_since(t0) / 1000.0;
    auto records = debug_checkpoints(pair.read_log("primary").substr(log_from));
    REQUIRE(!records.empty());
    std::vector<double> pause, transfer;
    uint64_t writes = 0, bytes = 0;
    for (const auto& r : records) {
        pause.push_back(static_cast<double>(r.pause_us));
        transfer.push_back(static_cast<double>(r.transfer_us) / 1000.0);
        writes += r.disk_writes;
        bytes += r.disk_bytes;
    }
    double count = static_cast<double>(records.size());
    return DiskPauseRow{n,
                        static_cast<double>(writes) / count,
                        static_cast<double>(bytes) / 1024.0 / count,
                        percentile(pause, 50),
                        percentile(pause, 99),
                        percentile(transfer, 50),
                        percentile(transfer, 99),
                        static_cast<double>(bytes) / seconds / 1e6};
}

}  // namespace

TEST_CASE("the guest's disk: 4 KiB synchronous writes standalone against checkpoint and COLO mode; the pause "
          "against disk writes per epoch",
          "[disk]") {
    const int writes = quick() ? 50 : 400;
    std::vector<SyncWriteRow> rows;
    std::vector<DiskPauseRow> pauses;
    std::string pause_interval = "50ms";
    for (const auto& [mode, interval] : std::vector<std::pair<std::string, std::string>>{
             {"standalone", ""}, {"checkpoint", "10ms"}, {"checkpoint", "50ms"}, {"colo", "100ms"}}) {
        DiskPair dp = disk_pair(mode, interval);
        rows.push_back(sync_writes(mode + (interval.empty() ? "" : " " + interval), dp.console, writes));
        if (mode == "checkpoint" && interval == pause_interval) {
            std::chrono::milliseconds warm_up = std::chrono::seconds(quick() ? 1 : 2);
            std::chrono::milliseconds window = std::chrono::seconds(quick() ? 2 : 8);
            for (uint64_t n : {0, 1, 10, 50})
                pauses.push_back(disk_pause_row(*dp.pair, dp.console, n, warm_up, window));
            REQUIRE(dp.console.command("DISKCHURN 0").value_or("").starts_with("OK"));
        }
        REQUIRE(dp.console.command("PING") == "PONG");
    }
    fmt::print("\nThe guest's disk (virtio-blk on a 64 MiB raw image per host, ext4 in the guest), {} backend: "
               "{} synchronous 4 KiB writes (O_DIRECT | O_DSYNC) one after the other, timed in the guest\n",
               test_backend(), writes);
    fmt::print("| mode | p50 us | p99 us | p50 / standalone | IOPS | IOPS / standalone | writes |\n"
               "|---|---:|---:|---:|---:|---:|---|\n");
    for (const auto& r : rows)
        fmt::print("| {} | {:.0f} | {:.0f} | {:.2f} | {:.0f} | {:.2f} | {} |\n", r.mode, r.p50_us, r.p99_us,
                   r.p50_us / rows[0].p50_us, r.iops, r.iops / rows[0].iops, r.how);
    fmt::print("(the primary writes its image as the guest asks and fdatasyncs it on the guest's flush; the "
               "writes go to the secondary with the next checkpoint: docs/disk.md)\n\n");
    fmt::print("Checkpoint mode {}: the pause and the transfer against the guest's disk writes (DISKCHURN n: n "
               "writes of 4 KiB every 10 ms)\n",
               pause_interval);
    fmt::print("| n | writes / checkpoint | KiB / checkpoint | pause p50 us | pause p99 us | transfer p50 ms | "
               "transfer p99 ms | disk MB/s |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const auto& r : pauses)
        fmt::print("| {} | {:.1f} | {:.0f} | {:.0f} | {:.0f} | {:.1f} | {:.1f} | {:.2f} |\n", r.n,
                   r.writes_per_checkpoint, r.kib_per_checkpoint, r.pause_p50, r.pause_p99, r.transfer_p50,
                   r.transfer_p99, r.disk_mb_s);
    fmt::print("(transfer: from sending the checkpoint, disk writes first, to the secondary's VMSTATE_LOADED, "
               "which comes after its journal and image are written and fdatasync'd)\n\n");
    CHECK(pauses.size() == 4);
    CHECK(pauses[0].writes_per_checkpoint < pauses[3].writes_per_checkpoint);
}

int main(int argc, char** argv) {
    if (!host_kvm_available()) {
        std::fprintf(stderr, "linux_bench: needs /dev/kvm (Linux guests run on KVM only); run it through "
                             "tests/hostkvm/nested.sh where the host has none\n");
        return 77;
    }
    return Catch::Session().run(argc, argv);
}
