// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/acpi/tables.h"

#include <algorithm>
#include <string_view>

#include <fmt/format.h>

#include "core/acpi/aml.h"
#include "core/acpi/pm.h"
#include "core/platform.h"

namespace colod::core::acpi {

namespace {

constexpr size_t k_header_size = 36;
constexpr size_t k_rsdp_size = 36;
constexpr size_t k_facs_size = 64;
constexpr size_t k_fadt_size = 276;  // FADT revision 6 (ACPI 6.0 and later)
constexpr uint64_t k_4gib = 0x1'0000'0000;

// Generic Address Structure address space ids and access sizes (ACPI 6.x, 5.2.3.2).
constexpr uint8_t k_gas_system_io = 1;
enum class Access : uint8_t { Undefined = 0, Byte = 1, Word = 2, Dword = 3 };

// FADT Flags (ACPI 6.x, table 5.10).
constexpr uint32_t k_fadt_wbinvd = 1u << 0;
constexpr uint32_t k_fadt_proc_c1 = 1u << 2;
constexpr uint32_t k_fadt_pwr_button = 1u << 4;  // set: no fixed-feature power button
constexpr uint32_t k_fadt_slp_button = 1u << 5;  // set: no fixed-feature sleep button
constexpr uint32_t k_fadt_fix_rtc = 1u << 6;     // set: no RTC wake status in PM1
constexpr uint32_t k_fadt_reset_reg_sup = 1u << 10;
// IA-PC boot architecture flags (ACPI 6.x, table 5.11).
constexpr uint16_t k_boot_legacy_devices = 1u << 0;
constexpr uint16_t k_boot_8042 = 1u << 1;
constexpr uint16_t k_boot_no_vga = 1u << 2;
constexpr uint16_t k_boot_no_cmos_rtc = 1u << 5;

// MADT (ACPI 6.x, 5.2.12).
constexpr uint32_t k_madt_pcat_compat = 1u << 0;
constexpr uint8_t k_madt_local_apic = 0;
constexpr uint8_t k_madt_ioapic = 1;
constexpr uint8_t k_madt_source_override = 2;
constexpr uint8_t k_madt_local_apic_nmi = 4;
constexpr uint32_t k_madt_enabled = 1u << 0;
// MPS INTI flags: polarity in bits 0-1, trigger mode in bits 2-3.
constexpr uint16_t k_inti_conforms = 0;
constexpr uint16_t k_inti_active_high = 1;
constexpr uint16_t k_inti_edge = 1 << 2;
constexpr uint16_t k_inti_level = 3 << 2;
constexpr uint8_t k_all_processors = 0xff;

// One table (or the RSDP) being written: little-endian fields appended in order.
class TableWriter {
public:
    void u8(uint8_t v) { m_out.push_back(std::byte{v}); }
    void u16(uint16_t v) { le(v, 2); }
    void u32(uint32_t v) { le(v, 4); }
    void u64(uint64_t v) { le(v, 8); }
    void zeros(size_t count) { m_out.insert(m_out.end(), count, std::byte{0}); }
    // A fixed-width text field (signatures, OEM ids): no terminator.
    void text(std::string_view s, size_t width) {
        for (size_t i = 0; i < width; ++i)
            u8(i < s.size() ? static_cast<uint8_t>(s[i]) : ' ');
    }
    void bytes(const Bytes& b) { m_out.insert(m_out.end(), b.begin(), b.end()); }
    void gas(uint8_t space, uint8_t bit_width, Access access, uint64_t address) {
        u8(space);
        u8(bit_width);
        u8(0);  // bit offset
        u8(static_cast<uint8_t>(access));
        u64(address);
    }
    // The standard header with length and checksum left 0 until finish().
    void header(std::string_view signature, uint8_t revision) {
        text(signature, 4);
        u32(0);
        u8(revision);
        u8(0);
        text(k_oem_id, 6);
        text(k_oem_table_id, 8);
        u32(k_oem_revision);
        text(k_creator_id, 4);
        u32(k_creator_revision);
    }
    size_t size() const { return m_out.size(); }
    // Fills in the header's length and the checksum that makes the table's bytes sum to 0.
    Bytes finish_table() && {
        const auto length = static_cast<uint32_t>(m_out.size());
        for (unsigned i = 0; i < 4; ++i)
            m_out[4 + i] = std::byte{static_cast<uint8_t>(length >> (8 * i))};
        m_out[9] = std::byte{checksum(m_out, 0, m_out.size())};
        return std::move(m_out);
    }
    Bytes take() && { return std::move(m_out); }

