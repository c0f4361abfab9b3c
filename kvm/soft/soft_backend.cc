// SPDX-License-Identifier: GPL-2.0-or-later
// The software backend: the system handle (what /dev/kvm answers) and the VM handle.
#include "kvm/soft/soft_backend.h"

#include <cerrno>
#include <cstring>

#include "kvm/soft/cpuid.h"
#include "kvm/kernel_abi.h"
#include "kvm/soft/soft_vcpu.h"
#include "kvm/soft/soft_vm.h"

namespace colod::kvm {
namespace soft {

namespace {

int fail(int err) {
    errno = err;
    return -1;
}

class VmHandle final : public Handle {
public:
    explicit VmHandle(std::shared_ptr<SoftVm> vm) : m_vm(std::move(vm)) {}
    int ioctl(unsigned long request, unsigned long arg) override { return m_vm->ioctl(request, arg); }
    base::Result<std::unique_ptr<Handle>> create(unsigned long request, unsigned long arg) override {
        if (request != KVM_CREATE_VCPU)
            return base::Error(base::Errc::Invalid, "a VM creates only vCPUs", EINVAL);
        return m_vm->create_vcpu(arg);
    }
    base::Result<kvm_run*> map_run(size_t) override {
        return base::Error(base::Errc::Invalid, "a VM has no kvm_run", EINVAL);
    }

private:
    std::shared_ptr<SoftVm> m_vm;
};

class SystemHandle final : public Handle {
public:
    int ioctl(unsigned long request, unsigned long arg) override {
        // SAFETY: pointer arguments have the type `request` defines in linux/kvm.h.
        switch (request) {
        case KVM_GET_API_VERSION:
            return arg ? fail(EINVAL) : KVM_API_VERSION;
        case KVM_CHECK_EXTENSION:
            return soft_check_extension(static_cast<long>(arg));
        case KVM_GET_VCPU_MMAP_SIZE:
            return arg ? fail(EINVAL) : static_cast<int>(k_vcpu_mmap_size);
        case KVM_GET_SUPPORTED_CPUID: {
            auto* cpuid = reinterpret_cast<kvm_cpuid2*>(arg);
            const auto& table = supported_cpuid();
            if (cpuid->nent < table.size()) {
                // Tell the caller how many entries it needs (beyond KVM, which leaves nent).
                cpuid->nent = static_cast<uint32_t>(table.size());
                return fail(E2BIG);
            }
            cpuid->nent = static_cast<uint32_t>(table.size());
            std::memcpy(abi::cpuid_entries(cpuid), table.data(), table.size() * sizeof(kvm_cpuid_entry2));
            return 0;
        }
        case KVM_GET_MSR_INDEX_LIST: {
            auto* list = reinterpret_cast<kvm_msr_list*>(arg);
            auto indices = msr_index_list();
            uint32_t room = list->nmsrs;
            list->nmsrs = static_cast<uint32_t>(indices.size());
            if (room < indices.size())
                return fail(E2BIG);
            std::memcpy(abi::msr_list_indices(list), indices.data(), indices.size_bytes());
            return 0;
        }
        case KVM_CREATE_VM:
            return fail(EINVAL);  // through create(): a soft VM is not a file descriptor
        default:
            return fail(ENOTTY);
        }
    }

    base::Result<std::unique_ptr<Handle>> create(unsigned long request, unsigned long arg) override {
        if (request != KVM_CREATE_VM)
            return base::Error(base::Errc::Invalid, "the system creates only VMs", EINVAL);
        if (arg != 0)
            return base::Error(base::Errc::Invalid, fmt::format("KVM_CREATE_VM: machine type {}", arg), EINVAL);
        return std::unique_ptr<Handle>(new VmHandle(SoftVm::create()));
    }

    base::Result<kvm_run*> map_run(size_t) override {
        return base::Error(base::Errc::Invalid, "the system has no kvm_run", EINVAL);
    }
};

class SoftBackend final : public Backend {
public:
    std::string_view name() const override { return "soft"; }
    base::Result<std::unique_ptr<Handle>> open_system() override { return std::unique_ptr<Handle>(new SystemHandle()); }
};

}  // namespace

std::optional<std::string> internal_error_detail(Handle& vcpu) {
    auto* handle = dynamic_cast<VcpuHandleAccess*>(&vcpu);
    if (!handle)
        return std::nullopt;
    return handle->soft_vcpu().internal_error();
}

}  // namespace soft

std::unique_ptr<Backend> make_soft_backend() { return std::make_unique<soft::SoftBackend>(); }

}  // namespace colod::kvm
