// SPDX-License-Identifier: GPL-2.0-or-later
// virtio-mmio + virtio-rng driven by a fake driver that does what Linux's virtio_mmio and
// virtio_ring do, in guest memory without KVM.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "core/virtio/mmio.h"
#include "core/virtio/rng.h"
#include "tests/support/virtio_driver.h"

using namespace colod;
using namespace colod::core;
using namespace colod::core::virtio;

namespace {

using colod::test::k_base;
using colod::test::k_ram;

// Register offsets, as the driver knows them.
enum Reg : uint64_t {
    MAGIC = 0x000, VERSION = 0x004, DEVICE_ID = 0x008, VENDOR_ID = 0x00c, DEV_FEATURES = 0x010, DEV_FEATURES_SEL = 0x014,
    DRV_FEATURES = 0x020, DRV_FEATURES_SEL = 0x024, QUEUE_SEL = 0x030, QUEUE_NUM_MAX = 0x034, QUEUE_NUM = 0x038,
    QUEUE_READY = 0x044, QUEUE_NOTIFY = 0x050, INT_STATUS = 0x060, INT_ACK = 0x064, STATUS = 0x070,
    DESC_LO = 0x080, DESC_HI = 0x084, DRIVER_LO = 0x090, DRIVER_HI = 0x094, DEVICE_LO = 0x0a0, DEVICE_HI = 0x0a4,
    SHM_LEN_LO = 0x0b0, CONFIG_GEN = 0x0fc, CONFIG = 0x100,
};

// Deterministic bytes (byte i of the stream is a function of i), handed out within a budget.
struct ScriptedSource final : EntropySource {
    uint64_t next = 0;
    size_t budget = SIZE_MAX;
    size_t fill(std::span<std::byte> out) override {
        size_t n = std::min(out.size(), budget);
        for (size_t i = 0; i < n; ++i)
            out[i] = stream_byte(next++);
        budget -= n;
        return n;
    }
    static std::byte stream_byte(uint64_t i) { return std::byte(static_cast<uint8_t>((i * 131 + 17) ^ (i >> 8))); }
};

// The rig of tests/support/virtio_driver.h with a virtio-rng behind the transport, fed by a
// ScriptedSource unless a test brings its own, and what it shows its observer.
struct Rig : colod::test::VirtioRig {
    std::vector<std::byte> observed;
    bool observed_gap = false;  // an observed run did not start where the last one ended
    std::function<void(uint64_t, std::span<const std::byte>)> forward;  // also shown each run
    ScriptedSource* source = nullptr;
    RngDevice* rng = nullptr;

    // A device fed by `custom` rather than a ScriptedSource (then `source` is null).
    explicit Rig(std::unique_ptr<EntropySource> custom = nullptr) { make_transport(std::move(custom)); }
    void make_transport(std::unique_ptr<EntropySource> custom = nullptr) {
        std::unique_ptr<EntropySource> src;
        if (custom) {
            src = std::move(custom);
        } else {
            auto scripted = std::make_unique<ScriptedSource>();
            source = scripted.get();
            src = std::move(scripted);
        }
        auto device = std::make_unique<RngDevice>(std::move(src), [this](uint64_t offset, std::span<const std::byte> bytes) {
            if (offset != observed.size())
                observed_gap = true;
            observed.insert(observed.end(), bytes.begin(), bytes.end());
            if (forward)
                forward(offset, bytes);
        });
        rng = device.get();
        attach(std::move(device));
    }
};

// The fake driver: the steps of Linux's virtio_mmio probe and virtio_ring's split queue.
struct Driver {
    Rig& rig;
    uint16_t size = 16;
    uint64_t desc = 0x10000, avail = 0x11000, used = 0x12000;
    uint16_t avail_idx = 0;
    uint16_t last_used = 0;
    uint64_t features = 0;

    explicit Driver(Rig& r) : rig(r) {}

    // Returns the status read back after FEATURES_OK (Linux gives up unless it is set).
    uint32_t negotiate(uint64_t accept) {
        colod::test::VirtioDriver driver(rig);
        uint32_t status = driver.negotiate(accept);
        features = driver.features;
        return status;
    }
    void setup_queue() {
        // The driver zeroes its rings (they come from fresh DMA memory in Linux).
        std::memset(rig.at(desc), 0, 16 * size);
        std::memset(rig.at(avail), 0, 6 + 2 * size);
        std::memset(rig.at(used), 0, 6 + 8 * size);
        rig.write(QUEUE_SEL, 0);
        REQUIRE(rig.read(QUEUE_READY) == 0);
        REQUIRE(rig.read(QUEUE_NUM_MAX) >= size);
        rig.write(QUEUE_NUM, size);
        rig.write(DESC_LO, static_cast<uint32_t>(desc));
        rig.write(DESC_HI, static_cast<uint32_t>(desc >> 32));
        rig.write(DRIVER_LO, static_cast<uint32_t>(avail));
        rig.write(DRIVER_HI, static_cast<uint32_t>(avail >> 32));
        rig.write(DEVICE_LO, static_cast<uint32_t>(used));
        rig.write(DEVICE_HI, static_cast<uint32_t>(used >> 32));
        rig.write(QUEUE_READY, 1);
        REQUIRE(rig.read(QUEUE_READY) == 1);
        avail_idx = 0;
        last_used = 0;
    }
    void start(uint64_t accept = ~0ull) {
        REQUIRE(rig.read(MAGIC) == 0x74726976);
        REQUIRE(rig.read(VERSION) == 2);
        REQUIRE(rig.read(DEVICE_ID) == 4);
        REQUIRE((negotiate(accept) & k_status_features_ok) != 0);
        setup_queue();
        rig.write(STATUS, k_status_acknowledge | k_status_driver | k_status_features_ok | k_status_driver_ok);
        REQUIRE((rig.read(STATUS) & k_status_driver_ok) != 0);
    }

