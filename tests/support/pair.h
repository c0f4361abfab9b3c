// SPDX-License-Identifier: GPL-2.0-or-later
// A colod pair for integration tests: writes a config and key into a fresh directory, starts
// the real daemons as child processes (logs in the directory), talks to their control sockets
// and consoles. Both daemons run on this host, on loopback, unless the options put them into
// network namespaces.
#pragma once

#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "daemons/control.h"
#include "tests/support/backend.h"
#include "tests/support/free_port.h"
#include "tests/support/http_client.h"
#include "tests/support/process.h"
#include "tests/support/test_net.h"

namespace colod::test {

struct PairOptions {
    std::string memory = "64M";
    std::string checkpoint_interval = "20ms";
    std::string heartbeat_interval = "20ms";
    std::string heartbeat_timeout = "200ms";
    std::string fence_command;
    std::string mode = "checkpoint";
    std::string image = "builtin:kvstore";
    // The [vm] lines naming the guest instead of `image = …` (a Linux guest's kernel, initrd
    // and cmdline), when set.
    std::string guest;
    int vcpus = 1;
    std::string primary_ip = "127.0.0.1";
    std::string secondary_ip = "127.0.0.1";
    // Network namespaces to run each daemon in (empty: this one).
    std::string primary_netns;
    std::string secondary_netns;
    // Where each side's console listens and the test connects to it (empty: the side's *_ip).
    // In namespaces the replication link and the test's way in are different networks.
    std::string primary_console_ip;
    std::string secondary_console_ip;
    std::vector<std::string> env;  // added to both daemons' environment ("KEY=value")
    // Added to one program's environment only (e.g. a COLOD_FAULT spec for one side). A
    // secondary that took over runs the active engine, whose fault points are named primary.*:
    // a spec meant for the primary must not reach it.
    std::vector<std::string> primary_env;
    std::vector<std::string> secondary_env;
    std::string extra_vm;  // more [vm] lines
    std::string extra_replication;  // more [replication] lines ("max-held-output = 64K\n")
    // Where colod-primary looks for its secondary ("ADDRESS:PORT"), e.g. a proxy in between.
    // When set, the primary reads its own copy of the config (primary.conf) that differs from
    // demo.conf only in [secondary] replication; the secondary still binds the real endpoint.
    std::string primary_peer_endpoint;
    // Each side serves Prometheus metrics (metrics = CONSOLE_IP:PORT in its section).
    bool metrics = false;
    // Each host's daemons read their own copy of the config, in host-primary/ or
    // host-secondary/ of the pair's folder, so that relative paths in it ([vm] disk) name a
    // file of that host's own (host_dir()).
    bool host_dirs = false;
};

// Fields of `coloctl status --json` a test looks at.
struct PairStatus {
    std::string state;
    std::string peer_state;
    uint64_t seq = 0;
    uint64_t checkpoints = 0;
};

inline std::optional<std::string> json_string(const std::string& json, const std::string& key) {
    auto at = json.find("\"" + key + "\": \"");
    if (at == std::string::npos)
        return std::nullopt;
    at += key.size() + 5;
    return json.substr(at, json.find('"', at) - at);
}
inline std::optional<uint64_t> json_number(const std::string& json, const std::string& key) {
    auto at = json.find("\"" + key + "\": ");
    if (at == std::string::npos)
        return std::nullopt;
    return std::stoull(json.substr(at + key.size() + 4));
}

class Pair {
public:
    enum class Side { Primary, Secondary };  // the config's host sections

    explicit Pair(PairOptions options = {}) : m_options(std::move(options)) {
        static int counter = 0;
        m_dir = std::filesystem::temp_directory_path() /
                fmt::format("colod-pair-{}-{}-{}", ::getpid(), counter++, std::random_device{}() % 100000);
        std::filesystem::create_directories(m_dir);
        m_ports = {free_port(), free_port(), free_port(), free_port()};
        if (m_options.metrics)
            m_metrics_ports = {free_port(), free_port()};
        write_key();
        write_config();
    }
    ~Pair() {
        m_primary.reset();
        m_secondary.reset();
        m_extra.clear();
        if (!std::getenv("COLOD_KEEP_TEST_DIRS")) {
            std::error_code ec;
            std::filesystem::remove_all(m_dir, ec);
        }
    }

