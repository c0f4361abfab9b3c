// SPDX-License-Identifier: GPL-2.0-or-later
// Behaviour of the interpreter as a machine sees it: exceptions through the IDT, paging and
// #PF error codes, interrupts and their shadows, privilege changes, exits to userspace, atomic
// operations between vCPU threads, system instructions. Guest code is assembled at build time
// from snippets/*.S.
#include <catch2/catch.hpp>

#include <thread>

#include "tests/unit/soft_cpu/fake_bus.h"

using namespace colod::kvm::soft;
using namespace colod::kvm::soft::test;

namespace {

std::string snippet(const char* name) {
    return std::string(SOFT_CPU_SNIPPETS) + "/" + name + ".bin";
}

struct Machine : TestMachine {
    explicit Machine(const char* code) : TestMachine(snippet("stubs")) { load_file(snippet(code)); }
    void at(uint64_t offset) { state.regs.rip = kCode + offset; }
};

constexpr uint64_t kStubRip = TestMachine::kStubs + 0x1000;  // where a recorded event halts

}  // namespace

TEST_CASE("a non-64-bit mode is refused with Internal", "[soft_cpu]") {
    Machine m("loop");
    SECTION("paging off") {
        m.state.sregs.cr0 &= ~(1ull << 31);
    }
    SECTION("compatibility mode code segment") {
        m.state.sregs.cs.l = 0;
        m.state.sregs.cs.db = 1;
    }
    const Stop s = m.run(10);
    CHECK(s.reason == StopReason::Internal);
    CHECK(s.detail.find("mode not supported") != std::string::npos);
    CHECK(s.executed == 0);
}

TEST_CASE("the budget bounds the instructions run", "[soft_cpu]") {
    Machine m("loop");
    const Stop s = m.run(1001);
    CHECK(s.reason == StopReason::Budget);
    CHECK(s.executed == 1001);
    CHECK(m.q(TestMachine::kData) == 501);  // inc, jmp, inc, ... : 501 increments
    CHECK(m.state.regs.rip == TestMachine::kCode + 8);  // at the JMP
}

TEST_CASE("divide error is delivered through the IDT", "[soft_cpu]") {
    Machine m("divide_error");
    const Stop s = m.run();
    REQUIRE(s.reason == StopReason::Halt);
    auto& r = m.record();
    CHECK(r.vector == 0);
    CHECK(r.count == 1);
    CHECK(r.frame[0] == TestMachine::kCode + 0x10);  // RIP of the DIV: a fault
    CHECK(r.frame[1] == TestMachine::kCs0);
    CHECK(r.frame[3] == TestMachine::kStackTop);  // RSP before the event
    CHECK(m.state.regs.rip > kStubRip);  // halted in the recording stub
    CHECK((m.state.regs.rflags & 0x200) == 0);  // interrupt gate clears IF
}

TEST_CASE("undefined opcodes, SSE, x87 and a misplaced LOCK raise #UD", "[soft_cpu]") {
    const uint64_t offset = GENERATE(0x00, 0x10, 0x20, 0x30);
    Machine m("undefined");
    m.at(offset);
    const Stop s = m.run();
    REQUIRE(s.reason == StopReason::Halt);
    CHECK(m.record().vector == 6);
    CHECK(m.record().frame[0] == TestMachine::kCode + offset);
}

TEST_CASE("triple fault stops with Shutdown", "[soft_cpu]") {
    Machine m("undefined");
    m.state.sregs.idt.limit = 0;  // #UD → #GP (no gate) → #DF → #GP → shutdown
    const Stop s = m.run();
    CHECK(s.reason == StopReason::Shutdown);
}

TEST_CASE("a contributory fault while delivering #PF becomes #DF", "[soft_cpu]") {
    Machine m("paging");
    m.q(TestMachine::kIdt + 14 * 16) &= ~(1ull << 47);  // #PF gate not present → #NP
    m.map_4k(TestMachine::kData, TestMachine::kData, 0);
    m.state.regs.rdi = TestMachine::kData;
    const Stop s = m.run();
    REQUIRE(s.reason == StopReason::Halt);
    CHECK(m.record().vector == 8);
    CHECK(m.record().frame[0] == 0);  // #DF's error code
    CHECK(m.state.sregs.cr2 == TestMachine::kData);
}