    void set_desc(uint64_t table, uint16_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
        uint64_t d = table + 16ull * index;
        rig.poke(d, addr);
        rig.poke(d + 8, len);
        rig.poke(d + 12, flags);
        rig.poke(d + 14, next);
    }
    void set_desc(uint16_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0) {
        set_desc(desc, index, addr, len, flags, next);
    }
    // Makes chain `head` available (ring entry, then a release store of avail->idx).
    void post(uint16_t head) {
        rig.poke<uint16_t>(avail + 4 + 2 * (avail_idx % size), head);
        ++avail_idx;
        __atomic_store_n(reinterpret_cast<uint16_t*>(rig.at(avail + 2)), avail_idx, __ATOMIC_RELEASE);
    }
    void kick() { rig.write(QUEUE_NOTIFY, 0); }
    // virtqueue_get_buf(): the next used element, if any; with EVENT_IDX asks for an interrupt
    // at the next one (virtqueue_enable_cb).
    // One device-writable buffer of `len` bytes at `gpa` in descriptor `head`, posted and
    // kicked; the used entry it came back in, if it did.
    std::optional<std::pair<uint32_t, uint32_t>> request(uint16_t head, uint64_t gpa, uint32_t len) {
        set_desc(head, gpa, len, k_desc_f_write);
        post(head);
        kick();
        return get_used();
    }
    std::optional<std::pair<uint32_t, uint32_t>> get_used() {
        uint16_t idx = __atomic_load_n(reinterpret_cast<uint16_t*>(rig.at(used + 2)), __ATOMIC_ACQUIRE);
        if (idx == last_used)
            return std::nullopt;
        uint64_t elem = used + 4 + 8ull * (last_used % size);
        ++last_used;
        if (features & k_feature_event_idx)  // the device reads it concurrently
            __atomic_store_n(reinterpret_cast<uint16_t*>(rig.at(avail + 4 + 2ull * size)), last_used, __ATOMIC_RELAXED);
        return std::pair{rig.peek<uint32_t>(elem), rig.peek<uint32_t>(elem + 4)};
    }
    // vm_interrupt(): read InterruptStatus, acknowledge all of it.
    uint32_t interrupt() {
        uint32_t status = rig.read(INT_STATUS);
        rig.write(INT_ACK, status);
        return status;
    }
};

std::vector<std::byte> stream(uint64_t from, size_t count) {
    std::vector<std::byte> out(count);
    for (size_t i = 0; i < count; ++i)
        out[i] = ScriptedSource::stream_byte(from + i);
    return out;
}

std::vector<std::byte> bytes_at(Rig& rig, uint64_t gpa, size_t len) { return {rig.at(gpa), rig.at(gpa) + len}; }

// Every byte of RAM outside `allowed` ranges (gpa, len) is as in `before`.
bool unchanged_outside(Rig& rig, const std::vector<std::byte>& before, std::vector<std::pair<uint64_t, uint64_t>> allowed) {
    auto now = rig.memory.all();
    for (size_t i = 0; i < now.size(); ++i) {
        if (now[i] == before[i])
            continue;
        bool ok = false;
        for (auto [first, len] : allowed)
            ok = ok || (i >= first && i < first + len);
        if (!ok)
            return false;
    }
    return true;
}

std::vector<std::byte> snapshot(Rig& rig) { return {rig.memory.all().begin(), rig.memory.all().end()}; }

}  // namespace

