// SPDX-License-Identifier: GPL-2.0-or-later
// The seam under libkvm: one KVM object (the system, a VM or a vCPU) that answers ioctls.
//
// HostBackend hands out handles over real /dev/kvm file descriptors. SoftBackend (kvm/soft/)
// implements the same ioctls, with the same structs and the same semantics, in software, for
// machines without hardware virtualization. Everything above this seam — libkvm's System, Vm
// and Vcpu and all of core/ — is the same code for both.
#pragma once

#include "kvm/kernel_abi.h"

#include <cstddef>
#include <memory>
#include <string_view>

#include "base/result.h"

namespace colod::kvm {

class Handle {
public:
    virtual ~Handle() = default;

    // One ioctl, with the contract of ioctl(2): a non-negative result, or -1 with errno set.
    // `arg` is the ioctl's argument: a pointer for most requests, an integer for a few
    // (KVM_CHECK_EXTENSION, KVM_CREATE_VCPU, KVM_RUN ...).
    virtual int ioctl(unsigned long request, unsigned long arg) = 0;

    // The ioctls that create objects (KVM_CREATE_VM on the system, KVM_CREATE_VCPU on a VM)
    // return a new handle instead of a file descriptor.
    virtual base::Result<std::unique_ptr<Handle>> create(unsigned long request, unsigned long arg) = 0;

    // The vCPU's shared kvm_run structure (mmap of the vCPU fd for the host backend). Valid
    // as long as the handle lives. Only for vCPU handles.
    virtual base::Result<kvm_run*> map_run(size_t mmap_size) = 0;
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual std::string_view name() const = 0;
    // Opens the system object (/dev/kvm for the host backend).
    virtual base::Result<std::unique_ptr<Handle>> open_system() = 0;
};

enum class BackendKind { Host, Soft };

// The host backend over `device` (normally /dev/kvm).
std::unique_ptr<Backend> make_host_backend(std::string device = "/dev/kvm");
// The software backend: an x86-64 interpreter with in-kernel-style LAPIC, IOAPIC, PIC and PIT.
std::unique_ptr<Backend> make_soft_backend();

}  // namespace colod::kvm
