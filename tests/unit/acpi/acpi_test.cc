// SPDX-License-Identifier: GPL-2.0-or-later
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/acpi/aml.h"
#include "core/acpi/pm.h"
#include "core/acpi/tables.h"
#include "core/state_io.h"

using namespace colod::core;
using namespace colod::core::acpi;

namespace {

Bytes bytes_of(std::initializer_list<unsigned> values) {
    Bytes out;
    for (unsigned v : values)
        out.push_back(std::byte{static_cast<uint8_t>(v)});
    return out;
}

Bytes repeat(size_t count) { return Bytes(count, std::byte{0xaa}); }

// ---- Reading the tables the way a guest OS does ---------------------------------------------

constexpr uint64_t k_base = 0xe0000;
constexpr uint64_t k_room = 0x20000;

struct Blob {
    const Tables& tables;
    uint64_t base;

    // The offset of guest-physical `gpa` in the blob; the `size` bytes there must be inside it.
    size_t at(uint64_t gpa, size_t size) const {
        REQUIRE(gpa >= base);
        REQUIRE(gpa - base + size <= tables.bytes.size());
        return static_cast<size_t>(gpa - base);
    }
    uint64_t le(size_t offset, unsigned n) const {
        REQUIRE(offset + n <= tables.bytes.size());
        uint64_t v = 0;
        for (unsigned i = 0; i < n; ++i)
            v |= static_cast<uint64_t>(tables.bytes[offset + i]) << (8 * i);
        return v;
    }
    uint8_t u8(size_t offset) const { return static_cast<uint8_t>(le(offset, 1)); }
    uint16_t u16(size_t offset) const { return static_cast<uint16_t>(le(offset, 2)); }
    uint32_t u32(size_t offset) const { return static_cast<uint32_t>(le(offset, 4)); }
    uint64_t u64(size_t offset) const { return le(offset, 8); }
    std::string text(size_t offset, size_t n) const {
        REQUIRE(offset + n <= tables.bytes.size());
        // SAFETY: bytes viewed as chars, inside the blob (checked above).
        return std::string(reinterpret_cast<const char*>(tables.bytes.data() + offset), n);
    }
    uint8_t sum(size_t offset, size_t n) const {
        REQUIRE(offset + n <= tables.bytes.size());
        uint8_t s = 0;
        for (size_t i = 0; i < n; ++i)
            s = static_cast<uint8_t>(s + static_cast<uint8_t>(tables.bytes[offset + i]));
        return s;
    }
    // A table with a standard header at `gpa`: checks signature, length, checksum and the ids
    // and returns its offset in the blob.
    size_t table(uint64_t gpa, std::string_view signature) const {
        const size_t off = at(gpa, 36);
        INFO("table " << signature << " at " << std::hex << gpa);
        CHECK(text(off, 4) == signature);
        const uint32_t length = u32(off + 4);
        REQUIRE(length >= 36);
        at(gpa, length);
        CHECK(sum(off, length) == 0);
        CHECK(text(off + 10, 6) == "COLOD ");
        CHECK(text(off + 16, 8) == "COLODVMM");
        CHECK(text(off + 28, 4) == "COLO");
        return off;
    }
    Bytes slice(size_t offset, size_t n) const {
        const auto first = tables.bytes.begin() + static_cast<long>(offset);
        return Bytes(first, first + static_cast<long>(n));
    }
};

struct Walk {
    size_t rsdp, xsdt, rsdt, fadt, madt, facs, dsdt;
};

Walk walk(const Blob& b) {
    Walk w{};
    w.rsdp = b.at(b.tables.rsdp_address, 36);
    CHECK(b.text(w.rsdp, 8) == "RSD PTR ");
    CHECK(b.sum(w.rsdp, 20) == 0);
    CHECK(b.sum(w.rsdp, 36) == 0);
    CHECK(b.u8(w.rsdp + 15) == 2);
    CHECK(b.u32(w.rsdp + 20) == 36);
    w.rsdt = b.table(b.u32(w.rsdp + 16), "RSDT");
    w.xsdt = b.table(b.u64(w.rsdp + 24), "XSDT");

    REQUIRE(b.u32(w.xsdt + 4) == 36 + 2 * 8);
    REQUIRE(b.u32(w.rsdt + 4) == 36 + 2 * 4);
    const uint64_t fadt_gpa = b.u64(w.xsdt + 36);
    const uint64_t madt_gpa = b.u64(w.xsdt + 44);
    CHECK(b.u32(w.rsdt + 36) == fadt_gpa);
    CHECK(b.u32(w.rsdt + 40) == madt_gpa);
    w.fadt = b.table(fadt_gpa, "FACP");
    w.madt = b.table(madt_gpa, "APIC");

    const uint64_t facs_gpa = b.u64(w.fadt + 132);
    const uint64_t dsdt_gpa = b.u64(w.fadt + 140);
    CHECK(b.u32(w.fadt + 36) == facs_gpa);
    CHECK(b.u32(w.fadt + 40) == dsdt_gpa);
    CHECK(facs_gpa % 64 == 0);
    w.facs = b.at(facs_gpa, 64);
    CHECK(b.text(w.facs, 4) == "FACS");
    CHECK(b.u32(w.facs + 4) == 64);
    w.dsdt = b.table(dsdt_gpa, "DSDT");
    return w;
}

TableLayout sample_layout(uint32_t vcpus = 4) {
    TableLayout layout;
    layout.vcpus = vcpus;
    layout.virtio_mmio = {{0xd000'0000, 0x200, 5}, {0xd000'1000, 0x200, 16}};
    return layout;
}

bool contains(const Bytes& haystack, const Bytes& needle) {
    return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) != haystack.end();
}

