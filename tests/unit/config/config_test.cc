// SPDX-License-Identifier: GPL-2.0-or-later
#include <catch2/catch.hpp>

#include <fstream>

#include "config/config.h"
#include "tests/support/fake_bzimage.h"

using namespace colod::config;
using namespace std::chrono_literals;

namespace {

// DESIGN.md "Interfaces", verbatim: the contract external tests rely on.
const std::string k_design = R"([vm]
name = demo  # defaults to the file's stem
memory = 256M
vcpus = 1
image = builtin:kvstore  # or a path to an ELF64 guest; Linux images come later
[replication]
mode = checkpoint  # checkpoint | colo
checkpoint-interval = 100ms
heartbeat-interval = 50ms
heartbeat-timeout = 300ms
fence-command =  # run by the secondary before takeover; takeover only on exit 0
auth-key-file = /etc/colod/demo.key  # pre-shared key (32+ random bytes, mode 0600); required
[primary]
replication = 10.0.0.1:9400  # where this host listens when it is the receiving side
console = 0.0.0.0:4555  # where clients reach the guest's serial console on this host
control = /run/colod/demo-primary.sock
[secondary]
replication = 10.0.0.2:9400
console = 0.0.0.0:4555
control = /run/colod/demo-secondary.sock
)";

// The design example with the line starting with `line_start` replaced by `replacement`
// (a removed line when `replacement` is empty, keeping the line count).
std::string with_line(std::string_view line_start, std::string_view replacement, std::string text = k_design) {
    size_t at = text.find(fmt::format("\n{}", line_start));
    REQUIRE(at != std::string::npos);
    ++at;
    const size_t end = text.find('\n', at);
    text.replace(at, end - at, replacement);
    return text;
}

std::string errors_of(std::string_view text, std::string_view file = "demo.conf", const ParseOptions& options = {}) {
    auto result = parse(text, file, options);
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == colod::base::Errc::Invalid);
    return result.error().message();
}

PairConfig parsed(std::string_view text, std::string_view file = "demo.conf", const ParseOptions& options = {}) {
    auto result = parse(text, file, options);
    if (!result.ok())
        FAIL(result.error().message());
    return std::move(result).value();
}

// A fresh directory, removed with everything in it at the end of the test.
class TempDir {
public:
    TempDir() {
        std::string pattern = (std::filesystem::temp_directory_path() / "colod-config-XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        m_path = pattern;
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(m_path, ignored);
    }
    const std::filesystem::path& path() const { return m_path; }
    std::filesystem::path write(const std::string& name, std::string_view text) const {
        const auto file = m_path / name;
        std::filesystem::create_directories(file.parent_path());
        std::ofstream(file, std::ios::binary) << text;
        return file;
    }

private:
    std::filesystem::path m_path;
};

}  // namespace

TEST_CASE("the DESIGN example parses to its values", "[config]") {
    const PairConfig config = parsed(k_design, "/etc/colod/demo.conf");
    CHECK(config.file == "/etc/colod/demo.conf");
    CHECK(config.vm.name == "demo");
    CHECK(config.vm.memory_bytes == 256ull << 20);
    CHECK(config.vm.vcpus == 1);
    CHECK(config.vm.image.is_builtin());
    CHECK(config.vm.image.builtin == "kvstore");
    CHECK(config.vm.image.to_string() == "builtin:kvstore");
    CHECK(config.vm.cmdline.empty());
    CHECK(config.vm.console_clients == 16);
    CHECK(config.replication.mode == Mode::Checkpoint);
    CHECK(config.replication.checkpoint_interval == 100ms);
    CHECK(config.replication.heartbeat_interval == 50ms);
    CHECK(config.replication.heartbeat_timeout == 300ms);
    CHECK(config.replication.fence_command.empty());
    CHECK(config.replication.auth_key_file == "/etc/colod/demo.key");
    CHECK(config.replication.max_held_output == 1ull << 20);
    CHECK(config.replication.connect_retry == 1s);
    CHECK(config.primary.replication.to_string() == "10.0.0.1:9400");
    CHECK(config.primary.console.to_string() == "0.0.0.0:4555");
    CHECK(config.primary.control == "/run/colod/demo-primary.sock");
    CHECK(config.secondary.replication.to_string() == "10.0.0.2:9400");
    CHECK(config.secondary.console.to_string() == "0.0.0.0:4555");
    CHECK(config.secondary.control == "/run/colod/demo-secondary.sock");
}

TEST_CASE("role_config gives this host and its peer", "[config]") {
    const PairConfig config = parsed(k_design);
    const RoleConfig primary = config.role_config(Role::Primary);
    CHECK(primary.role == Role::Primary);
    CHECK(primary.self == config.primary);
    CHECK(primary.peer == config.secondary);
    const RoleConfig secondary = config.role_config(Role::Secondary);
    CHECK(secondary.self.replication.to_string() == "10.0.0.2:9400");
    CHECK(secondary.peer.replication.to_string() == "10.0.0.1:9400");
    CHECK(peer_of(Role::Primary) == Role::Secondary);
    CHECK(parse_role("secondary").value() == Role::Secondary);
    CHECK(parse_role("Primary").error().message() == "role Primary: must be primary or secondary");
    CHECK(role_name(Role::Primary) == "primary");
    CHECK(mode_name(Mode::Colo) == "colo");
}

TEST_CASE("optional keys take their defaults", "[config]") {
    const std::string minimal = R"([vm]
memory = 64M
image = builtin:kvstore
[replication]
auth-key-file = /etc/colod/web.key
[primary]
replication = 10.0.0.1:9400
console = 0.0.0.0:4555
[secondary]
replication = 10.0.0.2:9400
console = 0.0.0.0:4555
)";
    const PairConfig config = parsed(minimal, "/etc/colod/web.conf");
    CHECK(config.vm.name == "web");  // the file's stem
    CHECK(config.vm.vcpus == 1);
    CHECK(config.vm.cmdline.empty());
    CHECK(config.vm.console_clients == 16);
    CHECK(config.vm.accelerator == "auto");
    CHECK(config.replication.mode == Mode::Checkpoint);
    CHECK(config.replication.checkpoint_interval == 100ms);
    CHECK(config.replication.heartbeat_interval == 50ms);
    CHECK(config.replication.heartbeat_timeout == 300ms);
    CHECK(config.replication.fence_command.empty());
    CHECK(config.replication.max_held_output == 1ull << 20);
    CHECK(config.replication.connect_retry == 1s);
    CHECK(config.replication.link_security == LinkSecurity::Encrypted);
    CHECK(config.replication.auth_key_file_next.empty());
    CHECK(config.primary.control == "/run/colod/web-primary.sock");
    CHECK(config.secondary.control == "/run/colod/web-secondary.sock");
}

TEST_CASE("operator knobs are read", "[config]") {
    std::string text = with_line("mode =", "mode = colo");
    text = with_line("fence-command", "fence-command = /usr/sbin/fence_node host-a --off  # comment", text);
    text += "[vm]\n";  // a section may be opened again
    text += "cmdline = console=ttyS0 quiet\nconsole-clients = 4\naccelerator = soft\n";
    text += "[replication]\nmax-held-output = 64KiB\nconnect-retry = 2.5s\n";
    const PairConfig config = parsed(text);
    CHECK(config.replication.mode == Mode::Colo);
    CHECK(config.replication.fence_command == "/usr/sbin/fence_node host-a --off");
    CHECK(config.vm.cmdline == "console=ttyS0 quiet");  // '=' inside a value is kept
    CHECK(config.vm.console_clients == 4);
    CHECK(config.vm.accelerator == "soft");
    CHECK(config.replication.max_held_output == 64 * 1024);
    CHECK(config.replication.connect_retry == 2500ms);
}

