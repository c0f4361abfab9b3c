// SPDX-License-Identifier: GPL-2.0-or-later
// Builds minimal ELF64 guest images in memory: one R+X segment holding `code` at `paddr`.
#pragma once

#include <elf.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace colod::test {

inline std::vector<std::byte> make_elf(std::vector<uint8_t> code, uint64_t paddr = 0x100000, uint64_t memsz = 0x2000,
                                       uint64_t entry = 0) {
    if (entry == 0)
        entry = paddr;
    std::vector<std::byte> file(sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr) + code.size());
    Elf64_Ehdr eh{};
    std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_ident[EI_VERSION] = EV_CURRENT;
    eh.e_type = ET_EXEC;
    eh.e_machine = EM_X86_64;
    eh.e_version = EV_CURRENT;
    eh.e_entry = entry;
    eh.e_phoff = sizeof(Elf64_Ehdr);
    eh.e_ehsize = sizeof(Elf64_Ehdr);
    eh.e_phentsize = sizeof(Elf64_Phdr);
    eh.e_phnum = 1;
    Elf64_Phdr ph{};
    ph.p_type = PT_LOAD;
    ph.p_flags = PF_R | PF_X;
    ph.p_offset = sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr);
    ph.p_vaddr = ph.p_paddr = paddr;
    ph.p_filesz = code.size();
    ph.p_memsz = memsz < code.size() ? code.size() : memsz;
    std::memcpy(file.data(), &eh, sizeof(eh));
    std::memcpy(file.data() + sizeof(eh), &ph, sizeof(ph));
    std::memcpy(file.data() + sizeof(eh) + sizeof(ph), code.data(), code.size());
    return file;
}

}  // namespace colod::test
