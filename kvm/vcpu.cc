// SPDX-License-Identifier: GPL-2.0-or-later
#include "kvm/vcpu.h"

#include <csignal>
#include <cstring>
#include <mutex>

#include "base/log.h"
#include "kvm/kernel_abi.h"
#include "kvm/system.h"

namespace colod::kvm {

namespace {

constexpr uint32_t k_msr_tsc_deadline = 0x6e0;

// KVM_{GET,SET,HAS}_DEVICE_ATTR on a vCPU for its TSC offset, the value at `value`.
kvm_device_attr tsc_offset_attr(int64_t* value) {
    kvm_device_attr attr{};
    attr.group = KVM_VCPU_TSC_CTRL;
    attr.attr = KVM_VCPU_TSC_OFFSET;
    attr.addr = reinterpret_cast<uint64_t>(value);
    return attr;
}

// MSRs whose loss would change what the guest does; a restore that cannot set one of these
// fails. Others (performance counters, machine-check banks a host may not offer) are skipped
// with a warning.
bool essential_msr(uint32_t index) {
    switch (index) {
    case 0x10:        // IA32_TSC
    case 0x174:       // SYSENTER_CS
    case 0x175:       // SYSENTER_ESP
    case 0x176:       // SYSENTER_EIP
    case 0x277:       // PAT
    case 0x6e0:       // TSC_DEADLINE
    case 0xc0000081:  // STAR
    case 0xc0000082:  // LSTAR
    case 0xc0000083:  // CSTAR
    case 0xc0000084:  // FMASK
    case 0xc0000102:  // KERNEL_GS_BASE
    case 0xc0000103:  // TSC_AUX
    case 0x12:        // kvmclock system time (old)
    case 0x4b564d01:  // kvmclock system time
        return true;
    default:
        return false;
    }
}

// kvmclock's wall-clock MSRs are VM-wide triggers, not state: writing one makes KVM write the
// host's idea of the guest's boot time (and a new version number) into guest RAM at that
// address. The guest reads that structure only when it boots or resumes from suspend. Written
// on every restore, it would make a replica's RAM differ from its primary's page by page at each
// checkpoint, so a restore leaves them out.
bool restore_skips_msr(uint32_t index) {
    return index == 0x11 /* MSR_KVM_WALL_CLOCK */ || index == 0x4b564d00 /* MSR_KVM_WALL_CLOCK_NEW */;
}

// A kvm_msrs header followed by `count` entries, in one aligned buffer laid out as the kernel
// reads it (kvm/kernel_abi.h: the C++ member `entries` sits at the wrong offset).
class MsrBuffer {
public:
    explicit MsrBuffer(size_t count)
        : m_words((abi::k_msrs_header + count * sizeof(kvm_msr_entry) + 7) / 8) {
        header()->nmsrs = static_cast<uint32_t>(count);
    }
    // SAFETY: m_words is 8-byte aligned and sized for the kernel's header and `count` entries.
    kvm_msrs* header() { return reinterpret_cast<kvm_msrs*>(m_words.data()); }
    kvm_msr_entry* entries() { return abi::msr_entries(m_words.data()); }

private:
    std::vector<uint64_t> m_words;
};

void kick_handler(int) {
    // Nothing to do: the kicker sets kvm_run->immediate_exit before sending the signal; the
    // signal only has to interrupt a KVM_RUN already in progress (EINTR).
}

}  // namespace

int kick_signal() { return SIGUSR1; }

void install_kick_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction action {};
        action.sa_handler = kick_handler;
        sigemptyset(&action.sa_mask);
        action.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
        sigaction(kick_signal(), &action, nullptr);
    });
}

base::Result<RunResult> Vcpu::run() {
    int ret = m_handle->ioctl(KVM_RUN, 0);
    if (ret == 0)
        return RunResult::Exit;
    if (errno == EINTR || errno == EAGAIN)
        return RunResult::Interrupted;
    return base::Error::from_errno("KVM_RUN");
}

void Vcpu::set_immediate_exit(bool on) {
    __atomic_store_n(&m_run->immediate_exit, on ? 1 : 0, __ATOMIC_SEQ_CST);
}

base::Result<void> Vcpu::set_cpuid(std::span<const kvm_cpuid_entry2> entries) {
    std::vector<uint64_t> words((abi::k_cpuid2_header + entries.size() * sizeof(kvm_cpuid_entry2) + 7) / 8);
    // SAFETY: 8-byte aligned buffer sized for the kernel's header and every entry.
    auto* cpuid = reinterpret_cast<kvm_cpuid2*>(words.data());
    cpuid->nent = static_cast<uint32_t>(entries.size());
    std::memcpy(abi::cpuid_entries(cpuid), entries.data(), entries.size_bytes());
    TRY(checked_ioctl(*m_handle, KVM_SET_CPUID2, cpuid));
    return base::ok();
}