TEST_CASE("comments, blanks and CRLF line endings", "[config]") {
    std::string crlf;
    for (char c : "# leading comment\n\n   # indented comment\n" + k_design) {
        if (c == '\n')
            crlf += '\r';
        if (c != '\0')
            crlf += c;
    }
    CHECK(parsed(crlf) == parsed(k_design));

    // Spaces and tabs around names, values and section headers, and '#' right after a value.
    const std::string spaced = with_line("memory", "\t memory\t=\t512M#no space before the comment ",
                                         with_line("[replication]", "  [ replication ]  # section comment"));
    const PairConfig config = parsed(spaced);
    CHECK(config.vm.memory_bytes == 512ull << 20);
    CHECK(config.replication.heartbeat_timeout == 300ms);

    // An empty value followed by a comment is empty, not the comment.
    CHECK(parsed(k_design).replication.fence_command.empty());
    // No newline at the end of the file.
    CHECK(parsed(k_design.substr(0, k_design.size() - 1)).secondary.control == "/run/colod/demo-secondary.sock");
}

TEST_CASE("one rule per key, with exact messages", "[config]") {
    // vm.name
    CHECK(errors_of(with_line("name", "name = my demo")) ==
          "demo.conf:2: vm.name = my demo: must be 1 to 64 characters from A-Z a-z 0-9 _ . -");
    CHECK(errors_of(with_line("name", "name =")) ==
          "demo.conf:2: vm.name = \"\": must be 1 to 64 characters from A-Z a-z 0-9 _ . -");
    CHECK(errors_of(with_line("name", "name = " + std::string(65, 'a'))) ==
          fmt::format("demo.conf:2: vm.name = {}: must be 1 to 64 characters from A-Z a-z 0-9 _ . -",
                      std::string(65, 'a')));
    CHECK(parsed(with_line("name", "name = " + std::string(64, 'a'))).vm.name == std::string(64, 'a'));
    CHECK(parsed(with_line("name", "name = A.b_c-9")).vm.name == "A.b_c-9");
    // vm.memory
    CHECK(errors_of(with_line("memory", "memory = 8M")) == "demo.conf:3: vm.memory = 8M: must be between 16M and 1T");
    CHECK(errors_of(with_line("memory", "memory = 2T")) == "demo.conf:3: vm.memory = 2T: must be between 16M and 1T");
    CHECK(errors_of(with_line("memory", "memory = 16777217")) ==
          "demo.conf:3: vm.memory = 16777217: must be a multiple of 4K");
    CHECK(errors_of(with_line("memory", "memory = lots")) ==
          "demo.conf:3: vm.memory = lots: not a size: expected a number with an optional K, M, G or T suffix, "
          "e.g. 256M");
    CHECK(parsed(with_line("memory", "memory = 16M")).vm.memory_bytes == 16ull << 20);
    CHECK(parsed(with_line("memory", "memory = 1T")).vm.memory_bytes == 1ull << 40);
    // vm.vcpus
    CHECK(errors_of(with_line("vcpus", "vcpus = 0")) ==
          "demo.conf:4: vm.vcpus = 0: must be a whole number between 1 and 64");
    CHECK(errors_of(with_line("vcpus", "vcpus = 65")) ==
          "demo.conf:4: vm.vcpus = 65: must be a whole number between 1 and 64");
    CHECK(errors_of(with_line("vcpus", "vcpus = two")) ==
          "demo.conf:4: vm.vcpus = two: must be a whole number between 1 and 64");
    CHECK(parsed(with_line("vcpus", "vcpus = 64")).vm.vcpus == 64);
    // vm.image
    CHECK(errors_of(with_line("image", "image = builtin:nope")) ==
          "demo.conf:5: vm.image = builtin:nope: unknown built-in image (known: kvstore)");
    CHECK(errors_of(with_line("image", "image =")) ==
          "demo.conf:5: vm.image = \"\": must be builtin:NAME or the path of an ELF64 guest");
    CHECK(errors_of(with_line("image", "image = /nonexistent/guest.elf")) ==
          "demo.conf:5: vm.image = /nonexistent/guest.elf: no such file");
    CHECK(errors_of(with_line("image", "image = /")) == "demo.conf:5: vm.image = /: not a regular file");
    // replication.mode
    CHECK(errors_of(with_line("mode", "mode = remus")) ==
          "demo.conf:7: replication.mode = remus: must be checkpoint or colo");
    // replication.checkpoint-interval
    CHECK(errors_of(with_line("checkpoint-interval", "checkpoint-interval = 500us")) ==
          "demo.conf:8: replication.checkpoint-interval = 500us: must be between 1ms and 60s");
    CHECK(errors_of(with_line("checkpoint-interval", "checkpoint-interval = 2m")) ==
          "demo.conf:8: replication.checkpoint-interval = 2m: must be between 1ms and 60s");
    CHECK(errors_of(with_line("checkpoint-interval", "checkpoint-interval = 100")) ==
          "demo.conf:8: replication.checkpoint-interval = 100: a duration needs a unit (us, ms, s or m), e.g. 100ms");
    CHECK(parsed(with_line("checkpoint-interval", "checkpoint-interval = 60s")).replication.checkpoint_interval ==
          60s);
    // replication.heartbeat-interval
    CHECK(errors_of(with_line("heartbeat-interval", "heartbeat-interval = 11s")) ==
          "demo.conf:9: replication.heartbeat-interval = 11s: must be between 1ms and 10s");
    CHECK(errors_of(with_line("heartbeat-interval", "heartbeat-interval = 0s")) ==
          "demo.conf:9: replication.heartbeat-interval = 0s: must be between 1ms and 10s");
    // replication.heartbeat-timeout
    CHECK(errors_of(with_line("heartbeat-timeout", "heartbeat-timeout = 80ms")) ==
          "demo.conf:10: replication.heartbeat-timeout = 80ms: must be more than twice heartbeat-interval (50ms)");
    CHECK(errors_of(with_line("heartbeat-timeout", "heartbeat-timeout = 100ms")) ==
          "demo.conf:10: replication.heartbeat-timeout = 100ms: must be more than twice heartbeat-interval (50ms)");
    CHECK(parsed(with_line("heartbeat-timeout", "heartbeat-timeout = 101ms")).replication.heartbeat_timeout == 101ms);
    CHECK(errors_of(with_line("heartbeat-timeout", "heartbeat-timeout = 61s")) ==
          "demo.conf:10: replication.heartbeat-timeout = 61s: must be at most 60s");
    // The default timeout measured against a longer interval: no line, says it is the default.
    CHECK(errors_of(with_line("heartbeat-timeout", "",
                              with_line("heartbeat-interval", "heartbeat-interval = 200ms"))) ==
          "demo.conf: replication.heartbeat-timeout = 300ms (default): must be more than twice "
          "heartbeat-interval (200ms)");
    // replication.auth-key-file
    CHECK(errors_of(with_line("auth-key-file", "auth-key-file =  # forgot")) ==
          "demo.conf:12: replication.auth-key-file = \"\": must not be empty: the pair authenticates with this key");
    // vm.cmdline, vm.console-clients, replication.max-held-output, replication.connect-retry
    CHECK(errors_of(k_design + "[vm]\ncmdline = " + std::string(256, 'x') + "\n") ==
          fmt::format("demo.conf:22: vm.cmdline = {}: must be at most 255 bytes", std::string(256, 'x')));
    CHECK(parsed(k_design + "[vm]\ncmdline = " + std::string(255, 'x') + "\n").vm.cmdline.size() == 255);
    CHECK(errors_of(k_design + "[vm]\ncmdline = a\tb\n") ==
          "demo.conf:22: vm.cmdline = a\tb: must not contain control characters");
    CHECK(errors_of(k_design + "[vm]\nconsole-clients = 0\n") ==
          "demo.conf:22: vm.console-clients = 0: must be a whole number between 1 and 1024");
    CHECK(errors_of(k_design + "[vm]\nconsole-clients = 1025\n") ==
          "demo.conf:22: vm.console-clients = 1025: must be a whole number between 1 and 1024");
    CHECK(errors_of(k_design + "[vm]\naccelerator = hvf\n") ==
          "demo.conf:22: vm.accelerator = hvf: must be auto, kvm or soft");
    CHECK(parsed(k_design + "[vm]\naccelerator = kvm\n").vm.accelerator == "kvm");
    CHECK(errors_of(k_design + "[replication]\nmax-held-output = 1K\n") ==
          "demo.conf:22: replication.max-held-output = 1K: must be between 4K and 1G");
    CHECK(errors_of(k_design + "[replication]\nmax-held-output = 2G\n") ==
          "demo.conf:22: replication.max-held-output = 2G: must be between 4K and 1G");
    CHECK(errors_of(k_design + "[replication]\nconnect-retry = 5ms\n") ==
          "demo.conf:22: replication.connect-retry = 5ms: must be between 10ms and 10m");
    CHECK(errors_of(k_design + "[replication]\nconnect-retry = 11m\n") ==
          "demo.conf:22: replication.connect-retry = 11m: must be between 10ms and 10m");
}

