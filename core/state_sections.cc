// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/state_sections.h"

#include "core/kvm_codec.h"
#include "core/net/frames.h"
#include "core/virtio/blk.h"
#include "core/virtio/net.h"
#include "proto/auth.h"

namespace colod::core {

proto::Hello machine_identity(Machine& machine, std::string_view vm_name, std::span<const std::byte> image) {
    proto::Hello hello;
    hello.vm_name = std::string(vm_name);
    hello.memory_bytes = machine.memory().size();
    hello.vcpus = machine.vcpu_count();
    for (const auto& device : machine.devices())
        hello.devices.push_back(proto::DeviceInfo{std::string(device->name()), device->state_version()});
    hello.image_hash = proto::hash_image(image);
    if (const auto* nic = machine.linux_devices().net)
        hello.mac = net::format_mac(nic->mac());
    if (const auto* blk = machine.linux_devices().blk)
        hello.disk_bytes = blk->capacity() * proto::kDiskSectorSize;
    return hello;
}

proto::SectionVersions platform_section_versions() {
    return proto::SectionVersions{k_vcpu_state_version, k_irqchip_state_version, k_pit_state_version,
                                  k_clock_state_version};
}

EncodedSections::EncodedSections(const MachineState& state) {
    // Bodies first (the vector must not reallocate once inputs reference it).
    m_bodies.reserve(state.vcpus.size() + 3 + state.devices.size());
    for (const auto& vcpu : state.vcpus)
        m_bodies.push_back(encode_vcpu_state(vcpu));
    m_bodies.push_back(encode_irqchip_state(state.vm));
    m_bodies.push_back(encode_pit_state(state.vm));
    m_bodies.push_back(encode_clock_state(state.vm));
    for (const auto& device : state.devices)
        m_bodies.push_back(device.bytes);

    size_t body = 0;
    for (uint32_t i = 0; i < state.vcpus.size(); ++i)
        m_inputs.push_back({proto::SectionId::Vcpu, k_vcpu_state_version, i, {}, m_bodies[body++]});
    m_inputs.push_back({proto::SectionId::Irqchip, k_irqchip_state_version, 0, {}, m_bodies[body++]});
    m_inputs.push_back({proto::SectionId::Pit, k_pit_state_version, 0, {}, m_bodies[body++]});
    m_inputs.push_back({proto::SectionId::Clock, k_clock_state_version, 0, {}, m_bodies[body++]});
    for (uint32_t i = 0; i < state.devices.size(); ++i)
        m_inputs.push_back(
            {proto::SectionId::Device, state.devices[i].version, i, state.devices[i].name, m_bodies[body++]});
}

size_t EncodedSections::bytes() const {
    size_t total = 0;
    for (const auto& body : m_bodies)
        total += body.size();
    return total;
}

MachineStateAssembler::MachineStateAssembler(uint32_t vcpus, std::vector<std::string> device_names)
    : m_vcpu_seen(vcpus, false), m_device_seen(device_names.size(), false), m_device_names(std::move(device_names)) {
    m_state.vcpus.resize(vcpus);
    m_state.devices.resize(m_device_names.size());
}

base::Result<void> MachineStateAssembler::add(const proto::SectionView& section) {
    switch (section.id) {
    case proto::SectionId::Vcpu: {
        if (section.instance >= m_vcpu_seen.size())
            return base::Error::make(base::Errc::Invalid, "vCPU section {} for a machine with {} vCPUs", section.instance,
                                     m_vcpu_seen.size());
        m_state.vcpus[section.instance] = TRY(decode_vcpu_state(section.version, section.body));
        m_vcpu_seen[section.instance] = true;
        return base::ok();
    }
    case proto::SectionId::Irqchip:
        TRY(decode_irqchip_state(section.version, section.body, m_state.vm));
        m_irqchip = true;
        return base::ok();
    case proto::SectionId::Pit:
        TRY(decode_pit_state(section.version, section.body, m_state.vm));
        m_pit = true;
        return base::ok();
    case proto::SectionId::Clock:
        TRY(decode_clock_state(section.version, section.body, m_state.vm));
        m_clock = true;
        return base::ok();
    case proto::SectionId::Device: {
        if (section.instance >= m_device_seen.size() || section.name != m_device_names[section.instance])
            return base::Error::make(base::Errc::Invalid, "device section {} '{}' does not match this machine's devices",
                                     section.instance, section.name);
        m_state.devices[section.instance] =
            DeviceState{std::string(section.name), section.version,
                        std::vector<std::byte>(section.body.begin(), section.body.end())};
        m_device_seen[section.instance] = true;
        return base::ok();
    }
    case proto::SectionId::Ram:
    case proto::SectionId::End:
        break;
    }
    return base::Error::make(base::Errc::Invalid, "{} section where machine state was expected",
                             proto::section_name(section.id));
}

base::Result<MachineState> MachineStateAssembler::finish() {
    for (size_t i = 0; i < m_vcpu_seen.size(); ++i)
        if (!m_vcpu_seen[i])
            return base::Error::make(base::Errc::Invalid, "state lacks vCPU {}", i);
    if (!m_irqchip || !m_pit || !m_clock)
        return base::Error(base::Errc::Invalid, "state lacks the irqchip, PIT or clock");
    for (size_t i = 0; i < m_device_seen.size(); ++i)
        if (!m_device_seen[i])
            return base::Error::make(base::Errc::Invalid, "state lacks device '{}'", m_device_names[i]);
    return std::move(m_state);
}

}  // namespace colod::core
