// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include "kvm/kernel_abi.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "base/result.h"
#include "kvm/handle.h"
#include "kvm/state.h"

namespace colod::kvm {

class Vm;

constexpr uint32_t k_msr_tsc = 0x10;  // IA32_TSC

// How one KVM_RUN ended.
enum class RunResult {
    Exit,         // KVM_RUN returned 0: kvm_run->exit_reason says why
    Interrupted,  // EINTR: a kick (signal or immediate_exit); nothing pending is lost
};

// One virtual CPU. Its KVM_RUN must always be called from the same thread (KVM's rule), and
// all of its other ioctls only while that thread is not inside KVM_RUN.
class Vcpu {
public:
    Vcpu(Vcpu&&) = default;
    Vcpu& operator=(Vcpu&&) = default;

    uint32_t id() const { return m_id; }
    kvm_run* run_struct() const { return m_run; }

    base::Result<RunResult> run();

    // Makes the next (or the current, once kicked) KVM_RUN return EINTR without running the
    // guest; any port I/O or MMIO completion still happens in that call. Safe from any thread.
    void set_immediate_exit(bool on);

    base::Result<void> set_cpuid(std::span<const kvm_cpuid_entry2> entries);

    base::Result<kvm_regs> regs();
    base::Result<void> set_regs(const kvm_regs& regs);
    base::Result<kvm_sregs> sregs();
    base::Result<void> set_sregs(const kvm_sregs& sregs);
    base::Result<kvm_fpu> fpu();
    base::Result<void> set_fpu(const kvm_fpu& fpu);
    base::Result<kvm_mp_state> mp_state();
    base::Result<void> set_mp_state(const kvm_mp_state& state);
    base::Result<kvm_lapic_state> lapic();
    base::Result<void> set_lapic(const kvm_lapic_state& lapic);
    base::Result<kvm_vcpu_events> events();
    base::Result<void> set_events(const kvm_vcpu_events& events);
    // Reads the given MSRs (index set by the caller); fails if the kernel refuses one.
    base::Result<void> msrs(std::span<kvm_msr_entry> entries);
    base::Result<void> set_msrs(std::span<const kvm_msr_entry> entries);

    // The MSRs worth saving: the system's index list minus those this vCPU cannot read.
    const std::vector<uint32_t>& saved_msr_indices() const { return m_saved_msrs; }

    // The guest's TSC offset (KVM_VCPU_TSC_OFFSET, Linux 5.16 on): guest TSC = host TSC (at
    // the guest's rate) + offset. Only this sets a guest's TSC exactly: a write of IA32_TSC goes
    // through KVM's TSC synchronisation, which keeps the old offset, or adds the time since the
    // last write, whenever the value written is within a second of what KVM expects.
    bool has_tsc_offset() const { return m_has_tsc_offset; }
    base::Result<int64_t> tsc_offset();
    base::Result<void> set_tsc_offset(int64_t offset);
    // The host's TSC at the guest's rate, now (the guest's TSC less its offset).
    base::Result<uint64_t> host_tsc();

    // Whole-vCPU capture and restore. The vCPU must not be inside KVM_RUN and must have
    // completed any pending I/O (one KVM_RUN with immediate_exit after an I/O exit).
    base::Result<VcpuState> save_state();
    // Restores in KVM's working order: sregs, regs, xsave, xcrs, MSRs, MP state, LAPIC,
    // TSC deadline, events, debug registers. CPUID and TSC frequency are set up by the owner
    // before the first run. With `host_tsc` (host_tsc() read once for all the machine's vCPUs,
    // has_tsc_offset() true) the guest's TSC is set through its offset, to the saved value as of
    // that host TSC; without, by writing IA32_TSC.
    base::Result<void> load_state(const VcpuState& state, std::optional<uint64_t> host_tsc = std::nullopt);

private:
    friend class Vm;
    Vcpu(uint32_t id, std::unique_ptr<Handle> handle, kvm_run* run, size_t xsave_bytes)
        : m_id(id), m_handle(std::move(handle)), m_run(run), m_xsave_bytes(xsave_bytes) {}
    // What this vCPU can save and set: the MSRs among `candidates` it can read, and whether
    // its TSC offset is reachable.
    base::Result<void> probe(const std::vector<uint32_t>& candidates);

    uint32_t m_id;
    std::unique_ptr<Handle> m_handle;
    kvm_run* m_run;
    size_t m_xsave_bytes;
    std::vector<uint32_t> m_saved_msrs;
    bool m_has_tsc_offset = false;
};

// The signal used to kick vCPU threads out of KVM_RUN (SIGUSR1). Installs a handler without
// SA_RESTART once per process, so a blocked KVM_RUN returns EINTR. Call before starting vCPU
// threads.
int kick_signal();
void install_kick_handler();

}  // namespace colod::kvm
