// SPDX-License-Identifier: GPL-2.0-or-later
// Test fixtures for the interpreter: a RAM-backed CpuBus that records port, MMIO and MSR
// traffic and hands out scripted interrupts, and a TestMachine that lays out a 64-bit guest
// (identity-mapped page tables, GDT with ring 0 and ring 3 segments, TSS, an IDT whose stubs
// record every event) around it.
#pragma once

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <sys/mman.h>

#include "kvm/soft/cpu.h"

namespace colod::kvm::soft::test {

struct BusAccess {
    enum class Kind { PioIn, PioOut, MmioRead, MmioWrite } kind;
    uint64_t addr;
    uint32_t size;
    uint64_t value;  // written value; for reads what the device returned (if Done)
};

class FakeBus : public CpuBus {
public:
    // RAM is an anonymous mapping: zero-filled, and only the pages a test touches cost.
    explicit FakeBus(uint64_t ram_bytes) : m_size(ram_bytes) {
        void* p = mmap(nullptr, ram_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            throw std::bad_alloc();
        m_ram = static_cast<uint8_t*>(p);
    }
    ~FakeBus() override { munmap(m_ram, m_size); }
    FakeBus(const FakeBus&) = delete;
    FakeBus& operator=(const FakeBus&) = delete;

    uint8_t* ram() { return m_ram; }
    uint64_t ram_size() const { return m_size; }

    // ---- CpuBus -------------------------------------------------------------------------------
    uint8_t* ram_page(uint64_t gpa, Access access) override {
        if (gpa >= m_size)
            return nullptr;
        const uint64_t page = gpa & ~0xfffull;
        if (access == Access::Write) {
            std::lock_guard lock(m_mutex);
            if (m_readonly.count(page))
                return nullptr;
            m_dirty.insert(page);
            ++m_write_lookups;
        }
        return m_ram + page;
    }
    BusResult mmio_read(uint64_t gpa, void* data, uint32_t len) override {
        std::lock_guard lock(m_mutex);
        uint64_t v = 0;
        const bool in_kernel = m_mmio_done.count(gpa & ~0xfffull);
        if (in_kernel) {
            auto it = m_mmio_values.find(gpa);
            v = it != m_mmio_values.end() ? it->second : 0;
            std::memcpy(data, &v, len);
        }
        m_log.push_back({BusAccess::Kind::MmioRead, gpa, len, v});
        return in_kernel ? BusResult::Done : BusResult::Exit;
    }
    BusResult mmio_write(uint64_t gpa, const void* data, uint32_t len) override {
        std::lock_guard lock(m_mutex);
        uint64_t v = 0;
        std::memcpy(&v, data, len);
        m_log.push_back({BusAccess::Kind::MmioWrite, gpa, len, v});
        if (m_mmio_done.count(gpa & ~0xfffull)) {
            m_mmio_values[gpa] = v;
            return BusResult::Done;
        }
        return BusResult::Exit;
    }
    BusResult pio_in(uint16_t port, void* data, uint32_t size) override {
        std::lock_guard lock(m_mutex);
        auto it = m_port_values.find(port);
        const bool in_kernel = it != m_port_values.end();
        const uint64_t v = in_kernel ? it->second : 0;
        if (in_kernel)
            std::memcpy(data, &v, size);
        m_log.push_back({BusAccess::Kind::PioIn, port, size, v});
        return in_kernel ? BusResult::Done : BusResult::Exit;
    }
    BusResult pio_out(uint16_t port, const void* data, uint32_t size) override {
        std::lock_guard lock(m_mutex);
        uint32_t v = 0;
        std::memcpy(&v, data, size);
        if (port == kConsolePort) {
            m_console.push_back(static_cast<char>(v));
            return BusResult::Done;
        }
        m_log.push_back({BusAccess::Kind::PioOut, port, size, v});
        if (m_ports_done.count(port))
            return BusResult::Done;
        return BusResult::Exit;
    }
    bool rdmsr(uint32_t index, uint64_t& value) override {
        auto it = m_msrs.find(index);
        if (it == m_msrs.end())
            return false;
        value = it->second;
        return true;
    }
    bool wrmsr(uint32_t index, uint64_t value) override {
        auto it = m_msrs.find(index);
        if (it == m_msrs.end())
            return false;
        it->second = value;
        return true;
    }
    void cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) override {
        auto it = m_cpuid.find((static_cast<uint64_t>(leaf) << 32) | subleaf);
        if (it == m_cpuid.end())
            it = m_cpuid.find(static_cast<uint64_t>(leaf) << 32);
        if (it == m_cpuid.end()) {
            out[0] = out[1] = out[2] = out[3] = 0;
            return;
        }
        std::memcpy(out, it->second.data(), 16);
    }
    int pending_interrupt() override {
        std::lock_guard lock(m_mutex);
        ++m_interrupt_polls;
        return m_pending.empty() ? -1 : m_pending.front();
    }
    void acknowledge_interrupt(int vector) override {
        std::lock_guard lock(m_mutex);
        if (!m_pending.empty() && m_pending.front() == vector)
            m_pending.pop_front();
        m_acknowledged.push_back(vector);
    }
    uint64_t read_cr8() override { return m_cr8; }
    void write_cr8(uint64_t value) override { m_cr8 = value; }
    uint64_t tsc() override { return m_tsc += 1000; }

