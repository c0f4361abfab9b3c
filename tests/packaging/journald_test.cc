// SPDX-License-Identifier: GPL-2.0-or-later
// Reads the structured journal fields back from a real colod-primary.
//
// PID 1 on the machines this runs on is not systemd and no journald runs, so the test plays
// journald itself: it binds a datagram socket, starts `colod-primary --standalone` in a private
// mount namespace in which /run/systemd/journal is the test's directory (so the daemon's
// sd_journal_sendv() lands on the test's socket), with stderr a pipe whose dev:ino is in
// JOURNAL_STREAM (what systemd sets for a unit whose output goes to the journal). It parses
// journald's native protocol and checks the records. It plays the service manager too
// (NOTIFY_SOCKET) to check READY=1, STATUS= and STOPPING=1.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "base/fd.h"
#include "tests/packaging/closed_events.h"

extern char** environ;

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using colod::base::Fd;

namespace {

using Clock = std::chrono::steady_clock;
using Record = std::multimap<std::string, std::string>;

std::string field(const Record& record, const std::string& key) {
    auto it = record.find(key);
    return it == record.end() ? std::string() : it->second;
}

std::string describe(const Record& record) {
    std::string out;
    for (const auto& [key, value] : record)
        out += key + "=" + value + "\n";
    return out;
}

// One datagram of journald's native protocol: fields "KEY=VALUE\n", or, for values that may
// hold newlines, "KEY\n" + little-endian u64 length + the bytes + "\n". nullopt for a malformed
// datagram (journald drops those too).
std::optional<Record> parse_native(std::string_view data) {
    Record record;
    while (!data.empty()) {
        size_t newline = data.find('\n');
        if (newline == std::string_view::npos)
            return std::nullopt;
        size_t equals = data.substr(0, newline).find('=');
        if (equals != std::string_view::npos) {
            record.emplace(std::string(data.substr(0, equals)),
                           std::string(data.substr(equals + 1, newline - equals - 1)));
            data.remove_prefix(newline + 1);
            continue;
        }
        std::string key(data.substr(0, newline));
        data.remove_prefix(newline + 1);
        if (data.size() < 8)
            return std::nullopt;
        uint64_t length = 0;
        for (size_t i = 8; i-- > 0;)
            length = (length << 8) | static_cast<uint8_t>(data[i]);
        data.remove_prefix(8);
        if (length >= data.size() || data[length] != '\n')
            return std::nullopt;
        record.emplace(std::move(key), std::string(data.substr(0, length)));
        data.remove_prefix(length + 1);
    }
    return record;
}

TEST_CASE("the native-protocol parser reads both field forms and refuses broken ones", "[journald]") {
    std::string binary = "MESSAGE\n";
    std::string value = "two\nlines";
    for (size_t i = 0; i < 8; ++i)
        binary.push_back(static_cast<char>(i == 0 ? value.size() : 0));
    binary += value + "\n";
    auto record = parse_native("PRIORITY=5\nCOLOD_EVENT=started\n" + binary + "EMPTY=\n");
    REQUIRE(record);
    CHECK(field(*record, "PRIORITY") == "5");
    CHECK(field(*record, "COLOD_EVENT") == "started");
    CHECK(field(*record, "MESSAGE") == "two\nlines");
    CHECK(record->count("EMPTY") == 1);
    CHECK_FALSE(parse_native("PRIORITY=5"));                      // no final newline
    CHECK_FALSE(parse_native("MESSAGE\n\x05\0\0\0\0\0\0\0ab\n"));  // length beyond the data
}

// A unix datagram socket bound at `path`: the test's journald or service manager.
Fd bind_datagram(const fs::path& path) {
    Fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    REQUIRE(fd);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    REQUIRE(path.native().size() < sizeof(address.sun_path));
    std::memcpy(address.sun_path, path.c_str(), path.native().size());
    // SAFETY: sockaddr_un is a sockaddr by the socket API's contract.
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0);
    int size = 4 << 20;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    return fd;
}

