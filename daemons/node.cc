// SPDX-License-Identifier: GPL-2.0-or-later
#include "daemons/node.h"

#include <atomic>
#include <chrono>
#include <climits>
#include <cstring>
#include <memory>
#include <mutex>

#include "base/events.h"
#include "base/log.h"
#include "core/active_engine.h"
#include "core/disk/image.h"
#include "core/guest_network.h"
#include "core/guest_runtime.h"
#include "core/standby_engine.h"
#include "core/state_sections.h"
#include "core/virtio/blk.h"
#include "daemons/common.h"
#include "daemons/control.h"
#include "daemons/metrics.h"
#include "daemons/status_format.h"
#include "proto/key_ring.h"
#include "proto/link.h"

namespace colod::daemons {

namespace {

using base::Event;
using base::Level;
using Clock = std::chrono::steady_clock;

proto::LinkSecurity link_security(config::LinkSecurity security) {
    switch (security) {
    case config::LinkSecurity::Encrypted: return proto::LinkSecurity::Encrypted;
    case config::LinkSecurity::Authenticated: return proto::LinkSecurity::Authenticated;
    case config::LinkSecurity::None: return proto::LinkSecurity::None;
    }
    return proto::LinkSecurity::Encrypted;
}

core::ReplicationConfig replication_config(const config::PairConfig& cfg, config::Role self, std::string_view role,
                                           std::shared_ptr<const proto::KeyRing> key) {
    core::ReplicationConfig r;
    r.vm_name = cfg.vm.name;
    r.role = std::string(role);
    r.self_address = cfg.host(self).replication.to_string();
    r.peer_address = cfg.host(config::peer_of(self)).replication.to_string();
    r.key = std::move(key);
    r.mode = cfg.replication.mode == config::Mode::Colo ? core::ReplicationMode::Colo : core::ReplicationMode::Checkpoint;
    r.checkpoint_interval = cfg.replication.checkpoint_interval;
    r.heartbeat_interval = cfg.replication.heartbeat_interval;
    r.heartbeat_timeout = cfg.replication.heartbeat_timeout;
    r.connect_retry = cfg.replication.connect_retry;
    r.max_held_output = cfg.replication.max_held_output;
    r.fence_command = cfg.replication.fence_command;
    r.link_security = link_security(cfg.replication.link_security);
    return r;
}

class Node {
public:
    Node(const config::PairConfig& cfg, Program program, Protection protection)
        : m_cfg(cfg), m_program(program), m_protection(protection), m_started(Clock::now()) {}

    int run();

private:
    int fail(std::string message, int code = k_exit_failure) {
        base::log(Level::Error, Event::Error, std::move(message));
        return code;
    }
    std::string_view role() const { return m_program == Program::Primary ? "primary" : "secondary"; }
    int choose_secondary_host(std::optional<proto::Listener>& listener);
    int start_primary();
    bool take_over();
    ControlReply control(const std::string& request);
    // Reads the config file's key paths and both key files again; later handshakes use them.
    ControlReply reload_keys();
    core::Status status();
    void changed(const std::string& why);
    // The guest stopped on its own or by coloctl stop; returns the exit code.
    int guest_stopped();

    const config::PairConfig& m_cfg;
    Program m_program;
    Protection m_protection;
    Clock::time_point m_started;
    config::Role m_self = config::Role::Primary;
    std::shared_ptr<proto::KeyRing> m_key;
    GuestImage m_image;
    std::unique_ptr<core::GuestRuntime> m_runtime;
    proto::Hello m_identity;