    // ---- scripting ----------------------------------------------------------------------------
    static constexpr uint16_t kConsolePort = 0xe9;  // Done; bytes collected in console()

    void raise_interrupt(int vector) {
        std::lock_guard lock(m_mutex);
        m_pending.push_back(vector);
    }
    void set_port(uint16_t port, uint64_t value) { m_port_values[port] = value; }  // IN → Done
    void port_done(uint16_t port) { m_ports_done.insert(port); }                   // OUT → Done
    void mmio_in_kernel(uint64_t page) { m_mmio_done.insert(page); }
    void set_mmio(uint64_t gpa, uint64_t value) { m_mmio_values[gpa] = value; }
    void set_readonly(uint64_t page) { m_readonly.insert(page); }
    void add_msr(uint32_t index, uint64_t value) { m_msrs[index] = value; }
    void set_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
        m_cpuid[(static_cast<uint64_t>(leaf) << 32) | subleaf] = {a, b, c, d};
    }

    const std::vector<BusAccess>& log() const { return m_log; }
    void clear_log() { m_log.clear(); }
    const std::string& console() const { return m_console; }
    void clear_console() { m_console.clear(); }
    std::set<uint64_t> take_dirty() {
        std::lock_guard lock(m_mutex);
        return std::exchange(m_dirty, {});
    }
    const std::vector<int>& acknowledged() const { return m_acknowledged; }
    uint64_t interrupt_polls() const { return m_interrupt_polls; }
    uint64_t cr8() const { return m_cr8; }

private:
    uint8_t* m_ram;
    uint64_t m_size;
    std::mutex m_mutex;
    std::set<uint64_t> m_dirty;
    std::set<uint64_t> m_readonly;
    uint64_t m_write_lookups = 0;
    std::vector<BusAccess> m_log;
    std::map<uint16_t, uint64_t> m_port_values;
    std::set<uint16_t> m_ports_done;
    std::set<uint64_t> m_mmio_done;
    std::map<uint64_t, uint64_t> m_mmio_values;
    std::map<uint32_t, uint64_t> m_msrs;
    std::map<uint64_t, std::array<uint32_t, 4>> m_cpuid;
    std::deque<int> m_pending;
    std::vector<int> m_acknowledged;
    uint64_t m_interrupt_polls = 0;
    uint64_t m_cr8 = 0;
    uint64_t m_tsc = 0;
    std::string m_console;
};

