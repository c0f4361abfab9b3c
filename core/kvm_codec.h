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
constexpr uint16_t k_vm_state_version = 1;

std::vector<std::byte> encode_vcpu_state(const kvm::VcpuState& state);
base::Result<kvm::VcpuState> decode_vcpu_state(uint16_t version, std::span<const std::byte> bytes);

std::vector<std::byte> encode_vm_state(const kvm::VmState& state);
base::Result<kvm::VmState> decode_vm_state(uint16_t version, std::span<const std::byte> bytes);

}  // namespace colod::core
