// SPDX-License-Identifier: GPL-2.0-or-later
// Internals of the x86-64 interpreter, shared by kvm/soft/cpu*.cc: the private state of a Cpu
// (Cpu::Impl), lazily evaluated arithmetic flags, register access and the TLB fast paths of
// memory access. Not an interface: only the interpreter's own files include it.
//
// How an instruction runs: run() fetches through a cached host pointer to the current code
// page, decodes into an Insn (prefixes, opcode, ModRM/SIB, effective address, immediates) and
// executes it. Handlers return false to abort the instruction (guest exception, MMIO read that
// must go to userspace, unsupported instruction); before returning false they have changed no
// architectural state that re-execution would see twice, so the run loop can rewind RIP to the
// instruction and deliver the exception or stop. Every memory access goes through the software
// TLB; a miss walks the guest page tables.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "kvm/soft/cpu.h"

namespace colod::kvm::soft {

namespace x86 {

// General registers in encoding order (ModRM reg/rm, opcode low bits).
enum Gpr : unsigned { RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15 };

// RFLAGS
inline constexpr uint64_t CF = 1ull << 0;
inline constexpr uint64_t FIXED1 = 1ull << 1;
inline constexpr uint64_t PF = 1ull << 2;
inline constexpr uint64_t AF = 1ull << 4;
inline constexpr uint64_t ZF = 1ull << 6;
inline constexpr uint64_t SF = 1ull << 7;
inline constexpr uint64_t TF = 1ull << 8;
inline constexpr uint64_t IF = 1ull << 9;
inline constexpr uint64_t DF = 1ull << 10;
inline constexpr uint64_t OF = 1ull << 11;
inline constexpr uint64_t IOPL = 3ull << 12;
inline constexpr uint64_t NT = 1ull << 14;
inline constexpr uint64_t RF = 1ull << 16;
inline constexpr uint64_t VM = 1ull << 17;
inline constexpr uint64_t AC = 1ull << 18;
inline constexpr uint64_t VIF = 1ull << 19;
inline constexpr uint64_t VIP = 1ull << 20;
inline constexpr uint64_t ID = 1ull << 21;
inline constexpr uint64_t ARITH = CF | PF | AF | ZF | SF | OF;

// CR0 / CR4 / EFER
inline constexpr uint64_t CR0_PE = 1ull << 0;
inline constexpr uint64_t CR0_MP = 1ull << 1;
inline constexpr uint64_t CR0_EM = 1ull << 2;
inline constexpr uint64_t CR0_TS = 1ull << 3;
inline constexpr uint64_t CR0_ET = 1ull << 4;
inline constexpr uint64_t CR0_NE = 1ull << 5;
inline constexpr uint64_t CR0_WP = 1ull << 16;
inline constexpr uint64_t CR0_AM = 1ull << 18;
inline constexpr uint64_t CR0_NW = 1ull << 29;
inline constexpr uint64_t CR0_CD = 1ull << 30;
inline constexpr uint64_t CR0_PG = 1ull << 31;
inline constexpr uint64_t CR4_VME = 1ull << 0;
inline constexpr uint64_t CR4_PVI = 1ull << 1;
inline constexpr uint64_t CR4_TSD = 1ull << 2;
inline constexpr uint64_t CR4_DE = 1ull << 3;
inline constexpr uint64_t CR4_PSE = 1ull << 4;
inline constexpr uint64_t CR4_PAE = 1ull << 5;
inline constexpr uint64_t CR4_MCE = 1ull << 6;
inline constexpr uint64_t CR4_PGE = 1ull << 7;
inline constexpr uint64_t CR4_PCE = 1ull << 8;
inline constexpr uint64_t CR4_OSFXSR = 1ull << 9;
inline constexpr uint64_t CR4_OSXMMEXCPT = 1ull << 10;
inline constexpr uint64_t CR4_UMIP = 1ull << 11;
inline constexpr uint64_t CR4_LA57 = 1ull << 12;
inline constexpr uint64_t CR4_FSGSBASE = 1ull << 16;
inline constexpr uint64_t CR4_PCIDE = 1ull << 17;
inline constexpr uint64_t CR4_OSXSAVE = 1ull << 18;
inline constexpr uint64_t CR4_SMEP = 1ull << 20;
inline constexpr uint64_t CR4_SMAP = 1ull << 21;
inline constexpr uint64_t CR4_PKE = 1ull << 22;
inline constexpr uint64_t EFER_SCE = 1ull << 0;
inline constexpr uint64_t EFER_LME = 1ull << 8;
inline constexpr uint64_t EFER_LMA = 1ull << 10;
inline constexpr uint64_t EFER_NXE = 1ull << 11;

// Exception vectors
inline constexpr uint8_t DE = 0, DB = 1, BP = 3, OFV = 4, UD = 6, NM = 7, DFV = 8, TS = 10, NP = 11,
                         SS = 12, GP = 13, PFV = 14, MF = 16, ACV = 17;

// #PF error code bits
inline constexpr uint32_t PFEC_P = 1, PFEC_W = 2, PFEC_U = 4, PFEC_RSVD = 8, PFEC_I = 16;

// MSRs the interpreter owns
inline constexpr uint32_t MSR_SYSENTER_CS = 0x174, MSR_SYSENTER_ESP = 0x175,
                          MSR_SYSENTER_EIP = 0x176, MSR_PAT = 0x277, MSR_EFER = 0xc0000080,
                          MSR_STAR = 0xc0000081, MSR_LSTAR = 0xc0000082, MSR_CSTAR = 0xc0000083,
                          MSR_FMASK = 0xc0000084, MSR_FS_BASE = 0xc0000100,
                          MSR_GS_BASE = 0xc0000101, MSR_KERNEL_GS_BASE = 0xc0000102,
                          MSR_TSC_AUX = 0xc0000103;

inline constexpr uint64_t PTE_P = 1ull << 0, PTE_W = 1ull << 1, PTE_U = 1ull << 2,
                          PTE_A = 1ull << 5, PTE_D = 1ull << 6, PTE_PS = 1ull << 7,
                          PTE_NX = 1ull << 63;
inline constexpr uint64_t PTE_ADDR = 0x000ffffffffff000ull;

inline bool canonical(uint64_t a) {
    return static_cast<uint64_t>(static_cast<int64_t>(a << 16) >> 16) == a;
}

}  // namespace x86

inline constexpr uint64_t size_mask(unsigned size) {
    return size >= 8 ? ~0ull : (1ull << (size * 8)) - 1;
}
inline constexpr uint64_t sign_bit(unsigned size) { return 1ull << (size * 8 - 1); }
inline constexpr int64_t sign_extend(uint64_t v, unsigned size) {
    const unsigned shift = 64 - size * 8;
    return static_cast<int64_t>(v << shift) >> shift;
}

// How the arithmetic flags of the last flag-setting instruction are to be computed.
// How the arithmetic flags of the last flag-setting instruction are to be computed. For the
// shifts m_fdst is the value shifted and m_fsrc the (non-zero, masked) count; for Mul m_fcin is
// the overflow (CF = OF).
enum class FlagOp : uint8_t { None, Add, Adc, Sub, Sbb, Logic, Inc, Dec, Shl, Shr, Sar, Mul };

// Segment override of an instruction: only FS and GS have a base in 64-bit mode.
enum class SegOverride : uint8_t { None, Fs, Gs };

// Register index meaning "none" in a memory operand; m_r[kNoReg] is always 0.
inline constexpr uint8_t kNoReg = 16;

// Common instruction forms with a handler of their own in the run loop (cpu_exec.cc); the rest
// go through the general execute. All are 32- or 64-bit, without LOCK.
enum class Fast : uint8_t {
    None,
    AluRR,    // ALU op `aux` (00-3F row), register fd op= register fs
    AluStore, // ALU op `aux`, [ea] op= register fs, or immediate if fs == kNoReg
    AluRI,    // ALU op `aux`, register fd op= immediate
    AluLoad,  // ALU op `aux`, register fd op= [ea]
    CmpMR,    // CMP [ea], register fs
    CmpMI,    // CMP [ea], immediate
    TestRR,   // TEST register fd, register fs
    MovRR,    // register fd = register fs
    MovRI,    // register fd = immediate
    Load,     // register fd = [ea]
    Store,    // [ea] = register fs
    Lea,      // register fd = ea
    Jcc,      // condition `aux`
    Jmp,
    Call,
    Ret,
    Push,     // register fd
    Pop,      // register fd
    IncDec,   // aux 0 INC, 1 DEC of register fd
    Nop,
    ShiftRI,  // shift `aux` (4 SHL, 5 SHR, 7 SAR) of register fd by the immediate
    ShiftRC,  // ... by CL
    Imul,     // register fd = register fd * r/m (0F AF)
    Imul3,    // register fd = r/m * immediate
    Cqo,      // CWD/CDQ/CQO at 32/64 bits
    Movzx,    // register fd = zero-extended r/m of size `aux`
    Movsx,    // register fd = sign-extended r/m of size `aux`
    StoreImm, // [ea] = immediate, size `aux`
    Store8,   // [ea] = byte register fs
    Load8,    // byte register fd = [ea]
    TestRI,   // TEST register fd, immediate
    Test8RR,  // TEST byte register fd, byte register fs
    Cmp8MI,   // CMP byte [ea], immediate
    Setcc,    // byte register fd = condition `aux`
    Cmov,     // if condition `aux`: register fd = r/m
};

// One decoded instruction. Everything but `ea` and `bytes` depends only on the instruction's
// bytes and address, so a decoded instruction can be cached and run again.
struct Insn {
    uint64_t rip = 0;   // first byte
    uint64_t next = 0;  // RIP of the following instruction
    uint64_t ea = 0;    // linear address of the memory operand (segment base included),
                        // computed from the fields below before each execution
    uint64_t disp = 0;  // displacement (RIP-relative: already includes `next`; MOV moffs: the
                        // whole address)
    uint64_t imm = 0;   // first immediate (sign-extended where the encoding says so)
    uint64_t imm2 = 0;  // second immediate (ENTER's nesting level)
    const uint8_t* bytes = nullptr;  // the instruction's bytes, for diagnostics
    uint16_t op = 0;    // 0x0XX one-byte map, 0x1XX 0F map, 0x2XX 0F38 map, 0x3XX 0F3A map
    uint8_t len = 0;
    uint8_t opsize = 4;  // 1 is never stored here: byte forms pick size 1 themselves
    uint8_t rex = 0;     // the REX byte, 0 if none
    uint8_t rep = 0;     // 0, 0xf2 or 0xf3
    SegOverride seg = SegOverride::None;
    bool lock = false;
    bool o16 = false;     // 66 prefix seen
    bool a32 = false;     // 67 prefix seen
    uint8_t mod = 3;      // ModRM.mod (3: register operand)
    uint8_t reg = 0;      // ModRM.reg extended by REX.R
    uint8_t rm = 0;       // ModRM.rm extended by REX.B (register forms)
    uint8_t regop = 0;       // ModRM.reg without REX: the group opcode extension
    uint8_t base = kNoReg;   // base register of the memory operand
    uint8_t index = kNoReg;  // index register of the memory operand
    uint8_t scale = 0;       // index shift
    bool ea_slow = false;    // 67 prefix or FS/GS override: the address needs more work
    // VEX (BMI instructions): vvvv register, L and W bits, implied prefix (0 none, 1 66,
    // 2 F3, 3 F2).
    uint8_t vvvv = 0;
    uint8_t vex_l = 0;
    uint8_t vex_w = 0;
    uint8_t vex_pp = 0;
    bool vex = false;
    Fast fast = Fast::None;
    uint8_t aux = 0;  // for `fast`: ALU op or condition code
    uint8_t fd = 0;   // for `fast`: destination register
    uint8_t fs = 0;   // for `fast`: source register
};

// A pending architectural event (exception or interrupt) being delivered.
enum class EventKind : uint8_t {
    Exception,  // fault or abort raised by the CPU; error code as the vector defines
    External,   // from the LAPIC
    SoftInt,    // INT n: the gate's DPL is checked against CPL
    SoftExc,    // INT3 / INTO: as INT n, but classed as an exception for #DF rules
    Icebp,      // INT1: #DB without a DPL check
};

struct Event {
    uint8_t vector = 0;
    EventKind kind = EventKind::Exception;
    bool has_error = false;
    uint32_t error = 0;
    uint64_t cr2 = 0;  // for #PF
};

// Why an instruction stopped before retiring.
enum class Abort : uint8_t {
    None,
    Fault,     // m_event holds an exception to deliver; RIP rewinds to the instruction
    Trap,      // m_event holds INT n / INT3 / INT1 to deliver with RIP after the instruction
    MmioRead,  // a read went to userspace; RIP rewinds, the instruction runs again
    Internal,  // m_detail says what
};

// Access flags for memory accesses: the privilege used for paging checks and what to raise
// on a non-canonical address.
inline constexpr unsigned kAccUser = 1;      // CPL 3 data access (paging U/S checks apply)
inline constexpr unsigned kAccStack = 2;     // non-canonical → #SS(0) instead of #GP(0)
inline constexpr unsigned kAccImplicit = 4;  // implicit supervisor access (descriptor tables,
                                             // TSS): SMAP ignores RFLAGS.AC

struct TlbEntry {
    // page | 1 (valid) | 2 (CPL 3 translation); 0 when the access kind is not cached
    uint64_t tag_read = 0;
    uint64_t tag_write = 0;
    uint64_t tag_exec = 0;
    uint8_t* host = nullptr;  // host address of the 4 KiB guest page
};

inline constexpr unsigned kTlbEntries = 1024;

// A translated access that crosses a page or reaches MMIO: up to two pieces.
struct Span {
    uint64_t lin = 0;
    unsigned len = 0;
    unsigned first = 0;  // bytes in the first piece
    uint8_t* host[2] = {nullptr, nullptr};
    uint64_t gpa[2] = {0, 0};
};

// A decoded instruction remembered with the bytes it was decoded from. A hit requires the
// bytes at RIP to be the same now, so code written by the guest, another vCPU or a device is
// never run stale, without any invalidation.
struct CachedInsn {
    uint64_t rip = ~0ull;
    uint64_t bytes[2] = {};  // the first 16 bytes at rip
    uint64_t mask[2] = {};   // which of them belong to the instruction
    Insn insn;
};

inline constexpr unsigned kInsnCacheEntries = 2048;

struct Cpu::Impl {
    // ---- hot state: registers, lazy flags, TLB -----------------------------------------------
    uint64_t m_r[17] = {};  // the 16 GPRs, and m_r[kNoReg] = 0 for address arithmetic
    uint64_t m_rip = 0;
    uint64_t m_rflags = 2;  // arithmetic bits valid only while m_fop == FlagOp::None
    FlagOp m_fop = FlagOp::None;
    uint8_t m_fsize = 8;
    uint8_t m_fcin = 0;  // carry in (ADC/SBB) or the preserved CF (INC/DEC)
    uint64_t m_fdst = 0, m_fsrc = 0, m_fres = 0;

