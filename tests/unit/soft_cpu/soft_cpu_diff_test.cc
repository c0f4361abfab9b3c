// SPDX-License-Identifier: GPL-2.0-or-later
// Differential tests of the interpreter against the host CPU. Each operation below is one
// instruction inside a small host function (assembled into this test by the host assembler):
// the function loads RAX, RBX, RCX, RDX and RFLAGS from a block, runs the instruction, and
// stores them back. The test runs that function natively and copies the very same instruction
// bytes into the interpreter's guest memory, for many random operands, and compares the
// registers and the flags the architecture defines (undefined flags are masked per operation).
#include <catch2/catch.hpp>

#include <cpuid.h>
#include <sys/mman.h>

#include <fmt/format.h>

#include <cstdlib>
#include <random>

#include "tests/unit/soft_cpu/fake_bus.h"

using namespace colod::kvm::soft;
using namespace colod::kvm::soft::test;

namespace {

struct Regs {
    uint64_t rax, rbx, rcx, rdx, rflags, rsi, rdi;
};

// Operand constraints an operation needs so that the native run does not trap.
enum class Domain { Any, Div, Idiv, Div8, Idiv8, Mem, BitMem, Str };

}  // namespace

// Defines diff_<name> (the host function), diff_<name>_insn and diff_<name>_end (the bytes of
// the instruction).
#define DIFF_OP(name, insn)                                                                   \
    extern "C" void diff_##name(Regs*);                                                       \
    extern "C" const uint8_t diff_##name##_insn[], diff_##name##_end[];                       \
    asm(".text\n.globl diff_" #name "\n.type diff_" #name ", @function\ndiff_" #name ":\n"   \
        "  push %rbx\n  mov %rdi, %r8\n  mov 0(%r8), %rax\n  mov 8(%r8), %rbx\n"              \
        "  mov 16(%r8), %rcx\n  mov 24(%r8), %rdx\n  mov 40(%r8), %rsi\n  mov 48(%r8), %rdi\n" \
        "  pushq 32(%r8)\n  popfq\n"                                                         \
        ".globl diff_" #name "_insn\ndiff_" #name "_insn:\n  " insn "\n"                      \
        ".globl diff_" #name "_end\ndiff_" #name "_end:\n"                                    \
        "  pushfq\n  popq 32(%r8)\n  cld\n  mov %rax, 0(%r8)\n  mov %rbx, 8(%r8)\n"          \
        "  mov %rcx, 16(%r8)\n  mov %rdx, 24(%r8)\n  mov %rsi, 40(%r8)\n  mov %rdi, 48(%r8)\n" \
        "  pop %rbx\n  ret\n");

