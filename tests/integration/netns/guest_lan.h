// SPDX-License-Identifier: GPL-2.0-or-later
// The guest's own network for a pair in two namespaces (NetnsPairNetwork): the LAN its clients
// reach it on, apart from the replication link.
//
//   host A (primary's ns)          the test's namespace (client C)        host B (secondary's ns)
//   tap "gtap" ─ bridge "gbr" ─ veth ═══ switch bridge (10.80.N.1) ═══ veth ─ bridge "gbr" ─ tap "gtap"
//
// Each host joins its tap (the daemon's net-tap) to a bridge with a veth to the switch, as a
// host joins a VM to its uplink; the switch learns where the guest's MAC lives from the frames
// it sees, which is why a secondary that takes over must announce it. The guest is 10.80.N.2.
// Everything is removed when the object goes, also when set-up fails half-way.
#pragma once

#include <string>
#include <vector>

#include <fmt/format.h>

#include "tests/integration/netns/netns.h"
#include "tests/support/linux_guest.h"

namespace colod::test {

class GuestLan {
public:
    using Host = NetnsPairNetwork::Side;
    static constexpr const char* k_tap = "gtap";  // inside each host's namespace
    static constexpr const char* k_mac = "52:54:00:c0:10:d0";

    explicit GuestLan(const NetnsPairNetwork& hosts) : m_hosts(hosts) {
        static int counter = 0;
        const int serial = counter++;
        m_switch = fmt::format("gs{}x{}", ::getpid(), serial);
        m_uplinks = {fmt::format("ga{}x{}", ::getpid(), serial), fmt::format("gb{}x{}", ::getpid(), serial)};
        m_subnet = free_subnet();
        try {
            set_up();
        } catch (...) {
            tear_down();
            throw;
        }
    }
    ~GuestLan() { tear_down(); }
    GuestLan(const GuestLan&) = delete;
    GuestLan& operator=(const GuestLan&) = delete;

    std::string guest_ip() const { return fmt::format("10.80.{}.2", m_subnet); }
    std::string client_ip() const { return fmt::format("10.80.{}.1", m_subnet); }
    // The [vm] lines that give the guest its NIC, and the kernel command-line words that give it
    // its address (guests/linux/init).
    static std::string vm_lines() { return fmt::format("net-tap = {}\nmac = {}\n", k_tap, k_mac); }
    std::string cmdline_words() const { return fmt::format("colod.ip={}/24", guest_ip()); }
    // The switch port (this namespace's end of a host's uplink) where the switch last saw the
    // guest's MAC, or "" when it has not (or forgot it).
    std::string port_of_guest_mac() const {
        auto r = run_command({k_bridge, "fdb", "show", "br", m_switch});
        for (size_t at = 0, end; at < r.output.size(); at = end + 1) {
            end = r.output.find('\n', at);
            if (end == std::string::npos)
                end = r.output.size();
            std::string line = r.output.substr(at, end - at);
            if (line.starts_with(k_mac) && line.find(" dev ") != std::string::npos) {
                for (size_t i = 0; i < m_uplinks.size(); ++i)
                    if (line.find(" dev " + m_uplinks[i] + " ") != std::string::npos)
                        return m_uplinks[i];
            }
        }
        return "";
    }
    const std::string& uplink(Host host) const { return m_uplinks[host == Host::Primary ? 0 : 1]; }
    // `options` (a Linux guest's: tests/support/linux_guest.h) with the guest's NIC on this LAN and
    // its address on its kernel command line.
    PairOptions on_lan(PairOptions options) const {
        const std::string cmdline_key = "cmdline = console=ttyS0";
        auto at = options.guest.find(cmdline_key);
        REQUIRE(at != std::string::npos);
        options.guest.insert(at + cmdline_key.size(), " " + cmdline_words());
        options.extra_vm += vm_lines();
        return options;
    }

private:
    static constexpr const char* k_bridge = "/usr/sbin/bridge";

    static void must(const std::vector<std::string>& argv) {
        auto r = run_command(argv);
        std::string line;
        for (const auto& arg : argv)
            line += arg + " ";
        INFO(line << "-> " << r.output);
        REQUIRE(r.exit_code == 0);
    }
    void in_ns(Host host, std::vector<std::string> args) const {
        std::vector<std::string> argv{k_ip, "-n", m_hosts.ns(host)};
        argv.insert(argv.end(), args.begin(), args.end());
        must(argv);
    }
    static int free_subnet() {
        auto r = run_command({k_ip, "-4", "-o", "addr", "show"});
        for (int n = 1 + static_cast<int>(::getpid()) % 200; n < 254; ++n)
            if (r.output.find(fmt::format(" 10.80.{}.", n)) == std::string::npos)
                return n;
        FAIL("no free 10.80.N.0/24 subnet");
        return 0;
    }

    void set_up() {
        must({k_ip, "link", "add", m_switch, "type", "bridge"});
        must({k_ip, "addr", "add", client_ip() + "/24", "dev", m_switch});
        must({k_ip, "link", "set", m_switch, "up"});
        for (Host host : {Host::Primary, Host::Secondary}) {
            const std::string& uplink = this->uplink(host);
            must({k_ip, "link", "add", uplink, "type", "veth", "peer", "name", "glan", "netns", m_hosts.ns(host)});
            must({k_ip, "link", "set", uplink, "master", m_switch});
            must({k_ip, "link", "set", uplink, "up"});
            in_ns(host, {"tuntap", "add", "dev", k_tap, "mode", "tap"});
            in_ns(host, {"link", "add", "gbr", "type", "bridge"});
            in_ns(host, {"link", "set", k_tap, "master", "gbr"});
            in_ns(host, {"link", "set", "glan", "master", "gbr"});
            for (const char* dev : {"gbr", "glan", k_tap})
                in_ns(host, {"link", "set", dev, "up"});
        }
    }
    void tear_down() {
        // The namespaces' own devices go with the namespaces (NetnsPairNetwork); these are ours.
        for (const auto& uplink : m_uplinks)
            run_command({k_ip, "link", "del", uplink});
        run_command({k_ip, "link", "del", m_switch});
    }

    const NetnsPairNetwork& m_hosts;
    std::string m_switch;
    std::vector<std::string> m_uplinks;
    int m_subnet = 0;
};

// A Linux guest's pair (linux_options) with its daemons in the two namespaces.
inline PairOptions netns_linux_options(const NetnsPairNetwork& net, int vcpus = 2) {
    PairOptions options = pair_options_for(net);
    PairOptions guest = linux_options(vcpus);
    options.memory = guest.memory;
    options.vcpus = guest.vcpus;
    options.guest = guest.guest;
    options.heartbeat_interval = guest.heartbeat_interval;
    options.heartbeat_timeout = guest.heartbeat_timeout;
    options.checkpoint_interval = guest.checkpoint_interval;
    return options;
}

}  // namespace colod::test
