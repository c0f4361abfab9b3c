/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The KVM ioctl numbers as the kernel's C headers define them. Compiled as C on purpose: in C an
 * empty struct has size 0, so these are the numbers the kernel decodes (see kvm/kernel_abi.h). */
#include <linux/kvm.h>

const unsigned long colod_c_kvm_numbers[] = {
    KVM_GET_MSR_INDEX_LIST, KVM_GET_MSR_FEATURE_INDEX_LIST, KVM_GET_SUPPORTED_CPUID,
    KVM_GET_EMULATED_CPUID, KVM_SET_GSI_ROUTING,            KVM_GET_MSRS,
    KVM_SET_MSRS,           KVM_SET_CPUID,                  KVM_SET_SIGNAL_MASK,
    KVM_SET_CPUID2,         KVM_GET_CPUID2,                 KVM_GET_XSAVE,
    KVM_SET_XSAVE,          KVM_GET_XSAVE2,                 KVM_SET_PMU_EVENT_FILTER,
    /* Requests whose structs have no flexible array, as a check that the comparison works. */
    KVM_GET_REGS,           KVM_SET_SREGS,                  KVM_GET_LAPIC,
};
const unsigned colod_c_kvm_numbers_count = sizeof colod_c_kvm_numbers / sizeof colod_c_kvm_numbers[0];