TEST_CASE("link-security: encrypted by default, every other value refused", "[config]") {
    CHECK(parsed(k_design).replication.link_security == LinkSecurity::Encrypted);
    CHECK(parsed(k_design + "[replication]\nlink-security = encrypted\n").replication.link_security ==
          LinkSecurity::Encrypted);
    CHECK(parsed(k_design + "[replication]\nlink-security = authenticated\n").replication.link_security ==
          LinkSecurity::Authenticated);
    CHECK(parsed(k_design + "[replication]\nlink-security = none\n").replication.link_security == LinkSecurity::None);
    for (std::string bad : {"", "on", "off", "Encrypted", "encrypt", "tls", "none please", "yes", "0"}) {
        INFO("link-security = '" << bad << "'");
        CHECK(errors_of(k_design + "[replication]\nlink-security = " + bad + "\n") ==
              fmt::format("demo.conf:22: replication.link-security = {}: must be encrypted, authenticated or none",
                          bad.empty() ? "\"\"" : bad));
    }
}

TEST_CASE("frame-auth is refused with a message naming link-security, whatever its value", "[config]") {
    // Neither value is carried over: off (the old default) would drop the encryption that is
    // the default now, on would keep the file below the default without anyone choosing it.
    CHECK(errors_of(k_design + "[replication]\nframe-auth = off\n") ==
          "demo.conf:22: replication.frame-auth = off: was replaced by link-security (default encrypted: every frame "
          "encrypted and authenticated): remove this line; what it said is now link-security = none, which is "
          "weaker than the default");
    CHECK(errors_of(k_design + "[replication]\nframe-auth = on\n") ==
          "demo.conf:22: replication.frame-auth = on: was replaced by link-security (default encrypted: every frame "
          "encrypted and authenticated): remove this line; what it said is now link-security = authenticated, "
          "which is weaker than the default");
    CHECK(errors_of(k_design + "[replication]\nframe-auth = yes\n") ==
          "demo.conf:22: replication.frame-auth = yes: was replaced by link-security (encrypted, authenticated or "
          "none; default encrypted): remove this line");
    // Also beside link-security: the line must go.
    CHECK_THAT(errors_of(k_design + "[replication]\nlink-security = encrypted\nframe-auth = on\n"),
               Catch::Contains("demo.conf:23: replication.frame-auth = on: was replaced by link-security"));
}

TEST_CASE("auth-key-file-next: optional, resolved like auth-key-file, never empty nor the same file", "[config]") {
    CHECK(parsed(k_design).replication.auth_key_file_next.empty());
    CHECK(parsed(k_design + "[replication]\nauth-key-file-next = /etc/colod/demo-2.key\n").replication.auth_key_file_next ==
          "/etc/colod/demo-2.key");
    CHECK(parsed(k_design + "[replication]\nauth-key-file-next = next.key\n", "/etc/colod/demo.conf")
              .replication.auth_key_file_next == "/etc/colod/next.key");
    CHECK(errors_of(k_design + "[replication]\nauth-key-file-next =\n") ==
          "demo.conf:22: replication.auth-key-file-next = \"\": must not be empty: name the file of the key that "
          "replaces auth-key-file, or leave the key out");
    CHECK(errors_of(k_design + "[replication]\nauth-key-file-next = /etc/colod/demo.key\n") ==
          "demo.conf:22: replication.auth-key-file-next = /etc/colod/demo.key: must differ from auth-key-file: it "
          "names the key that replaces it (leave it out when no key is being replaced)");
    CHECK(errors_of(k_design + "[replication]\nauth-key-file-next = ../colod/demo.key\n", "/etc/colod/demo.conf")
              .find("must differ from auth-key-file") != std::string::npos);
}