TEST_CASE("page faults carry the architectural error code and CR2", "[soft_cpu]") {
    Machine m("paging");
    const uint64_t page = TestMachine::kData + 0x3000;
    m.state.regs.rdi = page + 0x10;
    uint64_t expect_error = 0;
    SECTION("read of a not-present page") {
        m.map_4k(page, page, 0);
        expect_error = 0;
    }
    SECTION("write to a read-only page with CR0.WP") {
        m.map_4k(page, page, 0x1);
        m.at(0x10);
        expect_error = 0x3;
    }
    SECTION("user read of a supervisor page") {
        m.map_4k(page, page, 0x3);
        m.enter_user(TestMachine::kCode);
        expect_error = 0x5;
    }
    SECTION("user write of a read-only user page") {
        m.map_4k(page, page, 0x5);
        m.enter_user(TestMachine::kCode + 0x10);
        expect_error = 0x7;
    }
    SECTION("fetch from a no-execute page") {
        m.map_4k(page, page, 0x3 | (1ull << 63));
        m.at(0x20);
        expect_error = 0x11;
    }
    SECTION("reserved bit (XD without EFER.NXE)") {
        m.map_4k(page, page, 0x3 | (1ull << 63));
        m.state.sregs.efer &= ~(1ull << 11);
        expect_error = 0x9;
    }
    SECTION("not-present fetch") {
        m.map_4k(page, page, 0);
        m.at(0x20);
        expect_error = 0x10;
    }
    const Stop s = m.run();
    REQUIRE(s.reason == StopReason::Halt);
    CHECK(m.record().vector == 14);
    CHECK(m.record().frame[0] == expect_error);
    CHECK(m.record().cr2 == m.state.regs.rdi);
}

TEST_CASE("supervisor writes to read-only pages pass without CR0.WP", "[soft_cpu]") {
    Machine m("paging");
    const uint64_t page = TestMachine::kData + 0x3000;
    m.map_4k(page, page, 0x1);
    m.state.sregs.cr0 &= ~(1ull << 16);
    m.state.regs.rdi = page;
    m.at(0x10);
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.record().count == 0);
    CHECK(m.d(page) == 0x11223344);
}

TEST_CASE("accessed and dirty bits are set in the page tables", "[soft_cpu]") {
    Machine m("paging");
    const uint64_t page = TestMachine::kData + 0x5000;
    m.map_4k(page, page, 0x3);
    m.state.regs.rdi = page;
    m.at(0x50);
    REQUIRE(m.run().reason == StopReason::Halt);  // after the read
    CHECK((m.pte(page) & 0x20) != 0);
    CHECK((m.pte(page) & 0x40) == 0);
    const uint64_t pde = m.q(TestMachine::kPd + 8 * (page >> 21));
    CHECK((pde & 0x20) != 0);
    REQUIRE(m.run().reason == StopReason::Halt);  // after the write
    CHECK((m.pte(page) & 0x40) != 0);
    CHECK(m.d(page) == 5);
}

TEST_CASE("a page-crossing write faults on the second page before writing the first", "[soft_cpu]") {
    Machine m("paging");
    const uint64_t page = TestMachine::kData + 0x6000;
    m.map_4k(page, page, 0x3);
    m.map_4k(page + 0x1000, page + 0x1000, 0x1);  // read-only
    m.state.regs.rdi = page + 0xffc;
    m.at(0x30);
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.record().vector == 14);
    CHECK(m.record().frame[0] == 0x3);
    CHECK(m.record().cr2 == page + 0x1000);
    CHECK(m.d(page + 0xffc) == 0);
}

TEST_CASE("page-crossing accesses join two different frames", "[soft_cpu]") {
    Machine m("paging");
    const uint64_t lin = TestMachine::kData + 0x8000;
    m.map_4k(lin, TestMachine::kData + 0x20000, 0x3);
    m.map_4k(lin + 0x1000, TestMachine::kData + 0x10000, 0x3);
    m.state.regs.rdi = lin + 0xffd;
    m.at(0x30);
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.b(TestMachine::kData + 0x20ffd) == 0x11);
    CHECK(m.b(TestMachine::kData + 0x20fff) == 0x33);
    CHECK(m.b(TestMachine::kData + 0x10000) == 0x44);
    CHECK(m.b(TestMachine::kData + 0x10004) == 0x88);
    m.at(0x40);
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.state.regs.rax == 0x8877665544332211ull);
}

TEST_CASE("an instruction crossing into a missing page faults on that page", "[soft_cpu]") {
    Machine m("paging");
    const uint64_t page = TestMachine::kData + 0xa000;
    m.map_4k(page, page, 0x3);
    m.map_4k(page + 0x1000, page + 0x1000, 0);
    // movabs $imm64, %rax (10 bytes) starting 4 bytes before the missing page.
    const uint8_t movabs[] = {0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8};
    std::memcpy(m.bus.ram() + page + 0xffc, movabs, sizeof movabs);
    m.state.regs.rip = page + 0xffc;
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.record().vector == 14);
    CHECK(m.record().frame[0] == 0x10);  // instruction fetch, not present
    CHECK(m.record().frame[1] == page + 0xffc);
    CHECK(m.record().cr2 == page + 0x1000);

    SECTION("one that ends right at the page end runs") {
        const uint8_t code[] = {0x48, 0x31, 0xc0, 0xf4};  // xor %rax,%rax; hlt
        std::memcpy(m.bus.ram() + page + 0xffc, code, sizeof code);
        m.state.regs.rip = page + 0xffc;
        m.state.regs.rax = 7;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.state.regs.rax == 0);
        CHECK(m.state.regs.rip == page + 0x1000);
    }
}