TEST_CASE("virtio-mmio identifies itself and negotiates features like Linux") {
    Rig rig;
    CHECK(rig.transport->name() == "virtio-rng@d0000000");
    CHECK(rig.read(MAGIC) == 0x74726976);
    CHECK(rig.read(VERSION) == 2);
    CHECK(rig.read(DEVICE_ID) == 4);
    CHECK(rig.read(VENDOR_ID) == MmioTransport::k_vendor_id);
    CHECK(rig.read(SHM_LEN_LO) == 0xffffffff);  // no shared memory regions
    Driver driver(rig);
    uint32_t status = driver.negotiate(~0ull);
    CHECK(status == (k_status_acknowledge | k_status_driver | k_status_features_ok));
    CHECK(driver.features == (k_feature_version_1 | k_feature_indirect_desc | k_feature_event_idx));
    driver.setup_queue();
    rig.write(QUEUE_SEL, 1);
    CHECK(rig.read(QUEUE_NUM_MAX) == 0);  // only one queue
    CHECK(rig.read(QUEUE_READY) == 0);
    rig.write(QUEUE_SEL, 0);
    CHECK(rig.read(QUEUE_NUM_MAX) == RngDevice::k_queue_size);
    rig.write(STATUS, status | k_status_driver_ok);
    CHECK(rig.transport->status() == (status | k_status_driver_ok));
    CHECK(rig.read(CONFIG) == 0);  // no configuration space

    SECTION("non-32-bit register accesses are ignored") {
        uint16_t half = 0xffff;
        rig.transport->mmio_read(k_base + MAGIC, std::as_writable_bytes(std::span(&half, 1)));
        CHECK(half == 0);
        uint8_t zero = 0;
        rig.transport->mmio_write(k_base + STATUS, std::as_bytes(std::span(&zero, 1)));  // not a reset
        CHECK((rig.transport->status() & k_status_driver_ok) != 0);
        rig.write(STATUS + 2, 0);  // misaligned
        CHECK((rig.transport->status() & k_status_driver_ok) != 0);
    }
    SECTION("writing 0 to Status resets the device") {
        rig.write(STATUS, 0);
        CHECK(rig.read(STATUS) == 0);
        CHECK(rig.read(QUEUE_READY) == 0);
        CHECK(rig.transport->driver_features() == 0);
    }
    SECTION("queue registers do not change while the queue is ready") {
        rig.write(QUEUE_NUM, 2);
        rig.write(DESC_LO, 0x5000);
        auto state = rig.transport->queue(0).state();
        CHECK(state.size == driver.size);
        CHECK(state.desc_addr == driver.desc);
    }
}

TEST_CASE("FEATURES_OK is refused for features not offered or without VERSION_1") {
    Rig rig;
    Driver driver(rig);
    SECTION("a feature the device did not offer") {
        rig.write(STATUS, 0);
        rig.write(STATUS, k_status_acknowledge | k_status_driver);
        rig.write(DRV_FEATURES_SEL, 1);
        rig.write(DRV_FEATURES, 1);  // VERSION_1
        rig.write(DRV_FEATURES_SEL, 0);
        rig.write(DRV_FEATURES, 1u << 5);  // a device feature rng does not have
        rig.write(STATUS, k_status_acknowledge | k_status_driver | k_status_features_ok);
        CHECK((rig.read(STATUS) & k_status_features_ok) == 0);
        // DRIVER_OK without FEATURES_OK is not accepted either.
        rig.write(STATUS, k_status_acknowledge | k_status_driver | k_status_driver_ok);
        CHECK((rig.read(STATUS) & k_status_driver_ok) == 0);
    }
    SECTION("a legacy driver (no VERSION_1)") {
        CHECK((driver.negotiate(~k_feature_version_1) & k_status_features_ok) == 0);
    }
    SECTION("a subset that includes VERSION_1 is fine; features freeze at FEATURES_OK") {
        CHECK((driver.negotiate(k_feature_version_1) & k_status_features_ok) != 0);
        rig.write(DRV_FEATURES_SEL, 0);
        rig.write(DRV_FEATURES, 1u << 28);
        CHECK(rig.transport->driver_features() == k_feature_version_1);
    }
}

TEST_CASE("virtio-rng fills the writable buffers and returns their lengths") {
    Rig rig;
    Driver driver(rig);
    driver.start();
    // Chain 0: one 64-byte buffer (what Linux's virtio-rng posts).
    driver.set_desc(0, 0x20000, 64, k_desc_f_write);
    // Chain 1: three writable buffers, 16 + 100 + 7 bytes, scattered.
    driver.set_desc(1, 0x21000, 16, k_desc_f_write | k_desc_f_next, 2);
    driver.set_desc(2, 0x22000, 100, k_desc_f_write | k_desc_f_next, 3);
    driver.set_desc(3, 0x23000, 7, k_desc_f_write);
    driver.post(0);
    driver.post(1);
    auto before = snapshot(rig);
    driver.kick();

    auto first = driver.get_used();
    auto second = driver.get_used();
    REQUIRE(first);
    REQUIRE(second);
    CHECK(*first == std::pair<uint32_t, uint32_t>{0, 64});
    CHECK(*second == std::pair<uint32_t, uint32_t>{1, 123});
    CHECK(!driver.get_used());
    CHECK(bytes_at(rig, 0x20000, 64) == stream(0, 64));
    CHECK(bytes_at(rig, 0x21000, 16) == stream(64, 16));
    CHECK(bytes_at(rig, 0x22000, 100) == stream(80, 100));
    CHECK(bytes_at(rig, 0x23000, 7) == stream(180, 7));
    // Nothing else written but the buffers and the used ring (incl. avail_event).
    CHECK(unchanged_outside(rig, before,
                            {{0x20000, 64}, {0x21000, 16}, {0x22000, 100}, {0x23000, 7}, {driver.used, 6 + 8ull * driver.size},
                             {driver.avail + 4 + 2ull * driver.size, 2}}));
    // The level-triggered line: up with InterruptStatus, down once the driver acknowledged it.
    CHECK(rig.line_changes == std::vector<bool>{true});
    CHECK(driver.interrupt() == k_interrupt_used);
    CHECK(rig.line_changes == std::vector<bool>{true, false});
    CHECK(rig.rng->bytes_taken() == 187);
}