    uint8_t m_cpl = 0;
    bool m_user = false;       // m_cpl == 3
    uint64_t m_tag_bits = 1;   // TLB tag bits of the current privilege
    uint8_t m_shadow = 0;      // interrupt shadow of the next instruction
    bool m_check_irq = true;   // something may have made an interrupt deliverable
    uint64_t m_fetch_tag = 0;  // page | tag bits of the cached code page, 0 = none
    const uint8_t* m_fetch_host = nullptr;

    TlbEntry m_tlb[kTlbEntries];
    // Host pages of paging structures (gpa page | 1 → host), so that a page walk does not ask
    // the bus for every level. Flushed with the TLB: valid as long as the memory slots are.
    struct TablePage {
        uint64_t tag = 0;
        uint8_t* host = nullptr;
    };
    static constexpr unsigned kTablePages = 64;
    TablePage m_table_pages[kTablePages];
    // Paging-structure cache for the upper two levels, as CPUs keep one: for a 2 MiB region
    // of linear addresses, where its page directory is and what the PML4E and PDPTE above it
    // allow. Flushed by everything that flushes the TLB and by INVLPG, as on hardware.
    struct PdeCache {
        uint64_t key = 0;  // (lin >> 21) + 1, 0 = empty
        uint64_t pd = 0;   // gpa of the page directory
        bool user = false, writable = false, nx = false;
    };
    static constexpr unsigned kPdeCache = 64;
    PdeCache m_pde_cache[kPdeCache];
    CachedInsn m_icache[kInsnCacheEntries];
    Insn m_slow_insn;  // an instruction decoded outside the cache (near a page end)
    // Slots that got a write tag since the last flush_tlb_writes(), so that the per-run()
    // flush touches only those; more than kWriteSlots means all.
    static constexpr unsigned kWriteSlots = 64;
    uint16_t m_write_slots[kWriteSlots] = {};
    unsigned m_write_count = 0;
    bool m_tlb_large = false;  // a 2 MiB / 1 GiB mapping was cached: INVLPG flushes all

