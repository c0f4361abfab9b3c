// SPDX-License-Identifier: GPL-2.0-or-later
// The per-VM-pair config file (/etc/colod/NAME.conf), read the same way by colod-primary,
// colod-secondary and coloctl. docs/config.md documents every key; DESIGN.md "Interfaces"
// holds the contract.
//
// parse() checks everything it can without the daemons' resources: syntax, every value's
// rule, the relations between keys (heartbeat timeout against interval, endpoints that would
// collide on one host) and that an image file exists. It reports every problem of the file at
// once, one line each: "FILE:LINE: KEY = VALUE: RULE". The key file's contents and mode, and
// whether ports can be bound, are checked by the daemons when they use them.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "config/endpoint.h"
#include "config/units.h"

namespace colod::config {

enum class Mode { Checkpoint, Colo };
enum class Role { Primary, Secondary };
// What protects the replication link after the handshake (docs/config.md, link-security).
enum class LinkSecurity { Encrypted, Authenticated, None };

std::string_view mode_name(Mode mode);  // "checkpoint", "colo"
std::string_view link_security_name(LinkSecurity security);  // "encrypted", "authenticated", "none"
std::string_view role_name(Role role);  // "primary", "secondary"
base::Result<Role> parse_role(std::string_view text);
Role peer_of(Role role);

// What the guest runs: an image built into the daemons, or an ELF64 file on disk.
struct Image {
    std::string builtin;          // "kvstore" for builtin:kvstore; empty for a file
    std::filesystem::path file;   // absolute, for a file image; empty for a built-in one

    bool is_builtin() const { return !builtin.empty(); }
    // "builtin:kvstore" or the file's path, as the config file would say it.
    std::string to_string() const;
    bool operator==(const Image&) const = default;
};

// An Ethernet MAC address.
using Mac = std::array<uint8_t, 6>;
// "52:54:00:12:34:56" (hex digits in either case): six octets, unicast (the low bit of the first
// octet clear) and not all zeros; the error says which rule failed.
base::Result<Mac> parse_mac(std::string_view text);
// Lower-case, colon-separated.
std::string format_mac(const Mac& mac);

struct VmConfig {
    std::string name;              // [A-Za-z0-9_.-]{1,64}; the file's stem unless set
    uint64_t memory_bytes = 0;     // a multiple of 4 KiB, 16 MiB to 1 TiB
    uint32_t vcpus = 1;            // 1 to 64
    Image image;                   // the guest, unless kernel is set
    std::filesystem::path kernel;  // a Linux bzImage (absolute), the alternative to image
    std::filesystem::path initrd;  // its initramfs (absolute); empty for none
    std::string cmdline;           // passed to the guest; at most 255 bytes (2047 for a kernel)
    uint32_t console_clients = 16; // simultaneous console connections, 1 to 1024
    // How the guest runs: "kvm" (/dev/kvm, refuse to start without it), "soft" (the software
    // backend) or "auto" (kvm when /dev/kvm exists, else soft). A string because the daemons
    // hand it on as the backend's name.
    std::string accelerator = "auto";
    std::string net_tap;           // the host's tap interface for the guest's NIC; empty: no network
    Mac mac{};                     // the guest's MAC (both hosts the same); set with net_tap
    // The guest's disk: a raw image file on this host (absolute; relative in the file means
    // beside it), opened by the daemon at start-up; empty: no disk. Linux guests only.
    std::filesystem::path disk;

    bool is_linux() const { return !kernel.empty(); }
    bool has_network() const { return !net_tap.empty(); }
    bool has_disk() const { return !disk.empty(); }
    bool operator==(const VmConfig&) const = default;
};

struct ReplicationConfig {
    Mode mode = Mode::Checkpoint;
    std::chrono::microseconds checkpoint_interval{100'000};
    std::chrono::microseconds heartbeat_interval{50'000};
    std::chrono::microseconds heartbeat_timeout{300'000};
    std::string fence_command;              // empty: no fencing (see docs/config.md)
    std::filesystem::path auth_key_file;    // absolute; contents, owner and mode checked by the daemons
    std::filesystem::path auth_key_file_next;  // absolute, or empty: the key that replaces auth_key_file
    uint64_t max_held_output = 1 << 20;     // held console bytes that force a checkpoint
    std::chrono::microseconds connect_retry{1'000'000};  // longest reconnect backoff
    LinkSecurity link_security = LinkSecurity::Encrypted;  // frames after the handshake

    bool operator==(const ReplicationConfig&) const = default;
};

// One side of the pair: where it listens and where coloctl reaches it.
struct HostConfig {
    Endpoint replication;            // never a wildcard: the peer connects to it
    ConsoleAddress console;          // TCP, or a unix socket whose directory exists
    std::filesystem::path control;   // absolute path of the control socket
    std::optional<Endpoint> metrics; // Prometheus metrics over HTTP; none: not served

    bool operator==(const HostConfig&) const = default;
};

// The pair as seen from one of its hosts.
struct RoleConfig {
    Role role;
    HostConfig self;
    HostConfig peer;
};

struct PairConfig {
    std::filesystem::path file;  // the file name it was read from, for messages
    VmConfig vm;
    ReplicationConfig replication;
    HostConfig primary;
    HostConfig secondary;

    const HostConfig& host(Role role) const { return role == Role::Primary ? primary : secondary; }
    RoleConfig role_config(Role role) const { return {role, host(role), host(peer_of(role))}; }

    bool operator==(const PairConfig&) const = default;
};

// The built-in images the daemons embed (builtin:NAME).
const std::vector<std::string>& known_builtin_images();

// One key the file accepts: `key` in `[section]`.
struct SchemaKey {
    std::string_view section;
    std::string_view key;
    bool operator==(const SchemaKey&) const = default;
};

// Every key of the schema, in the order of the schema (sections vm, replication, primary,
// secondary). docs/config.md documents each; tests/packaging checks that the two agree.
std::vector<SchemaKey> schema_keys();

struct ParseOptions {
    // Relative paths (image, auth-key-file) resolve against this directory. Empty: the
    // directory of the file name given to parse(), or the current directory if it has none.
    std::filesystem::path base_dir;
    // Names accepted after "builtin:"; known_builtin_images() when empty.
    std::vector<std::string> builtin_images;
};

// Parses config text. `file_name` names the file in every message, gives vm.name its default
// (the stem) and, unless options.base_dir is set, the directory relative paths resolve against.
// On failure the error (Errc::Invalid) holds one line per problem, sorted by line.
base::Result<PairConfig> parse(std::string_view text, std::string_view file_name,
                               const ParseOptions& options = {});

// Reads and parses a file (at most 1 MiB). Messages name the file as `path` spells it.
base::Result<PairConfig> load(const std::filesystem::path& path, const ParseOptions& options = {});

// The config as a complete file with every key set, defaults included (coloctl and
// --check-config print it). parse() of it gives back an equal PairConfig as long as no path
// contains '#' or starts or ends with whitespace (the file format cannot say those).
std::string to_config_text(const PairConfig& config);

}  // namespace colod::config
