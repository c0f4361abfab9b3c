// SPDX-License-Identifier: GPL-2.0-or-later
// soft_cpu_bench: instructions per second of the x86-64 interpreter (kvm/soft/cpu*) on three
// loops, each also run natively on the host from the very same bytes, with the ratio.
//
//   alu        a tight register-only ALU loop (add, xor, lea, and, sub, dec, jnz)
//   mem-hot    loads and stores striding over 1 MiB (256 pages: the TLB holds them)
//   mem-cold   the same over 32 MiB (8192 pages: every access walks the page tables)
//   call       call/ret with push/pop in the callee
//
// Times are the thread's CPU time (CLOCK_THREAD_CPUTIME_ID), so that other load on a shared
// machine does not count as interpreter time.
//
// Usage: soft_cpu_bench [seconds-per-case (default 1)] [slice budget (default 100000)] [loop]
// A time of 0 runs each loop once for a fixed 200000 iterations (for instruction-counting
// profilers such as callgrind).
#include <fmt/format.h>

#include <time.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tests/unit/soft_cpu/fake_bus.h"

using namespace colod::kvm::soft;
using namespace colod::kvm::soft::test;

// Each loop is a function: RDI = iterations, RSI = buffer, RDX = buffer mask. Position
// independent, so its bytes run unchanged in the guest.
#define BENCH_LOOP(name, body)                                                          \
    extern "C" void bench_##name(uint64_t, void*, uint64_t);                            \
    extern "C" const uint8_t bench_##name##_end[];                                      \
    asm(".text\n.globl bench_" #name "\n.type bench_" #name ", @function\nbench_" #name \
        ":\n" body "\n.globl bench_" #name "_end\nbench_" #name "_end:\n");

BENCH_LOOP(alu,
           "  push %rbx\n  xor %eax, %eax\n  mov $1, %ebx\n"
           "1:\n  add %rbx, %rax\n  xor %rax, %rbx\n  lea 3(%rax,%rbx), %rcx\n"
           "  and $0xfff, %rcx\n  sub %rcx, %rax\n  dec %rdi\n  jnz 1b\n"
           "  pop %rbx\n  ret\n")
BENCH_LOOP(mem,
           "  xor %ecx, %ecx\n  xor %eax, %eax\n"
           "1:\n  mov (%rsi,%rcx), %r8\n  add %r8, %rax\n  mov %rax, 8(%rsi,%rcx)\n"
           "  add $4160, %rcx\n  and %rdx, %rcx\n  dec %rdi\n  jnz 1b\n  ret\n")
BENCH_LOOP(call,
           "1:\n  call 2f\n  dec %rdi\n  jnz 1b\n  ret\n"
           "2:\n  push %rbx\n  mov %rdi, %rbx\n  add %rbx, %rax\n  pop %rbx\n  ret\n")

namespace {

// A bus like the software VM's: flat RAM and a dirty bitmap set atomically on Write lookups.
// (FakeBus records every dirty page in a std::set under a mutex, which is right for tests and
// too slow to measure the interpreter with.)
class BenchBus : public CpuBus {
public:
    BenchBus(uint8_t* ram, uint64_t size) : m_ram(ram), m_size(size), m_dirty(size / 4096 / 64 + 1) {}
    uint8_t* ram_page(uint64_t gpa, Access access) override {
        if (gpa >= m_size)
            return nullptr;
        if (access == Access::Write)
            __atomic_fetch_or(&m_dirty[gpa >> 18], 1ull << ((gpa >> 12) & 63), __ATOMIC_RELAXED);
        return m_ram + (gpa & ~0xfffull);
    }
    BusResult mmio_read(uint64_t, void*, uint32_t) override { return BusResult::Exit; }
    BusResult mmio_write(uint64_t, const void*, uint32_t) override { return BusResult::Exit; }
    BusResult pio_in(uint16_t, void*, uint32_t) override { return BusResult::Exit; }
    BusResult pio_out(uint16_t, const void*, uint32_t) override { return BusResult::Exit; }
    bool rdmsr(uint32_t, uint64_t&) override { return false; }
    bool wrmsr(uint32_t, uint64_t) override { return false; }
    void cpuid(uint32_t, uint32_t, uint32_t out[4]) override { out[0] = out[1] = out[2] = out[3] = 0; }
    int pending_interrupt() override { return -1; }
    void acknowledge_interrupt(int) override {}
    uint64_t read_cr8() override { return 0; }
    void write_cr8(uint64_t) override {}
    uint64_t tsc() override { return 0; }

private:
    uint8_t* m_ram;
    uint64_t m_size;
    std::vector<uint64_t> m_dirty;
};

struct Case {
    const char* name;
    void (*native)(uint64_t, void*, uint64_t);
    const uint8_t* end;
    uint64_t buffer_bytes;
    unsigned insns_per_iteration;
};

constexpr uint64_t kBuffer = 0x1000000;  // guest address of the memory loops' buffer

double cpu_now() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}
double seconds_since(double t0) { return cpu_now() - t0; }

}  // namespace

