// SPDX-License-Identifier: GPL-2.0-or-later
// The ACPI power-management registers of colod's classic (not hardware-reduced) ACPI platform:
// the PM1a event block (PM1_STS, PM1_EN), the PM1a control block (PM1_CNT) and the FADT's
// reset register. They are what a stock Linux kernel uses to power off (SLP_TYP 5 + SLP_EN,
// with the \_S5_ package in the DSDT) and to reboot (reboot=acpi, its default on x86).
//
// The platform has no SMI and no firmware, so it is always in ACPI mode: SCI_EN reads as 1 and
// the FADT's SMI_CMD is 0. No event source exists (no PM timer, no fixed power or sleep button,
// no RTC), so no status bit is ever set by the platform and the device never raises the SCI;
// the enable and status registers still hold what the guest writes, because ACPICA checks that
// an enable bit reads back (GBL_EN, at start-up) before it trusts the hardware.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <utility>

#include "core/device.h"

namespace colod::core::acpi {

// Where the registers are; the FADT (core/acpi/tables.cc) describes the same ports.
inline constexpr uint16_t k_pm1a_evt_port = 0x600;  // PM1_STS (2 bytes), then PM1_EN (2 bytes)
inline constexpr uint8_t k_pm1a_evt_len = 4;
inline constexpr uint16_t k_pm1a_cnt_port = 0x604;  // PM1_CNT
inline constexpr uint8_t k_pm1a_cnt_len = 2;
inline constexpr uint16_t k_reset_port = 0x608;     // the FADT's RESET_REG (8 bits)
inline constexpr uint8_t k_reset_value = 1;         // the FADT's RESET_VALUE
// The port ranges to register (first, count): the event and control blocks are contiguous, so
// one range lets a guest's dword or unaligned access span them.
inline constexpr std::array<std::pair<uint16_t, uint16_t>, 2> k_port_ranges{{
    {k_pm1a_evt_port, k_pm1a_evt_len + k_pm1a_cnt_len},
    {k_reset_port, 1},
}};
// The SCI's ISA IRQ and GSI (the FADT's SCI_INT; the MADT overrides it to level, active high).
inline constexpr uint32_t k_sci_irq = 9;
// The SLP_TYP value of S5 (soft off); the DSDT's \_S5_ package says the same.
inline constexpr uint8_t k_slp_typ_s5 = 5;

// PM1 register bits (ACPI 6.x, 4.8.3.1 and 4.8.3.2).
inline constexpr uint16_t k_pm1_sts_bits = 0xc731;  // TMR, BM, GBL, PWRBTN, SLPBTN, RTC, PCIEXP_WAKE, WAK
inline constexpr uint16_t k_pm1_en_bits = 0x4721;   // TMR, GBL, PWRBTN, SLPBTN, RTC, PCIEXP_WAKE_DIS
inline constexpr uint16_t k_pm1_cnt_sci_en = 1 << 0;
inline constexpr uint16_t k_pm1_cnt_bm_rld = 1 << 1;
inline constexpr uint16_t k_pm1_cnt_slp_typ_shift = 10;
inline constexpr uint16_t k_pm1_cnt_slp_typ_mask = 7 << k_pm1_cnt_slp_typ_shift;
inline constexpr uint16_t k_pm1_cnt_slp_en = 1 << 13;  // write-only: reads as 0
// The PM1_CNT bits the device keeps (SCI_EN is constant, GBL_RLS and SLP_EN are write-only).
inline constexpr uint16_t k_pm1_cnt_stored = k_pm1_cnt_bm_rld | k_pm1_cnt_slp_typ_mask;

class AcpiPm final : public Device {
public:
    static constexpr uint16_t k_state_version = 1;

    // `power_off` is called when the guest enters S5, `reset` when it writes the reset value to
    // the reset register. Both run on the vCPU thread of the write, with no lock of the device
    // held (so they may pause the machine, which saves this device's state).
    AcpiPm(std::function<void()> power_off, std::function<void()> reset)
        : m_power_off(std::move(power_off)), m_reset(std::move(reset)) {}

    std::string_view name() const override { return "acpi-pm"; }
    uint16_t state_version() const override { return k_state_version; }
    // Accesses of 1, 2 or 4 bytes at any port of k_port_ranges: a 16-bit register written a
    // byte at a time ends up as if written whole. Ports in a range that hold no register read
    // as ones and ignore writes.
    void pio_read(uint16_t port, std::span<std::byte> data) override;
    void pio_write(uint16_t port, std::span<const std::byte> data) override;
    // Body: PM1_STS, PM1_EN, PM1_CNT (kept bits only), each u16 big-endian.
    DeviceState save_state() const override;
    base::Result<void> check_state(const DeviceState& state) const override;
    base::Result<void> load_state(const DeviceState& state) override;

private:
    struct Registers {
        uint16_t status = 0;
        uint16_t enable = 0;
        uint16_t control = 0;  // k_pm1_cnt_stored bits only
    };
    base::Result<Registers> decode_state(const DeviceState& state) const;
    // The byte the guest reads at `port`. Caller holds m_mutex.
    uint8_t read_byte(uint32_t port) const;

    std::function<void()> m_power_off;
    std::function<void()> m_reset;

    mutable std::mutex m_mutex;
    Registers m_regs;
};

}  // namespace colod::core::acpi