TEST_CASE("endpoint and control socket rules", "[config]") {
    CHECK(errors_of(with_line("replication = 10.0.0.1", "replication = host-a:9400")) ==
          "demo.conf:14: primary.replication = host-a:9400: host names are not accepted, use a numeric address");
    CHECK(errors_of(with_line("replication = 10.0.0.1", "replication = 10.0.0.1:0")) ==
          "demo.conf:14: primary.replication = 10.0.0.1:0: port must be between 1 and 65535");
    CHECK(errors_of(with_line("replication = 10.0.0.1", "replication = 0.0.0.0:9400")) ==
          "demo.conf:14: primary.replication = 0.0.0.0:9400: must be a specific address, not a wildcard: "
          "the peer connects to it");
    CHECK(errors_of(with_line("console = 0.0.0.0:4555  #", "console = 0.0.0.0")) ==
          "demo.conf:15: primary.console = 0.0.0.0: expected ADDRESS:PORT with a numeric IPv4 address or a "
          "bracketed IPv6 address, e.g. 10.0.0.1:9400 or [fd00::1]:9400");
    // The two replication endpoints must differ.
    CHECK(errors_of(with_line("replication = 10.0.0.2", "replication = 10.0.0.1:9400")) ==
          "demo.conf:18: secondary.replication = 10.0.0.1:9400: must differ from primary.replication (10.0.0.1:9400)");
    // One host: the console must not take the replication port.
    CHECK(errors_of(with_line("console = 0.0.0.0:4555  #", "console = 0.0.0.0:9400")) ==
          "demo.conf:15: primary.console = 0.0.0.0:9400: must not use the same port as primary.replication "
          "(10.0.0.1:9400) on the same host");
    // Both sides on one host (same address): consoles must differ, wildcards overlap everything.
    std::string same_host = with_line("replication = 10.0.0.2", "replication = 10.0.0.1:9401");
    CHECK(errors_of(same_host) ==
          "demo.conf:19: secondary.console = 0.0.0.0:4555: must not use the same port as primary.console "
          "(0.0.0.0:4555) on the same host");
    CHECK(errors_of(with_line("console = 0.0.0.0:4555\n", "console = 10.0.0.1:9400\n", same_host)) ==
          "demo.conf:19: secondary.console = 10.0.0.1:9400: must not use the same port as primary.replication "
          "(10.0.0.1:9400) on the same host");
    CHECK(parsed(with_line("console = 0.0.0.0:4555\n", "console = 0.0.0.0:4556\n", same_host))
              .secondary.console.tcp.port == 4556);
    CHECK(errors_of(with_line("console = 0.0.0.0:4555  #", "console = 0.0.0.0:9401", same_host)) ==
          "demo.conf:18: secondary.replication = 10.0.0.1:9401: must not use the same port as primary.console "
          "(0.0.0.0:9401) on the same host");
    // On two hosts the same console endpoint is fine (the DESIGN example does it).
    CHECK(parsed(k_design).primary.console == parsed(k_design).secondary.console);
    // Two loopback addresses are one host too.
    std::string loopback = with_line("replication = 10.0.0.1", "replication = 127.0.0.1:9400");
    loopback = with_line("replication = 10.0.0.2", "replication = 127.0.0.2:9400", loopback);
    CHECK(errors_of(loopback) ==
          "demo.conf:19: secondary.console = 0.0.0.0:4555: must not use the same port as primary.console "
          "(0.0.0.0:4555) on the same host");
    // Control sockets.
    CHECK(errors_of(with_line("control = /run/colod/demo-secondary", "control = /run/colod/demo-primary.sock")) ==
          "demo.conf:20: secondary.control = /run/colod/demo-primary.sock: must differ from primary.control "
          "(/run/colod/demo-primary.sock)");
    CHECK(errors_of(with_line("control = /run/colod/demo-primary", "control = run/demo.sock")) ==
          "demo.conf:16: primary.control = run/demo.sock: must be an absolute path");
    const std::string long_path = "/run/" + std::string(103, 'x');  // 108 bytes
    CHECK(errors_of(with_line("control = /run/colod/demo-primary", "control = " + long_path)) ==
          fmt::format("demo.conf:16: primary.control = {}: must be at most 107 bytes (the limit of a unix socket "
                      "address)",
                      long_path));
    const std::string longest_path = "/run/" + std::string(102, 'x');  // 107 bytes
    CHECK(parsed(with_line("control = /run/colod/demo-primary", "control = " + longest_path)).primary.control ==
          longest_path);
}

TEST_CASE("a console on a unix socket", "[config][console]") {
    // The design example with both consoles on unix sockets (lines 15 and 19).
    auto unix_consoles = [](std::string_view primary, std::string_view secondary, std::string text = k_design) {
        text = with_line("console = 0.0.0.0:4555  #", fmt::format("console = {}", primary), text);
        return with_line("console = 0.0.0.0:4555\n", fmt::format("console = {}\n", secondary), text);
    };
    // /run/colod is the control sockets' directory, which the daemon creates: it need not exist.
    const PairConfig config =
        parsed(unix_consoles("unix:/run/colod/demo-console.sock", "unix:/run/colod/demo-console.sock"));
    CHECK(config.primary.console.is_unix());
    CHECK(config.primary.console.unix_path == "/run/colod/demo-console.sock");
    CHECK(config.primary.console.to_string() == "unix:/run/colod/demo-console.sock");
    CHECK(config.primary.console.is_local());
    // On two hosts both sides may use the same path, as they may the same TCP endpoint.
    CHECK(config.primary.console == config.secondary.console);
    CHECK(parsed(to_config_text(config)) == config);
    CHECK(to_config_text(config).find("console = unix:/run/colod/demo-console.sock\n") != std::string::npos);

    // Any other directory must exist.
    TempDir dir;
    const std::string in_dir = "unix:" + (dir.path() / "console.sock").string();
    CHECK(parsed(unix_consoles(in_dir, in_dir)).secondary.console.unix_path == dir.path() / "console.sock");
    CHECK(errors_of(unix_consoles("unix:/nonexistent-colod-dir/demo-console.sock", in_dir)) ==
          "demo.conf:15: primary.console = unix:/nonexistent-colod-dir/demo-console.sock: directory "
          "/nonexistent-colod-dir does not exist (create it, or put the socket in the control socket's directory, "
          "/run/colod, which the daemon creates)");

    // The path's own rules.
    CHECK(errors_of(unix_consoles("unix:run/demo-console.sock", in_dir)) ==
          "demo.conf:15: primary.console = unix:run/demo-console.sock: the path after unix: must be absolute, e.g. "
          "unix:/run/colod/demo-console.sock");
    CHECK(errors_of(unix_consoles("unix:", in_dir)) ==
          "demo.conf:15: primary.console = unix:: the path after unix: must be absolute, e.g. "
          "unix:/run/colod/demo-console.sock");
    CHECK(errors_of(unix_consoles("unix:/run/colod/", in_dir)) ==
          "demo.conf:15: primary.console = unix:/run/colod/: the path after unix: must name the socket file, not a "
          "directory");
    CHECK(errors_of(unix_consoles("/run/colod/demo-console.sock", in_dir)) ==
          "demo.conf:15: primary.console = /run/colod/demo-console.sock: a unix socket is written unix:PATH, e.g. "
          "unix:/run/colod/demo-console.sock");
    const std::string longest = "/run/colod/" + std::string(96, 'x');  // 107 bytes
    CHECK(parsed(unix_consoles("unix:" + longest, in_dir)).primary.console.unix_path == longest);
    const std::string too_long = longest + "x";
    CHECK(errors_of(unix_consoles("unix:" + too_long, in_dir)) ==
          fmt::format("demo.conf:15: primary.console = unix:{}: the path after unix: must be at most 107 bytes (the "
                      "limit of a unix socket address)",
                      too_long));

    // Not a control socket's path, nor, on one host, the other side's console.
    CHECK(errors_of(unix_consoles("unix:/run/colod/demo-primary.sock", in_dir)) ==
          "demo.conf:15: primary.console = unix:/run/colod/demo-primary.sock: must not be the same socket as "
          "primary.control on the same host");
    const std::string same_host = with_line("replication = 10.0.0.2", "replication = 10.0.0.1:9401");
    CHECK(errors_of(unix_consoles(in_dir, in_dir, same_host)) ==
          fmt::format("demo.conf:19: secondary.console = {}: must not be the same socket as primary.console on the "
                      "same host",
                      in_dir));
    CHECK(errors_of(unix_consoles(in_dir, "unix:/run/colod/demo-primary.sock", same_host)) ==
          "demo.conf:19: secondary.console = unix:/run/colod/demo-primary.sock: must not be the same socket as "
          "primary.control on the same host");
    // A unix console and a TCP one on one host do not collide.
    CHECK(parsed(unix_consoles(in_dir, "10.0.0.1:4555", same_host)).primary.console.is_unix());
}

