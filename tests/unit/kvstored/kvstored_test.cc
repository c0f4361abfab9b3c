// SPDX-License-Identifier: GPL-2.0-or-later
// kvstored (guests/linux/kvstored.c), the real static binary, serving a pty: the test holds the
// master side and talks the console protocol of docs/kvstore.md through it, as colod's UART
// would, and through real TCP sockets to its --tcp-port. Behaviour only: no assertion depends on
// how fast this machine is.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <regex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "base/fd.h"
#include "tests/support/free_port.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto k_reply_timeout = 10s;

// The lines kvstored writes to one file descriptor (the pty master, or a TCP socket).
class LineReader {
public:
    explicit LineReader(int fd) : m_fd(fd) {}

    // The next line, without its '\n'.
    std::string line() {
        auto deadline = Clock::now() + k_reply_timeout;
        for (;;) {
            auto nl = m_buffer.find('\n');
            if (nl != std::string::npos) {
                std::string out = m_buffer.substr(0, nl);
                m_buffer.erase(0, nl + 1);
                return out;
            }
            auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            INFO("waiting for a reply; so far: " << m_buffer);
            REQUIRE(left.count() > 0);
            REQUIRE(read_some(static_cast<int>(left.count())) == Read::got_bytes);
        }
    }

    // Everything that arrives within `quiet` (nothing, if all is well).
    std::string unexpected_output(std::chrono::milliseconds quiet = 200ms) {
        while (read_some(static_cast<int>(quiet.count())) == Read::got_bytes) {
        }
        return std::exchange(m_buffer, std::string());
    }

    // True once the other end has closed (end of file, or a reset), within the reply timeout;
    // whatever arrives before is kept for line().
    bool closed_by_peer() {
        auto deadline = Clock::now() + k_reply_timeout;
        for (;;) {
            auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            if (left.count() <= 0)
                return false;
            if (read_some(static_cast<int>(left.count())) == Read::closed)
                return true;
        }
    }

private:
    enum class Read { got_bytes, nothing, closed };

    Read read_some(int timeout_ms) {
        pollfd p{m_fd, POLLIN, 0};
        int r = poll(&p, 1, timeout_ms);
        if (r <= 0)
            return Read::nothing;
        char buf[4096];
        ssize_t n = read(m_fd, buf, sizeof buf);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            return Read::nothing;
        if (n <= 0)
            return Read::closed;
        m_buffer.append(buf, static_cast<size_t>(n));
        return Read::got_bytes;
    }

    int m_fd;
    std::string m_buffer;
};

// One kvstored on a fresh pty, killed and reaped when the object goes.
class Kvstored {
public:
    explicit Kvstored(std::vector<std::string> extra_args = {"--scratch-mib", "64"}) {
        m_master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        REQUIRE(m_master >= 0);
        m_reader = LineReader(m_master);
        REQUIRE(grantpt(m_master) == 0);
        REQUIRE(unlockpt(m_master) == 0);
        const char* name = ptsname(m_master);
        REQUIRE(name != nullptr);
        m_slave_path = name;

        std::vector<std::string> args = {KVSTORED_PATH, "--tty", m_slave_path};
        args.insert(args.end(), extra_args.begin(), extra_args.end());
        // No TCP service unless a test asks for one: the default port may be taken on this host.
        if (std::find(args.begin(), args.end(), "--tcp-port") == args.end())
            args.insert(args.end(), {"--tcp-port", "0"});
        if (std::find(args.begin(), args.end(), "--sink-port") == args.end())
            args.insert(args.end(), {"--sink-port", "0"});
        m_pid = fork();
        REQUIRE(m_pid >= 0);
        if (m_pid == 0) {
            // A kvstored must not outlive a test that died.
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            std::vector<char*> argv;
            for (auto& a : args)
                argv.push_back(a.data());
            argv.push_back(nullptr);
            execv(argv[0], argv.data());
            _exit(127);
        }
        wait_until_raw();
    }
    ~Kvstored() {
        if (m_pid > 0) {
            kill(m_pid, SIGKILL);
            waitpid(m_pid, nullptr, 0);
        }
        close(m_master);
    }
    Kvstored(const Kvstored&) = delete;
    Kvstored& operator=(const Kvstored&) = delete;

    pid_t pid() const { return m_pid; }

    // The slave's settings, as kvstored left them (the master reads the pair's one termios).
    termios tty_settings() const {
        termios t{};
        REQUIRE(tcgetattr(m_master, &t) == 0);
        return t;
    }

    void send(std::string_view bytes) {
        while (!bytes.empty()) {
            ssize_t n = write(m_master, bytes.data(), bytes.size());
            if (n < 0 && errno == EINTR)
                continue;
            REQUIRE(n > 0);
            bytes.remove_prefix(static_cast<size_t>(n));
        }
    }