    // ---- per run() -----------------------------------------------------------------------------
    CpuState* m_st = nullptr;
    CpuBus* m_bus = nullptr;
    Abort m_abort = Abort::None;
    Event m_event;
    std::string m_detail;
    StopReason m_stop_after = StopReason::Budget;  // Budget: none; else stop after retiring

    // MMIO read data supplied by complete_mmio_read, consumed by the re-executed instruction.
    bool m_mmio_valid = false;
    uint64_t m_mmio_gpa = 0;
    uint32_t m_mmio_len = 0;
    uint8_t m_mmio_data[8] = {};

    uint64_t m_dr[8] = {0, 0, 0, 0, 0, 0, 0xffff0ff0, 0x400};

    // Code bytes of an instruction that crosses a page (or sits at a page end), and what went
    // wrong translating the second page (raised only if the instruction reaches into it).
    uint8_t m_fetch_buf[32] = {};
    Abort m_fetch2_abort = Abort::None;
    Event m_fetch2_event;
    std::string m_fetch2_detail;

    // ---- cpu.cc: entry, events, segments -------------------------------------------------------
    Stop run(CpuState& state, CpuBus& bus, uint64_t budget);
    [[gnu::always_inline]] bool run_one(Stop& stop, uint64_t& steps, uint64_t& executed);
    [[gnu::always_inline]] bool step(Insn*& dp);
    [[gnu::always_inline]] bool exec_fast(Insn& d);
    [[gnu::noinline]] bool after_abort(Stop& stop, const Insn& d, uint8_t had_shadow,
                                       uint64_t& executed);
    bool stop_after(Stop& stop);
    [[gnu::always_inline]] void compute_ea(Insn& d) {
        uint64_t ea = d.disp + m_r[d.base] + (m_r[d.index] << d.scale);
        if (d.ea_slow) [[unlikely]] {
            if (d.a32)
                ea &= 0xffffffff;
            ea += seg_base(d.seg);
        }
        d.ea = ea;
    }
    void load_state();
    void store_state();
    bool long_mode_ok(std::string& why) const;
    void set_cpl(uint8_t cpl);
    void flush_tlb();
    void flush_tlb_writes();
    void invlpg(uint64_t lin);
    enum class Delivery { Ok, Shutdown, Internal };
    Delivery raise_event(const Event& first, uint64_t return_rip, uint64_t fault_rip);
    bool deliver(const Event& ev, uint64_t return_rip);
    bool read_descriptor(uint16_t sel, uint64_t& lo, uint64_t* hi, uint8_t vector, uint32_t ext);
    static kvm_segment segment_from_descriptor(uint16_t sel, uint64_t lo, uint64_t hi);
    bool load_data_segment(unsigned sreg, uint16_t sel);
    kvm_segment& sreg(unsigned index);  // ES CS SS DS FS GS order
    void internal(const Insn& d, std::string_view what);

