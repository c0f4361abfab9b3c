// SPDX-License-Identifier: GPL-2.0-or-later
// A machine's identity and its non-RAM state as proto sections: what checkpoints and snapshot
// files carry besides pages.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "core/machine.h"
#include "proto/messages.h"
#include "proto/state.h"

namespace colod::core {

// HELLO's description of this machine: VM name, memory, vCPUs, device list and the hash of
// the guest image (two sides pair only when all of it matches).
proto::Hello machine_identity(Machine& machine, std::string_view vm_name, std::span<const std::byte> image);

// The versions of the vCPU, irqchip, PIT and clock sections this build writes and reads
// (core/kvm_codec.h), for proto's decoders.
proto::SectionVersions platform_section_versions();

// The section bodies of a MachineState, owned here, and the proto inputs that reference them.
class EncodedSections {
public:
    explicit EncodedSections(const MachineState& state);
    EncodedSections(const EncodedSections&) = delete;
    EncodedSections& operator=(const EncodedSections&) = delete;
    const std::vector<proto::SectionInput>& inputs() const { return m_inputs; }
    size_t bytes() const;

private:
    std::vector<std::vector<std::byte>> m_bodies;
    std::vector<proto::SectionInput> m_inputs;
};

// Builds a MachineState from the non-RAM sections of a decoded checkpoint or snapshot. Each
// body is decoded (and so validated) as it is added; nothing touches a machine.
class MachineStateAssembler {
public:
    MachineStateAssembler(uint32_t vcpus, std::vector<std::string> device_names);
    base::Result<void> add(const proto::SectionView& section);
    // The whole state, or an error naming the first missing piece.
    base::Result<MachineState> finish();

private:
    MachineState m_state;
    std::vector<bool> m_vcpu_seen;
    std::vector<bool> m_device_seen;
    std::vector<std::string> m_device_names;
    bool m_irqchip = false, m_pit = false, m_clock = false;
};

}  // namespace colod::core