// ---- The PM device ---------------------------------------------------------------------------

struct Pm {
    int power_offs = 0;
    int resets = 0;
    AcpiPm pm{[this] { ++power_offs; }, [this] { ++resets; }};

    uint32_t in(uint16_t port, size_t size) {
        std::byte data[4]{};
        pm.pio_read(port, std::span(data, size));
        uint32_t v = 0;
        for (size_t i = 0; i < size; ++i)
            v |= static_cast<uint32_t>(data[i]) << (8 * i);
        return v;
    }
    void out(uint16_t port, size_t size, uint32_t value) {
        std::byte data[4]{};
        for (size_t i = 0; i < size; ++i)
            data[i] = std::byte{static_cast<uint8_t>(value >> (8 * i))};
        pm.pio_write(port, std::span<const std::byte>(data, size));
    }
};

DeviceState pm_state(uint16_t sts, uint16_t en, uint16_t cnt) {
    StateWriter w;
    w.put(sts);
    w.put(en);
    w.put(cnt);
    return DeviceState{"acpi-pm", AcpiPm::k_state_version, w.take()};
}

constexpr uint16_t k_slp_en = k_pm1_cnt_slp_en;
constexpr uint16_t slp_typ(unsigned typ) { return static_cast<uint16_t>(typ << k_pm1_cnt_slp_typ_shift); }

// ---- iasl ------------------------------------------------------------------------------------

bool have_iasl() { return std::system("command -v iasl >/dev/null 2>&1") == 0; }

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

// Runs `command` in a fresh temporary directory holding `input` as `file`; returns its exit
// status, what it printed, and the contents of `output` afterwards.
struct Run {
    int status = -1;
    std::string log;
    std::string output;
};
Run run_in_temp_dir(const std::string& file, const std::string& input, const std::string& command,
                    const std::string& output) {
    std::string dir_template = (std::filesystem::temp_directory_path() / "colod-acpi-XXXXXX").string();
    REQUIRE(mkdtemp(dir_template.data()) != nullptr);
    const std::filesystem::path dir = dir_template;
    {
        std::ofstream out(dir / file, std::ios::binary);
        out.write(input.data(), static_cast<std::streamsize>(input.size()));
    }
    Run run;
    const std::string line = "cd '" + dir.string() + "' && " + command + " >iasl.log 2>&1";
    run.status = std::system(line.c_str());
    run.log = read_file(dir / "iasl.log");
    run.output = read_file(dir / output);
    std::filesystem::remove_all(dir);
    return run;
}

// Disassembles one table with iasl -d; `output` is the .dsl listing.
Run disassemble(const Bytes& table, const std::string& stem) {
    // SAFETY: the table's bytes viewed as chars, to be written to a file.
    return run_in_temp_dir(stem + ".dat", std::string(reinterpret_cast<const char*>(table.data()), table.size()),
                           "iasl -d " + stem + ".dat", stem + ".dsl");
}

// Compiles an ASL listing with every optimisation off (-oa), so that the AML says exactly what
// the listing does; `output` is the AML table.
Run compile(const std::string& listing) { return run_in_temp_dir("t.dsl", listing, "iasl -oa t.dsl", "t.aml"); }