    // The next line kvstored wrote to the console, without its '\n'.
    std::string line() { return m_reader.line(); }

    std::string cmd(std::string_view text) {
        send(std::string(text) + "\n");
        return line();
    }

    // Everything that arrives within `quiet` (nothing, if all is well).
    std::string unexpected_output(std::chrono::milliseconds quiet = 200ms) {
        return m_reader.unexpected_output(quiet);
    }

    // Waits for kvstored to end and returns its wait status.
    int wait_exit() {
        int status = 0;
        auto deadline = Clock::now() + k_reply_timeout;
        for (;;) {
            pid_t r = waitpid(m_pid, &status, WNOHANG);
            REQUIRE(r >= 0);
            if (r == m_pid)
                break;
            REQUIRE(Clock::now() < deadline);
            std::this_thread::sleep_for(10ms);
        }
        m_pid = -1;
        return status;
    }

private:
    // The pty starts in the kernel's default cooked mode; kvstored is ready once it made it raw.
    // Nothing is sent before, so nothing can be echoed by the default settings.
    void wait_until_raw() {
        auto deadline = Clock::now() + k_reply_timeout;
        while ((tty_settings().c_lflag & ICANON) != 0) {
            int status = 0;
            INFO("kvstored exited before it set up the tty");
            REQUIRE(waitpid(m_pid, &status, WNOHANG) == 0);
            REQUIRE(Clock::now() < deadline);
            std::this_thread::sleep_for(5ms);
        }
    }

    int m_master = -1;
    std::string m_slave_path;
    pid_t m_pid = -1;
    LineReader m_reader{-1};
};

// One TCP connection to kvstored's --tcp-port on 127.0.0.1.
class TcpClient {
public:
    // receive_buffer: SO_RCVBUF before connecting (0: the kernel's default), to keep the bytes a
    // client that never reads can leave in its own kernel small.
    explicit TcpClient(uint16_t port, int receive_buffer = 0)
        : m_fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)), m_reader(m_fd.get()) {
        REQUIRE(m_fd.valid());
        if (receive_buffer != 0)
            REQUIRE(setsockopt(m_fd.get(), SOL_SOCKET, SO_RCVBUF, &receive_buffer,
                               sizeof receive_buffer) == 0);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        address.sin_port = htons(port);
        INFO("connecting to 127.0.0.1:" << port);
        REQUIRE(connect(m_fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    }

    int fd() const { return m_fd.get(); }

    void send(std::string_view bytes) {
        while (!bytes.empty()) {
            ssize_t n = ::send(m_fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR)
                continue;
            REQUIRE(n > 0);
            bytes.remove_prefix(static_cast<size_t>(n));
        }
    }

    std::string line() { return m_reader.line(); }

    std::string cmd(std::string_view text) {
        send(std::string(text) + "\n");
        return line();
    }

    std::string unexpected_output(std::chrono::milliseconds quiet = 200ms) {
        return m_reader.unexpected_output(quiet);
    }

    bool closed_by_peer() { return m_reader.closed_by_peer(); }

private:
    colod::base::Fd m_fd;
    LineReader m_reader;
};

// A kvstored with its TCP service on a free port, running: its console has answered, so its
// listener is up (kvstored opens it before it serves the console).
struct TcpKvstored {
    TcpKvstored()
        : port(colod::test::free_port()),
          k({"--scratch-mib", "64", "--tcp-port", std::to_string(port)}) {
        REQUIRE(k.cmd("PING") == "PONG");
    }
    uint16_t port;
    Kvstored k;
};

struct Info {
    uint64_t ticks, keys, pages;
};

Info parse_info(const std::string& reply) {
    static const std::regex format("ticks=([0-9]+) keys=([0-9]+) pages=([0-9]+)");
    std::smatch m;
    INFO("INFO replied: " << reply);
    REQUIRE(std::regex_match(reply, m, format));
    return {std::stoull(m[1]), std::stoull(m[2]), std::stoull(m[3])};
}

std::set<int> allowed_cpus() {
    cpu_set_t set;
    REQUIRE(sched_getaffinity(0, sizeof set, &set) == 0);
    std::set<int> cpus;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &set))
            cpus.insert(cpu);
    return cpus;
}

// "Cpus_allowed_list:\t0-1" → {0, 1}
std::set<int> thread_cpus(const std::filesystem::path& task) {
    std::ifstream status(task / "status");
    std::string line;
    std::set<int> cpus;
    while (std::getline(status, line)) {
        if (line.rfind("Cpus_allowed_list:", 0) != 0)
            continue;
        std::string list = line.substr(line.find(':') + 1);
        size_t pos = 0;
        while (pos < list.size()) {
            size_t comma = list.find(',', pos);
            size_t len = comma == std::string::npos ? std::string::npos : comma - pos;
            std::string item = list.substr(pos, len);
            auto dash = item.find('-');
            int lo = std::stoi(item.substr(0, dash));
            int hi = dash == std::string::npos ? lo : std::stoi(item.substr(dash + 1));
            for (int c = lo; c <= hi; c++)
                cpus.insert(c);
            if (comma == std::string::npos)
                break;
            pos = comma + 1;
        }
    }
    return cpus;
}

}  // namespace