    // The byte that makes bytes [from, to) sum to 0 mod 256 (with the byte itself counted 0).
    static uint8_t checksum(const Bytes& b, size_t from, size_t to) {
        uint8_t sum = 0;
        for (size_t i = from; i < to; ++i)
            sum = static_cast<uint8_t>(sum + static_cast<uint8_t>(b[i]));
        return static_cast<uint8_t>(-sum);
    }

private:
    void le(uint64_t v, unsigned n) {
        for (unsigned i = 0; i < n; ++i)
            u8(static_cast<uint8_t>(v >> (8 * i)));
    }
    Bytes m_out;
};

base::Result<void> check_layout(const TableLayout& layout, uint64_t at) {
    if (layout.vcpus == 0 || layout.vcpus > k_max_vcpus)
        return base::Error::make(base::Errc::Invalid, "ACPI tables: {} vCPUs (the MADT describes 1 to {})",
                                 layout.vcpus, k_max_vcpus);
    if (at % 16 != 0)
        return base::Error::make(base::Errc::Invalid,
                                 "ACPI tables: base {:#x} is not 16-byte aligned (the RSDP must be)", at);
    if (layout.timer_gsi >= platform::k_ioapic_pins || layout.timer_gsi == k_sci_irq)
        return base::Error::make(base::Errc::Invalid, "ACPI tables: timer GSI {} is not a free IOAPIC pin",
                                 layout.timer_gsi);
    if (layout.virtio_mmio.size() > k_max_virtio_mmio)
        return base::Error::make(base::Errc::Invalid, "ACPI tables: {} virtio-mmio devices (at most {})",
                                 layout.virtio_mmio.size(), k_max_virtio_mmio);
    std::vector<uint32_t> used{layout.timer_gsi, k_sci_irq, platform::k_irq_com1};
    for (size_t i = 0; i < layout.virtio_mmio.size(); ++i) {
        const auto& dev = layout.virtio_mmio[i];
        if (dev.size == 0 || dev.base >= k_4gib || dev.size > k_4gib - dev.base)
            return base::Error::make(base::Errc::Invalid,
                                     "ACPI tables: virtio-mmio device {} at {:#x}+{:#x} is not a window below 4 GiB", i,
                                     dev.base, dev.size);
        // The DSDT declares every line Exclusive, so no two devices may share one.
        if (dev.gsi >= platform::k_ioapic_pins || std::find(used.begin(), used.end(), dev.gsi) != used.end())
            return base::Error::make(base::Errc::Invalid,
                                     "ACPI tables: virtio-mmio device {} has GSI {}, not a free IOAPIC pin", i,
                                     dev.gsi);
        used.push_back(dev.gsi);
    }
    return base::ok();
}

// The DSDT's AML: \_S5_ and the devices under \_SB.
Bytes dsdt_aml(const TableLayout& layout) {
    std::vector<Bytes> devices;
    // COM1 is on every colod board (core/board.h). Linux drives it through the legacy port
    // probe even without this entry; describing it lets the PNP layer claim its port and IRQ
    // and keeps the tables a full picture of the machine. ISA IRQs are edge, active high.
    devices.push_back(device("COM1", {
        name("_HID", eisa_id("PNP0501")),
        name("_UID", integer(1)),
        name("_CRS", ResourceTemplate()
                         .io(platform::k_port_com1, platform::k_port_com1, 0, 8)
                         .interrupt(Trigger::Edge, Polarity::ActiveHigh, Sharing::Exclusive, platform::k_irq_com1)
                         .to_buffer()),
    }));
    for (size_t i = 0; i < layout.virtio_mmio.size(); ++i) {
        const auto& dev = layout.virtio_mmio[i];
        // No _CCA: x86 is always cache-coherent and Linux assumes so there without one.
        devices.push_back(device(fmt::format("VR{:02X}", i), {
            name("_HID", string("LNRO0005")),
            name("_UID", integer(i)),
            name("_CRS", ResourceTemplate()
                             .memory32_fixed(MemoryAccess::ReadWrite, static_cast<uint32_t>(dev.base), dev.size)
                             .interrupt(Trigger::Level, Polarity::ActiveHigh, Sharing::Exclusive, dev.gsi)
                             .to_buffer()),
        }));
    }
    Bytes aml;
    // \_S5_: SLP_TYPa, SLP_TYPb and two reserved values. Without it Linux does not offer ACPI
    // power off. No other sleep state exists.
    const Bytes s5 = name("_S5_", package({integer(k_slp_typ_s5), integer(k_slp_typ_s5), integer(0), integer(0)}));
    aml.insert(aml.end(), s5.begin(), s5.end());
    const Bytes sb = scope("\\_SB_", devices);
    aml.insert(aml.end(), sb.begin(), sb.end());
    return aml;
}

Bytes build_dsdt(const TableLayout& layout) {
    TableWriter w;
    w.header("DSDT", 2);  // revision 2: 64-bit AML integers
    w.bytes(dsdt_aml(layout));
    return std::move(w).finish_table();
}

Bytes build_madt(const TableLayout& layout) {
    TableWriter w;
    w.header("APIC", 5);  // ACPI 6.x MADT revision
    w.u32(static_cast<uint32_t>(platform::k_lapic_base));
    w.u32(k_madt_pcat_compat);  // KVM's in-kernel 8259 pair is there too; Linux masks it
    for (uint32_t cpu = 0; cpu < layout.vcpus; ++cpu) {
        w.u8(k_madt_local_apic);
        w.u8(8);
        w.u8(static_cast<uint8_t>(cpu));  // ACPI processor UID
        w.u8(static_cast<uint8_t>(cpu));  // APIC ID: colod numbers vCPUs by APIC ID
        w.u32(k_madt_enabled);
    }
    w.u8(k_madt_ioapic);
    w.u8(12);
    w.u8(static_cast<uint8_t>(layout.vcpus));  // any id no CPU has (vcpus <= 255)
    w.u8(0);
    w.u32(static_cast<uint32_t>(platform::k_ioapic_base));
    w.u32(0);  // GSI base
    auto source_override = [&w](uint8_t irq, uint32_t gsi, uint16_t flags) {
        w.u8(k_madt_source_override);
        w.u8(10);
        w.u8(0);  // ISA
        w.u8(irq);
        w.u32(gsi);
        w.u16(flags);
    };
    // IRQ 0 is said explicitly even when it is the identity: the timer's pin is the one
    // mapping that differs between VMMs (see TableLayout::timer_gsi).
    source_override(0, layout.timer_gsi, k_inti_conforms);
    // The SCI is level, active high (ISA's default would be edge).
    source_override(static_cast<uint8_t>(k_sci_irq), k_sci_irq, k_inti_level | k_inti_active_high);
    // NMIs arrive on every processor's LINT1, edge-triggered, active high (as on a PC).
    w.u8(k_madt_local_apic_nmi);
    w.u8(6);
    w.u8(k_all_processors);
    w.u16(k_inti_edge | k_inti_active_high);
    w.u8(1);  // LINT1
    return std::move(w).finish_table();
}

Bytes build_facs() {
    TableWriter w;
    w.text("FACS", 4);
    w.u32(k_facs_size);
    w.u32(0);  // hardware signature: nothing to tell apart across a resume (no S4)
    w.u32(0);  // firmware waking vector: no S3
    w.u32(0);  // global lock: free
    w.u32(0);  // flags: no S4BIOS, no 64-bit wake
    w.u64(0);  // X firmware waking vector
    w.u8(2);   // version (ACPI 4.0 and later)
    w.zeros(3);
    w.u32(0);  // OSPM flags
    w.zeros(24);
    return std::move(w).take();  // the FACS has no checksum
}

Bytes build_fadt(uint64_t facs, uint64_t dsdt) {
    TableWriter w;
    w.header("FACP", 6);
    w.u32(static_cast<uint32_t>(facs));  // 36 FIRMWARE_CTRL
    w.u32(static_cast<uint32_t>(dsdt));  // 40 DSDT
    w.u8(0);                             // 44 reserved (ACPI 1.0 INT_MODEL)
    w.u8(0);                             // 45 preferred PM profile: unspecified
    w.u16(static_cast<uint16_t>(k_sci_irq));  // 46 SCI_INT
    // 48 SMI_CMD 0: no SMI port, the platform is always in ACPI mode (ACPICA then does not try
    // to switch modes, and SCI_EN reads as 1). 52-55 ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ,
    // PSTATE_CNT: unused.
    w.u32(0);
    w.zeros(4);
    w.u32(k_pm1a_evt_port);  // 56 PM1a_EVT_BLK
    w.u32(0);                // 60 PM1b_EVT_BLK
    w.u32(k_pm1a_cnt_port);  // 64 PM1a_CNT_BLK
    w.u32(0);                // 68 PM1b_CNT_BLK
    w.u32(0);                // 72 PM2_CNT_BLK
    // 76 PM_TMR_BLK 0: no PM timer (optional since ACPI 5.0A). Linux keeps time with kvmclock
    // and the TSC; a timer read from the host clock would be one more input to replicate.
    w.u32(0);
    w.u32(0);                // 80 GPE0_BLK: no general-purpose events
    w.u32(0);                // 84 GPE1_BLK
    w.u8(k_pm1a_evt_len);    // 88 PM1_EVT_LEN
    w.u8(k_pm1a_cnt_len);    // 89 PM1_CNT_LEN
    w.u8(0);                 // 90 PM2_CNT_LEN
    w.u8(0);                 // 91 PM_TMR_LEN
    w.u8(0);                 // 92 GPE0_BLK_LEN
    w.u8(0);                 // 93 GPE1_BLK_LEN
    w.u8(0);                 // 94 GPE1_BASE
    w.u8(0);                 // 95 CST_CNT: no _CST notification
    w.u16(101);              // 96 P_LVL2_LAT > 100: no C2
    w.u16(1001);             // 98 P_LVL3_LAT > 1000: no C3
    w.u16(0);                // 100 FLUSH_SIZE (WBINVD works)
    w.u16(0);                // 102 FLUSH_STRIDE
    w.u8(0);                 // 104 DUTY_OFFSET
    w.u8(0);                 // 105 DUTY_WIDTH
    w.u8(0);                 // 106 DAY_ALRM
    w.u8(0);                 // 107 MON_ALRM
    w.u8(0);                 // 108 CENTURY: no CMOS RTC
    // 109 IAPC_BOOT_ARCH. LEGACY_DEVICES: the board has ISA-style devices (COM1, the PIT, the
    // 8259s). No 8042: colod emulates no keyboard controller, and saying so spares Linux
    // probing ports 0x60/0x64. NO_VGA: there is no display. NO_CMOS_RTC: colod emulates no
    // RTC at 0x70 (Linux then registers no rtc_cmos; kvmclock gives it the wall clock). MSI
    // and ASPM bits clear: there is no PCI, so nothing to forbid.
    static_assert((k_boot_8042 & (k_boot_legacy_devices | k_boot_no_vga | k_boot_no_cmos_rtc)) == 0);
    w.u16(k_boot_legacy_devices | k_boot_no_vga | k_boot_no_cmos_rtc);
    w.u8(0);  // 111 reserved
    // 112 Flags. WBINVD works (required since ACPI 2.0) and HLT (C1) works on every CPU. No
    // fixed power or sleep button and no RTC status in PM1, since nothing raises those events.
    // RESET_REG_SUP: the reset register below works.
    w.u32(k_fadt_wbinvd | k_fadt_proc_c1 | k_fadt_pwr_button | k_fadt_slp_button | k_fadt_fix_rtc |
          k_fadt_reset_reg_sup);
    w.gas(k_gas_system_io, 8, Access::Byte, k_reset_port);  // 116 RESET_REG
    w.u8(k_reset_value);                                     // 128 RESET_VALUE
    w.u16(0);                                                // 129 ARM_BOOT_ARCH
    w.u8(0);                                                 // 131 FADT minor version (6.0)
    // 132 X_FIRMWARE_CTRL and 140 X_DSDT repeat the 32-bit pointers. (ACPI 6 would have
    // X_FIRMWARE_CTRL 0 when FIRMWARE_CTRL is set; ACPICA accepts both when they agree and
    // uses the 64-bit one, and older parsers find the 32-bit one.)
    w.u64(facs);
    w.u64(dsdt);
    // 148.. the extended blocks, the same ports as the 32-bit fields with bit widths of 8 *
    // their lengths (ACPICA warns about any disagreement). The PM1 registers are 16 bits wide.
    w.gas(k_gas_system_io, 8 * k_pm1a_evt_len, Access::Word, k_pm1a_evt_port);  // 148 X_PM1a_EVT_BLK
    w.gas(0, 0, Access::Undefined, 0);                                           // 160 X_PM1b_EVT_BLK
    w.gas(k_gas_system_io, 8 * k_pm1a_cnt_len, Access::Word, k_pm1a_cnt_port);  // 172 X_PM1a_CNT_BLK
    w.gas(0, 0, Access::Undefined, 0);                                           // 184 X_PM1b_CNT_BLK
    w.gas(0, 0, Access::Undefined, 0);                                           // 196 X_PM2_CNT_BLK
    w.gas(0, 0, Access::Undefined, 0);                                           // 208 X_PM_TMR_BLK
    w.gas(0, 0, Access::Undefined, 0);                                           // 220 X_GPE0_BLK
    w.gas(0, 0, Access::Undefined, 0);                                           // 232 X_GPE1_BLK
    w.gas(0, 0, Access::Undefined, 0);  // 244 SLEEP_CONTROL_REG: only for hardware-reduced ACPI
    w.gas(0, 0, Access::Undefined, 0);  // 256 SLEEP_STATUS_REG
    w.u64(0);                           // 268 hypervisor vendor identity
    return std::move(w).finish_table();
}

// A table that lists others: 64-bit pointers (XSDT) or 32-bit ones (RSDT).
Bytes build_sdt(std::string_view signature, const std::vector<uint64_t>& entries, unsigned entry_bytes) {
    TableWriter w;
    w.header(signature, 1);
    for (uint64_t entry : entries) {
        if (entry_bytes == 8)
            w.u64(entry);
        else
            w.u32(static_cast<uint32_t>(entry));
    }
    return std::move(w).finish_table();
}

Bytes build_rsdp(uint64_t rsdt, uint64_t xsdt) {
    TableWriter w;
    w.text("RSD PTR ", 8);
    w.u8(0);  // 8 checksum of the first 20 bytes
    w.text(k_oem_id, 6);
    w.u8(2);  // 15 revision: ACPI 2.0 and later
    w.u32(static_cast<uint32_t>(rsdt));
    w.u32(k_rsdp_size);  // 20 length
    w.u64(xsdt);
    w.u8(0);  // 32 extended checksum
    w.zeros(3);
    Bytes out = std::move(w).take();
    out[8] = std::byte{TableWriter::checksum(out, 0, 20)};
    out[32] = std::byte{TableWriter::checksum(out, 0, k_rsdp_size)};
    return out;
}

}  // namespace

base::Result<Tables> build_tables(const TableLayout& layout, uint64_t gpa, uint64_t max_bytes) {
    TRY(check_layout(layout, gpa));

    // The tables whose contents do not depend on where the others are.
    const Bytes dsdt = build_dsdt(layout);
    const Bytes madt = build_madt(layout);
    const Bytes facs = build_facs();

    // Places, as offsets from the base: the RSDP first, the FACS on a 64-byte boundary (ACPI
    // requires it), every other table on 16 bytes.
    uint64_t cursor = 0;
    auto place = [&](size_t size, uint64_t align) {
        const uint64_t at = (gpa + cursor + align - 1) / align * align - gpa;
        cursor = at + size;
        return at;
    };
    const uint64_t rsdp_at = place(k_rsdp_size, 16);
    const uint64_t facs_at = place(facs.size(), 64);
    const uint64_t dsdt_at = place(dsdt.size(), 16);
    const uint64_t fadt_at = place(k_fadt_size, 16);
    const uint64_t madt_at = place(madt.size(), 16);
    const uint64_t xsdt_at = place(k_header_size + 2 * 8, 16);
    const uint64_t rsdt_at = place(k_header_size + 2 * 4, 16);
    const uint64_t total = cursor;

    if (total > max_bytes)
        return base::Error::make(base::Errc::Invalid,
                                 "ACPI tables for {} vCPUs and {} virtio-mmio devices need {} bytes, more than the {} "
                                 "available at {:#x}",
                                 layout.vcpus, layout.virtio_mmio.size(), total, max_bytes, gpa);
    if (gpa >= k_4gib || total > k_4gib - gpa)
        return base::Error::make(base::Errc::Invalid,
                                 "ACPI tables at {:#x}+{:#x} reach above 4 GiB (the RSDT and FADT hold 32-bit "
                                 "addresses)",
                                 gpa, total);

    const Bytes fadt = build_fadt(gpa + facs_at, gpa + dsdt_at);
    // The XSDT and RSDT list the FADT and MADT; the FADT leads to the FACS and DSDT.
    const Bytes xsdt = build_sdt("XSDT", {gpa + fadt_at, gpa + madt_at}, 8);
    const Bytes rsdt = build_sdt("RSDT", {gpa + fadt_at, gpa + madt_at}, 4);
    const Bytes rsdp = build_rsdp(gpa + rsdt_at, gpa + xsdt_at);

    Tables tables;
    tables.bytes.assign(total, std::byte{0});
    auto put = [&tables](uint64_t at, const Bytes& table) {
        std::copy(table.begin(), table.end(), tables.bytes.begin() + static_cast<std::ptrdiff_t>(at));
    };
    put(rsdp_at, rsdp);
    put(facs_at, facs);
    put(dsdt_at, dsdt);
    put(fadt_at, fadt);
    put(madt_at, madt);
    put(xsdt_at, xsdt);
    put(rsdt_at, rsdt);
    tables.rsdp_address = gpa + rsdp_at;
    return tables;
}

}  // namespace colod::core::acpi