// What iasl reports about a table it reads: nothing, when the table is right.
void check_clean(const Run& run) {
    CHECK(run.status == 0);
    for (const char* word : {"rror", "arning", "ncorrect", "nvalid"}) {
        INFO(word);
        CHECK(run.log.find(word) == std::string::npos);
        CHECK(run.output.find(word) == std::string::npos);
    }
}

}  // namespace

// ---- AML ---------------------------------------------------------------------------------------

TEST_CASE("AML PkgLength uses 1 to 4 bytes at the right boundaries") {
    CHECK(pkg_length(0) == bytes_of({0x00}));
    CHECK(pkg_length(63) == bytes_of({0x3f}));
    CHECK(pkg_length(64) == bytes_of({0x40, 0x04}));
    CHECK(pkg_length(0x1234 & 0xfff) == bytes_of({0x44, 0x23}));
    CHECK(pkg_length(4095) == bytes_of({0x4f, 0xff}));
    CHECK(pkg_length(4096) == bytes_of({0x80, 0x00, 0x01}));
    CHECK(pkg_length(0xfffff) == bytes_of({0x8f, 0xff, 0xff}));
    CHECK(pkg_length(0x100000) == bytes_of({0xc0, 0x00, 0x00, 0x01}));
    CHECK(pkg_length(k_max_pkg_length) == bytes_of({0xcf, 0xff, 0xff, 0xff}));
}

TEST_CASE("AML PkgLength of a body counts its own bytes") {
    // 62 + 1 = 63 fits one byte; 63 + 1 = 64 does not, so two bytes: 63 + 2 = 65.
    const Bytes one = with_pkg_length(repeat(62));
    CHECK(one.size() == 63);
    CHECK(one.front() == std::byte{63});
    const Bytes two = with_pkg_length(repeat(63));
    CHECK(two.size() == 65);
    CHECK(Bytes(two.begin(), two.begin() + 2) == pkg_length(65));
    // 4093 + 2 = 4095 still fits two bytes; 4094 needs three: 4097.
    const Bytes edge = with_pkg_length(repeat(4093));
    CHECK(Bytes(edge.begin(), edge.begin() + 2) == pkg_length(4095));
    const Bytes three = with_pkg_length(repeat(4094));
    CHECK(three.size() == 4097);
    CHECK(Bytes(three.begin(), three.begin() + 3) == pkg_length(4097));
}

TEST_CASE("AML integers take the shortest encoding") {
    CHECK(integer(0) == bytes_of({0x00}));
    CHECK(integer(1) == bytes_of({0x01}));
    CHECK(integer(2) == bytes_of({0x0a, 0x02}));
    CHECK(integer(0xff) == bytes_of({0x0a, 0xff}));
    CHECK(integer(0x100) == bytes_of({0x0b, 0x00, 0x01}));
    CHECK(integer(0xffff) == bytes_of({0x0b, 0xff, 0xff}));
    CHECK(integer(0x10000) == bytes_of({0x0c, 0x00, 0x00, 0x01, 0x00}));
    CHECK(integer(0xffffffff) == bytes_of({0x0c, 0xff, 0xff, 0xff, 0xff}));
    CHECK(integer(0x1'0000'0000) == bytes_of({0x0e, 0, 0, 0, 0, 1, 0, 0, 0}));
}

TEST_CASE("AML names, strings and EISA ids") {
    CHECK(name_string("_SB") == bytes_of({'_', 'S', 'B', '_'}));
    CHECK(name_string("\\_SB_") == bytes_of({'\\', '_', 'S', 'B', '_'}));
    CHECK(name_string("\\_SB.VR00") == bytes_of({'\\', 0x2e, '_', 'S', 'B', '_', 'V', 'R', '0', '0'}));
    CHECK(name_string("A.B.C") == bytes_of({0x2f, 3, 'A', '_', '_', '_', 'B', '_', '_', '_', 'C', '_', '_', '_'}));
    CHECK(name_string("^COM1") == bytes_of({'^', 'C', 'O', 'M', '1'}));
    CHECK(name_string("\\") == bytes_of({'\\', 0x00}));
    CHECK(string("LNRO0005") == bytes_of({0x0d, 'L', 'N', 'R', 'O', '0', '0', '0', '5', 0}));
    // EISAID("PNP0501") is 0x0105D041, as every PC firmware has it.
    CHECK(eisa_id("PNP0501") == integer(0x0105d041));
    CHECK(name("_UID", integer(7)) == bytes_of({0x08, '_', 'U', 'I', 'D', 0x0a, 7}));
}