    // ---- cpu_exec.cc: decode and execute ------------------------------------------------------
    bool fetch_slow(Insn& d, const uint8_t*& p, unsigned& avail);
    [[gnu::always_inline]] bool decode(Insn& d, const uint8_t* p, unsigned avail);
    static void classify(Insn& d);
    bool exec(Insn& d);
    bool exec_0f(Insn& d);
    bool exec_rare(Insn& d);
    bool exec_vex(Insn& d);
    bool exec_string(Insn& d);
    bool exec_shift(Insn& d, unsigned size, unsigned count);
    bool exec_group3(Insn& d, unsigned size);
    bool exec_bt(Insn& d);
    bool exec_shld(Insn& d, unsigned count);
    bool exec_port(Insn& d);

    // ---- cpu_system.cc: privileged and system instructions ------------------------------------
    bool exec_system(Insn& d);
    bool exec_group6(Insn& d);
    bool exec_group7(Insn& d);
    bool exec_mov_cr(Insn& d);
    bool exec_mov_dr(Insn& d);
    bool exec_iret(Insn& d);
    bool exec_syscall(Insn& d);
    bool exec_sysret(Insn& d);
    bool exec_rdmsr(Insn& d);
    bool exec_wrmsr(Insn& d);
    bool exec_cpuid(Insn& d);
    bool exec_popf(Insn& d);
    bool write_cr0(uint64_t v);
    bool write_cr4(uint64_t v);
    bool io_allowed(uint16_t port, unsigned size);