// The next datagram on `fd` within `timeout`. sd_journal_sendv() passes entries too large for
// a datagram as a sealed memfd (SCM_RIGHTS); those are read from the fd.
std::optional<std::string> receive(int fd, std::chrono::milliseconds timeout) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0)
        return std::nullopt;
    std::string buffer(256 * 1024, '\0');
    iovec iov{buffer.data(), buffer.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    msghdr message{};
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof(control);
    ssize_t n = ::recvmsg(fd, &message, MSG_CMSG_CLOEXEC);
    if (n < 0)
        return std::nullopt;
    buffer.resize(static_cast<size_t>(n));
    for (cmsghdr* c = CMSG_FIRSTHDR(&message); c; c = CMSG_NXTHDR(&message, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int passed = -1;
        std::memcpy(&passed, CMSG_DATA(c), sizeof(passed));
        Fd memfd(passed);
        std::string contents;
        char chunk[65536];
        off_t offset = 0;
        for (ssize_t got; (got = ::pread(memfd.get(), chunk, sizeof(chunk), offset)) > 0; offset += got)
            contents.append(chunk, static_cast<size_t>(got));
        return contents;
    }
    return buffer;
}

uint16_t free_tcp_port() {
    Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    // SAFETY: sockaddr_in is a sockaddr by the socket API's contract.
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0);
    REQUIRE(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&address), &length) == 0);
    return ntohs(address.sin_port);
}

struct TempDir {
    fs::path path;
    TempDir() {
        std::string pattern = (fs::temp_directory_path() / "colod-journald-XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        path = pattern;
    }
    ~TempDir() {
        std::error_code ignored;
        fs::remove_all(path, ignored);
    }
};

bool write_file(const char* path, const std::string& text) {
    Fd fd(::open(path, O_WRONLY | O_CLOEXEC));
    return fd && ::write(fd.get(), text.data(), text.size()) == static_cast<ssize_t>(text.size());
}

// Child side, between fork and exec: a private mount namespace in which /run/systemd/journal
// is `journal_dir`. Exit codes 120..124 tell the parent which step failed.
[[noreturn]] void exec_with_private_journal(const fs::path& journal_dir, const std::vector<std::string>& argv,
                                            const std::vector<std::string>& env, int output_fd) {
    if (::unshare(CLONE_NEWNS) != 0) {
        // Not root: a user namespace of our own may still create a mount namespace.
        uid_t uid = ::getuid();
        gid_t gid = ::getgid();
        if (errno != EPERM || ::unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0)
            ::_exit(120);
        write_file("/proc/self/setgroups", "deny");
        if (!write_file("/proc/self/uid_map", "0 " + std::to_string(uid) + " 1") ||
            !write_file("/proc/self/gid_map", "0 " + std::to_string(gid) + " 1"))
            ::_exit(120);
    }
    // Nothing done here may leak into the test's namespace.
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
        ::_exit(121);
    const fs::path target = "/run/systemd/journal";
    std::error_code error;
    if (!fs::is_directory(target, error)) {
        // No journald here: a tmpfs over the nearest existing parent, in this namespace only,
        // gives us a place for the directory.
        for (const char* parent : {"/run/systemd", "/run"}) {
            if (fs::is_directory(parent, error)) {
                if (::mount("tmpfs", parent, "tmpfs", 0, "mode=0755") != 0)
                    ::_exit(122);
                break;
            }
        }
        fs::create_directories(target, error);
        if (error)
            ::_exit(123);
    }
    if (::mount(journal_dir.c_str(), target.c_str(), nullptr, MS_BIND, nullptr) != 0)
        ::_exit(124);

    ::dup2(output_fd, STDOUT_FILENO);
    ::dup2(output_fd, STDERR_FILENO);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    std::vector<char*> args;
    for (const auto& arg : argv)
        args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    std::vector<char*> envp;
    for (const auto& entry : env)
        envp.push_back(const_cast<char*>(entry.c_str()));
    envp.push_back(nullptr);
    ::execve(args[0], args.data(), envp.data());
    ::_exit(125);
}

// colod-primary --standalone with the test as its journald and service manager.
class Daemon {
public:
    Daemon(const fs::path& dir, const fs::path& config, std::vector<std::string> extra_env = {})
        : m_journal(bind_datagram(dir / "journal" / "socket")), m_notify(bind_datagram(dir / "notify")) {
        int pipe_fds[2];
        REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
        Fd read_end(pipe_fds[0]);
        Fd write_end(pipe_fds[1]);
        struct stat st {};
        REQUIRE(::fstat(write_end.get(), &st) == 0);

        // The daemon's environment: ours, less anything a real service manager may have set.
        std::vector<std::string> env;
        static const std::regex managed("^(JOURNAL_STREAM|NOTIFY_SOCKET|WATCHDOG_[A-Z]+|LISTEN_[A-Z]+|COLOD_LOG_LEVEL)=");
        for (char** e = environ; *e; ++e)
            if (!std::regex_search(*e, managed))
                env.emplace_back(*e);
        env.push_back("JOURNAL_STREAM=" + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino));
        env.push_back("NOTIFY_SOCKET=" + (dir / "notify").string());
        for (const auto& entry : extra_env) {
            // An extra entry replaces one of the same name (getenv() would see the first).
            const std::string name = entry.substr(0, entry.find('=') + 1);
            std::erase_if(env, [&](const std::string& e) { return e.rfind(name, 0) == 0; });
            env.push_back(entry);
        }
        std::vector<std::string> argv{COLOD_PRIMARY_BINARY, "--config", config.string(), "--standalone"};

