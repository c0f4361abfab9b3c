// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/acpi/pm.h"

#include "core/state_io.h"

namespace colod::core::acpi {

namespace {

constexpr uint16_t k_pm1_sts_port = k_pm1a_evt_port;
constexpr uint16_t k_pm1_en_port = k_pm1a_evt_port + 2;

// The part of an access that falls on the 16-bit register at `reg_port`: the value shifted into
// place and a mask of the bytes written. Ports are widened so that an access at 0xffff cannot
// wrap around onto port 0.
struct Lanes {
    uint16_t value = 0;
    uint16_t mask = 0;
};

Lanes lanes(uint32_t reg_port, uint16_t port, std::span<const std::byte> data) {
    Lanes out;
    for (size_t i = 0; i < data.size(); ++i) {
        const uint32_t at = port + static_cast<uint32_t>(i);
        if (at < reg_port || at > reg_port + 1)
            continue;
        const unsigned shift = (at - reg_port) * 8;
        out.value = static_cast<uint16_t>(out.value | (static_cast<unsigned>(data[i]) << shift));
        out.mask = static_cast<uint16_t>(out.mask | (0xffu << shift));
    }
    return out;
}

}  // namespace

uint8_t AcpiPm::read_byte(uint32_t port) const {
    auto byte_of = [port](uint32_t reg_port, uint16_t value) {
        return static_cast<uint8_t>(value >> ((port - reg_port) * 8));
    };
    if (port == k_pm1_sts_port || port == k_pm1_sts_port + 1u)
        return byte_of(k_pm1_sts_port, m_regs.status);
    if (port == k_pm1_en_port || port == k_pm1_en_port + 1u)
        return byte_of(k_pm1_en_port, m_regs.enable);
    if (port == k_pm1a_cnt_port || port == k_pm1a_cnt_port + 1u)
        return byte_of(k_pm1a_cnt_port, static_cast<uint16_t>(m_regs.control | k_pm1_cnt_sci_en));
    if (port == k_reset_port)
        return 0;  // the reset register is write-only
    return 0xff;
}

void AcpiPm::pio_read(uint16_t port, std::span<std::byte> data) {
    std::lock_guard lock(m_mutex);
    for (size_t i = 0; i < data.size(); ++i)
        data[i] = std::byte{read_byte(port + static_cast<uint32_t>(i))};
}

void AcpiPm::pio_write(uint16_t port, std::span<const std::byte> data) {
    bool power_off = false;
    bool reset = false;
    {
        std::lock_guard lock(m_mutex);
        // PM1_STS: write 1 to clear.
        const Lanes sts = lanes(k_pm1_sts_port, port, data);
        m_regs.status = static_cast<uint16_t>(m_regs.status & ~(sts.value & sts.mask));

        const Lanes en = lanes(k_pm1_en_port, port, data);
        m_regs.enable = static_cast<uint16_t>((m_regs.enable & ~en.mask) | (en.value & en.mask & k_pm1_en_bits));

        const Lanes cnt = lanes(k_pm1a_cnt_port, port, data);
        if (cnt.mask) {
            const uint16_t written = cnt.value & cnt.mask;
            m_regs.control = static_cast<uint16_t>(((m_regs.control & ~cnt.mask) | written) & k_pm1_cnt_stored);
            // SLP_TYP and SLP_EN share the high byte, so the sleep type is the one this very
            // write leaves. Only S5 exists (the DSDT offers no other \_Sx); SLP_EN with any
            // other type is ignored. ACPICA writes SLP_TYP alone first, then adds SLP_EN.
            const unsigned slp_typ = (m_regs.control & k_pm1_cnt_slp_typ_mask) >> k_pm1_cnt_slp_typ_shift;
            power_off = (written & k_pm1_cnt_slp_en) && slp_typ == k_slp_typ_s5;
        }

        const Lanes rst = lanes(k_reset_port, port, data);
        reset = (rst.mask & 0xff) && static_cast<uint8_t>(rst.value) == k_reset_value;
    }
    // Outside the lock: either callback may stop the machine, which saves this device.
    if (power_off && m_power_off)
        m_power_off();
    if (reset && m_reset)
        m_reset();
}

DeviceState AcpiPm::save_state() const {
    std::lock_guard lock(m_mutex);
    StateWriter w;
    w.put(m_regs.status);
    w.put(m_regs.enable);
    w.put(m_regs.control);
    return DeviceState{std::string(name()), k_state_version, w.take()};
}

base::Result<AcpiPm::Registers> AcpiPm::decode_state(const DeviceState& state) const {
    if (state.version != k_state_version)
        return base::Error::make(base::Errc::Unsupported, "{} state version {} (this build reads {})", name(),
                                 state.version, k_state_version);
    StateReader r(state.bytes);
    Registers regs;
    regs.status = r.get<uint16_t>();
    regs.enable = r.get<uint16_t>();
    regs.control = r.get<uint16_t>();
    // Bits the hardware cannot hold would make the guest see a register it could never produce.
    if (regs.status & ~k_pm1_sts_bits)
        r.fail(fmt::format("PM1_STS {:#06x} has reserved bits set", regs.status));
    if (regs.enable & ~k_pm1_en_bits)
        r.fail(fmt::format("PM1_EN {:#06x} has reserved bits set", regs.enable));
    if (regs.control & ~k_pm1_cnt_stored)
        r.fail(fmt::format("PM1_CNT {:#06x} has bits that are not kept", regs.control));
    TRY(r.finish(name()));
    return regs;
}

base::Result<void> AcpiPm::check_state(const DeviceState& state) const {
    TRY(decode_state(state));
    return base::ok();
}

base::Result<void> AcpiPm::load_state(const DeviceState& state) {
    const Registers regs = TRY(decode_state(state));
    std::lock_guard lock(m_mutex);
    m_regs = regs;
    return base::ok();
}

}  // namespace colod::core::acpi
