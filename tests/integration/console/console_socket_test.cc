// SPDX-License-Identifier: GPL-2.0-or-later
// The guest's console on a unix socket and through `coloctl console`, with a real standalone
// colod-primary running the embedded guest: the socket is mode 0600 and other users are
// refused, a live socket is never taken over and a dead daemon's is replaced, the file goes when
// the daemon stops; coloctl console works piped (as scripts use it) and on a terminal (raw mode,
// Ctrl-] detaches, the terminal restored); a console other hosts can reach is warned about at
// every start, a loopback one and a unix socket are not.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "base/fd.h"
#include "tests/support/free_port.h"
#include "tests/support/process.h"
#include "tests/support/test_net.h"

extern char** environ;

using namespace colod::test;
using namespace std::chrono_literals;

namespace {

constexpr std::string_view k_warning = "can be reached from other hosts";

// A standalone primary's directory: its config, key, logs and sockets.
class Standalone {
public:
    Standalone() {
        std::string pattern = (std::filesystem::temp_directory_path() / "colod-console-XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        m_dir = pattern;
        // Other users may enter it and read the config: only the socket's own mode keeps them
        // from the console.
        ::chmod(m_dir.c_str(), 0755);
        std::ofstream(m_dir / "demo.key", std::ios::binary) << std::string(32, 'k');
        ::chmod((m_dir / "demo.key").c_str(), 0600);
    }
    ~Standalone() {
        m_daemon.reset();
        if (!std::getenv("COLOD_KEEP_TEST_DIRS")) {
            std::error_code ignored;
            std::filesystem::remove_all(m_dir, ignored);
        }
    }

    std::string path(const std::string& name) const { return (m_dir / name).string(); }
    std::string config() const { return path("demo.conf"); }

    // Writes the config with `console` as the primary's console.
    void configure(const std::string& console) {
        std::ofstream(config()) << "[vm]\nname = demo\nmemory = 64M\nimage = builtin:kvstore\naccelerator = "
                                << (test_backend() == "kvm" ? "kvm" : "soft")
                                << "\n[replication]\nauth-key-file = demo.key\n"
                                << "[primary]\nreplication = 127.0.0.1:" << free_port() << "\nconsole = " << console
                                << "\ncontrol = " << path("primary.sock") << "\n[secondary]\nreplication = 127.0.0.1:"
                                << free_port() << "\nconsole = 127.0.0.1:" << free_port() << "\n";
        ::chmod(config().c_str(), 0644);
    }

    // Starts `colod-primary --standalone` (stderr to primary.log, appended across starts).
    Process& start() {
        auto process = spawn_daemon("primary");
        REQUIRE(process);
        m_daemon.reset();
        m_daemon.emplace(std::move(*process));
        return *m_daemon;
    }
    std::optional<Process> spawn_daemon(const std::string& log_name) const {
        return Process::spawn({COLOD_PRIMARY_BIN, "--config", config(), "--standalone"}, path(log_name + ".log"));
    }
    Process& daemon() { return *m_daemon; }

    // `coloctl console`, its stdin a pipe the test writes to; stderr to coloctl.log.
    Process coloctl(std::vector<std::string> prefix = {}) const {
        prefix.insert(prefix.end(), {COLOD_COLOCTL_BIN, "--config", config(), "--role", "primary", "console"});
        auto process = Process::spawn(prefix, path("coloctl.log"));
        REQUIRE(process);
        return std::move(*process);
    }

    std::string read(const std::string& name) const {
        std::ifstream in(path(name));
        return std::string(std::istreambuf_iterator<char>(in), {});
    }
    std::string log() const { return read("primary.log"); }
    // True once `count` starts of the guest are in the log.
    bool wait_started(size_t count = 1) const {
        return eventually(
            [&] {
                const std::string text = log();
                size_t found = 0;
                for (size_t at = text.find("[started]"); at != std::string::npos; at = text.find("[started]", at + 1))
                    ++found;
                return found >= count;
            },
            60s);
    }

private:
    std::filesystem::path m_dir;
    std::optional<Process> m_daemon;
};

size_t occurrences(const std::string& text, std::string_view what) {
    size_t count = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
        ++count;
    return count;
}

// Reads from `fd` until what was read contains `want`, or the timeout passes; returns all of it.
std::string read_until(int fd, std::string_view want, std::chrono::milliseconds timeout = 30s) {
    std::string text;
    auto deadline = std::chrono::steady_clock::now() + scaled(timeout);
    while (text.find(want) == std::string::npos) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0)
            break;
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left.count())) <= 0)
            continue;
        char buffer[4096];
        ssize_t n = ::read(fd, buffer, sizeof(buffer));
        if (n <= 0)
            break;
        text.append(buffer, static_cast<size_t>(n));
    }
    return text;
}