TEST_CASE("an instruction longer than 15 bytes is #GP(0)", "[soft_cpu]") {
    Machine m("loop");
    // 12 operand-size prefixes and a 5-byte ADD (48 81 c0 imm32 needs 7): 19 bytes.
    const uint64_t at = GENERATE(0x10000ull, 0x10fe8ull, 0x10ffcull);  // in a page, near its end
    std::vector<uint8_t> code(12, 0x66);
    for (uint8_t b : {0x48, 0x81, 0xc0, 1, 0, 0, 0})
        code.push_back(b);
    m.load(code, TestMachine::kCode + at);
    m.state.regs.rip = TestMachine::kCode + at;
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.record().vector == 13);
    CHECK(m.record().frame[0] == 0);
    CHECK(m.record().frame[1] == TestMachine::kCode + at);
}

TEST_CASE("INVLPG and CR3 writes drop stale translations", "[soft_cpu]") {
    Machine m("paging");
    const uint64_t lin = TestMachine::kData + 0xc000;
    m.d(TestMachine::kData + 0x30000) = 111;
    m.d(TestMachine::kData + 0x31000) = 222;
    m.map_4k(lin, TestMachine::kData + 0x30000, 0x3);
    m.state.regs.rdi = lin;
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.state.regs.rax == 111);
    // Remap without telling the CPU; INVLPG makes the new frame visible.
    m.pte(lin) = (TestMachine::kData + 0x31000) | 0x3;
    m.at(0x60);
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.state.regs.rax == 222);
}

TEST_CASE("a CR3 reload drops cached page directories and 2 MiB translations", "[soft_cpu]") {
    Machine m("paging");
    const uint64_t lin = 0x1200000;  // a 2 MiB page of its own
    m.d(lin) = 333;
    m.d(lin + 0x200000) = 444;
    m.state.regs.rdi = lin;
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.state.regs.rax == 333);
    // Point the PDE at the next 2 MiB frame behind the CPU's back, then reload CR3.
    m.q(TestMachine::kPd + 8 * (lin >> 21)) = (lin + 0x200000) | 0x87;
    m.at(0x70);
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.state.regs.rax == 444);
}

TEST_CASE("pages written in a run are asked for with Write in every run", "[soft_cpu]") {
    Machine m("loop");
    m.run(100);
    CHECK(m.bus.take_dirty().count(TestMachine::kData) == 1);
    m.run(100);
    CHECK(m.bus.take_dirty().count(TestMachine::kData) == 1);
}

TEST_CASE("external interrupts are delivered when IF is set", "[soft_cpu]") {
    Machine m("loop");
    m.state.regs.rflags = 0x202;
    REQUIRE(m.run(50).reason == StopReason::Budget);
    m.bus.raise_interrupt(0x30);
    const Stop s = m.run(1000);
    REQUIRE(s.reason == StopReason::Halt);
    CHECK(m.record().vector == 0x30);
    CHECK((m.record().frame[2] & 0x200) != 0);  // IF in the pushed RFLAGS
    CHECK(m.bus.acknowledged() == std::vector<int>{0x30});
}

TEST_CASE("no interrupt is taken, nor asked for, while IF is clear", "[soft_cpu]") {
    Machine m("loop");
    m.bus.raise_interrupt(0x30);
    REQUIRE(m.run(1000).reason == StopReason::Budget);
    CHECK(m.record().count == 0);
    CHECK(m.bus.acknowledged().empty());
    CHECK(m.bus.interrupt_polls() == 0);
}

TEST_CASE("STI and MOV SS hold off interrupts for one instruction", "[soft_cpu]") {
    Machine m("loop");
    uint64_t store_addr = 0, halt_rip = 0, before = 0;
    SECTION("STI") {
        m.at(0x10);
        store_addr = TestMachine::kData + 8;
        halt_rip = TestMachine::kCode + 0x10 + 1 + 11;
        before = 1;  // STI
    }
    SECTION("MOV SS") {
        m.at(0x30);
        m.state.regs.rflags = 0x202;
        store_addr = TestMachine::kData + 0x10;
        halt_rip = TestMachine::kCode + 0x30 + 5 + 2 + 11;
        before = 2;  // MOV EAX, MOV SS
    }
    REQUIRE(m.run(before).reason == StopReason::Budget);
    CHECK(m.state.interrupt_shadow != 0);
    m.bus.raise_interrupt(0x31);
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.record().vector == 0x31);
    CHECK(m.d(store_addr) != 0);  // the shadowed store ran first
    CHECK(m.record().frame[0] == halt_rip);
}