#define SIMPLE_STATE(type, getter, setter, get_ioctl, set_ioctl)       \
    base::Result<type> Vcpu::getter() {                                \
        type value{};                                                  \
        TRY(checked_ioctl(*m_handle, get_ioctl, &value));              \
        return value;                                                  \
    }                                                                  \
    base::Result<void> Vcpu::setter(const type& value) {               \
        type copy = value;                                             \
        TRY(checked_ioctl(*m_handle, set_ioctl, &copy));               \
        return base::ok();                                             \
    }

SIMPLE_STATE(kvm_regs, regs, set_regs, KVM_GET_REGS, KVM_SET_REGS)
SIMPLE_STATE(kvm_sregs, sregs, set_sregs, KVM_GET_SREGS, KVM_SET_SREGS)
SIMPLE_STATE(kvm_fpu, fpu, set_fpu, KVM_GET_FPU, KVM_SET_FPU)
SIMPLE_STATE(kvm_mp_state, mp_state, set_mp_state, KVM_GET_MP_STATE, KVM_SET_MP_STATE)
SIMPLE_STATE(kvm_lapic_state, lapic, set_lapic, KVM_GET_LAPIC, KVM_SET_LAPIC)
SIMPLE_STATE(kvm_vcpu_events, events, set_events, KVM_GET_VCPU_EVENTS, KVM_SET_VCPU_EVENTS)
#undef SIMPLE_STATE

base::Result<void> Vcpu::msrs(std::span<kvm_msr_entry> entries) {
    MsrBuffer buffer(entries.size());
    for (size_t i = 0; i < entries.size(); ++i)
        buffer.entries()[i].index = entries[i].index;
    int done = TRY(checked_ioctl(*m_handle, KVM_GET_MSRS, buffer.header()));
    if (static_cast<size_t>(done) != entries.size())
        return base::Error::make(base::Errc::Failed, "KVM_GET_MSRS: MSR {:#x} cannot be read",
                                 entries[static_cast<size_t>(done)].index);
    for (size_t i = 0; i < entries.size(); ++i)
        entries[i].data = buffer.entries()[i].data;
    return base::ok();
}

base::Result<void> Vcpu::set_msrs(std::span<const kvm_msr_entry> entries) {
    // KVM stops at the first MSR it refuses; skip refused non-essential ones and go on.
    size_t start = 0;
    while (start < entries.size()) {
        size_t count = entries.size() - start;
        MsrBuffer buffer(count);
        std::memcpy(buffer.entries(), entries.data() + start, count * sizeof(kvm_msr_entry));
        int done = TRY(checked_ioctl(*m_handle, KVM_SET_MSRS, buffer.header()));
        start += static_cast<size_t>(done);
        if (start >= entries.size())
            break;
        uint32_t refused = entries[start].index;
        if (essential_msr(refused))
            return base::Error::make(base::Errc::Failed, "KVM_SET_MSRS: MSR {:#x} refused (value {:#x})", refused,
                                     entries[start].data);
        base::logf(base::Level::Warning, base::Event::None, "vCPU {}: KVM refused MSR {:#x}; skipped", m_id, refused);
        ++start;
    }
    return base::ok();
}

base::Result<void> Vcpu::probe(const std::vector<uint32_t>& candidates) {
    int64_t unused = 0;
    kvm_device_attr attr = tsc_offset_attr(&unused);
    m_has_tsc_offset = m_handle->ioctl(KVM_HAS_DEVICE_ATTR, reinterpret_cast<unsigned long>(&attr)) == 0;
    m_saved_msrs.clear();
    for (uint32_t index : candidates) {
        MsrBuffer buffer(1);
        buffer.entries()[0].index = index;
        if (m_handle->ioctl(KVM_GET_MSRS, reinterpret_cast<unsigned long>(buffer.header())) == 1)
            m_saved_msrs.push_back(index);
    }
    return base::ok();
}

