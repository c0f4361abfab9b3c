// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include "kvm/kernel_abi.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/result.h"
#include "kvm/handle.h"

namespace colod::kvm {

class Vm;

// The hypervisor itself (/dev/kvm): API version, capabilities, what vCPUs may be given.
class System {
public:
    // Opens the backend's system object and checks the API version and every capability colod
    // relies on; a missing one is an Unsupported error naming the capability.
    static base::Result<System> open(Backend& backend);

    // Picks the backend: "kvm" (the default: /dev/kvm, an error if it is absent), or "soft"
    // (the software backend, for machines without hardware virtualization).
    static base::Result<std::unique_ptr<Backend>> make_backend(std::string_view name);

    System(System&&) = default;
    System& operator=(System&&) = default;

    // KVM_CHECK_EXTENSION on the system object: 0 when absent, else the capability's value.
    int check_extension(long capability) const;
    size_t vcpu_mmap_size() const { return m_vcpu_mmap_size; }
    const std::vector<kvm_cpuid_entry2>& supported_cpuid() const { return m_supported_cpuid; }
    const std::vector<uint32_t>& msr_index_list() const { return m_msr_index_list; }
    std::string_view backend_name() const { return m_backend_name; }

    base::Result<Vm> create_vm();

private:
    System() = default;
    std::unique_ptr<Handle> m_handle;
    std::string m_backend_name;
    size_t m_vcpu_mmap_size = 0;
    std::vector<kvm_cpuid_entry2> m_supported_cpuid;
    std::vector<uint32_t> m_msr_index_list;
};

// Name of a KVM ioctl request, for error messages ("KVM_SET_SREGS: Invalid argument").
const char* ioctl_name(unsigned long request);

// Runs one ioctl on `handle`; a failure becomes an Error naming the ioctl and errno.
base::Result<int> checked_ioctl(Handle& handle, unsigned long request, unsigned long arg);
template <typename T>
base::Result<int> checked_ioctl(Handle& handle, unsigned long request, T* arg) {
    // SAFETY: `arg` is the struct type `request` is defined with in linux/kvm.h.
    return checked_ioctl(handle, request, reinterpret_cast<unsigned long>(arg));
}

}  // namespace colod::kvm