// Starts argv in a session of its own with `terminal` as its stdin, stdout and stderr.
pid_t spawn_on_terminal(const std::vector<std::string>& argv, int terminal) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    for (int fd : {0, 1, 2})
        posix_spawn_file_actions_adddup2(&actions, terminal, fd);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSID);
    std::vector<char*> args;
    for (const auto& arg : argv)
        args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    pid_t pid = -1;
    int rc = posix_spawn(&pid, args[0], &actions, &attr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    return rc == 0 ? pid : -1;
}

// The exit status of `pid` once it exits within the timeout; kills it and returns -1 otherwise.
int wait_exit(pid_t pid, std::chrono::milliseconds timeout = 30s) {
    int status = 0;
    bool exited = eventually([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, timeout);
    if (!exited) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

TEST_CASE("a standalone primary serves its console on a unix socket that only its user may open",
          "[integration][console]") {
    Standalone node;
    const std::string socket = node.path("console.sock");
    node.configure("unix:" + socket);
    node.start();
    {
        // DESIGN's console protocol, straight over the socket.
        auto direct = LineClient::connect_unix(socket, 60s);
        REQUIRE(direct);
        CHECK(direct->command("SET colour blue") == "OK");
        CHECK(direct->command("GET colour") == "blue");
    }
    struct stat info {};
    REQUIRE(::stat(socket.c_str(), &info) == 0);
    CHECK(S_ISSOCK(info.st_mode));
    CHECK((info.st_mode & 07777) == 0600);
    CHECK(info.st_uid == ::geteuid());

    // coloctl console with its stdin a pipe that stays open: line by line, as a program uses it.
    {
        auto coloctl = node.coloctl();
        REQUIRE(coloctl.write("PING\n"));
        CHECK(coloctl.line() == "PONG");
        REQUIRE(coloctl.write("GET colour\n"));
        CHECK(coloctl.line() == "blue");
        coloctl.signal(SIGTERM);
        CHECK(coloctl.exit_code() == 0);
    }
    // Piped as a script does: the answers come after the input has ended.
    {
        const std::string command =
            fmt::format("printf 'PING\\nINCR visits\\n' | '{}' --config '{}' --role primary console",
                        COLOD_COLOCTL_BIN, node.config());
        auto script = Process::spawn({"/bin/sh", "-c", command}, node.path("coloctl.log"));
        REQUIRE(script);
        CHECK(script->line() == "PONG");
        CHECK(script->line() == "1");
        CHECK(script->exit_code() == 0);
    }
    // Any client that speaks to a unix socket, e.g. socat.
    if (::access("/usr/bin/socat", X_OK) != 0) {
        WARN("socat is not installed (packaging/install-deps.sh installs it): its part is skipped");
    } else {
        auto socat = Process::spawn({"/usr/bin/socat", "-", "UNIX-CONNECT:" + socket}, node.path("socat.log"));
        REQUIRE(socat);
        REQUIRE(socat->write("PING\n"));
        CHECK(socat->line() == "PONG");
        REQUIRE(socat->write("INCR visits\n"));
        CHECK(socat->line() == "2");
    }

    // Another user is refused by the socket's mode, and coloctl says so.
    if (::geteuid() != 0 || ::access("/usr/bin/setpriv", X_OK) != 0) {
        WARN("not root, or no setpriv: the refusal of another user is not checked");
    } else {
        std::vector<std::string> as_nobody{"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"};
        auto refused = node.coloctl(as_nobody);
        CHECK(refused.exit_code() == 3);
        const std::string said = node.read("coloctl.log");
        INFO(said);
        CHECK(said.find(socket + ": permission denied") != std::string::npos);
        CHECK(said.find("mode 0600") != std::string::npos);
        if (::access("/usr/bin/socat", X_OK) == 0) {
            as_nobody.insert(as_nobody.end(), {"/usr/bin/socat", "-", "UNIX-CONNECT:" + socket});
            auto socat = Process::spawn(as_nobody, node.path("socat-nobody.log"));
            REQUIRE(socat);
            CHECK(socat->exit_code() != 0);
            CHECK(node.read("socat-nobody.log").find("Permission denied") != std::string::npos);
        }
    }

    // A second daemon for the same VM does not take the live console over.
    auto second = node.spawn_daemon("second");
    REQUIRE(second);
    CHECK(second->exit_code(60s) == 1);
    CHECK(node.read("second.log").find(fmt::format("console socket {} is in use", socket)) != std::string::npos);
    auto still = LineClient::connect_unix(socket);
    REQUIRE(still);
    CHECK(still->command("PING") == "PONG");

    // A clean stop removes the socket; nothing warned about the console.
    node.daemon().signal(SIGTERM);
    CHECK(node.daemon().exit_code() == 0);
    CHECK_FALSE(std::filesystem::exists(std::filesystem::symlink_status(socket)));
    CHECK(node.log().find(k_warning) == std::string::npos);
}

TEST_CASE("the console socket a killed daemon left behind is replaced at the next start", "[integration][console]") {
    Standalone node;
    const std::string socket = node.path("console.sock");
    node.configure("unix:" + socket);
    node.start();
    REQUIRE(node.wait_started(1));  // the console opens just before this is logged
    REQUIRE(LineClient::connect_unix(socket, 60s));
    node.daemon().signal(SIGKILL);
    CHECK(node.daemon().exit_code() == 128 + SIGKILL);
    REQUIRE(std::filesystem::is_socket(socket));  // left behind

    node.start();
    REQUIRE(node.wait_started(2));
    auto client = LineClient::connect_unix(socket, 60s);
    REQUIRE(client);
    CHECK(client->command("PING") == "PONG");
    struct stat info {};
    REQUIRE(::stat(socket.c_str(), &info) == 0);
    CHECK((info.st_mode & 07777) == 0600);
    node.daemon().signal(SIGTERM);
    CHECK(node.daemon().exit_code() == 0);
}

TEST_CASE("coloctl console on a terminal: raw mode, Enter ends a line, Ctrl-] detaches and restores it",
          "[integration][console]") {
    Standalone node;
    const uint16_t port = free_port();
    node.configure(fmt::format("127.0.0.1:{}", port));
    node.start();
    REQUIRE(LineClient::connect("127.0.0.1", port, 60s));

    int master = -1, terminal = -1;
    REQUIRE(::openpty(&master, &terminal, nullptr, nullptr, nullptr) == 0);
    colod::base::Fd master_fd(master), terminal_fd(terminal);
    termios before{};
    REQUIRE(::tcgetattr(terminal, &before) == 0);
    REQUIRE((before.c_lflag & ICANON));

    pid_t coloctl = spawn_on_terminal(
        {COLOD_COLOCTL_BIN, "--config", node.config(), "--role", "primary", "console"}, terminal);
    REQUIRE(coloctl > 0);
    CHECK(read_until(master, "Escape character is ^]").find("Escape character is ^]") != std::string::npos);
    CHECK(eventually([&] {
        termios now{};
        return ::tcgetattr(terminal, &now) == 0 && !(now.c_lflag & (ICANON | ECHO | ISIG));
    }));
    // Enter sends a carriage return in raw mode; the guest gets a line.
    REQUIRE(::write(master, "PING\r", 5) == 5);
    CHECK(read_until(master, "PONG").find("PONG") != std::string::npos);
    REQUIRE(::write(master, "\x1d", 1) == 1);
    CHECK(wait_exit(coloctl) == 0);

    termios after{};
    REQUIRE(::tcgetattr(terminal, &after) == 0);
    CHECK(after.c_lflag == before.c_lflag);
    CHECK(after.c_iflag == before.c_iflag);
    CHECK(after.c_oflag == before.c_oflag);
    // A loopback console is nothing to warn about.
    CHECK(node.log().find(k_warning) == std::string::npos);
}

TEST_CASE("a console other hosts can reach is warned about at every start", "[integration][console]") {
    Standalone node;
    const uint16_t port = free_port();
    node.configure(fmt::format("0.0.0.0:{}", port));
    for (size_t start = 1; start <= 2; ++start) {
        node.start();
        REQUIRE(node.wait_started(start));
        node.daemon().signal(SIGTERM);
        CHECK(node.daemon().exit_code() == 0);
    }
    const std::string log = node.log();
    INFO(log);
    CHECK(occurrences(log, fmt::format("console = 0.0.0.0:{} {}", port, k_warning)) == 2);
    CHECK(occurrences(log, "which for a Linux guest is a root shell") == 2);
}
