// SPDX-License-Identifier: GPL-2.0-or-later
// The x86-64 interpreter: public entry points, state load/store, event delivery through the
// IDT (exceptions, interrupts, #DF and triple fault) and segment descriptor loading. Decode and
// execution live in cpu_exec.cc, system instructions in cpu_system.cc, paging in cpu_mmu.cc,
// the shared internals in cpu_impl.h.
//
// What the interpreter does and does not do:
//  - 64-bit mode only. Real mode, protected mode and compatibility-mode code segments stop with
//    Internal ("CPU mode not supported"), also when IRETQ, SYSRET or an IDT gate would lead
//    there.
//  - The general-purpose integer ISA as compilers emit it, BMI1/BMI2 (VEX) and MOVBE included,
//    with exact flags. x87, MMX, SSE and AVX instructions (and FXSAVE/XSAVE/LDMXCSR, FWAIT)
//    raise #UD, whatever CR0/CR4 say: the guests are built with -mgeneral-regs-only, and a #UD
//    is visible to the guest where #NM would make it think the state is lazily switched.
//  - Defined instructions left out stop with Internal and the instruction bytes in the detail:
//    far CALL/JMP/RET, LAR/LSL/VERR/VERW, LSS/LFS/LGS, SYSENTER/SYSEXIT, MONITOR/MWAIT,
//    RDPMC, CRC32, ADCX/ADOX, 16/32-bit IRET, INS from a port that exits to userspace.
//  - Paging: 4-level, 4 KiB / 2 MiB / 1 GiB pages, P R/W U/S XD (EFER.NXE), CR0.WP, SMEP,
//    SMAP (with STAC/CLAC), accessed and dirty bits, #PF error codes and CR2. No PCID
//    (CR3 writes flush everything), no protection keys, no 5-level paging.
//  - Not modelled: TF single-step and debug registers (MOV DRn only stores), RFLAGS.AC
//    alignment checks, NMIs, SMM, VMX/SVM, TSX, CET, MTRR/PAT memory types. A branch to a
//    non-canonical address faults (#GP) at the target rather than at the branch.
//  - Atomicity: LOCKed read-modify-writes and XCHG are atomic on host memory when the operand
//    is naturally aligned and in one page; aligned 1/2/4/8-byte accesses are single host
//    accesses.
#include "kvm/soft/cpu.h"

#include <fmt/format.h>

#include <algorithm>

#include "kvm/soft/cpu_impl.h"