        m_pid = ::fork();
        REQUIRE(m_pid >= 0);
        if (m_pid == 0)
            exec_with_private_journal(dir / "journal", argv, env, write_end.get());
        m_output = std::move(read_end);
        ::fcntl(m_output.get(), F_SETFL, O_NONBLOCK);
    }
    ~Daemon() {
        if (!m_status) {
            ::kill(m_pid, SIGKILL);
            ::waitpid(m_pid, nullptr, 0);
        }
    }
    Daemon(const Daemon&) = delete;
    Daemon& operator=(const Daemon&) = delete;

    pid_t pid() const { return m_pid; }
    const std::vector<Record>& records() const { return m_records; }
    const std::vector<std::string>& notifications() const { return m_notifications; }

    // What the daemon wrote to stdout/stderr (nothing, while the journal takes its records).
    std::string output() {
        char chunk[4096];
        for (ssize_t n; (n = ::read(m_output.get(), chunk, sizeof(chunk))) > 0;)
            m_output_text.append(chunk, static_cast<size_t>(n));
        return m_output_text;
    }

    // Collects journal records and notifications until `done` holds, the daemon has exited and
    // nothing more is queued, or the timeout passes.
    template <typename Done>
    bool collect_until(Done done, std::chrono::milliseconds timeout) {
        auto deadline = Clock::now() + timeout;
        for (;;) {
            if (done())
                return true;
            if (Clock::now() >= deadline)
                return false;
            pollfd fds[2] = {{m_journal.get(), POLLIN, 0}, {m_notify.get(), POLLIN, 0}};
            // Short slices: a daemon that exits sends no event to wake us.
            int ready = ::poll(fds, 2, 100);
            if (ready > 0) {
                if (fds[0].revents & POLLIN) {
                    if (auto datagram = receive(m_journal.get(), 0ms)) {
                        auto record = parse_native(*datagram);
                        INFO("a datagram that is not journald's native protocol: " << *datagram);
                        REQUIRE(record);
                        m_records.push_back(std::move(*record));
                    }
                }
                if (fds[1].revents & POLLIN) {
                    if (auto datagram = receive(m_notify.get(), 0ms))
                        m_notifications.push_back(std::move(*datagram));
                }
                continue;
            }
            if (exited())
                return done();
        }
    }