TEST_CASE("kvstored puts the tty in raw mode and never echoes", "[kvstored]") {
    Kvstored k;
    termios t = k.tty_settings();
    CHECK((t.c_lflag & (ECHO | ICANON | ISIG | IEXTEN)) == 0);
    CHECK((t.c_iflag & (ICRNL | INLCR | IGNCR | IXON)) == 0);
    CHECK((t.c_oflag & OPOST) == 0);
    CHECK(t.c_cc[VMIN] == 1);

    CHECK(k.cmd("PING") == "PONG");
    CHECK(k.unexpected_output().empty());
    // CR LF reaches the engine as sent (no CR→NL), which drops the CR: one reply only.
    CHECK(k.cmd("PING\r") == "PONG");
    CHECK(k.unexpected_output().empty());
    // ^C and ^Z are data, not signals: the line is binary, and kvstored lives on.
    CHECK(k.cmd("\x03\x1a") == "ERR binary data in line");
    CHECK(k.cmd("ping") == "PONG");
}

TEST_CASE("kvstored answers the kvstore protocol", "[kvstored]") {
    Kvstored k;
    CHECK(k.cmd("GET colour") == "NIL");
    CHECK(k.cmd("SET colour blue") == "OK");
    CHECK(k.cmd("GET colour") == "blue");
    CHECK(k.cmd("SET greeting hello,  wide world ") == "OK");
    CHECK(k.cmd("GET greeting") == "hello,  wide world ");
    CHECK(k.cmd("INCR n") == "1");
    CHECK(k.cmd("INCR n") == "2");
    CHECK(k.cmd("INCR colour") == "ERR value is not an integer");
    CHECK(k.cmd("DEL colour") == "OK");
    CHECK(k.cmd("GET colour") == "NIL");
    CHECK(k.cmd("FROBNICATE") == "ERR unknown command");
    CHECK(k.cmd("") == "ERR empty line");
    CHECK(k.cmd("SET k") == "ERR usage: SET key value");

    SECTION("lines of 512 bytes are served, longer ones refused once") {
        CHECK(k.cmd("SET k " + std::string(506, 'v')) == "OK");
        CHECK(k.cmd("GET k") == std::string(506, 'v'));
        CHECK(k.cmd(std::string(513, 'X')) == "ERR line too long");
        CHECK(k.cmd(std::string(10000, 'X')) == "ERR line too long");
        CHECK(k.unexpected_output().empty());
        CHECK(k.cmd("PING") == "PONG");
    }
    SECTION("INFO counts keys and pages") {
        CHECK(k.cmd("DIRTY 10") == "OK 10");
        CHECK(k.cmd("DIRTY 0") == "OK 0");
        Info i = parse_info(k.cmd("INFO"));
        CHECK(i.keys == 2);
        CHECK(i.pages == 10);
    }
}

TEST_CASE("kvstored's scratch bounds DIRTY and CHURN", "[kvstored]") {
    Kvstored k({"--scratch-mib", "4"});
    CHECK(k.cmd("DIRTY 1024") == "OK 1024");
    CHECK(k.cmd("DIRTY 1025") == "ERR page count exceeds scratch memory of 1024 pages");
    CHECK(k.cmd("CHURN 1025") == "ERR page count exceeds scratch memory of 1024 pages");
    CHECK(k.cmd("DIRTY many") == "ERR page count is not a number");
    CHECK(parse_info(k.cmd("INFO")).pages == 1024);

    SECTION("without --scratch-mib the scratch is half the RAM, at least 4 MiB") {
        Kvstored d(std::vector<std::string>{});
        std::string reply = d.cmd("DIRTY 99999999999");
        std::smatch m;
        const std::regex refusal("ERR page count exceeds scratch memory of ([0-9]+) pages");
        REQUIRE(std::regex_match(reply, m, refusal));
        uint64_t pages = std::stoull(m[1]);
        uint64_t ram = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) *
                       static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
        CHECK(pages >= 1024);
        CHECK(pages * 4096 <= std::max<uint64_t>(ram / 2, 4u << 20));
        CHECK(pages * 4096 >= std::max<uint64_t>(ram / 2, 4u << 20) - 4096);
    }
}

