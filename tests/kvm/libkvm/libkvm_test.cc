// SPDX-License-Identifier: GPL-2.0-or-later
// libkvm (System, Vm, Vcpu) against the test backend: every call colod uses, and the layout
// of the structs that end in flexible arrays (CPUID, MSR lists), which C++ gets wrong from
// some kernel headers.
#include <catch2/catch.hpp>

#include <sys/eventfd.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <thread>

#include "base/fd.h"
#include "kvm/system.h"
#include "kvm/vcpu.h"
#include "kvm/vm.h"
#include "tests/support/backend.h"

using namespace colod;

namespace {

constexpr uint32_t k_lstar = 0xc0000082, k_sysenter_cs = 0x174, k_star = 0xc0000081;

struct Setup {
    std::unique_ptr<kvm::Backend> backend;
    std::optional<kvm::System> system;
    std::optional<kvm::Vm> vm;
    base::Mapping ram;

    static Setup make() {
        Setup s;
        auto backend = kvm::System::make_backend(test::test_backend());
        REQUIRE(backend);
        s.backend = std::move(backend).value();
        auto system = kvm::System::open(*s.backend);
        REQUIRE(system);
        s.system.emplace(std::move(system).value());
        auto vm = s.system->create_vm();
        REQUIRE(vm);
        s.vm.emplace(std::move(vm).value());
        REQUIRE(s.vm->enable_manual_dirty_log());
        void* addr = ::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        REQUIRE(addr != MAP_FAILED);
        s.ram = base::Mapping(addr, 1 << 20);
        REQUIRE(s.vm->set_memory_slot(kvm::MemorySlot{0, 0, 1 << 20, addr, true}));
        REQUIRE(s.vm->create_irqchip_and_pit());
        return s;
    }
};

}  // namespace

TEST_CASE("System reports capabilities, CPUID and the MSR index list at the kernel's offsets", "[kvm]") {
    auto s = Setup::make();
    const auto& cpuid = s.system->supported_cpuid();
    REQUIRE_FALSE(cpuid.empty());
    auto leaf0 = std::find_if(cpuid.begin(), cpuid.end(), [](const auto& e) { return e.function == 0; });
    REQUIRE(leaf0 != cpuid.end());
    CHECK(leaf0->eax >= 1);  // highest basic leaf
    auto leaf1 = std::find_if(cpuid.begin(), cpuid.end(), [](const auto& e) { return e.function == 1; });
    REQUIRE(leaf1 != cpuid.end());
    CHECK((leaf1->edx & (1u << 9)) != 0);  // APIC
    const auto& msrs = s.system->msr_index_list();
    CHECK(std::count(msrs.begin(), msrs.end(), k_sysenter_cs) == 1);
    CHECK(std::count(msrs.begin(), msrs.end(), k_lstar) == 1);
    CHECK(std::count(msrs.begin(), msrs.end(), 0u) == 0);
    CHECK(s.system->vcpu_mmap_size() >= sizeof(kvm_run));
    CHECK(s.system->check_extension(KVM_CAP_IRQCHIP) > 0);
}