TEST_CASE("metrics: an optional endpoint per host, clear of the host's other endpoints", "[config][metrics]") {
    // Lines 21-24 after the design example.
    auto with_metrics = [](std::string_view primary, std::string_view secondary, std::string text = k_design) {
        return text + fmt::format("[primary]\nmetrics = {}\n[secondary]\nmetrics = {}\n", primary, secondary);
    };
    const PairConfig none = parsed(k_design);
    CHECK_FALSE(none.primary.metrics);
    CHECK_FALSE(none.secondary.metrics);
    CHECK(to_config_text(none).find("metrics") == std::string::npos);

    // Each host its own; on two hosts both may use the same port.
    const PairConfig both = parsed(with_metrics("10.0.0.1:9464", "10.0.0.2:9464"));
    REQUIRE(both.primary.metrics);
    REQUIRE(both.secondary.metrics);
    CHECK(both.primary.metrics->to_string() == "10.0.0.1:9464");
    CHECK(both.secondary.metrics->port == 9464);
    const std::string written = to_config_text(both);
    CHECK(written.find("metrics = 10.0.0.1:9464\n") != std::string::npos);
    CHECK(written.find("metrics = 10.0.0.2:9464\n") != std::string::npos);
    CHECK(parsed(written) == both);
    CHECK_FALSE(parsed(k_design + "[primary]\nmetrics = 127.0.0.1:9464\n").secondary.metrics);
    // A wildcard is accepted (it only reads figures), IPv6 too.
    CHECK(parsed(with_metrics("0.0.0.0:9464", "[::]:9464")).secondary.metrics->is_wildcard());

    // The endpoint's own rules.
    CHECK(errors_of(with_metrics("", "10.0.0.2:9464")) ==
          "demo.conf:22: primary.metrics = \"\": must be ADDRESS:PORT (e.g. 10.0.0.1:9464), or leave the key out for "
          "no metrics");
    CHECK(errors_of(with_metrics("10.0.0.1:9464", "monitor:9464")) ==
          "demo.conf:24: secondary.metrics = monitor:9464: host names are not accepted, use a numeric address");
    CHECK(errors_of(with_metrics("10.0.0.1:70000", "10.0.0.2:9464")) ==
          "demo.conf:22: primary.metrics = 10.0.0.1:70000: port must be between 1 and 65535");
    CHECK(errors_of(k_design + "[vm]\nmetrics = 10.0.0.1:9464\n") ==
          "demo.conf:22: vm.metrics = 10.0.0.1:9464: unknown key (metrics belongs in [primary])");

    // Not the host's replication port, nor its console's (a wildcard console overlaps all).
    CHECK(errors_of(with_metrics("10.0.0.1:9400", "10.0.0.2:9464")) ==
          "demo.conf:22: primary.metrics = 10.0.0.1:9400: must not use the same port as primary.replication "
          "(10.0.0.1:9400) on the same host");
    CHECK(errors_of(with_metrics("10.0.0.1:9464", "127.0.0.1:4555")) ==
          "demo.conf:24: secondary.metrics = 127.0.0.1:4555: must not use the same port as secondary.console "
          "(0.0.0.0:4555) on the same host");
    CHECK(parsed(with_metrics("10.0.0.1:4556", "10.0.0.2:4557")).primary.metrics->port == 4556);

    // Both sides on one host: clear of every endpoint of the other side too.
    std::string same_host = with_line("replication = 10.0.0.2", "replication = 10.0.0.1:9401");
    same_host = with_line("console = 0.0.0.0:4555\n", "console = 0.0.0.0:4556", same_host);
    CHECK(parsed(with_metrics("10.0.0.1:9464", "10.0.0.1:9465", same_host)).secondary.metrics->port == 9465);
    CHECK(errors_of(with_metrics("10.0.0.1:9464", "10.0.0.1:9464", same_host)) ==
          "demo.conf:24: secondary.metrics = 10.0.0.1:9464: must not use the same port as primary.metrics "
          "(10.0.0.1:9464) on the same host");
    CHECK(errors_of(with_metrics("10.0.0.1:9464", "10.0.0.1:9400", same_host)) ==
          "demo.conf:24: secondary.metrics = 10.0.0.1:9400: must not use the same port as primary.replication "
          "(10.0.0.1:9400) on the same host");
    CHECK(errors_of(with_metrics("10.0.0.1:9464", "10.0.0.1:4555", same_host)) ==
          "demo.conf:24: secondary.metrics = 10.0.0.1:4555: must not use the same port as primary.console "
          "(0.0.0.0:4555) on the same host");
    CHECK(errors_of(with_metrics("10.0.0.1:9401", "10.0.0.1:9465", same_host)) ==
          "demo.conf:18: secondary.replication = 10.0.0.1:9401: must not use the same port as primary.metrics "
          "(10.0.0.1:9401) on the same host");
    CHECK(errors_of(with_metrics("0.0.0.0:4556", "10.0.0.1:9465", same_host)) ==
          "demo.conf:19: secondary.console = 0.0.0.0:4556: must not use the same port as primary.metrics "
          "(0.0.0.0:4556) on the same host");
}

TEST_CASE("unknown sections and keys are errors", "[config]") {
    CHECK(errors_of(k_design + "[vm]\nmemroy = 512M\n") ==
          "demo.conf:22: vm.memroy = 512M: unknown key (did you mean vm.memory?)");
    CHECK(errors_of(k_design + "[vm]\nmode = colo\n") ==
          "demo.conf:22: vm.mode = colo: unknown key (mode belongs in [replication])");
    CHECK(errors_of(k_design + "[vm]\nballoon = yes\n") ==
          "demo.conf:22: vm.balloon = yes: unknown key (known in [vm]: name, memory, vcpus, image, kernel, initrd, cmdline, "
          "console-clients, accelerator, net-tap, mac, disk)");
    CHECK(errors_of(k_design + "[vm]\nMemory = 512M\n") ==
          "demo.conf:22: vm.Memory = 512M: unknown key (did you mean vm.memory?)");
    // The keys of an unknown section are not reported one by one.
    CHECK(errors_of(k_design + "[network]\ntap = tap0\nmac = 52:54:00:12:34:56\n") ==
          "demo.conf:21: [network]: unknown section (known: vm, replication, primary, secondary)");
}

TEST_CASE("duplicate keys are errors", "[config]") {
    CHECK(errors_of(k_design + "[vm]\nmemory = 512M\n") ==
          "demo.conf:22: vm.memory = 512M: duplicate key (first set on line 3)");
    CHECK(errors_of(k_design + "[replication]\nfence-command = /bin/true\n") ==
          "demo.conf:22: replication.fence-command = /bin/true: duplicate key (first set on line 11)");
}