TEST_CASE("kvstored's ticks run at 100 Hz of the monotonic clock", "[kvstored]") {
    Kvstored k;
    auto t0 = Clock::now();
    Info a = parse_info(k.cmd("INFO"));
    std::this_thread::sleep_for(300ms);
    Info b = parse_info(k.cmd("INFO"));
    auto elapsed_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
    CHECK(b.ticks > a.ticks);
    // Never faster than the clock (whatever the load, this holds).
    CHECK(b.ticks - a.ticks <= static_cast<uint64_t>(elapsed_ms) / 10 + 1);
}

TEST_CASE("kvstored's CHURN writes n pages a tick on one worker per CPU", "[kvstored]") {
    const std::set<int> cpus = allowed_cpus();
    const uint64_t n = 3 * cpus.size() + 1;  // shares of unequal size when there are several
    Kvstored k;

    // One worker thread per CPU, each pinned to its own CPU, beside the main thread.
    const std::filesystem::path tasks = "/proc/" + std::to_string(k.pid()) + "/task";
    std::set<int> pinned;
    size_t threads = 0;
    auto deadline = Clock::now() + k_reply_timeout;
    do {
        pinned.clear();
        threads = 0;
        for (const auto& task : std::filesystem::directory_iterator(tasks)) {
            threads++;
            auto set = thread_cpus(task.path());
            if (set.size() == 1)
                pinned.insert(*set.begin());
        }
        if (pinned == cpus || Clock::now() > deadline)
            break;
        std::this_thread::sleep_for(10ms);
    } while (true);
    CHECK(threads == cpus.size() + 1);
    if (cpus.size() > 1)
        CHECK(pinned == cpus);

    CHECK(k.cmd("DIRTY 5") == "OK 5");
    Info before = parse_info(k.cmd("INFO"));
    CHECK(k.cmd("CHURN " + std::to_string(n)) == "OK");
    Info during;
    deadline = Clock::now() + k_reply_timeout;
    do {
        std::this_thread::sleep_for(100ms);
        during = parse_info(k.cmd("INFO"));
    } while (during.pages == before.pages && Clock::now() < deadline);
    CHECK(k.cmd("CHURN 0") == "OK");
    Info stopped = parse_info(k.cmd("INFO"));

    INFO("before " << before.pages << ", during " << during.pages << ", stopped " << stopped.pages);
    CHECK(during.pages > before.pages);
    // Whole rounds only, one per tick at most.
    CHECK((during.pages - before.pages) % n == 0);
    CHECK((stopped.pages - before.pages) % n == 0);
    CHECK((stopped.pages - before.pages) / n <= stopped.ticks - before.ticks + 1);

    // CHURN 0 has stopped every worker by the time its OK arrives.
    std::this_thread::sleep_for(200ms);
    Info later = parse_info(k.cmd("INFO"));
    CHECK(later.pages == stopped.pages);
    CHECK(later.ticks > stopped.ticks);

    SECTION("a new CHURN starts again, and replaces the old n") {
        CHECK(k.cmd("CHURN 2") == "OK");
        CHECK(k.cmd("CHURN " + std::to_string(n)) == "OK");
        do {
            std::this_thread::sleep_for(50ms);
            later = parse_info(k.cmd("INFO"));
        } while (later.pages == stopped.pages && Clock::now() < deadline + k_reply_timeout);
        CHECK(k.cmd("CHURN 0") == "OK");
        Info end = parse_info(k.cmd("INFO"));
        CHECK(end.pages > stopped.pages);
        // The CHURN 2 may have run rounds before it was replaced: 2a + nb pages.
        bool whole = false;
        for (uint64_t a = 0; a * 2 <= end.pages - stopped.pages; a++)
            whole = whole || (end.pages - stopped.pages - a * 2) % n == 0;
        CHECK(whole);
    }
}

TEST_CASE("two kvstoreds give the same replies to the same script", "[kvstored]") {
    const std::vector<std::string> script = {
        "PING", "SET a 1", "INCR a", "INCR b", "GET a", "DEL a", "GET a", "SET s  x y ",
        "GET s", "DIRTY 17", "CHURN 0", "CHURN x", "INFO", "nope", "", std::string(600, 'z'),
        "\x7f", "INCR s", "PING 1", "DIRTY 16385", "POWEROFF now", "INFO"};
    auto run = [&] {
        Kvstored k;
        std::vector<std::string> replies;
        for (const auto& line : script) {
            std::string r = k.cmd(line);
            // ticks= is the one field that depends on when the line came.
            replies.push_back(std::regex_replace(r, std::regex("^ticks=[0-9]+ "), "ticks=T "));
        }
        CHECK(k.unexpected_output().empty());
        return replies;
    };
    auto first = run();
    auto second = run();
    CHECK(first == second);
    CHECK(first.back() == "ticks=T keys=2 pages=17");
    CHECK(first[first.size() - 3] == "ERR page count exceeds scratch memory of 16384 pages");
    CHECK(first[first.size() - 2] == "ERR usage: POWEROFF");
}