TEST_CASE("AML packages, scopes and devices") {
    CHECK(package({integer(5), integer(5), integer(0), integer(0)}) ==
          bytes_of({0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00}));
    CHECK(scope("\\_SB_", {}) == bytes_of({0x10, 0x06, '\\', '_', 'S', 'B', '_'}));
    CHECK(device("VR00", {name("_UID", integer(0))}) ==
          bytes_of({0x5b, 0x82, 0x0b, 'V', 'R', '0', '0', 0x08, '_', 'U', 'I', 'D', 0x00}));
    CHECK(buffer(bytes_of({0x79, 0x00})) == bytes_of({0x11, 0x05, 0x0a, 0x02, 0x79, 0x00}));
}

TEST_CASE("AML resource templates") {
    const Bytes rt = ResourceTemplate()
                         .memory32_fixed(MemoryAccess::ReadWrite, 0xd0001000, 0x200)
                         .interrupt(Trigger::Level, Polarity::ActiveHigh, Sharing::Exclusive, 17)
                         .io(0x3f8, 0x3f8, 0, 8)
                         .to_buffer();
    const Bytes descriptors = bytes_of({
        0x86, 0x09, 0x00, 0x01, 0x00, 0x10, 0x00, 0xd0, 0x00, 0x02, 0x00, 0x00,  // Memory32Fixed
        0x89, 0x06, 0x00, 0x01, 0x01, 0x11, 0x00, 0x00, 0x00,                    // Interrupt
        0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08,                          // IO
        0x79, 0x00,                                                              // end tag
    });
    CHECK(rt == buffer(descriptors));
    // The interrupt flags: consumer always; edge, active low and shared each add their bit.
    // (Buffer: BufferOp, PkgLength, BytePrefix, size, then the descriptor: tag, 2 length bytes.)
    auto flags = [](Trigger t, Polarity p, Sharing s) {
        return static_cast<unsigned>(ResourceTemplate().interrupt(t, p, s, 3).to_buffer()[7]);
    };
    CHECK(flags(Trigger::Level, Polarity::ActiveHigh, Sharing::Exclusive) == 0x01);
    CHECK(flags(Trigger::Edge, Polarity::ActiveHigh, Sharing::Exclusive) == 0x03);
    CHECK(flags(Trigger::Level, Polarity::ActiveLow, Sharing::Exclusive) == 0x05);
    CHECK(flags(Trigger::Level, Polarity::ActiveHigh, Sharing::Shared) == 0x09);
}

// ---- Tables ------------------------------------------------------------------------------------

TEST_CASE("ACPI tables: RSDP at the base, every pointer inside the blob, every checksum 0") {
    auto tables = build_tables(sample_layout(), k_base, k_room);
    REQUIRE(tables.ok());
    CHECK(tables->rsdp_address == k_base);
    CHECK(tables->bytes.size() <= k_room);
    Blob b{*tables, k_base};
    walk(b);
}