    mutable std::mutex m_mutex;  // guards the engine pointers (a takeover adds one)
    std::unique_ptr<core::ActiveEngine> m_active;
    std::unique_ptr<core::StandbyEngine> m_standby;
    std::atomic<bool> m_guest_running{false};
    std::atomic<bool> m_stop_requested{false};  // coloctl stop
    std::atomic<bool> m_handed_over{false};     // coloctl failover moved the guest to the peer
    std::atomic<int> m_peer_shutdown{INT_MIN};  // the primary's guest powered off (standby)
};

int Node::choose_secondary_host(std::optional<proto::Listener>& listener) {
    // The secondary's own endpoints first; on the repaired primary host (after a failover made
    // the other host active) those are not local, or are taken by the active daemon when both
    // run on one host, and the [primary] endpoints are this host's.
    std::string why_not;
    for (config::Role host : {config::Role::Secondary, config::Role::Primary}) {
        std::string address = m_cfg.host(host).replication.to_string();
        auto created = proto::Listener::create(address);
        if (created) {
            m_self = host;
            listener.emplace(std::move(created).value());
            if (host == config::Role::Primary)
                base::log(Level::Notice, Event::None,
                          fmt::format("the [secondary] endpoint is not available here ({}): this secondary uses the "
                                      "[primary] host's endpoints",
                                      why_not));
            return k_exit_ok;
        }
        int err = created.error().sys_errno();
        if (err != EADDRNOTAVAIL && err != EADDRINUSE)
            return fail(fmt::format("cannot listen on {}: {}", address, created.error().message()));
        why_not = fmt::format("{}: {}", address, created.error().message());
    }
    return fail(fmt::format("neither replication endpoint can be bound on this host ({})", why_not));
}

void Node::changed(const std::string& why) { notify("STATUS=" + why); }

int Node::start_primary() {
    if (m_protection == Protection::Replicated) {
        m_active = std::make_unique<core::ActiveEngine>(
            *m_runtime, m_identity, replication_config(m_cfg, m_self, role(), m_key), proto::PeerState::PrimaryActive,
            [this](const std::string& why) { changed(why); });
        auto probe = m_active->probe();
        if (probe.outcome == core::ActiveEngine::Probe::PeerActive) {
            base::log(Level::Error, Event::Refused,
                      fmt::format("refusing to start the guest: the peer already runs it ({}); start "
                                  "colod-secondary here to protect it",
                                  probe.detail),
                      {{"PEER", m_cfg.host(config::peer_of(m_self)).replication.to_string()}, {"REASON", probe.detail}});
            return k_exit_refused;
        }
        if (probe.outcome == core::ActiveEngine::Probe::Unreachable)
            base::log(Level::Warning, Event::Unprotected,
                      fmt::format("no secondary reachable ({}): starting the guest unprotected", probe.detail),
                      {{"REASON", probe.detail}});
    }
    auto booted = m_image.is_linux() ? m_runtime->boot_linux(m_image.kernel, m_image.initrd, m_cfg.vm.cmdline)
                                     : m_runtime->boot(m_image.bytes, m_cfg.vm.cmdline);
    if (!booted)
        return fail(fmt::format("cannot boot {}: {}", m_image.name, booted.error().message()));
    if (auto opened = m_runtime->open_console(); !opened)
        return fail(opened.error().message());
    if (auto* network = m_runtime->network()) {
        if (auto input = network->start_input(); !input)
            return fail(fmt::format("tap {}: {}", network->tap_name(), input.error().message()));
    }
    if (auto started = m_runtime->start(); !started)
        return fail(fmt::format("cannot start the vCPUs: {}", started.error().message()));
    m_guest_running = true;
    if (m_active)
        m_active->start();
    auto console = m_cfg.host(m_self).console.to_string();
    base::log(Level::Notice, Event::Started,
              fmt::format("guest {} running on the {} backend, {}; console on {}", m_image.name,
                          m_runtime->machine().backend_name(),
                          m_active ? "replicating to " + m_cfg.host(config::peer_of(m_self)).replication.to_string()
                                   : std::string("standalone (unprotected)"),
                          console),
              {{"CONSOLE", console}});
    return k_exit_ok;
}

bool Node::take_over() {
    // Runs on the standby engine's thread once it has decided (and fenced).
    if (m_image.is_linux())
        m_runtime->machine().set_reboot_in_place(true);  // the guest here is the pair's now
    if (auto opened = m_runtime->open_console(); !opened) {
        base::log(Level::Error, Event::Error, "takeover: " + opened.error().message());
        return false;
    }
    if (auto* network = m_runtime->network()) {
        // The guest's frames go out from now on (the engine holds them again once a new
        // secondary protects it); the network's go to the guest; and the network learns that
        // the guest's MAC lives here now.
        network->set_sink(nullptr);
        if (auto input = network->start_input(); !input) {
            base::log(Level::Error, Event::Error,
                      fmt::format("takeover: tap {}: {}", network->tap_name(), input.error().message()));
            return false;
        }
        network->announce();
    }
    if (m_runtime->running()) {
        // COLO: the guest already runs here and carries on.
    } else if (auto started = m_runtime->machine().started() ? m_runtime->restart() : m_runtime->start(); !started) {
        base::log(Level::Error, Event::Error, "takeover: cannot start the vCPUs: " + started.error().message());
        return false;
    }
    m_guest_running = true;
    auto active = std::make_unique<core::ActiveEngine>(*m_runtime, m_identity,
                                                       replication_config(m_cfg, m_self, role(), m_key),
                                                       proto::PeerState::SecondaryActive,
                                                       [this](const std::string& why) { changed(why); });
    active->continue_from(m_standby->committed());
    active->start();
    {
        std::lock_guard lock(m_mutex);
        m_active = std::move(active);
    }
    notify(fmt::format("STATUS=active: took over; console on {}", m_cfg.host(m_self).console.to_string()));
    return true;
}

core::Status Node::status() {
    core::Status s;
    s.vm = m_cfg.vm.name;
    s.role = std::string(role());
    s.mode = std::string(config::mode_name(m_cfg.replication.mode));
    s.backend = std::string(m_runtime->machine().backend_name());
    s.peer = m_cfg.host(config::peer_of(m_self)).replication.to_string();
    s.peer_state = "none";
    s.uptime_ms = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - m_started).count());
    bool stopped = m_runtime->machine().stopped();
    bool running = m_runtime->running();
    s.guest = running ? "running"
              : stopped ? std::string(core::stop_reason_name(m_runtime->machine().stop_info().reason))
                        : "not running";
    s.console_clients = m_runtime->console() ? m_runtime->console()->client_count() : 0;
    if (auto* network = m_runtime->network())
        network->fill_status(s);  // before m_mutex: it takes the NIC's lock
    std::lock_guard lock(m_mutex);
    if (m_active)
        m_active->fill_status(s);
    else if (m_standby)
        m_standby->fill_status(s);
    else
        s.state = "unprotected";
    if (m_standby) {
        // After a takeover the figures are the active engine's; the takeovers are the standby's.
        auto failovers = m_standby->failovers();
        s.failovers = failovers.count;
        s.last_failover_us = failovers.last_us;
    }
    if (m_guest_running && stopped)
        s.state = "stopped";
    return s;
}

