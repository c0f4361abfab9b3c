// SPDX-License-Identifier: GPL-2.0-or-later
// The machine running real guests (the embedded kvstore and tiny purpose-built ones) on the
// test backend: console protocol, dirty log, pause/resume, stop conditions, snapshots.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <filesystem>
#include <set>
#include <thread>

#include "core/snapshot.h"
#include "core/state_sections.h"
#include "kvm/system.h"
#include "tests/support/kvstore_guest.h"
#include "tests/support/process.h"
#include "tests/support/tiny_elf.h"

using namespace colod;
using namespace colod::test;
using std::chrono::steady_clock;

namespace {

Info info(LineClient& client) {
    auto line = client.command("INFO");
    REQUIRE(line);
    return parse_info(*line);
}

core::StopInfo run_tiny(std::vector<uint8_t> code) {
    core::RuntimeOptions options;
    options.machine.memory_bytes = 16 << 20;
    options.machine.backend = test_backend();
    options.halt_check = std::chrono::milliseconds(20);
    auto runtime = core::GuestRuntime::create(options);
    REQUIRE(runtime);
    auto image = make_elf(std::move(code));
    REQUIRE((*runtime)->boot(image, ""));
    REQUIRE((*runtime)->start());
    return (*runtime)->wait();
}

std::string temp_path(const std::string& name) {
    return (std::filesystem::temp_directory_path() / fmt::format("colod-test-{}-{}", ::getpid(), name)).string();
}

}  // namespace

TEST_CASE("kvstore answers its console protocol, including bad input", "[kvm]") {
    auto guest = KvstoreGuest::boot();
    auto c = guest.client();
    CHECK(c.command("PING") == "PONG");
    CHECK(c.command("SET colour blue") == "OK");
    CHECK(c.command("GET colour") == "blue");
    CHECK(c.command("SET colour dark red") == "OK");
    CHECK(c.command("GET colour") == "dark red");
    CHECK(c.command("GET nothing-here") == "NIL");
    CHECK(c.command("DEL colour") == "OK");
    CHECK(c.command("GET colour") == "NIL");
    for (int i = 1; i <= 5; ++i)
        CHECK(c.command("INCR hits") == std::to_string(i));
    CHECK(c.command("SET word abc") == "OK");
    CHECK_THAT(*c.command("INCR word"), Catch::StartsWith("ERR"));
    CHECK(c.command("DIRTY 64") == "OK 64");
    CHECK(c.command("CHURN 8") == "OK");
    CHECK(c.command("CHURN 0") == "OK");
    Info before = info(c);
    CHECK(before.keys == 2);
    CHECK(eventually([&] { return info(c).ticks > before.ticks; }));
    CHECK_THAT(*c.command("FROBNICATE"), Catch::StartsWith("ERR"));
    CHECK_THAT(*c.command(""), Catch::StartsWith("ERR"));
    CHECK(c.command(std::string(600, 'X')) == "ERR line too long");
    CHECK(c.command(std::string(10000, 'Y')) == "ERR line too long");
    CHECK(c.command("PING") == "PONG");  // exactly one reply per over-long line
    c.send(std::string("\x01\x02\x03\x04\x05\x06\x07\x08\x09\xff\xfe\n", 12));
    CHECK_THAT(*c.line(), Catch::StartsWith("ERR"));
    CHECK(c.command("DIRTY 999999999999") != "OK 999999999999");
    {
        auto leaver = guest.client();
        leaver.send("SET half");
    }
    CHECK_THAT(*c.command(""), Catch::StartsWith("ERR"));
    CHECK(c.command("PING") == "PONG");
    // Every client sees the output.
    auto other = guest.client();
    CHECK(c.command("PING") == "PONG");
    CHECK(other.line() == "PONG");
}

TEST_CASE("dirty log reports exactly the scratch pages the guest wrote", "[kvm]") {
    auto guest = KvstoreGuest::boot();
    auto c = guest.client();
    REQUIRE(c.command("PING") == "PONG");
    core::Machine& machine = guest.machine();
    core::GuestMemory& memory = machine.memory();
    uint64_t touches_before = info(c).pages;

    core::DirtyBitmap bits(memory.page_count());
    {
        auto paused = machine.pause();
        REQUIRE(memory.harvest_dirty(machine.vm(), bits));  // everything so far
        bits.clear();
        REQUIRE(memory.harvest_dirty(machine.vm(), bits));
        CHECK(bits.count() == 0);  // nothing runs while paused
    }
    REQUIRE(c.command("DIRTY 100") == "OK 100");
    bits.clear();
    {
        auto paused = machine.pause();
        REQUIRE(memory.harvest_dirty(machine.vm(), bits));
    }
    const uint64_t first_scratch = guest.image_end / core::k_page_size;
    const uint64_t scratch = guest.scratch_pages();
    std::set<uint64_t> expected;
    for (uint64_t n = touches_before; n < touches_before + 100; ++n)
        expected.insert(first_scratch + n % scratch);
    std::set<uint64_t> harvested_scratch;
    bits.for_each([&](uint64_t page) {
        if (page >= first_scratch)
            harvested_scratch.insert(page);
    });
    CHECK(harvested_scratch == expected);
    // The rest is the guest's own image (stack, counters, key table, ring buffer): a handful.
    CHECK(bits.count() - harvested_scratch.size() < 64);
}