TEST_CASE("virtio-rng serves indirect chains and caps a request") {
    Rig rig;
    Driver driver(rig);
    driver.start();
    SECTION("an indirect table (Linux's layout for a multi-buffer request)") {
        uint64_t table = 0x30000;
        driver.set_desc(table, 0, 0x31000, 10, k_desc_f_write | k_desc_f_next, 1);
        driver.set_desc(table, 1, 0x32000, 20, k_desc_f_write, 0);
        driver.set_desc(5, table, 32, k_desc_f_indirect);
        driver.post(5);
        driver.kick();
        CHECK(driver.get_used() == std::pair<uint32_t, uint32_t>{5, 30});
        CHECK(bytes_at(rig, 0x31000, 10) == stream(0, 10));
        CHECK(bytes_at(rig, 0x32000, 20) == stream(10, 20));
    }
    SECTION("direct descriptors followed by an indirect one") {
        uint64_t table = 0x30000;
        driver.set_desc(table, 0, 0x32000, 20, k_desc_f_write, 0);
        driver.set_desc(2, 0x31000, 10, k_desc_f_write | k_desc_f_next, 3);
        driver.set_desc(3, table, 16, k_desc_f_indirect);
        driver.post(2);
        driver.kick();
        CHECK(driver.get_used() == std::pair<uint32_t, uint32_t>{2, 30});
    }
    SECTION("a request beyond 64 KiB gets 64 KiB") {
        driver.set_desc(0, 0x100000, 1 << 20, k_desc_f_write);
        driver.post(0);
        driver.kick();
        CHECK(driver.get_used() == std::pair<uint32_t, uint32_t>{0, RngDevice::k_max_request});
        CHECK(rig.peek<uint8_t>(0x100000 + RngDevice::k_max_request) == 0xaa);
    }
    SECTION("a chain with only readable buffers is returned with length 0") {
        driver.set_desc(0, 0x20000, 8, 0);
        driver.post(0);
        driver.kick();
        CHECK(driver.get_used() == std::pair<uint32_t, uint32_t>{0, 0});
        CHECK(rig.observed.empty());
    }
}

TEST_CASE("the observer sees exactly the bytes the guest got, in order") {
    Rig rig;
    Driver driver(rig);
    driver.start();
    std::vector<std::byte> guest;
    for (uint16_t round = 0; round < 40; ++round) {
        uint16_t head = round % driver.size;
        uint32_t len = 1 + (round * 37) % 300;
        uint64_t gpa = 0x40000 + 0x1000ull * head;
        driver.set_desc(head, gpa, len, k_desc_f_write);
        driver.post(head);
        driver.kick();
        auto used = driver.get_used();
        REQUIRE(used);
        REQUIRE(used->second == len);
        auto got = bytes_at(rig, gpa, len);
        guest.insert(guest.end(), got.begin(), got.end());
        driver.interrupt();
    }
    CHECK(rig.observed == guest);
    CHECK_FALSE(rig.observed_gap);
    CHECK(rig.rng->bytes_taken() == guest.size());
}

TEST_CASE("a starving source leaves the request pending until entropy_available()") {
    Rig rig;
    Driver driver(rig);
    driver.start();
    rig.source->budget = 10;
    driver.set_desc(0, 0x20000, 64, k_desc_f_write);
    driver.post(0);
    driver.kick();
    CHECK(!driver.get_used());
    CHECK(rig.line_changes.empty());
    CHECK(rig.rng->bytes_staged() == 10);
    CHECK(rig.peek<uint8_t>(0x20000) == 0xaa);  // nothing given to the guest yet
    rig.rng->entropy_available();               // still nothing: no change
    CHECK(!driver.get_used());

    rig.source->budget = 1000;
    rig.rng->entropy_available();
    CHECK(driver.get_used() == std::pair<uint32_t, uint32_t>{0, 64});
    CHECK(rig.line_changes == std::vector<bool>{true});
    CHECK(bytes_at(rig, 0x20000, 64) == stream(0, 64));
    CHECK(rig.observed == stream(0, 64));  // no byte drawn beyond the request
    CHECK(rig.rng->bytes_staged() == 0);
}

TEST_CASE("bytes drawn for a request survive a device reset and go to the next one") {
    Rig rig;
    Driver driver(rig);
    driver.start();
    rig.source->budget = 10;
    driver.set_desc(0, 0x20000, 64, k_desc_f_write);
    driver.post(0);
    driver.kick();
    driver.start();  // the driver resets and starts over
    rig.source->budget = 1000;
    driver.set_desc(0, 0x20000, 32, k_desc_f_write);
    driver.post(0);
    driver.kick();
    CHECK(driver.get_used() == std::pair<uint32_t, uint32_t>{0, 32});
    CHECK(bytes_at(rig, 0x20000, 32) == stream(0, 32));
    CHECK(rig.observed == stream(0, 32));
}

