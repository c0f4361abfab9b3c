/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The KVM ioctl numbers as the kernel's C headers define them. Compiled as C on purpose: in C an
 * empty struct has size 0, so these are the numbers the kernel decodes (see kvm/kernel_abi.h). */
#include <linux/kvm.h>

const unsigned long colod_c_kvm_numbers[] = {
#define KVM_REQUEST(name) name,
#include "kernel_requests.def"
#undef KVM_REQUEST
};
const unsigned colod_c_kvm_numbers_count = sizeof colod_c_kvm_numbers / sizeof colod_c_kvm_numbers[0];