ControlReply Node::control(const std::string& request) {
    if (request == "status")
        return {true, status_text(status())};
    if (request == "status --json")
        return {true, status_json(status())};
    core::ActiveEngine* active = nullptr;
    core::StandbyEngine* standby = nullptr;
    {
        std::lock_guard lock(m_mutex);
        active = m_active.get();
        standby = m_standby.get();
    }
    if (request == "checkpoint") {
        if (!active)
            return {false, m_guest_running ? "this daemon runs standalone: there is no secondary"
                                           : "this daemon is a standby: checkpoints are taken by the active side"};
        auto seq = active->checkpoint_now(std::chrono::seconds(10));
        if (!seq)
            return {false, seq.error().message()};
        return {true, fmt::format("checkpoint {} committed\n", *seq)};
    }
    if (request == "failover") {
        if (standby && !active) {
            auto seq = standby->failover_now();
            if (!seq)
                return {false, seq.error().message()};
            return {true, fmt::format("took over from checkpoint {}\n", *seq)};
        }
        if (!active)
            return {false, "this daemon runs standalone: there is no secondary to hand the guest to"};
        auto seq = active->handover(std::chrono::seconds(50));
        if (!seq)
            return {false, seq.error().message()};
        m_handed_over = true;
        m_runtime->stop("handed over to the peer");
        return {true, fmt::format("handed over at checkpoint {}: the guest runs on the peer\n", *seq)};
    }
    // Diagnostics for tests and for operators who want to see that both sides hold the same
    // memory: "digest" on the active side takes a checkpoint and keeps the guest paused at it;
    // "digest" on the standby then reports the same checkpoint; "resume" lets the guest go on.
    // With a disk a third word is the image's digest at that checkpoint (the guest is held,
    // so nothing writes it meanwhile).
    if (request == "digest") {
        auto disk_word = [](const std::optional<base::Result<uint64_t>>& disk) -> base::Result<std::string> {
            if (!disk)
                return std::string();
            if (!*disk)
                return base::Error::make(base::Errc::System, "cannot read the disk image: {}",
                                         disk->error().message());
            return fmt::format(" {:016x}", disk->value());
        };
        if (active) {
            auto held = active->checkpoint_and_hold(std::chrono::seconds(10));
            if (!held)
                return {false, held.error().message()};
            std::optional<base::Result<uint64_t>> disk;
            if (auto* blk = m_runtime->machine().linux_devices().blk)
                disk = core::disk_digest(*blk->backend());
            auto word = disk_word(disk);
            if (!word)
                return {false, word.error().message()};
            return {true, fmt::format("{} {:016x}{}\n", held->first, held->second, *word)};
        }
        if (standby) {
            auto digest = standby->digest();
            auto word = disk_word(digest.disk);
            if (!word)
                return {false, word.error().message()};
            return {true, fmt::format("{} {:016x}{}\n", digest.seq, digest.memory, *word)};
        }
        return {false, "no replication here"};
    }
    if (request == "resume") {
        if (!active)
            return {false, "nothing is held here"};
        active->release_hold();
        return {true, "resumed\n"};
    }
    if (request == "reload")
        return reload_keys();
    if (request == "stop") {
        m_stop_requested = true;
        if (m_guest_running)
            m_runtime->stop("stopped by coloctl");
        return {true, "stopping\n"};
    }
    return {false, fmt::format("unknown request '{}'", request)};
}

