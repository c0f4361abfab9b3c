// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/elf_loader.h"

#include <elf.h>

#include <algorithm>
#include <cstring>

#include "core/guest_memory.h"
#include "guests/abi.h"

namespace colod::core {

namespace {

constexpr size_t k_max_segments = 64;

base::Error bad(std::string what) { return base::Error(base::Errc::Invalid, "ELF image: " + std::move(what)); }

bool add_overflows(uint64_t a, uint64_t b) { return a + b < a; }

}  // namespace

base::Result<ElfImage> parse_elf(std::span<const std::byte> file) {
    if (file.size() < sizeof(Elf64_Ehdr))
        return bad(fmt::format("{} bytes is too short for an ELF header", file.size()));
    Elf64_Ehdr header;
    std::memcpy(&header, file.data(), sizeof(header));
    if (std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0)
        return bad("no ELF magic");
    if (header.e_ident[EI_CLASS] != ELFCLASS64)
        return bad("not a 64-bit ELF");
    if (header.e_ident[EI_DATA] != ELFDATA2LSB)
        return bad("not little-endian");
    if (header.e_ident[EI_VERSION] != EV_CURRENT || header.e_version != EV_CURRENT)
        return bad("unknown ELF version");
    if (header.e_machine != EM_X86_64)
        return bad(fmt::format("machine {} is not x86-64", header.e_machine));
    if (header.e_type != ET_EXEC)
        return bad("not an executable (ET_EXEC); position-independent images are not supported");
    if (header.e_phentsize != sizeof(Elf64_Phdr))
        return bad(fmt::format("program header size {} (expected {})", header.e_phentsize, sizeof(Elf64_Phdr)));
    if (header.e_phnum == 0 || header.e_phnum > k_max_segments)
        return bad(fmt::format("{} program headers (1 to {} allowed)", header.e_phnum, k_max_segments));
    uint64_t table_size = uint64_t{header.e_phnum} * sizeof(Elf64_Phdr);
    if (header.e_phoff > file.size() || table_size > file.size() - header.e_phoff)
        return bad("program header table lies outside the file");

    ElfImage image;
    image.entry = header.e_entry;
    for (unsigned i = 0; i < header.e_phnum; ++i) {
        Elf64_Phdr ph;
        std::memcpy(&ph, file.data() + header.e_phoff + i * sizeof(Elf64_Phdr), sizeof(ph));
        if (ph.p_type != PT_LOAD || ph.p_memsz == 0)
            continue;
        if (ph.p_filesz > ph.p_memsz)
            return bad(fmt::format("segment {}: file size {} exceeds memory size {}", i, ph.p_filesz, ph.p_memsz));
        if (ph.p_offset > file.size() || ph.p_filesz > file.size() - ph.p_offset)
            return bad(fmt::format("segment {}: bytes {:#x}+{:#x} lie outside the {}-byte file", i, ph.p_offset,
                                   ph.p_filesz, file.size()));
        if (ph.p_paddr < COLOD_IMAGE_MIN)
            return bad(fmt::format("segment {} at {:#x} is below {:#x} (the boot area)", i, ph.p_paddr,
                                   COLOD_IMAGE_MIN));
        if (add_overflows(ph.p_paddr, ph.p_memsz) || add_overflows(ph.p_paddr + ph.p_memsz, k_page_size))
            return bad(fmt::format("segment {}: address {:#x} + size {:#x} overflows", i, ph.p_paddr, ph.p_memsz));
        image.segments.push_back(
            ElfSegment{ph.p_paddr, ph.p_offset, ph.p_filesz, ph.p_memsz, (ph.p_flags & PF_X) != 0});
    }
    if (image.segments.empty())
        return bad("no loadable segment");
    std::sort(image.segments.begin(), image.segments.end(),
              [](const ElfSegment& a, const ElfSegment& b) { return a.guest_phys < b.guest_phys; });
    for (size_t i = 1; i < image.segments.size(); ++i) {
        const auto& prev = image.segments[i - 1];
        if (prev.guest_phys + prev.memory_size > image.segments[i].guest_phys)
            return bad(fmt::format("segments at {:#x} and {:#x} overlap", prev.guest_phys, image.segments[i].guest_phys));
    }
    bool entry_ok = std::any_of(image.segments.begin(), image.segments.end(), [&](const ElfSegment& s) {
        return s.executable && image.entry >= s.guest_phys && image.entry - s.guest_phys < s.memory_size;
    });
    if (!entry_ok)
        return bad(fmt::format("entry point {:#x} is not inside an executable segment", image.entry));
    const auto& last = image.segments.back();
    image.end = (last.guest_phys + last.memory_size + k_page_size - 1) & ~(k_page_size - 1);
    return image;
}

base::Result<void> load_elf(const ElfImage& image, std::span<const std::byte> file, GuestMemory& memory) {
    for (const auto& segment : image.segments) {
        auto target = memory.slice(segment.guest_phys, segment.memory_size, GuestMemory::Access::Write);
        if (!target)
            return bad(fmt::format("segment at {:#x} ({} bytes) does not fit in the guest's {} bytes of RAM",
                                   segment.guest_phys, segment.memory_size, memory.size()));
        std::memcpy(target->data(), file.data() + segment.file_offset, segment.file_size);
        std::memset(target->data() + segment.file_size, 0, segment.memory_size - segment.file_size);
    }
    return base::ok();
}

}  // namespace colod::core