TEST_CASE("vCPU MSRs, CPUID and every state piece survive save and load into another VM", "[kvm]") {
    auto a = Setup::make();
    auto vcpu = a.vm->create_vcpu(0);
    REQUIRE(vcpu);
    REQUIRE(vcpu->set_cpuid(a.system->supported_cpuid()));
    CHECK(std::count(vcpu->saved_msr_indices().begin(), vcpu->saved_msr_indices().end(), k_lstar) == 1);
    kvm_msr_entry set[] = {{k_lstar, 0, 0xffffffff81234560ull}, {k_star, 0, 0x0023001000000000ull}};
    REQUIRE(vcpu->set_msrs(set));
    auto regs = vcpu->regs();
    REQUIRE(regs);
    regs->rax = 0x1122334455667788ull;
    regs->rip = 0x1000;
    regs->rflags = 0x2;
    REQUIRE(vcpu->set_regs(*regs));

    auto saved = vcpu->save_state();
    REQUIRE(saved);
    CHECK(saved->msrs.size() == vcpu->saved_msr_indices().size());
    auto lstar = std::find_if(saved->msrs.begin(), saved->msrs.end(), [](const auto& m) { return m.index == k_lstar; });
    REQUIRE(lstar != saved->msrs.end());
    CHECK(lstar->data == 0xffffffff81234560ull);
    CHECK(saved->xsave.size() * 4 >= 4096);
    auto vm_state = a.vm->save_state();
    REQUIRE(vm_state);

    auto b = Setup::make();
    auto other = b.vm->create_vcpu(0);
    REQUIRE(other);
    REQUIRE(other->set_cpuid(b.system->supported_cpuid()));
    REQUIRE(b.vm->load_state(*vm_state));
    REQUIRE(other->load_state(*saved));
    kvm_msr_entry read[] = {{k_lstar, 0, 0}, {k_star, 0, 0}};
    REQUIRE(other->msrs(read));
    CHECK(read[0].data == 0xffffffff81234560ull);
    CHECK(read[1].data == 0x0023001000000000ull);
    auto restored = other->regs();
    REQUIRE(restored);
    CHECK(restored->rax == 0x1122334455667788ull);
    auto again = other->save_state();
    REQUIRE(again);
    CHECK(again->msrs.size() == saved->msrs.size());
    CHECK(std::memcmp(&again->sregs, &saved->sregs, sizeof(kvm_sregs)) == 0);
    CHECK(std::memcmp(&again->lapic, &saved->lapic, sizeof(kvm_lapic_state)) == 0);
}

TEST_CASE("an armed TSC-deadline timer survives save and load into a fresh vCPU", "[kvm]") {
    // A fresh vCPU's LAPIC timer is not in TSC-deadline mode, and KVM ignores a write of
    // IA32_TSC_DEADLINE outside that mode: the deadline must be written after the LAPIC.
    constexpr uint32_t k_tsc = 0x10, k_tsc_deadline = 0x6e0, k_lvtt = 0x320;
    auto with_deadline = [](kvm::System& system) {
        auto cpuid = system.supported_cpuid();
        if (system.check_extension(KVM_CAP_TSC_DEADLINE_TIMER) > 0)
            for (auto& entry : cpuid)
                if (entry.function == 1)
                    entry.ecx |= 1u << 24;
        return cpuid;
    };
    auto a = Setup::make();
    if (a.system->check_extension(KVM_CAP_TSC_DEADLINE_TIMER) <= 0) {
        WARN("no TSC-deadline timer on this host: nothing to check");
        return;
    }
    auto vcpu = a.vm->create_vcpu(0);
    REQUIRE(vcpu);
    REQUIRE(vcpu->set_cpuid(with_deadline(*a.system)));
    auto lapic = vcpu->lapic();
    REQUIRE(lapic);
    uint32_t lvtt = 0x400ec;  // TSC-deadline mode, vector 0xec, not masked
    std::memcpy(lapic->regs + k_lvtt, &lvtt, 4);
    uint32_t svr = 0x1ff;     // software-enabled
    std::memcpy(lapic->regs + 0xf0, &svr, 4);
    REQUIRE(vcpu->set_lapic(*lapic));
    kvm_msr_entry tsc[] = {{k_tsc, 0, 0}};
    REQUIRE(vcpu->msrs(tsc));
    const uint64_t deadline = tsc[0].data + (uint64_t{1} << 40);  // minutes away at any TSC rate
    kvm_msr_entry arm[] = {{k_tsc_deadline, 0, deadline}};
    REQUIRE(vcpu->set_msrs(arm));
    auto saved = vcpu->save_state();
    REQUIRE(saved);
    auto saved_deadline = std::find_if(saved->msrs.begin(), saved->msrs.end(),
                                       [&](const auto& m) { return m.index == k_tsc_deadline; });
    REQUIRE(saved_deadline != saved->msrs.end());
    REQUIRE(saved_deadline->data == deadline);

    auto b = Setup::make();
    auto fresh = b.vm->create_vcpu(0);
    REQUIRE(fresh);
    REQUIRE(fresh->set_cpuid(with_deadline(*b.system)));
    REQUIRE(fresh->load_state(*saved));
    kvm_msr_entry read[] = {{k_tsc_deadline, 0, 0}};
    REQUIRE(fresh->msrs(read));
    CHECK(read[0].data == deadline);
}