    const std::filesystem::path& dir() const { return m_dir; }
    std::string config() const { return (m_dir / "demo.conf").string(); }
    // The config file the daemon of that program reads (see PairOptions::primary_peer_endpoint).
    std::string config(Side program) const {
        if (m_options.host_dirs)
            return (host_dir(program) / "demo.conf").string();
        if (program == Side::Primary && !m_options.primary_peer_endpoint.empty())
            return (m_dir / "primary.conf").string();
        return config();
    }
    // A host's own folder (PairOptions::host_dirs).
    std::filesystem::path host_dir(Side host) const {
        return m_dir / (host == Side::Primary ? "host-primary" : "host-secondary");
    }
    uint16_t replication_port(Side side) const { return side == Side::Primary ? m_ports[0] : m_ports[2]; }
    std::string log(const std::string& name) const { return (m_dir / (name + ".log")).string(); }
    uint16_t console_port(Side side) const { return side == Side::Primary ? m_ports[1] : m_ports[3]; }
    std::string ip(Side side) const { return side == Side::Primary ? m_options.primary_ip : m_options.secondary_ip; }
    std::string console_ip(Side side) const {
        const std::string& chosen = side == Side::Primary ? m_options.primary_console_ip : m_options.secondary_console_ip;
        return chosen.empty() ? ip(side) : chosen;
    }
    const PairOptions& options() const { return m_options; }
    uint16_t metrics_port(Side side) const { return side == Side::Primary ? m_metrics_ports[0] : m_metrics_ports[1]; }
    // The body of a scrape of `side`'s metrics endpoint (PairOptions::metrics), or nullopt when
    // it does not answer 200.
    std::optional<std::string> metrics(Side side) {
        auto response = http_get(console_ip(side), metrics_port(side), "/metrics", std::chrono::seconds(10));
        if (!response || !response->starts_with("HTTP/1.1 200 "))
            return std::nullopt;
        return http_body(*response);
    }
    std::string control_path(Side side) const {
        return (m_dir / (side == Side::Primary ? "primary.sock" : "secondary.sock")).string();
    }

    std::vector<std::string> command(const std::string& program, const std::string& netns,
                                     std::vector<std::string> extra = {}) const {
        return command_with(program, netns, config(), std::move(extra));
    }
    std::vector<std::string> command_with(const std::string& program, const std::string& netns,
                                          const std::string& config_file, std::vector<std::string> extra = {}) const {
        std::vector<std::string> argv;
        if (!netns.empty())
            argv = {"/usr/sbin/ip", "netns", "exec", netns};
        argv.push_back(program);
        argv.push_back("--config");
        argv.push_back(config_file);
        argv.insert(argv.end(), extra.begin(), extra.end());
        return argv;
    }

    Process& start_primary(std::vector<std::string> extra = {}) {
        auto p = Process::spawn(command_with(COLOD_PRIMARY_BIN, m_options.primary_netns, config(Side::Primary), extra),
                                log("primary"), env_for(Side::Primary));
        REQUIRE(p);
        m_primary.reset();
        m_primary.emplace(std::move(*p));
        return *m_primary;
    }
    Process& start_secondary() {
        auto p = Process::spawn(command_with(COLOD_SECONDARY_BIN, m_options.secondary_netns, config(Side::Secondary)),
                                log("secondary"), env_for(Side::Secondary));
        REQUIRE(p);
        m_secondary.reset();
        m_secondary.emplace(std::move(*p));
        return *m_secondary;
    }
    // A further daemon (e.g. a new secondary on the repaired host), kept until the pair goes.
    // `host`: whose config it reads (PairOptions::host_dirs; the shared one otherwise).
    // `env`: more of its environment (a COLOD_FAULT spec).
    Process& start_extra(const std::string& program, const std::string& netns, const std::string& name,
                         Side host = Side::Secondary, std::vector<std::string> env = {}) {
        env.insert(env.begin(), m_options.env.begin(), m_options.env.end());
        auto p = Process::spawn(command_with(program, netns, config(host)), log(name), env);
        REQUIRE(p);
        m_extra.push_back(std::make_unique<Process>(std::move(*p)));
        return *m_extra.back();
    }
    std::optional<Process>& primary() { return m_primary; }
    std::optional<Process>& secondary() { return m_secondary; }

