// SPDX-License-Identifier: GPL-2.0-or-later
// The run loop, instruction fetch and decode, and execution of the general-purpose integer
// instructions. Everything on the per-instruction path is in this file so that it inlines.
//
// Not implemented on purpose: x87, MMX, SSE and AVX instructions (and the state instructions
// FXSAVE/XSAVE/LDMXCSR that go with them) raise #UD. The guests colod boots are built with
// -mgeneral-regs-only; a guest that uses them anyway gets an exception it can see, never a
// silently wrong result. VEX is decoded for the BMI1/BMI2 general-register instructions only.
#include <fmt/format.h>

#include <array>
#include <bit>

#include "kvm/soft/cpu_impl.h"

namespace colod::kvm::soft {

using namespace x86;

// Evaluates a guest-visible operation; on abort (fault, exit) returns false from the handler.
#define GUEST_TRY(expr)              \
    do {                             \
        if (!(expr)) [[unlikely]]    \
            return false;            \
    } while (0)

namespace {

// ---- decode tables ----------------------------------------------------------------------------

enum : uint16_t {
    kM = 1 << 0,       // ModRM follows
    kI8 = 1 << 1,      // imm8 / rel8, sign-extended
    kI16 = 1 << 2,     // imm16, zero-extended
    kIZ = 1 << 3,      // imm16 or imm32 (sign-extended) by operand size
    kIV = 1 << 4,      // imm16 / imm32 / imm64 by operand size (MOV r, imm)
    kRel32 = 1 << 5,   // rel32 whatever the operand size
    kMoffs = 1 << 6,   // address-sized absolute offset (MOV A0-A3)
    kEnter = 1 << 7,   // imm16, imm8
    kGrp3 = 1 << 8,    // F6/F7: an immediate only for TEST (/0, /1)
    kD64 = 1 << 9,     // operand size defaults to 64 bits (66 gives 16)
    kF64 = 1 << 10,    // operand size is 64 bits whatever the prefixes (near branches)
    kBad = 1 << 11,    // invalid in 64-bit mode: #UD
    kImm = kI8 | kI16 | kIZ | kIV | kRel32 | kMoffs | kEnter | kGrp3,
};

constexpr std::array<uint16_t, 256> make_one_byte() {
    std::array<uint16_t, 256> t{};
    for (unsigned row = 0; row < 8; ++row) {
        const unsigned b = row * 8;
        t[b + 0] = t[b + 1] = t[b + 2] = t[b + 3] = kM;
        t[b + 4] = kI8;
        t[b + 5] = kIZ;
    }
    for (unsigned b : {0x06, 0x07, 0x0e, 0x16, 0x17, 0x1e, 0x1f, 0x27, 0x2f, 0x37, 0x3f, 0x60,
                       0x61, 0x62, 0x82, 0x9a, 0xce, 0xd4, 0xd5, 0xd6, 0xea})
        t[b] = kBad;
    for (unsigned b = 0x50; b <= 0x5f; ++b)
        t[b] = kD64;
    t[0x63] = kM;
    t[0x68] = kIZ | kD64;
    t[0x69] = kM | kIZ;
    t[0x6a] = kI8 | kD64;
    t[0x6b] = kM | kI8;
    for (unsigned b = 0x70; b <= 0x7f; ++b)
        t[b] = kI8 | kF64;
    t[0x80] = kM | kI8;
    t[0x81] = kM | kIZ;
    t[0x83] = kM | kI8;
    for (unsigned b = 0x84; b <= 0x8e; ++b)
        t[b] = kM;
    t[0x8f] = kM | kD64;
    t[0x9c] = t[0x9d] = kD64;
    t[0xa0] = t[0xa1] = t[0xa2] = t[0xa3] = kMoffs;
    t[0xa8] = kI8;
    t[0xa9] = kIZ;
    for (unsigned b = 0xb0; b <= 0xb7; ++b)
        t[b] = kI8;
    for (unsigned b = 0xb8; b <= 0xbf; ++b)
        t[b] = kIV;
    t[0xc0] = t[0xc1] = kM | kI8;
    t[0xc2] = kI16 | kF64;
    t[0xc3] = kF64;
    t[0xc6] = kM | kI8;
    t[0xc7] = kM | kIZ;
    t[0xc8] = kEnter | kD64;
    t[0xc9] = kD64;
    t[0xca] = kI16;
    t[0xcd] = kI8;
    for (unsigned b = 0xd0; b <= 0xd3; ++b)
        t[b] = kM;
    for (unsigned b = 0xd8; b <= 0xdf; ++b)
        t[b] = kM;
    for (unsigned b = 0xe0; b <= 0xe3; ++b)
        t[b] = kI8 | kF64;
    for (unsigned b = 0xe4; b <= 0xe7; ++b)
        t[b] = kI8;
    t[0xe8] = t[0xe9] = kRel32 | kF64;
    t[0xeb] = kI8 | kF64;
    t[0xf6] = t[0xf7] = kM | kGrp3;
    t[0xfe] = t[0xff] = kM;
    return t;
}

constexpr std::array<uint16_t, 256> make_two_byte() {
    std::array<uint16_t, 256> t{};
    for (unsigned b = 0; b < 256; ++b)
        t[b] = kM;  // most of the map (and all of SSE) has a ModRM byte
    for (unsigned b : {0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0e, 0x30, 0x31, 0x32, 0x33,
                       0x34, 0x35, 0x36, 0x37, 0x77, 0xa2, 0xaa})
        t[b] = 0;
    for (unsigned b = 0x80; b <= 0x8f; ++b)
        t[b] = kRel32 | kF64;
    t[0xa0] = t[0xa1] = t[0xa8] = t[0xa9] = kD64;
    for (unsigned b = 0xc8; b <= 0xcf; ++b)
        t[b] = 0;
    for (unsigned b : {0x70, 0x71, 0x72, 0x73, 0xa4, 0xac, 0xba, 0xc2, 0xc4, 0xc5, 0xc6})
        t[b] = kM | kI8;
    return t;
}

constexpr auto kOneByte = make_one_byte();
constexpr auto kTwoByte = make_two_byte();

bool lockable(const Insn& d) {
    if (d.mod == 3)
        return false;
    const unsigned op = d.op;
    if (op < 0x40)
        return (op & 7) < 2 && (op >> 3) != 7;
    switch (op) {
    case 0x80:
    case 0x81:
    case 0x83: return d.regop != 7;
    case 0x86:
    case 0x87: return true;
    case 0xf6:
    case 0xf7: return d.regop == 2 || d.regop == 3;
    case 0xfe:
    case 0xff: return d.regop < 2;
    case 0x1ab:
    case 0x1b3:
    case 0x1bb:
    case 0x1b0:
    case 0x1b1:
    case 0x1c0:
    case 0x1c1: return true;
    case 0x1ba: return d.regop >= 5;
    case 0x1c7: return d.regop == 1;
    default: return false;
    }
}

template <typename T>
T load(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

uint64_t bswap(uint64_t v, unsigned size) {
    switch (size) {
    case 2: return __builtin_bswap16(static_cast<uint16_t>(v));
    case 4: return __builtin_bswap32(static_cast<uint32_t>(v));
    default: return __builtin_bswap64(v);
    }
}

}  // namespace

// ---- run loop ---------------------------------------------------------------------------------

Stop Cpu::Impl::run(CpuState& state, CpuBus& bus, uint64_t budget) {
    m_st = &state;
    m_bus = &bus;
    load_state();
    Stop stop;
    if (!long_mode_ok(stop.detail)) {
        stop.reason = StopReason::Internal;
        return stop;
    }
    // Pages written in this slice must be asked for with Access::Write again (dirty logging).
    flush_tlb_writes();
    m_stop_after = StopReason::Budget;
    m_abort = Abort::None;
    uint64_t steps = 0, executed = 0;
    bool go = true;
    if (m_mmio_valid && budget > 0) {
        // An MMIO read completes before anything else happens, as under KVM: no interrupt is
        // taken between the exit and the re-executed instruction.
        m_check_irq = false;
        go = run_one(stop, steps, executed);
        m_mmio_valid = false;
    }
    m_check_irq = true;
    while (go && steps < budget) {
        if ((m_check_irq | m_shadow) != 0) [[unlikely]] {
            go = run_one(stop, steps, executed);
            continue;
        }
        ++steps;
        Insn* dp = nullptr;
        if (step(dp)) [[likely]] {
            ++executed;
            if (m_stop_after != StopReason::Budget) [[unlikely]]
                go = stop_after(stop);
            continue;
        }
        go = after_abort(stop, *dp, 0, executed);
    }
    if (go)
        stop.reason = StopReason::Budget;
    store_state();
    stop.executed = executed;
    return stop;
}

// One interrupt check and delivery, or one instruction under an interrupt shadow. Returns false
// when run() must stop (`stop` says why).
inline bool Cpu::Impl::run_one(Stop& stop, uint64_t& steps, uint64_t& executed) {
    if (m_check_irq) {
        if (!(m_rflags & IF)) {
            // Nothing can be delivered; STI, POPF, IRETQ and SYSRET ask again when IF is set.
            m_check_irq = false;
        } else if (m_shadow == 0) {
            const int vector = m_bus->pending_interrupt();
            if (vector >= 0) {
                m_bus->acknowledge_interrupt(vector);
                ++steps;
                const Event ev{static_cast<uint8_t>(vector), EventKind::External, false, 0, 0};
                const Delivery r = raise_event(ev, m_rip, m_rip);
                if (r == Delivery::Ok)
                    return true;
                stop.reason = r == Delivery::Shutdown ? StopReason::Shutdown : StopReason::Internal;
                stop.detail = r == Delivery::Shutdown ? "triple fault" : m_detail;
                return false;
            }
            m_check_irq = false;
        }
    }
    Insn* dp = nullptr;
    const uint8_t had_shadow = m_shadow;
    m_shadow = 0;
    ++steps;
    if (step(dp)) [[likely]] {
        ++executed;
        if (m_stop_after == StopReason::Budget) [[likely]]
            return true;
        return stop_after(stop);
    }
    return after_abort(stop, *dp, had_shadow, executed);
}

// An instruction retired and asked run() to stop (HLT, an exit).
bool Cpu::Impl::stop_after(Stop& stop) {
    stop.reason = m_stop_after;
    if (m_stop_after == StopReason::Internal)
        stop.detail = m_detail;
    m_stop_after = StopReason::Budget;
    return false;
}

// An instruction did not retire: deliver its exception, or stop for an exit or an internal
// error with RIP back at the instruction.
bool Cpu::Impl::after_abort(Stop& stop, const Insn& d, uint8_t had_shadow, uint64_t& executed) {
    Delivery r = Delivery::Ok;
    const Abort abort = m_abort;
    m_abort = Abort::None;
    switch (abort) {
    case Abort::Fault:
        m_rip = d.rip;
        r = raise_event(m_event, d.rip, d.rip);
        break;
    case Abort::Trap:
        ++executed;
        r = raise_event(m_event, d.next, d.rip);
        break;
    case Abort::MmioRead:
        m_rip = d.rip;
        m_shadow = had_shadow;
        stop.reason = StopReason::MmioExit;
        return false;
    case Abort::Internal:
    case Abort::None:
        m_rip = d.rip;
        m_shadow = had_shadow;
        stop.reason = StopReason::Internal;
        stop.detail = m_detail.empty() ? "instruction aborted without a reason" : m_detail;
        return false;
    }
    m_abort = Abort::None;
    if (r == Delivery::Ok)
        return true;
    stop.reason = r == Delivery::Shutdown ? StopReason::Shutdown : StopReason::Internal;
    stop.detail = r == Delivery::Shutdown ? "triple fault" : m_detail;
    return false;
}

// ---- fetch and decode -------------------------------------------------------------------------

inline bool Cpu::Impl::step(Insn*& dp) {
    const uint64_t rip = m_rip;
    const unsigned off = rip & 0xfff;
    const uint64_t tag = (rip & ~0xfffull) | m_tag_bits;
    if (tag != m_fetch_tag) [[unlikely]] {
        // Another code page: take it from the TLB if it is there.
        const TlbEntry& e = tlb_slot(rip);
        if (e.tag_exec == tag) {
            m_fetch_tag = tag;
            m_fetch_host = e.host;
        }
    }
    if (tag == m_fetch_tag && off <= 4096 - 16) [[likely]] {
        const uint8_t* p = m_fetch_host + off;
        CachedInsn& c = m_icache[(rip ^ (rip >> 11)) % kInsnCacheEntries];
        Insn& d = c.insn;
        dp = &d;
        const uint64_t w0 = load<uint64_t>(p), w1 = load<uint64_t>(p + 8);
        if (c.rip != rip || ((w0 ^ c.bytes[0]) & c.mask[0]) || ((w1 ^ c.bytes[1]) & c.mask[1]))
            [[unlikely]] {
            c.rip = ~0ull;
            d = Insn{};
            d.rip = rip;
            // Decode from a zero-padded copy: an over-long encoding must not make the decoder
            // read past the page (it reads up to ~28 bytes before it can tell).
            uint8_t bytes[32] = {};
            std::memcpy(bytes, &w0, 8);
            std::memcpy(bytes + 8, &w1, 8);
            const bool decoded = decode(d, bytes, 15);
            d.bytes = p;
            if (!decoded)
                return false;
            c.rip = rip;
            c.bytes[0] = w0;
            c.bytes[1] = w1;
            c.mask[0] = d.len >= 8 ? ~0ull : (1ull << (8 * d.len)) - 1;
            c.mask[1] = d.len <= 8 ? 0 : d.len >= 16 ? ~0ull : (1ull << (8 * (d.len - 8))) - 1;
        }
        d.bytes = p;
        if (d.mod != 3)
            compute_ea(d);
        m_rip = d.next;
        return exec_fast(d);
    }
    Insn& d = m_slow_insn;
    dp = &d;
    d = Insn{};
    d.rip = rip;
    const uint8_t* p;
    unsigned avail = 15;
    if (!fetch_slow(d, p, avail))
        return false;
    if (!decode(d, p, avail)) [[unlikely]]
        return false;
    if (d.mod != 3)
        compute_ea(d);
    m_rip = d.next;
    return exec(d);
}

bool Cpu::Impl::fetch_slow(Insn& d, const uint8_t*& p, unsigned& avail) {
    const uint64_t rip = d.rip;
    uint8_t* host = nullptr;
    uint64_t gpa = 0;
    if (!resolve(rip, Access::Execute, acc_flags(), host, gpa))
        return false;
    if (host == nullptr) {
        m_abort = Abort::Internal;
        m_detail = fmt::format("instruction fetch from MMIO (rip {:#x}, gpa {:#x})", rip, gpa);
        return false;
    }
    m_fetch_tag = (rip & ~0xfffull) | m_tag_bits;
    m_fetch_host = host;
    const unsigned off = rip & 0xfff;
    if (off <= 4096 - 32) {
        p = host + off;  // the decoder reads at most 32 bytes, all in this page
        avail = 15;
        return true;
    }
    // Near the page end the decoder works on a zero-padded copy, and the instruction may run
    // into the next page. That page is translated now, but a failure only counts if the
    // decoded length reaches into it.
    const unsigned n = 4096 - off;
    std::memset(m_fetch_buf, 0, sizeof m_fetch_buf);
    std::memcpy(m_fetch_buf, host + off, n);
    p = m_fetch_buf;
    avail = 15;
    if (n >= 15)
        return true;
    avail = n;
    m_fetch2_abort = Abort::None;
    uint8_t* host2 = nullptr;
    uint64_t gpa2 = 0;
    if (!resolve(rip + n, Access::Execute, acc_flags(), host2, gpa2)) {
        m_fetch2_abort = m_abort;
        m_fetch2_event = m_event;
        m_fetch2_detail = m_detail;
        m_abort = Abort::None;
    } else if (host2 == nullptr) {
        m_fetch2_abort = Abort::Internal;
        m_fetch2_detail =
            fmt::format("instruction fetch from MMIO (rip {:#x}, gpa {:#x})", rip + n, gpa2);
    } else {
        std::memcpy(m_fetch_buf + n, host2, 15 - n);
        avail = 15;
    }
    p = m_fetch_buf;
    return true;
}

inline bool Cpu::Impl::decode(Insn& d, const uint8_t* p, unsigned avail) {
    const uint8_t* const start = p;
    d.bytes = start;
    uint8_t rex = 0;
    unsigned b;
    for (;;) {
        b = *p;
        if ((b & 0xf0) == 0x40) {
            rex = static_cast<uint8_t>(b);
        } else {
            switch (b) {
            case 0x66: d.o16 = true; break;
            case 0x67: d.a32 = true; break;
            case 0xf0: d.lock = true; break;
            case 0xf2:
            case 0xf3: d.rep = static_cast<uint8_t>(b); break;
            case 0x64: d.seg = SegOverride::Fs; break;
            case 0x65: d.seg = SegOverride::Gs; break;
            case 0x26:
            case 0x2e:
            case 0x36:
            case 0x3e: break;  // ES/CS/SS/DS overrides: no base in 64-bit mode
            default: goto opcode;
            }
            rex = 0;  // a REX prefix counts only right before the opcode
        }
        if (++p - start >= 15) [[unlikely]]
            return gp0();
    }
opcode:
    ++p;
    uint16_t attr;
    unsigned op;
    if (b == 0x0f) {
        b = *p++;
        if (b == 0x38) {
            op = 0x200 | *p++;
            attr = kM;
        } else if (b == 0x3a) {
            op = 0x300 | *p++;
            attr = kM | kI8;
        } else {
            op = 0x100 | b;
            attr = kTwoByte[b];
        }
    } else if (b == 0xc4 || b == 0xc5) [[unlikely]] {
        // VEX: in 64-bit mode C4/C5 always start one.
        if (rex || d.o16 || d.rep || d.lock)
            return ud();
        d.vex = true;
        unsigned map = 1;
        const unsigned v1 = *p++;
        unsigned v2 = v1;
        rex = 0x40 | ((~v1 >> 5) & 4);
        if (b == 0xc4) {
            rex |= static_cast<uint8_t>((~v1 >> 5) & 3);
            map = v1 & 0x1f;
            v2 = *p++;
            d.vex_w = (v2 >> 7) & 1;
            if (d.vex_w)
                rex |= 8;
        }
        d.vvvv = (~v2 >> 3) & 15;
        d.vex_l = (v2 >> 2) & 1;
        d.vex_pp = v2 & 3;
        const unsigned ob = *p++;
        if (map == 2) {
            op = 0x200 | ob;
            attr = kM;
        } else if (map == 3) {
            op = 0x300 | ob;
            attr = kM | kI8;
        } else {
            op = 0x100 | ob;
            attr = kM;
        }
    } else {
        op = b;
        attr = kOneByte[b];
    }
    d.op = static_cast<uint16_t>(op);
    d.rex = rex;

    unsigned opsize;
    if (rex & 8)
        opsize = 8;
    else if (attr & (kD64 | kF64))
        opsize = (d.o16 && !(attr & kF64)) ? 2 : 8;
    else
        opsize = d.o16 ? 2 : 4;
    d.opsize = static_cast<uint8_t>(opsize);

    bool riprel = false;
    if (attr & kM) {
        const unsigned modrm = *p++;
        d.mod = static_cast<uint8_t>(modrm >> 6);
        if ((op & ~3u) == 0x120)
            d.mod = 3;  // MOV to/from CR/DR: always a register operand, mod is ignored
        d.regop = (modrm >> 3) & 7;
        d.reg = static_cast<uint8_t>(d.regop | ((rex & 4) << 1));
        const unsigned rm = modrm & 7;
        if (d.mod == 3) {
            d.rm = static_cast<uint8_t>(rm | ((rex & 1) << 3));
        } else {
            uint64_t disp = 0;
            if (rm == 4) {
                const unsigned sib = *p++;
                const unsigned index = ((sib >> 3) & 7) | ((rex & 2) << 2);
                const unsigned base = (sib & 7) | ((rex & 1) << 3);
                if (index != 4) {
                    d.index = static_cast<uint8_t>(index);
                    d.scale = static_cast<uint8_t>(sib >> 6);
                }
                if ((base & 7) == 5 && d.mod == 0) {
                    disp = static_cast<uint64_t>(static_cast<int64_t>(load<int32_t>(p)));
                    p += 4;
                } else {
                    d.base = static_cast<uint8_t>(base);
                }
            } else if (rm == 5 && d.mod == 0) {
                disp = static_cast<uint64_t>(static_cast<int64_t>(load<int32_t>(p)));
                p += 4;
                riprel = true;
            } else {
                d.base = static_cast<uint8_t>(rm | ((rex & 1) << 3));
            }
            if (d.mod == 1) {
                disp += static_cast<uint64_t>(static_cast<int64_t>(static_cast<int8_t>(*p++)));
            } else if (d.mod == 2) {
                disp += static_cast<uint64_t>(static_cast<int64_t>(load<int32_t>(p)));
                p += 4;
            }
            d.disp = disp;
        }
    }

    if (attr & kImm) {
        if (attr & kGrp3) {
            if (d.regop < 2)
                attr |= (op == 0xf6) ? kI8 : kIZ;
        }
        if (attr & kI8) {
            d.imm = static_cast<uint64_t>(static_cast<int64_t>(static_cast<int8_t>(*p++)));
        } else if (attr & (kIZ | kRel32)) {
            if (opsize == 2 && !(attr & kRel32)) {
                d.imm = static_cast<uint64_t>(static_cast<int64_t>(load<int16_t>(p)));
                p += 2;
            } else {
                d.imm = static_cast<uint64_t>(static_cast<int64_t>(load<int32_t>(p)));
                p += 4;
            }
        } else if (attr & kIV) {
            if (opsize == 8) {
                d.imm = load<uint64_t>(p);
                p += 8;
            } else if (opsize == 4) {
                d.imm = load<uint32_t>(p);
                p += 4;
            } else {
                d.imm = load<uint16_t>(p);
                p += 2;
            }
        } else if (attr & kI16) {
            d.imm = load<uint16_t>(p);
            p += 2;
        } else if (attr & kMoffs) {
            if (d.a32) {
                d.disp = load<uint32_t>(p);
                p += 4;
            } else {
                d.disp = load<uint64_t>(p);
                p += 8;
            }
            d.mod = 0;
        } else if (attr & kEnter) {
            d.imm = load<uint16_t>(p);
            d.imm2 = p[2];
            p += 3;
        }
    }

    const unsigned len = static_cast<unsigned>(p - start);
    d.len = static_cast<uint8_t>(len);
    if (len > avail) [[unlikely]] {
        if (len > 15)
            return gp0();
        // The instruction reaches into a page that could not be fetched.
        m_abort = m_fetch2_abort;
        m_event = m_fetch2_event;
        m_detail = m_fetch2_detail;
        return false;
    }
    d.next = d.rip + len;
    if (riprel)
        d.disp += d.next;
    d.ea_slow = d.a32 || d.seg != SegOverride::None;
    if (attr & kBad) [[unlikely]]
        return ud();
    classify(d);
    return true;
}

// Picks a fast handler for the common 32/64-bit forms (see Fast).
void Cpu::Impl::classify(Insn& d) {
    const unsigned op = d.op;
    const bool wide = d.opsize == 4 || d.opsize == 8;
    const bool reg = d.mod == 3;
    auto set = [&](Fast f, unsigned fd, unsigned fs, unsigned aux) {
        d.fast = f;
        d.fd = static_cast<uint8_t>(fd);
        d.fs = static_cast<uint8_t>(fs);
        d.aux = static_cast<uint8_t>(aux);
    };
    if (d.lock || d.vex)
        return;
    if (op < 0x40 && wide) {
        const unsigned form = op & 7, aop = op >> 3;
        if (form == 1 && reg)
            set(Fast::AluRR, d.rm, d.reg, aop);
        else if (form == 3 && reg)
            set(Fast::AluRR, d.reg, d.rm, aop);
        else if (form == 3)
            set(Fast::AluLoad, d.reg, 0, aop);
        else if (form == 1 && aop == 7)
            set(Fast::CmpMR, 0, d.reg, 7);
        else if (form == 1)
            set(Fast::AluStore, 0, d.reg, aop);
        return;
    }
    // Byte registers AH..BH (encodings 4-7 without REX) take the general path.
    const bool byte_rm_ok = d.rex || d.rm < 4;
    const bool byte_reg_ok = d.rex || d.reg < 4;
    const unsigned rexb = (d.rex & 1) << 3;
    switch (op) {
    case 0x81:
    case 0x83:
        if (wide && reg)
            set(Fast::AluRI, d.rm, 0, d.regop);
        else if (wide && d.regop == 7)
            set(Fast::CmpMI, 0, 0, 7);
        else if (wide)
            set(Fast::AluStore, 0, kNoReg, d.regop);
        break;
    case 0x80:
        if (!reg && d.regop == 7)
            set(Fast::Cmp8MI, 0, 0, 7);
        break;
    case 0x84:
        if (reg && byte_rm_ok && byte_reg_ok)
            set(Fast::Test8RR, d.rm, d.reg, 0);
        break;
    case 0x85:
        if (wide && reg)
            set(Fast::TestRR, d.rm, d.reg, 0);
        break;
    case 0x88:
        if (!reg && byte_reg_ok)
            set(Fast::Store8, 0, d.reg, 0);
        break;
    case 0x8a:
        if (!reg && byte_reg_ok)
            set(Fast::Load8, d.reg, 0, 0);
        break;
    case 0x63:
        if (d.opsize == 8)
            set(Fast::Movsx, d.reg, reg ? d.rm : kNoReg, 4);
        break;
    case 0x69:
    case 0x6b:
        if (wide)
            set(Fast::Imul3, d.reg, reg ? d.rm : kNoReg, 0);
        break;
    case 0x99:
        if (wide)
            set(Fast::Cqo, 0, 0, 0);
        break;
    case 0xc1:
    case 0xd1:
    case 0xd3:
        if (wide && reg && d.regop >= 4) {
            if (op == 0xd1)
                d.imm = 1;
            set(op == 0xd3 ? Fast::ShiftRC : Fast::ShiftRI, d.rm, 0, d.regop == 6 ? 4 : d.regop);
        }
        break;
    case 0xc6:
        if (!reg && d.regop == 0)
            set(Fast::StoreImm, 0, 0, 1);
        break;
    case 0xf7:
        if (wide && reg && d.regop == 0)
            set(Fast::TestRI, d.rm, 0, 0);
        break;
    case 0x1af:
        if (wide)
            set(Fast::Imul, d.reg, reg ? d.rm : kNoReg, 0);
        break;
    case 0x1b6:
    case 0x1b7:
    case 0x1be:
    case 0x1bf:
        if (wide && (!reg || op & 1 || byte_rm_ok))
            set(op < 0x1b8 ? Fast::Movzx : Fast::Movsx, d.reg, reg ? d.rm : kNoReg,
                (op & 1) ? 2 : 1);
        break;
    case 0x140: case 0x141: case 0x142: case 0x143: case 0x144: case 0x145: case 0x146: case 0x147:
    case 0x148: case 0x149: case 0x14a: case 0x14b: case 0x14c: case 0x14d: case 0x14e: case 0x14f:
        if (wide)
            set(Fast::Cmov, d.reg, reg ? d.rm : kNoReg, op & 15);
        break;
    case 0x190: case 0x191: case 0x192: case 0x193: case 0x194: case 0x195: case 0x196: case 0x197:
    case 0x198: case 0x199: case 0x19a: case 0x19b: case 0x19c: case 0x19d: case 0x19e: case 0x19f:
        if (reg && byte_rm_ok)
            set(Fast::Setcc, d.rm, 0, op & 15);
        break;
    case 0x89:
        if (wide)
            set(reg ? Fast::MovRR : Fast::Store, d.rm, d.reg, 0);
        break;
    case 0x8b:
        if (wide)
            set(reg ? Fast::MovRR : Fast::Load, d.reg, d.rm, 0);
        break;
    case 0x8d:
        if (wide && !reg && d.seg == SegOverride::None)
            set(Fast::Lea, d.reg, 0, 0);
        break;
    case 0xb8: case 0xb9: case 0xba: case 0xbb: case 0xbc: case 0xbd: case 0xbe: case 0xbf:
        if (wide)
            set(Fast::MovRI, (op & 7) | rexb, 0, 0);
        break;
    case 0xc7:
        if (wide && d.regop == 0) {
            if (reg)
                set(Fast::MovRI, d.rm, 0, 0);
            else
                set(Fast::StoreImm, 0, 0, d.opsize);
        }
        break;
    case 0x70: case 0x71: case 0x72: case 0x73: case 0x74: case 0x75: case 0x76: case 0x77:
    case 0x78: case 0x79: case 0x7a: case 0x7b: case 0x7c: case 0x7d: case 0x7e: case 0x7f:
    case 0x180: case 0x181: case 0x182: case 0x183: case 0x184: case 0x185: case 0x186: case 0x187:
    case 0x188: case 0x189: case 0x18a: case 0x18b: case 0x18c: case 0x18d: case 0x18e: case 0x18f:
        set(Fast::Jcc, 0, 0, op & 15);
        break;
    case 0xe9:
    case 0xeb: set(Fast::Jmp, 0, 0, 0); break;
    case 0xe8: set(Fast::Call, 0, 0, 0); break;
    case 0xc3: set(Fast::Ret, 0, 0, 0); break;
    case 0x50: case 0x51: case 0x52: case 0x53: case 0x54: case 0x55: case 0x56: case 0x57:
        if (d.opsize == 8)
            set(Fast::Push, (op & 7) | rexb, 0, 0);
        break;
    case 0x58: case 0x59: case 0x5a: case 0x5b: case 0x5c: case 0x5d: case 0x5e: case 0x5f:
        if (d.opsize == 8)
            set(Fast::Pop, (op & 7) | rexb, 0, 0);
        break;
    case 0xff:
        if (wide && reg && d.regop < 2)
            set(Fast::IncDec, d.rm, 0, d.regop);
        break;
    case 0x90:
        if (!rexb)
            set(Fast::Nop, 0, 0, 0);
        break;
    case 0x11f: set(Fast::Nop, 0, 0, 0); break;
    default: break;
    }
}

inline bool Cpu::Impl::exec_fast(Insn& d) {
    const unsigned size = d.opsize;
    const uint64_t mask = size_mask(size);
    switch (d.fast) {
    case Fast::None: break;
    case Fast::AluRR: {
        const unsigned aop = d.aux;
        const uint64_t r = alu_c(aop, m_r[d.fd] & mask, m_r[d.fs] & mask, size,
                                 (aop == 2 || aop == 3) ? cf() : 0);
        if (aop != 7)
            m_r[d.fd] = r;
        return true;
    }
    case Fast::AluRI: {
        const unsigned aop = d.aux;
        const uint64_t r = alu_c(aop, m_r[d.fd] & mask, d.imm & mask, size,
                                 (aop == 2 || aop == 3) ? cf() : 0);
        if (aop != 7)
            m_r[d.fd] = r;
        return true;
    }
    case Fast::AluLoad: {
        uint64_t v;
        GUEST_TRY(read_mem(d.ea, size, v, acc_flags()));
        const unsigned aop = d.aux;
        const uint64_t r =
            alu_c(aop, m_r[d.fd] & mask, v, size, (aop == 2 || aop == 3) ? cf() : 0);
        if (aop != 7)
            m_r[d.fd] = r;
        return true;
    }
    case Fast::CmpMR: {
        uint64_t v;
        GUEST_TRY(read_mem(d.ea, size, v, acc_flags()));
        alu_c(7, v, m_r[d.fs] & mask, size, 0);
        return true;
    }
    case Fast::CmpMI: {
        uint64_t v;
        GUEST_TRY(read_mem(d.ea, size, v, acc_flags()));
        alu_c(7, v, d.imm & mask, size, 0);
        return true;
    }
    case Fast::TestRR: set_logic(size, m_r[d.fd] & m_r[d.fs] & mask); return true;
    case Fast::MovRR: m_r[d.fd] = m_r[d.fs] & mask; return true;
    case Fast::MovRI: m_r[d.fd] = d.imm & mask; return true;
    case Fast::Load: {
        uint64_t v;
        GUEST_TRY(read_mem(d.ea, size, v, acc_flags()));
        m_r[d.fd] = v;
        return true;
    }
    case Fast::Store: return write_mem(d.ea, size, m_r[d.fs] & mask, acc_flags());
    case Fast::Lea: m_r[d.fd] = d.ea & mask; return true;
    case Fast::Jcc:
        if (cond(d.aux))
            m_rip = d.next + d.imm;
        return true;
    case Fast::Jmp: m_rip = d.next + d.imm; return true;
    case Fast::Call:
        GUEST_TRY(push(d.next, 8));
        m_rip = d.next + d.imm;
        return true;
    case Fast::Ret: {
        uint64_t target;
        GUEST_TRY(pop(8, target));
        m_rip = target;
        return true;
    }
    case Fast::Push: return push(m_r[d.fd], 8);
    case Fast::Pop: {
        uint64_t v;
        GUEST_TRY(pop(8, v));
        m_r[d.fd] = v;
        return true;
    }
    case Fast::IncDec: {
        const uint8_t carry = cf() ? 1 : 0;
        const uint64_t old = m_r[d.fd] & mask;
        const bool dec = d.aux == 1;
        const uint64_t r = (dec ? old - 1 : old + 1) & mask;
        set_lazy(dec ? FlagOp::Dec : FlagOp::Inc, size, old, 1, r);
        m_fcin = carry;
        m_r[d.fd] = r;
        return true;
    }
    case Fast::Nop: return true;
    case Fast::AluStore: {
        const unsigned aop = d.aux;
        const uint64_t src = (d.fs == kNoReg ? d.imm : m_r[d.fs]) & mask;
        const uint64_t c = (aop == 2 || aop == 3) ? cf() : 0;
        return rmw_mem(d.ea, size, false,
                       [&](uint64_t old) { return alu_c(aop, old, src, size, c); });
    }
    case Fast::ShiftRI:
    case Fast::ShiftRC: {
        const unsigned count =
            static_cast<unsigned>(d.fast == Fast::ShiftRC ? m_r[RCX] : d.imm) & (size == 8 ? 63 : 31);
        const uint64_t v = m_r[d.fd] & mask;
        if (count == 0) {
            m_r[d.fd] = v;  // no flags change; a 32-bit register is still zero-extended
            return true;
        }
        uint64_t r;
        FlagOp fop;
        if (d.aux == 4) {
            r = (v << count) & mask;
            fop = FlagOp::Shl;
        } else if (d.aux == 5) {
            r = v >> count;
            fop = FlagOp::Shr;
        } else {
            r = static_cast<uint64_t>(sign_extend(v, size) >> count) & mask;
            fop = FlagOp::Sar;
        }
        set_lazy(fop, size, v, count, r);
        m_r[d.fd] = r;
        return true;
    }
    case Fast::Imul:
    case Fast::Imul3: {
        uint64_t src;
        if (d.fs != kNoReg)
            src = m_r[d.fs] & mask;
        else
            GUEST_TRY(read_mem(d.ea, size, src, acc_flags()));
        const uint64_t other = d.fast == Fast::Imul ? m_r[d.fd] & mask : d.imm & mask;
        const __int128 p = static_cast<__int128>(sign_extend(src, size)) * sign_extend(other, size);
        const uint64_t r = static_cast<uint64_t>(p) & mask;
        set_lazy(FlagOp::Mul, size, 0, 0, r);
        m_fcin = p != sign_extend(r, size);
        m_r[d.fd] = r;
        return true;
    }
    case Fast::Cqo:
        if (size == 8)
            m_r[RDX] = static_cast<uint64_t>(static_cast<int64_t>(m_r[RAX]) >> 63);
        else
            m_r[RDX] = (m_r[RAX] & 0x80000000) ? 0xffffffff : 0;
        return true;
    case Fast::Movzx:
    case Fast::Movsx: {
        uint64_t v;
        if (d.fs != kNoReg)
            v = reg_read(d.fs, d.aux, d.rex);
        else
            GUEST_TRY(read_mem(d.ea, d.aux, v, acc_flags()));
        if (d.fast == Fast::Movsx)
            v = static_cast<uint64_t>(sign_extend(v, d.aux));
        m_r[d.fd] = v & mask;
        return true;
    }
    case Fast::StoreImm: return write_mem(d.ea, d.aux, d.imm & size_mask(d.aux), acc_flags());
    case Fast::Store8: return write_mem(d.ea, 1, reg_read(d.fs, 1, d.rex), acc_flags());
    case Fast::Load8: {
        uint64_t v;
        GUEST_TRY(read_mem(d.ea, 1, v, acc_flags()));
        reg_write(d.fd, 1, v, d.rex);
        return true;
    }
    case Fast::TestRI: set_logic(size, m_r[d.fd] & d.imm & mask); return true;
    case Fast::Test8RR:
        set_logic(1, reg_read(d.fd, 1, d.rex) & reg_read(d.fs, 1, d.rex));
        return true;
    case Fast::Cmp8MI: {
        uint64_t v;
        GUEST_TRY(read_mem(d.ea, 1, v, acc_flags()));
        alu_c(7, v, d.imm & 0xff, 1, 0);
        return true;
    }
    case Fast::Setcc: reg_write(d.fd, 1, cond(d.aux) ? 1 : 0, d.rex); return true;
    case Fast::Cmov: {
        uint64_t v;
        if (d.fs != kNoReg)
            v = m_r[d.fs];
        else
            GUEST_TRY(read_mem(d.ea, size, v, acc_flags()));
        if (cond(d.aux))
            m_r[d.fd] = v & mask;
        else
            m_r[d.fd] &= mask;  // a 32-bit CMOV zero-extends even when not taken
        return true;
    }
    }
    return exec(d);
}

// ---- execution --------------------------------------------------------------------------------

bool Cpu::Impl::exec(Insn& d) {
    if (d.lock && !lockable(d)) [[unlikely]]
        return ud();
    const unsigned op = d.op;

    // ALU rows 00-3F: ADD OR ADC SBB AND SUB XOR CMP in six forms each.
    if (op < 0x40 && (op & 7) < 6) {
        const unsigned aop = op >> 3;
        switch (op & 7) {
        case 0:
        case 1: {
            const unsigned size = (op & 1) ? d.opsize : 1;
            const uint64_t src = reg_read(d.reg, size, d.rex);
            if (d.mod == 3) {
                const uint64_t r = alu(aop, reg_read(d.rm, size, d.rex), src, size);
                if (aop != 7)
                    reg_write(d.rm, size, r, d.rex);
                return true;
            }
            if (aop == 7) {
                uint64_t v;
                GUEST_TRY(read(d.ea, size, v));
                alu(7, v, src, size);
                return true;
            }
            const uint64_t c = cf();
            return rmw_mem(d.ea, size, d.lock,
                           [&](uint64_t old) { return alu_c(aop, old, src, size, c); });
        }
        case 2:
        case 3: {
            const unsigned size = (op & 1) ? d.opsize : 1;
            uint64_t src;
            GUEST_TRY(rm_read(d, size, src));
            const uint64_t r = alu(aop, reg_read(d.reg, size, d.rex), src, size);
            if (aop != 7)
                reg_write(d.reg, size, r, d.rex);
            return true;
        }
        case 4: {
            const uint64_t r = alu(aop, m_r[RAX] & 0xff, d.imm & 0xff, 1);
            if (aop != 7)
                reg_write(RAX, 1, r, false);
            return true;
        }
        default: {
            const unsigned size = d.opsize;
            const uint64_t r = alu(aop, reg_read(RAX, size, false), d.imm & size_mask(size), size);
            if (aop != 7)
                reg_write(RAX, size, r, false);
            return true;
        }
        }
    }

    switch (op) {
    case 0x50: case 0x51: case 0x52: case 0x53: case 0x54: case 0x55: case 0x56: case 0x57: {
        const unsigned r = (op & 7) | ((d.rex & 1) << 3);
        return push(reg_read(r, d.opsize, true), d.opsize);
    }
    case 0x58: case 0x59: case 0x5a: case 0x5b: case 0x5c: case 0x5d: case 0x5e: case 0x5f: {
        const unsigned r = (op & 7) | ((d.rex & 1) << 3);
        uint64_t v;
        GUEST_TRY(pop(d.opsize, v));
        reg_write(r, d.opsize, v, true);
        return true;
    }
    case 0x63: {  // MOVSXD
        uint64_t v;
        if (d.opsize == 8) {
            GUEST_TRY(rm_read(d, 4, v));
            reg_write(d.reg, 8, static_cast<uint64_t>(sign_extend(v, 4)), true);
        } else {
            GUEST_TRY(rm_read(d, d.opsize, v));
            reg_write(d.reg, d.opsize, v, true);
        }
        return true;
    }
    case 0x68:
    case 0x6a: return push(d.imm & size_mask(d.opsize), d.opsize);
    case 0x69:
    case 0x6b: {
        uint64_t a;
        GUEST_TRY(rm_read(d, d.opsize, a));
        const unsigned size = d.opsize;
        const int64_t x = sign_extend(a, size), y = sign_extend(d.imm & size_mask(size), size);
        __int128 p = static_cast<__int128>(x) * y;
        const uint64_t r = static_cast<uint64_t>(p) & size_mask(size);
        const bool overflow = p != sign_extend(r, size);
        set_arith(ARITH, (overflow ? (CF | OF) : 0) | (r == 0 ? ZF : 0) |
                             ((r & sign_bit(size)) ? SF : 0) |
                             (__builtin_parity(static_cast<unsigned>(r & 0xff)) ? 0 : PF));
        reg_write(d.reg, size, r, true);
        return true;
    }
    case 0x70: case 0x71: case 0x72: case 0x73: case 0x74: case 0x75: case 0x76: case 0x77:
    case 0x78: case 0x79: case 0x7a: case 0x7b: case 0x7c: case 0x7d: case 0x7e: case 0x7f:
        if (cond(op & 15))
            m_rip = d.next + d.imm;
        return true;
    case 0x80:
    case 0x81:
    case 0x83: {
        const unsigned size = op == 0x80 ? 1 : d.opsize;
        const unsigned aop = d.regop;
        const uint64_t src = d.imm & size_mask(size);
        if (d.mod == 3) {
            const uint64_t r = alu(aop, reg_read(d.rm, size, d.rex), src, size);
            if (aop != 7)
                reg_write(d.rm, size, r, d.rex);
            return true;
        }
        if (aop == 7) {
            uint64_t v;
            GUEST_TRY(read(d.ea, size, v));
            alu(7, v, src, size);
            return true;
        }
        const uint64_t c = cf();
        return rmw_mem(d.ea, size, d.lock,
                       [&](uint64_t old) { return alu_c(aop, old, src, size, c); });
    }
    case 0x84:
    case 0x85: {
        const unsigned size = op == 0x84 ? 1 : d.opsize;
        uint64_t v;
        GUEST_TRY(rm_read(d, size, v));
        set_logic(size, v & reg_read(d.reg, size, d.rex));
        return true;
    }
    case 0x86:
    case 0x87: {  // XCHG: locked implicitly when it touches memory
        const unsigned size = op == 0x86 ? 1 : d.opsize;
        const uint64_t rv = reg_read(d.reg, size, d.rex);
        if (d.mod == 3) {
            reg_write(d.reg, size, reg_read(d.rm, size, d.rex), d.rex);
            reg_write(d.rm, size, rv, d.rex);
            return true;
        }
        uint64_t old = 0;
        GUEST_TRY(rmw_mem(d.ea, size, true, [&](uint64_t o) {
            old = o;
            return rv;
        }));
        reg_write(d.reg, size, old, d.rex);
        return true;
    }
    case 0x88:
    case 0x89: {
        const unsigned size = op == 0x88 ? 1 : d.opsize;
        return rm_write(d, size, reg_read(d.reg, size, d.rex));
    }
    case 0x8a:
    case 0x8b: {
        const unsigned size = op == 0x8a ? 1 : d.opsize;
        uint64_t v;
        GUEST_TRY(rm_read(d, size, v));
        reg_write(d.reg, size, v, d.rex);
        return true;
    }
    case 0x8c: {  // MOV r/m, Sreg
        if (d.regop > 5)
            return ud();
        const uint64_t sel = sreg(d.regop).selector;
        if (d.mod == 3) {
            reg_write(d.rm, d.opsize, sel, true);
            return true;
        }
        return write(d.ea, 2, sel);
    }
    case 0x8d:  // LEA: the address without the segment base
        if (d.mod == 3)
            return ud();
        reg_write(d.reg, d.opsize, (d.ea - seg_base(d.seg)) & size_mask(d.opsize), true);
        return true;
    case 0x8e: {  // MOV Sreg, r/m16
        if (d.regop == 1 || d.regop > 5)
            return ud();
        uint64_t sel;
        GUEST_TRY(rm_read(d, 2, sel));
        GUEST_TRY(load_data_segment(d.regop, static_cast<uint16_t>(sel)));
        if (d.regop == 2)
            m_shadow = KVM_X86_SHADOW_INT_MOV_SS;
        return true;
    }
    case 0x8f: {  // POP r/m
        if (d.regop != 0)
            return ud();
        const unsigned size = d.opsize;
        uint64_t v;
        GUEST_TRY(read_mem(m_r[RSP], size, v, acc_flags() | kAccStack));
        if (d.mod == 3) {
            m_r[RSP] += size;
            reg_write(d.rm, size, v, true);
            return true;
        }
        // With RSP as the base, the address is computed after the increment.
        const uint64_t ea = d.base == RSP ? d.ea + size : d.ea;  // (computed with the old RSP)
        GUEST_TRY(write(ea, size, v));
        m_r[RSP] += size;
        return true;
    }
    case 0x90:
        if (!(d.rex & 1))
            return true;  // NOP, PAUSE
        [[fallthrough]];
    case 0x91: case 0x92: case 0x93: case 0x94: case 0x95: case 0x96: case 0x97: {
        const unsigned r = (op & 7) | ((d.rex & 1) << 3);
        const uint64_t a = reg_read(RAX, d.opsize, false);
        reg_write(RAX, d.opsize, reg_read(r, d.opsize, true), false);
        reg_write(r, d.opsize, a, true);
        return true;
    }
    case 0x98:  // CBW / CWDE / CDQE
        switch (d.opsize) {
        case 2: reg_write(RAX, 2, static_cast<uint64_t>(sign_extend(m_r[RAX] & 0xff, 1)), false); break;
        case 4: reg_write(RAX, 4, static_cast<uint64_t>(sign_extend(m_r[RAX] & 0xffff, 2)), false); break;
        default: m_r[RAX] = static_cast<uint64_t>(sign_extend(m_r[RAX] & 0xffffffff, 4)); break;
        }
        return true;
    case 0x99: {  // CWD / CDQ / CQO
        const bool neg = m_r[RAX] & sign_bit(d.opsize);
        reg_write(RDX, d.opsize, neg ? ~0ull : 0, false);
        return true;
    }
    case 0x9b: return ud();  // FWAIT: x87
    case 0x9c:
        return push(rflags() & ~(RF | VM) & size_mask(d.opsize), d.opsize);
    case 0x9d: return exec_popf(d);
    case 0x9e:  // SAHF
        set_arith(SF | ZF | AF | PF | CF, (m_r[RAX] >> 8) & 0xff);
        return true;
    case 0x9f:  // LAHF
        m_r[RAX] = (m_r[RAX] & ~0xff00ull) | (((rflags() & 0xd5) | 2) << 8);
        return true;
    case 0xa0:
    case 0xa1: {
        const unsigned size = op == 0xa0 ? 1 : d.opsize;
        uint64_t v;
        GUEST_TRY(read(d.ea, size, v));
        reg_write(RAX, size, v, false);
        return true;
    }
    case 0xa2:
    case 0xa3: {
        const unsigned size = op == 0xa2 ? 1 : d.opsize;
        return write(d.ea, size, reg_read(RAX, size, false));
    }
    case 0xa8: set_logic(1, m_r[RAX] & d.imm & 0xff); return true;
    case 0xa9: set_logic(d.opsize, m_r[RAX] & d.imm & size_mask(d.opsize)); return true;
    case 0xa4: case 0xa5: case 0xa6: case 0xa7:
    case 0xaa: case 0xab: case 0xac: case 0xad: case 0xae: case 0xaf:
    case 0x6c: case 0x6d: case 0x6e: case 0x6f:
        return exec_string(d);
    case 0xb0: case 0xb1: case 0xb2: case 0xb3: case 0xb4: case 0xb5: case 0xb6: case 0xb7:
        reg_write((op & 7) | ((d.rex & 1) << 3), 1, d.imm, d.rex);
        return true;
    case 0xb8: case 0xb9: case 0xba: case 0xbb: case 0xbc: case 0xbd: case 0xbe: case 0xbf:
        reg_write((op & 7) | ((d.rex & 1) << 3), d.opsize, d.imm, true);
        return true;
    case 0xc0:
    case 0xc1: return exec_shift(d, op == 0xc0 ? 1 : d.opsize, d.imm & 0xff);
    case 0xd0:
    case 0xd1: return exec_shift(d, op == 0xd0 ? 1 : d.opsize, 1);
    case 0xd2:
    case 0xd3: return exec_shift(d, op == 0xd2 ? 1 : d.opsize, m_r[RCX] & 0xff);
    case 0xc2:
    case 0xc3: {
        uint64_t target;
        GUEST_TRY(pop(8, target));
        if (op == 0xc2)
            m_r[RSP] += d.imm;
        m_rip = target;
        return true;
    }
    case 0xc6:
    case 0xc7:
        if (d.regop != 0)
            return ud();  // includes XABORT / XBEGIN (no RTM)
        return rm_write(d, op == 0xc6 ? 1 : d.opsize, d.imm & size_mask(op == 0xc6 ? 1 : d.opsize));
    case 0xc8: {  // ENTER
        const unsigned size = d.opsize;
        const unsigned level = d.imm2 & 31;
        const uint64_t rsp0 = m_r[RSP];
        uint64_t frame = rsp0 - size;
        GUEST_TRY(write_mem(frame, size, reg_read(RBP, size, false), acc_flags() | kAccStack));
        uint64_t sp = frame;
        if (level > 0) {
            uint64_t bp = m_r[RBP];
            for (unsigned i = 1; i < level; ++i) {
                bp -= size;
                uint64_t v;
                GUEST_TRY(read_mem(bp, size, v, acc_flags() | kAccStack));
                sp -= size;
                GUEST_TRY(write_mem(sp, size, v, acc_flags() | kAccStack));
            }
            sp -= size;
            GUEST_TRY(write_mem(sp, size, frame, acc_flags() | kAccStack));
        }
        reg_write(RBP, size, frame, false);
        m_r[RSP] = sp - d.imm;
        return true;
    }
    case 0xc9: {  // LEAVE
        const unsigned size = d.opsize;
        uint64_t v;
        GUEST_TRY(read_mem(m_r[RBP], size, v, acc_flags() | kAccStack));
        m_r[RSP] = m_r[RBP] + size;
        reg_write(RBP, size, v, false);
        return true;
    }
    case 0xcc:
        m_abort = Abort::Trap;
        m_event = Event{BP, EventKind::SoftExc, false, 0, 0};
        return false;
    case 0xcd:
        m_abort = Abort::Trap;
        m_event = Event{static_cast<uint8_t>(d.imm), EventKind::SoftInt, false, 0, 0};
        return false;
    case 0xf1:
        m_abort = Abort::Trap;
        m_event = Event{DB, EventKind::Icebp, false, 0, 0};
        return false;
    case 0xd7: {  // XLAT
        uint64_t addr = m_r[RBX] + (m_r[RAX] & 0xff);
        if (d.a32)
            addr &= 0xffffffff;
        uint64_t v;
        GUEST_TRY(read(addr + seg_base(d.seg), 1, v));
        reg_write(RAX, 1, v, false);
        return true;
    }
    case 0xd8: case 0xd9: case 0xda: case 0xdb: case 0xdc: case 0xdd: case 0xde: case 0xdf:
        return ud();  // x87
    case 0xe0:
    case 0xe1:
    case 0xe2: {  // LOOPNE / LOOPE / LOOP
        const unsigned asz = d.a32 ? 4 : 8;
        const uint64_t c = (m_r[RCX] - 1) & size_mask(asz);
        reg_write(RCX, asz, c, false);
        bool take = c != 0;
        if (op == 0xe0)
            take = take && !cond(4);
        else if (op == 0xe1)
            take = take && cond(4);
        if (take)
            m_rip = d.next + d.imm;
        return true;
    }
    case 0xe3:
        if ((m_r[RCX] & size_mask(d.a32 ? 4 : 8)) == 0)
            m_rip = d.next + d.imm;
        return true;
    case 0xe4: case 0xe5: case 0xe6: case 0xe7: case 0xec: case 0xed: case 0xee: case 0xef:
        return exec_port(d);
    case 0xe8:
        GUEST_TRY(push(d.next, 8));
        m_rip = d.next + d.imm;
        return true;
    case 0xe9:
    case 0xeb: m_rip = d.next + d.imm; return true;
    case 0xf4:
        if (m_cpl != 0)
            return gp0();
        m_stop_after = StopReason::Halt;
        return true;
    case 0xf5:
        materialize();
        m_rflags ^= CF;
        return true;
    case 0xf6: return exec_group3(d, 1);
    case 0xf7: return exec_group3(d, d.opsize);
    case 0xf8: set_arith(CF, 0); return true;
    case 0xf9: set_arith(CF, CF); return true;
    case 0xfa:
        if (m_cpl > ((m_rflags & IOPL) >> 12))
            return gp0();
        m_rflags &= ~IF;
        return true;
    case 0xfb:
        if (m_cpl > ((m_rflags & IOPL) >> 12))
            return gp0();
        if (!(m_rflags & IF)) {
            m_rflags |= IF;
            m_shadow = KVM_X86_SHADOW_INT_STI;
            m_check_irq = true;
        }
        return true;
    case 0xfc: m_rflags &= ~DF; return true;
    case 0xfd: m_rflags |= DF; return true;
    case 0xfe:
    case 0xff: {
        const unsigned size = op == 0xfe ? 1 : d.opsize;
        if (d.regop < 2) {  // INC / DEC keep CF
            const uint8_t carry = cf() ? 1 : 0;
            const bool dec = d.regop == 1;
            const uint64_t m = size_mask(size);
            auto f = [&](uint64_t old) {
                const uint64_t r = (dec ? old - 1 : old + 1) & m;
                set_lazy(dec ? FlagOp::Dec : FlagOp::Inc, size, old, 1, r);
                m_fcin = carry;
                return r;
            };
            return rmw(d, size, f);
        }
        if (op == 0xfe)
            return ud();
        switch (d.regop) {
        case 2: {  // CALL r/m64
            uint64_t target;
            GUEST_TRY(rm_read(d, 8, target));
            GUEST_TRY(push(d.next, 8));
            m_rip = target;
            return true;
        }
        case 4: {  // JMP r/m64
            uint64_t target;
            GUEST_TRY(rm_read(d, 8, target));
            m_rip = target;
            return true;
        }
        case 6: {  // PUSH r/m
            const unsigned psize = (d.o16 && !(d.rex & 8)) ? 2 : 8;
            uint64_t v;
            GUEST_TRY(rm_read(d, psize, v));
            return push(v, psize);
        }
        case 3:
        case 5: internal(d, "far CALL/JMP not supported"); return false;
        default: return ud();
        }
    }
    case 0x0f:  // never: 0F is consumed by the decoder
    default: break;
    }
    if (op >= 0x100)
        return exec_0f(d);
    return exec_rare(d);
}

bool Cpu::Impl::exec_rare(Insn& d) {
    switch (d.op) {
    case 0xcf: return exec_iret(d);
    case 0xca:
    case 0xcb: internal(d, "far RET not supported"); return false;
    default: return ud();
    }
}

bool Cpu::Impl::exec_0f(Insn& d) {
    const unsigned op = d.op;
    if (d.vex) [[unlikely]]
        return exec_vex(d);
    if (op >= 0x200) {
        if ((op == 0x2f0 || op == 0x2f1) && d.rep != 0xf2) {  // MOVBE
            if (d.mod == 3)
                return ud();
            const unsigned size = d.opsize;
            uint64_t v;
            if (op == 0x2f0) {
                GUEST_TRY(read(d.ea, size, v));
                reg_write(d.reg, size, bswap(v, size), true);
                return true;
            }
            return write(d.ea, size, bswap(reg_read(d.reg, size, true), size));
        }
        if (op == 0x2f0 || op == 0x2f1 || op == 0x2f6) {
            internal(d, "CRC32/ADCX/ADOX not supported");
            return false;
        }
        return ud();  // SSSE3/SSE4 and friends
    }
    switch (op) {
    case 0x140: case 0x141: case 0x142: case 0x143: case 0x144: case 0x145: case 0x146: case 0x147:
    case 0x148: case 0x149: case 0x14a: case 0x14b: case 0x14c: case 0x14d: case 0x14e: case 0x14f: {
        uint64_t v;
        GUEST_TRY(rm_read(d, d.opsize, v));  // the source is read (and may fault) either way
        if (cond(op & 15))
            reg_write(d.reg, d.opsize, v, true);
        else if (d.opsize == 4)
            m_r[d.reg] &= 0xffffffff;  // a 32-bit CMOV zero-extends even when not taken
        return true;
    }
    case 0x180: case 0x181: case 0x182: case 0x183: case 0x184: case 0x185: case 0x186: case 0x187:
    case 0x188: case 0x189: case 0x18a: case 0x18b: case 0x18c: case 0x18d: case 0x18e: case 0x18f:
        if (cond(op & 15))
            m_rip = d.next + d.imm;
        return true;
    case 0x190: case 0x191: case 0x192: case 0x193: case 0x194: case 0x195: case 0x196: case 0x197:
    case 0x198: case 0x199: case 0x19a: case 0x19b: case 0x19c: case 0x19d: case 0x19e: case 0x19f:
        return rm_write(d, 1, cond(op & 15) ? 1 : 0);
    case 0x1b6:
    case 0x1b7: {  // MOVZX
        uint64_t v;
        GUEST_TRY(rm_read(d, op == 0x1b6 ? 1 : 2, v));
        reg_write(d.reg, d.opsize, v, true);
        return true;
    }
    case 0x1be:
    case 0x1bf: {  // MOVSX
        const unsigned ssize = op == 0x1be ? 1 : 2;
        uint64_t v;
        GUEST_TRY(rm_read(d, ssize, v));
        reg_write(d.reg, d.opsize, static_cast<uint64_t>(sign_extend(v, ssize)) & size_mask(d.opsize), true);
        return true;
    }
    case 0x1af: {  // IMUL r, r/m
        uint64_t b;
        GUEST_TRY(rm_read(d, d.opsize, b));
        const unsigned size = d.opsize;
        const int64_t x = sign_extend(reg_read(d.reg, size, true), size), y = sign_extend(b, size);
        const __int128 p = static_cast<__int128>(x) * y;
        const uint64_t r = static_cast<uint64_t>(p) & size_mask(size);
        const bool overflow = p != sign_extend(r, size);
        set_arith(ARITH, (overflow ? (CF | OF) : 0) | (r == 0 ? ZF : 0) |
                             ((r & sign_bit(size)) ? SF : 0) |
                             (__builtin_parity(static_cast<unsigned>(r & 0xff)) ? 0 : PF));
        reg_write(d.reg, size, r, true);
        return true;
    }
    case 0x1a3:
    case 0x1ab:
    case 0x1b3:
    case 0x1bb:
    case 0x1ba: return exec_bt(d);
    case 0x1a4: return exec_shld(d, d.imm & 0xff);
    case 0x1a5: return exec_shld(d, m_r[RCX] & 0xff);
    case 0x1ac: return exec_shld(d, d.imm & 0xff);
    case 0x1ad: return exec_shld(d, m_r[RCX] & 0xff);
    case 0x1b0:
    case 0x1b1: {  // CMPXCHG
        const unsigned size = op == 0x1b0 ? 1 : d.opsize;
        const uint64_t acc = reg_read(RAX, size, false);
        const uint64_t src = reg_read(d.reg, size, d.rex);
        if (d.mod == 3) {
            const uint64_t dst = reg_read(d.rm, size, d.rex);
            alu(7, acc, dst, size);
            if (acc == dst)
                reg_write(d.rm, size, src, d.rex);
            else
                reg_write(RAX, size, dst, false);
            return true;
        }
        uint64_t old = 0;
        GUEST_TRY(rmw_mem(d.ea, size, d.lock, [&](uint64_t o) {
            old = o;
            alu(7, acc, o, size);
            return o == acc ? src : o;
        }));
        if (old != acc)
            reg_write(RAX, size, old, false);
        return true;
    }
    case 0x1c0:
    case 0x1c1: {  // XADD
        const unsigned size = op == 0x1c0 ? 1 : d.opsize;
        const uint64_t src = reg_read(d.reg, size, d.rex);
        if (d.mod == 3) {
            const uint64_t dst = reg_read(d.rm, size, d.rex);
            const uint64_t r = alu(0, dst, src, size);
            reg_write(d.reg, size, dst, d.rex);
            reg_write(d.rm, size, r, d.rex);
            return true;
        }
        uint64_t old = 0;
        GUEST_TRY(rmw_mem(d.ea, size, d.lock, [&](uint64_t o) {
            old = o;
            return alu(0, o, src, size);
        }));
        reg_write(d.reg, size, old, d.rex);
        return true;
    }
    case 0x1b8: {  // POPCNT (F3); without F3 it is JMPE
        if (d.rep != 0xf3)
            return ud();
        uint64_t v;
        GUEST_TRY(rm_read(d, d.opsize, v));
        reg_write(d.reg, d.opsize, static_cast<uint64_t>(__builtin_popcountll(v)), true);
        set_arith(ARITH, v == 0 ? ZF : 0);
        return true;
    }
    case 0x1bc:
    case 0x1bd: {  // BSF / BSR, TZCNT / LZCNT with F3
        const unsigned size = d.opsize;
        uint64_t v;
        GUEST_TRY(rm_read(d, size, v));
        const unsigned bits = size * 8;
        if (d.rep == 0xf3) {
            const unsigned n = v == 0 ? bits
                               : op == 0x1bc
                                   ? static_cast<unsigned>(__builtin_ctzll(v))
                                   : static_cast<unsigned>(__builtin_clzll(v)) - (64 - bits);
            reg_write(d.reg, size, n, true);
            materialize();
            m_rflags &= ~(CF | ZF);
            m_rflags |= (v == 0 ? CF : 0) | (n == 0 ? ZF : 0);
            return true;
        }
        materialize();
        if (v == 0) {
            m_rflags |= ZF;  // the destination keeps its value
            return true;
        }
        m_rflags &= ~ZF;
        const unsigned n = op == 0x1bc ? static_cast<unsigned>(__builtin_ctzll(v))
                                       : 63 - static_cast<unsigned>(__builtin_clzll(v));
        reg_write(d.reg, size, n, true);
        return true;
    }
    case 0x1c8: case 0x1c9: case 0x1ca: case 0x1cb: case 0x1cc: case 0x1cd: case 0x1ce: case 0x1cf: {
        const unsigned r = (op & 7) | ((d.rex & 1) << 3);
        if (d.opsize == 2)
            reg_write(r, 2, 0, true);  // undefined; zero as Intel CPUs give
        else
            reg_write(r, d.opsize, bswap(reg_read(r, d.opsize, true), d.opsize), true);
        return true;
    }
    case 0x1a0:
    case 0x1a8:  // PUSH FS / GS
        return push(sreg(op == 0x1a0 ? 4 : 5).selector, d.opsize);
    case 0x1a1:
    case 0x1a9: {  // POP FS / GS
        uint64_t v;
        GUEST_TRY(read_mem(m_r[RSP], d.opsize, v, acc_flags() | kAccStack));
        GUEST_TRY(load_data_segment(op == 0x1a1 ? 4 : 5, static_cast<uint16_t>(v)));
        m_r[RSP] += d.opsize;
        return true;
    }
    case 0x10d:
    case 0x118: case 0x119: case 0x11a: case 0x11b: case 0x11c: case 0x11d: case 0x11e: case 0x11f:
        return true;  // prefetches and hint NOPs (NOP r/m, ENDBR64 ...)
    case 0x10b:
    case 0x1b9:
    case 0x1ff: return ud();  // UD2, UD1, UD0
    case 0x1c7: {
        if (d.regop == 1 && d.mod != 3) {  // CMPXCHG8B / CMPXCHG16B
            if (d.rex & 8) {
                if (d.ea & 15)
                    return gp0();
                bool ok = true;
                uint8_t* p = host_for_write(d.ea, 16, acc_flags(), ok);
                if (!ok)
                    return false;
                if (p == nullptr) {
                    internal(d, "CMPXCHG16B on MMIO");
                    return false;
                }
                uint64_t lo = m_r[RAX], hi = m_r[RDX];
                bool equal;
                // SAFETY: p is 16-byte aligned host memory of one guest page.
                asm volatile("lock cmpxchg16b %[mem]"
                             : [mem] "+m"(*reinterpret_cast<unsigned __int128*>(p)), "+a"(lo),
                               "+d"(hi), "=@ccz"(equal)
                             : "b"(m_r[RBX]), "c"(m_r[RCX])
                             : "memory");
                set_arith(ZF, equal ? ZF : 0);
                if (!equal) {
                    m_r[RAX] = lo;
                    m_r[RDX] = hi;
                }
                return true;
            }
            const uint64_t expect = (m_r[RAX] & 0xffffffff) | (m_r[RDX] << 32);
            const uint64_t desired = (m_r[RBX] & 0xffffffff) | (m_r[RCX] << 32);
            uint64_t old = 0;
            GUEST_TRY(rmw_mem(d.ea, 8, d.lock, [&](uint64_t o) {
                old = o;
                return o == expect ? desired : o;
            }));
            set_arith(ZF, old == expect ? ZF : 0);
            if (old != expect) {
                m_r[RAX] = old & 0xffffffff;
                m_r[RDX] = old >> 32;
            }
            return true;
        }
        if (d.mod == 3 && (d.regop == 6 || (d.regop == 7 && d.rep != 0xf3))) {  // RDRAND/RDSEED
            uint64_t v = 0;
            bool good;
            asm volatile("rdrand %0" : "=r"(v), "=@ccc"(good));
            if (!good) {
                set_arith(ARITH, 0);
                reg_write(d.rm, d.opsize, 0, true);
                return true;
            }
            reg_write(d.rm, d.opsize, v & size_mask(d.opsize), true);
            set_arith(ARITH, CF);
            return true;
        }
        if (d.mod == 3 && d.regop == 7 && d.rep == 0xf3) {  // RDPID
            m_r[d.rm] = m_st->tsc_aux;
            return true;
        }
        return ud();
    }
    default: break;
    }
    return exec_system(d);
}

// ---- groups -----------------------------------------------------------------------------------

bool Cpu::Impl::exec_group3(Insn& d, unsigned size) {
    const uint64_t m = size_mask(size);
    switch (d.regop) {
    case 0:
    case 1: {
        uint64_t v;
        GUEST_TRY(rm_read(d, size, v));
        set_logic(size, v & d.imm & m);
        return true;
    }
    case 2: return rmw(d, size, [m](uint64_t old) { return ~old & m; });
    case 3:
        return rmw(d, size, [&](uint64_t old) {
            const uint64_t r = (0 - old) & m;
            set_lazy(FlagOp::Sub, size, 0, old, r);
            return r;
        });
    default: break;
    }
    uint64_t src;
    GUEST_TRY(rm_read(d, size, src));
    const unsigned bits = size * 8;
    const uint64_t a = reg_read(RAX, size, false);
    const uint64_t dx = reg_read(RDX, size, false);
    auto store_pair = [&](uint64_t lo, uint64_t hi) {
        if (size == 1) {
            reg_write(RAX, 2, (lo & 0xff) | ((hi & 0xff) << 8), false);
        } else {
            reg_write(RAX, size, lo, false);
            reg_write(RDX, size, hi, false);
        }
    };
    auto mul_flags = [&](bool overflow, uint64_t lo) {
        set_arith(ARITH, (overflow ? (CF | OF) : 0) | ((lo & m) == 0 ? ZF : 0) |
                             ((lo & sign_bit(size)) ? SF : 0) |
                             (__builtin_parity(static_cast<unsigned>(lo & 0xff)) ? 0 : PF));
    };
    switch (d.regop) {
    case 4: {  // MUL
        const unsigned __int128 p = static_cast<unsigned __int128>(a) * src;
        const uint64_t lo = static_cast<uint64_t>(p) & m;
        const uint64_t hi = size == 8 ? static_cast<uint64_t>(p >> 64) : static_cast<uint64_t>(p >> bits) & m;
        store_pair(lo, hi);
        mul_flags(hi != 0, lo);
        return true;
    }
    case 5: {  // IMUL
        const __int128 p = static_cast<__int128>(sign_extend(a, size)) * sign_extend(src, size);
        const uint64_t lo = static_cast<uint64_t>(p) & m;
        const uint64_t hi = size == 8 ? static_cast<uint64_t>(p >> 64) : static_cast<uint64_t>(p >> bits) & m;
        store_pair(lo, hi);
        mul_flags(p != sign_extend(lo, size), lo);
        return true;
    }
    case 6: {  // DIV
        if (src == 0)
            return fault_noerr(DE);
        unsigned __int128 dividend;
        if (size == 1)
            dividend = m_r[RAX] & 0xffff;
        else if (size == 8)
            dividend = (static_cast<unsigned __int128>(dx) << 64) | a;
        else
            dividend = (static_cast<unsigned __int128>(dx) << bits) | a;
        const unsigned __int128 q = dividend / src;
        if (q > m)
            return fault_noerr(DE);
        store_pair(static_cast<uint64_t>(q), static_cast<uint64_t>(dividend % src));
        return true;
    }
    default: {  // IDIV
        if (src == 0)
            return fault_noerr(DE);
        __int128 dividend;
        if (size == 1)
            dividend = static_cast<int16_t>(m_r[RAX] & 0xffff);
        else if (size == 8)
            dividend = static_cast<__int128>((static_cast<unsigned __int128>(dx) << 64) | a);
        else
            dividend = static_cast<__int128>(sign_extend((dx << bits) | a, size * 2));
        const int64_t divisor = sign_extend(src, size);
        const __int128 min128 = static_cast<__int128>(static_cast<unsigned __int128>(1) << 127);
        if (divisor == -1 && dividend == min128)
            return fault_noerr(DE);
        const __int128 q = dividend / divisor;
        const __int128 r = dividend % divisor;
        const __int128 lo_limit = -(static_cast<__int128>(1) << (bits - 1));
        const __int128 hi_limit = (static_cast<__int128>(1) << (bits - 1)) - 1;
        if (q < lo_limit || q > hi_limit)
            return fault_noerr(DE);
        store_pair(static_cast<uint64_t>(q) & m, static_cast<uint64_t>(r) & m);
        return true;
    }
    }
}

bool Cpu::Impl::exec_shift(Insn& d, unsigned size, unsigned count) {
    const unsigned kind = d.regop;
    count &= size == 8 ? 63 : 31;
    if (count == 0) {
        // No flags change, but a 32-bit register is still written (zero-extended) and a memory
        // operand is still read.
        uint64_t v;
        GUEST_TRY(rm_read(d, size, v));
        if (d.mod == 3 && size == 4)
            reg_write(d.rm, 4, v, true);
        return true;
    }
    const unsigned bits = size * 8;
    const uint64_t m = size_mask(size);
    const uint64_t sign = sign_bit(size);
    const bool carry_in = cf();
    auto f = [&](uint64_t v) -> uint64_t {
        uint64_t r = v;
        switch (kind) {
        case 0: {  // ROL
            const unsigned c = count % bits;
            r = c ? ((v << c) | (v >> (bits - c))) & m : v;
            const bool c_out = r & 1;
            set_arith(CF | OF, (c_out ? CF : 0) | ((((r & sign) != 0) != c_out) ? OF : 0));
            return r;
        }
        case 1: {  // ROR
            const unsigned c = count % bits;
            r = c ? ((v >> c) | (v << (bits - c))) & m : v;
            const bool msb = r & sign;
            const bool msb2 = r & (sign >> 1);
            set_arith(CF | OF, (msb ? CF : 0) | (msb != msb2 ? OF : 0));
            return r;
        }
        case 2: {  // RCL
            const unsigned c = size <= 2 ? count % (bits + 1) : count;
            bool carry = carry_in;
            for (unsigned i = 0; i < c; ++i) {
                const bool out = r & sign;
                r = ((r << 1) | (carry ? 1 : 0)) & m;
                carry = out;
            }
            set_arith(CF | OF, (carry ? CF : 0) | ((((r & sign) != 0) != carry) ? OF : 0));
            return r;
        }
        case 3: {  // RCR
            const unsigned c = size <= 2 ? count % (bits + 1) : count;
            const bool of = ((v & sign) != 0) != carry_in;
            bool carry = carry_in;
            for (unsigned i = 0; i < c; ++i) {
                const bool out = r & 1;
                r = (r >> 1) | (carry ? sign : 0);
                carry = out;
            }
            set_arith(CF | OF, (carry ? CF : 0) | (of ? OF : 0));
            return r;
        }
        case 4:
        case 6:  // SHL / SAL
            r = count < bits ? (v << count) & m : 0;
            set_lazy(FlagOp::Shl, size, v, count, r);
            return r;
        case 5:  // SHR
            r = count < bits ? v >> count : 0;
            set_lazy(FlagOp::Shr, size, v, count, r);
            return r;
        default:  // SAR
            r = static_cast<uint64_t>(sign_extend(v, size) >> std::min(count, bits - 1)) & m;
            set_lazy(FlagOp::Sar, size, v, count, r);
            return r;
        }
    };
    return rmw(d, size, f);
}

bool Cpu::Impl::exec_shld(Insn& d, unsigned count) {
    const unsigned size = d.opsize;
    const bool left = d.op == 0x1a4 || d.op == 0x1a5;
    count &= size == 8 ? 63 : 31;
    if (count == 0) {
        uint64_t v;
        GUEST_TRY(rm_read(d, size, v));
        if (d.mod == 3 && size == 4)
            reg_write(d.rm, 4, v, true);
        return true;
    }
    const unsigned bits = size * 8;
    const uint64_t m = size_mask(size);
    const uint64_t sign = sign_bit(size);
    const uint64_t src = reg_read(d.reg, size, true);
    auto f = [&](uint64_t v) -> uint64_t {
        uint64_t r;
        bool c_out;
        if (size == 2) {
            // 16-bit with a count above 16 is undefined; shift within the 32-bit pair.
            if (left) {
                const uint64_t cat = (v << 16) | src;
                r = ((cat << count) >> 16) & m;
                c_out = (cat >> (32 - count)) & 1;
            } else {
                const uint64_t cat = (src << 16) | v;
                r = (cat >> count) & m;
                c_out = (cat >> (count - 1)) & 1;
            }
        } else if (left) {
            r = ((v << count) | (src >> (bits - count))) & m;
            c_out = (v >> (bits - count)) & 1;
        } else {
            r = ((v >> count) | (src << (bits - count))) & m;
            c_out = (v >> (count - 1)) & 1;
        }
        const uint64_t f2 = (c_out ? CF : 0) | ((((r ^ v) & sign) != 0) ? OF : 0) |
                            (r == 0 ? ZF : 0) | ((r & sign) ? SF : 0) |
                            (__builtin_parity(static_cast<unsigned>(r & 0xff)) ? 0 : PF);
        set_arith(ARITH, f2);
        return r;
    };
    return rmw(d, size, f);
}

bool Cpu::Impl::exec_bt(Insn& d) {
    unsigned kind;  // 0 BT, 1 BTS, 2 BTR, 3 BTC
    switch (d.op) {
    case 0x1a3: kind = 0; break;
    case 0x1ab: kind = 1; break;
    case 0x1b3: kind = 2; break;
    case 0x1bb: kind = 3; break;
    default:
        if (d.regop < 4)
            return ud();
        kind = d.regop - 4;
        break;
    }
    const unsigned size = d.opsize;
    const unsigned bits = size * 8;
    uint64_t ea = d.ea;
    unsigned bit;
    if (d.op == 0x1ba) {
        bit = d.imm & (bits - 1);
    } else {
        const int64_t off = sign_extend(reg_read(d.reg, size, true), size);
        bit = static_cast<unsigned>(off & (bits - 1));
        if (d.mod != 3) {
            const int shift = size == 2 ? 4 : size == 4 ? 5 : 6;
            ea += static_cast<uint64_t>((off >> shift) * static_cast<int64_t>(size));
        }
    }
    bool old_bit = false;
    auto f = [&](uint64_t v) -> uint64_t {
        old_bit = (v >> bit) & 1;
        switch (kind) {
        case 1: return v | (1ull << bit);
        case 2: return v & ~(1ull << bit);
        default: return v ^ (1ull << bit);
        }
    };
    if (kind == 0) {
        uint64_t v;
        if (d.mod == 3)
            v = reg_read(d.rm, size, true);
        else
            GUEST_TRY(read(ea, size, v));
        old_bit = (v >> bit) & 1;
    } else if (d.mod == 3) {
        const uint64_t v = reg_read(d.rm, size, true);
        reg_write(d.rm, size, f(v), true);
    } else {
        GUEST_TRY(rmw_mem(ea, size, d.lock, f));
    }
    set_arith(CF, old_bit ? CF : 0);
    return true;
}

// ---- strings and ports ------------------------------------------------------------------------

bool Cpu::Impl::exec_port(Insn& d) {
    const unsigned op = d.op;
    const unsigned size = (op & 1) ? (d.opsize == 2 ? 2 : 4) : 1;
    const uint16_t port = (op & 8) ? static_cast<uint16_t>(m_r[RDX]) : static_cast<uint16_t>(d.imm & 0xff);
    if (!io_allowed(port, size))
        return gp0();
    m_check_irq = true;  // a PIC or PIT access may raise or unmask an interrupt
    if ((op & 2) == 0) {  // IN
        uint32_t v = 0;
        if (m_bus->pio_in(port, &v, size) == BusResult::Exit) {
            m_stop_after = StopReason::IoExit;
            return true;
        }
        reg_write(RAX, size, v, false);
        return true;
    }
    const uint32_t v = static_cast<uint32_t>(reg_read(RAX, size, false));
    if (m_bus->pio_out(port, &v, size) == BusResult::Exit)
        m_stop_after = StopReason::IoExit;
    return true;
}

bool Cpu::Impl::exec_string(Insn& d) {
    const unsigned op = d.op;
    const unsigned size = (op & 1) ? (op >= 0x6c && op <= 0x6f && d.opsize == 8 ? 4 : d.opsize) : 1;
    const int64_t delta = (m_rflags & DF) ? -static_cast<int64_t>(size) : static_cast<int64_t>(size);
    const unsigned asz = d.a32 ? 4 : 8;
    const uint64_t amask = size_mask(asz);
    const uint64_t src_base = seg_base(d.seg);
    const bool rep = d.rep != 0;
    const unsigned flags = acc_flags();
    if (rep && (m_r[RCX] & amask) == 0)
        return true;
    auto advance = [&](unsigned r, int64_t by) {
        reg_write(r, asz, m_r[r] + static_cast<uint64_t>(by), false);
    };
    // Iterations per step: a long REP yields to the run loop (interrupts, budget) and resumes
    // with RIP still at the instruction.
    uint64_t left = rep ? 16384 : 1;

    for (;;) {
        uint64_t count = m_r[RCX] & amask;
        uint64_t n = 1;  // elements done this round
        switch (op) {
        case 0xa4:
        case 0xa5: {  // MOVS
            const uint64_t si = m_r[RSI] & amask, di = m_r[RDI] & amask;
            if (rep && delta > 0) {
                // Bulk copy up to the nearer page end of source and destination.
                const uint64_t room = std::min(4096 - ((src_base + si) & 0xfff), 4096 - (di & 0xfff)) / size;
                n = std::min({count, room, left});
                if (n > 1) {
                    bool ok = true;
                    const uint8_t* s = host_for_read(src_base + si, static_cast<unsigned>(n * size), flags, ok);
                    if (!ok)
                        return false;
                    uint8_t* t = s ? host_for_write(di, static_cast<unsigned>(n * size), flags, ok) : nullptr;
                    if (!ok)
                        return false;
                    if (s && t) {
                        const size_t bytes = n * size;
                        if (t > s && t < s + bytes) {
                            // Forward overlap: element after element, as the architecture says.
                            for (size_t i = 0; i < bytes; i += size)
                                store_host(t + i, size, load_host(s + i, size));
                        } else {
                            std::memmove(t, s, bytes);
                        }
                        advance(RSI, static_cast<int64_t>(bytes));
                        advance(RDI, static_cast<int64_t>(bytes));
                        break;
                    }
                }
                n = 1;
            }
            uint64_t v;
            GUEST_TRY(read(src_base + si, size, v));
            GUEST_TRY(write(di, size, v));
            advance(RSI, delta);
            advance(RDI, delta);
            break;
        }
        case 0xaa:
        case 0xab: {  // STOS
            const uint64_t di = m_r[RDI] & amask;
            const uint64_t v = reg_read(RAX, size, false);
            if (rep && delta > 0) {
                n = std::min({count, (4096 - (di & 0xfff)) / size, left});
                if (n > 1) {
                    bool ok = true;
                    uint8_t* t = host_for_write(di, static_cast<unsigned>(n * size), flags, ok);
                    if (!ok)
                        return false;
                    if (t) {
                        if (size == 1) {
                            std::memset(t, static_cast<int>(v), n);
                        } else {
                            for (uint64_t i = 0; i < n; ++i)
                                store_host(t + i * size, size, v);
                        }
                        advance(RDI, static_cast<int64_t>(n * size));
                        break;
                    }
                }
                n = 1;
            }
            GUEST_TRY(write(di, size, v));
            advance(RDI, delta);
            break;
        }
        case 0xac:
        case 0xad: {  // LODS
            uint64_t v;
            GUEST_TRY(read(src_base + (m_r[RSI] & amask), size, v));
            reg_write(RAX, size, v, false);
            advance(RSI, delta);
            break;
        }
        case 0xa6:
        case 0xa7: {  // CMPS
            uint64_t a, b;
            GUEST_TRY(read(src_base + (m_r[RSI] & amask), size, a));
            GUEST_TRY(read(m_r[RDI] & amask, size, b));
            alu(7, a, b, size);
            advance(RSI, delta);
            advance(RDI, delta);
            break;
        }
        case 0xae:
        case 0xaf: {  // SCAS
            uint64_t b;
            GUEST_TRY(read(m_r[RDI] & amask, size, b));
            alu(7, reg_read(RAX, size, false), b, size);
            advance(RDI, delta);
            break;
        }
        case 0x6c:
        case 0x6d: {  // INS
            const uint16_t port = static_cast<uint16_t>(m_r[RDX]);
            if (!io_allowed(port, size))
                return gp0();
            // Check the destination first so that no port data is lost to a fault.
            bool ok = true;
            host_for_write(m_r[RDI] & amask, size, flags, ok);
            if (!ok)
                return false;
            uint32_t v = 0;
            if (m_bus->pio_in(port, &v, size) == BusResult::Exit) {
                internal(d, "INS from a port that exits to userspace is not supported");
                return false;
            }
            m_check_irq = true;
            GUEST_TRY(write(m_r[RDI] & amask, size, v));
            advance(RDI, delta);
            break;
        }
        default: {  // OUTS
            const uint16_t port = static_cast<uint16_t>(m_r[RDX]);
            if (!io_allowed(port, size))
                return gp0();
            uint64_t v;
            GUEST_TRY(read(src_base + (m_r[RSI] & amask), size, v));
            const uint32_t v32 = static_cast<uint32_t>(v);
            m_check_irq = true;
            if (m_bus->pio_out(port, &v32, size) == BusResult::Exit)
                m_stop_after = StopReason::IoExit;
            advance(RSI, delta);
            break;
        }
        }
        if (!rep)
            return true;
        count -= n;
        reg_write(RCX, asz, count, false);
        if (count == 0)
            return true;
        if ((op == 0xa6 || op == 0xa7 || op == 0xae || op == 0xaf) &&
            (d.rep == 0xf3 ? !cond(4) : cond(4)))
            return true;  // REPE stops on a difference, REPNE on equality
        left -= std::min(left, n);
        if (left == 0 || m_stop_after != StopReason::Budget)
            break;
    }
    m_rip = d.rip;  // more to do: run the instruction again
    return true;
}

// ---- VEX: BMI1 / BMI2 -------------------------------------------------------------------------

bool Cpu::Impl::exec_vex(Insn& d) {
    const unsigned op = d.op;
    if (d.vex_l)
        return ud();
    const unsigned size = d.vex_w ? 8 : 4;
    const unsigned bits = size * 8;
    const uint64_t m = size_mask(size);
    const uint64_t sign = sign_bit(size);
    auto zs = [&](uint64_t r) { return (r == 0 ? ZF : 0) | ((r & sign) ? SF : 0); };
    if (op != 0x2f2 && op != 0x2f3 && op != 0x2f5 && op != 0x2f6 && op != 0x2f7 && op != 0x3f0)
        return ud();  // AVX
    uint64_t src;
    GUEST_TRY(rm_read(d, size, src));
    const uint64_t v = m_r[d.vvvv] & m;
    switch (op) {
    case 0x2f2: {  // ANDN
        if (d.vex_pp != 0)
            return ud();
        const uint64_t r = ~v & src & m;
        reg_write(d.reg, size, r, true);
        set_arith(ARITH, zs(r));
        return true;
    }
    case 0x2f3: {  // BLSR / BLSMSK / BLSI
        if (d.vex_pp != 0 || d.regop < 1 || d.regop > 3)
            return ud();
        uint64_t r;
        bool carry;
        if (d.regop == 1) {
            r = src & (src - 1) & m;
            carry = src == 0;
        } else if (d.regop == 2) {
            r = (src ^ (src - 1)) & m;
            carry = src == 0;
        } else {
            r = (0 - src) & src & m;
            carry = src != 0;
        }
        reg_write(d.vvvv, size, r, true);
        set_arith(ARITH, zs(r) | (carry ? CF : 0));
        return true;
    }
    case 0x2f5:
        if (d.vex_pp == 0) {  // BZHI
            const unsigned n = v & 0xff;
            const uint64_t r = n < bits ? src & ((1ull << n) - 1) : src;
            reg_write(d.reg, size, r, true);
            set_arith(ARITH, zs(r) | (n > bits - 1 ? CF : 0));
            return true;
        }
        if (d.vex_pp == 3 || d.vex_pp == 2) {  // PDEP / PEXT (source vvvv, mask r/m)
            uint64_t r = 0;
            unsigned k = 0;
            for (unsigned i = 0; i < bits; ++i) {
                if (!((src >> i) & 1))
                    continue;
                if (d.vex_pp == 3)
                    r |= ((v >> k) & 1) << i;
                else
                    r |= ((v >> i) & 1) << k;
                ++k;
            }
            reg_write(d.reg, size, r, true);
            return true;
        }
        return ud();
    case 0x2f6: {  // MULX
        if (d.vex_pp != 3)
            return ud();
        const unsigned __int128 p = static_cast<unsigned __int128>(m_r[RDX] & m) * src;
        reg_write(d.vvvv, size, static_cast<uint64_t>(p) & m, true);
        reg_write(d.reg, size, static_cast<uint64_t>(p >> bits) & m, true);
        return true;
    }
    case 0x2f7:
        switch (d.vex_pp) {
        case 0: {  // BEXTR
            const unsigned start = v & 0xff, len = (v >> 8) & 0xff;
            uint64_t r = start < bits ? src >> start : 0;
            if (len < 64)
                r &= (1ull << len) - 1;
            r &= m;
            reg_write(d.reg, size, r, true);
            set_arith(ARITH, r == 0 ? ZF : 0);
            return true;
        }
        case 1: reg_write(d.reg, size, (src << (v & (bits - 1))) & m, true); return true;  // SHLX
        case 2:  // SARX
            reg_write(d.reg, size, static_cast<uint64_t>(sign_extend(src, size) >> (v & (bits - 1))) & m, true);
            return true;
        default: reg_write(d.reg, size, src >> (v & (bits - 1)), true); return true;  // SHRX
        }
    default: {  // RORX
        if (d.vex_pp != 3)
            return ud();
        const unsigned c = d.imm & (bits - 1);
        const uint64_t r = c ? ((src >> c) | (src << (bits - c))) & m : src;
        reg_write(d.reg, size, r, true);
        return true;
    }
    }
}

}  // namespace colod::kvm::soft