ControlReply Node::reload_keys() {
    if (!m_key)
        return {false, "this daemon runs standalone: it has no replication keys"};
    // The key paths may have changed in the file (a rotation's steps do that); nothing else is
    // applied without a restart.
    auto fresh = config::load(m_cfg.file);
    if (!fresh) {
        std::string why = fmt::format("reload refused, the keys in use stay: invalid config:\n{}", fresh.error().message());
        base::log(Level::Error, Event::Error, why);
        return {false, why};
    }
    config::ReplicationConfig ours = m_cfg.replication;
    config::ReplicationConfig theirs = fresh->replication;
    ours.auth_key_file = theirs.auth_key_file;
    ours.auth_key_file_next = theirs.auth_key_file_next;
    bool others_changed = !(ours == theirs) || !(m_cfg.vm == fresh->vm) || !(m_cfg.primary == fresh->primary) ||
                          !(m_cfg.secondary == fresh->secondary);
    auto keys = proto::KeySet::load(theirs.auth_key_file.string(), theirs.auth_key_file_next.string());
    if (!keys) {
        std::string why = fmt::format("reload refused, the keys in use stay: {}", keys.error().message());
        base::log(Level::Error, Event::Error, why, {{"REASON", keys.error().message()}});
        return {false, why};
    }
    std::string described = keys->describe();
    m_key->replace(std::move(keys).value());
    base::log(Level::Notice, Event::None,
              fmt::format("keys reloaded: {}; the next handshake uses them (a session already up keeps its keys)",
                          described));
    if (others_changed)
        base::log(Level::Warning, Event::None,
                  fmt::format("{} changed beyond the key files: a reload applies auth-key-file and auth-key-file-next "
                              "only, the rest needs a restart",
                              m_cfg.file.string()));
    return {true, fmt::format("keys reloaded: {}\n", described)};
}

