// SPDX-License-Identifier: GPL-2.0-or-later
// What the software backend offers beyond the KVM API (make_soft_backend() is in kvm/handle.h).
#pragma once

#include <optional>
#include <string>

#include "kvm/handle.h"

namespace colod::kvm::soft {

// For a vCPU handle of the software backend: the interpreter's description (instruction bytes,
// RIP, what it could not do) of the last KVM_EXIT_INTERNAL_ERROR, which real KVM can only hint
// at in kvm_run->internal.data. nullopt for any other handle.
std::optional<std::string> internal_error_detail(Handle& vcpu);

}  // namespace colod::kvm::soft
