// SPDX-License-Identifier: GPL-2.0-or-later
// Address translation of the interpreter: the 4-level page walk with its permission checks and
// accessed/dirty bits, the software TLB, and the slow memory paths (page-crossing accesses,
// MMIO) that the inline fast paths in cpu_impl.h fall back to.
#include <fmt/format.h>

#include <algorithm>

#include "kvm/soft/cpu_impl.h"

namespace colod::kvm::soft {

using namespace x86;

bool Cpu::Impl::page_fault(uint64_t lin, Access acc, unsigned flags, uint32_t code) {
    const auto& sr = m_st->sregs;
    if (acc == Access::Write)
        code |= PFEC_W;
    if (flags & kAccUser)
        code |= PFEC_U;
    if (acc == Access::Execute && ((sr.efer & EFER_NXE) || (sr.cr4 & CR4_SMEP)))
        code |= PFEC_I;
    m_abort = Abort::Fault;
    m_event = Event{PFV, EventKind::Exception, true, code, lin};
    return false;
}

// Sets bits in a paging-structure entry. The entry is written through a pointer asked for
// with Access::Write so that the page-table page lands in the dirty log, and atomically because
// other vCPUs walk (and update) the same tables.
static bool set_entry_bits(CpuBus& bus, uint64_t entry_gpa, uint64_t bits) {
    uint8_t* page = bus.ram_page(entry_gpa & ~0xfffull, Access::Write);
    if (page == nullptr)
        return false;
    // SAFETY: entries are 8-byte aligned within a RAM page.
    auto* e = reinterpret_cast<uint64_t*>(page + (entry_gpa & 0xfff));
    __atomic_fetch_or(e, bits, __ATOMIC_SEQ_CST);
    return true;
}

bool Cpu::Impl::walk(uint64_t lin, Access acc, unsigned flags, Walk& w) {
    const auto& sr = m_st->sregs;
    const bool user = flags & kAccUser;
    const bool nxe = sr.efer & EFER_NXE;
    uint64_t table = sr.cr3 & PTE_ADDR;
    uint64_t entry_gpa[4] = {};
    uint64_t entry[4] = {};
    bool user_ok = true, write_ok = true, nx = false;
    int leaf = 0;
    uint64_t page_mask = 0xfff;
    int top = 3;
    const uint64_t key = (lin >> 21) + 1;
    PdeCache& pc = m_pde_cache[key % kPdeCache];
    if (pc.key == key) {
        // The PML4E and PDPTE were walked (and marked accessed) before: start at the PDE.
        top = 1;
        table = pc.pd;
        user_ok = pc.user;
        write_ok = pc.writable;
        nx = pc.nx;
    }
    PdeCache fill;
    for (int level = top; level >= 0; --level) {
        const unsigned shift = 12 + 9 * static_cast<unsigned>(level);
        const uint64_t gpa = table + ((lin >> shift) & 511) * 8;
        const uint8_t* page = table_page(gpa);
        if (page == nullptr) {
            m_abort = Abort::Internal;
            m_detail = fmt::format("page walk of {:#x}: paging structure at gpa {:#x} is not RAM",
                                   lin, gpa);
            return false;
        }
        // SAFETY: entries are 8-byte aligned within a RAM page.
        const uint64_t pte =
            __atomic_load_n(reinterpret_cast<const uint64_t*>(page + (gpa & 0xfff)), __ATOMIC_RELAXED);
        entry_gpa[level] = gpa;
        entry[level] = pte;
        if (!(pte & PTE_P))
            return page_fault(lin, acc, flags, 0);
        bool reserved = (!nxe && (pte & PTE_NX));
        const bool ps = (pte & PTE_PS) && level > 0;
        if (level == 3 && (pte & PTE_PS))
            reserved = true;
        if (ps && level == 2 && (pte & 0x3fffe000ull))
            reserved = true;
        if (ps && level == 1 && (pte & 0x1fe000ull))
            reserved = true;
        if (reserved)
            return page_fault(lin, acc, flags, PFEC_P | PFEC_RSVD);
        user_ok &= (pte & PTE_U) != 0;
        write_ok &= (pte & PTE_W) != 0;
        nx |= nxe && (pte & PTE_NX);
        if (level == 0 || ps) {
            leaf = level;
            page_mask = (1ull << shift) - 1;
            break;
        }
        table = pte & PTE_ADDR;
        if (level == 2)
            fill = PdeCache{key, table, user_ok, write_ok, nx};
    }

    const bool write = acc == Access::Write;
    const bool fetch = acc == Access::Execute;
    if (user) {
        if (!user_ok || (write && !write_ok) || (fetch && nx))
            return page_fault(lin, acc, flags, PFEC_P);
    } else {
        if (write && !write_ok && (sr.cr0 & CR0_WP))
            return page_fault(lin, acc, flags, PFEC_P);
        if (fetch && (nx || (user_ok && (sr.cr4 & CR4_SMEP))))
            return page_fault(lin, acc, flags, PFEC_P);
        if (!fetch && user_ok && (sr.cr4 & CR4_SMAP) &&
            ((flags & kAccImplicit) || !(m_rflags & AC)))
            return page_fault(lin, acc, flags, PFEC_P);
    }

    // Accessed bits on every level used, dirty on the leaf for a write.
    for (int level = top; level >= leaf; --level) {
        uint64_t bits = 0;
        if (!(entry[level] & PTE_A))
            bits |= PTE_A;
        if (level == leaf && write && !(entry[level] & PTE_D))
            bits |= PTE_D;
        if (bits != 0 && !set_entry_bits(*m_bus, entry_gpa[level], bits)) {
            m_abort = Abort::Internal;
            m_detail = fmt::format("page walk of {:#x}: cannot set A/D bits at gpa {:#x}", lin,
                                   entry_gpa[level]);
            return false;
        }
    }
    if (fill.key != 0)
        pc = fill;
    const uint64_t frame = entry[leaf] & PTE_ADDR & ~page_mask;
    w.gpa = frame | (lin & page_mask);
    w.user = user_ok;
    w.writable = write_ok;
    w.nx = nx;
    w.large = leaf > 0;
    return true;
}

bool Cpu::Impl::resolve(uint64_t lin, Access acc, unsigned flags, uint8_t*& host, uint64_t& gpa) {
    if (!canonical(lin))
        return (flags & kAccStack) ? fault(SS, 0) : gp0();
    TlbEntry& e = tlb_slot(lin);
    const uint64_t tag = tag_for(lin, flags);
    const uint64_t have = acc == Access::Read    ? e.tag_read
                          : acc == Access::Write ? e.tag_write
                                                 : e.tag_exec;
    if (have == tag) {
        host = e.host;
        gpa = 0;  // not needed for RAM
        return true;
    }
    Walk w;
    if (!walk(lin, acc, flags, w))
        return false;
    gpa = w.gpa;
    host = m_bus->ram_page(w.gpa & ~0xfffull,
                           acc == Access::Write ? Access::Write : Access::Read);
    if (host == nullptr)
        return true;  // MMIO: never cached, every access goes to the bus

    // Cache what this privilege may do with the page from now on. Supervisor data accesses to
    // user pages under SMAP depend on RFLAGS.AC and are not cached.
    const bool user = flags & kAccUser;
    const bool smap_page = !user && w.user && (m_st->sregs.cr4 & CR4_SMAP);
    const bool can_exec = !w.nx && (user || !(w.user && (m_st->sregs.cr4 & CR4_SMEP)));
    if (e.tag_read != tag && e.tag_write != tag && e.tag_exec != tag)
        e = TlbEntry{};
    e.host = host;
    if (!smap_page)
        e.tag_read = tag;
    if (acc == Access::Write && !smap_page) {
        e.tag_write = tag;
        if (m_write_count < kWriteSlots)
            m_write_slots[m_write_count] = static_cast<uint16_t>(&e - m_tlb);
        ++m_write_count;
    }
    if (can_exec)
        e.tag_exec = tag;
    if (w.large)
        m_tlb_large = true;
    return true;
}

bool Cpu::Impl::resolve_span(uint64_t lin, unsigned len, Access acc, unsigned flags, Span& s) {
    const unsigned off = lin & 0xfff;
    s.lin = lin;
    s.len = len;
    s.first = std::min(len, 4096 - off);
    uint8_t* host = nullptr;
    uint64_t gpa = 0;
    if (!resolve(lin, acc, flags, host, gpa))
        return false;
    s.host[0] = host ? host + off : nullptr;
    s.gpa[0] = gpa;
    s.host[1] = nullptr;
    s.gpa[1] = 0;
    if (s.first < len) {
        if (!resolve(lin + s.first, acc, flags, host, gpa))
            return false;
        s.host[1] = host;
        s.gpa[1] = gpa;
    }
    return true;
}

static bool bus_size(unsigned n) { return n == 1 || n == 2 || n == 4 || n == 8; }

bool Cpu::Impl::mmio_read(uint64_t gpa, void* out, unsigned len) {
    if (!bus_size(len)) {
        m_abort = Abort::Internal;
        m_detail = fmt::format("MMIO read of {} bytes at gpa {:#x}", len, gpa);
        return false;
    }
    if (m_mmio_valid && m_mmio_gpa == gpa && m_mmio_len == len) {
        std::memcpy(out, m_mmio_data, len);
        m_mmio_valid = false;
        return true;
    }
    if (m_bus->mmio_read(gpa, out, len) == BusResult::Done)
        return true;
    m_abort = Abort::MmioRead;
    return false;
}

bool Cpu::Impl::mmio_write(uint64_t gpa, const void* in, unsigned len) {
    if (!bus_size(len)) {
        m_abort = Abort::Internal;
        m_detail = fmt::format("MMIO write of {} bytes at gpa {:#x}", len, gpa);
        return false;
    }
    if (m_stop_after == StopReason::IoExit || m_stop_after == StopReason::MmioExit) {
        // kvm_run holds one exit: a second one in the same instruction cannot be reported.
        m_abort = Abort::Internal;
        m_detail = fmt::format("second MMIO exit in one instruction (write at gpa {:#x})", gpa);
        return false;
    }
    m_check_irq = true;  // a LAPIC EOI or IOAPIC write may unmask an interrupt
    if (m_bus->mmio_write(gpa, in, len) == BusResult::Exit)
        m_stop_after = StopReason::MmioExit;
    return true;
}

bool Cpu::Impl::span_read(const Span& s, void* out) {
    auto* o = static_cast<uint8_t*>(out);
    const unsigned second = s.len - s.first;
    // Read both pieces before storing anything, so an MMIO exit leaves `out` to the re-run.
    if (s.host[0])
        std::memcpy(o, s.host[0], s.first);
    else if (!mmio_read(s.gpa[0], o, s.first))
        return false;
    if (second == 0)
        return true;
    if (s.host[1])
        std::memcpy(o + s.first, s.host[1], second);
    else if (!mmio_read(s.gpa[1], o + s.first, second))
        return false;
    return true;
}

bool Cpu::Impl::span_write(const Span& s, const void* in) {
    const auto* i = static_cast<const uint8_t*>(in);
    const unsigned second = s.len - s.first;
    if (s.host[0])
        std::memcpy(s.host[0], i, s.first);
    else if (!mmio_write(s.gpa[0], i, s.first))
        return false;
    if (second == 0)
        return true;
    if (s.host[1])
        std::memcpy(s.host[1], i + s.first, second);
    else if (!mmio_write(s.gpa[1], i + s.first, second))
        return false;
    return true;
}

bool Cpu::Impl::read_slow(uint64_t lin, unsigned len, void* out, unsigned flags) {
    const unsigned off = lin & 0xfff;
    if (off + len <= 4096) {
        uint8_t* host = nullptr;
        uint64_t gpa = 0;
        if (!resolve(lin, Access::Read, flags, host, gpa))
            return false;
        if (host) {
            if (bus_size(len)) {
                const uint64_t v = load_host(host + off, len);  // one access, as the guest made it
                std::memcpy(out, &v, len);
            } else {
                std::memcpy(out, host + off, len);
            }
            return true;
        }
        return mmio_read(gpa, out, len);
    }
    Span s;
    if (!resolve_span(lin, len, Access::Read, flags, s))
        return false;
    return span_read(s, out);
}

bool Cpu::Impl::write_slow(uint64_t lin, unsigned len, const void* in, unsigned flags) {
    const unsigned off = lin & 0xfff;
    if (off + len <= 4096) {
        uint8_t* host = nullptr;
        uint64_t gpa = 0;
        if (!resolve(lin, Access::Write, flags, host, gpa))
            return false;
        if (host) {
            if (bus_size(len)) {
                uint64_t v = 0;
                std::memcpy(&v, in, len);
                store_host(host + off, len, v);
            } else {
                std::memcpy(host + off, in, len);
            }
            return true;
        }
        return mmio_write(gpa, in, len);
    }
    // Both pages are translated (and may fault) before either is written.
    Span s;
    if (!resolve_span(lin, len, Access::Write, flags, s))
        return false;
    return span_write(s, in);
}

uint8_t* Cpu::Impl::host_for_write(uint64_t lin, unsigned len, unsigned flags, bool& ok) {
    TlbEntry& e = tlb_slot(lin);
    const unsigned off = lin & 0xfff;
    ok = true;
    if (e.tag_write == tag_for(lin, flags) && off <= 4096 - len)
        return e.host + off;
    // A read-modify-write faults as a write (W=1 in the #PF error code) even on its read.
    Span s;
    if (!resolve_span(lin, len, Access::Write, flags, s)) {
        ok = false;
        return nullptr;
    }
    if (s.first == len && s.host[0])
        return s.host[0];
    return nullptr;
}

const uint8_t* Cpu::Impl::host_for_read(uint64_t lin, unsigned len, unsigned flags, bool& ok) {
    TlbEntry& e = tlb_slot(lin);
    const unsigned off = lin & 0xfff;
    ok = true;
    if (e.tag_read == tag_for(lin, flags) && off <= 4096 - len)
        return e.host + off;
    Span s;
    if (!resolve_span(lin, len, Access::Read, flags, s)) {
        ok = false;
        return nullptr;
    }
    if (s.first == len && s.host[0])
        return s.host[0];
    return nullptr;
}

void Cpu::Impl::flush_tlb() {
    for (auto& e : m_tlb)
        e = TlbEntry{};
    for (auto& t : m_table_pages)
        t = TablePage{};
    for (auto& c : m_pde_cache)
        c = PdeCache{};
    m_tlb_large = false;
    m_write_count = 0;
    m_fetch_tag = 0;
    m_fetch_host = nullptr;
}

void Cpu::Impl::flush_tlb_writes() {
    if (m_write_count <= kWriteSlots) {
        for (unsigned i = 0; i < m_write_count; ++i)
            m_tlb[m_write_slots[i]].tag_write = 0;
    } else {
        for (auto& e : m_tlb)
            e.tag_write = 0;
    }
    m_write_count = 0;
}

void Cpu::Impl::invlpg(uint64_t lin) {
    if (m_tlb_large) {
        // The TLB holds 4 KiB pieces of large pages: one INVLPG must drop all of them.
        flush_tlb();
        return;
    }
    for (auto& c : m_pde_cache)  // INVLPG drops all paging-structure cache entries
        c = PdeCache{};
    const uint64_t page = lin & ~0xfffull;
    TlbEntry& e = tlb_slot(lin);
    if (((e.tag_read | e.tag_write | e.tag_exec) & ~0xfffull) == page)
        e = TlbEntry{};
    m_fetch_tag = 0;
    m_fetch_host = nullptr;
}

}  // namespace colod::kvm::soft
