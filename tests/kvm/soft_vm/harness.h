// SPDX-License-Identifier: GPL-2.0-or-later
// Test harness over the KVM backend seam (kvm/handle.h): a machine with a low RAM slot holding
// identity page tables, a GDT and a guest at 0x10000, vCPUs entered directly in long mode, and
// a thread that runs KVM_RUN and can be kicked like colod's vCPU threads.
#pragma once

#include "kvm/kernel_abi.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <deque>
#include <vector>

#include "base/fd.h"
#include "kvm/handle.h"

namespace colod::softvm_test {

inline constexpr uint64_t k_low_size = 4ull << 20;
inline constexpr uint64_t k_entry = 0x10000;
inline constexpr uint64_t k_stack_top = 0x80000;

// Guest mailboxes (guests/common.inc).
inline constexpr uint64_t k_pit_ticks = 0x9000, k_loops = 0x9008, k_ready = 0x9010, k_lapic_ticks = 0x9018,
                          k_line_irqs = 0x9020, k_deadline_ticks = 0x9028, k_io_in_result = 0x9030, k_mmio_result = 0x9038;

struct BackendCase {
    std::string name;
    std::unique_ptr<kvm::Backend> backend;
};
// The soft backend, and the host backend when /dev/kvm opens (a note says so when it does not).
std::vector<BackendCase> available_backends();

int64_t now_ns();
// True inside tests/hostkvm/nested.sh (KVM nested in QEMU's TCG): COLOD_NESTED_TCG=1.
bool nested_tcg();
base::Mapping anonymous_memory(size_t bytes);

struct Vcpu {
    std::unique_ptr<kvm::Handle> handle;
    kvm_run* run = nullptr;
};

struct MachineOptions {
    bool irqchip = true;
    bool pit = true;
};

class Machine {
public:
    Machine(kvm::Backend& backend, MachineOptions options = {});

    kvm::Handle& system() { return *m_system; }
    kvm::Handle& vm() { return *m_vm; }
    uint8_t* low() { return reinterpret_cast<uint8_t*>(m_low.data()); }
    uint64_t read64(uint64_t gpa);
    void write64(uint64_t gpa, uint64_t value);

    // Page tables, GDT and the guest `name` (a .bin beside the tests) in low memory.
    void load_guest(const std::string& name);
    // A vCPU in 64-bit mode at k_entry with the supported CPUID; rdi/rsi as given.
    // The CPUID table add_vcpu() gives a vCPU (the supported table, plus TSC-deadline where the
    // backend emulates it), as a kvm_cpuid2 buffer in the kernel's layout.
    std::vector<uint64_t> vcpu_cpuid();
    Vcpu& add_vcpu(uint32_t id, uint64_t rdi = 0, uint64_t rsi = 0, uint64_t rdx = 0);
    Vcpu& vcpu(size_t index) { return m_vcpus.at(index); }
    size_t mmap_size() const { return m_mmap_size; }

private:
    std::unique_ptr<kvm::Handle> m_system;
    std::unique_ptr<kvm::Handle> m_vm;
    base::Mapping m_low;
    size_t m_mmap_size = 0;
    std::deque<Vcpu> m_vcpus;  // references handed out stay valid
};

// Runs KVM_RUN in its own thread until it returns (any exit, or EINTR after a kick).
class Runner {
public:
    explicit Runner(Vcpu& vcpu);
    ~Runner();
    // Kicks (immediate_exit + signal, as colod does) and waits; returns the kick latency in ns.
    // A kick that has not ended KVM_RUN within 30 s fails the test case, says so on stderr with
    // the kernel's view of the threads, and is repeated until KVM_RUN returns.
    int64_t kick_and_join();
    // Waits for KVM_RUN to return by itself; a test failure (after a kick, so the thread ends)
    // if it has not within `seconds` (times the run's time scale, at most 120 s: below the
    // CTest timeout), with the kernel's view of the threads on stderr.
    void join(int seconds = 60);
    // True once KVM_RUN has returned (the thread is about to end).
    bool returned() const { return m_returned_at.load() != 0; }
    int result() const { return m_result; }
    int error() const { return m_errno; }

private:
    Vcpu& m_vcpu;
    std::atomic<int64_t> m_returned_at{0};
    int m_result = 0;
    int m_errno = 0;
    std::thread m_thread;
};

// Reads the guest binary built for the tests.
std::vector<uint8_t> guest_binary(const std::string& name);

}  // namespace colod::softvm_test