TEST_CASE("1000 pause/resume cycles under CHURN lose no tick and corrupt no page", "[kvm]") {
    auto guest = KvstoreGuest::boot();
    auto c = guest.client();
    REQUIRE(c.command("CHURN 20") == "OK");
    Info start = info(c);
    auto t0 = steady_clock::now();
    std::vector<double> pause_us;
    for (int i = 0; i < 1000; ++i) {
        auto begin = steady_clock::now();
        {
            auto paused = guest.machine().pause();
            REQUIRE(paused.paused());
            pause_us.push_back(std::chrono::duration<double, std::micro>(steady_clock::now() - begin).count());
        }
        // Let the guest run between pauses, as it does between checkpoints (pacing, not
        // synchronisation: nothing is awaited here).
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    Info end = info(c);
    double seconds = std::chrono::duration<double>(steady_clock::now() - t0).count();
    double expected_ticks = seconds * 100.0;
    double got = static_cast<double>(end.ticks - start.ticks);
    INFO("ticks " << got << " over " << seconds << " s (expected about " << expected_ticks << ")");
    CHECK(got >= expected_ticks * 0.9 - 3);
    CHECK(got <= expected_ticks * 1.1 + 3);
    CHECK(end.pages > start.pages);
    REQUIRE(c.command("CHURN 0") == "OK");
    uint64_t touches = info(c).pages;
    auto paused = guest.machine().pause();
    CHECK(guest.scratch_mismatches(touches) == 0);
}

TEST_CASE("a pause taken on one thread ends on another, and the next pause waits for it", "[kvm]") {
    // A checkpoint's pause is taken on the replication thread and may be ended by the control
    // thread (a held checkpoint released by an operator): the guard crosses threads.
    auto guest = KvstoreGuest::boot();
    auto c = guest.client();
    uint64_t ticks_before = info(c).ticks;
    std::optional<core::Machine::PauseGuard> first;
    std::thread taker([&] { first.emplace(guest.machine().pause()); });
    taker.join();
    REQUIRE(first->paused());
    std::atomic<bool> second_paused = false;
    std::thread second([&] {
        auto paused = guest.machine().pause();  // returns once `first` has been released
        second_paused = paused.paused();
    });
    std::thread releaser([&] { first.reset(); });
    releaser.join();
    second.join();
    CHECK(second_paused);
    // Nothing is left paused: the guest keeps counting ticks.
    CHECK(eventually([&] { return info(c).ticks > ticks_before + 5; }, std::chrono::seconds(10)));
}

namespace {

// A device with a worker thread of its own that writes a counter into a guest page, as a
// network or disk backend writes received data: the board must stop it inside every pause.
class WorkerDevice final : public core::Device, public core::Pausable {
public:
    WorkerDevice(core::GuestMemory& memory, uint64_t page) : m_memory(memory), m_page(page) {
        m_thread = std::thread([this] { work(); });
    }
    ~WorkerDevice() override {
        {
            std::lock_guard lock(m_mutex);
            m_stop = true;
        }
        m_changed.notify_all();
        m_thread.join();
    }
    std::string_view name() const override { return "worker"; }
    uint16_t state_version() const override { return 1; }
    core::DeviceState save_state() const override { return {"worker", 1, {}}; }
    base::Result<void> check_state(const core::DeviceState&) const override { return base::ok(); }
    base::Result<void> load_state(const core::DeviceState&) override { return base::ok(); }
    void quiesce() override {
        std::unique_lock lock(m_mutex);
        m_quiesced = true;
        m_changed.wait(lock, [&] { return !m_busy; });
        ++quiesces;
    }
    void resume() override {
        {
            std::lock_guard lock(m_mutex);
            m_quiesced = false;
        }
        m_changed.notify_all();
    }
    std::atomic<uint64_t> quiesces{0};
    std::atomic<uint64_t> writes{0};

private:
    void work() {
        uint64_t value = 0;
        for (;;) {
            {
                std::unique_lock lock(m_mutex);
                m_changed.wait(lock, [&] { return m_stop || !m_quiesced; });
                if (m_stop)
                    return;
                m_busy = true;
            }
            ++value;
            std::memcpy(m_memory.page(m_page), &value, sizeof value);
            ++writes;
            {
                std::lock_guard lock(m_mutex);
                m_busy = false;
            }
            m_changed.notify_all();
            std::this_thread::yield();
        }
    }
    core::GuestMemory& m_memory;
    uint64_t m_page;
    std::mutex m_mutex;
    std::condition_variable m_changed;
    bool m_stop = false, m_quiesced = false, m_busy = false;
    std::thread m_thread;
};

}  // namespace

TEST_CASE("the board hands out each place once and takes devices only before the machine starts", "[kvm]") {
    auto guest = KvstoreGuest::boot(64ull << 20, false);
    core::Board& board = guest.machine().board();
    // COM1's line is the standard board's; another device cannot have it.
    auto taken = board.claim_irq(4);
    REQUIRE_FALSE(taken);
    CHECK_THAT(taken.error().message(), Catch::Contains("taken"));
    CHECK_FALSE(board.claim_irq(24));
    auto a = board.claim_irq();
    auto b = board.claim_irq();
    REQUIRE(a);
    REQUIRE(b);
    CHECK(*a != *b);
    CHECK(*a != 4);
    auto w1 = board.claim_mmio(0x200);
    auto w2 = board.claim_mmio(0x1000);
    REQUIRE(w1);
    REQUIRE(w2);
    CHECK(*w2 >= *w1 + 0x1000);  // 4 KiB windows, never shared
    CHECK(*w1 >= 0xc0000000ull);
    CHECK(*w2 + 0x1000 <= 0xfec00000ull);
    auto p1 = board.claim_ports(8);
    auto p2 = board.claim_ports(8);
    REQUIRE(p1);
    REQUIRE(p2);
    CHECK(*p2 == *p1 + 8);
    // A second device on COM1's ports is refused, and so is a second device of one name.
    auto clash = board.add(std::make_unique<WorkerDevice>(guest.machine().memory(), 1000),
                           {{{0x3f8, 8}}, {}});
    CHECK_FALSE(clash);
    auto worker = board.add(std::make_unique<WorkerDevice>(guest.machine().memory(), 1000), {{{*p1, 8}}, {}});
    REQUIRE(worker);
    CHECK(guest.machine().devices().size() == 3);
    CHECK(guest.machine().devices().back()->name() == "worker");
    REQUIRE(guest.runtime->boot(kvstore_image(), ""));
    REQUIRE(guest.runtime->start());
    auto late = board.add(std::make_unique<WorkerDevice>(guest.machine().memory(), 1001), {});
    REQUIRE_FALSE(late);
    CHECK_THAT(late.error().message(), Catch::Contains("started"));
}

TEST_CASE("a device's own threads are quiesced while the machine is paused", "[kvm]") {
    auto guest = KvstoreGuest::boot(64ull << 20, false);
    const uint64_t page = guest.machine().memory().page_count() - 1;  // above the guest's image
    auto added = guest.machine().board().add(std::make_unique<WorkerDevice>(guest.machine().memory(), page), {});
    REQUIRE(added);
    auto* worker = dynamic_cast<WorkerDevice*>(*added);
    REQUIRE(worker);
    REQUIRE(guest.runtime->boot(kvstore_image(), ""));
    REQUIRE(guest.runtime->start());
    auto word = [&] {
        uint64_t value = 0;
        std::memcpy(&value, guest.machine().memory().page(page), sizeof value);
        return value;
    };
    for (int round = 0; round < 20; ++round) {
        uint64_t before = worker->writes.load();
        REQUIRE(eventually([&] { return worker->writes.load() > before + 10; }));  // it works while running
        auto paused = guest.machine().pause();
        REQUIRE(paused.paused());
        uint64_t at_pause = word();
        uint64_t writes = worker->writes.load();
        // While paused, nothing of the device moves: not for a yield, not for many.
        for (int i = 0; i < 1000; ++i)
            std::this_thread::yield();
        CHECK(word() == at_pause);
        CHECK(worker->writes.load() == writes);
    }
    CHECK(worker->quiesces.load() >= 20);
}

TEST_CASE("a guest's stop is recognised and named", "[kvm]") {
    SECTION("power-off with an exit code") {
        auto info = run_tiny({0xba, 0x05, 0x05, 0x00, 0x00, 0xb8, 0x07, 0x00, 0x00, 0x00, 0xef, 0xf4});
        CHECK(info.reason == core::StopReason::PowerOff);
        CHECK(info.exit_code == 7);
    }
    SECTION("triple fault") {
        auto info = run_tiny({0x0f, 0x0b});  // ud2 with no IDT
        CHECK(info.reason == core::StopReason::TripleFault);
    }
    SECTION("halt with interrupts off") {
        auto info = run_tiny({0xfa, 0xf4});  // cli; hlt
        CHECK(info.reason == core::StopReason::HaltedNoInterrupts);
    }
    SECTION("garbage written to every low port, then a clean power-off") {
        auto info = run_tiny({0x31, 0xc9, 0x89, 0xca, 0xb0, 0xa5, 0xee, 0xff, 0xc1, 0x81, 0xf9, 0x00, 0x05, 0x00,
                              0x00, 0x75, 0xf1, 0xba, 0x05, 0x05, 0x00, 0x00, 0xb8, 0x00, 0x00, 0x00, 0x00, 0xef,
                              0xf4});
        CHECK(info.reason == core::StopReason::PowerOff);
        CHECK(info.exit_code == 0);
    }
}

TEST_CASE("a snapshot restores into a fresh machine that carries on", "[kvm]") {
    std::string path = temp_path("snapshot");
    Info saved;
    {
        auto a = KvstoreGuest::boot();
        auto c = a.client();
        REQUIRE(c.command("SET colour blue") == "OK");
        for (int i = 0; i < 3; ++i)
            REQUIRE(c.command("INCR counter"));
        REQUIRE(c.command("DIRTY 50") == "OK 50");
        saved = info(c);
        auto paused = a.machine().pause();
        auto identity = core::machine_identity(a.machine(), "test", kvstore_image());
        REQUIRE(core::save_snapshot(a.machine(), identity, path));
    }
    auto b = KvstoreGuest::boot(64ull << 20, false);
    auto identity = core::machine_identity(b.machine(), "test", kvstore_image());
    REQUIRE(core::load_snapshot(b.machine(), identity, path));
    CHECK(b.scratch_mismatches(saved.pages) == 0);
    REQUIRE(b.runtime->open_console());
    REQUIRE(b.runtime->start());
    auto c = b.client();
    CHECK(c.command("GET colour") == "blue");
    CHECK(c.command("INCR counter") == "4");
    Info after = info(c);
    CHECK(after.keys == 2);
    CHECK(after.pages == saved.pages);
    CHECK(after.ticks >= saved.ticks);
    CHECK(eventually([&] { return info(c).ticks > after.ticks; }));

    // A snapshot of another machine shape is refused before anything changes.
    auto small = KvstoreGuest::boot(32ull << 20, false);
    auto small_identity = core::machine_identity(small.machine(), "test", kvstore_image());
    auto refused = core::load_snapshot(small.machine(), small_identity, path);
    REQUIRE_FALSE(refused);
    CHECK_THAT(refused.error().message(), Catch::Contains("does not fit"));
    std::filesystem::remove(path);
}

TEST_CASE("opening a hypervisor that is not there names what is missing", "[kvm]") {
    auto null_backend = kvm::make_host_backend("/dev/null");
    auto system = kvm::System::open(*null_backend);
    REQUIRE_FALSE(system);
    CHECK_THAT(system.error().message(), Catch::Contains("KVM_GET_API_VERSION"));

    auto missing_backend = kvm::make_host_backend("/nonexistent/kvm");
    auto missing = kvm::System::open(*missing_backend);
    REQUIRE_FALSE(missing);
    CHECK_THAT(missing.error().message(), Catch::Contains("this host has no KVM"));
}

TEST_CASE("state saved in one process restores in others, twice, and keeps counting", "[kvm]") {
    std::string path = temp_path("cross-process");
    Info saved;
    {
        auto a = Process::spawn({SNAPSHOT_TOOL, test_backend(), "save", path});
        REQUIRE(a);
        auto port = a->line_starting("PORT ");
        REQUIRE(port);
        auto c = LineClient::connect("127.0.0.1", static_cast<uint16_t>(std::stoi(port->substr(5))));
        REQUIRE(c);
        REQUIRE(c->command("SET city Lisbon") == "OK");
        for (int i = 1; i <= 7; ++i)
            REQUIRE(c->command("INCR n") == std::to_string(i));
        REQUIRE(c->command("DIRTY 300") == "OK 300");
        saved = parse_info(*c->command("INFO"));
        REQUIRE(a->write("save\n"));
        CHECK(a->line() == "SAVED");
        CHECK(a->exit_code() == 0);
    }
    for (int round = 0; round < 2; ++round) {
        auto b = Process::spawn({SNAPSHOT_TOOL, test_backend(), "restore", path});
        REQUIRE(b);
        auto port = b->line_starting("PORT ");
        REQUIRE(port);
        auto c = LineClient::connect("127.0.0.1", static_cast<uint16_t>(std::stoi(port->substr(5))));
        REQUIRE(c);
        CHECK(c->command("GET city") == "Lisbon");
        CHECK(c->command("INCR n") == "8");
        Info now = parse_info(*c->command("INFO"));
        CHECK(now.keys == 2);
        CHECK(now.pages == saved.pages);
        CHECK(now.ticks >= saved.ticks);
        CHECK(eventually([&] { return parse_info(*c->command("INFO")).ticks > now.ticks; }));
    }
    std::filesystem::remove(path);
}
