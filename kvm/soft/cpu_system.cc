// SPDX-License-Identifier: GPL-2.0-or-later
// System instructions of the interpreter: control and debug registers, descriptor tables,
// MSRs, SYSCALL/SYSRET, IRETQ, POPF, CPUID and TSC reads, the I/O permission check.
#include <fmt/format.h>

#include "kvm/soft/cpu_impl.h"

namespace colod::kvm::soft {

using namespace x86;

#define GUEST_TRY(expr)              \
    do {                             \
        if (!(expr)) [[unlikely]]    \
            return false;            \
    } while (0)

namespace {

// A flat 64-bit code or data segment as SYSCALL and SYSRET load them.
kvm_segment flat_segment(uint16_t selector, bool code, uint8_t dpl) {
    kvm_segment s{};
    s.base = 0;
    s.limit = 0xffffffff;
    s.selector = selector;
    s.type = code ? 0xb : 0x3;
    s.present = 1;
    s.dpl = dpl;
    s.db = code ? 0 : 1;
    s.s = 1;
    s.l = code ? 1 : 0;
    s.g = 1;
    return s;
}

bool valid_pat(uint64_t v) {
    for (unsigned i = 0; i < 8; ++i) {
        const unsigned t = (v >> (8 * i)) & 0xff;
        if (t == 2 || t == 3 || t > 7)
            return false;
    }
    return true;
}

}  // namespace

bool Cpu::Impl::exec_system(Insn& d) {
    auto& sr = m_st->sregs;
    switch (d.op) {
    case 0x100: return exec_group6(d);
    case 0x101: return exec_group7(d);
    case 0x105: return exec_syscall(d);
    case 0x107: return exec_sysret(d);
    case 0x106:  // CLTS
        if (m_cpl != 0)
            return gp0();
        sr.cr0 &= ~CR0_TS;
        return true;
    case 0x108:
    case 0x109:  // INVD, WBINVD: no caches to manage
        if (m_cpl != 0)
            return gp0();
        return true;
    case 0x120:
    case 0x122: return exec_mov_cr(d);
    case 0x121:
    case 0x123: return exec_mov_dr(d);
    case 0x130: return exec_wrmsr(d);
    case 0x132: return exec_rdmsr(d);
    case 0x131: {  // RDTSC
        if ((sr.cr4 & CR4_TSD) && m_cpl != 0)
            return gp0();
        const uint64_t t = m_bus->tsc();
        m_r[RAX] = t & 0xffffffff;
        m_r[RDX] = t >> 32;
        return true;
    }
    case 0x1a2: return exec_cpuid(d);
    case 0x1ae: {  // group 15
        if (d.mod != 3) {
            if (d.regop == 7 || (d.regop == 6 && d.o16))
                return true;  // CLFLUSH, CLFLUSHOPT, CLWB: coherent host memory, nothing to do
            return ud();      // FXSAVE, FXRSTOR, LDMXCSR, STMXCSR, XSAVE*, XRSTOR: no FPU state
        }
        if (d.rep == 0xf3 && d.regop < 4) {  // RDFSBASE RDGSBASE WRFSBASE WRGSBASE
            if (!(sr.cr4 & CR4_FSGSBASE))
                return ud();
            kvm_segment& seg = (d.regop & 1) ? sr.gs : sr.fs;
            const unsigned size = d.opsize == 8 ? 8 : 4;
            if (d.regop < 2) {
                reg_write(d.rm, size, seg.base & size_mask(size), true);
                return true;
            }
            const uint64_t v = reg_read(d.rm, size, true);
            if (!canonical(v))
                return gp0();
            seg.base = v;
            return true;
        }
        if (d.rep == 0 && d.regop >= 5) {  // LFENCE MFENCE SFENCE
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            return true;
        }
        return ud();
    }
    case 0x102:
    case 0x103: internal(d, "LAR/LSL not supported"); return false;
    case 0x1b2:
    case 0x1b4:
    case 0x1b5: internal(d, "LSS/LFS/LGS not supported"); return false;
    case 0x133: internal(d, "RDPMC not supported"); return false;
    case 0x134:
    case 0x135: internal(d, "SYSENTER/SYSEXIT not supported"); return false;
    default: return ud();  // MMX, SSE, 3DNow!, RSM and undefined encodings
    }
}

bool Cpu::Impl::exec_group6(Insn& d) {
    auto& sr = m_st->sregs;
    switch (d.regop) {
    case 0:
    case 1: {  // SLDT, STR
        if ((sr.cr4 & CR4_UMIP) && m_cpl != 0)
            return gp0();
        const uint64_t sel = d.regop == 0 ? sr.ldt.selector : sr.tr.selector;
        if (d.mod == 3) {
            reg_write(d.rm, d.opsize, sel, true);
            return true;
        }
        return write(d.ea, 2, sel);
    }
    case 2:
    case 3: {  // LLDT, LTR
        if (m_cpl != 0)
            return gp0();
        uint64_t v;
        GUEST_TRY(rm_read(d, 2, v));
        const auto sel = static_cast<uint16_t>(v);
        const bool ltr = d.regop == 3;
        if ((sel & 0xfffc) == 0) {
            if (ltr)
                return gp0();
            sr.ldt = kvm_segment{};
            sr.ldt.selector = sel;
            sr.ldt.unusable = 1;
            return true;
        }
        if (sel & 4)
            return fault(GP, sel & 0xfffc);
        uint64_t lo = 0, hi = 0;
        GUEST_TRY(read_descriptor(sel, lo, &hi, GP, 0));
        const unsigned type = (lo >> 40) & 0xf;
        const bool system = !((lo >> 44) & 1);
        if (!system || type != (ltr ? 9u : 2u))
            return fault(GP, sel & 0xfffc);
        if (!((lo >> 47) & 1))
            return fault(NP, sel & 0xfffc);
        if (ltr) {
            lo |= 2ull << 40;  // busy
            GUEST_TRY(write_sys(sr.gdt.base + (sel & ~7u), 8, lo));
            sr.tr = segment_from_descriptor(sel, lo, hi);
        } else {
            sr.ldt = segment_from_descriptor(sel, lo, hi);
        }
        return true;
    }
    case 4:
    case 5: internal(d, "VERR/VERW not supported"); return false;
    default: return ud();
    }
}

bool Cpu::Impl::exec_group7(Insn& d) {
    auto& sr = m_st->sregs;
    if (d.mod != 3) {
        switch (d.regop) {
        case 0:
        case 1: {  // SGDT, SIDT
            if ((sr.cr4 & CR4_UMIP) && m_cpl != 0)
                return gp0();
            const kvm_dtable& t = d.regop == 0 ? sr.gdt : sr.idt;
            // Check both parts before writing either.
            bool ok = true;
            host_for_write(d.ea, 2, acc_flags(), ok);
            if (!ok)
                return false;
            host_for_write(d.ea + 2, 8, acc_flags(), ok);
            if (!ok)
                return false;
            GUEST_TRY(write(d.ea, 2, t.limit));
            return write(d.ea + 2, 8, t.base);
        }
        case 2:
        case 3: {  // LGDT, LIDT
            if (m_cpl != 0)
                return gp0();
            uint64_t limit, base;
            GUEST_TRY(read(d.ea, 2, limit));
            GUEST_TRY(read(d.ea + 2, 8, base));
            if (!canonical(base))
                return gp0();
            kvm_dtable& t = d.regop == 2 ? sr.gdt : sr.idt;
            t.base = base;
            t.limit = static_cast<uint16_t>(limit);
            return true;
        }
        case 4:  // SMSW m16
            if ((sr.cr4 & CR4_UMIP) && m_cpl != 0)
                return gp0();
            return write(d.ea, 2, sr.cr0 & 0xffff);
        case 6: {  // LMSW m16
            if (m_cpl != 0)
                return gp0();
            uint64_t v;
            GUEST_TRY(read(d.ea, 2, v));
            return write_cr0((sr.cr0 & ~0xeull) | (v & 0xf) | (sr.cr0 & CR0_PE));
        }
        case 7:  // INVLPG
            if (m_cpl != 0)
                return gp0();
            invlpg(d.ea);
            return true;
        default: return ud();
        }
    }
    const unsigned modrm = 0xc0 | (d.regop << 3) | (d.rm & 7);
    switch (modrm) {
    case 0xca:
    case 0xcb:  // CLAC, STAC
        if (m_cpl != 0)
            return ud();
        if (modrm == 0xca)
            m_rflags &= ~AC;
        else
            m_rflags |= AC;
        return true;
    case 0xd0:
    case 0xd1: {  // XGETBV, XSETBV
        if (!(sr.cr4 & CR4_OSXSAVE))
            return ud();
        const uint32_t index = static_cast<uint32_t>(m_r[RCX]);
        if (modrm == 0xd0) {
            if (index != 0)
                return gp0();
            m_r[RAX] = m_st->xcr0 & 0xffffffff;
            m_r[RDX] = m_st->xcr0 >> 32;
            return true;
        }
        if (m_cpl != 0 || index != 0)
            return gp0();
        const uint64_t v = (m_r[RAX] & 0xffffffff) | (m_r[RDX] << 32);
        uint32_t leaf[4] = {};
        m_bus->cpuid(0xd, 0, leaf);
        const uint64_t supported = leaf[0] | (static_cast<uint64_t>(leaf[3]) << 32) | 1;
        if (!(v & 1) || ((v & 4) && !(v & 2)) || (v & ~supported))
            return gp0();
        m_st->xcr0 = v;
        return true;
    }
    case 0xe8: return true;  // SERIALIZE
    case 0xf8: {             // SWAPGS
        if (m_cpl != 0)
            return gp0();
        const uint64_t t = sr.gs.base;
        sr.gs.base = m_st->kernel_gs_base;
        m_st->kernel_gs_base = t;
        return true;
    }
    case 0xf9: {  // RDTSCP
        if ((sr.cr4 & CR4_TSD) && m_cpl != 0)
            return gp0();
        const uint64_t t = m_bus->tsc();
        m_r[RAX] = t & 0xffffffff;
        m_r[RDX] = t >> 32;
        m_r[RCX] = m_st->tsc_aux & 0xffffffff;
        return true;
    }
    case 0xc8:
    case 0xc9:
    case 0xfa:
    case 0xfb: internal(d, "MONITOR/MWAIT not supported"); return false;
    case 0xfc: internal(d, "CLZERO not supported"); return false;
    default: break;
    }
    if (d.regop == 4) {  // SMSW r
        if ((sr.cr4 & CR4_UMIP) && m_cpl != 0)
            return gp0();
        reg_write(d.rm, d.opsize, sr.cr0 & size_mask(d.opsize), true);
        return true;
    }
    if (d.regop == 6) {  // LMSW r16
        if (m_cpl != 0)
            return gp0();
        const uint64_t v = m_r[d.rm] & 0xf;
        return write_cr0((sr.cr0 & ~0xeull) | v | (sr.cr0 & CR0_PE));
    }
    return ud();  // VMX, SVM, TSX, PKU ...
}

bool Cpu::Impl::write_cr0(uint64_t v) {
    auto& sr = m_st->sregs;
    if (v >> 32)
        return gp0();
    if ((v & CR0_PG) && !(v & CR0_PE))
        return gp0();
    if ((v & CR0_NW) && !(v & CR0_CD))
        return gp0();
    // Leaving paging (and so long mode) is only possible from compatibility mode, which the
    // interpreter never runs: in 64-bit mode clearing PG is a #GP.
    if (!(v & CR0_PG))
        return gp0();
    v |= CR0_ET;
    if ((v ^ sr.cr0) & (CR0_PG | CR0_WP | CR0_CD | CR0_PE))
        flush_tlb();
    sr.cr0 = v;
    return true;
}

bool Cpu::Impl::write_cr4(uint64_t v) {
    auto& sr = m_st->sregs;
    constexpr uint64_t allowed = CR4_VME | CR4_PVI | CR4_TSD | CR4_DE | CR4_PSE | CR4_PAE |
                                 CR4_MCE | CR4_PGE | CR4_PCE | CR4_OSFXSR | CR4_OSXMMEXCPT |
                                 CR4_UMIP | CR4_LA57 | CR4_FSGSBASE | CR4_PCIDE | CR4_OSXSAVE |
                                 CR4_SMEP | CR4_SMAP;
    if (v & ~allowed)
        return gp0();  // includes VMXE, SMXE, PKE and CET, which the interpreter lacks
    if (!(v & CR4_PAE) || ((v ^ sr.cr4) & CR4_LA57))
        return gp0();
    if ((v & CR4_PCIDE) && !(sr.cr4 & CR4_PCIDE) && (sr.cr3 & 0xfff))
        return gp0();
    if (v != sr.cr4)
        flush_tlb();
    sr.cr4 = v;
    return true;
}

bool Cpu::Impl::exec_mov_cr(Insn& d) {
    auto& sr = m_st->sregs;
    if (m_cpl != 0)
        return gp0();
    const unsigned cr = d.reg;
    const unsigned r = d.rm;  // always a register, whatever ModRM.mod says
    if (d.op == 0x120) {
        switch (cr) {
        case 0: m_r[r] = sr.cr0; return true;
        case 2: m_r[r] = sr.cr2; return true;
        case 3: m_r[r] = sr.cr3; return true;
        case 4: m_r[r] = sr.cr4; return true;
        case 8: m_r[r] = m_bus->read_cr8() & 0xf; return true;
        default: return ud();
        }
    }
    const uint64_t v = m_r[r];
    switch (cr) {
    case 0: return write_cr0(v);
    case 2: sr.cr2 = v; return true;
    case 3:
        if (v & 0xfff0000000000000ull & ~(1ull << 63))
            return gp0();
        sr.cr3 = (sr.cr4 & CR4_PCIDE) ? v & ~(1ull << 63) : v;
        flush_tlb();
        return true;
    case 4: return write_cr4(v);
    case 8:
        if (v & ~0xfull)
            return gp0();
        m_bus->write_cr8(v);
        m_check_irq = true;  // a lower priority may let a pending interrupt through
        return true;
    default: return ud();
    }
}

bool Cpu::Impl::exec_mov_dr(Insn& d) {
    auto& sr = m_st->sregs;
    unsigned dr = d.reg;
    if (dr > 7)
        return ud();
    if (dr == 4 || dr == 5) {
        if (sr.cr4 & CR4_DE)
            return ud();
        dr += 2;
    }
    if (m_cpl != 0)
        return gp0();
    if (d.op == 0x121) {
        m_r[d.rm] = m_dr[dr];
        return true;
    }
    const uint64_t v = m_r[d.rm];
    if ((dr == 6 || dr == 7) && (v >> 32))
        return gp0();
    // Stored only: the interpreter implements no debug breakpoints.
    m_dr[dr] = v;
    return true;
}

bool Cpu::Impl::exec_iret(Insn& d) {
    auto& sr = m_st->sregs;
    if (!(d.rex & 8)) {
        internal(d, "IRET with a 16/32-bit operand size not supported (use IRETQ)");
        return false;
    }
    const uint64_t sp = m_r[RSP];
    const unsigned fl = acc_flags() | kAccStack;
    uint64_t rip, cs, flags, rsp, ss;
    GUEST_TRY(read_mem(sp, 8, rip, fl));
    GUEST_TRY(read_mem(sp + 8, 8, cs, fl));
    GUEST_TRY(read_mem(sp + 16, 8, flags, fl));
    GUEST_TRY(read_mem(sp + 24, 8, rsp, fl));
    GUEST_TRY(read_mem(sp + 32, 8, ss, fl));

    const auto cs_sel = static_cast<uint16_t>(cs);
    const unsigned rpl = cs_sel & 3;
    if ((cs_sel & 0xfffc) == 0)
        return gp0();
    if (rpl < m_cpl)
        return fault(GP, cs_sel & 0xfffc);
    uint64_t clo = 0;
    GUEST_TRY(read_descriptor(cs_sel, clo, nullptr, GP, 0));
    const unsigned ctype = (clo >> 40) & 0xf;
    const unsigned cdpl = (clo >> 45) & 3;
    if (!((clo >> 44) & 1) || !(ctype & 8))
        return fault(GP, cs_sel & 0xfffc);
    if ((ctype & 4) ? cdpl > rpl : cdpl != rpl)
        return fault(GP, cs_sel & 0xfffc);
    if (!((clo >> 47) & 1))
        return fault(NP, cs_sel & 0xfffc);
    if (!((clo >> 53) & 1) || ((clo >> 54) & 1)) {
        internal(d, fmt::format("CPU mode not supported: IRETQ to compatibility mode (cs {:#x})",
                                cs_sel));
        return false;
    }
    const auto new_cpl = static_cast<uint8_t>(rpl);

    const auto ss_sel = static_cast<uint16_t>(ss);
    kvm_segment new_ss{};
    if ((ss_sel & 0xfffc) == 0) {
        if (new_cpl == 3 || (ss_sel & 3) != new_cpl)
            return gp0();
        new_ss.selector = ss_sel;
        new_ss.type = 3;
        new_ss.s = 1;
        new_ss.dpl = new_cpl;
        new_ss.db = 1;
        new_ss.unusable = 1;
    } else {
        if ((ss_sel & 3) != new_cpl)
            return fault(GP, ss_sel & 0xfffc);
        uint64_t slo = 0;
        GUEST_TRY(read_descriptor(ss_sel, slo, nullptr, GP, 0));
        const unsigned stype = (slo >> 40) & 0xf;
        if (!((slo >> 44) & 1) || (stype & 8) || !(stype & 2) || ((slo >> 45) & 3) != new_cpl)
            return fault(GP, ss_sel & 0xfffc);
        if (!((slo >> 47) & 1))
            return fault(SS, ss_sel & 0xfffc);
        new_ss = segment_from_descriptor(ss_sel, slo | (1ull << 40), 0);
    }
    if (!canonical(rip))
        return gp0();

    uint64_t mask = CF | PF | AF | ZF | SF | TF | DF | OF | NT | RF | AC | ID;
    if (m_cpl == 0)
        mask |= IOPL | VIF | VIP;
    if (m_cpl <= ((m_rflags & IOPL) >> 12))
        mask |= IF;
    const uint64_t new_flags = ((rflags() & ~mask) | (flags & mask) | FIXED1) & ~RF;

    // Committed from here on.
    const uint8_t old_cpl = m_cpl;
    sr.cs = segment_from_descriptor(cs_sel, clo, 0);
    sr.ss = new_ss;
    set_cpl(new_cpl);
    m_r[RSP] = rsp;
    m_rip = rip;
    m_rflags = new_flags;
    m_fop = FlagOp::None;
    if (new_cpl > old_cpl) {
        // Data segments the outer level may not use are nulled.
        for (kvm_segment* seg : {&sr.es, &sr.ds, &sr.fs, &sr.gs}) {
            const bool conforming_code = (seg->type & 8) && (seg->type & 4);
            if (!seg->unusable && seg->s && !conforming_code && seg->dpl < new_cpl) {
                seg->selector = 0;
                seg->unusable = 1;
            }
        }
    }
    m_check_irq = true;
    return true;
}

bool Cpu::Impl::exec_syscall(Insn& d) {
    auto& sr = m_st->sregs;
    if (!(sr.efer & EFER_SCE))
        return ud();
    const uint64_t flags = rflags();
    m_r[RCX] = d.next;
    m_r[R11] = flags & ~RF;
    const auto sel = static_cast<uint16_t>((m_st->star >> 32) & 0xfffc);
    sr.cs = flat_segment(sel, true, 0);
    sr.ss = flat_segment(static_cast<uint16_t>(sel + 8), false, 0);
    m_rflags = (flags & ~m_st->fmask & ~RF) | FIXED1;
    m_fop = FlagOp::None;
    m_rip = m_st->lstar;
    set_cpl(0);
    return true;
}

bool Cpu::Impl::exec_sysret(Insn& d) {
    auto& sr = m_st->sregs;
    if (!(sr.efer & EFER_SCE))
        return ud();
    if (m_cpl != 0)
        return gp0();
    if (!(d.rex & 8)) {
        internal(d, "CPU mode not supported: SYSRET to compatibility mode");
        return false;
    }
    if (!canonical(m_r[RCX]))
        return gp0();
    const auto base = static_cast<uint16_t>(m_st->star >> 48);
    sr.cs = flat_segment(static_cast<uint16_t>((base + 16) | 3), true, 3);
    sr.ss = flat_segment(static_cast<uint16_t>((base + 8) | 3), false, 3);
    m_rflags = (m_r[R11] & 0x3c7fd7) | FIXED1;
    m_fop = FlagOp::None;
    m_rip = m_r[RCX];
    set_cpl(3);
    m_check_irq = true;
    return true;
}

bool Cpu::Impl::exec_rdmsr(Insn&) {
    auto& sr = m_st->sregs;
    if (m_cpl != 0)
        return gp0();
    const auto index = static_cast<uint32_t>(m_r[RCX]);
    uint64_t v = 0;
    switch (index) {
    case MSR_EFER: v = sr.efer; break;
    case MSR_STAR: v = m_st->star; break;
    case MSR_LSTAR: v = m_st->lstar; break;
    case MSR_CSTAR: v = m_st->cstar; break;
    case MSR_FMASK: v = m_st->fmask; break;
    case MSR_FS_BASE: v = sr.fs.base; break;
    case MSR_GS_BASE: v = sr.gs.base; break;
    case MSR_KERNEL_GS_BASE: v = m_st->kernel_gs_base; break;
    case MSR_SYSENTER_CS: v = m_st->sysenter_cs; break;
    case MSR_SYSENTER_ESP: v = m_st->sysenter_esp; break;
    case MSR_SYSENTER_EIP: v = m_st->sysenter_eip; break;
    case MSR_TSC_AUX: v = m_st->tsc_aux; break;
    case MSR_PAT: v = m_st->pat; break;
    default:
        if (!m_bus->rdmsr(index, v))
            return gp0();
        break;
    }
    m_r[RAX] = v & 0xffffffff;
    m_r[RDX] = v >> 32;
    return true;
}

bool Cpu::Impl::exec_wrmsr(Insn&) {
    auto& sr = m_st->sregs;
    if (m_cpl != 0)
        return gp0();
    const auto index = static_cast<uint32_t>(m_r[RCX]);
    const uint64_t v = (m_r[RAX] & 0xffffffff) | (m_r[RDX] << 32);
    switch (index) {
    case MSR_EFER: {
        if (v & ~(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE))
            return gp0();
        if (((v ^ sr.efer) & EFER_LME) && (sr.cr0 & CR0_PG))
            return gp0();
        const uint64_t nv = (v & ~EFER_LMA) | (sr.efer & EFER_LMA);  // LMA is read-only
        if ((nv ^ sr.efer) & EFER_NXE)
            flush_tlb();
        sr.efer = nv;
        return true;
    }
    case MSR_STAR: m_st->star = v; return true;
    case MSR_LSTAR:
    case MSR_CSTAR:
    case MSR_FS_BASE:
    case MSR_GS_BASE:
    case MSR_KERNEL_GS_BASE:
    case MSR_SYSENTER_ESP:
    case MSR_SYSENTER_EIP:
        if (!canonical(v))
            return gp0();
        switch (index) {
        case MSR_LSTAR: m_st->lstar = v; break;
        case MSR_CSTAR: m_st->cstar = v; break;
        case MSR_FS_BASE: sr.fs.base = v; break;
        case MSR_GS_BASE: sr.gs.base = v; break;
        case MSR_KERNEL_GS_BASE: m_st->kernel_gs_base = v; break;
        case MSR_SYSENTER_ESP: m_st->sysenter_esp = v; break;
        default: m_st->sysenter_eip = v; break;
        }
        return true;
    case MSR_FMASK: m_st->fmask = v & 0xffffffff; return true;
    case MSR_SYSENTER_CS: m_st->sysenter_cs = v & 0xffff; return true;
    case MSR_TSC_AUX:
        if (v >> 32)
            return gp0();
        m_st->tsc_aux = v;
        return true;
    case MSR_PAT:
        if (!valid_pat(v))
            return gp0();
        m_st->pat = v;
        return true;
    default:
        if (!m_bus->wrmsr(index, v))
            return gp0();
        m_check_irq = true;  // x2APIC EOI, TPR or self-IPI
        return true;
    }
}

bool Cpu::Impl::exec_cpuid(Insn&) {
    const auto leaf = static_cast<uint32_t>(m_r[RAX]);
    const auto subleaf = static_cast<uint32_t>(m_r[RCX]);
    uint32_t out[4] = {};
    m_bus->cpuid(leaf, subleaf, out);
    if (leaf == 1) {
        // OSXSAVE mirrors CR4.OSXSAVE, as on hardware.
        out[2] &= ~(1u << 27);
        if (m_st->sregs.cr4 & CR4_OSXSAVE)
            out[2] |= 1u << 27;
    }
    m_r[RAX] = out[0];
    m_r[RBX] = out[1];
    m_r[RCX] = out[2];
    m_r[RDX] = out[3];
    return true;
}

bool Cpu::Impl::exec_popf(Insn& d) {
    const unsigned size = d.opsize;
    uint64_t v;
    GUEST_TRY(pop(size, v));
    uint64_t mask = CF | PF | AF | ZF | SF | TF | DF | OF | NT | AC | ID;
    const unsigned iopl = (m_rflags & IOPL) >> 12;
    if (m_cpl == 0)
        mask |= IOPL;
    if (m_cpl <= iopl)
        mask |= IF;  // otherwise IF is silently left alone
    if (size == 2)
        mask &= 0xffff;
    m_rflags = (((rflags() & ~mask) | (v & mask)) & ~RF) | FIXED1;
    m_fop = FlagOp::None;
    m_check_irq = true;
    return true;
}

bool Cpu::Impl::io_allowed(uint16_t port, unsigned size) {
    if (m_cpl <= ((m_rflags & IOPL) >> 12))
        return true;
    // Above IOPL the TSS I/O permission bitmap decides: every bit of the access must be 0.
    const auto& tr = m_st->sregs.tr;
    if (tr.unusable || !tr.present || tr.limit < 103)
        return false;
    uint64_t base;
    if (!read_sys(tr.base + 102, 2, base))
        return false;
    const uint64_t at = base + port / 8;
    if (at + 1 > tr.limit)
        return false;
    uint64_t bits;
    if (!read_sys(tr.base + at, 2, bits))
        return false;
    return ((bits >> (port & 7)) & ((1u << size) - 1)) == 0;
}

}  // namespace colod::kvm::soft