TEST_CASE("an interrupt after HLT is delivered on the next run with RIP past the HLT", "[soft_cpu]") {
    Machine m("loop");
    m.at(0x50);
    m.state.regs.rflags = 0x202;
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.state.regs.rip == TestMachine::kCode + 0x51);
    m.bus.raise_interrupt(0x40);
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.record().vector == 0x40);
    CHECK(m.record().frame[0] == TestMachine::kCode + 0x51);
}

TEST_CASE("IRETQ returns from interrupt handlers", "[soft_cpu]") {
    Machine m("counter_irq");
    m.set_gate(0x50, TestMachine::kCode + 0x800, 0xe, 0, 0);
    for (int i = 0; i < 3; ++i) {
        REQUIRE(m.run(200).reason == StopReason::Budget);
        m.bus.raise_interrupt(0x50);
    }
    REQUIRE(m.run(1000).reason == StopReason::Halt);
    CHECK(m.q(TestMachine::kData) == 3);
    CHECK(m.state.regs.rsp == TestMachine::kStackTop);
    CHECK(m.record().count == 0);
}

TEST_CASE("ring 3 → ring 0 → ring 3 through RSP0 and IRETQ", "[soft_cpu]") {
    Machine m("ring3");
    m.set_gate(0x30, TestMachine::kCode + 0x800, 0xe, 0, 0);
    m.set_gate(0x80, TestMachine::kStubs + 16 * 0x80, 0xe, 3, 0);
    m.enter_user(TestMachine::kCode);
    REQUIRE(m.run(100).reason == StopReason::Budget);
    m.bus.raise_interrupt(0x30);
    REQUIRE(m.run(1000).reason == StopReason::Halt);
    // The handler ran on RSP0 with the ring 3 frame.
    CHECK(m.q(TestMachine::kData + 0x100) == TestMachine::kStackTop - 40);
    CHECK(m.q(TestMachine::kData + 0x110) == TestMachine::kCs3);
    CHECK(m.q(TestMachine::kData + 0x118) == TestMachine::kUserStackTop);
    CHECK(m.q(TestMachine::kData + 0x120) == TestMachine::kDs3);
    // Back in ring 3, INT 0x80 went through the DPL 3 gate.
    CHECK(m.record().vector == 0x80);
    CHECK(m.record().frame[1] == TestMachine::kCs3);
    CHECK(m.record().frame[3] == TestMachine::kUserStackTop);
    CHECK(m.record().frame[4] == TestMachine::kDs3);
}

TEST_CASE("INT n from ring 3 through a DPL 0 gate is #GP", "[soft_cpu]") {
    Machine m("ring3");
    m.q(TestMachine::kData) = 1;  // skip the wait
    m.enter_user(TestMachine::kCode);
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.record().vector == 13);
    CHECK(m.record().frame[0] == 0x80 * 8 + 2);
    CHECK(m.record().frame[1] == TestMachine::kCode + 0xb);  // the INT itself
}

TEST_CASE("privileged instructions and I/O above IOPL fault in ring 3", "[soft_cpu]") {
    Machine m("io");
    SECTION("OUT with IOPL 0 and no bitmap") {
        m.enter_user(TestMachine::kCode, 0);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().vector == 13);
    }
    SECTION("OUT allowed by the TSS I/O bitmap") {
        m.w(TestMachine::kTss + 102) = 0x68;
        m.state.sregs.tr.limit = 0x68 + 0x2000;
        for (unsigned i = 0; i < 0x2000; ++i)
            m.b(TestMachine::kTss + 0x68 + i) = 0xff;
        m.b(TestMachine::kTss + 0x68 + 0xf8 / 8) = 0;
        m.enter_user(TestMachine::kCode, 0);
        CHECK(m.run().reason == StopReason::IoExit);
    }
    SECTION("OUT with IOPL 3") {
        m.enter_user(TestMachine::kCode, 3);
        CHECK(m.run().reason == StopReason::IoExit);
    }
    SECTION("HLT") {
        m.enter_user(TestMachine::kCode + 0x0f, 3);
        m.b(TestMachine::kCode + 0x0f) = 0xf4;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().vector == 13);
    }
}

TEST_CASE("IST stacks are used when the gate names one", "[soft_cpu]") {
    Machine m("divide_error");
    m.set_gate(0, TestMachine::kStubs, 0xe, 0, 1);
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.record().vector == 0);
    CHECK(m.state.regs.rsp == TestMachine::kIstTop - 40);
}

