// SPDX-License-Identifier: GPL-2.0-or-later
// virtio-blk behind the real virtio-mmio transport, on a real image file (core/disk/image.h)
// in a temporary folder, driven by the fake driver of tests/support/virtio_driver.h as Linux's
// virtio_blk would drive it: requests, bad requests, the observer, the state.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "base/log.h"
#include "core/disk/image.h"
#include "core/virtio/blk.h"
#include "core/virtio/mmio.h"
#include "tests/support/virtio_driver.h"

using namespace colod;
using namespace colod::core;
using namespace colod::core::virtio;
using colod::test::Frame;
using colod::test::Ring;

namespace {

constexpr uint64_t k_image_size = 1 << 20;  // 2048 sectors
constexpr uint64_t k_sectors = k_image_size / 512;

// A temporary folder, removed with everything in it.
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        std::string pattern = (std::filesystem::temp_directory_path() / "colod-blk-XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        path = pattern;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

// Byte i of the image as made: a function of i.
std::byte image_byte(uint64_t i) { return std::byte(static_cast<uint8_t>(i * 37 + (i >> 9))); }

std::filesystem::path make_image(const std::filesystem::path& path, uint64_t size = k_image_size) {
    std::vector<char> bytes(size);
    for (uint64_t i = 0; i < size; ++i)
        bytes[i] = static_cast<char>(image_byte(i));
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path;
}

Frame file_bytes(const std::filesystem::path& path, uint64_t offset, size_t len) {
    Frame out(len);
    std::ifstream in(path, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(len));
    REQUIRE(in.gcount() == static_cast<std::streamsize>(len));
    return out;
}

Frame pattern(size_t len, uint8_t seed) {
    Frame out(len);
    for (size_t i = 0; i < len; ++i)
        out[i] = std::byte(static_cast<uint8_t>(seed + i * 13 + (i >> 8)));
    return out;
}

// Log records while it lives.
struct LogCapture {
    std::vector<std::string> messages;
    LogCapture() {
        base::set_log_sink([this](const base::LogRecord& record) { messages.push_back(record.message); });
    }
    ~LogCapture() { base::set_log_sink({}); }
    size_t count(std::string_view text) const {
        size_t n = 0;
        for (const auto& m : messages)
            n += m.find(text) != std::string::npos;
        return n;
    }
};

// A backend that fails every call (a disk gone bad under the image).
struct FailingBackend final : disk::BlockBackend {
    uint64_t size() const override { return k_image_size; }
    std::string describe() const override { return "failing"; }
    base::Result<void> read(uint64_t, std::span<std::byte>) override { return base::Error(base::Errc::System, "EIO", 5); }
    base::Result<void> write(uint64_t, std::span<const std::byte>) override {
        return base::Error(base::Errc::System, "EIO", 5);
    }
    base::Result<void> flush() override { return base::Error(base::Errc::System, "EIO", 5); }
};

// Where the driver keeps a request's parts in guest memory.
constexpr uint64_t k_header_gpa = 0x20000;
constexpr uint64_t k_data_gpa = 0x100000;
constexpr uint64_t k_status_gpa = 0x30000;

struct Rig : colod::test::VirtioRig {
    TempDir dir;
    std::filesystem::path image_path;
    std::shared_ptr<disk::FileImage> image;
    BlkDevice* blk = nullptr;
    std::vector<std::pair<uint64_t, Frame>> observed_writes;
    int observed_flushes = 0;
    std::vector<std::string> observed_order;  // "w<offset>" and "f", in order
    colod::test::VirtioDriver driver{*this};
    Ring ring{0, 0x10000, 0x11000, 0x12000};

    explicit Rig(std::shared_ptr<disk::BlockBackend> backend = nullptr) {
        image_path = make_image(dir.path / "disk.img");
        if (!backend) {
            image = std::shared_ptr<disk::FileImage>(disk::FileImage::open(image_path).value());
            backend = image;
        }
        BlkDevice::Observer observer;
        observer.written = [this](uint64_t offset, std::span<const std::byte> bytes) {
            observed_writes.emplace_back(offset, Frame(bytes.begin(), bytes.end()));
            observed_order.push_back("w" + std::to_string(offset));
        };
        observer.flushed = [this] {
            ++observed_flushes;
            observed_order.push_back("f");
        };
        auto device = std::make_unique<BlkDevice>(backend, BlkDevice::serial_for(image_path.string()), observer);
        blk = device.get();
        attach(std::move(device));
    }
    void start(uint64_t accept = ~0ull) { driver.start(BlkDevice::k_device_id, {&ring}, accept); }

    void header(uint32_t type, uint64_t sector) {
        poke<uint32_t>(k_header_gpa, type);
        poke<uint32_t>(k_header_gpa + 4, 0);
        poke<uint64_t>(k_header_gpa + 8, sector);
    }
    // Posts chain 0 of `descs` (addr, len, flags), linked in order, kicks, and returns the used
    // element.
    std::optional<colod::test::Used> submit(std::vector<std::tuple<uint64_t, uint32_t, uint16_t>> descs) {
        for (size_t i = 0; i < descs.size(); ++i) {
            auto [addr, len, flags] = descs[i];
            bool more = i + 1 < descs.size();
            driver.set_desc(ring, static_cast<uint16_t>(i), addr, len,
                            static_cast<uint16_t>(flags | (more ? k_desc_f_next : 0)), static_cast<uint16_t>(i + 1));
        }
        poke<uint8_t>(k_status_gpa, 0xee);  // what the driver's status byte holds before
        driver.post(ring, 0);
        driver.kick(ring);
        return driver.get_used(ring);
    }
    // Linux's layout: header, data (device-writable for IN), status.
    std::optional<colod::test::Used> request(uint32_t type, uint64_t sector, uint32_t data_len) {
        header(type, sector);
        std::vector<std::tuple<uint64_t, uint32_t, uint16_t>> descs{{k_header_gpa, 16, 0}};
        if (data_len)
            descs.emplace_back(k_data_gpa, data_len, type == BlkDevice::k_type_out ? 0 : k_desc_f_write);
        descs.emplace_back(k_status_gpa, 1, k_desc_f_write);
        return submit(descs);
    }
    uint8_t status() { return peek<uint8_t>(k_status_gpa); }
    Frame image_bytes(uint64_t offset, size_t len) { return file_bytes(image_path, offset, len); }
    Frame expected_image(uint64_t offset, size_t len) {
        Frame out(len);
        for (size_t i = 0; i < len; ++i)
            out[i] = image_byte(offset + i);
        return out;
    }
    uint32_t config32(uint32_t offset) { return read(colod::test::CONFIG + offset); }
};

}  // namespace

TEST_CASE("virtio-blk: identity, features and configuration as Linux reads them", "[virtio][blk]") {
    Rig rig;
    CHECK(rig.transport->name() == "virtio-blk@d0000000");
    CHECK(rig.read(colod::test::DEVICE_ID) == 2);
    rig.write(colod::test::DEV_FEATURES_SEL, 0);
    uint32_t low = rig.read(colod::test::DEV_FEATURES);
    CHECK((low & 0xffffff) == (BlkDevice::k_feature_size_max | BlkDevice::k_feature_seg_max |
                               BlkDevice::k_feature_blk_size | BlkDevice::k_feature_flush));
    rig.start();
    CHECK(rig.config32(0) == k_sectors);  // capacity, low half
    CHECK(rig.config32(4) == 0);
    CHECK(rig.config32(8) == BlkDevice::k_size_max);
    CHECK(rig.config32(12) == BlkDevice::k_seg_max);
    CHECK(rig.config32(16) == 0);  // no geometry
    CHECK(rig.config32(20) == 512);
    CHECK(rig.config32(24) == 0);  // nothing beyond
    CHECK(rig.blk->capacity() == k_sectors);
}

TEST_CASE("virtio-blk: writes reach the image and the observer, reads come back, flush and GET_ID", "[virtio][blk]") {
    Rig rig;
    rig.start();
    Frame data = pattern(8192, 3);
    rig.put(k_data_gpa, data);
    auto used = rig.request(BlkDevice::k_type_out, 10, 8192);
    REQUIRE(used);
    CHECK(*used == colod::test::Used{0, 1});  // only the status byte written
    CHECK(rig.status() == BlkDevice::k_status_ok);
    CHECK(rig.image_bytes(10 * 512, 8192) == data);
    CHECK(rig.image_bytes(0, 10 * 512) == rig.expected_image(0, 10 * 512));  // nothing else changed
    CHECK(rig.image_bytes(26 * 512, 512) == rig.expected_image(26 * 512, 512));
    REQUIRE(rig.observed_writes.size() == 1);
    CHECK(rig.observed_writes[0].first == 10 * 512);
    CHECK(rig.observed_writes[0].second == data);

    // Read it back, and an untouched part, into a fresh buffer.
    std::memset(rig.at(k_data_gpa), 0, 16384);
    used = rig.request(BlkDevice::k_type_in, 10, 8192);
    REQUIRE(used);
    CHECK(*used == colod::test::Used{0, 8193});
    CHECK(rig.status() == BlkDevice::k_status_ok);
    CHECK(rig.bytes_at(k_data_gpa, 8192) == data);
    used = rig.request(BlkDevice::k_type_in, k_sectors - 2, 1024);  // the last two sectors
    REQUIRE(used);
    CHECK(rig.status() == BlkDevice::k_status_ok);
    CHECK(rig.bytes_at(k_data_gpa, 1024) == rig.expected_image(k_image_size - 1024, 1024));

    // A write whose data spans several buffers, the header split too (any layout is legal).
    Frame second = pattern(1536, 99);
    rig.header(BlkDevice::k_type_out, 100);
    rig.put(k_data_gpa, second);
    used = rig.submit({{k_header_gpa, 10, 0},
                       {k_header_gpa + 10, 6, 0},
                       {k_data_gpa, 700, 0},
                       {k_data_gpa + 700, 836, 0},
                       {k_status_gpa, 1, k_desc_f_write}});
    REQUIRE(used);
    CHECK(rig.status() == BlkDevice::k_status_ok);
    CHECK(rig.image_bytes(100 * 512, 1536) == second);

    used = rig.request(BlkDevice::k_type_flush, 0, 0);
    REQUIRE(used);
    CHECK(used->second == 1);
    CHECK(rig.status() == BlkDevice::k_status_ok);
    CHECK(rig.observed_flushes == 1);
    CHECK(rig.observed_order == std::vector<std::string>{"w5120", "w51200", "f"});

    used = rig.request(BlkDevice::k_type_get_id, 0, 20);
    REQUIRE(used);
    CHECK(used->second == 21);
    CHECK(rig.status() == BlkDevice::k_status_ok);
    Frame id = rig.bytes_at(k_data_gpa, 20);
    CHECK(std::string(reinterpret_cast<const char*>(id.data()), 8) == "disk.img");
    CHECK(std::all_of(id.begin() + 8, id.end(), [](std::byte b) { return b == std::byte{0}; }));

    auto counters = rig.blk->counters();
    CHECK(counters.writes == 2);
    CHECK(counters.written_bytes == 8192 + 1536);
    CHECK(counters.reads == 2);
    CHECK(counters.flushes == 1);
    CHECK(counters.get_ids == 1);
    CHECK(counters.bad_requests == 0);
    CHECK_FALSE(rig.needs_reset());
}

TEST_CASE("virtio-blk: serials come from the image's file name and fit in 20 bytes", "[virtio][blk]") {
    CHECK(BlkDevice::serial_for("/var/lib/colod/demo.img") == "demo.img");
    CHECK(BlkDevice::serial_for("demo.img") == "demo.img");
    CHECK(BlkDevice::serial_for("/a/my disk\t.img") == "my_disk_.img");
    std::string long_name = BlkDevice::serial_for("/x/a-very-long-image-file-name.raw");
    CHECK(long_name.size() == 20);
    CHECK(long_name.starts_with("a-very-long-"));
    CHECK(long_name != BlkDevice::serial_for("/x/a-very-long-image-file-name.img"));
    CHECK(long_name == BlkDevice::serial_for("/elsewhere/a-very-long-image-file-name.raw"));
    BlkDevice device(std::make_shared<FailingBackend>(), std::string(30, 'x'));
    CHECK(device.serial() == std::string(20, 'x'));
}

TEST_CASE("virtio-blk: requests outside the disk get IOERR and change nothing", "[virtio][blk]") {
    LogCapture log;
    Rig rig;
    rig.start();
    rig.put(k_data_gpa, pattern(1024, 1));
    for (auto [sector, len] : {std::pair<uint64_t, uint32_t>{k_sectors, 512}, {k_sectors - 1, 1024},
                               {uint64_t{1} << 63, 512}, {~uint64_t{0}, 512}, {k_sectors + 5, 512}}) {
        INFO("sector " << sector << ", " << len << " bytes");
        for (uint32_t type : {BlkDevice::k_type_out, BlkDevice::k_type_in}) {
            auto used = rig.request(type, sector, len);
            REQUIRE(used);
            CHECK(used->second == 1);
            CHECK(rig.status() == BlkDevice::k_status_ioerr);
        }
    }
    CHECK(rig.image_bytes(0, k_image_size) == rig.expected_image(0, k_image_size));
    CHECK(rig.observed_writes.empty());
    CHECK(rig.blk->counters().bad_requests == 10);
    CHECK_FALSE(rig.needs_reset());
    CHECK(log.count("outside the disk") == 1);  // once, not per request
    // The device goes on.
    CHECK(rig.request(BlkDevice::k_type_in, k_sectors - 1, 512));
    CHECK(rig.status() == BlkDevice::k_status_ok);
}

TEST_CASE("virtio-blk: malformed requests get IOERR or no status, and the guest goes on", "[virtio][blk]") {
    LogCapture log;
    Rig rig;
    rig.start();
    rig.put(k_data_gpa, pattern(4096, 5));
    auto expect_ioerr = [&](std::optional<colod::test::Used> used) {
        REQUIRE(used);
        CHECK(used->second == 1);
        CHECK(rig.status() == BlkDevice::k_status_ioerr);
    };
    SECTION("header too short") {
        rig.header(BlkDevice::k_type_out, 0);
        expect_ioerr(rig.submit({{k_header_gpa, 8, 0}, {k_status_gpa, 1, k_desc_f_write}}));
        CHECK(log.count("header too short") == 1);
    }
    SECTION("a read with device-readable data") {
        rig.header(BlkDevice::k_type_in, 0);
        expect_ioerr(rig.submit({{k_header_gpa, 16, 0}, {k_data_gpa, 512, 0}, {k_status_gpa, 1, k_desc_f_write}}));
        CHECK(log.count("wrong direction") == 1);
    }
    SECTION("a write with device-writable data") {
        rig.header(BlkDevice::k_type_out, 0);
        expect_ioerr(rig.submit({{k_header_gpa, 16, 0}, {k_data_gpa, 512, k_desc_f_write}, {k_status_gpa, 1, k_desc_f_write}}));
        CHECK(log.count("wrong direction") == 1);
    }
    SECTION("data that is not whole sectors") {
        expect_ioerr(rig.request(BlkDevice::k_type_out, 0, 100));
        expect_ioerr(rig.request(BlkDevice::k_type_in, 0, 513));
        CHECK(log.count("not whole sectors") == 1);
    }
    SECTION("more data than the device offered to take") {
        auto len = static_cast<uint32_t>(BlkDevice::k_max_data + 512);
        REQUIRE(k_data_gpa + len < colod::test::k_ram);
        expect_ioerr(rig.request(BlkDevice::k_type_out, 0, len));
        expect_ioerr(rig.request(BlkDevice::k_type_in, 0, len));
        CHECK(log.count("too large") == 1);
    }
    SECTION("no status byte: returned with nothing written") {
        rig.header(BlkDevice::k_type_out, 0);
        auto used = rig.submit({{k_header_gpa, 16, 0}, {k_data_gpa, 512, 0}});
        REQUIRE(used);
        CHECK(used->second == 0);
        CHECK(rig.status() == 0xee);
        CHECK(rig.blk->counters().no_status == 1);
        CHECK(log.count("no status byte") == 1);
    }
    SECTION("an unknown request type") {
        for (uint32_t type : {2u, 11u, 13u, 99u, 0xffffffffu}) {
            auto used = rig.request(type, 0, 512);
            REQUIRE(used);
            CHECK(rig.status() == BlkDevice::k_status_unsupp);
        }
        CHECK(rig.blk->counters().unsupported == 5);
        CHECK(log.count("unsupported request type") == 1);
    }
    CHECK(rig.image_bytes(0, k_image_size) == rig.expected_image(0, k_image_size));
    CHECK(rig.observed_writes.empty());
    CHECK_FALSE(rig.needs_reset());
    // A good request right after works.
    rig.put(k_data_gpa, pattern(512, 42));
    auto used = rig.request(BlkDevice::k_type_out, 3, 512);
    REQUIRE(used);
    CHECK(rig.status() == BlkDevice::k_status_ok);
    CHECK(rig.image_bytes(3 * 512, 512) == pattern(512, 42));
}

TEST_CASE("virtio-blk: a broken ring needs a reset, as for every device", "[virtio][blk]") {
    Rig rig;
    rig.start();
    rig.header(BlkDevice::k_type_in, 0);
    // A buffer beyond guest RAM: the queue's own walk refuses the chain.
    auto used = rig.submit({{k_header_gpa, 16, 0}, {colod::test::k_ram - 256, 512, k_desc_f_write},
                            {k_status_gpa, 1, k_desc_f_write}});
    CHECK_FALSE(used);
    CHECK(rig.needs_reset());
}

TEST_CASE("virtio-blk: a failing backend gives IOERR, logged once", "[virtio][blk]") {
    LogCapture log;
    Rig rig(std::make_shared<FailingBackend>());
    rig.start();
    for (int i = 0; i < 3; ++i) {
        REQUIRE(rig.request(BlkDevice::k_type_out, 0, 512));
        CHECK(rig.status() == BlkDevice::k_status_ioerr);
        REQUIRE(rig.request(BlkDevice::k_type_in, 0, 512));
        CHECK(rig.status() == BlkDevice::k_status_ioerr);
        REQUIRE(rig.request(BlkDevice::k_type_flush, 0, 0));
        CHECK(rig.status() == BlkDevice::k_status_ioerr);
    }
    CHECK(rig.blk->counters().io_errors == 9);
    CHECK(rig.observed_writes.empty());
    CHECK(rig.observed_flushes == 0);
    CHECK(log.count("write failed") == 1);
    CHECK(log.count("read failed") == 1);
    CHECK(log.count("flush failed") == 1);
}

TEST_CASE("virtio-blk: the backend is swapped only for one of the same size", "[virtio][blk]") {
    Rig rig;
    rig.start();
    auto other = std::shared_ptr<disk::FileImage>(
        disk::FileImage::open(make_image(rig.dir.path / "other.img", 2 * k_image_size)).value());
    CHECK_FALSE(rig.blk->set_backend(other));
    CHECK(rig.blk->backend() == rig.image);
    auto same = std::shared_ptr<disk::FileImage>(disk::FileImage::open(make_image(rig.dir.path / "same.img")).value());
    REQUIRE(rig.blk->set_backend(same));
    rig.put(k_data_gpa, pattern(512, 77));
    REQUIRE(rig.request(BlkDevice::k_type_out, 1, 512));
    CHECK(rig.status() == BlkDevice::k_status_ok);
    CHECK(file_bytes(rig.dir.path / "same.img", 512, 512) == pattern(512, 77));
    CHECK(rig.image_bytes(512, 512) == rig.expected_image(512, 512));
}

TEST_CASE("virtio-blk: state round trip, and bad state refused without a change", "[virtio][blk]") {
    Rig rig;
    rig.start();
    auto saved = rig.transport->save_state();
    Rig other;
    other.start();
    REQUIRE(other.transport->check_state(saved));
    REQUIRE(other.transport->load_state(saved));
    CHECK(other.transport->save_state().bytes == saved.bytes);

    // The device's own bytes, as the transport nests them: u64 capacity, then the serial.
    const BlkDevice& device = *rig.blk;
    auto bytes = device.save_state();
    CHECK(device.check_state(BlkDevice::k_state_version, bytes));
    CHECK_FALSE(device.check_state(2, bytes));
    auto truncated = bytes;
    truncated.pop_back();
    CHECK_FALSE(device.check_state(BlkDevice::k_state_version, truncated));
    auto trailing = bytes;
    trailing.push_back(std::byte{0});
    CHECK_FALSE(device.check_state(BlkDevice::k_state_version, trailing));
    auto other_size = bytes;
    other_size[7] = std::byte{1};  // capacity + 1
    auto refused = device.check_state(BlkDevice::k_state_version, other_size);
    REQUIRE_FALSE(refused);
    CHECK_THAT(refused.error().message(), Catch::Contains("sectors"));
    // A serial of 21 bytes.
    {
        Frame long_serial(bytes.begin(), bytes.begin() + 8);
        for (uint8_t b : {0, 0, 0, 21})
            long_serial.push_back(std::byte{b});
        for (int i = 0; i < 21; ++i)
            long_serial.push_back(std::byte{'s'});
        CHECK_FALSE(device.check_state(BlkDevice::k_state_version, long_serial));
        CHECK_FALSE(rig.blk->load_state(BlkDevice::k_state_version, long_serial));
    }
    CHECK_FALSE(rig.blk->load_state(BlkDevice::k_state_version, other_size));
    CHECK(rig.blk->save_state() == bytes);  // unchanged

    // A serial that differs is taken (the primary's travels to the secondary).
    Frame renamed(bytes.begin(), bytes.begin() + 8);
    for (uint8_t b : {0, 0, 0, 4})
        renamed.push_back(std::byte{b});
    for (char c : std::string("main"))
        renamed.push_back(std::byte(static_cast<uint8_t>(c)));
    REQUIRE(rig.blk->load_state(BlkDevice::k_state_version, renamed));
    CHECK(rig.blk->serial() == "main");
}

TEST_CASE("FileImage opens a writable raw image and refuses anything else with the reason", "[virtio][blk][image]") {
    TempDir dir;
    auto refused = [](const std::filesystem::path& path) {
        auto opened = disk::FileImage::open(path);
        REQUIRE_FALSE(opened);
        CHECK_THAT(opened.error().message(), Catch::Contains(path.string()));
        return opened.error().message();
    };
    CHECK_THAT(refused(dir.path / "missing.img"), Catch::Contains("no such file"));
    CHECK_THAT(refused(dir.path), Catch::Contains("is a directory"));
    std::ofstream(dir.path / "empty.img").close();
    CHECK_THAT(refused(dir.path / "empty.img"), Catch::Contains("is empty"));
    std::ofstream(dir.path / "odd.img") << std::string(1000, 'x');
    CHECK_THAT(refused(dir.path / "odd.img"), Catch::Contains("1000 bytes, not a multiple of 512"));
    REQUIRE(::mkfifo((dir.path / "fifo").c_str(), 0600) == 0);
    CHECK_THAT(refused(dir.path / "fifo"), Catch::Contains("not a regular file"));

    auto path = make_image(dir.path / "good.img");
    auto image = disk::FileImage::open(path);
    REQUIRE(image);
    CHECK((*image)->size() == k_image_size);
    // A second opener (another daemon on this host) is refused while the first holds it.
    CHECK_THAT(refused(path), Catch::Contains("in use"));
    Frame data = pattern(4096, 9);
    REQUIRE((*image)->write(4096 * 3, data));
    REQUIRE((*image)->flush());
    Frame back(4096);
    REQUIRE((*image)->read(4096 * 3, back));
    CHECK(back == data);
    CHECK(file_bytes(path, 4096 * 3, 4096) == data);
    image->reset();
    CHECK(disk::FileImage::open(path));  // the lock went with the first

    // Read-only: mode bits stop a user without root's override; a read-only file system stops
    // everyone (a read-only bind mount, where this process may make one).
    ::chmod(path.c_str(), 0444);
    if (::geteuid() != 0)
        CHECK_THAT(refused(path), Catch::Contains("cannot be opened for writing"));
    ::chmod(path.c_str(), 0644);
    auto ro = dir.path / "ro";
    std::filesystem::create_directory(ro);
    if (::mount(dir.path.c_str(), ro.c_str(), nullptr, MS_BIND, nullptr) == 0) {
        bool read_only = ::mount(nullptr, ro.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr) == 0;
        if (read_only)
            CHECK_THAT(refused(ro / "good.img"), Catch::Contains("read-only file system"));
        ::umount2(ro.c_str(), MNT_DETACH);
        if (!read_only)
            WARN("no read-only bind mount here: EROFS not tested");
    } else {
        WARN("no bind mount here (" << std::strerror(errno) << "): EROFS not tested");
    }
}

TEST_CASE("virtio-blk: while the admission says no, requests wait in the ring; kick() and resume() take them up",
          "[virtio][blk]") {
    Rig rig;
    rig.start();
    bool admit = false;
    rig.blk->set_admission([&] { return admit; });
    Frame data = pattern(4096, 7);
    rig.put(k_data_gpa, data);
    CHECK_FALSE(rig.request(BlkDevice::k_type_out, 8, 4096));  // not taken: no used element
    CHECK(rig.observed_writes.empty());
    CHECK(rig.image_bytes(8 * 512, 4096) == rig.expected_image(8 * 512, 4096));
    rig.blk->kick();
    CHECK_FALSE(rig.driver.get_used(rig.ring));  // still no
    admit = true;
    rig.blk->kick();
    auto used = rig.driver.get_used(rig.ring);
    REQUIRE(used);
    CHECK(rig.status() == BlkDevice::k_status_ok);
    CHECK(rig.image_bytes(8 * 512, 4096) == data);
    REQUIRE(rig.observed_writes.size() == 1);

    // Held back again, then taken up when the machine resumes the device.
    admit = false;
    rig.put(k_data_gpa, pattern(512, 9));
    CHECK_FALSE(rig.request(BlkDevice::k_type_out, 20, 512));
    rig.blk->quiesce();
    admit = true;
    rig.blk->resume();
    REQUIRE(rig.driver.get_used(rig.ring));
    CHECK(rig.image_bytes(20 * 512, 512) == pattern(512, 9));
    rig.blk->set_admission({});
}