namespace colod::kvm::soft {

using namespace x86;

Cpu::Cpu() : m_impl(std::make_unique<Impl>()) {}
Cpu::~Cpu() = default;

Stop Cpu::run(CpuState& state, CpuBus& bus, uint64_t budget) {
    return m_impl->run(state, bus, budget);
}

void Cpu::complete_pio_in(CpuState& state, const void* data, uint32_t size) {
    uint32_t v = 0;
    std::memcpy(&v, data, std::min<uint32_t>(size, 4));
    auto& rax = state.regs.rax;
    switch (size) {
    case 1: rax = (rax & ~0xffull) | (v & 0xff); break;
    case 2: rax = (rax & ~0xffffull) | (v & 0xffff); break;
    default: rax = v; break;  // a 32-bit register write zero-extends
    }
}

void Cpu::complete_mmio_read(uint64_t gpa, const void* data, uint32_t len) {
    m_impl->m_mmio_valid = true;
    m_impl->m_mmio_gpa = gpa;
    m_impl->m_mmio_len = std::min<uint32_t>(len, 8);
    std::memcpy(m_impl->m_mmio_data, data, m_impl->m_mmio_len);
}

void Cpu::flush_tlb() { m_impl->flush_tlb(); }

// ---- state ------------------------------------------------------------------------------------

void Cpu::Impl::load_state() {
    const kvm_regs& r = m_st->regs;
    m_r[RAX] = r.rax;
    m_r[RCX] = r.rcx;
    m_r[RDX] = r.rdx;
    m_r[RBX] = r.rbx;
    m_r[RSP] = r.rsp;
    m_r[RBP] = r.rbp;
    m_r[RSI] = r.rsi;
    m_r[RDI] = r.rdi;
    m_r[R8] = r.r8;
    m_r[R9] = r.r9;
    m_r[R10] = r.r10;
    m_r[R11] = r.r11;
    m_r[R12] = r.r12;
    m_r[R13] = r.r13;
    m_r[R14] = r.r14;
    m_r[R15] = r.r15;
    m_rip = r.rip;
    m_rflags = r.rflags | FIXED1;
    m_fop = FlagOp::None;
    m_shadow = m_st->interrupt_shadow;
    set_cpl(m_st->sregs.cs.dpl);
}

void Cpu::Impl::store_state() {
    kvm_regs& r = m_st->regs;
    r.rax = m_r[RAX];
    r.rcx = m_r[RCX];
    r.rdx = m_r[RDX];
    r.rbx = m_r[RBX];
    r.rsp = m_r[RSP];
    r.rbp = m_r[RBP];
    r.rsi = m_r[RSI];
    r.rdi = m_r[RDI];
    r.r8 = m_r[R8];
    r.r9 = m_r[R9];
    r.r10 = m_r[R10];
    r.r11 = m_r[R11];
    r.r12 = m_r[R12];
    r.r13 = m_r[R13];
    r.r14 = m_r[R14];
    r.r15 = m_r[R15];
    r.rip = m_rip;
    r.rflags = rflags();
    m_st->interrupt_shadow = m_shadow;
}

bool Cpu::Impl::long_mode_ok(std::string& why) const {
    const auto& sr = m_st->sregs;
    if (!(sr.cr0 & CR0_PE) || !(sr.cr0 & CR0_PG) || !(sr.cr4 & CR4_PAE) || !(sr.efer & EFER_LMA)) {
        why = fmt::format("CPU mode not supported: only 64-bit long mode is (cr0={:#x} cr4={:#x} "
                          "efer={:#x})",
                          sr.cr0, sr.cr4, sr.efer);
        return false;
    }
    if (!sr.cs.l || sr.cs.db) {
        why = fmt::format("CPU mode not supported: compatibility mode code segment (cs={:#x} "
                          "l={} db={}) at rip {:#x}",
                          sr.cs.selector, sr.cs.l, sr.cs.db, m_rip);
        return false;
    }
    return true;
}

void Cpu::Impl::set_cpl(uint8_t cpl) {
    m_cpl = cpl;
    m_user = cpl == 3;
    m_tag_bits = m_user ? 3 : 1;
}

kvm_segment& Cpu::Impl::sreg(unsigned index) {
    auto& sr = m_st->sregs;
    switch (index) {
    case 0: return sr.es;
    case 1: return sr.cs;
    case 2: return sr.ss;
    case 3: return sr.ds;
    case 4: return sr.fs;
    default: return sr.gs;
    }
}

void Cpu::Impl::internal(const Insn& d, std::string_view what) {
    std::string bytes;
    if (d.bytes != nullptr) {
        const unsigned n = d.len ? d.len : 15;
        for (unsigned i = 0; i < n; ++i)
            bytes += fmt::format("{}{:02x}", i ? " " : "", d.bytes[i]);
    }
    m_abort = Abort::Internal;
    m_detail = fmt::format("{} at rip {:#x} (bytes {})", what, d.rip, bytes);
}

// ---- events -----------------------------------------------------------------------------------

static bool contributory(const Event& e) {
    return e.kind == EventKind::Exception &&
           (e.vector == DE || e.vector == TS || e.vector == NP || e.vector == SS || e.vector == GP);
}

Cpu::Impl::Delivery Cpu::Impl::raise_event(const Event& first, uint64_t return_rip,
                                           uint64_t fault_rip) {
    Event ev = first;
    uint64_t rip = return_rip;
    for (int depth = 0; depth < 4; ++depth) {
        m_abort = Abort::None;
        if (deliver(ev, rip))
            return Delivery::Ok;
        if (m_abort == Abort::Internal)
            return Delivery::Internal;
        if (m_abort != Abort::Fault) {
            m_abort = Abort::Internal;
            m_detail = fmt::format("delivering vector {} touched MMIO that exits to userspace",
                                   ev.vector);
            return Delivery::Internal;
        }
        // A fault while delivering `ev`: the rules of the SDM's "Conditions for Generating a
        // Double Fault" table decide between #DF and handling the second one serially.
        const Event second = m_event;
        if (ev.kind == EventKind::Exception && ev.vector == DFV)
            return Delivery::Shutdown;
        const bool first_pf = ev.kind == EventKind::Exception && ev.vector == PFV;
        const bool second_pf = second.kind == EventKind::Exception && second.vector == PFV;
        if ((contributory(ev) && contributory(second)) || (first_pf && (contributory(second) || second_pf)))
            ev = Event{DFV, EventKind::Exception, true, 0, 0};
        else
            ev = second;
        rip = fault_rip;
    }
    return Delivery::Shutdown;
}

bool Cpu::Impl::deliver(const Event& ev, uint64_t return_rip) {
    auto& sr = m_st->sregs;
    const bool software = ev.kind == EventKind::SoftInt || ev.kind == EventKind::SoftExc;
    const uint32_t ext = software ? 0 : 1;
    const uint32_t idt_error = static_cast<uint32_t>(ev.vector) * 8 + 2 + ext;
    if (ev.kind == EventKind::Exception && ev.vector == PFV)
        sr.cr2 = ev.cr2;

    if (static_cast<uint32_t>(ev.vector) * 16 + 15 > sr.idt.limit)
        return fault(GP, idt_error);
    uint64_t lo = 0, hi = 0;
    const uint64_t gate = sr.idt.base + static_cast<uint64_t>(ev.vector) * 16;
    if (!read_sys(gate, 8, lo) || !read_sys(gate + 8, 8, hi))
        return false;
    const unsigned type = (lo >> 40) & 0xf;
    const unsigned gate_dpl = (lo >> 45) & 3;
    if ((type != 0xe && type != 0xf) || ((lo >> 44) & 1))
        return fault(GP, idt_error);  // not a 64-bit interrupt or trap gate
    if (software && gate_dpl < m_cpl)
        return fault(GP, idt_error);
    if (!((lo >> 47) & 1))
        return fault(NP, idt_error);
    const auto sel = static_cast<uint16_t>(lo >> 16);
    const uint64_t target = (lo & 0xffff) | ((lo >> 32) & 0xffff0000ull) | (hi << 32);
    const unsigned ist = (lo >> 32) & 7;

    if ((sel & ~3) == 0)
        return fault(GP, ext);
    uint64_t clo = 0;
    if (!read_descriptor(sel, clo, nullptr, GP, ext))
        return false;
    const bool code = ((clo >> 44) & 1) && ((clo >> 43) & 1);
    const unsigned cdpl = (clo >> 45) & 3;
    const bool conforming = (clo >> 42) & 1;
    if (!code || cdpl > m_cpl)
        return fault(GP, (sel & 0xfffc) | ext);
    if (!((clo >> 47) & 1))
        return fault(NP, (sel & 0xfffc) | ext);
    if (!((clo >> 53) & 1) || ((clo >> 54) & 1)) {
        m_abort = Abort::Internal;
        m_detail = fmt::format("CPU mode not supported: handler of vector {} is in a "
                               "compatibility mode code segment ({:#x})",
                               ev.vector, sel);
        return false;
    }
    const uint8_t new_cpl = conforming ? m_cpl : static_cast<uint8_t>(cdpl);

    // The stack: RSPn of the TSS on a privilege change, an IST stack if the gate names one.
    uint64_t rsp = m_r[RSP];
    unsigned tss_offset = 0;
    if (ist != 0)
        tss_offset = 36 + 8 * (ist - 1);
    else if (new_cpl < m_cpl)
        tss_offset = 4 + 8 * new_cpl;
    if (tss_offset != 0) {
        if (sr.tr.unusable || !sr.tr.present || tss_offset + 7 > sr.tr.limit)
            return fault(TS, (sr.tr.selector & 0xfffc) | ext);
        if (!read_sys(sr.tr.base + tss_offset, 8, rsp))
            return false;
    }
    rsp &= ~0xfull;

    const uint64_t flags = rflags();
    uint64_t frame[6];
    unsigned n = 0;
    if (ev.has_error)
        frame[n++] = ev.error;
    frame[n++] = return_rip;
    frame[n++] = sr.cs.selector;
    frame[n++] = flags;
    frame[n++] = m_r[RSP];
    frame[n++] = sr.ss.selector;
    const uint64_t new_rsp = rsp - 8 * n;
    const unsigned wflags = (new_cpl == 3 ? kAccUser : 0) | kAccStack;
    for (unsigned i = 0; i < n; ++i)
        if (!write_mem(new_rsp + 8 * i, 8, frame[i], wflags))
            return false;

    // Committed from here on.
    sr.cs = segment_from_descriptor(static_cast<uint16_t>((sel & 0xfffc) | new_cpl), clo, 0);
    if (new_cpl != m_cpl) {
        // In 64-bit mode a privilege change loads SS with a null selector whose RPL is the new
        // CPL.
        kvm_segment ss{};
        ss.selector = new_cpl;
        ss.type = 3;
        ss.s = 1;
        ss.dpl = new_cpl;
        ss.db = 1;
        ss.g = 1;
        ss.limit = 0xffffffff;
        ss.unusable = 1;
        sr.ss = ss;
    }
    set_cpl(new_cpl);
    m_r[RSP] = new_rsp;
    m_rip = target;
    m_rflags = flags & ~(TF | NT | RF | VM);
    if (type == 0xe)
        m_rflags &= ~IF;
    m_fop = FlagOp::None;
    m_shadow = 0;
    return true;
}

// ---- segments ---------------------------------------------------------------------------------

bool Cpu::Impl::read_descriptor(uint16_t sel, uint64_t& lo, uint64_t* hi, uint8_t vector,
                                uint32_t ext) {
    const auto& sr = m_st->sregs;
    const bool ldt = sel & 4;
    const uint64_t base = ldt ? sr.ldt.base : sr.gdt.base;
    const uint32_t limit = ldt ? (sr.ldt.unusable ? 0 : sr.ldt.limit) : sr.gdt.limit;
    const uint32_t index = sel & ~7u;
    const uint32_t need = hi ? 15 : 7;
    if ((ldt && (sr.ldt.unusable || !sr.ldt.present)) || index + need > limit)
        return fault(vector, (sel & 0xfffc) | ext);
    if (!read_sys(base + index, 8, lo))
        return false;
    if (hi && !read_sys(base + index + 8, 8, *hi))
        return false;
    return true;
}

kvm_segment Cpu::Impl::segment_from_descriptor(uint16_t sel, uint64_t lo, uint64_t hi) {
    kvm_segment s{};
    s.base = ((lo >> 16) & 0xffffff) | (((lo >> 56) & 0xff) << 24);
    const bool system = !((lo >> 44) & 1);
    if (system)
        s.base |= (hi & 0xffffffff) << 32;
    uint32_t limit = static_cast<uint32_t>((lo & 0xffff) | ((lo >> 32) & 0xf0000));
    s.g = (lo >> 55) & 1;
    if (s.g)
        limit = (limit << 12) | 0xfff;
    s.limit = limit;
    s.selector = sel;
    s.type = (lo >> 40) & 0xf;
    s.s = (lo >> 44) & 1;
    s.dpl = (lo >> 45) & 3;
    s.present = (lo >> 47) & 1;
    s.avl = (lo >> 52) & 1;
    s.l = (lo >> 53) & 1;
    s.db = (lo >> 54) & 1;
    s.unusable = 0;
    return s;
}

bool Cpu::Impl::load_data_segment(unsigned index, uint16_t sel) {
    kvm_segment& seg = sreg(index);
    const bool is_ss = index == 2;
    if ((sel & 0xfffc) == 0) {
        // Null selectors are fine for DS/ES/FS/GS in 64-bit mode, and for SS below CPL 3 with
        // RPL = CPL. Loading one clears the hidden base (as Intel CPUs do).
        if (is_ss && (m_cpl == 3 || (sel & 3) != m_cpl))
            return gp0();
        kvm_segment s{};
        s.selector = sel;
        s.unusable = 1;
        if (is_ss) {
            s.type = 3;
            s.s = 1;
            s.dpl = m_cpl;
            s.db = 1;
        }
        seg = s;
        return true;
    }
    uint64_t lo = 0;
    if (!read_descriptor(sel, lo, nullptr, GP, 0))
        return false;
    const unsigned type = (lo >> 40) & 0xf;
    const bool s = (lo >> 44) & 1;
    const unsigned dpl = (lo >> 45) & 3;
    const bool present = (lo >> 47) & 1;
    const unsigned rpl = sel & 3;
    const bool code = type & 8;
    const uint32_t err = sel & 0xfffc;
    if (is_ss) {
        if (rpl != m_cpl || dpl != m_cpl || !s || code || !(type & 2))
            return fault(GP, err);
        if (!present)
            return fault(SS, err);
    } else {
        if (!s || (code && !(type & 2)))
            return fault(GP, err);
        const bool conforming_code = code && (type & 4);
        if (!conforming_code && (dpl < m_cpl || dpl < rpl))
            return fault(GP, err);
        if (!present)
            return fault(NP, err);
    }
    if (!(type & 1)) {
        // Mark the descriptor accessed, as the CPU does on a load.
        lo |= 1ull << 40;
        const uint64_t base = (sel & 4) ? m_st->sregs.ldt.base : m_st->sregs.gdt.base;
        if (!write_sys(base + (sel & ~7u), 8, lo))
            return false;
    }
    seg = segment_from_descriptor(sel, lo, 0);
    return true;
}

}  // namespace colod::kvm::soft
