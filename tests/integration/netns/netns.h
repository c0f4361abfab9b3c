// SPDX-License-Identifier: GPL-2.0-or-later
// Two network namespaces standing in for two hosts: a veth pair between them is the
// replication link (10.77.N.1 and 10.77.N.2), and each namespace has a second veth to the test's
// own namespace so that the test reaches each side's console (10.78.N.2 for the primary,
// 10.79.N.2 for the secondary; the test's ends are .1). Everything is removed when the object
// goes, also when a test fails half-way through the set-up.
#pragma once

#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "tests/support/pair.h"
#include "tests/support/process.h"

namespace colod::test {

inline constexpr const char* k_ip = "/usr/sbin/ip";

struct CommandResult {
    int exit_code = -1;
    std::string output;  // stdout, then stderr
};

// Runs a short command to completion (no shell), collecting what it prints.
inline CommandResult run_command(const std::vector<std::string>& argv) {
    static int counter = 0;
    auto err_path = std::filesystem::temp_directory_path() / fmt::format("colod-cmd-{}-{}.err", ::getpid(), counter++);
    CommandResult result;
    auto p = Process::spawn(argv, err_path.string());
    if (!p) {
        result.output = fmt::format("cannot start {}", argv.empty() ? "" : argv[0]);
        return result;
    }
    while (auto line = p->line(std::chrono::seconds(30)))
        result.output += *line + "\n";
    result.exit_code = p->exit_code(std::chrono::seconds(30));
    {
        std::ifstream in(err_path);
        result.output.append(std::istreambuf_iterator<char>(in), {});
    }
    std::error_code ec;
    std::filesystem::remove(err_path, ec);
    return result;
}

// Why `ip netns` cannot be used here, or nullopt when it can (root, iproute2, a namespace can
// be made).
inline std::optional<std::string> netns_unusable_reason() {
    if (::geteuid() != 0)
        return "not running as root";
    if (::access(k_ip, X_OK) != 0)
        return fmt::format("{} is missing (iproute2)", k_ip);
    std::string probe = fmt::format("colod-probe-{}", ::getpid());
    auto added = run_command({k_ip, "netns", "add", probe});
    if (added.exit_code != 0)
        return fmt::format("ip netns add failed: {}", added.output);
    run_command({k_ip, "netns", "del", probe});
    return std::nullopt;
}

// True when the test can go on; under CI=true an unusable `ip netns` is a failure, elsewhere
// the test says why it skips.
inline bool netns_available_or_skip() {
    auto why = netns_unusable_reason();
    if (!why)
        return true;
    const char* ci = std::getenv("CI");
    if (ci && std::string(ci) == "true")
        FAIL("network namespaces are required under CI=true but unusable: " << *why);
    WARN("SKIPPED: network namespaces are unusable here (" << *why << ")");
    return false;
}

class NetnsPairNetwork {
public:
    enum class Side { Primary, Secondary };
    enum class LinkState { Up, Down };

    NetnsPairNetwork() {
        static int counter = 0;
        int serial = counter++;
        m_primary_ns = fmt::format("colod-p-{}-{}", ::getpid(), serial);
        m_secondary_ns = fmt::format("colod-s-{}-{}", ::getpid(), serial);
        // Interface names have at most 15 characters; only the ends in this namespace need
        // unique names, those inside the new namespaces can be fixed.
        m_primary_host_end = fmt::format("cp{}x{}", ::getpid(), serial);
        m_secondary_host_end = fmt::format("cs{}x{}", ::getpid(), serial);
        m_subnet = free_subnet(serial);
        try {
            set_up();
        } catch (...) {
            tear_down();  // a failed REQUIRE throws; the destructor would not run
            throw;
        }
    }
    ~NetnsPairNetwork() { tear_down(); }
    NetnsPairNetwork(const NetnsPairNetwork&) = delete;
    NetnsPairNetwork& operator=(const NetnsPairNetwork&) = delete;

    const std::string& ns(Side side) const { return side == Side::Primary ? m_primary_ns : m_secondary_ns; }
    std::string replication_ip(Side side) const {
        return fmt::format("10.77.{}.{}", m_subnet, side == Side::Primary ? 1 : 2);
    }
    std::string console_ip(Side side) const {
        return fmt::format("10.{}.{}.2", side == Side::Primary ? 78 : 79, m_subnet);
    }
    // The name of the replication veth inside either namespace.
    static constexpr const char* k_replication_dev = "repl";