    std::optional<Record> wait_for_event(const std::string& event, std::chrono::milliseconds timeout) {
        auto find = [&]() -> const Record* {
            for (const auto& record : m_records)
                if (field(record, "COLOD_EVENT") == event)
                    return &record;
            return nullptr;
        };
        collect_until([&] { return find() != nullptr; }, timeout);
        if (const Record* record = find())
            return *record;
        return std::nullopt;
    }

    bool wait_for_notification(const std::string& assignment, std::chrono::milliseconds timeout) {
        return collect_until([&] { return notification_line(assignment) == assignment; }, timeout);
    }

    // The first line of any notification that starts with `prefix` ("READY=1", "STATUS=...").
    std::string notification_line(const std::string& prefix) const {
        for (const auto& datagram : m_notifications) {
            size_t start = 0;
            while (start < datagram.size()) {
                size_t end = datagram.find('\n', start);
                if (end == std::string::npos)
                    end = datagram.size();
                std::string line = datagram.substr(start, end - start);
                if (line.rfind(prefix, 0) == 0)
                    return line;
                start = end + 1;
            }
        }
        return {};
    }

    bool exited() {
        if (m_status)
            return true;
        int status = 0;
        if (::waitpid(m_pid, &status, WNOHANG) == m_pid)
            m_status = status;
        return m_status.has_value();
    }

    // The exit code (128+signal for a signal death), or -1 when it does not end in time.
    int exit_code(std::chrono::milliseconds timeout) {
        auto deadline = Clock::now() + timeout;
        while (!exited()) {
            if (Clock::now() >= deadline)
                return -1;
            // Keep draining: a daemon blocked on a full socket buffer would never exit.
            collect_until([] { return false; }, 50ms);
        }
        return WIFEXITED(*m_status) ? WEXITSTATUS(*m_status) : 128 + WTERMSIG(*m_status);
    }

private:
    Fd m_journal;
    Fd m_notify;
    Fd m_output;
    pid_t m_pid = -1;
    std::optional<int> m_status;
    std::vector<Record> m_records;
    std::vector<std::string> m_notifications;
    std::string m_output_text;
};

struct Setup {
    TempDir dir;
    fs::path config;
    uint16_t console_port = free_tcp_port();

    Setup() {
        fs::create_directories(dir.path / "journal");
        {
            std::ofstream key(dir.path / "pair.key", std::ios::binary);
            std::ifstream random("/dev/urandom", std::ios::binary);
            char bytes[32];
            REQUIRE(random.read(bytes, sizeof(bytes)));
            key.write(bytes, sizeof(bytes));
        }
        fs::permissions(dir.path / "pair.key", fs::perms::owner_read | fs::perms::owner_write);
        config = dir.path / "jtest.conf";
        std::ofstream out(config);
        out << "[vm]\nname = jtest\nmemory = 64M\nimage = builtin:kvstore\n"
            << "[replication]\nauth-key-file = pair.key\n"
            << "[primary]\nreplication = 127.0.0.1:1\nconsole = 127.0.0.1:" << console_port << "\n"
            << "control = " << (dir.path / "primary.sock").string() << "\n"
            << "[secondary]\nreplication = 127.0.0.2:1\nconsole = 127.0.0.2:" << console_port << "\n"
            << "control = " << (dir.path / "secondary.sock").string() << "\n";
    }
};

}  // namespace