TEST_CASE("lines that are not config lines", "[config]") {
    CHECK(errors_of("memory = 1G\n" + k_design) == "demo.conf:1: memory = 1G: key outside of any section");
    CHECK(errors_of(with_line("vcpus", "vcpus 1")) ==
          "demo.conf:4: \"vcpus 1\": expected \"key = value\", a [section] header or a # comment");
    CHECK(errors_of(with_line("vcpus", "= 1")) ==
          "demo.conf:4: \"= 1\": expected \"key = value\", a [section] header or a # comment");
    CHECK(errors_of(with_line("[replication]", "[replication")) ==
          "demo.conf:6: \"[replication\": not a valid [section] header\n"
          "demo.conf:7: mode = checkpoint: key outside of any section\n"
          "demo.conf:8: checkpoint-interval = 100ms: key outside of any section\n"
          "demo.conf:9: heartbeat-interval = 50ms: key outside of any section\n"
          "demo.conf:10: heartbeat-timeout = 300ms: key outside of any section\n"
          "demo.conf:11: fence-command = \"\": key outside of any section\n"
          "demo.conf:12: auth-key-file = /etc/colod/demo.key: key outside of any section\n"
          "demo.conf: replication.auth-key-file: required key is missing");
}

TEST_CASE("missing required keys", "[config]") {
    CHECK(errors_of(with_line("memory", "")) == "demo.conf: vm.memory: required key is missing");
    CHECK(errors_of(with_line("auth-key-file", "# auth-key-file = /etc/colod/demo.key")) ==
          "demo.conf: replication.auth-key-file: required key is missing");
    CHECK(errors_of("") ==
          "demo.conf: vm.memory: required key is missing\n"
          "demo.conf: vm.image: required key is missing (or set vm.kernel for a Linux guest)\n"
          "demo.conf: replication.auth-key-file: required key is missing\n"
          "demo.conf: primary.replication: required key is missing\n"
          "demo.conf: primary.console: required key is missing\n"
          "demo.conf: secondary.replication: required key is missing\n"
          "demo.conf: secondary.console: required key is missing");
    // Without a name and without a file name there is nothing to name the VM after.
    CHECK(errors_of(with_line("name", ""), "") ==
          ": vm.name: required key is missing (the file name gives no default)");
    // A file stem that is not a valid name.
    CHECK(errors_of(with_line("name", ""), "/etc/colod/my vm.conf") ==
          "/etc/colod/my vm.conf: vm.name = my vm (derived): must be 1 to 64 characters from A-Z a-z 0-9 _ . -");
}

TEST_CASE("all problems of a file are reported, in line order", "[config]") {
    std::string text = with_line("memory", "memory = 100K");
    text = with_line("vcpus", "vcpus = 100", text);
    text = with_line("mode", "mode = fast", text);
    text = with_line("heartbeat-timeout", "heartbeat-timeout = 1h", text);
    text = with_line("replication = 10.0.0.2", "replication = 10.0.0.2:http", text);
    text = with_line("console = 0.0.0.0:4555\n", "consol = 0.0.0.0:4555\n", text);
    CHECK(errors_of(text) ==
          "demo.conf:3: vm.memory = 100K: must be between 16M and 1T\n"
          "demo.conf:4: vm.vcpus = 100: must be a whole number between 1 and 64\n"
          "demo.conf:7: replication.mode = fast: must be checkpoint or colo\n"
          "demo.conf:10: replication.heartbeat-timeout = 1h: not a duration: expected a number and a unit "
          "(us, ms, s or m), e.g. 100ms or 1.5s\n"
          "demo.conf:18: secondary.replication = 10.0.0.2:http: expected ADDRESS:PORT with a numeric IPv4 "
          "address or a bracketed IPv6 address, e.g. 10.0.0.1:9400 or [fd00::1]:9400\n"
          "demo.conf:19: secondary.consol = 0.0.0.0:4555: unknown key (did you mean secondary.console?)\n"
          "demo.conf: secondary.console: required key is missing");
}

TEST_CASE("a garbage file gives a bounded report", "[config]") {
    std::string garbage;
    for (int i = 0; i < 80; ++i)
        garbage += "\x7f" "ELF garbage\n";
    const std::string message = errors_of(garbage);
    CHECK(std::count(message.begin(), message.end(), '\n') == 50);
    CHECK(message.ends_with("demo.conf: 37 more problems not shown"));  // 80 lines + 7 missing keys
}

TEST_CASE("relative paths resolve against the config file's directory", "[config]") {
    TempDir dir;
    dir.write("guests/kv.elf", "\x7f" "ELF");
    const std::string text = with_line("auth-key-file", "auth-key-file = keys/../demo.key",
                                       with_line("image", "image = guests/kv.elf"));
    const auto file = dir.write("etc/demo.conf", text);
    // Not found next to the config file: the message gives the resolved path.
    auto result = load(file);
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().message() ==
          fmt::format("{}:5: vm.image = guests/kv.elf: no such file ({})", file.string(),
                      (dir.path() / "etc/guests/kv.elf").string()));

    std::filesystem::rename(dir.path() / "guests", dir.path() / "etc/guests");
    const PairConfig config = load(file).value();
    CHECK_FALSE(config.vm.image.is_builtin());
    CHECK(config.vm.image.file == dir.path() / "etc/guests/kv.elf");
    CHECK(config.vm.image.to_string() == (dir.path() / "etc/guests/kv.elf").string());
    CHECK(config.replication.auth_key_file == dir.path() / "etc/demo.key");
    CHECK(config.file == file);

    // parse() with an explicit base directory.
    ParseOptions options;
    options.base_dir = dir.path() / "etc";
    CHECK(parse(text, "demo.conf", options).value().vm.image.file == dir.path() / "etc/guests/kv.elf");
    // Absolute paths stay as they are.
    CHECK(parsed(with_line("image", fmt::format("image = {}", (dir.path() / "etc/guests/kv.elf").string())))
              .vm.image.file == dir.path() / "etc/guests/kv.elf");
    // A directory is not an image.
    CHECK(errors_of(with_line("image", "image = guests"), "demo.conf", options) ==
          fmt::format("demo.conf:5: vm.image = guests: not a regular file ({})", (dir.path() / "etc/guests").string()));
}

TEST_CASE("built-in images can be given by the caller", "[config]") {
    ParseOptions options;
    options.builtin_images = {"kvstore", "spin"};
    CHECK(parse(with_line("image", "image = builtin:spin"), "demo.conf", options).value().vm.image.builtin == "spin");
    CHECK(errors_of(with_line("image", "image = builtin:spin")) ==
          "demo.conf:5: vm.image = builtin:spin: unknown built-in image (known: kvstore)");
    CHECK(errors_of(with_line("image", "image = builtin:idle"), "demo.conf", options) ==
          "demo.conf:5: vm.image = builtin:idle: unknown built-in image (known: kvstore, spin)");
}

TEST_CASE("load() reports unreadable files", "[config]") {
    TempDir dir;
    auto missing = load(dir.path() / "absent.conf");
    REQUIRE_FALSE(missing.ok());
    CHECK(missing.error().code() == colod::base::Errc::System);
    CHECK(missing.error().message() == (dir.path() / "absent.conf").string() + ": No such file or directory");
    auto directory = load(dir.path());
    REQUIRE_FALSE(directory.ok());
    CHECK(directory.error().message() == dir.path().string() + ": not a regular file");
    const auto big = dir.write("big.conf", std::string((1 << 20) + 1, '#'));
    CHECK(load(big).error().message() == big.string() + ": larger than 1048576 bytes; not a config file");
}

