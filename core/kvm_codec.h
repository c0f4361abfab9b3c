// SPDX-License-Identifier: GPL-2.0-or-later
// kvm::VcpuState and kvm::VmState to and from versioned, big-endian section bodies. Field by
// field (never a memcpy of a struct), so the bytes do not depend on compiler layout and a
// decoder can check every count. The LAPIC register page is carried as the 1024-byte image
// KVM defines (x86 little-endian register layout).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "base/result.h"
#include "kvm/state.h"

namespace colod::core {

constexpr uint16_t k_vcpu_state_version = 1;
constexpr uint16_t k_irqchip_state_version = 1;
constexpr uint16_t k_pit_state_version = 1;
constexpr uint16_t k_clock_state_version = 2;  // 2: the host's wall clock at the capture

std::vector<std::byte> encode_vcpu_state(const kvm::VcpuState& state);
base::Result<kvm::VcpuState> decode_vcpu_state(uint16_t version, std::span<const std::byte> bytes);

// The VM-wide state travels as three sections: irqchip (PIC master, PIC slave, IOAPIC), PIT
// and clock. Each decoder fills its part of `state`, on success only.
std::vector<std::byte> encode_irqchip_state(const kvm::VmState& state);
std::vector<std::byte> encode_pit_state(const kvm::VmState& state);
std::vector<std::byte> encode_clock_state(const kvm::VmState& state);
base::Result<void> decode_irqchip_state(uint16_t version, std::span<const std::byte> bytes, kvm::VmState& state);
base::Result<void> decode_pit_state(uint16_t version, std::span<const std::byte> bytes, kvm::VmState& state);
base::Result<void> decode_clock_state(uint16_t version, std::span<const std::byte> bytes, kvm::VmState& state);

}  // namespace colod::core