TEST_CASE("interrupt suppression: VIRTQ_AVAIL_F_NO_INTERRUPT and used_event") {
    Rig rig;
    Driver driver(rig);
    SECTION("flags, without EVENT_IDX") {
        driver.start(~k_feature_event_idx);
        rig.poke<uint16_t>(driver.avail, k_avail_f_no_interrupt);
        driver.set_desc(0, 0x20000, 8, k_desc_f_write);
        driver.post(0);
        driver.kick();
        CHECK(driver.get_used());
        CHECK(rig.line_changes.empty());
        rig.poke<uint16_t>(driver.avail, 0);
        driver.post(0);
        driver.kick();
        CHECK(rig.line_changes == std::vector<bool>{true});
    }
    SECTION("used_event, with EVENT_IDX") {
        driver.start();
        rig.poke<uint16_t>(driver.avail + 4 + 2 * driver.size, 5);  // interrupt after the 6th
        for (uint16_t i = 0; i < 5; ++i) {
            driver.set_desc(i, 0x20000 + 0x100 * i, 8, k_desc_f_write);
            driver.post(i);
            driver.kick();
        }
        CHECK(rig.line_changes.empty());
        // The device asks for a notification at the next buffer (avail_event = last_avail).
        CHECK(rig.peek<uint16_t>(driver.used + 4 + 8 * driver.size) == 5);
        driver.set_desc(5, 0x20500, 8, k_desc_f_write);
        driver.post(5);
        driver.kick();
        CHECK(rig.line_changes == std::vector<bool>{true});
    }
}

