// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <cstring>
#include <functional>

#include "core/device.h"

namespace colod::core {

// The power port (platform::k_port_power): a 32-bit write of an exit code powers the guest off.
class PowerPort final : public Device {
public:
    explicit PowerPort(std::function<void(int)> power_off) : m_power_off(std::move(power_off)) {}
    std::string_view name() const override { return "power"; }
    uint16_t state_version() const override { return 1; }
    void pio_write(uint16_t, std::span<const std::byte> data) override {
        uint32_t code = 0;
        std::memcpy(&code, data.data(), std::min(data.size(), sizeof(code)));
        m_power_off(static_cast<int>(code));
    }
    DeviceState save_state() const override { return DeviceState{std::string(name()), 1, {}}; }
    base::Result<void> check_state(const DeviceState& state) const override {
        if (state.version != 1 || !state.bytes.empty())
            return base::Error::make(base::Errc::Invalid, "power port state: version {} with {} bytes", state.version,
                                     state.bytes.size());
        return base::ok();
    }
    base::Result<void> load_state(const DeviceState& state) override { return check_state(state); }

private:
    std::function<void(int)> m_power_off;
};

}  // namespace colod::core