TEST_CASE("ACPI tables: the FADT describes a classic ACPI PC with AcpiPm's registers") {
    auto tables = build_tables(sample_layout(), k_base, k_room);
    REQUIRE(tables.ok());
    Blob b{*tables, k_base};
    const Walk w = walk(b);
    const size_t f = w.fadt;
    CHECK(b.u32(f + 4) == 276);
    CHECK(b.u8(f + 8) == 6);
    CHECK(b.u16(f + 46) == 9);     // SCI_INT
    CHECK(b.u32(f + 48) == 0);     // SMI_CMD: always in ACPI mode
    CHECK(b.u32(f + 56) == 0x600); // PM1a_EVT_BLK
    CHECK(b.u32(f + 60) == 0);
    CHECK(b.u32(f + 64) == 0x604); // PM1a_CNT_BLK
    CHECK(b.u32(f + 68) == 0);
    CHECK(b.u32(f + 76) == 0);     // no PM timer
    CHECK(b.u32(f + 80) == 0);     // no GPE blocks
    CHECK(b.u32(f + 84) == 0);
    CHECK(b.u8(f + 88) == 4);      // PM1_EVT_LEN
    CHECK(b.u8(f + 89) == 2);      // PM1_CNT_LEN
    CHECK(b.u8(f + 91) == 0);      // PM_TMR_LEN
    CHECK(b.u8(f + 92) == 0);      // GPE0_BLK_LEN
    const uint16_t boot = b.u16(f + 109);
    CHECK((boot & 0x0001) != 0);  // legacy devices
    CHECK((boot & 0x0002) == 0);  // no 8042
    CHECK((boot & 0x0018) == 0);  // MSI and ASPM not forbidden
    const uint32_t flags = b.u32(f + 112);
    CHECK((flags & (1u << 0)) != 0);   // WBINVD
    CHECK((flags & (1u << 10)) != 0);  // RESET_REG_SUP
    CHECK((flags & (1u << 20)) == 0);  // not hardware-reduced
    // RESET_REG: system I/O, 8 bits at 0x608; RESET_VALUE 1.
    CHECK(b.u8(f + 116) == 1);
    CHECK(b.u8(f + 117) == 8);
    CHECK(b.u64(f + 120) == 0x608);
    CHECK(b.u8(f + 128) == 1);
    // X_PM1a_EVT_BLK and X_PM1a_CNT_BLK agree with the 32-bit fields.
    CHECK(b.u8(f + 148) == 1);
    CHECK(b.u8(f + 149) == 32);
    CHECK(b.u64(f + 152) == 0x600);
    CHECK(b.u8(f + 172) == 1);
    CHECK(b.u8(f + 173) == 16);
    CHECK(b.u64(f + 176) == 0x604);
    CHECK(b.u64(f + 160 + 4) == 0);  // X_PM1b_EVT_BLK
    CHECK(b.u64(f + 208 + 4) == 0);  // X_PM_TMR_BLK
    CHECK(b.u64(f + 220 + 4) == 0);  // X_GPE0_BLK
    // The FADT and the device agree.
    CHECK(b.u32(f + 56) == k_pm1a_evt_port);
    CHECK(b.u32(f + 64) == k_pm1a_cnt_port);
    CHECK(b.u64(f + 120) == k_reset_port);
}

TEST_CASE("ACPI tables: the MADT lists every vCPU, the IOAPIC, the overrides and the NMI") {
    for (uint32_t vcpus : {1u, 4u, 255u}) {
        INFO(vcpus << " vCPUs");
        auto tables = build_tables(sample_layout(vcpus), k_base, k_room);
        REQUIRE(tables.ok());
        Blob b{*tables, k_base};
        const Walk w = walk(b);
        const size_t m = w.madt;
        CHECK(b.u32(m + 36) == 0xfee00000);
        CHECK(b.u32(m + 40) == 1);  // PCAT_COMPAT
        const size_t end = m + b.u32(m + 4);
        std::set<uint32_t> apic_ids;
        std::vector<std::pair<uint32_t, uint32_t>> overrides;  // (irq, gsi)
        std::vector<uint16_t> override_flags;
        int ioapics = 0, nmis = 0;
        size_t at = m + 44;
        while (at < end) {
            const uint8_t type = b.u8(at), length = b.u8(at + 1);
            REQUIRE(length >= 2);
            REQUIRE(at + length <= end);
            switch (type) {
            case 0:
                REQUIRE(length == 8);
                CHECK(b.u8(at + 2) == b.u8(at + 3));  // UID = APIC ID
                CHECK(b.u32(at + 4) == 1);            // enabled
                CHECK(apic_ids.insert(b.u8(at + 3)).second);
                break;
            case 1:
                REQUIRE(length == 12);
                ++ioapics;
                CHECK(b.u8(at + 2) == vcpus);
                CHECK(b.u32(at + 4) == 0xfec00000);
                CHECK(b.u32(at + 8) == 0);
                break;
            case 2:
                REQUIRE(length == 10);
                CHECK(b.u8(at + 2) == 0);
                overrides.emplace_back(b.u8(at + 3), b.u32(at + 4));
                override_flags.push_back(b.u16(at + 8));
                break;
            case 4:
                REQUIRE(length == 6);
                ++nmis;
                CHECK(b.u8(at + 2) == 0xff);
                CHECK(b.u8(at + 5) == 1);  // LINT1
                break;
            default:
                FAIL("unexpected MADT entry type " << unsigned(type));
            }
            at += length;
        }
        CHECK(at == end);
        CHECK(apic_ids.size() == vcpus);
        CHECK(*apic_ids.begin() == 0);
        CHECK(*apic_ids.rbegin() == vcpus - 1);
        CHECK(ioapics == 1);
        CHECK(nmis == 1);
        REQUIRE(overrides.size() == 2);
        CHECK(overrides[0] == std::pair<uint32_t, uint32_t>{0, 0});  // KVM's default routing
        CHECK(override_flags[0] == 0);
        CHECK(overrides[1] == std::pair<uint32_t, uint32_t>{9, 9});
        CHECK(override_flags[1] == 0x000d);  // level, active high
    }
}