TEST_CASE("hostile chains put the device into DEVICE_NEEDS_RESET without touching memory") {
    Rig rig;
    Driver driver(rig);
    driver.start();
    uint16_t head = 0;
    SECTION("a loop") {
        driver.set_desc(0, 0x20000, 8, k_desc_f_write | k_desc_f_next, 1);
        driver.set_desc(1, 0x20100, 8, k_desc_f_write | k_desc_f_next, 0);
    }
    SECTION("a buffer outside RAM") {
        driver.set_desc(0, 0x8000'0000, 64, k_desc_f_write);
    }
    SECTION("a buffer in the MMIO hole") {
        driver.set_desc(0, k_base, 64, k_desc_f_write);
    }
    SECTION("a head index beyond the queue") {
        head = driver.size;
    }
    SECTION("a next index beyond the queue") {
        driver.set_desc(0, 0x20000, 8, k_desc_f_write | k_desc_f_next, 999);
    }
    SECTION("a readable buffer after a writable one") {
        driver.set_desc(0, 0x20000, 8, k_desc_f_write | k_desc_f_next, 1);
        driver.set_desc(1, 0x20100, 8, 0);
    }
    SECTION("a huge length") {
        driver.set_desc(0, 0x20000, 0xffff'ffff, k_desc_f_write);
    }
    SECTION("a length running past the end of RAM") {
        driver.set_desc(0, k_ram - 16, 64, k_desc_f_write);
    }
    SECTION("an indirect table outside RAM") {
        driver.set_desc(0, k_ram - 16, 32, k_desc_f_indirect);
    }
    SECTION("an indirect table of an odd length") {
        driver.set_desc(0, 0x30000, 24, k_desc_f_indirect);
    }
    SECTION("an indirect table longer than the queue") {
        driver.set_desc(0, 0x30000, 16 * (driver.size + 1), k_desc_f_indirect);
    }
    SECTION("an indirect entry pointing outside its table") {
        driver.set_desc(0x30000, 0, 0x20000, 8, k_desc_f_write | k_desc_f_next, 2);
        driver.set_desc(0x30000, 1, 0x20000, 8, k_desc_f_write, 0);
        driver.set_desc(0, 0x30000, 32, k_desc_f_indirect);
    }
    SECTION("a loop inside an indirect table") {
        driver.set_desc(0x30000, 0, 0x20000, 8, k_desc_f_write | k_desc_f_next, 1);
        driver.set_desc(0x30000, 1, 0x20000, 8, k_desc_f_write | k_desc_f_next, 0);
        driver.set_desc(0, 0x30000, 32, k_desc_f_indirect);
    }
    SECTION("nested indirect tables") {
        driver.set_desc(0x30000, 0, 0x31000, 16, k_desc_f_indirect, 0);
        driver.set_desc(0, 0x30000, 16, k_desc_f_indirect);
    }
    SECTION("an indirect descriptor with NEXT") {
        driver.set_desc(0x30000, 0, 0x20000, 8, k_desc_f_write, 0);
        driver.set_desc(0, 0x30000, 16, k_desc_f_indirect | k_desc_f_next, 1);
    }
    driver.post(head);
    auto before = snapshot(rig);
    driver.kick();
    CHECK((rig.transport->status() & k_status_needs_reset) != 0);
    CHECK(!driver.get_used());
    CHECK(rig.line);
    CHECK(driver.interrupt() == k_interrupt_config);
    CHECK(!rig.line);
    CHECK(unchanged_outside(rig, before, {}));
    CHECK(rig.observed.empty());
    // Kicks while broken do nothing.
    driver.kick();
    CHECK(rig.transport->interrupt_status() == 0);

    // The driver resets the device and it works again.
    driver.start();
    CHECK((rig.transport->status() & k_status_needs_reset) == 0);
    driver.set_desc(0, 0x20000, 16, k_desc_f_write);
    driver.post(0);
    driver.kick();
    CHECK(driver.get_used() == std::pair<uint32_t, uint32_t>{0, 16});
}

TEST_CASE("a driver that publishes more buffers than the queue holds breaks it") {
    Rig rig;
    Driver driver(rig);
    driver.start();
    rig.poke<uint16_t>(driver.avail + 2, static_cast<uint16_t>(driver.size + 1));
    driver.kick();
    CHECK((rig.transport->status() & k_status_needs_reset) != 0);
}

TEST_CASE("a queue set up outside RAM, misaligned or early needs a reset, before DRIVER_OK without an interrupt") {
    Rig rig;
    Driver driver(rig);
    REQUIRE((driver.negotiate(~0ull) & k_status_features_ok) != 0);
    rig.write(QUEUE_SEL, 0);
    rig.write(QUEUE_NUM, 16);
    rig.write(DESC_LO, 0x10000);
    SECTION("before FEATURES_OK") {
        rig.write(STATUS, 0);
        rig.write(STATUS, k_status_acknowledge | k_status_driver);
        rig.write(QUEUE_SEL, 0);
        rig.write(QUEUE_NUM, 16);
        rig.write(DESC_LO, 0x10000);
    }
    SECTION("outside RAM") { rig.write(DESC_LO, 0x4000'0000); }
    SECTION("misaligned") { rig.write(DESC_LO, 0x10008); }
    SECTION("not a power of two") { rig.write(QUEUE_NUM, 12); }
    rig.write(DRIVER_LO, 0x11000);
    rig.write(DEVICE_LO, 0x12000);
    rig.write(QUEUE_READY, 1);
    CHECK(rig.read(QUEUE_READY) == 0);
    CHECK((rig.read(STATUS) & k_status_needs_reset) != 0);
    CHECK(rig.line_changes.empty());
}

TEST_CASE("quiesce keeps the device off guest memory until resume") {
    Rig rig;
    Driver driver(rig);
    driver.start();
    rig.source->budget = 0;
    driver.set_desc(0, 0x20000, 64, k_desc_f_write);
    driver.post(0);
    driver.kick();
    rig.transport->quiesce();  // what Board::quiesce() does
    auto before = snapshot(rig);
    rig.source->budget = 1000;
    rig.rng->entropy_available();
    CHECK(unchanged_outside(rig, before, {}));
    CHECK(rig.observed.empty());  // the source is not touched either
    CHECK(rig.line_changes.empty());
    rig.transport->resume();
    CHECK(driver.get_used() == std::pair<uint32_t, uint32_t>{0, 64});
    CHECK(rig.line_changes == std::vector<bool>{true});
}

TEST_CASE("entropy_available() from another thread races a driver safely") {
    Rig rig;
    Driver driver(rig);
    driver.start();
    rig.source->budget = 0;
    std::atomic<bool> stop{false};
    std::atomic<size_t> grant{0};
    std::thread feeder([&] {
        while (!stop) {
            if (grant.exchange(0)) {
                {
                    auto lock = rig.transport->lock();  // the source is the device's: feed it under the lock
                    rig.source->budget += 50;
                }
                rig.rng->entropy_available();
            }
            std::this_thread::yield();
        }
    });
    size_t done = 0;
    for (uint16_t round = 0; round < 200; ++round) {
        uint16_t head = round % driver.size;
        driver.set_desc(head, 0x40000 + 0x100ull * head, 50, k_desc_f_write);
        driver.post(head);
        driver.kick();
        grant = 1;
        std::optional<std::pair<uint32_t, uint32_t>> used;
        while (!(used = driver.get_used()))
            std::this_thread::yield();
        CHECK(used->second == 50);
        ++done;
    }
    stop = true;
    feeder.join();
    CHECK(done == 200);
    CHECK(rig.observed == stream(0, 200 * 50));
}

TEST_CASE("a reboot's power-on state keeps the rng's place in its stream: offsets never go back") {
    Rig rig;
    DeviceState power_on = rig.transport->save_state();
    Driver driver(rig);
    driver.start();
    REQUIRE(driver.request(0, 0x20000, 100));
    uint64_t taken = rig.rng->bytes_taken();
    REQUIRE(taken >= 100);
    // What a reboot in place does: the power-on state, then the stream position carried on.
    REQUIRE(rig.transport->load_state(power_on));
    CHECK(rig.rng->bytes_taken() == 0);
    rig.rng->continue_stream_at(taken);
    CHECK(rig.rng->bytes_taken() == taken);
    CHECK(rig.rng->bytes_staged() == 0);
    // The rebooted driver sets the device up again; its bytes come after the old ones.
    size_t observed_before = rig.observed.size();
    Driver again(rig);
    again.start();
    REQUIRE(again.request(0, 0x30000, 40));
    CHECK(rig.rng->bytes_taken() >= taken + 40);
    CHECK(rig.observed.size() > observed_before);
    CHECK_FALSE(rig.observed_gap);  // every run of bytes started where the last one ended
}

TEST_CASE("state: save, load, save is identical; a second instance continues the ring") {
    Rig rig;
    Driver driver(rig);
    driver.start();
    driver.set_desc(0, 0x20000, 64, k_desc_f_write);
    driver.post(0);
    driver.kick();
    REQUIRE(driver.get_used());
    // A second request that waits for entropy, and an unacknowledged interrupt.
    rig.source->budget = 20;
    driver.set_desc(1, 0x21000, 48, k_desc_f_write);
    driver.post(1);
    driver.kick();
    REQUIRE(!driver.get_used());
    REQUIRE(rig.transport->interrupt_status() == k_interrupt_used);

    DeviceState saved = rig.transport->save_state();
    CHECK(saved.name == "virtio-rng@d0000000");
    REQUIRE(rig.transport->check_state(saved));
    REQUIRE(rig.transport->load_state(saved));
    CHECK(rig.transport->save_state().bytes == saved.bytes);

    // The secondary: its own memory (a copy of the primary's), its own transport, loaded again
    // and again in place.
    Rig standby;
    std::memcpy(standby.memory.all().data(), rig.memory.all().data(), k_ram);
    REQUIRE(standby.transport->load_state(saved));
    REQUIRE(standby.transport->load_state(saved));
    CHECK(standby.transport->save_state().bytes == saved.bytes);
    CHECK(standby.line);  // InterruptStatus was pending: the line is driven up
    CHECK(standby.line_changes.back() == true);
    CHECK(standby.rng->bytes_taken() == 84);
    CHECK(standby.rng->bytes_staged() == 20);
    // Its source continues the primary's stream where the primary's state says it stands.
    standby.source->next = standby.rng->bytes_taken();

    Driver continued(standby);
    continued.size = driver.size;
    continued.avail_idx = driver.avail_idx;
    continued.last_used = driver.last_used;
    continued.features = driver.features;
    CHECK(continued.interrupt() == k_interrupt_used);
    CHECK(!standby.line);
    standby.rng->entropy_available();
    CHECK(continued.get_used() == std::pair<uint32_t, uint32_t>{1, 48});
    CHECK(bytes_at(standby, 0x21000, 48) == stream(64, 48));  // what the primary would have given
    continued.set_desc(2, 0x22000, 8, k_desc_f_write);
    continued.post(2);
    continued.kick();
    CHECK(continued.get_used() == std::pair<uint32_t, uint32_t>{2, 8});
    CHECK(standby.transport->queue(0).state().used_idx == 3);

    // Loading the old state again rewinds the standby (in place, as after every checkpoint).
    REQUIRE(standby.transport->load_state(saved));
    CHECK(standby.transport->save_state().bytes == saved.bytes);
}

TEST_CASE("truncated or garbled state is refused without changing the device") {
    Rig rig;
    Driver driver(rig);
    driver.start();
    rig.source->budget = 5;
    driver.set_desc(0, 0x20000, 64, k_desc_f_write);
    driver.post(0);
    driver.kick();
    DeviceState good = rig.transport->save_state();

    Rig other;
    Driver other_driver(other);
    other_driver.start(k_feature_version_1);
    DeviceState before = other.transport->save_state();
    REQUIRE(before.bytes != good.bytes);
    auto refused = [&](const DeviceState& state) {
        bool check_refused = !other.transport->check_state(state).ok();
        bool load_refused = !other.transport->load_state(state).ok();
        return check_refused && load_refused && other.transport->save_state().bytes == before.bytes;
    };

    for (size_t len = 0; len < good.bytes.size(); ++len) {
        DeviceState cut = good;
        cut.bytes.resize(len);
        INFO("truncated to " << len);
        CHECK(refused(cut));
    }
    // Offsets in the layout (see mmio.cc): device id 0, offered features 4, status 12, driver
    // features 13, selectors 21/25/29, interrupt status 33, generation 37, queue count 41,
    // queue 0 at 43: size 43, ready 45, desc 46, driver 54, device 62, indices 70/72/74,
    // model version 76, model blob length 78, taken 82, staged length 90.
    auto garbled = [&](size_t offset, std::initializer_list<uint8_t> bytes) {
        DeviceState bad = good;
        size_t i = offset;
        for (uint8_t b : bytes)
            bad.bytes.at(i++) = std::byte{b};
        return bad;
    };
    CHECK(refused(garbled(3, {5})));                  // another device id
    CHECK(refused(garbled(12, {0x20})));              // unknown status bit
    CHECK(refused(garbled(12, {0x07})));              // DRIVER_OK without FEATURES_OK
    CHECK(refused(garbled(12, {0x03})));              // a ready queue without FEATURES_OK
    CHECK(refused(garbled(20, {0x01})));              // driver feature not offered
    CHECK(refused(garbled(36, {0x04})));              // interrupt status bit
    CHECK(refused(garbled(42, {2})));                 // queue count
    CHECK(refused(garbled(44, {12})));                // queue size not a power of two
    CHECK(refused(garbled(45, {2})));                 // ready flag
    CHECK(refused(garbled(49, {0x40})));              // descriptor table outside RAM
    CHECK(refused(garbled(61, {0x01})));              // misaligned available ring
    CHECK(refused(garbled(71, {100})));               // more chains in flight than the queue holds
    CHECK(refused(garbled(77, {2})));                 // model version
    CHECK(refused(garbled(89, {1})));                 // staged > taken
    DeviceState trailing = good;
    trailing.bytes.push_back(std::byte{0});
    CHECK(refused(trailing));
    DeviceState version = good;
    version.version = 2;
    CHECK(refused(version));
    // The good state itself loads.
    REQUIRE(other.transport->load_state(good));
    CHECK(other.transport->save_state().bytes == good.bytes);
}

TEST_CASE("LimitedEntropy never gives more than its allowance") {
    auto inner = std::make_unique<ScriptedSource>();
    uint64_t allowance = 10;
    LimitedEntropy limited(std::move(inner), [&] { return allowance; });
    std::vector<std::byte> out(64);
    CHECK(limited.fill(out) == 10);
    CHECK(std::vector(out.begin(), out.begin() + 10) == stream(0, 10));
    allowance = 0;
    CHECK(limited.fill(out) == 0);
    allowance = 1000;
    CHECK(limited.fill(out) == 64);
    CHECK(out == stream(10, 64));
}

TEST_CASE("StreamEntropy: contiguous bytes by offset, rolled back by seek, bounded") {
    StreamEntropy s(100);
    auto bytes = stream(1000, 80);
    std::vector<std::byte> out(50);
    CHECK(s.fill(out) == 0);  // nothing known yet
    REQUIRE(s.add(1000, std::span(bytes).first(30)));
    REQUIRE(s.add(1030, std::span(bytes).subspan(30, 20)));
    // A gap is refused and changes nothing.
    auto gap = s.add(1060, std::span(bytes).subspan(60, 10));
    REQUIRE_FALSE(gap);
    CHECK(gap.error().message().find("offset 1060, but 1050 comes next") != std::string::npos);
    CHECK(s.held() == 50);
    // Overlap: the part already held is skipped.
    REQUIRE(s.add(1040, std::span(bytes).subspan(40, 40)));
    CHECK(s.held() == 80);
    CHECK(s.fill(std::span(out).first(20)) == 20);
    CHECK(std::vector(out.begin(), out.begin() + 20) == stream(1000, 20));
    // A checkpoint loaded at 1010 rolls the reader back: bytes 1010.. come again.
    s.seek(1010);
    CHECK(s.held() == 70);
    CHECK(s.fill(out) == 50);
    CHECK(out == stream(1010, 50));
    CHECK(s.fill(out) == 20);
    CHECK(s.fill(out) == 0);
    // Over capacity: refused whole.
    auto more = stream(1080, 40);
    auto over = s.add(1080, more);
    REQUIRE_FALSE(over);
    CHECK(s.held() == 70);
    // A seek past everything held waits for those bytes; older ones are skipped when they come.
    s.seek(1100);
    CHECK(s.held() == 0);
    REQUIRE(s.add(1080, more));
    CHECK(s.held() == 20);
    CHECK(s.fill(out) == 20);
    CHECK(std::vector(out.begin(), out.begin() + 20) == stream(1100, 20));
    s.clear();
    CHECK(s.fill(out) == 0);
    REQUIRE(s.add(5, std::span(bytes).first(3)));  // a new stream starts anywhere
    CHECK(s.held() == 3);
}

TEST_CASE("a standby's device fed the primary's observed bytes gives its guest the same bytes, again after a rollback") {
    Rig primary;
    auto fed = std::make_shared<StreamEntropy>(1 << 20);
    primary.forward = [&](uint64_t offset, std::span<const std::byte> bytes) { REQUIRE(fed->add(offset, bytes)); };
    Driver driver(primary);
    driver.start();
    REQUIRE(driver.request(0, 0x20000, 64));
    DeviceState checkpoint = primary.transport->save_state();
    auto memory_at_checkpoint = std::vector<std::byte>(primary.memory.all().begin(), primary.memory.all().end());
    Driver after = driver;  // the driver as of the checkpoint
    // The primary's guest goes on: two more requests after the checkpoint.
    for (uint16_t head : {1, 2}) {
        driver.set_desc(head, 0x20000 + 0x1000ull * head, 100, k_desc_f_write);
        driver.post(head);
        driver.kick();
        REQUIRE(driver.get_used());
    }
    auto primary_got = bytes_at(primary, 0x21000, 100);
    auto primary_got2 = bytes_at(primary, 0x22000, 100);

    Rig standby(std::make_unique<SharedEntropy>(fed));
    for (int run = 0; run < 2; ++run) {
        // Load the checkpoint (again, on the second run: a rollback) and position the stream.
        std::memcpy(standby.memory.all().data(), memory_at_checkpoint.data(), k_ram);
        REQUIRE(standby.transport->load_state(checkpoint));
        fed->seek(standby.rng->bytes_taken());
        Driver continued(standby);
        continued.size = after.size;
        continued.avail_idx = after.avail_idx;
        continued.last_used = after.last_used;
        continued.features = after.features;
        for (uint16_t head : {1, 2}) {
            continued.set_desc(head, 0x20000 + 0x1000ull * head, 100, k_desc_f_write);
            continued.post(head);
            continued.kick();
            REQUIRE(continued.get_used());
        }
        CHECK(bytes_at(standby, 0x21000, 100) == primary_got);
        CHECK(bytes_at(standby, 0x22000, 100) == primary_got2);
    }
}

TEST_CASE("HostEntropy gives the host's random bytes") {
    HostEntropy host;
    std::vector<std::byte> a(4096), b(4096);
    REQUIRE(host.fill(a) == a.size());
    REQUIRE(host.fill(b) == b.size());
    CHECK(a != b);
    CHECK(std::count(a.begin(), a.end(), std::byte{0}) < 100);
}