    // `ip link set repl up|down` inside one side's namespace.
    void set_replication_link(Side side, LinkState state) {
        in_ns(side, {"link", "set", k_replication_dev, state == LinkState::Up ? "up" : "down"});
    }

    // Bytes sent through the replication veth by one side.
    uint64_t replication_tx_bytes(Side side) {
        auto r = run_command({k_ip, "netns", "exec", ns(side), "cat",
                              fmt::format("/sys/class/net/{}/statistics/tx_bytes", k_replication_dev)});
        REQUIRE(r.exit_code == 0);
        return std::stoull(r.output);
    }

private:
    static void must(const std::vector<std::string>& argv) {
        auto r = run_command(argv);
        std::string line;
        for (const auto& arg : argv)
            line += arg + " ";
        INFO(line << "-> " << r.output);
        REQUIRE(r.exit_code == 0);
    }
    void in_ns(Side side, std::vector<std::string> args) {
        std::vector<std::string> argv{k_ip, "-n", ns(side)};
        argv.insert(argv.end(), args.begin(), args.end());
        must(argv);
    }

    // A third octet whose console subnets this namespace does not use yet (other tests may
    // run beside this one).
    static int free_subnet(int serial) {
        auto r = run_command({k_ip, "-4", "-o", "addr", "show"});
        for (int attempt = 0; attempt < 250; ++attempt) {
            int n = 1 + (static_cast<int>(::getpid()) * 7 + serial + attempt) % 250;
            if (r.output.find(fmt::format(" 10.78.{}.", n)) == std::string::npos &&
                r.output.find(fmt::format(" 10.79.{}.", n)) == std::string::npos)
                return n;
        }
        FAIL("no free 10.78.N.0/24 and 10.79.N.0/24 subnets");
        return 0;
    }

    void tear_down() {
        // Deleting a namespace deletes the veths in it, and with them their peers here; the
        // explicit deletes cover a set-up that failed half-way.
        run_command({k_ip, "netns", "del", m_primary_ns});
        run_command({k_ip, "netns", "del", m_secondary_ns});
        run_command({k_ip, "link", "del", m_primary_host_end});
        run_command({k_ip, "link", "del", m_secondary_host_end});
    }

    void set_up() {
        must({k_ip, "netns", "add", m_primary_ns});
        must({k_ip, "netns", "add", m_secondary_ns});
        in_ns(Side::Primary, {"link", "set", "lo", "up"});
        in_ns(Side::Secondary, {"link", "set", "lo", "up"});
        // The replication link, namespace to namespace.
        in_ns(Side::Primary,
              {"link", "add", k_replication_dev, "type", "veth", "peer", "name", k_replication_dev, "netns", m_secondary_ns});
        for (Side side : {Side::Primary, Side::Secondary}) {
            in_ns(side, {"addr", "add", replication_ip(side) + "/24", "dev", k_replication_dev});
            in_ns(side, {"link", "set", k_replication_dev, "up"});
        }
        // The test's way in to each console.
        for (Side side : {Side::Primary, Side::Secondary}) {
            const std::string& host_end = side == Side::Primary ? m_primary_host_end : m_secondary_host_end;
            int second = side == Side::Primary ? 78 : 79;
            must({k_ip, "link", "add", host_end, "type", "veth", "peer", "name", "host", "netns", ns(side)});
            must({k_ip, "addr", "add", fmt::format("10.{}.{}.1/24", second, m_subnet), "dev", host_end});
            must({k_ip, "link", "set", host_end, "up"});
            in_ns(side, {"addr", "add", console_ip(side) + "/24", "dev", "host"});
            in_ns(side, {"link", "set", "host", "up"});
        }
    }

    std::string m_primary_ns;
    std::string m_secondary_ns;
    std::string m_primary_host_end;
    std::string m_secondary_host_end;
    int m_subnet = 0;
};

// A pair whose daemons run in the two namespaces: replication over the veth link between them,
// each console on the side's link to the test.
inline PairOptions pair_options_for(const NetnsPairNetwork& net) {
    using Host = NetnsPairNetwork::Side;
    PairOptions options;
    options.primary_ip = net.replication_ip(Host::Primary);
    options.secondary_ip = net.replication_ip(Host::Secondary);
    options.primary_console_ip = net.console_ip(Host::Primary);
    options.secondary_console_ip = net.console_ip(Host::Secondary);
    options.primary_netns = net.ns(Host::Primary);
    options.secondary_netns = net.ns(Host::Secondary);
    return options;
}

}  // namespace colod::test