TEST_CASE("ACPI tables: a rerouted timer shows as IRQ 0 -> GSI 2") {
    TableLayout layout = sample_layout();
    layout.timer_gsi = 2;
    auto tables = build_tables(layout, k_base, k_room);
    REQUIRE(tables.ok());
    Blob b{*tables, k_base};
    const Walk w = walk(b);
    const Bytes override0 = bytes_of({2, 10, 0, 0, 2, 0, 0, 0, 0, 0});
    CHECK(contains(b.slice(w.madt, b.u32(w.madt + 4)), override0));
}

TEST_CASE("ACPI tables: the DSDT holds \\_S5_ and a device per virtio-mmio window") {
    auto tables = build_tables(sample_layout(), k_base, k_room);
    REQUIRE(tables.ok());
    Blob b{*tables, k_base};
    const Walk w = walk(b);
    const Bytes dsdt = b.slice(w.dsdt, b.u32(w.dsdt + 4));
    const TableLayout layout = sample_layout();
    CHECK(b.u8(w.dsdt + 8) == 2);
    CHECK(contains(dsdt, name("_S5_", package({integer(5), integer(5), integer(0), integer(0)}))));
    for (size_t i = 0; i < 2; ++i) {
        const auto& dev = layout.virtio_mmio[i];
        const auto base = static_cast<uint32_t>(dev.base);
        const Bytes crs = name("_CRS", ResourceTemplate()
                                           .memory32_fixed(MemoryAccess::ReadWrite, base, dev.size)
                                           .interrupt(Trigger::Level, Polarity::ActiveHigh, Sharing::Exclusive, dev.gsi)
                                           .to_buffer());
        CHECK(contains(dsdt, device(i == 0 ? "VR00" : "VR01",
                                    {name("_HID", string("LNRO0005")), name("_UID", integer(i)), crs})));
    }
}