TEST_CASE("OUT retires before its exit; IN completes through complete_pio_in", "[soft_cpu]") {
    Machine m("io");
    SECTION("OUT") {
        const Stop s = m.run();
        REQUIRE(s.reason == StopReason::IoExit);
        CHECK(s.executed == 2);
        CHECK(m.state.regs.rip == TestMachine::kCode + 4);
        REQUIRE(m.bus.log().size() == 1);
        CHECK(m.bus.log()[0].kind == BusAccess::Kind::PioOut);
        CHECK(m.bus.log()[0].addr == 0xf8);
        CHECK(m.bus.log()[0].value == 0x41);
        CHECK(m.run().reason == StopReason::Halt);
    }
    SECTION("IN") {
        m.at(0x10);
        m.state.regs.rax = 0x1234567890abcdefull;
        REQUIRE(m.run().reason == StopReason::IoExit);
        CHECK(m.state.regs.rip == TestMachine::kCode + 0x12);
        const uint8_t data = 0x5a;
        m.cpu.complete_pio_in(m.state, &data, 1);
        CHECK(m.state.regs.rax == 0x1234567890abcd5aull);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.b(TestMachine::kData) == 0x5a);
    }
    SECTION("IN from an in-kernel port does not exit") {
        m.at(0x20);
        m.bus.set_port(0x40, 0xcafef00d);
        m.state.regs.rax = ~0ull;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.d(TestMachine::kData + 4) == 0xcafef00d);
        CHECK(m.state.regs.rax == 0xcafef00d);  // 32-bit IN zero-extends
    }
    SECTION("REP OUTSB exits once per byte and resumes") {
        m.at(0x60);
        std::memcpy(m.bus.ram() + TestMachine::kData + 0x200, "abc", 3);
        for (int i = 0; i < 3; ++i)
            REQUIRE(m.run().reason == StopReason::IoExit);
        REQUIRE(m.run().reason == StopReason::Halt);
        REQUIRE(m.bus.log().size() == 3);
        CHECK(m.bus.log()[2].value == 'c');
        CHECK(m.state.regs.rcx == 0);
    }
}

TEST_CASE("MMIO reads are re-executed with the completed data; writes retire", "[soft_cpu]") {
    Machine m("io");
    SECTION("read") {
        m.at(0x30);
        const Stop s = m.run();
        REQUIRE(s.reason == StopReason::MmioExit);
        CHECK(m.state.regs.rip == TestMachine::kCode + 0x30);  // not retired
        REQUIRE(m.bus.log().size() == 1);
        CHECK(m.bus.log()[0].kind == BusAccess::Kind::MmioRead);
        CHECK(m.bus.log()[0].addr == 0x40000000);
        CHECK(m.bus.log()[0].size == 4);
        const uint32_t v = 0xdeadbeef;
        m.cpu.complete_mmio_read(0x40000000, &v, 4);
        m.bus.raise_interrupt(0x30);  // not taken before the read completes
        m.state.regs.rflags |= 0x200;
        REQUIRE(m.run(1).reason == StopReason::Budget);
        CHECK(m.state.regs.rax == 0xdeadbeef);
        CHECK(m.bus.log().size() == 1);  // the re-executed read did not go to the bus
    }
    SECTION("write") {
        m.at(0x40);
        const Stop s = m.run();
        REQUIRE(s.reason == StopReason::MmioExit);
        CHECK(m.state.regs.rip == TestMachine::kCode + 0x40 + 11);
        REQUIRE(m.bus.log().size() == 1);
        CHECK(m.bus.log()[0].kind == BusAccess::Kind::MmioWrite);
        CHECK(m.bus.log()[0].addr == 0x40000010);
        CHECK(m.bus.log()[0].value == 0x1234);
    }
    SECTION("read-modify-write") {
        m.at(0x50);
        REQUIRE(m.run().reason == StopReason::MmioExit);
        const uint32_t v = 10;
        m.cpu.complete_mmio_read(0x40000020, &v, 4);
        REQUIRE(m.run().reason == StopReason::MmioExit);
        REQUIRE(m.bus.log().size() == 2);
        CHECK(m.bus.log()[1].kind == BusAccess::Kind::MmioWrite);
        CHECK(m.bus.log()[1].value == 15);
        CHECK(m.run().reason == StopReason::Halt);
    }
    SECTION("in-kernel MMIO completes at once") {
        m.bus.mmio_in_kernel(0x40000000);
        m.bus.set_mmio(0x40000000, 77);
        m.at(0x30);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.d(TestMachine::kData + 8) == 77);
    }
}

TEST_CASE("LOCK operations are atomic between vCPU threads", "[soft_cpu]") {
    const uint64_t offset = GENERATE(0x00, 0x40, 0x80);
    constexpr uint64_t n = 200000;
    Machine m("atomic");
    Cpu cpu2;
    CpuState st2 = m.state;
    m.at(offset);
    m.state.regs.rdi = n;
    st2.regs.rip = m.state.regs.rip;
    st2.regs.rdi = n;
    st2.regs.rsp = TestMachine::kStackTop - 0x8000;
    Stop s1, s2;
    std::thread other([&] {
        do
            s2 = cpu2.run(st2, m.bus, 10000);
        while (s2.reason == StopReason::Budget);
    });
    do
        s1 = m.run(10000);
    while (s1.reason == StopReason::Budget);
    other.join();
    CHECK(s1.reason == StopReason::Halt);
    CHECK(s2.reason == StopReason::Halt);
    CHECK(m.q(TestMachine::kData + offset / 8) == 2 * n);
}