TEST_CASE("POWEROFF answers OK and ends kvstored (its init then powers off)", "[kvstored]") {
    // Not PID 1, so kvstored only exits: it never powers off the machine running the test.
    Kvstored k;
    CHECK(k.cmd("SET a b") == "OK");
    CHECK(k.cmd("poweroff") == "OK");
    int status = k.wait_exit();
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(k.unexpected_output(50ms).empty());
}

TEST_CASE("REBOOT answers OK and ends kvstored with status 3 (its init then reboots)", "[kvstored]") {
    Kvstored k;
    CHECK(k.cmd("REBOOT now") == "ERR usage: REBOOT");
    CHECK(k.cmd("GET a") == "NIL");  // still serving
    CHECK(k.cmd(" reboot ") == "OK");
    int status = k.wait_exit();
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 3);
    CHECK(k.unexpected_output(50ms).empty());
}

TEST_CASE("HWRNG: usage errors, and n bytes of /dev/hwrng in hex or the reason there are none", "[kvstored]") {
    Kvstored k;
    for (const char* bad : {"HWRNG", "HWRNG 0", "HWRNG 65", "HWRNG x", "HWRNG 1 2", "hwrng -1", "HWRNG 99999999999"})
        CHECK(k.cmd(bad) == "ERR usage: HWRNG n (1..64)");
    std::string reply = k.cmd("hwrng  16 ");
    INFO(reply);
    // This host may or may not have a hardware RNG; the Linux pair tests read the guest's.
    CHECK((std::regex_match(reply, std::regex("[0-9a-f]{32}")) || reply.rfind("ERR hwrng: ", 0) == 0));
    CHECK(k.cmd("PING") == "PONG");
    CHECK(k.unexpected_output().empty());
}

