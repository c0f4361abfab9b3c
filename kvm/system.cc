// SPDX-License-Identifier: GPL-2.0-or-later
#include "kvm/system.h"

#include <cerrno>

#include "kvm/kernel_abi.h"
#include "kvm/vm.h"

namespace colod::kvm {

namespace {

struct RequiredCap {
    long cap;
    const char* name;
    const char* why;
};

// Every capability colod depends on. Checked once at open so that a host that lacks one fails
// with a single clear line instead of an ioctl error deep inside a checkpoint.
constexpr RequiredCap k_required_caps[] = {
    {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY", "guest memory slots"},
    {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP", "the in-kernel LAPIC, IOAPIC and PIC"},
    {KVM_CAP_PIT2, "KVM_CAP_PIT2", "the in-kernel PIT"},
    {KVM_CAP_PIT_STATE2, "KVM_CAP_PIT_STATE2", "saving the PIT"},
    {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT", "pausing vCPUs without races"},
    {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID", "setting CPUID"},
    {KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE", "saving vCPU run state"},
    {KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS", "saving pending interrupts and exceptions"},
    {KVM_CAP_DEBUGREGS, "KVM_CAP_DEBUGREGS", "saving debug registers"},
    {KVM_CAP_XSAVE, "KVM_CAP_XSAVE", "saving FPU and vector state"},
    {KVM_CAP_XCRS, "KVM_CAP_XCRS", "saving XCR0"},
    {KVM_CAP_ADJUST_CLOCK, "KVM_CAP_ADJUST_CLOCK", "saving the guest clock"},
    {KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR", "VM set-up on Intel hosts"},
};

}  // namespace

const char* ioctl_name(unsigned long request) {
    switch (request) {
#define NAME(r) \
    case r: return #r;
        NAME(KVM_GET_API_VERSION)
        NAME(KVM_CHECK_EXTENSION)
        NAME(KVM_GET_VCPU_MMAP_SIZE)
        NAME(KVM_GET_SUPPORTED_CPUID)
        NAME(KVM_GET_MSR_INDEX_LIST)
        NAME(KVM_CREATE_VM)
        NAME(KVM_CREATE_VCPU)
        NAME(KVM_SET_USER_MEMORY_REGION)
        NAME(KVM_SET_TSS_ADDR)
        NAME(KVM_CREATE_IRQCHIP)
        NAME(KVM_CREATE_PIT2)
        NAME(KVM_IRQ_LINE)
        NAME(KVM_GET_IRQCHIP)
        NAME(KVM_SET_IRQCHIP)
        NAME(KVM_GET_PIT2)
        NAME(KVM_SET_PIT2)
        NAME(KVM_GET_CLOCK)
        NAME(KVM_SET_CLOCK)
        NAME(KVM_GET_DIRTY_LOG)
        NAME(KVM_CLEAR_DIRTY_LOG)
        NAME(KVM_ENABLE_CAP)
        NAME(KVM_RUN)
        NAME(KVM_GET_REGS)
        NAME(KVM_SET_REGS)
        NAME(KVM_GET_SREGS)
        NAME(KVM_SET_SREGS)
        NAME(KVM_GET_FPU)
        NAME(KVM_SET_FPU)
        NAME(KVM_GET_XSAVE)
        NAME(KVM_GET_XSAVE2)
        NAME(KVM_SET_XSAVE)
        NAME(KVM_GET_XCRS)
        NAME(KVM_SET_XCRS)
        NAME(KVM_GET_DEBUGREGS)
        NAME(KVM_SET_DEBUGREGS)
        NAME(KVM_GET_VCPU_EVENTS)
        NAME(KVM_SET_VCPU_EVENTS)
        NAME(KVM_GET_MP_STATE)
        NAME(KVM_SET_MP_STATE)
        NAME(KVM_GET_LAPIC)
        NAME(KVM_SET_LAPIC)
        NAME(KVM_GET_MSRS)
        NAME(KVM_SET_MSRS)
        NAME(KVM_SET_CPUID2)
        NAME(KVM_GET_TSC_KHZ)
        NAME(KVM_SET_TSC_KHZ)
#undef NAME
    }
    return "KVM ioctl";
}

base::Result<int> checked_ioctl(Handle& handle, unsigned long request, unsigned long arg) {
    int ret = handle.ioctl(request, arg);
    if (ret < 0)
        return base::Error::from_errno(ioctl_name(request));
    return ret;
}

base::Result<std::unique_ptr<Backend>> System::make_backend(std::string_view name) {
    if (name == "kvm")
        return make_host_backend();
    if (name == "soft")
        return make_soft_backend();
    return base::Error::make(base::Errc::Invalid, "unknown KVM backend '{}' (expected kvm or soft)", name);
}

base::Result<System> System::open(Backend& backend) {
    System system;
    system.m_backend_name = std::string(backend.name());
    auto handle = backend.open_system();
    if (!handle) {
        const auto& error = handle.error();
        if (error.sys_errno() == ENOENT || error.sys_errno() == ENODEV || error.sys_errno() == ENXIO)
            return base::Error(base::Errc::Unsupported,
                               error.message() +
                                   ": this host has no KVM (load kvm_intel or kvm_amd and enable virtualization in "
                                   "the firmware, or set 'accelerator = soft')",
                               error.sys_errno());
        if (error.sys_errno() == EACCES || error.sys_errno() == EPERM)
            return base::Error(base::Errc::Unsupported,
                               error.message() + ": no permission to use KVM (run as root or join the kvm group)",
                               error.sys_errno());
        return std::move(handle).error();
    }
    system.m_handle = std::move(handle).value();
    Handle& h = *system.m_handle;

    auto api = checked_ioctl(h, KVM_GET_API_VERSION, 0ul);
    if (!api)
        return std::move(api).error().context("not a KVM device");
    int version = api.value();
    if (version != KVM_API_VERSION)
        return base::Error::make(base::Errc::Unsupported, "KVM API version {} (colod needs {})", version,
                                 KVM_API_VERSION);
    for (const auto& required : k_required_caps) {
        if (system.check_extension(required.cap) <= 0)
            return base::Error::make(base::Errc::Unsupported, "KVM lacks {} (needed for {})", required.name,
                                     required.why);
    }

    system.m_vcpu_mmap_size = static_cast<size_t>(TRY(checked_ioctl(h, KVM_GET_VCPU_MMAP_SIZE, 0ul)));
    if (system.m_vcpu_mmap_size < sizeof(kvm_run))
        return base::Error::make(base::Errc::Unsupported, "KVM_GET_VCPU_MMAP_SIZE {} is smaller than kvm_run",
                                 system.m_vcpu_mmap_size);

    // Supported CPUID: grow the buffer until the kernel stops answering E2BIG. The arrays are
    // addressed at the kernel's offsets (kvm/kernel_abi.h), not through the C++ members.
    for (uint32_t nent = 64;; nent *= 2) {
        std::vector<uint64_t> buffer((abi::k_cpuid2_header + nent * sizeof(kvm_cpuid_entry2) + 7) / 8);
        // SAFETY: 8-byte aligned, sized for the kernel's header and nent entries.
        auto* cpuid = reinterpret_cast<kvm_cpuid2*>(buffer.data());
        cpuid->nent = nent;
        if (h.ioctl(KVM_GET_SUPPORTED_CPUID, reinterpret_cast<unsigned long>(cpuid)) == 0) {
            const kvm_cpuid_entry2* entries = abi::cpuid_entries(cpuid);
            system.m_supported_cpuid.assign(entries, entries + cpuid->nent);
            break;
        }
        if (errno != E2BIG || nent >= 4096)
            return base::Error::from_errno("KVM_GET_SUPPORTED_CPUID");
    }

    // MSR index list: the first call reports the count with E2BIG.
    uint32_t probe[1] = {0};  // struct kvm_msr_list's kernel header is just nmsrs
    if (h.ioctl(KVM_GET_MSR_INDEX_LIST, reinterpret_cast<unsigned long>(probe)) < 0 && errno != E2BIG)
        return base::Error::from_errno("KVM_GET_MSR_INDEX_LIST");
    std::vector<uint32_t> buffer(1 + probe[0]);
    buffer[0] = probe[0];
    TRY(checked_ioctl(h, KVM_GET_MSR_INDEX_LIST, buffer.data()));
    const uint32_t* indices = abi::msr_list_indices(buffer.data());
    system.m_msr_index_list.assign(indices, indices + buffer[0]);
    return system;
}

int System::check_extension(long capability) const {
    int ret = m_handle->ioctl(KVM_CHECK_EXTENSION, static_cast<unsigned long>(capability));
    return ret < 0 ? 0 : ret;
}

base::Result<Vm> System::create_vm() {
    auto handle = TRY(m_handle->create(KVM_CREATE_VM, 0));
    Vm vm(std::move(handle), m_vcpu_mmap_size, m_msr_index_list);
    // Intel hosts need three pages for the real-mode TSS even though colod boots straight into
    // long mode; the address sits just under the IOAPIC and never overlaps RAM.
    TRY(checked_ioctl(*vm.m_handle, KVM_SET_TSS_ADDR, 0xfffbd000ul));
    return vm;
}

}  // namespace colod::kvm
