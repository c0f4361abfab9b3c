// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/snapshot.h"

#include <cstring>
#include <fstream>
#include <numeric>
#include <variant>

#include "core/machine.h"
#include "core/state_sections.h"

namespace colod::core {

base::Result<void> save_snapshot(Machine& machine, const proto::Hello& identity, const std::string& path) {
    MachineState state = TRY(machine.save_state());
    EncodedSections sections(state);
    GuestMemory& memory = machine.memory();
    std::vector<uint64_t> pages(memory.page_count());
    std::iota(pages.begin(), pages.end(), uint64_t{0});
    proto::StateInput input;
    input.seq = 0;
    input.pages = pages;
    input.page_bytes = [&memory](uint64_t page) {
        return std::span<const std::byte>(memory.page(page), k_page_size);
    };
    input.sections = sections.inputs();
    auto encoded = proto::StateEncoder().encode(input);
    if (!encoded)
        return std::move(encoded).error().context("encoding the snapshot");
    auto written = proto::write_snapshot_file(path, identity, *encoded);
    if (!written)
        return std::move(written).error().context("writing snapshot " + path);
    return base::ok();
}

base::Result<void> load_snapshot(Machine& machine, const proto::Hello& identity, const std::string& path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in)
        return base::Error::make(base::Errc::Invalid, "cannot open snapshot {}", path);
    std::vector<std::byte> file(static_cast<size_t>(in.tellg()));
    in.seekg(0);
    if (!in.read(reinterpret_cast<char*>(file.data()), static_cast<std::streamsize>(file.size())))
        return base::Error::make(base::Errc::Invalid, "cannot read snapshot {}", path);

    auto snapshot = proto::decode_snapshot(file, platform_section_versions());
    if (!snapshot)
        return std::move(snapshot).error().context("snapshot " + path);
    if (auto why = proto::incompatibility(identity, snapshot->identity); !why.empty())
        return base::Error::make(base::Errc::Mismatch, "snapshot {} does not fit this machine: {}", path, why);

    std::vector<std::string> device_names;
    for (const auto& device : machine.devices())
        device_names.emplace_back(device->name());
    MachineStateAssembler assembler(machine.vcpu_count(), device_names);
    for (const auto& piece : snapshot->pieces)
        if (const auto* section = std::get_if<proto::SectionView>(&piece))
            TRY(assembler.add(*section));
    MachineState state = TRY(assembler.finish());

    // Everything is valid: apply RAM, then the machine state.
    GuestMemory& memory = machine.memory();
    for (const auto& piece : snapshot->pieces) {
        if (const auto* run = std::get_if<proto::PageRun>(&piece)) {
            std::memcpy(memory.page(run->first_page), run->data.data(), run->data.size());
            memory.mark_dirty(run->first_page, run->count);
        } else if (const auto* zeros = std::get_if<proto::ZeroRun>(&piece)) {
            std::memset(memory.page(zeros->first_page), 0, zeros->count * k_page_size);
            memory.mark_dirty(zeros->first_page, zeros->count);
        }
    }
    TRY(machine.load_state(state));
    return base::ok();
}

}  // namespace colod::core