TEST_CASE("MSRs, FS base, SWAPGS, CPUID, RDTSC", "[soft_cpu]") {
    Machine m("system");
    SECTION("WRMSR FS_BASE and an FS-relative load") {
        m.q(TestMachine::kData + 8) = 0x5555;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.state.sregs.fs.base == TestMachine::kData);
        CHECK(m.state.regs.rax == 0x5555);
    }
    SECTION("SWAPGS") {
        m.state.kernel_gs_base = 0x123456789aull;
        m.state.sregs.gs.base = 0x42;
        m.at(0x20);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.state.regs.rax == 0x3456789a);
        CHECK(m.state.regs.rdx == 0x12);
        CHECK(m.state.kernel_gs_base == 0x42);
    }
    SECTION("CPUID comes from the bus, OSXSAVE from CR4") {
        m.bus.set_cpuid(1, 0, 0x906ea, 0x800, 0x80000001, 0x178bfbff);
        m.state.sregs.cr4 |= 1u << 18;
        m.state.regs.rax = 1;
        m.at(0x40);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.state.regs.rax == 0x906ea);
        CHECK(m.state.regs.rcx == (0x80000001 | (1u << 27)));
        CHECK(m.state.regs.rdx == 0x178bfbff);
    }
    SECTION("RDMSR of an owned MSR, of a bus MSR, of a missing MSR") {
        m.at(0x50);
        m.state.regs.rcx = 0xc0000080;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.state.regs.rax == 0xd01);
        m.bus.add_msr(0x1b, 0xfee00900);
        m.at(0x50);
        m.state.regs.rcx = 0x1b;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.state.regs.rax == 0xfee00900);
        m.at(0x50);
        m.state.regs.rcx = 0x12345;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().vector == 13);
    }
    SECTION("WRMSR checks: non-canonical LSTAR is #GP, PAT with a bad type is #GP") {
        m.at(0x60);
        m.state.regs.rcx = 0xc0000082;
        m.state.regs.rdx = 0x00008000;
        m.state.regs.rax = 0;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().vector == 13);
        CHECK(m.state.lstar == 0);
    }
    SECTION("RDTSC") {
        m.at(0xa0);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.state.regs.rax == 1000);
        CHECK(m.state.regs.rdx == 0);
    }
}

TEST_CASE("control register writes", "[soft_cpu]") {
    Machine m("system");
    SECTION("clearing CR0.PG in 64-bit mode is #GP") {
        m.at(0x70);
        m.state.regs.rax = m.state.sregs.cr0 & ~(1ull << 31);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().vector == 13);
    }
    SECTION("CR8 goes to the bus") {
        m.at(0x80);
        m.state.regs.rax = 9;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.bus.cr8() == 9);
        CHECK(m.state.regs.rbx == 9);
    }
    SECTION("MOV SS with a code selector is #GP(selector)") {
        m.at(0x90);
        m.state.regs.rax = TestMachine::kCs0;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().vector == 13);
        CHECK(m.record().frame[0] == TestMachine::kCs0);
    }
    SECTION("MOV SS with the data selector loads it") {
        m.at(0x90);
        m.state.regs.rax = TestMachine::kDs0;
        m.state.sregs.ss.selector = 0;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().count == 0);
        CHECK(m.state.sregs.ss.selector == TestMachine::kDs0);
        CHECK((m.b(TestMachine::kGdt + 0x10 + 5) & 1) == 1);  // accessed bit set
    }
}

TEST_CASE("unsupported instructions stop with Internal and name the bytes", "[soft_cpu]") {
    Machine m("system");
    m.at(0xb0);
    m.state.regs.rax = TestMachine::kData;
    const Stop s = m.run();
    REQUIRE(s.reason == StopReason::Internal);
    CHECK(s.detail.find("far CALL") != std::string::npos);
    CHECK(s.detail.find("ff 18") != std::string::npos);
    CHECK(m.state.regs.rip == TestMachine::kCode + 0xb0);
}

TEST_CASE("SYSCALL and SYSRETQ switch privilege architecturally", "[soft_cpu]") {
    Machine m("system");
    m.state.star = (0x10ull << 48) | (0x08ull << 32);
    m.state.lstar = TestMachine::kCode + 0x800;
    m.state.fmask = 0x200;
    m.set_gate(0x80, TestMachine::kStubs + 16 * 0x80, 0xe, 3, 0);
    m.enter_user(TestMachine::kCode + 0xc0);
    REQUIRE(m.run().reason == StopReason::Halt);
    CHECK(m.q(TestMachine::kData + 0x100) == TestMachine::kCode + 0xc0 + 7);  // RCX
    CHECK((m.q(TestMachine::kData + 0x108) & 0x200) != 0);                     // R11 = RFLAGS
    CHECK(m.q(TestMachine::kData + 0x110) == 8);
    // Back in ring 3: INT 0x80 records CS = STAR[63:48] + 16 | 3.
    CHECK(m.record().vector == 0x80);
    CHECK(m.record().frame[1] == 0x23);
}