// ALU ops in each size, register and immediate forms.
#define ALU_OPS(op)                                 \
    DIFF_OP(op##b, #op "b %bl, %al")                \
    DIFF_OP(op##w, #op "w %bx, %ax")                \
    DIFF_OP(op##l, #op "l %ebx, %eax")              \
    DIFF_OP(op##q, #op "q %rbx, %rax")              \
    DIFF_OP(op##q_imm8, #op "q $-3, %rax")          \
    DIFF_OP(op##l_imm32, #op "l $0x80000000, %eax") \
    DIFF_OP(op##b_imm, #op "b $0x7f, %al")
ALU_OPS(add)
ALU_OPS(or)
ALU_OPS(adc)
ALU_OPS(sbb)
ALU_OPS(and)
ALU_OPS(sub)
ALU_OPS(xor)
ALU_OPS(cmp)
ALU_OPS(test)

#define UNARY_OPS(op)                 \
    DIFF_OP(op##b, #op "b %al")       \
    DIFF_OP(op##w, #op "w %ax")       \
    DIFF_OP(op##l, #op "l %eax")      \
    DIFF_OP(op##q, #op "q %rax")
UNARY_OPS(inc)
UNARY_OPS(dec)
UNARY_OPS(neg)
UNARY_OPS(not)
UNARY_OPS(mul)
UNARY_OPS(imul)

#define SHIFT_OPS(op)                       \
    DIFF_OP(op##b_cl, #op "b %cl, %al")     \
    DIFF_OP(op##w_cl, #op "w %cl, %ax")     \
    DIFF_OP(op##l_cl, #op "l %cl, %eax")    \
    DIFF_OP(op##q_cl, #op "q %cl, %rax")    \
    DIFF_OP(op##b_1, #op "b $1, %al")       \
    DIFF_OP(op##q_1, #op "q $1, %rax")      \
    DIFF_OP(op##l_imm, #op "l $7, %eax")
SHIFT_OPS(shl)
SHIFT_OPS(shr)
SHIFT_OPS(sar)
SHIFT_OPS(rol)
SHIFT_OPS(ror)
SHIFT_OPS(rcl)
SHIFT_OPS(rcr)

DIFF_OP(shldw_cl, "shldw %cl, %bx, %ax")
DIFF_OP(shldl_cl, "shldl %cl, %ebx, %eax")
DIFF_OP(shldq_cl, "shldq %cl, %rbx, %rax")
DIFF_OP(shrdw_cl, "shrdw %cl, %bx, %ax")
DIFF_OP(shrdl_cl, "shrdl %cl, %ebx, %eax")
DIFF_OP(shrdq_cl, "shrdq %cl, %rbx, %rax")
DIFF_OP(shldq_imm, "shldq $13, %rbx, %rax")
DIFF_OP(shrdl_imm, "shrdl $1, %ebx, %eax")

DIFF_OP(divb, "divb %bl")
DIFF_OP(divw, "divw %bx")
DIFF_OP(divl, "divl %ebx")
DIFF_OP(divq, "divq %rbx")
DIFF_OP(idivb, "idivb %bl")
DIFF_OP(idivw, "idivw %bx")
DIFF_OP(idivl, "idivl %ebx")
DIFF_OP(idivq, "idivq %rbx")

DIFF_OP(imulw2, "imulw %bx, %ax")
DIFF_OP(imull2, "imull %ebx, %eax")
DIFF_OP(imulq2, "imulq %rbx, %rax")
DIFF_OP(imull3, "imull $-7, %ebx, %eax")
DIFF_OP(imulq3, "imulq $0x12345, %rbx, %rax")
DIFF_OP(imulw3, "imulw $300, %bx, %ax")

DIFF_OP(bsfw, "bsfw %bx, %ax")
DIFF_OP(bsfl, "bsfl %ebx, %eax")
DIFF_OP(bsfq, "bsfq %rbx, %rax")
DIFF_OP(bsrl, "bsrl %ebx, %eax")
DIFF_OP(bsrq, "bsrq %rbx, %rax")
DIFF_OP(tzcntw, "tzcntw %bx, %ax")
DIFF_OP(tzcntl, "tzcntl %ebx, %eax")
DIFF_OP(tzcntq, "tzcntq %rbx, %rax")
DIFF_OP(lzcntw, "lzcntw %bx, %ax")
DIFF_OP(lzcntl, "lzcntl %ebx, %eax")
DIFF_OP(lzcntq, "lzcntq %rbx, %rax")
DIFF_OP(popcntw, "popcntw %bx, %ax")
DIFF_OP(popcntl, "popcntl %ebx, %eax")
DIFF_OP(popcntq, "popcntq %rbx, %rax")

DIFF_OP(btl, "btl %ebx, %eax")
DIFF_OP(btq, "btq %rbx, %rax")
DIFF_OP(btsq, "btsq %rbx, %rax")
DIFF_OP(btrl, "btrl %ebx, %eax")
DIFF_OP(btcw, "btcw %bx, %ax")
DIFF_OP(btq_imm, "btq $45, %rax")
DIFF_OP(btsl_imm, "btsl $3, %eax")
DIFF_OP(btrq_imm, "btrq $63, %rax")
DIFF_OP(btcl_imm, "btcl $31, %eax")

DIFF_OP(xaddq, "xaddq %rbx, %rax")
DIFF_OP(xaddb, "xaddb %bl, %al")
DIFF_OP(cmpxchgq, "cmpxchgq %rbx, %rcx")
DIFF_OP(cmpxchgl, "cmpxchgl %ebx, %ecx")
DIFF_OP(cmpxchgb, "cmpxchgb %bl, %cl")
DIFF_OP(xchgl, "xchgl %ebx, %eax")
DIFF_OP(bswapl, "bswapl %eax")
DIFF_OP(bswapq, "bswapq %rax")

DIFF_OP(cbw, "cbtw")
DIFF_OP(cwde, "cwtl")
DIFF_OP(cdqe, "cltq")
DIFF_OP(cwd, "cwtd")
DIFF_OP(cdq, "cltd")
DIFF_OP(cqo, "cqto")
DIFF_OP(movsbq, "movsbq %bl, %rax")
DIFF_OP(movswl, "movswl %bx, %eax")
DIFF_OP(movzbl, "movzbl %bh, %eax")
DIFF_OP(movzwq, "movzwq %bx, %rax")
DIFF_OP(movslq, "movslq %ebx, %rax")
DIFF_OP(movb_hi, "movb %bl, %ah")
DIFF_OP(sahf, "sahf")
DIFF_OP(lahf, "lahf")
DIFF_OP(cmc, "cmc")
DIFF_OP(stc, "stc")
DIFF_OP(clc, "clc")
DIFF_OP(leal, "leal 7(%rbx,%rcx,4), %eax")
DIFF_OP(leaw, "leaw -1(%rbx,%rcx,8), %ax")

#define CC_OPS(cc)                              \
    DIFF_OP(set##cc, "set" #cc " %al")          \
    DIFF_OP(cmov##cc##l, "cmov" #cc "l %ebx, %eax")
CC_OPS(o)
CC_OPS(no)
CC_OPS(b)
CC_OPS(ae)
CC_OPS(e)
CC_OPS(ne)
CC_OPS(be)
CC_OPS(a)
CC_OPS(s)
CC_OPS(ns)
CC_OPS(p)
CC_OPS(np)
CC_OPS(l)
CC_OPS(ge)
CC_OPS(le)
CC_OPS(g)
// A flag-setting instruction then SETcc: the interpreter evaluates conditions straight from
// its lazy flag state after CMP/SUB and logic ops.
#define CC_PAIR_OPS(cc)                                                   \
    DIFF_OP(cmpq_set##cc, "cmpq %rbx, %rax\n  set" #cc " %cl")           \
    DIFF_OP(cmpb_set##cc, "cmpb %bl, %al\n  set" #cc " %cl")             \
    DIFF_OP(testl_set##cc, "testl %ebx, %eax\n  set" #cc " %cl")         \
    DIFF_OP(addw_set##cc, "addw %bx, %ax\n  set" #cc " %cl")             \
    DIFF_OP(decq_set##cc, "decq %rax\n  set" #cc " %cl")                 \
    DIFF_OP(sbbl_set##cc, "sbbl %ebx, %eax\n  set" #cc " %cl")             \
    DIFF_OP(shlq1_set##cc, "shlq $1, %rax\n  set" #cc " %cl")            \
    DIFF_OP(sarl1_set##cc, "sarl $1, %eax\n  set" #cc " %cl")            \
    DIFF_OP(shrw1_set##cc, "shrw $1, %ax\n  set" #cc " %cl")             \
    DIFF_OP(imulq_set##cc, "imulq %rbx, %rax\n  set" #cc " %cl")
CC_PAIR_OPS(o)
CC_PAIR_OPS(no)
CC_PAIR_OPS(b)
CC_PAIR_OPS(ae)
CC_PAIR_OPS(e)
CC_PAIR_OPS(ne)
CC_PAIR_OPS(be)
CC_PAIR_OPS(a)
CC_PAIR_OPS(s)
CC_PAIR_OPS(ns)
CC_PAIR_OPS(p)
CC_PAIR_OPS(np)
CC_PAIR_OPS(l)
CC_PAIR_OPS(ge)
CC_PAIR_OPS(le)
CC_PAIR_OPS(g)
DIFF_OP(cmovneq, "cmovneq %rbx, %rax")
DIFF_OP(cmovew, "cmovew %bx, %ax")

// BMI1 / BMI2 (only run when the host has them).
DIFF_OP(andnq, "andnq %rbx, %rcx, %rax")
DIFF_OP(andnl, "andnl %ebx, %ecx, %eax")
DIFF_OP(blsrq, "blsrq %rbx, %rax")
DIFF_OP(blsmskl, "blsmskl %ebx, %eax")
DIFF_OP(blsiq, "blsiq %rbx, %rax")
DIFF_OP(bextrq, "bextrq %rcx, %rbx, %rax")
DIFF_OP(bzhiq, "bzhiq %rcx, %rbx, %rax")
DIFF_OP(bzhil, "bzhil %ecx, %ebx, %eax")
DIFF_OP(pdepq, "pdepq %rcx, %rbx, %rax")
DIFF_OP(pextl, "pextl %ecx, %ebx, %eax")
DIFF_OP(shlxq, "shlxq %rcx, %rbx, %rax")
DIFF_OP(sarxl, "sarxl %ecx, %ebx, %eax")
DIFF_OP(shrxq, "shrxq %rcx, %rbx, %rax")
DIFF_OP(rorxq, "rorxq $17, %rbx, %rax")
DIFF_OP(rorxl, "rorxl $5, %ebx, %eax")
DIFF_OP(mulxq, "mulxq %rbx, %rcx, %rax")
DIFF_OP(mulxl, "mulxl %ebx, %ecx, %eax")

// Memory forms: RSI and RDI point into a two-page buffer that the guest sees at the same
// linear address (its pages on non-adjacent frames), so page-crossing accesses are tested too.
DIFF_OP(add_m64, "addq %rbx, (%rsi)")
DIFF_OP(adc_m32, "adcl %ebx, 3(%rsi)")
DIFF_OP(sub_m8, "subb %bl, -1(%rsi)")
DIFF_OP(or_m16, "orw %bx, (%rsi)")
DIFF_OP(and_rm64, "andq (%rsi), %rax")
DIFF_OP(xor_rm32, "xorl -2(%rsi), %eax")
DIFF_OP(cmp_m64_imm, "cmpq $-100, (%rsi)")
DIFF_OP(cmp_m32_r, "cmpl %ebx, -1(%rsi)")
DIFF_OP(sbb_m16_imm, "sbbw $0x1234, 1(%rsi)")
DIFF_OP(add_m32_imm8, "addl $7, (%rsi)")
DIFF_OP(test_m8_imm, "testb $0x81, (%rsi)")
DIFF_OP(cmp_m8_imm, "cmpb $0x40, 1(%rsi)")
DIFF_OP(mov_m64_r, "movq %rbx, -5(%rsi)")
DIFF_OP(mov_r32_m, "movl 1(%rsi), %eax")
DIFF_OP(mov_m8_imm, "movb $0x5a, (%rsi)")
DIFF_OP(mov_m32_imm, "movl $-3, -2(%rsi)")
DIFF_OP(lock_add_m64, "lock addq %rbx, (%rsi)")
DIFF_OP(lock_or_m32, "lock orl %ebx, 4(%rsi)")
DIFF_OP(lock_sbb_m8, "lock sbbb %bl, (%rsi)")
DIFF_OP(inc_m64, "incq (%rsi)")
DIFF_OP(dec_m8, "decb 1(%rsi)")
DIFF_OP(neg_m32, "negl (%rsi)")
DIFF_OP(not_m16, "notw -1(%rsi)")
DIFF_OP(lock_dec_m32, "lock decl (%rsi)")
DIFF_OP(shl_m64_cl, "shlq %cl, (%rsi)")
DIFF_OP(ror_m16_imm, "rorw $3, 2(%rsi)")
DIFF_OP(rcl_m32_cl, "rcll %cl, (%rsi)")
DIFF_OP(sar_m8_1, "sarb $1, (%rsi)")
DIFF_OP(shr_m32_imm, "shrl $9, -3(%rsi)")
DIFF_OP(shld_m64_cl, "shldq %cl, %rbx, (%rsi)")
DIFF_OP(shrd_m32_imm, "shrdl $5, %ebx, (%rsi)")
DIFF_OP(bt_m64_r, "btq %rbx, (%rsi)")
DIFF_OP(bts_m32_r, "btsl %ebx, (%rsi)")
DIFF_OP(btr_m16_r, "btrw %bx, (%rsi)")
DIFF_OP(btc_m64_r, "lock btcq %rbx, (%rsi)")
DIFF_OP(bt_m32_imm, "btl $19, (%rsi)")
DIFF_OP(bts_m64_imm, "btsq $60, 1(%rsi)")
DIFF_OP(xadd_m32, "xaddl %ebx, (%rsi)")
DIFF_OP(lock_xadd_m64, "lock xaddq %rbx, (%rsi)")
DIFF_OP(cmpxchg_m64, "cmpxchgq %rbx, (%rsi)")
DIFF_OP(lock_cmpxchg_m32, "lock cmpxchgl %ebx, (%rsi)")
DIFF_OP(cmpxchg_m8, "cmpxchgb %bl, (%rsi)")
DIFF_OP(xchg_m64, "xchgq %rbx, (%rsi)")
DIFF_OP(xchg_m16, "xchgw %bx, -1(%rsi)")
DIFF_OP(cmpxchg8b_m, "lock cmpxchg8b (%rsi)")
DIFF_OP(cmpxchg16b_m, "lock cmpxchg16b (%rdi)")
DIFF_OP(movbe_load, "movbeq (%rsi), %rax")
DIFF_OP(movbe_store, "movbel %ebx, (%rsi)")
DIFF_OP(movzb_m, "movzbl (%rsi), %eax")
DIFF_OP(movsw_m, "movswq 2(%rsi), %rax")
DIFF_OP(movslq_m, "movslq -4(%rsi), %rax")
DIFF_OP(imul_m, "imulq (%rsi), %rax")
DIFF_OP(imul3_m, "imull $-77, (%rsi), %eax")
DIFF_OP(cmovl_m, "cmovlq (%rsi), %rax")
DIFF_OP(setg_m, "setg (%rsi)")
DIFF_OP(mul_m32, "mull (%rsi)")
DIFF_OP(movsb, "movsb")
DIFF_OP(movsq, "movsq")
DIFF_OP(rep_movsb, "rep movsb")
DIFF_OP(rep_movsl, "rep movsl")
DIFF_OP(std_rep_movsw, "std\n  rep movsw")
DIFF_OP(rep_stosb, "rep stosb")
DIFF_OP(rep_stosq, "rep stosq")
DIFF_OP(std_stosl, "std\n  stosl")
DIFF_OP(lodsw, "lodsw")
DIFF_OP(std_rep_lodsb, "std\n  rep lodsb")
DIFF_OP(repe_cmpsb, "repe cmpsb")
DIFF_OP(repne_cmpsq, "repne cmpsq")
DIFF_OP(repne_scasb, "repne scasb")
DIFF_OP(repe_scasw, "repe scasw")
DIFF_OP(std_repne_scasl, "std\n  repne scasl")

namespace {

constexpr uint64_t CF = 1, PF = 4, AF = 0x10, ZF = 0x40, SF = 0x80, OF = 0x800;
constexpr uint64_t kArith = CF | PF | AF | ZF | SF | OF;

struct Op {
    const char* name;
    void (*native)(Regs*);
    const uint8_t* begin;
    const uint8_t* end;
    // Flags and RAX bits the architecture leaves undefined for these inputs.
    uint64_t (*undefined_flags)(const Regs&) = nullptr;
    uint64_t (*undefined_rax)(const Regs&) = nullptr;
    uint64_t (*undefined_rcx)(const Regs&) = nullptr;
    Domain domain = Domain::Any;
    bool needs_bmi = false;
    unsigned insns = 1;
};

#define OP(n) #n, diff_##n, diff_##n##_insn, diff_##n##_end

uint64_t none(const Regs&) { return 0; }

// After IMUL only CF and OF are defined: conditions that read ZF, SF or PF say nothing, so the
// SETcc result (in CL) is masked for them.
constexpr int cc_index(const char* cc) {
    const char* names[] = {"o", "no", "b", "ae", "e", "ne", "be", "a",
                           "s", "ns", "p", "np", "l", "ge", "le", "g"};
    for (int i = 0; i < 16; ++i) {
        const char* a = names[i];
        const char* b = cc;
        while (*a && *a == *b) {
            ++a;
            ++b;
        }
        if (*a == 0 && *b == 0)
            return i;
    }
    return -1;
}
uint64_t low_byte(const Regs&) { return 0xff; }
uint64_t (*imul_cc(int cc))(const Regs&) {
    return cc < 4 ? none : low_byte;  // O NO B AE read only CF and OF
}
uint64_t af_only(const Regs&) { return AF; }
uint64_t mul_flags(const Regs&) { return SF | ZF | AF | PF; }
uint64_t all_flags(const Regs&) { return kArith; }
uint64_t bt_flags(const Regs&) { return OF | SF | AF | PF; }
uint64_t bsf_flags(const Regs&) { return CF | OF | SF | AF | PF; }
uint64_t cnt_flags(const Regs&) { return OF | SF | AF | PF; }

template <unsigned Bits, bool Rotate, bool ThroughCarry>
uint64_t shift_flags(const Regs& r) {
    const unsigned count = static_cast<unsigned>(r.rcx) & (Bits == 64 ? 63 : 31);
    if (count == 0)
        return 0;
    uint64_t f = 0;
    if (count != 1)
        f |= OF;
    if (!Rotate)
        f |= AF;
    if (!Rotate && count >= Bits)
        f |= CF | OF;  // 8/16-bit shifts by the operand width or more
    (void)ThroughCarry;
    return f;
}
template <unsigned Bits>
uint64_t shift1_flags(const Regs&) {
    return AF;
}
uint64_t rotate_imm_flags(const Regs&) { return OF; }
uint64_t shift_imm_flags(const Regs&) { return OF | AF; }

template <unsigned Bits>
uint64_t shld_flags(const Regs& r) {
    const unsigned count = static_cast<unsigned>(r.rcx) & (Bits == 64 ? 63 : 31);
    if (count == 0)
        return 0;
    uint64_t f = AF;
    if (count != 1)
        f |= OF;
    if (count > Bits)
        f |= kArith;
    return f;
}
template <unsigned Bits>
uint64_t shld_rax(const Regs& r) {
    const unsigned count = static_cast<unsigned>(r.rcx) & 31;
    return (Bits == 16 && count > 16) ? 0xffff : 0;
}
uint64_t bsf_rax(const Regs& r) {
    // The destination is undefined for a zero source on Intel; AMD and this interpreter keep it.
    return (r.rbx & 0xffff) == 0 ? ~0ull : 0;
}

std::vector<Op> ops() {
    std::vector<Op> v;
    auto add = [&](Op o) { v.push_back(o); };
    auto bmi = [&](Op o) {
        o.needs_bmi = true;
        v.push_back(o);
    };
#define ALU_ENTRIES(op, und)                        \
    add({OP(op##b), und});                          \
    add({OP(op##w), und});                          \
    add({OP(op##l), und});                          \
    add({OP(op##q), und});                          \
    add({OP(op##q_imm8), und});                     \
    add({OP(op##l_imm32), und});                    \
    add({OP(op##b_imm), und});
    ALU_ENTRIES(add, none)
    ALU_ENTRIES(adc, none)
    ALU_ENTRIES(sub, none)
    ALU_ENTRIES(sbb, none)
    ALU_ENTRIES(cmp, none)
    ALU_ENTRIES(or, af_only)
    ALU_ENTRIES(and, af_only)
    ALU_ENTRIES(xor, af_only)
    ALU_ENTRIES(test, af_only)
#define UNARY_ENTRIES(op, und)  \
    add({OP(op##b), und});      \
    add({OP(op##w), und});      \
    add({OP(op##l), und});      \
    add({OP(op##q), und});
    UNARY_ENTRIES(inc, none)
    UNARY_ENTRIES(dec, none)
    UNARY_ENTRIES(neg, none)
    UNARY_ENTRIES(not, none)
    UNARY_ENTRIES(mul, mul_flags)
    UNARY_ENTRIES(imul, mul_flags)
#define SHIFT_ENTRIES(op, rot, rcx)                                                 \
    add({OP(op##b_cl), shift_flags<8, rot, rcx>});                                  \
    add({OP(op##w_cl), shift_flags<16, rot, rcx>});                                 \
    add({OP(op##l_cl), shift_flags<32, rot, rcx>});                                 \
    add({OP(op##q_cl), shift_flags<64, rot, rcx>});                                 \
    add({OP(op##b_1), rot ? none : af_only});                                       \
    add({OP(op##q_1), rot ? none : af_only});                                       \
    add({OP(op##l_imm), rot ? rotate_imm_flags : shift_imm_flags});
    SHIFT_ENTRIES(shl, false, false)
    SHIFT_ENTRIES(shr, false, false)
    SHIFT_ENTRIES(sar, false, false)
    SHIFT_ENTRIES(rol, true, false)
    SHIFT_ENTRIES(ror, true, false)
    SHIFT_ENTRIES(rcl, true, true)
    SHIFT_ENTRIES(rcr, true, true)
    add({OP(shldw_cl), shld_flags<16>, shld_rax<16>});
    add({OP(shldl_cl), shld_flags<32>});
    add({OP(shldq_cl), shld_flags<64>});
    add({OP(shrdw_cl), shld_flags<16>, shld_rax<16>});
    add({OP(shrdl_cl), shld_flags<32>});
    add({OP(shrdq_cl), shld_flags<64>});
    add({OP(shldq_imm), shift_imm_flags});
    add({OP(shrdl_imm), af_only});
    add({OP(divb), all_flags, nullptr, nullptr, Domain::Div8});
    add({OP(divw), all_flags, nullptr, nullptr, Domain::Div});
    add({OP(divl), all_flags, nullptr, nullptr, Domain::Div});
    add({OP(divq), all_flags, nullptr, nullptr, Domain::Div});
    add({OP(idivb), all_flags, nullptr, nullptr, Domain::Idiv8});
    add({OP(idivw), all_flags, nullptr, nullptr, Domain::Idiv});
    add({OP(idivl), all_flags, nullptr, nullptr, Domain::Idiv});
    add({OP(idivq), all_flags, nullptr, nullptr, Domain::Idiv});
    add({OP(imulw2), mul_flags});
    add({OP(imull2), mul_flags});
    add({OP(imulq2), mul_flags});
    add({OP(imull3), mul_flags});
    add({OP(imulq3), mul_flags});
    add({OP(imulw3), mul_flags});
    add({OP(bsfw), bsf_flags, bsf_rax});
    add({OP(bsfl), bsf_flags, bsf_rax});
    add({OP(bsfq), bsf_flags, bsf_rax});
    add({OP(bsrl), bsf_flags, bsf_rax});
    add({OP(bsrq), bsf_flags, bsf_rax});
    bmi({OP(tzcntw), cnt_flags});
    bmi({OP(tzcntl), cnt_flags});
    bmi({OP(tzcntq), cnt_flags});
    bmi({OP(lzcntw), cnt_flags});
    bmi({OP(lzcntl), cnt_flags});
    bmi({OP(lzcntq), cnt_flags});
    add({OP(popcntw), none});
    add({OP(popcntl), none});
    add({OP(popcntq), none});
    add({OP(btl), bt_flags});
    add({OP(btq), bt_flags});
    add({OP(btsq), bt_flags});
    add({OP(btrl), bt_flags});
    add({OP(btcw), bt_flags});
    add({OP(btq_imm), bt_flags});
    add({OP(btsl_imm), bt_flags});
    add({OP(btrq_imm), bt_flags});
    add({OP(btcl_imm), bt_flags});
    add({OP(xaddq), none});
    add({OP(xaddb), none});
    add({OP(cmpxchgq), none});
    add({OP(cmpxchgl), none});
    add({OP(cmpxchgb), none});
    add({OP(xchgl), none});
    add({OP(bswapl), none});
    add({OP(bswapq), none});
    add({OP(cbw), none});
    add({OP(cwde), none});
    add({OP(cdqe), none});
    add({OP(cwd), none});
    add({OP(cdq), none});
    add({OP(cqo), none});
    add({OP(movsbq), none});
    add({OP(movswl), none});
    add({OP(movzbl), none});
    add({OP(movzwq), none});
    add({OP(movslq), none});
    add({OP(movb_hi), none});
    add({OP(sahf), none});
    add({OP(lahf), none});
    add({OP(cmc), none});
    add({OP(stc), none});
    add({OP(clc), none});
    add({OP(leal), none});
    add({OP(leaw), none});
#define CC_ENTRIES(cc)               \
    add({OP(set##cc), none});        \
    add({OP(cmov##cc##l), none});
    CC_ENTRIES(o)
    CC_ENTRIES(no)
    CC_ENTRIES(b)
    CC_ENTRIES(ae)
    CC_ENTRIES(e)
    CC_ENTRIES(ne)
    CC_ENTRIES(be)
    CC_ENTRIES(a)
    CC_ENTRIES(s)
    CC_ENTRIES(ns)
    CC_ENTRIES(p)
    CC_ENTRIES(np)
    CC_ENTRIES(l)
    CC_ENTRIES(ge)
    CC_ENTRIES(le)
    CC_ENTRIES(g)
    auto mem = [&](Op o) {
        if (o.domain == Domain::Any)
            o.domain = Domain::Mem;
        v.push_back(o);
    };
    mem({OP(add_m64), none});
    mem({OP(adc_m32), none});
    mem({OP(sub_m8), none});
    mem({OP(or_m16), af_only});
    mem({OP(and_rm64), af_only});
    mem({OP(xor_rm32), af_only});
    mem({OP(cmp_m64_imm), none});
    mem({OP(cmp_m32_r), none});
    mem({OP(sbb_m16_imm), none});
    mem({OP(add_m32_imm8), none});
    mem({OP(test_m8_imm), af_only});
    mem({OP(cmp_m8_imm), none});
    mem({OP(mov_m64_r), none});
    mem({OP(mov_r32_m), none});
    mem({OP(mov_m8_imm), none});
    mem({OP(mov_m32_imm), none});
    mem({OP(lock_add_m64), none});
    mem({OP(lock_or_m32), af_only});
    mem({OP(lock_sbb_m8), none});
    mem({OP(inc_m64), none});
    mem({OP(dec_m8), none});
    mem({OP(neg_m32), none});
    mem({OP(not_m16), none});
    mem({OP(lock_dec_m32), none});
    mem({OP(shl_m64_cl), shift_flags<64, false, false>});
    mem({OP(ror_m16_imm), rotate_imm_flags});
    mem({OP(rcl_m32_cl), shift_flags<32, true, true>});
    mem({OP(sar_m8_1), af_only});
    mem({OP(shr_m32_imm), shift_imm_flags});
    mem({OP(shld_m64_cl), shld_flags<64>});
    mem({OP(shrd_m32_imm), shift_imm_flags});
    mem({OP(bt_m64_r), bt_flags, nullptr, nullptr, Domain::BitMem});
    mem({OP(bts_m32_r), bt_flags, nullptr, nullptr, Domain::BitMem});
    mem({OP(btr_m16_r), bt_flags, nullptr, nullptr, Domain::BitMem});
    mem({OP(btc_m64_r), bt_flags, nullptr, nullptr, Domain::BitMem});
    mem({OP(bt_m32_imm), bt_flags});
    mem({OP(bts_m64_imm), bt_flags});
    mem({OP(xadd_m32), none});
    mem({OP(lock_xadd_m64), none});
    mem({OP(cmpxchg_m64), none});
    mem({OP(lock_cmpxchg_m32), none});
    mem({OP(cmpxchg_m8), none});
    mem({OP(xchg_m64), none});
    mem({OP(xchg_m16), none});
    mem({OP(cmpxchg8b_m), none});
    mem({OP(cmpxchg16b_m), none});
    mem({OP(movbe_load), none});
    mem({OP(movbe_store), none});
    mem({OP(movzb_m), none});
    mem({OP(movsw_m), none});
    mem({OP(movslq_m), none});
    mem({OP(imul_m), mul_flags});
    mem({OP(imul3_m), mul_flags});
    mem({OP(cmovl_m), none});
    mem({OP(setg_m), none});
    mem({OP(mul_m32), mul_flags});
    auto str = [&](Op o) {
        o.domain = Domain::Str;
        v.push_back(o);
    };
    str({OP(movsb), none});
    str({OP(movsq), none});
    str({OP(rep_movsb), none});
    str({OP(rep_movsl), none});
    str({OP(std_rep_movsw), none, nullptr, nullptr, Domain::Str, false, 2});
    str({OP(rep_stosb), none});
    str({OP(rep_stosq), none});
    str({OP(std_stosl), none, nullptr, nullptr, Domain::Str, false, 2});
    str({OP(lodsw), none});
    str({OP(std_rep_lodsb), none, nullptr, nullptr, Domain::Str, false, 2});
    str({OP(repe_cmpsb), none});
    str({OP(repne_cmpsq), none});
    str({OP(repne_scasb), none});
    str({OP(repe_scasw), none});
    str({OP(std_repne_scasl), none, nullptr, nullptr, Domain::Str, false, 2});
    auto pair = [&](Op o) {
        o.insns = 2;
        v.push_back(o);
    };
#define CC_PAIR_ENTRIES(cc)                  \
    pair({OP(cmpq_set##cc), none});          \
    pair({OP(cmpb_set##cc), none});          \
    pair({OP(testl_set##cc), af_only});      \
    pair({OP(addw_set##cc), none});          \
    pair({OP(decq_set##cc), none});          \
    pair({OP(sbbl_set##cc), none});          \
    pair({OP(shlq1_set##cc), af_only});      \
    pair({OP(sarl1_set##cc), af_only});      \
    pair({OP(shrw1_set##cc), af_only});      \
    pair({OP(imulq_set##cc), mul_flags, nullptr, imul_cc(cc_index(#cc))});
    CC_PAIR_ENTRIES(o)
    CC_PAIR_ENTRIES(no)
    CC_PAIR_ENTRIES(b)
    CC_PAIR_ENTRIES(ae)
    CC_PAIR_ENTRIES(e)
    CC_PAIR_ENTRIES(ne)
    CC_PAIR_ENTRIES(be)
    CC_PAIR_ENTRIES(a)
    CC_PAIR_ENTRIES(s)
    CC_PAIR_ENTRIES(ns)
    CC_PAIR_ENTRIES(p)
    CC_PAIR_ENTRIES(np)
    CC_PAIR_ENTRIES(l)
    CC_PAIR_ENTRIES(ge)
    CC_PAIR_ENTRIES(le)
    CC_PAIR_ENTRIES(g)
    add({OP(cmovneq), none});
    add({OP(cmovew), none});
    bmi({OP(andnq), [](const Regs&) { return AF | PF; }});
    bmi({OP(andnl), [](const Regs&) { return AF | PF; }});
    bmi({OP(blsrq), [](const Regs&) { return AF | PF; }});
    bmi({OP(blsmskl), [](const Regs&) { return AF | PF; }});
    bmi({OP(blsiq), [](const Regs&) { return AF | PF; }});
    bmi({OP(bextrq), [](const Regs&) { return AF | PF | SF; }});
    bmi({OP(bzhiq), [](const Regs&) { return AF | PF; }});
    bmi({OP(bzhil), [](const Regs&) { return AF | PF; }});
    bmi({OP(pdepq), none});
    bmi({OP(pextl), none});
    bmi({OP(shlxq), none});
    bmi({OP(sarxl), none});
    bmi({OP(shrxq), none});
    bmi({OP(rorxq), none});
    bmi({OP(rorxl), none});
    bmi({OP(mulxq), none});
    bmi({OP(mulxl), none});
    return v;
}

bool host_has_bmi() {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return false;
    unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
    __get_cpuid(0x80000001, &a1, &b1, &c1, &d1);
    return (b & (1u << 3)) && (b & (1u << 8)) && (c1 & (1u << 5));  // BMI1, BMI2, LZCNT
}

// Operand values that find edge cases: zero, one, all ones, signs and carries at each width.
uint64_t pick(std::mt19937_64& rng) {
    static const uint64_t special[] = {0,
                                       1,
                                       2,
                                       0x7f,
                                       0x80,
                                       0xff,
                                       0x7fff,
                                       0x8000,
                                       0xffff,
                                       0x7fffffff,
                                       0x80000000,
                                       0xffffffff,
                                       0x7fffffffffffffffull,
                                       0x8000000000000000ull,
                                       ~0ull,
                                       0x0f0f0f0f0f0f0f0full};
    switch (rng() % 4) {
    case 0: return special[rng() % std::size(special)];
    case 1: return rng() & 0xff;
    case 2: return special[rng() % std::size(special)] + (rng() % 5) - 2;
    default: return rng();
    }
}

// Makes a division's operands ones the host can divide without #DE.
void fix_division(Domain domain, Regs& r, std::mt19937_64& rng) {
    switch (domain) {
    case Domain::Div8:
        r.rbx |= 1 + (rng() % 255);
        r.rax = (r.rax & ~0xffffull) | ((r.rax & 0xffff) % ((r.rbx & 0xff) << 8));
        break;
    case Domain::Div: {
        if (r.rbx == 0 || (r.rbx & 0xffff) == 0 || (r.rbx & 0xffffffff) == 0)
            r.rbx |= 1 + (rng() % 1000);
        // RDX below the divisor (at every width) keeps the quotient in range.
        r.rdx = r.rdx % (r.rbx & 0xffff);
        break;
    }
    case Domain::Idiv8: {
        // dividend = q * d + rem with |q| <= 120 and |rem| < |d|: the quotient fits in 8 bits.
        int d = static_cast<int8_t>(r.rbx);
        if (d == 0 || d == -1)
            d = 3;
        r.rbx = (r.rbx & ~0xffull) | static_cast<uint8_t>(d);
        const int q = static_cast<int>(rng() % 241) - 120;
        const int ad = std::abs(d);
        const int rem = ad > 1 ? static_cast<int>(rng() % static_cast<unsigned>(2 * ad - 1)) - (ad - 1) : 0;
        const int dividend = q * d + rem;
        r.rax = (r.rax & ~0xffffull) | static_cast<uint16_t>(dividend);
        break;
    }
    case Domain::Idiv: {
        // Sign-extend a random 16-bit value into RDX:RAX at every width: always in range for a
        // divisor of magnitude >= 1 except -1 with the minimum, avoided below.
        if ((r.rbx & 0xffff) == 0 || (r.rbx & 0xffff) == 0xffff)
            r.rbx = (r.rbx & ~0xffffull) | 7;
        const int16_t small = static_cast<int16_t>(rng() % 20000) - 10000;
        r.rax = static_cast<uint64_t>(static_cast<int64_t>(small));
        r.rdx = small < 0 ? ~0ull : 0;
        break;
    }
    case Domain::Any:
    case Domain::Mem:
    case Domain::BitMem:
    case Domain::Str: break;
    }
}

}  // namespace

TEST_CASE("integer instructions match the host CPU, flags included", "[soft_cpu][diff]") {
    TestMachine m(std::string(SOFT_CPU_SNIPPETS) + "/stubs.bin");
    // SOFT_CPU_SEED picks another operand sequence (the default one is fixed so that a failure
    // reproduces).
    const char* seed_env = std::getenv("SOFT_CPU_SEED");
    const uint64_t seed = seed_env ? std::strtoull(seed_env, nullptr, 0) : 20240607;
    INFO("seed " << seed);
    std::mt19937_64 rng(seed);
    const bool bmi = host_has_bmi();

    // The memory operand buffer: two host pages, seen by the guest at the same linear address
    // on frames 0x305000 and 0x300000.
    void* mapped = mmap(nullptr, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(mapped != MAP_FAILED);
    auto* buf = static_cast<uint8_t*>(mapped);
    const auto lin = reinterpret_cast<uint64_t>(buf);
    REQUIRE(lin >= (4ull << 30));  // clear of the guest's identity map
    constexpr uint64_t kFrame0 = 0x305000, kFrame1 = 0x300000;
    m.map_page(lin, kFrame0, 0x7);
    m.map_page(lin + 4096, kFrame1, 0x7);
    uint8_t* guest0 = m.bus.ram() + kFrame0;
    uint8_t* guest1 = m.bus.ram() + kFrame1;
    // Places for RSI/RDI: around the page boundary, and inside either page.
    const uint64_t spots[] = {4096, 4095, 4094, 4093, 4092, 4089, 4097, 4099, 4101, 600, 7000, 2048};
    const int cases = 3000;
    for (const Op& op : ops()) {
        if (op.needs_bmi && !bmi)
            continue;
        const size_t len = static_cast<size_t>(op.end - op.begin);
        std::memcpy(m.bus.ram() + TestMachine::kCode, op.begin, len);
        m.cpu.flush_tlb();
        int mismatches = 0;
        for (int i = 0; i < cases && mismatches < 5; ++i) {
            Regs in{pick(rng), pick(rng), pick(rng), pick(rng), 0, 0, 0};
            in.rflags = 0x202 | (rng() & kArith);
            if (i % 7 == 0)
                in.rcx = rng() % 70;  // shift counts around the operand widths
            fix_division(op.domain, in, rng);
            const bool memory_op =
                op.domain == Domain::Mem || op.domain == Domain::BitMem || op.domain == Domain::Str;
            if (memory_op) {
                in.rsi = lin + spots[rng() % std::size(spots)];
                in.rdi = lin + spots[rng() % std::size(spots)];
                const bool refill = i % 16 == 0;  // else keep what the last case left
                if (op.domain == Domain::Str) {
                    // Small counts, both pointers with room either way; few distinct byte values
                    // so that REPE/REPNE stop at varied places.
                    in.rcx = rng() % 24;
                    in.rsi = lin + 512 + rng() % (8192 - 1024);
                    in.rdi = lin + 512 + rng() % (8192 - 1024);
                    for (unsigned k = 0; refill && k < 8192; k += 8) {
                        const uint64_t r = rng();
                        for (unsigned j = 0; j < 8; ++j)
                            buf[k + j] = static_cast<uint8_t>((r >> (8 * j)) % 5 == 0);
                    }
                } else {
                    for (unsigned k = 0; refill && k < 8192; k += 8) {
                        const uint64_t r = pick(rng);
                        std::memcpy(buf + k, &r, 8);
                    }
                }
                if (op.domain == Domain::BitMem)
                    in.rbx = static_cast<uint64_t>(static_cast<int64_t>(rng() % 1024) - 512);
                in.rdi &= ~15ull;  // CMPXCHG16B wants 16-byte alignment
                std::memcpy(guest0, buf, 4096);
                std::memcpy(guest1, buf + 4096, 4096);
            }

            Regs host = in;
            op.native(&host);

            m.state.regs = kvm_regs{};
            m.state.regs.rax = in.rax;
            m.state.regs.rbx = in.rbx;
            m.state.regs.rcx = in.rcx;
            m.state.regs.rdx = in.rdx;
            m.state.regs.rflags = in.rflags;
            m.state.regs.rsi = in.rsi;
            m.state.regs.rdi = in.rdi;
            m.state.regs.rip = TestMachine::kCode;
            m.state.regs.rsp = TestMachine::kStackTop;
            const Stop s = m.run(op.insns);
            Regs emu{m.state.regs.rax, m.state.regs.rbx, m.state.regs.rcx, m.state.regs.rdx,
                     m.state.regs.rflags, m.state.regs.rsi, m.state.regs.rdi};
            const bool same_memory = !memory_op || (std::memcmp(guest0, buf, 4096) == 0 &&
                                                    std::memcmp(guest1, buf + 4096, 4096) == 0);

            const uint64_t flag_mask = ~(op.undefined_flags ? op.undefined_flags(in) : 0) & 0xfff;
            const uint64_t rax_mask = ~(op.undefined_rax ? op.undefined_rax(in) : 0);
            const uint64_t rcx_mask = ~(op.undefined_rcx ? op.undefined_rcx(in) : 0);
            const bool same = s.reason == StopReason::Budget && s.executed == op.insns &&
                              m.state.regs.rip == TestMachine::kCode + len &&
                              ((host.rax ^ emu.rax) & rax_mask) == 0 && host.rbx == emu.rbx &&
                              ((host.rcx ^ emu.rcx) & rcx_mask) == 0 && host.rdx == emu.rdx &&
                              ((host.rflags ^ emu.rflags) & flag_mask) == 0 &&
                              host.rsi == emu.rsi && host.rdi == emu.rdi && same_memory;
            if (!same) {
                ++mismatches;
                UNSCOPED_INFO(fmt::format(
                    "{}: in rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} fl={:#x}\n"
                    "   host rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} fl={:#x}\n"
                    "   emu  rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} fl={:#x} stop={} {}\n"
                    "   rsi {:#x}/{:#x}/{:#x} rdi {:#x}/{:#x}/{:#x} (in/host/emu) memory {}",
                    op.name, in.rax, in.rbx, in.rcx, in.rdx, in.rflags, host.rax, host.rbx,
                    host.rcx, host.rdx, host.rflags & 0xfff, emu.rax, emu.rbx, emu.rcx, emu.rdx,
                    emu.rflags & 0xfff, static_cast<int>(s.reason), s.detail, in.rsi - lin,
                    host.rsi - lin, emu.rsi - lin, in.rdi - lin, host.rdi - lin, emu.rdi - lin,
                    same_memory ? "same" : "differs"));
            }
        }
        CHECK(mismatches == 0);
    }
    munmap(mapped, 2 * 4096);
}