int Node::guest_stopped() {
    // The console stays open until the daemon's end (run()'s last wait()): a protected guest's
    // output since its last checkpoint is released by guest_shutdown() below, and its clients
    // must get it — the reply to the command that powered the guest off among them.
    core::StopInfo info = m_runtime->wait_stopped();
    core::ActiveEngine* active = nullptr;
    {
        std::lock_guard lock(m_mutex);
        active = m_active.get();
    }
    if (m_handed_over) {
        base::log(Level::Notice, Event::Stopped, "stopping: the guest was handed over to the peer",
                  {{"REASON", "planned switchover"}});
        return k_exit_ok;
    }
    bool clean = info.reason == core::StopReason::PowerOff ||
                 (info.reason == core::StopReason::Requested && m_stop_requested);
    if (active) {
        // The guest is gone by its own doing (or the operator's): the peer must not bring it back.
        active->guest_shutdown(info.reason == core::StopReason::PowerOff ? info.exit_code : clean ? 0 : -1);
    }
    base::log(clean ? Level::Notice : Level::Error, Event::Stopped,
              fmt::format("stopping: the guest stopped ({}: {})", core::stop_reason_name(info.reason), info.detail),
              {{"REASON", std::string(core::stop_reason_name(info.reason))}});
    return clean ? k_exit_ok : k_exit_failure;
}