TEST_CASE("to_config_text writes a file that reads back the same", "[config]") {
    std::string text = with_line("mode =", "mode = colo");
    text = with_line("checkpoint-interval", "checkpoint-interval = 1.5s", text);
    text = with_line("fence-command", "fence-command = /usr/sbin/fence_x --off", text);
    text = with_line("replication = 10.0.0.2", "replication = [fd00::2]:9400", text);
    text += "[vm]\ncmdline = console=ttyS0\naccelerator = kvm\n";
    text += "[replication]\nlink-security = authenticated\nauth-key-file-next = /etc/colod/demo-2.key\n";
    const PairConfig config = parsed(text, "/etc/colod/demo.conf");
    const std::string written = to_config_text(config);
    CHECK(written.find("checkpoint-interval = 1.5s\n") != std::string::npos);
    CHECK(written.find("link-security = authenticated\n") != std::string::npos);
    CHECK(written.find("auth-key-file-next = /etc/colod/demo-2.key\n") != std::string::npos);
    CHECK(written.find("frame-auth") == std::string::npos);
    CHECK(written.find("replication = [fd00::2]:9400\n") != std::string::npos);
    CHECK(parsed(written, "/etc/colod/demo.conf") == config);
    CHECK(parsed(to_config_text(parsed(k_design)), "demo.conf") == parsed(k_design));
}

TEST_CASE("the packaged examples parse", "[config]") {
    const std::filesystem::path examples = COLOD_EXAMPLES_DIR;
    const PairConfig demo = load(examples / "demo.conf").value();
    CHECK(demo.vm.name == "demo");
    CHECK(demo.primary.replication.to_string() == "127.0.0.1:9400");
    CHECK(demo.secondary.replication.to_string() == "127.0.0.1:9401");
    CHECK(demo.primary.console.tcp.port != demo.secondary.console.tcp.port);
    CHECK(demo.primary.control != demo.secondary.control);
    CHECK(demo.replication.auth_key_file == (std::filesystem::absolute(examples) / "demo.key").lexically_normal());

    const PairConfig pair = load(examples / "pair-host-a.conf").value();
    CHECK(pair.primary.replication.to_string() == "10.0.0.1:9400");
    CHECK(pair.secondary.replication.to_string() == "10.0.0.2:9400");
    CHECK_FALSE(pair.replication.fence_command.empty());
    CHECK(pair.replication.auth_key_file == "/etc/colod/demo.key");
}

TEST_CASE("a Linux guest's network: net-tap and mac", "[config][linux][net]") {
    TempDir dir;
    colod::test::FakeBzImage kernel;
    dir.write("vmlinuz", kernel.text());
    ParseOptions options;
    options.base_dir = dir.path();
    auto linux_text = [](std::string_view lines) {
        return with_line("image", "kernel = vmlinuz") + fmt::format("[vm]\n{}\n", lines);
    };

    const PairConfig config = parsed(linux_text("net-tap = tap-demo\nmac = 52:54:00:AB:cd:01"), "demo.conf", options);
    CHECK(config.vm.has_network());
    CHECK(config.vm.net_tap == "tap-demo");
    CHECK(config.vm.mac == colod::config::Mac{0x52, 0x54, 0x00, 0xab, 0xcd, 0x01});
    CHECK(to_config_text(config).find("mac = 52:54:00:ab:cd:01\n") != std::string::npos);
    CHECK(parsed(to_config_text(config), "demo.conf", options) == config);
    CHECK_FALSE(parsed(linux_text(""), "demo.conf", options).vm.has_network());

    // Each rule, named.
    CHECK(errors_of(linux_text("net-tap = tap0"), "demo.conf", options) ==
          "demo.conf:22: vm.mac: required with vm.net-tap: the guest's MAC address, the same on both hosts (e.g. "
          "52:54:00:12:34:56)");
    CHECK(errors_of(linux_text("mac = 52:54:00:12:34:56"), "demo.conf", options) ==
          "demo.conf:22: vm.mac = 52:54:00:12:34:56: has no use without vm.net-tap");
    for (const char* name : {"a-name-too-long-for-linux", "tap/0", "tap:0", "..", "."})
        CHECK(errors_of(linux_text(fmt::format("net-tap = {}\nmac = 52:54:00:12:34:56", name)), "demo.conf", options) ==
              fmt::format("demo.conf:22: vm.net-tap = {}: must be a network interface name: 1 to 15 bytes, no '/', ':' "
                          "or white space",
                          name));
    const std::string not_mac = "must be a MAC address: six two-digit hex octets separated by ':' (e.g. 52:54:00:12:34:56)";
    for (const char* mac : {"52:54:00:12:34", "52:54:00:12:34:5g", "52-54-00-12-34-56", "525400123456", "52:54:00:12:34:567"})
        CHECK(errors_of(linux_text(fmt::format("net-tap = tap0\nmac = {}", mac)), "demo.conf", options) ==
              fmt::format("demo.conf:23: vm.mac = {}: {}", mac, not_mac));
    CHECK(errors_of(linux_text("net-tap = tap0\nmac = 01:00:5e:00:00:01"), "demo.conf", options) ==
          "demo.conf:23: vm.mac = 01:00:5e:00:00:01: is a multicast address (the low bit of the first octet is set): a "
          "NIC's address must be unicast, e.g. 52:54:00:12:34:56");
    CHECK(errors_of(linux_text("net-tap = tap0\nmac = 00:00:00:00:00:00"), "demo.conf", options) ==
          "demo.conf:23: vm.mac = 00:00:00:00:00:00: must not be all zeros");
    // The embedded guest has no NIC.
    CHECK(errors_of(k_design + "[vm]\nnet-tap = tap0\nmac = 52:54:00:12:34:56\n", "demo.conf", options) ==
          "demo.conf:22: vm.net-tap = tap0: is for Linux guests: it needs vm.kernel (the embedded guest has no network)");
}

TEST_CASE("a Linux guest's disk: vm.disk", "[config][linux][disk]") {
    TempDir dir;
    colod::test::FakeBzImage kernel;
    dir.write("vmlinuz", kernel.text());
    ParseOptions options;
    options.base_dir = dir.path();
    auto linux_text = [](std::string_view lines) {
        return with_line("image", "kernel = vmlinuz") + fmt::format("[vm]\n{}\n", lines);
    };

    // A relative path is the config file's neighbour; the file itself is examined only when a
    // daemon opens it (it need not exist for the config to parse).
    const PairConfig relative = parsed(linux_text("disk = images/demo.img"), "demo.conf", options);
    CHECK(relative.vm.has_disk());
    CHECK(relative.vm.disk == dir.path() / "images/demo.img");
    CHECK(relative.vm.disk.is_absolute());
    const PairConfig absolute = parsed(linux_text("disk = /var/lib/colod/../colod/demo.img"), "demo.conf", options);
    CHECK(absolute.vm.disk == "/var/lib/colod/demo.img");
    // The dump says it, and reads back the same.
    CHECK(to_config_text(absolute).find("disk = /var/lib/colod/demo.img\n") != std::string::npos);
    CHECK(parsed(to_config_text(absolute), "demo.conf", options) == absolute);
    CHECK(parsed(to_config_text(relative), "demo.conf", options) == relative);
    const PairConfig none = parsed(linux_text(""), "demo.conf", options);
    CHECK_FALSE(none.vm.has_disk());
    CHECK(to_config_text(none).find("disk =") == std::string::npos);
    // With the network too.
    const PairConfig both =
        parsed(linux_text("net-tap = tap0\nmac = 52:54:00:12:34:56\ndisk = /d.img"), "demo.conf", options);
    CHECK(both.vm.has_network());
    CHECK(both.vm.disk == "/d.img");

    CHECK(errors_of(linux_text("disk ="), "demo.conf", options) ==
          "demo.conf:22: vm.disk = \"\": must be the path of a raw disk image (or leave the key out)");
    // The embedded guest has no disk.
    CHECK(errors_of(k_design + "[vm]\ndisk = /d.img\n", "demo.conf", options) ==
          "demo.conf:22: vm.disk = /d.img: is for Linux guests: it needs vm.kernel (the embedded guest has no disk)");
    // Replicated in both modes.
    CHECK(parsed(with_line("mode", "mode = colo", linux_text("disk = /d.img")), "demo.conf", options).vm.has_disk());
}