// Reads a file produced at build time (an assembled snippet, a guest program).
inline std::vector<uint8_t> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw std::runtime_error("cannot open " + path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A 64-bit guest laid out in 64 MiB of RAM:
//   0x1000 PML4, 0x2000 PDPT, 0x3000 PD (first GiB in 2 MiB pages; GiB 1-3 are 1 GiB pages)
//   0x5000 GDT, 0x6000 IDT, 0x7000 TSS, 0x9000 event record, 0x10000 IDT stubs
//   0x20000-0x30000 page-table pool for 4 KiB mappings, 0x80000 ring 0 stack top,
//   0x90000 IST1 stack top, 0x100000 code, 0x200000 data, 0x400000 ring 3 stack top.
// Everything is mapped user-accessible and writable unless a test changes it.
class TestMachine {
public:
    static constexpr uint64_t kPml4 = 0x1000, kPdpt = 0x2000, kPd = 0x3000;
    static constexpr uint64_t kGdt = 0x5000, kIdt = 0x6000, kTss = 0x7000;
    static constexpr uint64_t kRecord = 0x9000, kStubs = 0x10000;
    static constexpr uint64_t kPtPool = 0x20000, kPtPoolEnd = 0x30000;
    static constexpr uint64_t kStackTop = 0x80000, kIstTop = 0x90000;
    static constexpr uint64_t kCode = 0x100000, kData = 0x200000, kUserStackTop = 0x400000;
    static constexpr uint16_t kCs0 = 0x08, kDs0 = 0x10, kCs3 = 0x1b, kDs3 = 0x23, kTr = 0x28;

    // What the IDT stubs record: the vector, the stack frame as delivered and CR2.
    struct Record {
        uint64_t vector;
        uint64_t frame[6];  // with an error code: err, rip, cs, rflags, rsp, ss
        uint64_t cr2;
        uint64_t count;     // events recorded so far
    };

    // `stubs_path`: the assembled snippets/stubs.S, or empty for a machine without IDT stubs.
    explicit TestMachine(const std::string& stubs_path, uint64_t ram = 64ull << 20) : bus(ram) {
        auto& m = *this;
        // Page tables.
        m.q(kPml4) = kPdpt | 7;
        m.q(kPdpt) = kPd | 7;
        for (uint64_t i = 1; i < 4; ++i)
            m.q(kPdpt + 8 * i) = (i << 30) | 0x87;  // 1 GiB pages
        for (uint64_t i = 0; i < 512; ++i)
            m.q(kPd + 8 * i) = (i << 21) | 0x87;  // 2 MiB pages, P W U PS
        // GDT.
        m.q(kGdt + 0x00) = 0;
        m.q(kGdt + 0x08) = 0x00af9b000000ffffull;  // code64 DPL0
        m.q(kGdt + 0x10) = 0x00cf93000000ffffull;  // data DPL0
        m.q(kGdt + 0x18) = 0x00affb000000ffffull;  // code64 DPL3
        m.q(kGdt + 0x20) = 0x00cff3000000ffffull;  // data DPL3
        const uint64_t tss_limit = 0x67;
        m.q(kGdt + 0x28) = tss_limit | ((kTss & 0xffffff) << 16) | (0x89ull << 40) |
                           (((kTss >> 24) & 0xff) << 56);
        m.q(kGdt + 0x30) = kTss >> 32;
        // TSS: RSP0, IST1; I/O bitmap base past the limit (no port allowed above IOPL).
        m.put64(kTss + 4, kStackTop);  // the 64-bit TSS's RSP0 and IST1 are not 8-aligned
        m.put64(kTss + 36, kIstTop);
        m.w(kTss + 102) = 0x68;
        // IDT: every vector an interrupt gate (DPL 0) to its recording stub.
        for (unsigned v = 0; v < 256; ++v)
            set_gate(v, kStubs + 16 * v, 0xe, 0, 0);
        if (!stubs_path.empty()) {
            auto stubs = read_file(stubs_path);
            std::memcpy(bus.ram() + kStubs, stubs.data(), stubs.size());
        }

        auto& sr = state.sregs;
        sr.cs = segment(kCs0, 0xb, 0, true);
        sr.ds = sr.es = sr.fs = sr.gs = sr.ss = segment(kDs0, 0x3, 0, false);
        sr.tr = kvm_segment{};
        sr.tr.base = kTss;
        sr.tr.limit = tss_limit;
        sr.tr.selector = kTr;
        sr.tr.type = 0xb;
        sr.tr.present = 1;
        sr.ldt = kvm_segment{};
        sr.ldt.unusable = 1;
        sr.gdt.base = kGdt;
        sr.gdt.limit = 0x37;
        sr.idt.base = kIdt;
        sr.idt.limit = 256 * 16 - 1;
        sr.cr0 = 0x80050033;  // PG WP NE ET MP PE
        sr.cr3 = kPml4;
        sr.cr4 = 0x20;        // PAE
        sr.efer = 0xd01;      // NXE LMA LME SCE
        state.regs.rip = kCode;
        state.regs.rsp = kStackTop;
        state.regs.rflags = 2;
        record().count = 0;
    }

    static kvm_segment segment(uint16_t sel, uint8_t type, uint8_t dpl, bool code) {
        kvm_segment s{};
        s.base = 0;
        s.limit = 0xffffffff;
        s.selector = sel;
        s.type = type;
        s.present = 1;
        s.dpl = dpl;
        s.db = code ? 0 : 1;
        s.s = 1;
        s.l = code ? 1 : 0;
        s.g = 1;
        return s;
    }

    void set_gate(unsigned vector, uint64_t target, unsigned type, unsigned dpl, unsigned ist,
                  uint16_t selector = kCs0) {
        const uint64_t lo = (target & 0xffff) | (static_cast<uint64_t>(selector) << 16) |
                            (static_cast<uint64_t>(ist) << 32) |
                            (static_cast<uint64_t>(type) << 40) | (static_cast<uint64_t>(dpl) << 45) |
                            (1ull << 47) | ((target >> 16 & 0xffff) << 48);
        q(kIdt + 16 * vector) = lo;
        q(kIdt + 16 * vector + 8) = target >> 32;
    }

    // Maps one 4 KiB page (splitting the 2 MiB page that holds it, first GiB only).
    // flags: P=1 W=2 U=4 ..., NX = bit 63.
    void map_4k(uint64_t lin, uint64_t gpa, uint64_t flags) {
        uint64_t& pde = q(kPd + 8 * ((lin >> 21) & 511));
        if (pde & 0x80) {
            const uint64_t base = pde & ~0x1fffffull & 0x000ffffffffff000ull;
            const uint64_t keep = pde & 0x8000000000000007ull;
            if (m_pool + 4096 > kPtPoolEnd)
                throw std::runtime_error("page-table pool exhausted");
            const uint64_t pt = m_pool;
            m_pool += 4096;
            for (uint64_t i = 0; i < 512; ++i)
                q(pt + 8 * i) = (base + (i << 12)) | keep;
            pde = pt | 7;
        }
        const uint64_t pt = pde & 0x000ffffffffff000ull;
        q(pt + 8 * ((lin >> 12) & 511)) = (gpa & ~0xfffull) | flags;
        cpu.flush_tlb();
    }
    // Maps one 4 KiB page at any canonical linear address outside the first 4 GiB, building
    // the paging structures on the way from the pool.
    void map_page(uint64_t lin, uint64_t gpa, uint64_t flags) {
        uint64_t table = kPml4;
        for (int level = 3; level > 0; --level) {
            uint64_t& e = q(table + 8 * ((lin >> (12 + 9 * level)) & 511));
            if (!(e & 1)) {
                if (m_pool + 4096 > kPtPoolEnd)
                    throw std::runtime_error("page-table pool exhausted");
                std::memset(bus.ram() + m_pool, 0, 4096);
                e = m_pool | 7;
                m_pool += 4096;
            } else if (e & 0x80) {
                throw std::runtime_error("map_page: a large page is in the way");
            }
            table = e & 0x000ffffffffff000ull;
        }
        q(table + 8 * ((lin >> 12) & 511)) = (gpa & ~0xfffull) | flags;
        cpu.flush_tlb();
    }
    uint64_t& pte(uint64_t lin) {
        const uint64_t pde = q(kPd + 8 * ((lin >> 21) & 511));
        return q((pde & 0x000ffffffffff000ull) + 8 * ((lin >> 12) & 511));
    }

    void load(const std::vector<uint8_t>& code, uint64_t at = kCode) {
        std::memcpy(bus.ram() + at, code.data(), code.size());
    }
    void load_file(const std::string& path, uint64_t at = kCode) { load(read_file(path), at); }

    // Enters ring 3 at `rip` with the user stack, IOPL as given.
    void enter_user(uint64_t rip, unsigned iopl = 0) {
        state.sregs.cs = segment(kCs3, 0xb, 3, true);
        state.sregs.ss = state.sregs.ds = state.sregs.es = segment(kDs3, 0x3, 3, false);
        state.regs.rip = rip;
        state.regs.rsp = kUserStackTop;
        state.regs.rflags = 0x202 | (static_cast<uint64_t>(iopl) << 12);
    }

    Stop run(uint64_t budget = 10'000'000) { return cpu.run(state, bus, budget); }

    // Aligned views of guest RAM (q, d, w, b) and unaligned accessors (get64, put64).
    uint64_t& q(uint64_t gpa) { return *reinterpret_cast<uint64_t*>(bus.ram() + gpa); }
    uint64_t get64(uint64_t gpa) {
        uint64_t v;
        std::memcpy(&v, bus.ram() + gpa, 8);
        return v;
    }
    void put64(uint64_t gpa, uint64_t v) { std::memcpy(bus.ram() + gpa, &v, 8); }
    uint32_t& d(uint64_t gpa) { return *reinterpret_cast<uint32_t*>(bus.ram() + gpa); }
    uint16_t& w(uint64_t gpa) { return *reinterpret_cast<uint16_t*>(bus.ram() + gpa); }
    uint8_t& b(uint64_t gpa) { return bus.ram()[gpa]; }
    Record& record() { return *reinterpret_cast<Record*>(bus.ram() + kRecord); }

    FakeBus bus;
    Cpu cpu;
    CpuState state;

private:
    uint64_t m_pool = kPtPool;
};

}  // namespace colod::kvm::soft::test