    // ---- cpu_mmu.cc: translation and slow memory paths -----------------------------------------
    struct Walk {
        uint64_t gpa = 0;
        bool user = false;      // U/S set at every level
        bool writable = false;  // R/W set at every level
        bool nx = false;        // XD set at some level (and EFER.NXE)
        bool large = false;     // a 2 MiB or 1 GiB page
    };
    bool walk(uint64_t lin, Access acc, unsigned flags, Walk& w);
    bool page_fault(uint64_t lin, Access acc, unsigned flags, uint32_t code);
    uint8_t* table_page(uint64_t gpa) {
        TablePage& t = m_table_pages[(gpa >> 12) % kTablePages];
        const uint64_t tag = (gpa & ~0xfffull) | 1;
        if (t.tag == tag) [[likely]]
            return t.host;
        uint8_t* host = m_bus->ram_page(gpa & ~0xfffull, Access::Read);
        if (host != nullptr) {
            t.tag = tag;
            t.host = host;
        }
        return host;
    }
    bool resolve(uint64_t lin, Access acc, unsigned flags, uint8_t*& host, uint64_t& gpa);
    bool resolve_span(uint64_t lin, unsigned len, Access acc, unsigned flags, Span& s);
    bool span_read(const Span& s, void* out);
    bool span_write(const Span& s, const void* in);
    bool read_slow(uint64_t lin, unsigned len, void* out, unsigned flags);
    bool write_slow(uint64_t lin, unsigned len, const void* in, unsigned flags);
    bool mmio_read(uint64_t gpa, void* out, unsigned len);
    bool mmio_write(uint64_t gpa, const void* in, unsigned len);
    uint8_t* host_for_write(uint64_t lin, unsigned len, unsigned flags, bool& ok);
    const uint8_t* host_for_read(uint64_t lin, unsigned len, unsigned flags, bool& ok);

    // ---- exceptions --------------------------------------------------------------------------
    bool fault(uint8_t vector, uint32_t error) {
        m_abort = Abort::Fault;
        m_event = Event{vector, EventKind::Exception, true, error, 0};
        return false;
    }
    bool fault_noerr(uint8_t vector) {
        m_abort = Abort::Fault;
        m_event = Event{vector, EventKind::Exception, false, 0, 0};
        return false;
    }
    bool gp0() { return fault(x86::GP, 0); }
    bool ud() { return fault_noerr(x86::UD); }

    // ---- registers -----------------------------------------------------------------------------
    [[gnu::always_inline]] uint64_t reg_read(unsigned idx, unsigned size, bool rex) const {
        switch (size) {
        case 1:
            if (rex || idx < 4 || idx >= 8)
                return m_r[idx] & 0xff;
            return (m_r[idx - 4] >> 8) & 0xff;
        case 2: return m_r[idx] & 0xffff;
        case 4: return m_r[idx] & 0xffffffff;
        default: return m_r[idx];
        }
    }
    [[gnu::always_inline]] void reg_write(unsigned idx, unsigned size, uint64_t v, bool rex) {
        switch (size) {
        case 1:
            if (rex || idx < 4 || idx >= 8)
                m_r[idx] = (m_r[idx] & ~0xffull) | (v & 0xff);
            else
                m_r[idx - 4] = (m_r[idx - 4] & ~0xff00ull) | ((v & 0xff) << 8);
            break;
        case 2: m_r[idx] = (m_r[idx] & ~0xffffull) | (v & 0xffff); break;
        case 4: m_r[idx] = v & 0xffffffff; break;  // 32-bit writes zero-extend
        default: m_r[idx] = v; break;
        }
    }