namespace {

// A temporary folder for --data-dir, removed with everything in it.
struct DataDir {
    std::filesystem::path path;
    DataDir() {
        std::string pattern = (std::filesystem::temp_directory_path() / "kvstored-data-XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        path = pattern;
    }
    ~DataDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    std::string records() const {
        std::ifstream in(path / "records", std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(in), {});
    }
};

}  // namespace

TEST_CASE("APPEND, RECORDS and RECORD without a disk answer ERR, never OK", "[kvstored][disk]") {
    Kvstored k;
    CHECK(k.cmd("APPEND a") == "ERR no disk");
    CHECK(k.cmd("RECORDS") == "ERR no disk");
    CHECK(k.cmd("RECORD 1") == "ERR no disk");
    CHECK(k.cmd("PING") == "PONG");
    CHECK(k.unexpected_output().empty());
}

TEST_CASE("APPEND writes numbered records to --data-dir; RECORDS and RECORD read them back", "[kvstored][disk]") {
    DataDir dir;
    {
        Kvstored k({"--scratch-mib", "64", "--data-dir", dir.path.string()});
        CHECK(k.cmd("RECORDS") == "0 0");
        CHECK(k.cmd("RECORD 1") == "ERR no record 1");
        CHECK(k.cmd("APPEND first") == "OK 1");
        CHECK(k.cmd("append  second ") == "OK 2");
        CHECK(k.cmd("APPEND " + std::string(64, 'z')) == "OK 3");
        CHECK(k.cmd("RECORDS") == "3 3");
        CHECK(k.cmd("RECORD 1") == "1 first");
        CHECK(k.cmd("record 2") == "2 second");
        CHECK(k.cmd("RECORD 3") == "3 " + std::string(64, 'z'));
        CHECK(k.cmd("RECORD 4") == "ERR no record 4");
        const std::string append_usage = "ERR usage: APPEND token (1..64 printable bytes, no space)";
        for (const std::string& bad : std::vector<std::string>{"APPEND", "APPEND a b", "APPEND " + std::string(65, 'z')})
            CHECK(k.cmd(bad) == append_usage);
        for (const char* bad : {"RECORD", "RECORD 0", "RECORD x", "RECORD -1", "RECORD 1 2", "RECORD 99999999999999999999"})
            CHECK(k.cmd(bad) == "ERR usage: RECORD n (n >= 1)");
        CHECK(k.cmd("RECORDS 1") == "ERR usage: RECORDS");
        CHECK(k.unexpected_output().empty());
        // Each OK came after the line was in the file.
        CHECK(dir.records() == "1 first\n2 second\n3 " + std::string(64, 'z') + "\n");
    }
    // A record cut short by a crash was never acknowledged: it is no record, and the next
    // APPEND takes its place.
    std::ofstream(dir.path / "records", std::ios::app) << "4 cut-sh";
    Kvstored k({"--scratch-mib", "64", "--data-dir", dir.path.string()});
    CHECK(k.cmd("RECORDS") == "3 3");
    CHECK(k.cmd("APPEND fourth") == "OK 4");
    CHECK(k.cmd("RECORDS") == "4 4");
    CHECK(dir.records() == "1 first\n2 second\n3 " + std::string(64, 'z') + "\n4 fourth\n");
}

TEST_CASE("APPEND that cannot write answers ERR with the reason", "[kvstored][disk]") {
    DataDir dir;
    std::filesystem::create_directory(dir.path / "records");  // the file's place is taken
    Kvstored k({"--scratch-mib", "64", "--data-dir", dir.path.string()});
    CHECK(k.cmd("APPEND a") == "ERR append: Is a directory");
    CHECK(k.cmd("RECORDS").starts_with("ERR records: "));
    Kvstored missing({"--scratch-mib", "64", "--data-dir", (dir.path / "no-such-folder").string()});
    CHECK(missing.cmd("APPEND a") == "ERR append: No such file or directory");
}

TEST_CASE("DISKSYNC writes n synchronous blocks and reports their latency; DISKCHURN writes in the background",
          "[kvstored][disk]") {
    Kvstored none;
    CHECK(none.cmd("DISKSYNC 1") == "ERR no disk");
    CHECK(none.cmd("DISKCHURN 1") == "ERR no disk");

    DataDir dir;
    Kvstored k({"--scratch-mib", "64", "--data-dir", dir.path.string()});
    for (const char* bad : {"DISKSYNC", "DISKSYNC 0", "DISKSYNC x", "DISKSYNC 100001", "DISKSYNC 1 2", "DISKSYNC -1"})
        CHECK(k.cmd(bad) == "ERR usage: DISKSYNC n (1..100000)");
    for (const char* bad : {"DISKCHURN", "DISKCHURN 1001", "DISKCHURN y"})
        CHECK(k.cmd(bad) == "ERR usage: DISKCHURN n (0..1000)");

    std::string reply = k.cmd("DISKSYNC 1030");
    std::smatch m;
    REQUIRE(std::regex_match(reply, m, std::regex("OK 1030 ([0-9]+) ([0-9]+) ([0-9]+) ([0-9]+) (direct|buffered)")));
    uint64_t p50 = std::stoull(m[1]), p99 = std::stoull(m[2]), max = std::stoull(m[3]), total = std::stoull(m[4]);
    CHECK(p50 <= p99);
    CHECK(p99 <= max);
    CHECK(max <= total);
    // Writes wrap around the 4 MiB file: block 5 holds write 1029's number, block 6 write 6's.
    {
        std::ifstream in(dir.path / "bench", std::ios::binary);
        std::string bytes(std::istreambuf_iterator<char>(in), {});
        REQUIRE(bytes.size() == 4u << 20);
        auto word = [&](size_t block) {
            uint64_t v = 0;
            std::memcpy(&v, bytes.data() + block * 4096, sizeof v);
            return v;
        };
        CHECK(word(5) == 1029);
        CHECK(word(6) == 6);
        CHECK(word(1023) == 1023);
    }

    // DISKCHURN: the count of writes done grows while it runs, and stops growing after 0.
    auto done = [&](const std::string& command) {
        std::string r = k.cmd(command);
        REQUIRE(r.starts_with("OK "));
        return std::stoull(r.substr(3));
    };
    CHECK(done("DISKCHURN 3") == 0);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    uint64_t seen = 0;
    while (seen < 30 && std::chrono::steady_clock::now() < deadline)
        seen = done("DISKCHURN 3");
    CHECK(seen >= 30);
    uint64_t stopped = done("DISKCHURN 0");
    // A tick under way when it stopped may still finish its 3 writes.
    uint64_t later = 0;
    for (int i = 0; i < 20; ++i)
        later = done("DISKCHURN 0");
    CHECK(later <= stopped + 3);
    CHECK(std::filesystem::file_size(dir.path / "churn") == 4u << 20);
    CHECK(k.cmd("PING") == "PONG");
    CHECK(k.unexpected_output().empty());
}

TEST_CASE("kvstored fails with one line and status 1 when it cannot start", "[kvstored]") {
    auto run = [](std::vector<std::string> args) {
        int err[2];
        REQUIRE(pipe(err) == 0);
        pid_t pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            dup2(err[1], 2);
            std::vector<char*> argv;
            std::string path = KVSTORED_PATH;
            argv.push_back(path.data());
            for (auto& a : args)
                argv.push_back(a.data());
            argv.push_back(nullptr);
            execv(argv[0], argv.data());
            _exit(127);
        }
        close(err[1]);
        std::string text;
        char buf[512];
        ssize_t n;
        while ((n = read(err[0], buf, sizeof buf)) > 0)
            text.append(buf, static_cast<size_t>(n));
        close(err[0]);
        int status = 0;
        waitpid(pid, &status, 0);
        REQUIRE(WIFEXITED(status));
        return std::make_pair(WEXITSTATUS(status), text);
    };
    auto [missing_status, missing_text] = run({"--tty", "/nonexistent/tty"});
    CHECK(missing_status == 1);
    CHECK(missing_text == "kvstored: /nonexistent/tty: No such file or directory\n");
    auto [flag_status, flag_text] = run({"--verbose"});
    CHECK(flag_status == 1);
    CHECK(std::count(flag_text.begin(), flag_text.end(), '\n') == 1);
    auto [mib_status, mib_text] = run({"--scratch-mib", "0", "--tty", "/dev/null"});
    CHECK(mib_status == 1);
    CHECK(std::count(mib_text.begin(), mib_text.end(), '\n') == 1);
    for (const char* flag : {"--tcp-port", "--sink-port"}) {
        for (const char* bad : {"65536", "-1", "x", ""}) {
            auto [port_status, port_text] = run({flag, bad, "--tty", "/dev/null"});
            CHECK(port_status == 1);
            CHECK(port_text.rfind(std::string("kvstored: ") + flag + " wants a port number", 0) == 0);
            CHECK(std::count(port_text.begin(), port_text.end(), '\n') == 1);
        }
    }
}