TEST_CASE("a restored guest TSC is the saved one, even near where KVM expects it", "[kvm]") {
    // KVM "synchronises" a written IA32_TSC that lies within a second of what it expects from
    // the last write: it keeps the old offset or adds the time since. A COLO secondary loads a
    // checkpoint every few hundred milliseconds, right in that window; the offset sets it exactly.
    constexpr uint32_t k_tsc = 0x10;
    auto a = Setup::make();
    auto vcpu = a.vm->create_vcpu(0);
    REQUIRE(vcpu);
    REQUIRE(vcpu->set_cpuid(a.system->supported_cpuid()));
    auto saved = vcpu->save_state();
    REQUIRE(saved);
    auto entry = std::find_if(saved->msrs.begin(), saved->msrs.end(), [](const auto& m) { return m.index == k_tsc; });
    REQUIRE(entry != saved->msrs.end());
    const uint64_t tsc = entry->data;

    auto b = Setup::make();
    auto fresh = b.vm->create_vcpu(0);
    REQUIRE(fresh);
    REQUIRE(fresh->set_cpuid(b.system->supported_cpuid()));
    if (!fresh->has_tsc_offset()) {
        WARN("no KVM_VCPU_TSC_OFFSET here: the TSC is restored through IA32_TSC");
        REQUIRE(fresh->load_state(*saved));
        kvm_msr_entry read[] = {{k_tsc, 0, 0}};
        REQUIRE(fresh->msrs(read));
        CHECK(read[0].data >= tsc);
        return;
    }
    // Twice, the second time a fraction of a second after the first: inside KVM's window.
    for (int load = 0; load < 2; ++load) {
        if (load == 1)
            std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the gap under test
        auto before = fresh->host_tsc();
        REQUIRE(before);
        REQUIRE(fresh->load_state(*saved, *before));
        kvm_msr_entry read[] = {{k_tsc, 0, 0}};
        REQUIRE(fresh->msrs(read));
        auto after = fresh->host_tsc();
        REQUIRE(after);
        INFO("load " << load << ": guest TSC " << read[0].data << ", saved " << tsc << ", host TSC advanced "
                     << *after - *before);
        // The guest's TSC moved on from the saved value by no more than the host's did.
        CHECK(read[0].data >= tsc);
        CHECK(read[0].data - tsc <= *after - *before);
    }
}

TEST_CASE("dirty log, IRQ line and immediate exit through libkvm", "[kvm]") {
    auto s = Setup::make();
    std::vector<uint64_t> bitmap((256 + 63) / 64);
    REQUIRE(s.vm->dirty_log(0, bitmap));
    REQUIRE(s.vm->clear_dirty_log(0, 0, 256, bitmap));
    CHECK(std::all_of(bitmap.begin(), bitmap.end(), [](uint64_t w) { return w == 0; }));
    REQUIRE(s.vm->irq_line(4, true));
    REQUIRE(s.vm->irq_line(4, false));
    auto vcpu = s.vm->create_vcpu(0);
    REQUIRE(vcpu);
    REQUIRE(vcpu->set_cpuid(s.system->supported_cpuid()));
    vcpu->set_immediate_exit(true);
    auto run = vcpu->run();
    REQUIRE(run);
    CHECK(*run == kvm::RunResult::Interrupted);
    CHECK_FALSE(s.vm->create_irqchip_and_pit());  // twice: KVM says EEXIST, libkvm names the ioctl
}

TEST_CASE("ioeventfds through libkvm: assigned, refused twice, removed, and the error names the address", "[kvm]") {
    auto s = Setup::make();
    base::Fd bell(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    REQUIRE(bell);
    REQUIRE(s.vm->assign_ioeventfd(0xd0000050, 4, 1, bell.get()));
    auto twice = s.vm->assign_ioeventfd(0xd0000050, 4, 1, bell.get());
    REQUIRE(!twice);
    CHECK_THAT(twice.error().message(), Catch::Contains("0xd0000050"));
    REQUIRE(s.vm->deassign_ioeventfd(0xd0000050, 4, 1, bell.get()));
    CHECK(!s.vm->deassign_ioeventfd(0xd0000050, 4, 1, bell.get()));
    // Another value at the same address is a registration of its own.
    REQUIRE(s.vm->assign_ioeventfd(0xd0000050, 4, 0, bell.get()));
    REQUIRE(s.vm->assign_ioeventfd(0xd0000050, 4, 1, bell.get()));
}