int Node::run() {
    std::optional<proto::Listener> listener;
    if (m_program == Program::Secondary) {
        if (int code = choose_secondary_host(listener); code != k_exit_ok)
            return code;
    }
    if (m_protection == Protection::Replicated) {
        auto keys = proto::KeySet::load(m_cfg.replication.auth_key_file.string(),
                                        m_cfg.replication.auth_key_file_next.string());
        if (!keys)
            return fail(fmt::format("replication: {}", keys.error().message()), k_exit_usage);
        base::log(Level::Info, Event::None, fmt::format("replication keys: {}", keys->describe()));
        m_key = std::make_shared<proto::KeyRing>(std::move(keys).value());
        if (m_cfg.replication.link_security == config::LinkSecurity::None)
            base::log(Level::Warning, Event::None,
                      "link-security = none: after the handshake the replication link carries the guest's memory, "
                      "console and device state in clear with a CRC only: anyone on the path can read them, and "
                      "can change a checkpoint undetected by fixing up its CRC. Use it only on a link no one "
                      "else can reach",
                      {{"REASON", "link-security none"}});
    }
    // Each host opens its own copy of the disk image at start, as it opens its tap, and before
    // any KVM call: a missing, read-only or misshapen image stops the daemon now. The engines
    // keep the two copies equal (core/disk_replication.h); a secondary also opens the journal
    // beside its image below.
    std::shared_ptr<core::disk::BlockBackend> disk;
    std::string disk_serial;
    if (m_cfg.vm.has_disk()) {
        auto opened = core::disk::FileImage::open(m_cfg.vm.disk);
        if (!opened)
            return fail(fmt::format("vm.disk: {}", opened.error().message()));
        disk_serial = core::virtio::BlkDevice::serial_for(m_cfg.vm.disk.string());
        base::log(Level::Info, Event::None,
                  fmt::format("disk {}: {} bytes, serial {}", m_cfg.vm.disk.string(), (*opened)->size(), disk_serial));
        disk = std::move(opened).value();
    }
    auto backend = choose_backend(m_cfg.vm);
    if (!backend)
        return fail(fmt::format("vm.kernel: {}", backend.error().message()), k_exit_usage);
    auto image = load_image(m_cfg.vm);
    if (!image)
        return fail(image.error().message());
    m_image = std::move(image).value();

    core::RuntimeOptions options;
    options.machine.memory_bytes = m_cfg.vm.memory_bytes;
    options.machine.vcpus = m_cfg.vm.vcpus;
    options.machine.backend = *backend;
    options.machine.guest = m_image.is_linux() ? core::GuestKind::Linux : core::GuestKind::Elf;
    if (m_cfg.vm.has_network()) {
        options.machine.linux_board.nic_mac = m_cfg.vm.mac;
        options.net_tap = m_cfg.vm.net_tap;
    }
    options.machine.linux_board.disk = std::move(disk);
    options.machine.linux_board.disk_serial = std::move(disk_serial);
    const config::ConsoleAddress& console = m_cfg.host(m_self).console;
    options.console.host = console.tcp.host;
    options.console.port = console.tcp.port;
    options.console.unix_path = console.unix_path;
    options.console.max_clients = m_cfg.vm.console_clients;
    if (!console.is_local())
        base::log(Level::Warning, Event::None,
                  fmt::format("console = {} can be reached from other hosts: anyone who reaches that address "
                              "gets the guest's serial console, which for a Linux guest is a root shell. Use a "
                              "loopback address, or a unix socket (console = unix:/run/colod/{}-console.sock, "
                              "mode 0600) with coloctl console",
                              console.to_string(), m_cfg.vm.name),
                  {{"CONSOLE", console.to_string()}, {"REASON", "console not on loopback"}});
    auto runtime = core::GuestRuntime::create(options);
    if (!runtime)
        return fail(fmt::format("cannot create the VM: {}", runtime.error().message()));
    m_runtime = std::move(runtime).value();
    // Both hosts open their tap at start: a missing tap, or one another process holds, stops
    // the daemon now rather than at a failover. A standby's guest sends nothing to the world
    // and hears nothing from it until it takes over (take_over()).
    if (auto opened = m_runtime->open_network(); !opened)
        return fail(fmt::format("vm.net-tap: {}", opened.error().message()));
    if (auto* network = m_runtime->network(); network && m_program == Program::Secondary)
        network->set_sink([](std::span<const std::byte>) { return true; });
    m_identity = core::machine_identity(m_runtime->machine(), m_cfg.vm.name, m_image.bytes);
    // A Linux guest that reboots does so in place (docs/linux-guests.md). A COLO secondary's
    // replica does not: it stops, and the primary's next checkpoint (of its rebooted guest) runs
    // it again; it reboots in place once it has taken over (take_over()).
    if (m_image.is_linux()) {
        if (m_program == Program::Secondary) {
            // Its machine only holds state until it takes over; the primary's boot_linux does this.
            if (auto prepared = m_runtime->machine().prepare_reboot(m_image.kernel, m_image.initrd, m_cfg.vm.cmdline);
                !prepared)
                return fail(fmt::format("cannot prepare the VM: {}", prepared.error().message()));
        }
        m_runtime->machine().set_reboot_in_place(m_program == Program::Primary ||
                                                 m_cfg.replication.mode != config::Mode::Colo);
    }

    if (m_program == Program::Primary) {
        if (int code = start_primary(); code != k_exit_ok)
            return code;
    } else {
        core::StandbyEngine::Callbacks callbacks;
        callbacks.take_over = [this] { return take_over(); };
        callbacks.guest_shutdown = [this](int code) { m_peer_shutdown = code; };
        callbacks.changed = [this](const std::string& why) { changed(why); };
        m_standby = std::make_unique<core::StandbyEngine>(*m_runtime, m_identity,
                                                          replication_config(m_cfg, m_self, role(), m_key),
                                                          std::move(*listener), std::move(callbacks));
        if (auto* blk = m_runtime->machine().linux_devices().blk) {
            // The image moves from checkpoint to checkpoint through a journal beside it; one
            // left complete by a crash is written into the image first.
            auto replica = core::DiskReplica::open(*blk, core::disk::EpochJournal::path_for(m_cfg.vm.disk));
            if (!replica)
                return fail(fmt::format("vm.disk: {}", replica.error().message()));
            m_standby->set_disk(std::move(replica).value());
        }
        m_standby->start();
        base::log(Level::Notice, Event::Started,
                  fmt::format("standing by for {} on {}", m_cfg.vm.name, m_cfg.host(m_self).replication.to_string()),
                  {{"PEER", m_cfg.host(config::peer_of(m_self)).replication.to_string()}});
    }

    auto control_server = ControlServer::create(m_cfg.host(m_self).control, [this](const std::string& r) { return this->control(r); });
    if (!control_server)
        return fail(control_server.error().message());
    // Prometheus metrics, when this host's section asks for them: a snapshot of status() per
    // scrape, on the server's own thread.
    std::unique_ptr<MetricsServer> metrics;
    if (const auto& endpoint = m_cfg.host(m_self).metrics) {
        auto created = MetricsServer::create(*endpoint, [this] { return status(); });
        if (!created)
            return fail(fmt::format("{}.metrics: {}", config::role_name(m_self), created.error().message()));
        metrics = std::move(created).value();
        base::log(Level::Notice, Event::None,
                  fmt::format("Prometheus metrics on http://{}/metrics", endpoint->to_string()),
                  {{"METRICS", endpoint->to_string()}});
    }

    notify(m_program == Program::Primary ? "READY=1\nSTATUS=guest running" : "READY=1\nSTATUS=standby: listening");
    uint64_t watchdog = watchdog_usec();
    auto last_ping = Clock::now();
    int exit_code = k_exit_ok;
    for (;;) {
        int signal = wait_for_signal(100);
        if (watchdog && Clock::now() - last_ping > std::chrono::microseconds(watchdog / 2)) {
            notify("WATCHDOG=1");
            last_ping = Clock::now();
        }
        if (signal == SIGHUP) {
            notify("RELOADING=1");
            (void)reload_keys();  // logs what it did
            notify("READY=1");
            continue;
        }
        if (signal) {
            base::log(Level::Notice, Event::Stopped, fmt::format("stopping on signal {}", strsignal(signal)),
                      {{"REASON", strsignal(signal)}});
            // A protected guest moves to the peer first (zero loss, no fencing): stopping the
            // service on this host, or shutting the host down, is a switchover, not an outage.
            core::ActiveEngine* active = nullptr;
            {
                std::lock_guard lock(m_mutex);
                active = m_active.get();
            }
            if (active && active->state() == core::ActiveEngine::State::Held)
                active->release_hold();  // a diagnostic hold does not outlive the daemon
            if (active && active->state() == core::ActiveEngine::State::Protected) {
                if (auto seq = active->handover(std::chrono::seconds(30)); seq) {
                    m_handed_over = true;
                    base::log(Level::Notice, Event::Stopped,
                              fmt::format("handed the guest over to the peer at checkpoint {}", *seq),
                              {{"SEQ", std::to_string(*seq)}, {"REASON", "planned switchover"}});
                } else {
                    base::logf(Level::Warning, Event::None, "could not hand the guest over ({}): stopping anyway",
                               seq.error().message());
                }
            }
            break;
        }
        if (m_guest_running && m_runtime->machine().stopped()) {
            exit_code = guest_stopped();
            break;
        }
        if (int code = m_peer_shutdown.load(); code != INT_MIN)
            break;  // the pair's guest powered off: nothing to stand by for
        if (m_stop_requested && !m_guest_running) {
            base::log(Level::Notice, Event::Stopped, "stopping: coloctl stop", {{"REASON", "coloctl stop"}});
            break;
        }
    }
    notify("STOPPING=1");
    (*control_server)->stop();
    if (metrics)
        metrics->stop();  // no snapshot of the engines from here on
    std::unique_ptr<core::ActiveEngine> active;
    std::unique_ptr<core::StandbyEngine> standby;
    {
        std::lock_guard lock(m_mutex);
        standby = std::move(m_standby);
    }
    if (standby)
        standby->stop();  // no takeover can start after this
    {
        std::lock_guard lock(m_mutex);
        active = std::move(m_active);
    }
    active.reset();  // held output is dropped: the peer will produce it again
    m_runtime->stop("daemon stopping");
    m_runtime->wait();
    return exit_code;
}

}  // namespace

int run_node(const config::PairConfig& config, Program program, Protection protection) {
    Node node(config, program, protection);
    return node.run();
}

}  // namespace colod::daemons