TEST_CASE("ACPI tables: an empty virtio list and alignment of an odd base") {
    TableLayout layout;
    layout.vcpus = 2;
    auto tables = build_tables(layout, 0x9'fc10, 0x1000);
    REQUIRE(tables.ok());
    Blob b{*tables, 0x9'fc10};
    CHECK(tables->rsdp_address == 0x9'fc10);
    walk(b);
}

TEST_CASE("ACPI tables: refused inputs") {
    auto refused = [](const TableLayout& layout, uint64_t base, uint64_t room, std::string_view words) {
        auto tables = build_tables(layout, base, room);
        REQUIRE_FALSE(tables.ok());
        CHECK(tables.error().code() == colod::base::Errc::Invalid);
        INFO(tables.error().message());
        CHECK(tables.error().message().find(words) != std::string::npos);
    };
    refused(sample_layout(0), k_base, k_room, "0 vCPUs");
    refused(sample_layout(256), k_base, k_room, "256 vCPUs");
    refused(sample_layout(4), k_base, 512, "bytes");
    // 255 vCPUs need 255 * 8 bytes of MADT alone: too many for 2 KiB.
    refused(sample_layout(255), k_base, 2048, "bytes");
    refused(sample_layout(), k_base + 8, k_room, "aligned");
    refused(sample_layout(), 0xffff'ff00, k_room, "4 GiB");
    TableLayout bad = sample_layout();
    bad.virtio_mmio[1].gsi = 24;
    refused(bad, k_base, k_room, "GSI 24");
    bad.virtio_mmio[1].gsi = 9;
    refused(bad, k_base, k_room, "GSI 9");
    bad.virtio_mmio[1].gsi = 5;  // the same as device 0
    refused(bad, k_base, k_room, "GSI 5");
    bad = sample_layout();
    bad.virtio_mmio[0].base = 0xffff'ff00;
    refused(bad, k_base, k_room, "below 4 GiB");
    bad = sample_layout();
    bad.virtio_mmio.resize(257, {0xd000'0000, 0x200, 5});
    refused(bad, k_base, k_room, "257 virtio-mmio");
}

TEST_CASE("ACPI tables: iasl reads them back without a complaint") {
    if (!have_iasl()) {
        WARN("iasl is not installed (Debian: acpica-tools): skipping the disassembly check");
        return;
    }
    auto tables = build_tables(sample_layout(), k_base, k_room);
    REQUIRE(tables.ok());
    Blob b{*tables, k_base};
    const Walk w = walk(b);

    const Bytes dsdt_bytes = b.slice(w.dsdt, b.u32(w.dsdt + 4));
    const Run dsdt = disassemble(dsdt_bytes, "dsdt");
    INFO(dsdt.log << dsdt.output);
    check_clean(dsdt);
    CHECK(dsdt.output.find("Name (_S5, Package (0x04)") != std::string::npos);
    CHECK(dsdt.output.find("Scope (\\_SB)") != std::string::npos);
    CHECK(dsdt.output.find("Device (VR00)") != std::string::npos);
    CHECK(dsdt.output.find("Device (VR01)") != std::string::npos);
    CHECK(dsdt.output.find("Name (_HID, \"LNRO0005\")") != std::string::npos);
    CHECK(dsdt.output.find("0xD0000000,         // Address Base") != std::string::npos);  // VR00
    CHECK(dsdt.output.find("0xD0001000,         // Address Base") != std::string::npos);  // VR01
    CHECK(dsdt.output.find("Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive") != std::string::npos);
    CHECK(dsdt.output.find("0x00000005,") != std::string::npos);  // VR00's GSI
    CHECK(dsdt.output.find("0x00000010,") != std::string::npos);  // VR01's GSI (16)
    CHECK(dsdt.output.find("EisaId (\"PNP0501\")") != std::string::npos);

    // Compiled back without optimisations, the listing gives the very same AML: every encoding
    // this encoder chose is the one the reference compiler chooses.
    const Run again = compile(dsdt.output);
    INFO(again.log);
    REQUIRE(again.status == 0);
    REQUIRE(again.output.size() == dsdt_bytes.size());
    // SAFETY: the compiled table is `output`'s bytes; its size was checked just above.
    const auto* compiled = reinterpret_cast<const std::byte*>(again.output.data());
    CHECK(std::equal(dsdt_bytes.begin() + 36, dsdt_bytes.end(), compiled + 36));

    // The data tables: iasl checks lengths, checksums and field values as it decodes them.
    for (auto [offset, stem] :
         {std::pair{w.fadt, "facp"}, std::pair{w.madt, "apic"}, std::pair{w.xsdt, "xsdt"}, std::pair{w.rsdt, "rsdt"}}) {
        const Run table = disassemble(b.slice(offset, b.u32(offset + 4)), stem);
        INFO(stem << ": " << table.log << table.output);
        check_clean(table);
    }
    const Run facs = disassemble(b.slice(w.facs, 64), "facs");
    INFO(facs.log << facs.output);
    check_clean(facs);

    // The checks above have teeth: a table with one byte wrong draws a complaint.
    Bytes broken = b.slice(w.madt, b.u32(w.madt + 4));
    broken[40] ^= std::byte{1};
    const Run bad = disassemble(broken, "apic");
    CHECK(bad.output.find("Incorrect checksum") != std::string::npos);
}

// ---- The PM device ---------------------------------------------------------------------------

TEST_CASE("AcpiPm: S5 powers off once, other sleep types do not") {
    Pm h;
    CHECK((h.in(0x604, 2) & k_pm1_cnt_sci_en) != 0);  // always in ACPI mode
    // ACPICA's order: SLP_TYP alone, then SLP_TYP | SLP_EN.
    h.out(0x604, 2, slp_typ(5));
    CHECK(h.power_offs == 0);
    CHECK(h.in(0x604, 2) == (slp_typ(5) | k_pm1_cnt_sci_en));
    h.out(0x604, 2, slp_typ(5) | k_slp_en);
    CHECK(h.power_offs == 1);
    CHECK((h.in(0x604, 2) & k_slp_en) == 0);  // SLP_EN is write-only
    for (unsigned typ = 0; typ < 8; ++typ) {
        if (typ == 5)
            continue;
        h.out(0x604, 2, slp_typ(typ) | k_slp_en);
    }
    CHECK(h.power_offs == 1);
    CHECK(h.resets == 0);
}

TEST_CASE("AcpiPm: PM1_CNT written a byte at a time and in a dword") {
    Pm h;
    h.out(0x604, 1, 0x02);  // BM_RLD
    CHECK(h.in(0x604, 2) == 0x0003);
    h.out(0x605, 1, (slp_typ(5) | k_slp_en) >> 8);
    CHECK(h.power_offs == 1);
    CHECK(h.in(0x604, 2) == (slp_typ(5) | 0x0003));
    CHECK(h.in(0x605, 1) == (slp_typ(5) >> 8));
    // A dword at 0x602 writes PM1_EN and PM1_CNT together.
    h.out(0x602, 4, (static_cast<uint32_t>(slp_typ(5) | k_slp_en) << 16) | 0x0020);
    CHECK(h.power_offs == 2);
    CHECK(h.in(0x602, 2) == 0x0020);
}

TEST_CASE("AcpiPm: the reset register") {
    Pm h;
    CHECK(h.in(0x608, 1) == 0);
    h.out(0x608, 1, 2);
    CHECK(h.resets == 0);
    h.out(0x608, 1, 1);
    CHECK(h.resets == 1);
    CHECK(h.power_offs == 0);
}

TEST_CASE("AcpiPm: PM1_EN keeps its defined bits, PM1_STS clears on writing ones") {
    Pm h;
    h.out(0x602, 2, 0xffff);
    CHECK(h.in(0x602, 2) == k_pm1_en_bits);
    h.out(0x602, 1, 0x20);  // low byte only: GBL_EN; the high byte stays
    CHECK(h.in(0x602, 2) == 0x4720);

    REQUIRE(h.pm.load_state(pm_state(0x8121, 0, 0)).ok());
    CHECK(h.in(0x600, 2) == 0x8121);
    h.out(0x600, 2, 0x0100);  // clears PWRBTN_STS only
    CHECK(h.in(0x600, 2) == 0x8021);
    h.out(0x600, 2, 0x0000);  // writing zeros changes nothing
    CHECK(h.in(0x600, 2) == 0x8021);
    h.out(0x601, 1, 0x80);    // WAK_STS through the high byte
    CHECK(h.in(0x600, 2) == 0x0021);
    CHECK(h.in(0x600, 4) == 0x0000'0021);  // dword: status and enable (0)
    CHECK(h.power_offs == 0);
    CHECK(h.resets == 0);
}

TEST_CASE("AcpiPm: save, load, save gives the same state") {
    Pm a;
    a.out(0x602, 2, 0x0121);
    a.out(0x604, 2, slp_typ(3) | 0x0002);
    const DeviceState saved = a.pm.save_state();
    CHECK(saved.name == "acpi-pm");
    CHECK(saved.version == 1);
    CHECK(saved.bytes.size() == 6);

    Pm b;
    REQUIRE(b.pm.check_state(saved).ok());
    REQUIRE(b.pm.load_state(saved).ok());
    const DeviceState again = b.pm.save_state();
    CHECK(again.bytes == saved.bytes);
    CHECK(b.in(0x602, 2) == 0x0121);
    CHECK(b.in(0x604, 2) == (slp_typ(3) | 0x0003));
    // Loading again, in place, is fine.
    REQUIRE(b.pm.load_state(saved).ok());
    CHECK(b.pm.save_state().bytes == saved.bytes);
}

TEST_CASE("AcpiPm: malformed state is refused and changes nothing") {
    Pm h;
    h.out(0x602, 2, 0x0020);
    h.out(0x604, 2, slp_typ(2));
    const Bytes before = h.pm.save_state().bytes;

    DeviceState wrong_version = pm_state(0, 0, 0);
    wrong_version.version = 2;
    DeviceState truncated = pm_state(0, 0, 0);
    truncated.bytes.pop_back();
    DeviceState trailing = pm_state(0, 0, 0);
    trailing.bytes.push_back(std::byte{0});
    for (const DeviceState& bad : {wrong_version, truncated, trailing, pm_state(0x0002, 0, 0), pm_state(0, 0x0002, 0),
                                   pm_state(0, 0, k_pm1_cnt_sci_en), pm_state(0, 0, k_slp_en)}) {
        CHECK_FALSE(h.pm.check_state(bad).ok());
        CHECK_FALSE(h.pm.load_state(bad).ok());
        CHECK(h.pm.save_state().bytes == before);
    }
}