TEST_CASE("a Linux guest: kernel and initrd instead of image", "[config][linux]") {
    TempDir dir;
    colod::test::FakeBzImage kernel;
    dir.write("vmlinuz", kernel.text());
    dir.write("initrd.cpio.gz", "070701...");
    dir.write("empty", "");
    ParseOptions options;
    options.base_dir = dir.path();
    auto linux_text = [](std::string_view kernel_line, std::string_view initrd_line = "") {
        std::string text = with_line("image", std::string(kernel_line));
        if (!initrd_line.empty())
            text += fmt::format("[vm]\n{}\n", initrd_line);
        return text;
    };

    const PairConfig config = parsed(linux_text("kernel = vmlinuz", "initrd = initrd.cpio.gz"), "demo.conf", options);
    CHECK(config.vm.is_linux());
    CHECK(config.vm.kernel == dir.path() / "vmlinuz");
    CHECK(config.vm.initrd == dir.path() / "initrd.cpio.gz");
    CHECK(parsed(to_config_text(config), "demo.conf", options) == config);
    CHECK(parsed(linux_text("kernel = vmlinuz"), "demo.conf", options).vm.initrd.empty());
    // A Linux command line may be longer than the embedded guest's 255 bytes.
    CHECK(parsed(linux_text("kernel = vmlinuz", "cmdline = " + std::string(1000, 'x')), "demo.conf", options)
              .vm.cmdline.size() == 1000);

    CHECK(errors_of(linux_text("kernel = vmlinuz", "accelerator = soft"), "demo.conf", options) ==
          "demo.conf:22: vm.accelerator = soft: Linux guests need KVM: the software backend runs only colod's own "
          "guests (set kvm or auto)");

    // Exactly one of image and kernel; initrd only with kernel.
    CHECK(errors_of(k_design + "[vm]\nkernel = vmlinuz\n", "demo.conf", options) ==
          "demo.conf:22: vm.kernel = vmlinuz: set either image (an ELF64 guest) or kernel (a Linux bzImage), not both");
    CHECK(errors_of(k_design + "[vm]\ninitrd = initrd.cpio.gz\n", "demo.conf", options) ==
          "demo.conf:22: vm.initrd = initrd.cpio.gz: is for Linux guests: it needs vm.kernel, not vm.image");
    CHECK(errors_of(with_line("image", ""), "demo.conf", options) ==
          "demo.conf: vm.image: required key is missing (or set vm.kernel for a Linux guest)");

    // Files that are missing, not files, empty, or not a bootable bzImage: the file and the rule.
    CHECK(errors_of(linux_text("kernel = nothing"), "demo.conf", options) ==
          fmt::format("demo.conf:5: vm.kernel = nothing: no such file ({})", (dir.path() / "nothing").string()));
    std::filesystem::create_directory(dir.path() / "boot");
    CHECK(errors_of(linux_text("kernel = boot"), "demo.conf", options) ==
          fmt::format("demo.conf:5: vm.kernel = boot: not a regular file ({})", (dir.path() / "boot").string()));
    CHECK(errors_of(linux_text("kernel = builtin:kvstore"), "demo.conf", options) ==
          "demo.conf:5: vm.kernel = builtin:kvstore: must be the path of a Linux bzImage (builtin: images go in vm.image)");
    CHECK(errors_of(linux_text("kernel = vmlinuz", "initrd = empty"), "demo.conf", options) ==
          fmt::format("demo.conf:22: vm.initrd = empty: {} is empty", (dir.path() / "empty").string()));
    CHECK(errors_of(linux_text("kernel = vmlinuz", "initrd = missing"), "demo.conf", options) ==
          fmt::format("demo.conf:22: vm.initrd = missing: no such file ({})", (dir.path() / "missing").string()));

    auto kernel_error = [&](colod::test::FakeBzImage broken) {
        dir.write("broken", broken.text());
        std::string message = errors_of(linux_text("kernel = broken"), "demo.conf", options);
        std::string prefix = fmt::format("demo.conf:5: vm.kernel = broken: {} is not a kernel colod can boot: ",
                                         (dir.path() / "broken").string());
        REQUIRE(message.starts_with(prefix));
        return message.substr(prefix.size());
    };
    colod::test::FakeBzImage no_magic;
    no_magic.put<uint32_t>(0x202, 0x12345678);
    CHECK(kernel_error(no_magic) == "not a bzImage: no boot flag 0xAA55 and \"HdrS\" magic in the setup header");
    colod::test::FakeBzImage old;
    old.put<uint16_t>(0x206, 0x020a);
    CHECK(kernel_error(old) ==
          "Linux boot protocol 2.10 is too old: the 64-bit entry needs 2.12 or later (kernel 3.8 and newer)");
    colod::test::FakeBzImage no_64;
    no_64.put<uint16_t>(0x236, 0);
    CHECK(kernel_error(no_64).starts_with("a kernel without the 64-bit entry point"));
    colod::test::FakeBzImage zimage;
    zimage.put<uint8_t>(0x211, 0);
    CHECK(kernel_error(zimage) == "a zImage (loaded below 1 MiB), not a bzImage");
    colod::test::FakeBzImage misaligned;
    misaligned.put<uint64_t>(0x258, 0x1000800);
    CHECK(kernel_error(misaligned) == "preferred load address 0x1000800 is not usable");
    dir.write("short", "MZ not even a header");
    CHECK(errors_of(linux_text("kernel = short"), "demo.conf", options) ==
          fmt::format("demo.conf:5: vm.kernel = short: {} is not a kernel colod can boot: not a bzImage: 20 bytes is "
                      "too short for a Linux setup header",
                      (dir.path() / "short").string()));

    // A kernel that needs more memory than the guest has.
    colod::test::FakeBzImage big;
    big.put<uint32_t>(0x260, 300u << 20);
    dir.write("big", big.text());
    CHECK(errors_of(linux_text("kernel = big"), "demo.conf", options) ==
          "demo.conf:3: vm.memory = 256M: this kernel needs at least 348 MiB of guest memory (loaded at 0x1000000, 300 "
          "MiB while it boots)");
}