    // ---- flags -------------------------------------------------------------------------------
    [[gnu::always_inline]] void set_lazy(FlagOp op, unsigned size, uint64_t dst, uint64_t src, uint64_t res) {
        m_fop = op;
        m_fsize = static_cast<uint8_t>(size);
        m_fdst = dst;
        m_fsrc = src;
        m_fres = res;
    }
    void set_logic(unsigned size, uint64_t res) { set_lazy(FlagOp::Logic, size, 0, 0, res); }

    uint64_t arith_flags() const {
        if (m_fop == FlagOp::None)
            return m_rflags & x86::ARITH;
        const uint64_t a = m_fdst, b = m_fsrc, r = m_fres;
        const uint64_t sign = sign_bit(m_fsize);
        uint64_t f = 0;
        switch (m_fop) {
        case FlagOp::Add:
            f |= r < a ? x86::CF : 0;
            f |= ((a ^ r) & (b ^ r) & sign) ? x86::OF : 0;
            f |= (a ^ b ^ r) & x86::AF;
            break;
        case FlagOp::Adc:
            f |= (r < a || (m_fcin && r == a)) ? x86::CF : 0;
            f |= ((a ^ r) & (b ^ r) & sign) ? x86::OF : 0;
            f |= (a ^ b ^ r) & x86::AF;
            break;
        case FlagOp::Sub:
            f |= a < b ? x86::CF : 0;
            f |= ((a ^ b) & (a ^ r) & sign) ? x86::OF : 0;
            f |= (a ^ b ^ r) & x86::AF;
            break;
        case FlagOp::Sbb:
            f |= (a < b || (m_fcin && a == b)) ? x86::CF : 0;
            f |= ((a ^ b) & (a ^ r) & sign) ? x86::OF : 0;
            f |= (a ^ b ^ r) & x86::AF;
            break;
        case FlagOp::Inc:
            f |= m_fcin ? x86::CF : 0;
            f |= ((a ^ r) & (b ^ r) & sign) ? x86::OF : 0;
            f |= (a ^ b ^ r) & x86::AF;
            break;
        case FlagOp::Dec:
            f |= m_fcin ? x86::CF : 0;
            f |= ((a ^ b) & (a ^ r) & sign) ? x86::OF : 0;
            f |= (a ^ b ^ r) & x86::AF;
            break;
        case FlagOp::Shl: {
            const unsigned c = static_cast<unsigned>(b), bits = m_fsize * 8u;
            const bool carry = c <= bits && ((a >> (bits - c)) & 1);
            f |= carry ? x86::CF : 0;
            f |= (((r & sign) != 0) != carry) ? x86::OF : 0;
            break;
        }
        case FlagOp::Shr: {
            const unsigned c = static_cast<unsigned>(b), bits = m_fsize * 8u;
            f |= (c <= bits && ((a >> (c - 1)) & 1)) ? x86::CF : 0;
            f |= (a & sign) ? x86::OF : 0;
            break;
        }
        case FlagOp::Sar: {
            const unsigned c = static_cast<unsigned>(b);
            f |= ((sign_extend(a, m_fsize) >> std::min(c - 1, 63u)) & 1) ? x86::CF : 0;
            break;
        }
        case FlagOp::Mul:
            f |= m_fcin ? (x86::CF | x86::OF) : 0;
            break;
        case FlagOp::Logic:
        case FlagOp::None: break;
        }
        f |= r == 0 ? x86::ZF : 0;
        f |= (r & sign) ? x86::SF : 0;
        f |= __builtin_parity(static_cast<unsigned>(r & 0xff)) ? 0 : x86::PF;
        return f;
    }
    uint64_t rflags() const { return (m_rflags & ~x86::ARITH) | arith_flags() | x86::FIXED1; }
    void materialize() {
        if (m_fop != FlagOp::None) {
            m_rflags = (m_rflags & ~x86::ARITH) | arith_flags();
            m_fop = FlagOp::None;
        }
    }
    // Replaces the arithmetic flags selected by `which` with those in `f`.
    void set_arith(uint64_t which, uint64_t f) {
        materialize();
        m_rflags = (m_rflags & ~which) | (f & which);
    }
    [[gnu::always_inline]] bool cf() const {
        switch (m_fop) {
        case FlagOp::None: return m_rflags & x86::CF;
        case FlagOp::Add: return m_fres < m_fdst;
        case FlagOp::Sub: return m_fdst < m_fsrc;
        case FlagOp::Logic: return false;
        default: return arith_flags() & x86::CF;
        }
    }
    [[gnu::always_inline]] bool cond(unsigned cc) const {
        bool r;
        if (m_fop != FlagOp::None && ((cc >> 1) == 2 || (cc >> 1) == 4)) {
            // ZF and SF come from the result whatever the operation (JZ/JNZ after DEC ...).
            r = (cc >> 1) == 2 ? m_fres == 0 : (m_fres & sign_bit(m_fsize)) != 0;
            return r ^ (cc & 1);
        }
        if (m_fop == FlagOp::Sub) {
            // After CMP/SUB the conditions follow from the operands directly.
            const uint64_t a = m_fdst, b = m_fsrc;
            switch (cc >> 1) {
            case 1: r = a < b; break;
            case 2: r = a == b; break;
            case 3: r = a <= b; break;
            case 4: r = m_fres & sign_bit(m_fsize); break;
            case 6: r = sign_extend(a, m_fsize) < sign_extend(b, m_fsize); break;
            case 7: r = sign_extend(a, m_fsize) <= sign_extend(b, m_fsize); break;
            default: return cond_generic(cc);
            }
            return r ^ (cc & 1);
        }
        if (m_fop == FlagOp::Logic) {
            const bool zero = m_fres == 0;
            const bool neg = m_fres & sign_bit(m_fsize);
            switch (cc >> 1) {
            case 0: r = false; break;
            case 1: r = false; break;
            case 2: r = zero; break;
            case 3: r = zero; break;
            case 4: r = neg; break;
            case 6: r = neg; break;
            case 7: r = zero || neg; break;
            default: return cond_generic(cc);
            }
            return r ^ (cc & 1);
        }
        return cond_generic(cc);
    }
    bool cond_generic(unsigned cc) const {
        const uint64_t f = arith_flags();
        bool r;
        switch (cc >> 1) {
        case 0: r = f & x86::OF; break;
        case 1: r = f & x86::CF; break;
        case 2: r = f & x86::ZF; break;
        case 3: r = f & (x86::CF | x86::ZF); break;
        case 4: r = f & x86::SF; break;
        case 5: r = f & x86::PF; break;
        case 6: r = !(f & x86::SF) != !(f & x86::OF); break;
        default: r = (f & x86::ZF) || (!(f & x86::SF) != !(f & x86::OF)); break;
        }
        return r ^ (cc & 1);
    }