    // One control request to the daemon whose control socket belongs to `side`.
    std::optional<std::string> control(Side side, const std::string& request, int timeout_ms = 10000) {
        auto reply = daemons::control_request(control_path(side), request, timeout_ms);
        if (!reply || !reply->ok)
            return std::nullopt;
        return reply->body;
    }
    std::optional<PairStatus> status(Side side) {
        auto json = control(side, "status --json", 2000);
        if (!json)
            return std::nullopt;
        PairStatus s;
        s.state = json_string(*json, "state").value_or("");
        s.peer_state = json_string(*json, "peer_state").value_or("");
        s.seq = json_number(*json, "seq").value_or(0);
        s.checkpoints = json_number(*json, "checkpoints").value_or(0);
        return s;
    }
    // Whether `side` reaches `state` within the timeout. When it does not, says so on stderr with
    // the state it was last seen in and the tail of both daemons' logs (ctest shows the output
    // of a failed test: the reason is then in the CI log, not only in a deleted directory).
    bool wait_state(Side side, const std::string& state, std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
        std::string last = "(no answer on the control socket)";
        bool reached = eventually(
            [&] {
                auto s = status(side);
                if (s)
                    last = s->state;
                return s && s->state == state;
            },
            timeout);
        if (!reached) {
            std::cerr << fmt::format("[pair] the {} did not reach '{}' in time; last seen: {}\n",
                                     side == Side::Primary ? "primary" : "secondary", state, last);
            for (const char* name : {"primary", "secondary"})
                std::cerr << fmt::format("[pair] {}.log, last lines:\n{}", name, log_tail(name, 40));
        }
        return reached;
    }
    // The last `lines` lines of a daemon's log.
    std::string log_tail(const std::string& name, size_t lines) const {
        std::istringstream in(read_log(name));
        std::deque<std::string> tail;
        for (std::string line; std::getline(in, line);) {
            tail.push_back(std::move(line));
            if (tail.size() > lines)
                tail.pop_front();
        }
        std::string out;
        for (const auto& line : tail)
            out += line + "\n";
        return out;
    }

    std::optional<LineClient> console(Side side, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        return LineClient::connect(console_ip(side), console_port(side), timeout);
    }

    std::string read_log(const std::string& name) const {
        std::ifstream in(log(name));
        return std::string(std::istreambuf_iterator<char>(in), {});
    }