TEST_CASE("colod-primary writes structured records to the journal and notifies systemd", "[journald]") {
    Setup setup;
    Daemon daemon(setup.dir.path, setup.config);

    auto started = daemon.wait_for_event("started", 60s);
    INFO("daemon output:\n" << daemon.output());
    REQUIRE(started);
    INFO("the started record:\n" << describe(*started));
    CHECK(field(*started, "COLOD_VM") == "jtest");
    CHECK(field(*started, "COLOD_ROLE") == "primary");
    CHECK(field(*started, "PRIORITY") == "5");  // notice
    CHECK(field(*started, "MESSAGE").find("running") != std::string::npos);
    CHECK(field(*started, "COLOD_CONSOLE") == "127.0.0.1:" + std::to_string(setup.console_port));

    REQUIRE(daemon.wait_for_notification("READY=1", 10s));
    CHECK(daemon.notification_line("STATUS=").size() > std::string("STATUS=").size());

    ::kill(daemon.pid(), SIGTERM);
    auto stopped = daemon.wait_for_event("stopped", 30s);
    REQUIRE(stopped);
    INFO("the stopped record:\n" << describe(*stopped));
    CHECK(field(*stopped, "COLOD_VM") == "jtest");
    CHECK(field(*stopped, "COLOD_ROLE") == "primary");
    CHECK_FALSE(field(*stopped, "COLOD_REASON").empty());
    CHECK(field(*stopped, "PRIORITY") == "5");
    CHECK_FALSE(field(*stopped, "MESSAGE").empty());
    CHECK(daemon.exit_code(30s) == 0);
    CHECK(daemon.wait_for_notification("STOPPING=1", 1s));

    // Every record: the fields every record carries, names journald accepts (it silently drops
    // fields whose names break its rules), and events from the closed list only.
    const auto events = colod::test::closed_event_names();
    static const std::regex journald_name("^[A-Z0-9][A-Z0-9_]{0,63}$");
    for (const auto& record : daemon.records()) {
        INFO("record:\n" << describe(record));
        CHECK(record.count("MESSAGE") == 1);
        CHECK(record.count("PRIORITY") == 1);
        CHECK(field(record, "COLOD_VM") == "jtest");
        CHECK(field(record, "COLOD_ROLE") == "primary");
        auto [first, last] = record.equal_range("COLOD_EVENT");
        for (auto it = first; it != last; ++it)
            CHECK(events.count(it->second) == 1);
        for (const auto& [key, value] : record)
            CHECK(std::regex_match(key, journald_name));
    }
    // With the journal taking the records, nothing is left for stderr.
    CHECK(daemon.output().empty());
}

TEST_CASE("without JOURNAL_STREAM matching stderr the daemon logs lines to stderr, not the journal", "[journald]") {
    Setup setup;
    // A JOURNAL_STREAM that names some other file, as when a unit's stderr is redirected.
    Daemon daemon(setup.dir.path, setup.config, {"JOURNAL_STREAM=1:1"});
    auto log_has = [&](const char* text) { return daemon.output().find(text) != std::string::npos; };
    REQUIRE(daemon.collect_until([&] { return log_has("[started]"); }, 60s));
    ::kill(daemon.pid(), SIGTERM);
    CHECK(daemon.exit_code(30s) == 0);
    CHECK(log_has("[stopped]"));
    CHECK(daemon.records().empty());
}

// The units set WatchdogSec=10s: a daemon that does not ping is killed.
TEST_CASE("with WatchdogSec the daemon pings WATCHDOG=1", "[journald]") {
    Setup setup;
    // WATCHDOG_PID must be the daemon's pid; the child is the daemon after exec, so systemd's
    // alternative applies: without WATCHDOG_PID, sd_watchdog_enabled() trusts WATCHDOG_USEC.
    Daemon daemon(setup.dir.path, setup.config, {"WATCHDOG_USEC=1000000"});
    REQUIRE(daemon.wait_for_notification("READY=1", 60s));
    CHECK(daemon.wait_for_notification("WATCHDOG=1", 3s));
    ::kill(daemon.pid(), SIGTERM);
    CHECK(daemon.exit_code(30s) == 0);
}