    // ALU operations of the 00-3F / 80-83 rows: ADD OR ADC SBB AND SUB XOR CMP. Operands are
    // already truncated to `size`.
    [[gnu::always_inline]] uint64_t alu(unsigned op, uint64_t a, uint64_t b, unsigned size) {
        return alu_c(op, a, b, size, (op == 2 || op == 3) ? cf() : 0);
    }
    // As alu() with the carry-in of ADC/SBB given: a read-modify-write may run the operation
    // more than once (atomic retry) and must not read the flags it has itself just set.
    [[gnu::always_inline]] uint64_t alu_c(unsigned op, uint64_t a, uint64_t b, unsigned size, uint64_t c) {
        const uint64_t m = size_mask(size);
        uint64_t r;
        switch (op) {
        case 0: r = (a + b) & m; set_lazy(FlagOp::Add, size, a, b, r); break;
        case 1: r = a | b; set_logic(size, r); break;
        case 2: {
            r = (a + b + c) & m;
            set_lazy(FlagOp::Adc, size, a, b, r);
            m_fcin = static_cast<uint8_t>(c);
            break;
        }
        case 3: {
            r = (a - b - c) & m;
            set_lazy(FlagOp::Sbb, size, a, b, r);
            m_fcin = static_cast<uint8_t>(c);
            break;
        }
        case 4: r = a & b; set_logic(size, r); break;
        case 5:
        case 7: r = (a - b) & m; set_lazy(FlagOp::Sub, size, a, b, r); break;
        default: r = a ^ b; set_logic(size, r); break;
        }
        return r;
    }

    // ---- memory fast paths ---------------------------------------------------------------------
    unsigned acc_flags() const { return m_user ? kAccUser : 0; }
    static uint64_t tag_for(uint64_t lin, unsigned flags) {
        return (lin & ~0xfffull) | ((flags & kAccUser) ? 3 : 1);
    }
    TlbEntry& tlb_slot(uint64_t lin) { return m_tlb[(lin >> 12) % kTlbEntries]; }