int main(int argc, char** argv) {
    const double target = argc > 1 ? std::atof(argv[1]) : 1.0;
    const uint64_t slice = argc > 2 ? std::strtoull(argv[2], nullptr, 0) : 100000;
    const Case cases[] = {
        {"alu", bench_alu, bench_alu_end, 0, 7},
        {"mem-hot", bench_mem, bench_mem_end, 1ull << 20, 7},
        {"mem-cold", bench_mem, bench_mem_end, 32ull << 20, 7},
        {"call", bench_call, bench_call_end, 0, 8},
    };
    fmt::print("{:<9} {:>14} {:>14} {:>8}   (run() slices of {} instructions)\n", "loop",
               "interp Minsn/s", "native Minsn/s", "ratio", slice);
    std::vector<uint8_t> host_buffer(32ull << 20);
    const std::string only = argc > 3 ? argv[3] : "";
    for (const Case& c : cases) {
        if (!only.empty() && only != c.name)
            continue;
        // Interpreter.
        TestMachine m("", 64ull << 20);
        const auto* begin = reinterpret_cast<const uint8_t*>(c.native);
        m.load(std::vector<uint8_t>(begin, c.end));
        m.b(TestMachine::kCode + 0xff0) = 0xf4;  // HLT: where the loop returns to
        BenchBus bus(m.bus.ram(), m.bus.ram_size());
        uint64_t iterations = target == 0 ? 200'000 : 1'000'000;
        double interp_rate = 0;
        for (;;) {
            m.state.regs.rip = TestMachine::kCode;
            m.state.regs.rsp = TestMachine::kStackTop - 8;
            m.q(TestMachine::kStackTop - 8) = TestMachine::kCode + 0xff0;
            m.state.regs.rdi = iterations;
            m.state.regs.rsi = kBuffer;
            m.state.regs.rdx = c.buffer_bytes ? c.buffer_bytes - 1 : 0;
            uint64_t executed = 0;
            Stop s;
            const double t0 = cpu_now();
            do {
                s = m.cpu.run(m.state, bus, slice);
                executed += s.executed;
            } while (s.reason == StopReason::Budget);
            const double t = seconds_since(t0);
            if (s.reason != StopReason::Halt) {
                fmt::print(stderr, "{}: stopped with reason {}: {}\n", c.name,
                           static_cast<int>(s.reason), s.detail);
                return 1;
            }
            if (target == 0 || t >= target * 0.5 || iterations > (1ull << 40)) {
                interp_rate = static_cast<double>(executed) / t;
                break;
            }
            iterations *= 4;
        }
        // Native, the same bytes.
        iterations = 1'000'000;
        double native_rate = 0;
        for (;;) {
            const double t0 = cpu_now();
            c.native(iterations, host_buffer.data(), c.buffer_bytes ? c.buffer_bytes - 1 : 0);
            const double t = seconds_since(t0);
            if (target == 0 || t >= target * 0.5 || iterations > (1ull << 40)) {
                native_rate = static_cast<double>(iterations * c.insns_per_iteration) / t;
                break;
            }
            iterations *= 4;
        }
        fmt::print("{:<9} {:>14.1f} {:>14.1f} {:>7.1f}x\n", c.name, interp_rate / 1e6,
                   native_rate / 1e6, native_rate / interp_rate);
    }
    return 0;
}