TEST_CASE("string instructions", "[soft_cpu]") {
    Machine m("strings");
    SECTION("overlapping forward REP MOVSB replicates bytes") {
        m.b(TestMachine::kData) = 0xab;
        REQUIRE(m.run().reason == StopReason::Halt);
        for (int i = 0; i <= 100; ++i)
            CHECK(m.b(TestMachine::kData + i) == 0xab);
        CHECK(m.b(TestMachine::kData + 101) == 0);
        CHECK(m.state.regs.rcx == 0);
        CHECK(m.state.regs.rsi == TestMachine::kData + 100);
    }
    SECTION("REP STOSQ across pages") {
        m.at(0x20);
        REQUIRE(m.run().reason == StopReason::Halt);
        for (int i = 0; i < 600; ++i)
            REQUIRE(m.q(TestMachine::kData + 0x1000 + 8 * i) == 0x0123456789abcdefull);
        CHECK(m.q(TestMachine::kData + 0x1000 + 8 * 600) == 0);
        CHECK(m.state.regs.rdi == TestMachine::kData + 0x1000 + 8 * 600);
    }
    SECTION("REPNE SCASB stops after the match") {
        m.b(TestMachine::kData + 0x3000 + 77) = 'x';
        m.at(0x40);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.state.regs.rdi == TestMachine::kData + 0x3000 + 78);
        CHECK(m.state.regs.rcx == 0x1000 - 78);
        CHECK((m.state.regs.rflags & 0x40) != 0);
    }
    SECTION("STD; REP MOVSB copies backwards") {
        for (int i = 0; i < 10; ++i)
            m.b(TestMachine::kData + 0x4000 + i) = static_cast<uint8_t>(i + 1);
        m.at(0x60);
        REQUIRE(m.run().reason == StopReason::Halt);
        for (int i = 0; i < 10; ++i)
            CHECK(m.b(TestMachine::kData + 0x5000 + i) == i + 1);
        CHECK(m.state.regs.rdi == TestMachine::kData + 0x5000 - 1);
        CHECK((m.state.regs.rflags & 0x400) == 0);
    }
    SECTION("REPE CMPSB stops at the first difference") {
        m.b(TestMachine::kData + 0x6000 + 40) = 1;
        m.at(0x80);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.state.regs.rcx == 64 - 41);
        CHECK((m.state.regs.rflags & 0x40) == 0);
    }
    SECTION("a long REP yields to interrupts and resumes") {
        m.at(0xa0);
        m.state.regs.rflags = 0x202;
        REQUIRE(m.run(4).reason == StopReason::Budget);  // 3 setup instructions, one chunk
        const uint64_t rep_rip = TestMachine::kCode + 0xa0 + 15;
        CHECK(m.state.regs.rip == rep_rip);
        CHECK(m.state.regs.rcx != 0);
        CHECK(m.state.regs.rcx < 100000);
        m.bus.raise_interrupt(0x30);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().vector == 0x30);
        CHECK(m.record().frame[0] == rep_rip);
        CHECK(m.b(TestMachine::kData + 0x10000) == 0xee);
        CHECK(m.b(TestMachine::kData + 0x10000 + 99999) == 0);
    }
}

TEST_CASE("FS/GS base instructions, XCR0, descriptor tables, TR", "[soft_cpu]") {
    Machine m("system2");
    SECTION("RDFSBASE and WRGSBASE need CR4.FSGSBASE") {
        m.state.sregs.fs.base = 0x1234000;
        m.state.regs.rbx = 0x5678000;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().vector == 6);
        m.state.sregs.cr4 |= 1u << 16;
        m.at(0);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.state.regs.rax == 0x1234000);
        CHECK(m.state.sregs.gs.base == 0x5678000);
    }
    SECTION("XGETBV and XSETBV follow CR4.OSXSAVE and the CPUID leaf 0xd mask") {
        m.at(0x10);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().vector == 6);  // no OSXSAVE
        m.state.sregs.cr4 |= 1u << 18;
        m.bus.set_cpuid(0xd, 0, 0x7, 0, 0, 0);
        m.at(0x20);
        m.state.regs.rax = 7;
        m.state.regs.rdx = 0;
        m.state.regs.rcx = 0;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.state.xcr0 == 7);
        m.at(0x20);
        m.state.regs.rax = 0x1f;  // bits the CPUID leaf does not offer
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().vector == 13);
        CHECK(m.state.xcr0 == 7);
        m.at(0x10);
        m.state.regs.rax = 0;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.state.regs.rax == 7);
    }
    SECTION("SGDT, SIDT, LGDT") {
        m.at(0x30);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.w(TestMachine::kData) == 0x37);
        CHECK(m.get64(TestMachine::kData + 2) == TestMachine::kGdt);
        CHECK(m.w(TestMachine::kData + 0x10) == 256 * 16 - 1);
        CHECK(m.get64(TestMachine::kData + 0x12) == TestMachine::kIdt);
        m.w(TestMachine::kData + 0x20) = 0x57;
        m.put64(TestMachine::kData + 0x22, 0x123000);
        m.at(0x50);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.state.sregs.gdt.limit == 0x57);
        CHECK(m.state.sregs.gdt.base == 0x123000);
    }
    SECTION("LTR marks the TSS busy; a busy TSS cannot be loaded again") {
        m.b(TestMachine::kGdt + 0x28 + 5) = 0x89;  // available
        m.at(0x60);
        m.state.regs.rax = TestMachine::kTr;
        m.state.sregs.tr = kvm_segment{};
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().count == 0);
        CHECK(m.state.sregs.tr.base == TestMachine::kTss);
        CHECK(m.state.sregs.tr.type == 0xb);
        CHECK(m.state.regs.rbx == TestMachine::kTr);
        CHECK(m.b(TestMachine::kGdt + 0x28 + 5) == 0x8b);
        m.at(0x60);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().vector == 13);
        CHECK(m.record().frame[0] == TestMachine::kTr);
    }
}