TEST_CASE("kvstored serves two TCP clients and the console at once, on one engine",
          "[kvstored][tcp]") {
    TcpKvstored t;
    TcpClient a(t.port), b(t.port);

    // In turns: each INCR sees the one before, whoever sent it.
    for (int i = 0; i < 10; i++) {
        CHECK(t.k.cmd("INCR n") == std::to_string(3 * i + 1));
        CHECK(a.cmd("INCR n") == std::to_string(3 * i + 2));
        CHECK(b.cmd("incr n") == std::to_string(3 * i + 3));
    }
    CHECK(a.cmd("GET n") == "30");

    // All at once: 3 × 200 lines sent before any reply is read. Each source gets its own 200
    // replies, in its own order (increasing), and together they are 31..630, each once.
    constexpr int k_each = 200;
    std::string batch;
    for (int i = 0; i < k_each; i++)
        batch += i % 2 == 0 ? "INCR n\n" : "INCR n\r\n";
    t.k.send(batch);
    a.send(batch);
    b.send(batch);
    std::vector<uint64_t> all;
    auto collect = [&](auto& source) {
        uint64_t last = 0;
        for (int i = 0; i < k_each; i++) {
            uint64_t value = std::stoull(source.line());
            CHECK(value > last);
            last = value;
            all.push_back(value);
        }
    };
    collect(t.k);
    collect(a);
    collect(b);
    std::sort(all.begin(), all.end());
    std::vector<uint64_t> expected(3 * k_each);
    std::iota(expected.begin(), expected.end(), 31);
    CHECK(all == expected);

    // The protocol is the console's: the same replies to the same lines, byte for byte.
    const std::vector<std::string> script = {"PING", "SET s  x y ", "GET s", "nope", "",
                                             "\x7f", "SET k", "DEL s", "GET s", "HWRNG 0"};
    for (const auto& line : script) {
        INFO("line: " << line);
        CHECK(a.cmd(line) == t.k.cmd(line));
    }
    CHECK(t.k.unexpected_output().empty());
    CHECK(a.unexpected_output().empty());
    CHECK(b.unexpected_output().empty());
}

TEST_CASE("kvstored refuses a line too long on TCP as on the console", "[kvstored][tcp]") {
    TcpKvstored t;
    TcpClient a(t.port);
    CHECK(a.cmd("SET k " + std::string(506, 'v')) == "OK");  // 512 bytes: served
    CHECK(a.cmd("GET k") == std::string(506, 'v'));
    CHECK(a.cmd("SET k " + std::string(506, 'v') + "\r") == "OK");  // and its CR
    CHECK(a.cmd(std::string(513, 'X')) == "ERR line too long");
    CHECK(a.cmd(std::string(100000, 'X')) == "ERR line too long");
    CHECK(a.cmd(std::string(600, '\x01')) == "ERR line too long");
    CHECK(a.cmd(std::string(512, '\x01')) == "ERR binary data in line");
    CHECK(a.unexpected_output().empty());
    CHECK(a.cmd("PING") == "PONG");
    CHECK(t.k.cmd("PING") == "PONG");
}

