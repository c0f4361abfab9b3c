// SPDX-License-Identifier: GPL-2.0-or-later
// One software vCPU: the interpreter's architectural state, its LAPIC, its kvm_run page, the
// KVM_RUN loop, and the CpuBus through which the interpreter reaches the machine.
//
// Threading follows KVM: all vCPU ioctls are serialised by one mutex (KVM's vcpu->mutex), so
// an ioctl from another thread waits while KVM_RUN runs. Other threads reach the vCPU only
// through its LAPIC (deliver()) and kick(), and through kvm_run->immediate_exit.
#pragma once

#include "kvm/kernel_abi.h"

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "base/fd.h"
#include "base/result.h"
#include "kvm/soft/cpu.h"
#include "kvm/soft/cpuid.h"
#include "kvm/soft/lapic.h"

namespace colod::kvm::soft {

class SoftVm;

// KVM_GET_VCPU_MMAP_SIZE on x86: kvm_run, the PIO data page, the coalesced-MMIO ring page.
inline constexpr size_t k_vcpu_mmap_size = 3 * 4096;
inline constexpr uint32_t k_pio_data_offset = 4096;

// The software backend's vCPU handles implement this too, so that soft-only accessors
// (internal_error_detail()) can reach the vCPU behind a Handle.
class VcpuHandleAccess {
public:
    virtual ~VcpuHandleAccess() = default;
    virtual class SoftVcpu& soft_vcpu() = 0;
};

class SoftVcpu final : public CpuBus {
public:
    static base::Result<std::unique_ptr<SoftVcpu>> create(SoftVm& vm, uint32_t id);
    ~SoftVcpu() override;

    int ioctl(unsigned long request, unsigned long arg);
    kvm_run* run_struct() const { return reinterpret_cast<kvm_run*>(m_run.data()); }
    size_t run_size() const { return m_run.size(); }

    uint32_t id() const { return m_id; }
    Lapic& lapic() { return m_lapic; }
    // Wakes the vCPU if it waits in KVM_RUN (halted, or waiting for INIT/SIPI). Any thread.
    void kick();
    void request_tlb_flush() { m_flush_tlb.store(true, std::memory_order_relaxed); }

    // The interpreter's explanation of the last KVM_EXIT_INTERNAL_ERROR.
    std::string internal_error() const;

    // CpuBus.
    uint8_t* ram_page(uint64_t gpa, Access access) override;
    BusResult mmio_read(uint64_t gpa, void* data, uint32_t len) override;
    BusResult mmio_write(uint64_t gpa, const void* data, uint32_t len) override;
    BusResult pio_in(uint16_t port, void* data, uint32_t size) override;
    BusResult pio_out(uint16_t port, const void* data, uint32_t size) override;
    bool rdmsr(uint32_t index, uint64_t& value) override;
    bool wrmsr(uint32_t index, uint64_t value) override;
    void cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) override;
    int pending_interrupt() override;
    void acknowledge_interrupt(int vector) override;
    uint64_t read_cr8() override;
    void write_cr8(uint64_t value) override;
    uint64_t tsc() override;

private:
    SoftVcpu(SoftVm& vm, uint32_t id, base::Fd event, base::Mapping run);

    enum class Pending : uint8_t { None, PioIn, MmioRead };
    enum class Wait : uint8_t { Woken, Interrupted };
    enum class Initiator : uint8_t { Guest, Host };

    void reset_state(bool init_event);
    int run();
    int interrupted();
    bool immediate_exit() const;
    void accept_events();
    void process_events(int64_t now);
    bool wake_condition();
    Wait wait(int64_t deadline);
    int64_t next_deadline();
    void finish_exit();

    bool get_msr(uint32_t index, uint64_t& value);
    bool set_msr(uint32_t index, uint64_t value, Initiator initiator);

    int get_sregs(kvm_sregs& sregs);
    int set_sregs(const kvm_sregs& sregs);
    int set_regs(const kvm_regs& regs);
    int get_events(kvm_vcpu_events& events);
    int set_events(const kvm_vcpu_events& events);
    int set_mp_state(const kvm_mp_state& state);
    int get_msrs(kvm_msrs& msrs);
    int set_msrs(kvm_msrs& msrs);
    int set_cpuid(const kvm_cpuid2& cpuid);
    int get_cpuid(kvm_cpuid2& cpuid);
    int set_xsave(const kvm_xsave& xsave);
    int set_xcrs(const kvm_xcrs& xcrs);
    int set_debugregs(const kvm_debugregs& debugregs);
    int set_tsc_khz(unsigned long khz);
    void get_fpu(kvm_fpu& fpu) const;
    void set_fpu(const kvm_fpu& fpu);

    SoftVm& m_vm;
    uint32_t m_id;
    base::Fd m_event;
    base::Mapping m_run;
    std::mutex m_ioctl_lock;

    Cpu m_cpu;
    CpuState m_state;
    Lapic m_lapic;
    CpuidTable m_cpuid;
    TscClock m_tsc;
    uint32_t m_mp_state = KVM_MP_STATE_RUNNABLE;
    bool m_ran = false;
    const bool m_amd = vendor_is_amd();
    bool m_nmi_masked = false;
    uint32_t m_nmi_pending = 0;
    uint32_t m_sipi_vector = 0;
    uint64_t m_misc_enable = 0;
    uint64_t m_cr8_no_irqchip = 0;  // CR8 when the LAPIC is not in the kernel
    alignas(64) uint8_t m_xsave[4096]{};
    kvm_debugregs m_debugregs{};

    // The exit in progress.
    Pending m_pending = Pending::None;
    uint64_t m_exit_gpa = 0;
    uint32_t m_exit_len = 0;
    bool m_exit_recorded = false;
    std::string m_internal_error;

    enum class Source : uint8_t { Lapic, Pic };
    Source m_interrupt_source = Source::Lapic;

    std::atomic<bool> m_waiting{false};
    std::atomic<bool> m_flush_tlb{false};
    uint64_t m_budget = 1024;
};

}  // namespace colod::kvm::soft