    // Daemons started from now on get no per-program environment (a fault spec armed for the
    // first run of a side must not fire again in its replacement).
    void clear_program_env() {
        m_options.primary_env.clear();
        m_options.secondary_env.clear();
    }
    // Both daemons' environment additions plus those of one program.
    std::vector<std::string> env_for(Side program) const {
        std::vector<std::string> env = m_options.env;
        const auto& own = program == Side::Primary ? m_options.primary_env : m_options.secondary_env;
        env.insert(env.end(), own.begin(), own.end());
        return env;
    }

private:
    // A config duration ("200ms", "1s") times the run's time scale: daemons nested in an
    // emulated machine answer 50-100 times slower, and a heartbeat timeout meant for hardware
    // would declare a live peer lost.
    static std::string scaled_duration(const std::string& text) {
        if (time_scale() == 1)
            return text;
        size_t digits = 0;
        while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits])))
            ++digits;
        if (digits == 0)
            return text;
        return std::to_string(std::stoull(text.substr(0, digits)) * static_cast<unsigned>(time_scale())) +
               text.substr(digits);
    }
    void write_key() {
        std::ofstream key(m_dir / "demo.key", std::ios::binary);
        std::mt19937_64 rng(std::random_device{}());
        for (int i = 0; i < 32; ++i)
            key.put(static_cast<char>(rng()));
        key.close();
        ::chmod((m_dir / "demo.key").c_str(), 0600);
    }
    void write_config() {
        std::ofstream(m_dir / "demo.conf") << config_text(m_options.secondary_ip + ":" + std::to_string(m_ports[2]));
        if (m_options.host_dirs)
            for (Side host : {Side::Primary, Side::Secondary}) {
                std::filesystem::create_directories(host_dir(host));
                std::string text = config_text(m_options.secondary_ip + ":" + std::to_string(m_ports[2]));
                auto at = text.find("auth-key-file = demo.key");
                text.replace(at, 24, "auth-key-file = ../demo.key");
                std::ofstream(host_dir(host) / "demo.conf") << text;
            }
        if (!m_options.primary_peer_endpoint.empty())
            std::ofstream(m_dir / "primary.conf") << config_text(m_options.primary_peer_endpoint);
    }
    std::string config_text(const std::string& secondary_replication) const {
        std::ostringstream out;
        out << "[vm]\nname = demo\nmemory = " << m_options.memory << "\nvcpus = " << m_options.vcpus << "\n"
            << (m_options.guest.empty() ? "image = " + m_options.image + "\n" : m_options.guest)
            << "accelerator = " << (test_backend() == "kvm" ? "kvm" : "soft") << "\n"
            << m_options.extra_vm << "[replication]\nmode = " << m_options.mode
            << "\ncheckpoint-interval = " << m_options.checkpoint_interval
            << "\nheartbeat-interval = " << scaled_duration(m_options.heartbeat_interval)
            << "\nheartbeat-timeout = " << scaled_duration(m_options.heartbeat_timeout)
            << "\nfence-command = " << m_options.fence_command
            << "\nauth-key-file = demo.key\n"
            << m_options.extra_replication
            << "[primary]\nreplication = " << m_options.primary_ip << ":" << m_ports[0]
            << "\nconsole = " << console_ip(Side::Primary) << ":" << m_ports[1] << "\ncontrol = " << control_path(Side::Primary)
            << "\n" << metrics_line(Side::Primary)
            << "[secondary]\nreplication = " << secondary_replication
            << "\nconsole = " << console_ip(Side::Secondary) << ":" << m_ports[3]
            << "\ncontrol = " << control_path(Side::Secondary) << "\n" << metrics_line(Side::Secondary);
        return out.str();
    }
    std::string metrics_line(Side side) const {
        if (!m_options.metrics)
            return {};
        return "metrics = " + console_ip(side) + ":" + std::to_string(metrics_port(side)) + "\n";
    }

    PairOptions m_options;
    std::filesystem::path m_dir;
    std::array<uint16_t, 4> m_ports{};
    std::array<uint16_t, 2> m_metrics_ports{};  // PairOptions::metrics
    std::optional<Process> m_primary;
    std::optional<Process> m_secondary;
    std::vector<std::unique_ptr<Process>> m_extra;
};

// The first line of a daemon's log that records `event` ("LEVEL [event]: ..."), and where.
struct LogLine {
    size_t at = std::string::npos;
    std::string text;
    explicit operator bool() const { return at != std::string::npos; }
};
inline LogLine event_line(const std::string& log, const std::string& event) {
    LogLine line;
    line.at = log.find("[" + event + "]:");
    if (line.at == std::string::npos)
        return line;
    size_t begin = log.rfind('\n', line.at);
    begin = begin == std::string::npos ? 0 : begin + 1;
    line.text = log.substr(begin, log.find('\n', line.at) - begin);
    return line;
}
inline bool has_event(const Pair& pair, const std::string& name, const std::string& event) {
    return static_cast<bool>(event_line(pair.read_log(name), event));
}

}  // namespace colod::test