TEST_CASE("a TCP client that never reads is dropped; the console and the others go on",
          "[kvstored][tcp]") {
    TcpKvstored t;
    TcpClient other(t.port);
    CHECK(other.cmd("SET big " + std::string(504, 'v')) == "OK");
    TcpClient hog(t.port, 4096);
    REQUIRE(fcntl(hog.fd(), F_SETFL, O_NONBLOCK) == 0);

    // The hog asks for 505-byte replies and never reads one: they pile up in its socket, then in
    // kvstored, until kvstored drops it. Meanwhile the console and the other client are served.
    std::string burst;
    for (int i = 0; i < 100; i++)
        burst += "GET big\n";
    size_t offset = 0;
    bool dropped = false;
    int round = 0;
    auto deadline = Clock::now() + 2 * k_reply_timeout;
    while (!dropped && Clock::now() < deadline) {
        ssize_t n = send(hog.fd(), burst.data() + offset, burst.size() - offset, MSG_NOSIGNAL);
        int err = errno;
        if (n > 0) {
            offset = (offset + static_cast<size_t>(n)) % burst.size();
        } else {
            INFO("send: " << strerror(err));
            REQUIRE(n < 0);
            REQUIRE((err == EAGAIN || err == EWOULDBLOCK || err == EPIPE || err == ECONNRESET));
            dropped = err == EPIPE || err == ECONNRESET;
        }
        round++;
        CHECK(other.cmd("INCR served") == std::to_string(round));
        CHECK(t.k.cmd("INCR console") == std::to_string(round));
    }
    CHECK(dropped);
    CHECK(other.cmd("GET served") == std::to_string(round));
    CHECK(t.k.cmd("PING") == "PONG");
    CHECK(t.k.unexpected_output().empty());

    SECTION("its slot is free again") {
        TcpClient again(t.port);
        CHECK(again.cmd("GET console") == std::to_string(round));
    }
}

TEST_CASE("a TCP client closing mid-line leaves no trace; lines of different sources never mix",
          "[kvstored][tcp]") {
    TcpKvstored t;
    {
        TcpClient gone(t.port);
        gone.send("SET gone 1");  // no '\n': never a whole line
    }
    TcpClient a(t.port);
    // Each source's partial line is its own: the console's half line and a TCP client's whole
    // ones in between make two commands, not one.
    t.k.send("SET mixed ");
    CHECK(a.cmd("SET other 2") == "OK");
    a.send("GET ");
    CHECK(t.k.cmd("7") == "OK");
    CHECK(a.cmd("mixed") == "7");
    CHECK(a.cmd("GET other") == "2");
    CHECK(a.cmd("GET gone") == "NIL");
    CHECK(t.k.cmd("INFO").find(" keys=2 ") != std::string::npos);
    CHECK(t.k.unexpected_output().empty());
    CHECK(a.unexpected_output().empty());
}

TEST_CASE("POWEROFF and REBOOT over TCP end kvstored as on the console", "[kvstored][tcp]") {
    auto [command, expected_status] =
        GENERATE(std::make_pair("POWEROFF", 0), std::make_pair("REBOOT", 3));
    TcpKvstored t;
    TcpClient a(t.port), b(t.port);
    CHECK(a.cmd("SET a b") == "OK");
    CHECK(b.cmd(std::string(command) + " now") == std::string("ERR usage: ") + command);
    CHECK(b.cmd("GET a") == "b");  // still serving
    CHECK(a.cmd(command) == "OK");
    CHECK(a.closed_by_peer());
    int status = t.k.wait_exit();
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == expected_status);
    CHECK(t.k.unexpected_output(50ms).empty());
    CHECK(b.unexpected_output(50ms).empty());
}

TEST_CASE("a TCP port kvstored cannot bind is one console line; the console goes on",
          "[kvstored][tcp]") {
    // Someone else listens on the port, on every address as kvstored would.
    uint16_t port = colod::test::free_port();
    colod::base::Fd taken(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(taken.valid());
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_ANY);
    address.sin_port = htons(port);
    REQUIRE(bind(taken.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    REQUIRE(listen(taken.get(), 1) == 0);

    Kvstored k({"--scratch-mib", "64", "--tcp-port", std::to_string(port)});
    CHECK(k.line() ==
          "kvstored: tcp: port " + std::to_string(port) + ": bind: Address already in use");
    CHECK(k.cmd("PING") == "PONG");
    CHECK(k.cmd("INCR n") == "1");
    CHECK(k.unexpected_output().empty());
}

TEST_CASE("kvstored's bulk sink reads each connection to its end and answers with the byte count", "[tcp][sink]") {
    const uint16_t port = colod::test::free_port();
    Kvstored k({"--scratch-mib", "64", "--sink-port", std::to_string(port)});
    REQUIRE(k.cmd("PING") == "PONG");  // the sink listens before the console is served
    for (size_t size : {size_t{0}, size_t{1}, size_t{3} << 20}) {
        TcpClient client(port);
        client.send(std::string(size, 'x'));
        REQUIRE(shutdown(client.fd(), SHUT_WR) == 0);
        CHECK(client.line() == std::to_string(size));
        CHECK(client.closed_by_peer());
    }
    // The engine is not involved: the console answers throughout.
    CHECK(k.cmd("INCR n") == "1");
}