TEST_CASE("POPF and CLI obey CPL and IOPL", "[soft_cpu]") {
    Machine m("system2");
    m.set_gate(0x80, TestMachine::kStubs + 16 * 0x80, 0xe, 3, 0);
    SECTION("POPF in ring 3 changes neither IF nor IOPL") {
        m.enter_user(TestMachine::kCode + 0x70, 0);
        m.state.regs.rax = 0x3000 | 0x400 | 0x1;  // IOPL 3, DF, CF; IF clear
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().vector == 0x80);
        const uint64_t flags = m.record().frame[2];
        CHECK((flags & 0x200) != 0);  // IF kept
        CHECK((flags & 0x3000) == 0);  // IOPL kept
        CHECK((flags & 0x401) == 0x401);
    }
    SECTION("POPF in ring 0 changes both") {
        m.at(0x70);
        m.state.regs.rflags = 0x202;
        m.state.regs.rax = 0x3000 | 0x2;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK((m.record().frame[2] & 0x3200) == 0x3000);
    }
    SECTION("CLI in ring 3 with IOPL 3 is allowed") {
        m.enter_user(TestMachine::kCode + 0x80, 3);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().vector == 0x80);
        CHECK((m.record().frame[2] & 0x200) == 0);
    }
    SECTION("CLI in ring 3 with IOPL 0 is #GP") {
        m.enter_user(TestMachine::kCode + 0x80, 0);
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.record().vector == 13);
    }
}

TEST_CASE("ENTER and LEAVE, PUSH/POP of segment registers, PUSHFQ", "[soft_cpu]") {
    Machine m("system2");
    SECTION("ENTER level 0 and LEAVE") {
        m.at(0x90);
        m.state.regs.rbp = 0x4242;
        REQUIRE(m.run().reason == StopReason::Halt);
        const uint64_t sp = TestMachine::kStackTop;
        CHECK(m.state.regs.rbx == sp);
        CHECK(m.state.regs.rdx == sp - 8);        // RBP = the frame
        CHECK(m.state.regs.rcx == sp - 8 - 32);   // RSP below the locals
        CHECK(m.q(sp - 8) == 0x4242);             // saved RBP
        CHECK(m.state.regs.rbp == 0x4242);
        CHECK(m.state.regs.rsp == sp);
    }
    SECTION("ENTER with a nesting level copies the display") {
        m.at(0xa0);
        m.q(0x7000 - 8) = 0xaaaa;
        REQUIRE(m.run().reason == StopReason::Halt);
        const uint64_t sp = TestMachine::kStackTop;
        const uint64_t frame = sp - 8;
        CHECK(m.q(frame) == 0x7000);            // old RBP
        CHECK(m.q(frame - 8) == 0xaaaa);        // copied from the outer display
        CHECK(m.q(frame - 16) == frame);        // this frame
        CHECK(m.state.regs.rbp == frame);
        CHECK(m.state.regs.rsp == frame - 16 - 16);
    }
    SECTION("PUSH FS; POP GS loads GS from the GDT") {
        m.at(0xc0);
        m.state.sregs.gs = kvm_segment{};
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.state.sregs.gs.selector == TestMachine::kDs0);
        CHECK(m.state.sregs.gs.present == 1);
        CHECK(m.state.regs.rsp == TestMachine::kStackTop);
    }
    SECTION("PUSHFQ shows the lazily computed flags") {
        m.at(0xd0);
        m.state.regs.rflags = 0x2 | 0x80 | 0x4;
        REQUIRE(m.run().reason == StopReason::Halt);
        CHECK(m.state.regs.rax == (0x2 | 0x80 | 0x4));
    }
}