    [[gnu::always_inline]] bool read_mem(uint64_t lin, unsigned size, uint64_t& v, unsigned flags) {
        TlbEntry& e = tlb_slot(lin);
        const unsigned off = lin & 0xfff;
        if (e.tag_read == tag_for(lin, flags) && off <= 4096 - size) [[likely]] {
            v = load_host(e.host + off, size);
            return true;
        }
        v = 0;
        return read_slow(lin, size, &v, flags);
    }
    [[gnu::always_inline]] bool write_mem(uint64_t lin, unsigned size, uint64_t v, unsigned flags) {
        TlbEntry& e = tlb_slot(lin);
        const unsigned off = lin & 0xfff;
        if (e.tag_write == tag_for(lin, flags) && off <= 4096 - size) [[likely]] {
            store_host(e.host + off, size, v);
            return true;
        }
        return write_slow(lin, size, &v, flags);
    }
    // Fixed-size host accesses: one move each, so an aligned guest access stays a single
    // (atomic) access for other vCPUs, as on hardware.
    static uint64_t load_host(const uint8_t* p, unsigned size) {
        switch (size) {
        case 1: return *p;
        case 2: { uint16_t x; std::memcpy(&x, p, 2); return x; }
        case 4: { uint32_t x; std::memcpy(&x, p, 4); return x; }
        default: { uint64_t x; std::memcpy(&x, p, 8); return x; }
        }
    }
    static void store_host(uint8_t* p, unsigned size, uint64_t v) {
        switch (size) {
        case 1: *p = static_cast<uint8_t>(v); break;
        case 2: { const auto x = static_cast<uint16_t>(v); std::memcpy(p, &x, 2); break; }
        case 4: { const auto x = static_cast<uint32_t>(v); std::memcpy(p, &x, 4); break; }
        default: std::memcpy(p, &v, 8); break;
        }
    }
    bool read(uint64_t lin, unsigned size, uint64_t& v) { return read_mem(lin, size, v, acc_flags()); }
    bool write(uint64_t lin, unsigned size, uint64_t v) { return write_mem(lin, size, v, acc_flags()); }
    bool read_sys(uint64_t lin, unsigned size, uint64_t& v) {
        return read_mem(lin, size, v, kAccImplicit);
    }
    bool write_sys(uint64_t lin, unsigned size, uint64_t v) {
        return write_mem(lin, size, v, kAccImplicit);
    }

    [[gnu::always_inline]] bool push(uint64_t v, unsigned size) {
        const uint64_t rsp = m_r[x86::RSP] - size;
        if (!write_mem(rsp, size, v, acc_flags() | kAccStack))
            return false;
        m_r[x86::RSP] = rsp;
        return true;
    }
    [[gnu::always_inline]] bool pop(unsigned size, uint64_t& v) {
        if (!read_mem(m_r[x86::RSP], size, v, acc_flags() | kAccStack))
            return false;
        m_r[x86::RSP] += size;
        return true;
    }

    // r/m operand access
    [[gnu::always_inline]] bool rm_read(const Insn& d, unsigned size, uint64_t& v) {
        if (d.mod == 3) {
            v = reg_read(d.rm, size, d.rex);
            return true;
        }
        return read(d.ea, size, v);
    }
    [[gnu::always_inline]] bool rm_write(const Insn& d, unsigned size, uint64_t v) {
        if (d.mod == 3) {
            reg_write(d.rm, size, v, d.rex);
            return true;
        }
        return write(d.ea, size, v);
    }

    // Read-modify-write of memory: `f(old)` gives the new value. With `atomic` (LOCK, XCHG)
    // the update is one atomic operation on host memory, so vCPU threads sharing guest RAM see
    // it whole. Page-crossing and MMIO operands are done as a read then a write.
    template <typename F>
    bool rmw_mem(uint64_t lin, unsigned size, bool atomic, F&& f) {
        bool ok = true;
        uint8_t* p = host_for_write(lin, size, acc_flags(), ok);
        if (!ok)
            return false;
        if (p == nullptr) {
            uint64_t old = 0;
            if (!read_slow(lin, size, &old, acc_flags()))
                return false;
            const uint64_t nv = f(old);
            return write_slow(lin, size, &nv, acc_flags());
        }
        if (atomic && (reinterpret_cast<uintptr_t>(p) & (size - 1)) == 0) {
            switch (size) {
            case 1: return cas_loop<uint8_t>(p, f);
            case 2: return cas_loop<uint16_t>(p, f);
            case 4: return cas_loop<uint32_t>(p, f);
            default: return cas_loop<uint64_t>(p, f);
            }
        }
        store_host(p, size, f(load_host(p, size)));
        return true;
    }
    template <typename T, typename F>
    static bool cas_loop(uint8_t* p, F& f) {
        // SAFETY: p is a naturally aligned address inside a host page of guest RAM.
        T* t = reinterpret_cast<T*>(p);
        T old = __atomic_load_n(t, __ATOMIC_RELAXED);
        for (;;) {
            const T nv = static_cast<T>(f(static_cast<uint64_t>(old)));
            if (__atomic_compare_exchange_n(t, &old, nv, false, __ATOMIC_SEQ_CST,
                                            __ATOMIC_RELAXED))
                return true;
        }
    }
    template <typename F>
    bool rmw(const Insn& d, unsigned size, F&& f) {
        if (d.mod == 3) {
            const uint64_t old = reg_read(d.rm, size, d.rex);
            reg_write(d.rm, size, f(old), d.rex);
            return true;
        }
        return rmw_mem(d.ea, size, d.lock, f);
    }

    uint64_t seg_base(SegOverride s) const {
        switch (s) {
        case SegOverride::Fs: return m_st->sregs.fs.base;
        case SegOverride::Gs: return m_st->sregs.gs.base;
        default: return 0;
        }
    }
};

}  // namespace colod::kvm::soft