base::Result<VcpuState> Vcpu::save_state() {
    VcpuState state;
    state.regs = TRY(regs());
    state.sregs = TRY(sregs());
    state.xsave.assign(m_xsave_bytes / sizeof(uint32_t), 0);
    TRY(checked_ioctl(*m_handle, m_xsave_bytes > sizeof(kvm_xsave) ? KVM_GET_XSAVE2 : KVM_GET_XSAVE,
                      state.xsave.data()));
    TRY(checked_ioctl(*m_handle, KVM_GET_XCRS, &state.xcrs));
    TRY(checked_ioctl(*m_handle, KVM_GET_DEBUGREGS, &state.debugregs));
    state.events = TRY(events());
    state.mp_state = TRY(mp_state());
    state.lapic = TRY(lapic());
    state.msrs.resize(m_saved_msrs.size());
    for (size_t i = 0; i < m_saved_msrs.size(); ++i)
        state.msrs[i] = kvm_msr_entry{m_saved_msrs[i], 0, 0};
    TRY(msrs(state.msrs));
    int khz = m_handle->ioctl(KVM_GET_TSC_KHZ, 0);
    state.tsc_khz = khz > 0 ? static_cast<uint32_t>(khz) : 0;
    return state;
}

base::Result<int64_t> Vcpu::tsc_offset() {
    int64_t value = 0;
    kvm_device_attr attr = tsc_offset_attr(&value);
    TRY(checked_ioctl(*m_handle, KVM_GET_DEVICE_ATTR, &attr));
    return value;
}

base::Result<void> Vcpu::set_tsc_offset(int64_t offset) {
    kvm_device_attr attr = tsc_offset_attr(&offset);
    TRY(checked_ioctl(*m_handle, KVM_SET_DEVICE_ATTR, &attr));
    return base::ok();
}

base::Result<uint64_t> Vcpu::host_tsc() {
    kvm_msr_entry tsc[] = {{k_msr_tsc, 0, 0}};
    TRY(msrs(tsc));
    int64_t offset = TRY(tsc_offset());
    return tsc[0].data - static_cast<uint64_t>(offset);
}

base::Result<void> Vcpu::load_state(const VcpuState& state, std::optional<uint64_t> host_tsc) {
    if (state.xsave.size() * sizeof(uint32_t) > m_xsave_bytes)
        return base::Error::make(base::Errc::Mismatch, "XSAVE area of {} bytes does not fit this host's {}",
                                 state.xsave.size() * sizeof(uint32_t), m_xsave_bytes);
    if (state.tsc_khz != 0) {
        int current = m_handle->ioctl(KVM_GET_TSC_KHZ, 0);
        if (current > 0 && static_cast<uint32_t>(current) != state.tsc_khz &&
            m_handle->ioctl(KVM_SET_TSC_KHZ, state.tsc_khz) < 0)
            base::logf(base::Level::Warning, base::Event::None, "vCPU {}: guest TSC runs at {} kHz here, not the saved {} kHz ({})",
                       m_id, current, state.tsc_khz, std::strerror(errno));
    }
    TRY(set_sregs(state.sregs));
    TRY(set_regs(state.regs));
    std::vector<uint32_t> xsave(m_xsave_bytes / sizeof(uint32_t), 0);
    std::copy(state.xsave.begin(), state.xsave.end(), xsave.begin());
    TRY(checked_ioctl(*m_handle, KVM_SET_XSAVE, xsave.data()));
    kvm_xcrs xcrs = state.xcrs;
    TRY(checked_ioctl(*m_handle, KVM_SET_XCRS, &xcrs));
    // IA32_TSC_DEADLINE waits for the LAPIC: KVM ignores a write of it unless the LAPIC timer
    // is in TSC-deadline mode already, and a fresh vCPU's is not, so written with the others it
    // would be lost and the guest's next timer interrupt never come.
    // With host_tsc, IA32_TSC is not written at all: the offset says it exactly, before the
    // deadline is armed against it.
    std::vector<kvm_msr_entry> msrs;
    std::vector<kvm_msr_entry> after_lapic;
    msrs.reserve(state.msrs.size());
    for (const auto& entry : state.msrs) {
        if (restore_skips_msr(entry.index))
            continue;
        if (entry.index == k_msr_tsc && host_tsc) {
            TRY(set_tsc_offset(static_cast<int64_t>(entry.data - *host_tsc)));
            continue;
        }
        (entry.index == k_msr_tsc_deadline ? after_lapic : msrs).push_back(entry);
    }
    TRY(set_msrs(msrs));
    TRY(set_mp_state(state.mp_state));
    TRY(set_lapic(state.lapic));
    TRY(set_msrs(after_lapic));
    TRY(set_events(state.events));
    kvm_debugregs debugregs = state.debugregs;
    TRY(checked_ioctl(*m_handle, KVM_SET_DEBUGREGS, &debugregs));
    return base::ok();
}

}  // namespace colod::kvm
