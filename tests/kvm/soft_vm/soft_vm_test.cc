// SPDX-License-Identifier: GPL-2.0-or-later
// The KVM API as colod uses it, checked on every available backend: the software backend
// always, the host backend (/dev/kvm) where it opens. Guests are the snippets in guests/.
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "harness.h"
#include "kvm/kernel_abi.h"
#include "kvm/soft/cpuid.h"
#include "kvm/soft/soft_backend.h"
#include "tests/support/backend.h"

using namespace colod;
using namespace colod::softvm_test;

namespace {

template <typename T>
unsigned long ptr(T* p) {
    return reinterpret_cast<unsigned long>(p);
}

// ioctl returning -1 and the errno, or the result.
struct Outcome {
    int result;
    int err;
};
template <typename T>
Outcome call(kvm::Handle& handle, unsigned long request, T* arg) {
    errno = 0;
    int result = handle.ioctl(request, ptr(arg));
    return {result, result < 0 ? errno : 0};
}

void wait_for(Machine& machine, uint64_t gpa, uint64_t at_least, int timeout_ms = 5000) {
    int64_t deadline = now_ns() + int64_t{timeout_ms} * 1'000'000 * test::time_scale();
    // The guest reports through its memory; there is no other event to wait on.
    while (machine.read64(gpa) < at_least) {
        INFO("waiting for guest mailbox " << std::hex << gpa);
        REQUIRE(now_ns() < deadline);
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
}

int64_t process_cpu_ns() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// The share of a timer's programmed rate a test requires: 95 % on hardware; a quarter where
// the run is scaled (KVM nested in an emulated machine, whose timers slip under load).
double min_share() { return test::time_scale() > 1 ? 0.25 : 0.95; }

struct Stats {
    int64_t p50, p99, max;
};
Stats stats(std::vector<int64_t> samples) {
    std::sort(samples.begin(), samples.end());
    auto at = [&](double q) { return samples[static_cast<size_t>(q * static_cast<double>(samples.size() - 1))]; };
    return {at(0.5), at(0.99), samples.back()};
}

bool run_expect_io(Vcpu& vcpu, uint16_t port, uint8_t direction) {
    int r = vcpu.handle->ioctl(KVM_RUN, 0);
    REQUIRE(r == 0);
    REQUIRE(vcpu.run->exit_reason == KVM_EXIT_IO);
    CHECK(vcpu.run->io.port == port);
    CHECK(vcpu.run->io.direction == direction);
    CHECK(vcpu.run->io.count == 1);
    return vcpu.run->io.port == port;
}

template <typename T>
T* io_data(Vcpu& vcpu) {
    return reinterpret_cast<T*>(reinterpret_cast<uint8_t*>(vcpu.run) + vcpu.run->io.data_offset);
}

}  // namespace

TEST_CASE("system ioctls and capabilities", "[soft_vm]") {
    for (auto& c : available_backends()) {
        DYNAMIC_SECTION(c.name) {
            bool soft = c.name == "soft";
            auto system = std::move(c.backend->open_system()).value();
            CHECK(system->ioctl(KVM_GET_API_VERSION, 0) == KVM_API_VERSION);
            CHECK(system->ioctl(KVM_GET_VCPU_MMAP_SIZE, 0) >= static_cast<int>(sizeof(kvm_run)));
            for (long cap : {KVM_CAP_IRQCHIP, KVM_CAP_USER_MEMORY, KVM_CAP_SET_TSS_ADDR, KVM_CAP_PIT2,
                             KVM_CAP_PIT_STATE2, KVM_CAP_EXT_CPUID, KVM_CAP_MP_STATE, KVM_CAP_VCPU_EVENTS,
                             KVM_CAP_DEBUGREGS, KVM_CAP_XSAVE, KVM_CAP_XCRS, KVM_CAP_ADJUST_CLOCK,
                             KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_GET_TSC_KHZ, KVM_CAP_NR_VCPUS,
                             KVM_CAP_MAX_VCPUS, KVM_CAP_SIGNAL_MSI, KVM_CAP_SET_IDENTITY_MAP_ADDR}) {
                INFO("capability " << cap);
                CHECK(system->ioctl(KVM_CHECK_EXTENSION, static_cast<unsigned long>(cap)) > 0);
            }
            int manual = system->ioctl(KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
            CHECK((manual & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) != 0);
            CHECK(system->ioctl(KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2) >= 4096);
            // TSC scaling depends on the host CPU (AMD's TSC ratio MSR, Intel's TSC scaling):
            // KVM nested under QEMU's TCG reports 0; the software backend can scale any TSC.
            if (soft) {
                CHECK(system->ioctl(KVM_CHECK_EXTENSION, KVM_CAP_TSC_CONTROL) == 1);
                CHECK(manual == 3);
                CHECK(system->ioctl(KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2) == 4096);
                CHECK(system->ioctl(KVM_CHECK_EXTENSION, KVM_CAP_S390_UCONTROL) == 0);
                CHECK(system->ioctl(KVM_CHECK_EXTENSION, KVM_CAP_IRQFD) == 0);
            }

            // Supported CPUID: too small → E2BIG; then a sane table.
            std::vector<uint8_t> buffer(sizeof(kvm_cpuid2) + 256 * sizeof(kvm_cpuid_entry2));
            auto* cpuid = reinterpret_cast<kvm_cpuid2*>(buffer.data());
            cpuid->nent = 1;
            auto small = call(*system, KVM_GET_SUPPORTED_CPUID, cpuid);
            CHECK(small.result == -1);
            CHECK(small.err == E2BIG);
            cpuid->nent = 256;
            REQUIRE(system->ioctl(KVM_GET_SUPPORTED_CPUID, ptr(cpuid)) == 0);
            auto leaf = [&](uint32_t function) -> const kvm_cpuid_entry2* {
                for (uint32_t i = 0; i < cpuid->nent; ++i)
                    if (kvm::abi::cpuid_entries(cpuid)[i].function == function)
                        return &kvm::abi::cpuid_entries(cpuid)[i];
                return nullptr;
            };
            REQUIRE(leaf(0));
            CHECK(leaf(0)->ebx != 0);  // vendor
            REQUIRE(leaf(1));
            for (int bit : {4, 5, 6, 9, 13, 15})  // TSC MSR PAE APIC PGE CMOV
                CHECK((leaf(1)->edx >> bit) & 1);
            REQUIRE(leaf(7));
            REQUIRE(leaf(0x80000001));
            for (int bit : {11, 20, 29})  // SYSCALL NX LM
                CHECK((leaf(0x80000001)->edx >> bit) & 1);
            REQUIRE(leaf(0x80000008));
            CHECK((leaf(0x80000008)->eax & 0xff) >= 36);
            if (soft) {
                CHECK(((leaf(1)->ecx >> 21) & 1) == 0);  // no x2APIC
                CHECK(((leaf(1)->edx >> 25) & 3) == 0);  // no SSE, SSE2
                CHECK((leaf(1)->edx & 1) == 0);          // no x87
                CHECK(((leaf(1)->ecx >> 28) & 1) == 0);  // no AVX
            }

            // MSR index list: E2BIG tells the count.
            kvm_msr_list probe{};
            auto none = call(*system, KVM_GET_MSR_INDEX_LIST, &probe);
            CHECK(none.result == -1);
            CHECK(none.err == E2BIG);
            REQUIRE(probe.nmsrs > 0);
            std::vector<uint32_t> words(1 + probe.nmsrs);
            auto* list = reinterpret_cast<kvm_msr_list*>(words.data());
            list->nmsrs = probe.nmsrs;
            REQUIRE(system->ioctl(KVM_GET_MSR_INDEX_LIST, ptr(list)) == 0);
            uint32_t* list_indices = kvm::abi::msr_list_indices(list);
            std::set<uint32_t> indices(list_indices, list_indices + list->nmsrs);
            CHECK(indices.count(0x10));        // TSC
            CHECK(indices.count(0xc0000082));  // LSTAR

            auto vm = system->create(KVM_CREATE_VM, 0);
            CHECK(vm);
            CHECK(vm.value()->ioctl(KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP) > 0);
        }
    }
}

TEST_CASE("creation order errors", "[soft_vm]") {
    for (auto& c : available_backends()) {
        DYNAMIC_SECTION(c.name) {
            auto system = std::move(c.backend->open_system()).value();
            auto vm = std::move(system->create(KVM_CREATE_VM, 0)).value();
            kvm_pit_config pit{};
            // A PIT before the irqchip: KVM 6.1 creates it, newer kernels refuse with ENOENT (as
            // the software backend does). colod always creates the irqchip first.
            auto early = call(*vm, KVM_CREATE_PIT2, &pit);
            if (c.name == "soft")
                CHECK(early.err == ENOENT);
            CHECK((early.result == 0 || early.err == ENOENT));
            bool pit_exists = early.result == 0;
            kvm_irq_level line{};
            line.irq = 4;
            line.level = 1;
            auto no_chip = call(*vm, KVM_IRQ_LINE, &line);
            CHECK(no_chip.err == ENXIO);
            REQUIRE(vm->ioctl(KVM_CREATE_IRQCHIP, 0) == 0);
            auto twice = call(*vm, KVM_CREATE_IRQCHIP, static_cast<void*>(nullptr));
            CHECK(twice.result == -1);
            CHECK(twice.err == EEXIST);
            if (!pit_exists)
                REQUIRE(vm->ioctl(KVM_CREATE_PIT2, ptr(&pit)) == 0);
            auto pit_twice = call(*vm, KVM_CREATE_PIT2, &pit);
            CHECK(pit_twice.err == EEXIST);

            auto vm2 = std::move(system->create(KVM_CREATE_VM, 0)).value();
            auto vcpu = vm2->create(KVM_CREATE_VCPU, 0);
            REQUIRE(vcpu);
            auto late = call(*vm2, KVM_CREATE_IRQCHIP, static_cast<void*>(nullptr));
            CHECK(late.result == -1);
            CHECK(late.err == EINVAL);
            kvm_lapic_state lapic{};
            auto no_lapic = call(*vcpu.value(), KVM_GET_LAPIC, &lapic);
            CHECK(no_lapic.err == EINVAL);
            auto duplicate = vm2->create(KVM_CREATE_VCPU, 0);
            CHECK(!duplicate);
        }
    }
}

TEST_CASE("memory slots", "[soft_vm]") {
    for (auto& c : available_backends()) {
        DYNAMIC_SECTION(c.name) {
            auto system = std::move(c.backend->open_system()).value();
            auto vm = std::move(system->create(KVM_CREATE_VM, 0)).value();
            auto memory = anonymous_memory(0x40000);
            auto region = [&](uint32_t slot, uint64_t gpa, uint64_t size, uint64_t offset, uint32_t flags = 0) {
                kvm_userspace_memory_region r{};
                r.slot = slot;
                r.flags = flags;
                r.guest_phys_addr = gpa;
                r.memory_size = size;
                r.userspace_addr = reinterpret_cast<uint64_t>(memory.data()) + offset;
                return call(*vm, KVM_SET_USER_MEMORY_REGION, &r);
            };
            CHECK(region(0, 0x100000, 0x10000, 0).result == 0);
            auto overlap = region(1, 0x108000, 0x10000, 0x10000);
            CHECK(overlap.result == -1);
            CHECK(overlap.err == EEXIST);
            CHECK(region(1, 0x110000, 0x10000, 0x10000).result == 0);
            CHECK(region(2, 0x200000, 0x1800, 0x20000).err == EINVAL);  // size not page-aligned
            CHECK(region(2, 0x200800, 0x1000, 0x20000).err == EINVAL);  // address not page-aligned
            CHECK(region(1, 0x110000, 0, 0x10000).result == 0);          // delete
            CHECK(region(1, 0x110000, 0, 0x10000).err == EINVAL);        // nothing left to delete
            CHECK(region(0, 0x100000, 0x10000, 0, KVM_MEM_LOG_DIRTY_PAGES).result == 0);  // flags only
            CHECK(region(0, 0x100000, 0x20000, 0).err == EINVAL);  // resizing is not allowed
            std::vector<uint64_t> bitmap(4);
            kvm_dirty_log log{};
            log.slot = 7;
            log.dirty_bitmap = bitmap.data();
            CHECK(call(*vm, KVM_GET_DIRTY_LOG, &log).err == ENOENT);
        }
    }
}

TEST_CASE("every GET/SET round-trips", "[soft_vm]") {
    for (auto& c : available_backends()) {
        DYNAMIC_SECTION(c.name) {
            Machine machine(*c.backend);
            machine.load_guest("dirty");
            Vcpu& vcpu = machine.add_vcpu(0);
            kvm::Handle& h = *vcpu.handle;

            kvm_regs regs{};
            REQUIRE(h.ioctl(KVM_GET_REGS, ptr(&regs)) == 0);
            __u64* words = &regs.rax;
            for (int i = 0; i < 16; ++i)
                words[i] = 0x1111111111111111ull * static_cast<uint64_t>(i + 1);
            regs.rip = 0x12345;
            regs.rflags = 0x246;
            REQUIRE(h.ioctl(KVM_SET_REGS, ptr(&regs)) == 0);
            kvm_regs regs_back{};
            REQUIRE(h.ioctl(KVM_GET_REGS, ptr(&regs_back)) == 0);
            CHECK(std::memcmp(&regs, &regs_back, sizeof(regs)) == 0);

            kvm_sregs sregs{};
            REQUIRE(h.ioctl(KVM_GET_SREGS, ptr(&sregs)) == 0);
            sregs.cr2 = 0xdead000;
            sregs.fs.base = 0x7000;
            sregs.gs.base = 0x8000;
            sregs.cr8 = 3;
            REQUIRE(h.ioctl(KVM_SET_SREGS, ptr(&sregs)) == 0);
            kvm_sregs sregs_back{};
            REQUIRE(h.ioctl(KVM_GET_SREGS, ptr(&sregs_back)) == 0);
            CHECK(sregs_back.cr2 == sregs.cr2);
            CHECK(sregs_back.cr0 == sregs.cr0);
            CHECK(sregs_back.cr3 == sregs.cr3);
            CHECK(sregs_back.cr4 == sregs.cr4);
            CHECK(sregs_back.cr8 == 3);
            CHECK(sregs_back.efer == sregs.efer);
            CHECK(sregs_back.fs.base == 0x7000);
            CHECK(sregs_back.gs.base == 0x8000);
            CHECK(sregs_back.apic_base == sregs.apic_base);
            CHECK(std::memcmp(&sregs_back.cs, &sregs.cs, sizeof(sregs.cs)) == 0);
            CHECK(std::memcmp(&sregs_back.gdt, &sregs.gdt, sizeof(sregs.gdt)) == 0);
            // An inconsistent long-mode set-up is refused.
            kvm_sregs bad = sregs;
            bad.cr4 &= ~0x20ull;
            CHECK(call(h, KVM_SET_SREGS, &bad).err == EINVAL);

            kvm_fpu fpu{};
            REQUIRE(h.ioctl(KVM_GET_FPU, ptr(&fpu)) == 0);
            fpu.fcw = 0x27f;
            fpu.mxcsr = 0x1fa0;
            fpu.xmm[3][5] = 0x5a;
            fpu.fpr[2][1] = 0xa5;
            REQUIRE(h.ioctl(KVM_SET_FPU, ptr(&fpu)) == 0);
            kvm_fpu fpu_back{};
            REQUIRE(h.ioctl(KVM_GET_FPU, ptr(&fpu_back)) == 0);
            CHECK(fpu_back.fcw == 0x27f);
            CHECK(fpu_back.mxcsr == 0);  // KVM's FPU ioctls leave MXCSR out (it travels in XSAVE)
            CHECK(fpu_back.xmm[3][5] == 0x5a);
            CHECK(fpu_back.fpr[2][1] == 0xa5);

            kvm_xsave xsave{};
            REQUIRE(h.ioctl(KVM_GET_XSAVE, ptr(&xsave)) == 0);
            xsave.region[160 / 4] = 0xfeedface;  // XMM0, low dword
            xsave.region[24 / 4] = 0x1fa0;       // MXCSR
            xsave.region[512 / 4] |= 0x3;        // XSTATE_BV: x87 and SSE in use
            REQUIRE(h.ioctl(KVM_SET_XSAVE, ptr(&xsave)) == 0);
            kvm_xsave xsave_back{};
            REQUIRE(h.ioctl(KVM_GET_XSAVE, ptr(&xsave_back)) == 0);
            CHECK(xsave_back.region[160 / 4] == 0xfeedface);
            CHECK(xsave_back.region[24 / 4] == 0x1fa0);
            CHECK(std::memcmp(xsave.region, xsave_back.region, 576) == 0);
            // With XSTATE_BV.SSE clear the SSE registers load as their initial state (zero), as
            // XRSTOR does, whatever the image holds.
            xsave.region[512 / 4] &= ~0x2u;
            REQUIRE(h.ioctl(KVM_SET_XSAVE, ptr(&xsave)) == 0);
            REQUIRE(h.ioctl(KVM_GET_XSAVE, ptr(&xsave_back)) == 0);
            CHECK(xsave_back.region[160 / 4] == 0);

            kvm_xcrs xcrs{};
            REQUIRE(h.ioctl(KVM_GET_XCRS, ptr(&xcrs)) == 0);
            REQUIRE(xcrs.nr_xcrs >= 1);
            xcrs.nr_xcrs = 1;
            xcrs.xcrs[0].xcr = 0;
            xcrs.xcrs[0].value = 3;
            REQUIRE(h.ioctl(KVM_SET_XCRS, ptr(&xcrs)) == 0);
            kvm_xcrs xcrs_back{};
            REQUIRE(h.ioctl(KVM_GET_XCRS, ptr(&xcrs_back)) == 0);
            CHECK(xcrs_back.xcrs[0].value == 3);
            xcrs.xcrs[0].value = 0;  // x87 is mandatory
            CHECK(call(h, KVM_SET_XCRS, &xcrs).err == EINVAL);

            kvm_debugregs dr{};
            REQUIRE(h.ioctl(KVM_GET_DEBUGREGS, ptr(&dr)) == 0);
            dr.db[0] = 0x1000;
            dr.db[3] = 0x4000;
            dr.dr7 = 0x401;
            REQUIRE(h.ioctl(KVM_SET_DEBUGREGS, ptr(&dr)) == 0);
            kvm_debugregs dr_back{};
            REQUIRE(h.ioctl(KVM_GET_DEBUGREGS, ptr(&dr_back)) == 0);
            CHECK(dr_back.db[0] == 0x1000);
            CHECK(dr_back.db[3] == 0x4000);
            CHECK(dr_back.dr7 == 0x401);
            CHECK(dr_back.dr6 == dr.dr6);

            kvm_vcpu_events events{};
            REQUIRE(h.ioctl(KVM_GET_VCPU_EVENTS, ptr(&events)) == 0);
            events.flags = KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_NMI_PENDING;
            events.interrupt.shadow = KVM_X86_SHADOW_INT_STI;
            events.nmi.masked = 1;
            events.nmi.pending = 0;
            REQUIRE(h.ioctl(KVM_SET_VCPU_EVENTS, ptr(&events)) == 0);
            kvm_vcpu_events events_back{};
            REQUIRE(h.ioctl(KVM_GET_VCPU_EVENTS, ptr(&events_back)) == 0);
            // SVM keeps one shadow bit and KVM on AMD reports it as both kinds.
            bool amd = kvm::soft::vendor_is_amd();
            CHECK(events_back.interrupt.shadow ==
                  (amd ? KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI : KVM_X86_SHADOW_INT_STI));
            CHECK(events_back.nmi.masked == 1);
            CHECK(events_back.exception.injected == 0);

            kvm_mp_state mp{KVM_MP_STATE_HALTED};
            REQUIRE(h.ioctl(KVM_SET_MP_STATE, ptr(&mp)) == 0);
            kvm_mp_state mp_back{};
            REQUIRE(h.ioctl(KVM_GET_MP_STATE, ptr(&mp_back)) == 0);
            CHECK(mp_back.mp_state == KVM_MP_STATE_HALTED);
            mp.mp_state = KVM_MP_STATE_RUNNABLE;
            REQUIRE(h.ioctl(KVM_SET_MP_STATE, ptr(&mp)) == 0);

            kvm_lapic_state lapic{};
            REQUIRE(h.ioctl(KVM_GET_LAPIC, ptr(&lapic)) == 0);
            auto put32 = [&](kvm_lapic_state& s, int offset, uint32_t value) { std::memcpy(s.regs + offset, &value, 4); };
            auto get32 = [&](const kvm_lapic_state& s, int offset) {
                uint32_t value;
                std::memcpy(&value, s.regs + offset, 4);
                return value;
            };
            CHECK(get32(lapic, 0x20) >> 24 == 0);         // APIC ID of vCPU 0
            CHECK((get32(lapic, 0x350) & 0x700) == 0x700);  // BSP LINT0 in ExtINT mode
            put32(lapic, 0x80, 0x20);                       // TPR
            put32(lapic, 0xf0, 0x1ff);                      // SVR: enabled
            put32(lapic, 0xd0, 0x01000000);                 // LDR
            put32(lapic, 0x320, 0x10040);                   // LVTT masked, vector 0x40
            REQUIRE(h.ioctl(KVM_SET_LAPIC, ptr(&lapic)) == 0);
            kvm_lapic_state lapic_back{};
            REQUIRE(h.ioctl(KVM_GET_LAPIC, ptr(&lapic_back)) == 0);
            CHECK(get32(lapic_back, 0x80) == 0x20);
            CHECK(get32(lapic_back, 0xf0) == 0x1ff);
            CHECK(get32(lapic_back, 0xd0) == 0x01000000);
            CHECK(get32(lapic_back, 0x320) == 0x10040);
            if (c.name == "soft")
                CHECK(std::memcmp(lapic.regs + 0x100, lapic_back.regs + 0x100, 0x300) == 0);

            std::vector<uint64_t> msr_buffer((kvm::abi::k_msrs_header + 8 * sizeof(kvm_msr_entry)) / 8);
            auto& msrs_header = *reinterpret_cast<kvm_msrs*>(msr_buffer.data());
            struct MsrView {
                kvm_msrs& header;
                kvm_msr_entry* entries;
            } msrs{msrs_header, kvm::abi::msr_entries(&msrs_header)};
            const uint32_t indices[] = {0xc0000081, 0xc0000082, 0x174, 0x176, 0x277, 0xc0000102, 0xc0000103};
            const uint64_t values[] = {0x0023001000000000ull, 0xffffffff81000000ull, 0x10, 0xffffffff81001000ull,
                                       0x0007010600070106ull, 0x12345000, 7};
            msrs.header.nmsrs = 7;
            for (int i = 0; i < 7; ++i)
                msrs.entries[i] = kvm_msr_entry{indices[i], 0, values[i]};
            CHECK(h.ioctl(KVM_SET_MSRS, ptr(&msrs.header)) == 7);
            for (int i = 0; i < 7; ++i)
                msrs.entries[i].data = 0;
            CHECK(h.ioctl(KVM_GET_MSRS, ptr(&msrs.header)) == 7);
            for (int i = 0; i < 7; ++i) {
                INFO("MSR " << std::hex << indices[i]);
                // KVM on AMD keeps 32 bits of SYSENTER_EIP (the VMCB field's width).
                uint64_t expected = amd && indices[i] == 0x176 ? static_cast<uint32_t>(values[i]) : values[i];
                CHECK(msrs.entries[i].data == expected);
            }
            // Processing stops at the first unknown MSR.
            msrs.header.nmsrs = 3;
            msrs.entries[1].index = 0x4b564dff;
            CHECK(h.ioctl(KVM_GET_MSRS, ptr(&msrs.header)) == 1);
            CHECK(h.ioctl(KVM_SET_MSRS, ptr(&msrs.header)) == 1);

            for (uint32_t chip_id : {KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC}) {
                INFO("irqchip " << chip_id);
                kvm_irqchip chip{};
                chip.chip_id = chip_id;
                REQUIRE(machine.vm().ioctl(KVM_GET_IRQCHIP, ptr(&chip)) == 0);
                if (chip_id == KVM_IRQCHIP_IOAPIC) {
                    chip.chip.ioapic.redirtbl[3].bits = 0x0100000000010033ull;  // masked, vector 0x33, dest 1
                    chip.chip.ioapic.ioregsel = 0x16;
                } else {
                    chip.chip.pic.imr = 0xfb;
                    chip.chip.pic.irq_base = chip_id == KVM_IRQCHIP_PIC_MASTER ? 0x20 : 0x28;
                    chip.chip.pic.elcr = chip_id == KVM_IRQCHIP_PIC_MASTER ? 0x08 : 0x02;
                }
                REQUIRE(machine.vm().ioctl(KVM_SET_IRQCHIP, ptr(&chip)) == 0);
                kvm_irqchip back{};
                back.chip_id = chip_id;
                REQUIRE(machine.vm().ioctl(KVM_GET_IRQCHIP, ptr(&back)) == 0);
                CHECK(std::memcmp(&chip.chip, &back.chip, sizeof(chip.chip)) == 0);
            }

            kvm_pit_state2 pit{};
            REQUIRE(machine.vm().ioctl(KVM_GET_PIT2, ptr(&pit)) == 0);
            pit.channels[0].count = 1000;
            pit.channels[0].mode = 2;
            pit.channels[0].rw_mode = 3;
            pit.channels[0].read_state = 3;
            pit.channels[0].write_state = 3;
            pit.channels[2].gate = 1;
            REQUIRE(machine.vm().ioctl(KVM_SET_PIT2, ptr(&pit)) == 0);
            kvm_pit_state2 pit_back{};
            REQUIRE(machine.vm().ioctl(KVM_GET_PIT2, ptr(&pit_back)) == 0);
            for (int ch = 0; ch < 3; ++ch) {
                // count_load_time is the host time of the reload SET_PIT2 does; the rest is kept.
                pit.channels[ch].count_load_time = pit_back.channels[ch].count_load_time = 0;
            }
            CHECK(std::memcmp(pit.channels, pit_back.channels, sizeof(pit.channels)) == 0);

            kvm_clock_data clock{};
            clock.clock = 1'000'000'000'000ull;
            REQUIRE(machine.vm().ioctl(KVM_SET_CLOCK, ptr(&clock)) == 0);
            kvm_clock_data clock_back{};
            REQUIRE(machine.vm().ioctl(KVM_GET_CLOCK, ptr(&clock_back)) == 0);
            CHECK(clock_back.clock >= clock.clock);
            CHECK(clock_back.clock < clock.clock + 1'000'000'000ull);

            int khz = h.ioctl(KVM_GET_TSC_KHZ, 0);
            REQUIRE(khz > 0);
            CHECK(h.ioctl(KVM_SET_TSC_KHZ, static_cast<unsigned long>(khz)) == 0);
            CHECK(h.ioctl(KVM_GET_TSC_KHZ, 0) == khz);

            // CPUID: after the guest ran, only the identical table is accepted.
            regs.rip = k_entry;
            regs.rdi = 0x100000;
            regs.rcx = 1;
            regs.rdx = 4096;
            REQUIRE(h.ioctl(KVM_SET_REGS, ptr(&regs)) == 0);
            REQUIRE(h.ioctl(KVM_RUN, 0) == 0);
            CHECK(vcpu.run->exit_reason == KVM_EXIT_IO);
            auto buffer = machine.vcpu_cpuid();  // the table this vCPU was given
            auto* cpuid = reinterpret_cast<kvm_cpuid2*>(buffer.data());
            CHECK(h.ioctl(KVM_SET_CPUID2, ptr(cpuid)) == 0);
            kvm::abi::cpuid_entries(cpuid)[0].eax ^= 1;
            CHECK(call(h, KVM_SET_CPUID2, cpuid).err == EINVAL);
        }
    }
}

namespace {

std::set<uint64_t> harvest(Machine& machine, uint32_t slot, uint64_t pages) {
    std::vector<uint64_t> bitmap((pages + 63) / 64, 0);
    kvm_dirty_log log{};
    log.slot = slot;
    log.dirty_bitmap = bitmap.data();
    REQUIRE(machine.vm().ioctl(KVM_GET_DIRTY_LOG, ptr(&log)) == 0);
    std::set<uint64_t> dirty;
    for (uint64_t page = 0; page < pages; ++page)
        if (bitmap[page / 64] & (1ull << (page % 64)))
            dirty.insert(page);
    return dirty;
}

void run_dirty_guest(Vcpu& vcpu, uint64_t start, uint64_t count, uint64_t stride) {
    kvm_regs regs{};
    REQUIRE(vcpu.handle->ioctl(KVM_GET_REGS, ptr(&regs)) == 0);
    regs.rip = k_entry;
    regs.rdi = start;
    regs.rcx = count;
    regs.rdx = stride;
    REQUIRE(vcpu.handle->ioctl(KVM_SET_REGS, ptr(&regs)) == 0);
    REQUIRE(vcpu.handle->ioctl(KVM_RUN, 0) == 0);
    REQUIRE(vcpu.run->exit_reason == KVM_EXIT_IO);
    REQUIRE(vcpu.run->io.port == 0x10);
}

}  // namespace

TEST_CASE("dirty log reports exactly the pages the guest wrote", "[soft_vm]") {
    constexpr uint64_t data_gpa = 0x1000000;
    constexpr uint64_t data_pages = 256;
    for (auto& c : available_backends()) {
        for (bool manual : {true, false}) {
            DYNAMIC_SECTION(c.name << (manual ? " manual protect" : " legacy")) {
                Machine machine(*c.backend);
                if (manual) {
                    kvm_enable_cap cap{};
                    cap.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
                    cap.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
                    REQUIRE(machine.vm().ioctl(KVM_ENABLE_CAP, ptr(&cap)) == 0);
                }
                auto data = anonymous_memory(data_pages * 4096);
                kvm_userspace_memory_region region{};
                region.slot = 1;
                region.flags = KVM_MEM_LOG_DIRTY_PAGES;
                region.guest_phys_addr = data_gpa;
                region.memory_size = data_pages * 4096;
                region.userspace_addr = reinterpret_cast<uint64_t>(data.data());
                REQUIRE(machine.vm().ioctl(KVM_SET_USER_MEMORY_REGION, ptr(&region)) == 0);
                machine.load_guest("dirty");
                Vcpu& vcpu = machine.add_vcpu(0);

                CHECK(harvest(machine, 1, data_pages).empty());
                run_dirty_guest(vcpu, data_gpa + 3 * 4096 + 8, 10, 7 * 4096);
                std::set<uint64_t> expected;
                for (uint64_t i = 0; i < 10; ++i)
                    expected.insert(3 + 7 * i);
                CHECK(harvest(machine, 1, data_pages) == expected);

                if (manual) {
                    // GET does not clear with manual protect; CLEAR does, with KVM's alignment rules.
                    CHECK(harvest(machine, 1, data_pages) == expected);
                    std::vector<uint64_t> ones(4, ~0ull);
                    kvm_clear_dirty_log clear{};
                    clear.slot = 1;
                    clear.dirty_bitmap = ones.data();
                    clear.first_page = 1;
                    clear.num_pages = 64;
                    CHECK(call(machine.vm(), KVM_CLEAR_DIRTY_LOG, &clear).err == EINVAL);
                    clear.first_page = 0;
                    clear.num_pages = 10;
                    CHECK(call(machine.vm(), KVM_CLEAR_DIRTY_LOG, &clear).err == EINVAL);
                    clear.num_pages = 257;
                    CHECK(call(machine.vm(), KVM_CLEAR_DIRTY_LOG, &clear).err == EINVAL);
                    clear.first_page = 64;
                    clear.num_pages = 192;  // up to the end of the slot
                    CHECK(machine.vm().ioctl(KVM_CLEAR_DIRTY_LOG, ptr(&clear)) == 0);
                    CHECK(harvest(machine, 1, data_pages) == std::set<uint64_t>{3, 10, 17, 24, 31, 38, 45, 52, 59});
                    clear.first_page = 0;
                    clear.num_pages = 64;
                    CHECK(machine.vm().ioctl(KVM_CLEAR_DIRTY_LOG, ptr(&clear)) == 0);
                }
                CHECK(harvest(machine, 1, data_pages).empty());

                // A second round sees only its own pages.
                run_dirty_guest(vcpu, data_gpa + 100 * 4096, 5, 4096);
                CHECK(harvest(machine, 1, data_pages) == std::set<uint64_t>{100, 101, 102, 103, 104});
            }
        }
    }
}

TEST_CASE("PIT interrupts reach the guest through IOAPIC pin 0", "[soft_vm]") {
    for (auto& c : available_backends()) {
        DYNAMIC_SECTION(c.name) {
            Machine machine(*c.backend);
            machine.load_guest("irq");
            Vcpu& vcpu = machine.add_vcpu(0, 0 /* sti; hlt */, 1 /* PIT */);
            Runner runner(vcpu);
            wait_for(machine, k_ready, 1);
            wait_for(machine, k_pit_ticks, 2);
            uint64_t ticks0 = machine.read64(k_pit_ticks);
            int64_t t0 = now_ns();
            int64_t cpu0 = process_cpu_ns();
            std::this_thread::sleep_for(std::chrono::seconds(1));  // the measurement interval
            uint64_t ticks1 = machine.read64(k_pit_ticks);
            int64_t t1 = now_ns();
            int64_t cpu1 = process_cpu_ns();
            runner.kick_and_join();
            CHECK(runner.result() == -1);
            CHECK(runner.error() == EINTR);
            double seconds = static_cast<double>(t1 - t0) / 1e9;
            double rate = static_cast<double>(ticks1 - ticks0) / seconds;
            double expected = 1193182.0 / 11932.0;
            double cpu_share = static_cast<double>(cpu1 - cpu0) / static_cast<double>(t1 - t0);
            WARN(c.name << ": PIT " << rate << " Hz (programmed " << expected << " Hz, error "
                        << 100.0 * (rate - expected) / expected << "%), CPU while halted " << 100.0 * cpu_share
                        << "%");
            // Never faster than programmed; as fast within 5 % on hardware (slower only where the
            // whole machine is emulated and loaded: the time scale allows a quarter).
            CHECK(rate > expected * min_share());
            CHECK(rate < expected * 1.05);
            // A halted vCPU sleeps between ticks instead of spinning.
            CHECK(cpu_share < 0.25 * test::time_scale());
        }
    }
}

TEST_CASE("LAPIC periodic timer", "[soft_vm]") {
    for (auto& c : available_backends()) {
        DYNAMIC_SECTION(c.name) {
            Machine machine(*c.backend);
            machine.load_guest("irq");
            Vcpu& vcpu = machine.add_vcpu(0, 0, 2 /* LAPIC timer, 1 ms */);
            Runner runner(vcpu);
            wait_for(machine, k_lapic_ticks, 5);
            uint64_t ticks0 = machine.read64(k_lapic_ticks);
            int64_t t0 = now_ns();
            std::this_thread::sleep_for(std::chrono::milliseconds(500));
            uint64_t ticks1 = machine.read64(k_lapic_ticks);
            int64_t t1 = now_ns();
            runner.kick_and_join();
            double rate = static_cast<double>(ticks1 - ticks0) / (static_cast<double>(t1 - t0) / 1e9);
            WARN(c.name << ": LAPIC periodic timer " << rate << " Hz (programmed 1000 Hz)");
            // Expiries the vCPU thread cannot be scheduled for in time coalesce, as in KVM (one
            // pending timer interrupt at a time); on a loaded 2-core host up to ~10% go.
            CHECK(rate > 1000 * std::min(0.85, min_share()));
            CHECK(rate < 1010);
        }
    }
}

TEST_CASE("LAPIC TSC-deadline timer", "[soft_vm]") {
    for (auto& c : available_backends()) {
        DYNAMIC_SECTION(c.name) {
            Machine machine(*c.backend);
            machine.load_guest("irq");
            // The guest arms deadlines 1 ms of its TSC apart.
            Vcpu& probe = machine.add_vcpu(0, 0, 4, 0);
            int khz = probe.handle->ioctl(KVM_GET_TSC_KHZ, 0);
            REQUIRE(khz > 0);
            kvm_regs regs{};
            REQUIRE(probe.handle->ioctl(KVM_GET_REGS, ptr(&regs)) == 0);
            regs.rdx = static_cast<uint64_t>(khz);
            REQUIRE(probe.handle->ioctl(KVM_SET_REGS, ptr(&regs)) == 0);
            Runner runner(probe);
            wait_for(machine, k_deadline_ticks, 5);
            uint64_t ticks0 = machine.read64(k_deadline_ticks);
            int64_t t0 = now_ns();
            std::this_thread::sleep_for(std::chrono::milliseconds(500));
            uint64_t ticks1 = machine.read64(k_deadline_ticks);
            int64_t t1 = now_ns();
            runner.kick_and_join();
            double rate = static_cast<double>(ticks1 - ticks0) / (static_cast<double>(t1 - t0) / 1e9);
            WARN(c.name << ": TSC-deadline timer, deadlines 1 ms apart: " << rate << " Hz");
            // Deadlines form a fixed grid and late ones fire at once, so none is lost.
            CHECK(rate > 1000 * min_share());
            CHECK(rate < 1050);
        }
    }
}

TEST_CASE("KVM_IRQ_LINE wakes a halted vCPU", "[soft_vm]") {
    for (auto& c : available_backends()) {
        DYNAMIC_SECTION(c.name) {
            Machine machine(*c.backend);
            machine.load_guest("irq");
            Vcpu& vcpu = machine.add_vcpu(0, 0 /* sti; hlt */, 0);
            Runner runner(vcpu);
            wait_for(machine, k_ready, 1);
            std::vector<int64_t> latencies;
            for (uint64_t i = 1; i <= 50; ++i) {
                // Let the vCPU settle into its halt before the edge.
                std::this_thread::sleep_for(std::chrono::milliseconds(2));
                kvm_irq_level line{};
                line.irq = 5;
                int64_t t0 = now_ns();
                line.level = 1;
                REQUIRE(machine.vm().ioctl(KVM_IRQ_LINE, ptr(&line)) == 0);
                line.level = 0;
                REQUIRE(machine.vm().ioctl(KVM_IRQ_LINE, ptr(&line)) == 0);
                while (machine.read64(k_line_irqs) < i) {
                    REQUIRE(now_ns() - t0 < int64_t{2'000'000'000} * test::time_scale());
                    std::this_thread::yield();
                }
                latencies.push_back(now_ns() - t0);
            }
            runner.kick_and_join();
            CHECK(machine.read64(k_line_irqs) == 50);
            auto s = stats(latencies);
            WARN(c.name << ": IRQ_LINE → guest handler (halted vCPU) p50 " << s.p50 / 1000 << " µs, p99 "
                        << s.p99 / 1000 << " µs, max " << s.max / 1000 << " µs");
        }
    }
}

TEST_CASE("a kick returns EINTR promptly", "[soft_vm]") {
    for (auto& c : available_backends()) {
        for (uint64_t mode : {2ull /* cli; hlt */, 1ull /* busy */}) {
            DYNAMIC_SECTION(c.name << (mode == 2 ? " halted" : " busy")) {
                Machine machine(*c.backend);
                machine.load_guest("irq");
                Vcpu& vcpu = machine.add_vcpu(0, mode, 0);

                // immediate_exit at entry: nothing runs, and exit_reason is left as it was.
                vcpu.run->immediate_exit = 1;
                vcpu.run->exit_reason = KVM_EXIT_UNKNOWN;
                auto first = call(*vcpu.handle, KVM_RUN, static_cast<void*>(nullptr));
                CHECK(first.result == -1);
                CHECK(first.err == EINTR);
                CHECK(vcpu.run->exit_reason == KVM_EXIT_UNKNOWN);
                kvm_regs regs{};
                REQUIRE(vcpu.handle->ioctl(KVM_GET_REGS, ptr(&regs)) == 0);
                CHECK(regs.rip == k_entry);
                vcpu.run->immediate_exit = 0;

                std::vector<int64_t> latencies;
                for (int i = 0; i < 40; ++i) {
                    Runner runner(vcpu);
                    if (i == 0)
                        wait_for(machine, k_ready, 1);
                    // Let the vCPU get into its halt (or its loop) before kicking it.
                    std::this_thread::sleep_for(std::chrono::milliseconds(3));
                    latencies.push_back(runner.kick_and_join());
                    REQUIRE(runner.result() == -1);
                    REQUIRE(runner.error() == EINTR);
                    CHECK(vcpu.run->exit_reason == KVM_EXIT_INTR);
                }
                if (mode == 1)
                    CHECK(machine.read64(k_loops) > 0);
                auto s = stats(latencies);
                WARN(c.name << (mode == 2 ? " halted" : " busy") << ": kick → EINTR p50 " << s.p50 / 1000
                            << " µs, p99 " << s.p99 / 1000 << " µs, max " << s.max / 1000 << " µs");
            }
        }
    }
}

TEST_CASE("port I/O and MMIO exits complete", "[soft_vm]") {
    for (auto& c : available_backends()) {
        DYNAMIC_SECTION(c.name) {
            Machine machine(*c.backend);
            machine.load_guest("io");
            Vcpu& vcpu = machine.add_vcpu(0);

            run_expect_io(vcpu, 0x80, KVM_EXIT_IO_OUT);
            CHECK(vcpu.run->io.size == 1);
            CHECK(*io_data<uint8_t>(vcpu) == 0xab);

            run_expect_io(vcpu, 0x82, KVM_EXIT_IO_OUT);
            CHECK(vcpu.run->io.size == 2);
            CHECK(*io_data<uint16_t>(vcpu) == 0x1234);

            run_expect_io(vcpu, 0x84, KVM_EXIT_IO_IN);
            CHECK(vcpu.run->io.size == 4);
            *io_data<uint32_t>(vcpu) = 0xdeadbeef;

            REQUIRE(vcpu.handle->ioctl(KVM_RUN, 0) == 0);
            REQUIRE(vcpu.run->exit_reason == KVM_EXIT_MMIO);
            CHECK(vcpu.run->mmio.phys_addr == 0xd0000000);
            CHECK(vcpu.run->mmio.len == 8);
            CHECK(vcpu.run->mmio.is_write == 0);
            uint64_t value = 0x1122334455667788ull;
            std::memcpy(vcpu.run->mmio.data, &value, 8);

            REQUIRE(vcpu.handle->ioctl(KVM_RUN, 0) == 0);
            REQUIRE(vcpu.run->exit_reason == KVM_EXIT_MMIO);
            CHECK(vcpu.run->mmio.phys_addr == 0xd0000008);
            CHECK(vcpu.run->mmio.len == 4);
            CHECK(vcpu.run->mmio.is_write == 1);
            uint32_t written;
            std::memcpy(&written, vcpu.run->mmio.data, 4);
            CHECK(written == 0xcafef00d);

            run_expect_io(vcpu, 0x86, KVM_EXIT_IO_OUT);
            CHECK(machine.read64(k_io_in_result) == 0xdeadbeef);
            CHECK(machine.read64(k_mmio_result) == 0x1122334455667788ull);
        }
    }
}

namespace {

kvm_ioeventfd doorbell_request(uint64_t addr, uint32_t len, uint64_t value, int fd, uint32_t flags) {
    kvm_ioeventfd request{};
    request.addr = addr;
    request.len = len;
    request.datamatch = value;
    request.fd = fd;
    request.flags = flags;
    return request;
}

// The eventfd's count, taken (0 when it was not signalled).
uint64_t take_count(int fd) {
    uint64_t count = 0;
    return ::read(fd, &count, sizeof(count)) == sizeof(count) ? count : 0;
}

}  // namespace

TEST_CASE("an ioeventfd takes the writes it matches and no others; refused and removed as KVM does", "[soft_vm]") {
    for (auto& c : available_backends()) {
        DYNAMIC_SECTION(c.name) {
            Machine machine(*c.backend);
            REQUIRE(machine.vm().ioctl(KVM_CHECK_EXTENSION, KVM_CAP_IOEVENTFD) > 0);
            machine.load_guest("doorbell");
            Vcpu& vcpu = machine.add_vcpu(0);
            base::Fd mmio_bell(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
            base::Fd port_bell(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
            REQUIRE((mmio_bell && port_bell));
            constexpr uint64_t k_notify = 0xd0000050;
            auto mmio = doorbell_request(k_notify, 4, 1, mmio_bell.get(), KVM_IOEVENTFD_FLAG_DATAMATCH);
            auto port = doorbell_request(0x90, 4, 1, port_bell.get(), KVM_IOEVENTFD_FLAG_DATAMATCH | KVM_IOEVENTFD_FLAG_PIO);
            REQUIRE(machine.vm().ioctl(KVM_IOEVENTFD, reinterpret_cast<unsigned long>(&mmio)) == 0);
            REQUIRE(machine.vm().ioctl(KVM_IOEVENTFD, reinterpret_cast<unsigned long>(&port)) == 0);

            // Refusals: the same registration again, a width KVM does not know, a file that
            // is not an eventfd.
            CHECK(machine.vm().ioctl(KVM_IOEVENTFD, reinterpret_cast<unsigned long>(&mmio)) == -1);
            CHECK(errno == EEXIST);
            auto odd = doorbell_request(k_notify + 0x100, 3, 1, mmio_bell.get(), KVM_IOEVENTFD_FLAG_DATAMATCH);
            CHECK(machine.vm().ioctl(KVM_IOEVENTFD, reinterpret_cast<unsigned long>(&odd)) == -1);
            CHECK(errno == EINVAL);
            int pipe_fds[2];
            REQUIRE(::pipe(pipe_fds) == 0);
            base::Fd pipe_read(pipe_fds[0]), pipe_write(pipe_fds[1]);
            auto not_eventfd = doorbell_request(k_notify + 0x100, 4, 1, pipe_read.get(), KVM_IOEVENTFD_FLAG_DATAMATCH);
            CHECK(machine.vm().ioctl(KVM_IOEVENTFD, reinterpret_cast<unsigned long>(&not_eventfd)) == -1);

            // The doorbell's write signals without an exit: the first exit is the next write.
            REQUIRE(vcpu.handle->ioctl(KVM_RUN, 0) == 0);
            REQUIRE(vcpu.run->exit_reason == KVM_EXIT_MMIO);
            CHECK(vcpu.run->mmio.phys_addr == k_notify);
            CHECK(vcpu.run->mmio.len == 4);
            CHECK(vcpu.run->mmio.is_write == 1);
            uint32_t written = 0;
            std::memcpy(&written, vcpu.run->mmio.data, 4);
            CHECK(written == 7);
            CHECK(take_count(mmio_bell.get()) == 1);
            REQUIRE(vcpu.handle->ioctl(KVM_RUN, 0) == 0);
            REQUIRE(vcpu.run->exit_reason == KVM_EXIT_MMIO);
            CHECK(vcpu.run->mmio.len == 2);
            run_expect_io(vcpu, 0x86, KVM_EXIT_IO_OUT);  // the port doorbell did not exit either
            CHECK(take_count(port_bell.get()) == 1);
            CHECK(take_count(mmio_bell.get()) == 0);

            // Removed, the doorbell's write exits again; removing it twice is ENOENT.
            auto removal = mmio;
            removal.flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
            REQUIRE(machine.vm().ioctl(KVM_IOEVENTFD, reinterpret_cast<unsigned long>(&removal)) == 0);
            CHECK(machine.vm().ioctl(KVM_IOEVENTFD, reinterpret_cast<unsigned long>(&removal)) == -1);
            CHECK(errno == ENOENT);
            REQUIRE(vcpu.handle->ioctl(KVM_RUN, 0) == 0);
            REQUIRE(vcpu.run->exit_reason == KVM_EXIT_MMIO);
            std::memcpy(&written, vcpu.run->mmio.data, 4);
            CHECK(written == 1);
            CHECK(take_count(mmio_bell.get()) == 0);
        }
    }
}

TEST_CASE("a triple fault is KVM_EXIT_SHUTDOWN", "[soft_vm]") {
    for (auto& c : available_backends()) {
        DYNAMIC_SECTION(c.name) {
            Machine machine(*c.backend);
            machine.load_guest("triple");
            Vcpu& vcpu = machine.add_vcpu(0);
            REQUIRE(vcpu.handle->ioctl(KVM_RUN, 0) == 0);
            CHECK(vcpu.run->exit_reason == KVM_EXIT_SHUTDOWN);
        }
    }
}

namespace {

struct SavedVm {
    std::vector<uint8_t> memory;
    kvm_clock_data clock{};
    kvm_irqchip chips[3]{};
    kvm_pit_state2 pit{};
    kvm_regs regs{};
    kvm_sregs sregs{};
    std::vector<uint32_t> xsave = std::vector<uint32_t>(1024);  // struct kvm_xsave
    kvm_xcrs xcrs{};
    kvm_debugregs debugregs{};
    kvm_vcpu_events events{};
    kvm_mp_state mp{};
    kvm_lapic_state lapic{};
    std::vector<kvm_msr_entry> msrs;
    int tsc_khz = 0;
};

std::vector<uint32_t> msr_indices(kvm::Handle& system) {
    kvm_msr_list probe{};
    system.ioctl(KVM_GET_MSR_INDEX_LIST, ptr(&probe));
    std::vector<uint32_t> words(1 + probe.nmsrs);
    auto* list = reinterpret_cast<kvm_msr_list*>(words.data());
    list->nmsrs = probe.nmsrs;
    REQUIRE(system.ioctl(KVM_GET_MSR_INDEX_LIST, ptr(list)) == 0);
    uint32_t* indices = kvm::abi::msr_list_indices(list);
    return std::vector<uint32_t>(indices, indices + list->nmsrs);
}

void transfer_msrs(kvm::Handle& vcpu, std::vector<kvm_msr_entry>& entries, unsigned long request) {
    std::vector<uint64_t> buffer((kvm::abi::k_msrs_header + entries.size() * sizeof(kvm_msr_entry)) / 8);
    auto* msrs = reinterpret_cast<kvm_msrs*>(buffer.data());
    msrs->nmsrs = static_cast<uint32_t>(entries.size());
    std::memcpy(kvm::abi::msr_entries(msrs), entries.data(), entries.size() * sizeof(kvm_msr_entry));
    int done = vcpu.ioctl(request, ptr(msrs));
    REQUIRE(done == static_cast<int>(entries.size()));
    std::memcpy(entries.data(), kvm::abi::msr_entries(msrs), entries.size() * sizeof(kvm_msr_entry));
}

SavedVm save(Machine& machine, Vcpu& vcpu) {
    SavedVm s;
    s.memory.assign(machine.low(), machine.low() + k_low_size);
    kvm::Handle& vm = machine.vm();
    kvm::Handle& h = *vcpu.handle;
    REQUIRE(vm.ioctl(KVM_GET_CLOCK, ptr(&s.clock)) == 0);
    for (uint32_t i = 0; i < 3; ++i) {
        s.chips[i].chip_id = i;
        REQUIRE(vm.ioctl(KVM_GET_IRQCHIP, ptr(&s.chips[i])) == 0);
    }
    REQUIRE(vm.ioctl(KVM_GET_PIT2, ptr(&s.pit)) == 0);
    REQUIRE(h.ioctl(KVM_GET_REGS, ptr(&s.regs)) == 0);
    REQUIRE(h.ioctl(KVM_GET_SREGS, ptr(&s.sregs)) == 0);
    REQUIRE(h.ioctl(KVM_GET_XSAVE, ptr(s.xsave.data())) == 0);
    REQUIRE(h.ioctl(KVM_GET_XCRS, ptr(&s.xcrs)) == 0);
    REQUIRE(h.ioctl(KVM_GET_DEBUGREGS, ptr(&s.debugregs)) == 0);
    REQUIRE(h.ioctl(KVM_GET_VCPU_EVENTS, ptr(&s.events)) == 0);
    REQUIRE(h.ioctl(KVM_GET_MP_STATE, ptr(&s.mp)) == 0);
    REQUIRE(h.ioctl(KVM_GET_LAPIC, ptr(&s.lapic)) == 0);
    for (uint32_t index : msr_indices(machine.system()))
        s.msrs.push_back(kvm_msr_entry{index, 0, 0});
    transfer_msrs(h, s.msrs, KVM_GET_MSRS);
    s.tsc_khz = h.ioctl(KVM_GET_TSC_KHZ, 0);
    return s;
}

void restore(Machine& machine, Vcpu& vcpu, SavedVm& s) {
    std::memcpy(machine.low(), s.memory.data(), s.memory.size());
    kvm::Handle& vm = machine.vm();
    kvm::Handle& h = *vcpu.handle;
    // The order KVM-NOTES.md found to work on real KVM.
    kvm_clock_data clock{};
    clock.clock = s.clock.clock;
    REQUIRE(vm.ioctl(KVM_SET_CLOCK, ptr(&clock)) == 0);
    for (auto& chip : s.chips)
        REQUIRE(vm.ioctl(KVM_SET_IRQCHIP, ptr(&chip)) == 0);
    REQUIRE(vm.ioctl(KVM_SET_PIT2, ptr(&s.pit)) == 0);
    REQUIRE(h.ioctl(KVM_SET_TSC_KHZ, static_cast<unsigned long>(s.tsc_khz)) == 0);
    REQUIRE(h.ioctl(KVM_SET_SREGS, ptr(&s.sregs)) == 0);
    REQUIRE(h.ioctl(KVM_SET_REGS, ptr(&s.regs)) == 0);
    REQUIRE(h.ioctl(KVM_SET_XSAVE, ptr(s.xsave.data())) == 0);
    REQUIRE(h.ioctl(KVM_SET_XCRS, ptr(&s.xcrs)) == 0);
    transfer_msrs(h, s.msrs, KVM_SET_MSRS);
    REQUIRE(h.ioctl(KVM_SET_MP_STATE, ptr(&s.mp)) == 0);
    REQUIRE(h.ioctl(KVM_SET_LAPIC, ptr(&s.lapic)) == 0);
    REQUIRE(h.ioctl(KVM_SET_VCPU_EVENTS, ptr(&s.events)) == 0);
    REQUIRE(h.ioctl(KVM_SET_DEBUGREGS, ptr(&s.debugregs)) == 0);
}

}  // namespace

TEST_CASE("state saved from one VM continues in a fresh VM", "[soft_vm]") {
    for (auto& c : available_backends()) {
        DYNAMIC_SECTION(c.name) {
            SavedVm saved;
            uint64_t ticks_saved, loops_saved;
            {
                Machine source(*c.backend);
                source.load_guest("irq");
                Vcpu& vcpu = source.add_vcpu(0, 1 /* busy */, 3 /* PIT and LAPIC timer */);
                Runner runner(vcpu);
                wait_for(source, k_pit_ticks, 10);
                runner.kick_and_join();
                REQUIRE(runner.error() == EINTR);
                // Complete anything pending before saving (one KVM_RUN with immediate_exit).
                vcpu.run->immediate_exit = 1;
                CHECK(vcpu.handle->ioctl(KVM_RUN, 0) == -1);
                vcpu.run->immediate_exit = 0;
                saved = save(source, vcpu);
                ticks_saved = source.read64(k_pit_ticks);
                loops_saved = source.read64(k_loops);
                CHECK(loops_saved > 0);
            }
            for (int restore_round = 0; restore_round < 2; ++restore_round) {
                Machine target(*c.backend);
                Vcpu& vcpu = target.add_vcpu(0);
                restore(target, vcpu, saved);
                kvm_regs regs{};
                REQUIRE(vcpu.handle->ioctl(KVM_GET_REGS, ptr(&regs)) == 0);
                CHECK(std::memcmp(&regs, &saved.regs, sizeof(regs)) == 0);
                CHECK(target.read64(k_pit_ticks) == ticks_saved);
                Runner runner(vcpu);
                wait_for(target, k_pit_ticks, ticks_saved + 10);
                wait_for(target, k_lapic_ticks, saved.memory[k_lapic_ticks] + 10u);
                runner.kick_and_join();
                CHECK(target.read64(k_loops) > loops_saved);
                regs = {};
                REQUIRE(vcpu.handle->ioctl(KVM_GET_REGS, ptr(&regs)) == 0);
                CHECK(regs.rip >= k_entry);
                CHECK(regs.rip < k_entry + 0x1000);
            }
        }
    }
}

TEST_CASE("harvesting the dirty log while the guest writes loses no page", "[soft_vm]") {
    constexpr uint64_t data_gpa = 0x1000000;
    constexpr uint64_t data_pages = 512;
    for (auto& c : available_backends()) {
        DYNAMIC_SECTION(c.name) {
            Machine machine(*c.backend);
            kvm_enable_cap cap{};
            cap.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
            cap.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
            REQUIRE(machine.vm().ioctl(KVM_ENABLE_CAP, ptr(&cap)) == 0);
            auto data = anonymous_memory(data_pages * 4096);
            kvm_userspace_memory_region region{};
            region.slot = 1;
            region.flags = KVM_MEM_LOG_DIRTY_PAGES;
            region.guest_phys_addr = data_gpa;
            region.memory_size = data_pages * 4096;
            region.userspace_addr = reinterpret_cast<uint64_t>(data.data());
            REQUIRE(machine.vm().ioctl(KVM_SET_USER_MEMORY_REGION, ptr(&region)) == 0);
            machine.load_guest("churn");
            Vcpu& vcpu = machine.add_vcpu(0, data_gpa, data_pages);

            // A replica kept up to date from the dirty log only, as a live migration would.
            std::vector<uint8_t> replica(data_pages * 4096, 0);
            auto* guest = reinterpret_cast<const uint8_t*>(data.data());
            std::vector<uint64_t> bitmap(data_pages / 64);
            auto sync = [&] {
                kvm_dirty_log log{};
                log.slot = 1;
                log.dirty_bitmap = bitmap.data();
                REQUIRE(machine.vm().ioctl(KVM_GET_DIRTY_LOG, ptr(&log)) == 0);
                kvm_clear_dirty_log clear{};
                clear.slot = 1;
                clear.first_page = 0;
                clear.num_pages = data_pages;
                clear.dirty_bitmap = bitmap.data();
                REQUIRE(machine.vm().ioctl(KVM_CLEAR_DIRTY_LOG, ptr(&clear)) == 0);
                size_t copied = 0;
                for (uint64_t page = 0; page < data_pages; ++page) {
                    if (bitmap[page / 64] & (1ull << (page % 64))) {
                        std::memcpy(replica.data() + page * 4096, guest + page * 4096, 4096);
                        ++copied;
                    }
                }
                return copied;
            };
            size_t harvests = 0, pages = 0;
            std::vector<int64_t> harvest_ns;
            {
                Runner runner(vcpu);
                // Harvest while the guest goes round its pages several times (its counter, in the
                // first 512 bytes of each page, passes 5 rounds in the last page), at least 400 ms.
                auto last_page_count = [&] {
                    uint64_t most = 0;
                    for (uint64_t offset = 0; offset < 512; offset += 8) {
                        uint64_t value;
                        std::memcpy(&value, guest + (data_pages - 1) * 4096 + offset, 8);
                        most = std::max(most, value);
                    }
                    return most;
                };
                int64_t start = now_ns();
                int64_t deadline = start + int64_t{20'000'000'000} * test::time_scale();
                while (now_ns() < start + 400'000'000 ||
                       (last_page_count() <= 5 * data_pages && now_ns() < deadline)) {
                    int64_t t0 = now_ns();
                    pages += sync();
                    harvest_ns.push_back(now_ns() - t0);
                    ++harvests;
                    std::this_thread::sleep_for(std::chrono::milliseconds(2));
                }
                runner.kick_and_join();
                kvm_regs dbg{};
                vcpu.handle->ioctl(KVM_GET_REGS, ptr(&dbg));
                INFO("mmio " << std::hex << vcpu.run->mmio.phys_addr << " rip " << dbg.rip << " rbx " << dbg.rbx
                             << " rdx " << dbg.rdx << " rax " << dbg.rax);
                INFO("exit reason " << vcpu.run->exit_reason << " detail "
                                    << kvm::soft::internal_error_detail(*vcpu.handle).value_or(""));
                CHECK(runner.error() == EINTR);
            }
            sync();  // the final pass, with the vCPU stopped
            uint64_t writes = 0;
            for (uint64_t page = 0; page < data_pages; ++page)
                for (uint64_t offset = 0; offset < 4096; offset += 8) {
                    uint64_t value;
                    std::memcpy(&value, guest + page * 4096 + offset, 8);
                    writes = std::max(writes, value);
                }
            CHECK(writes > 4 * data_pages);  // the guest went round several times
            CHECK(pages > data_pages);
            size_t mismatched = 0;
            for (uint64_t page = 0; page < data_pages; ++page)
                if (std::memcmp(replica.data() + page * 4096, guest + page * 4096, 4096) != 0)
                    ++mismatched;
            CHECK(mismatched == 0);
            auto s = stats(harvest_ns);
            WARN(c.name << ": " << writes << " guest writes, " << harvests << " harvests while running, " << pages
                        << " pages copied; GET+CLEAR+copy p50 " << s.p50 / 1000 << " µs, max " << s.max / 1000
                        << " µs");
        }
    }
}

TEST_CASE("an application processor waits in KVM_RUN until it is made runnable", "[soft_vm]") {
    for (auto& c : available_backends()) {
        DYNAMIC_SECTION(c.name) {
            Machine machine(*c.backend);
            machine.load_guest("irq");
            machine.add_vcpu(0);
            auto handle = machine.vm().create(KVM_CREATE_VCPU, 1);
            REQUIRE(handle);
            Vcpu ap;
            ap.handle = std::move(handle).value();
            ap.run = ap.handle->map_run(machine.mmap_size()).value();
            kvm_mp_state mp{};
            REQUIRE(ap.handle->ioctl(KVM_GET_MP_STATE, ptr(&mp)) == 0);
            CHECK(mp.mp_state == KVM_MP_STATE_UNINITIALIZED);
            int64_t cpu0 = process_cpu_ns();
            Runner runner(ap);
            std::this_thread::sleep_for(std::chrono::milliseconds(100));  // it must still be blocked
            int64_t cpu1 = process_cpu_ns();
            runner.kick_and_join();
            CHECK(runner.result() == -1);
            CHECK(runner.error() == EINTR);
            CHECK(cpu1 - cpu0 < 50'000'000);  // blocked, not spinning
        }
    }
}

TEST_CASE("IPIs between two vCPU threads wake a halted receiver", "[soft_vm]") {
    constexpr uint64_t ipis = 200;
    constexpr uint64_t k_ipi_count = 0x9040;  // guests/ipi.S
    for (auto& c : available_backends()) {
        DYNAMIC_SECTION(c.name) {
            Machine machine(*c.backend);
            machine.load_guest("ipi");
            Vcpu& sender = machine.add_vcpu(0, 0, ipis);
            Vcpu& receiver = machine.add_vcpu(1, 1, 0);
            Runner receiving(receiver);
            wait_for(machine, k_ready, 1);
            int64_t t0 = now_ns();
            Runner sending(sender);
            // The sender's KVM_RUN returns after the last IPI was counted. On the nested KVM
            // (QEMU's emulated SVM) the count sometimes stops for good, the receiver asleep in
            // kvm_vcpu_block (docs/architecture.md, "One defect of that platform"). There, and
            // only there, that is reported with both LAPICs and the case ends without failing;
            // anywhere else a stall fails it.
            uint64_t count = machine.read64(k_ipi_count);
            int64_t moved_at = now_ns();
            while (!sending.returned() && now_ns() - moved_at < 60'000'000'000) {
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
                if (uint64_t now_count = machine.read64(k_ipi_count); now_count != count) {
                    count = now_count;
                    moved_at = now_ns();
                }
            }
            if (!sending.returned() && nested_tcg() && c.name == "kvm") {
                sending.kick_and_join();
                receiving.kick_and_join();
                auto vector_0x40 = [&](Vcpu& vcpu) {
                    kvm_lapic_state lapic{};
                    if (call(*vcpu.handle, KVM_GET_LAPIC, &lapic).result != 0)
                        return std::string("LAPIC unreadable");
                    auto reg = [&](size_t offset) { return *reinterpret_cast<const uint32_t*>(lapic.regs + offset); };
                    return fmt::format("vector 0x40 {}in service, {}pending; ICR {:#x}", reg(0x120) & 1 ? "" : "not ",
                                       reg(0x220) & 1 ? "" : "not ", reg(0x300));
                };
                WARN(c.name << ": the IPI count stopped at " << count << " of " << ipis << " for 60 s (the nested "
                            << "platform's known defect); receiver: " << vector_0x40(receiver)
                            << "; sender: " << vector_0x40(sender));
                continue;
            }
            sending.join();
            int64_t t1 = now_ns();
            REQUIRE(sending.result() == 0);
            CHECK(sender.run->exit_reason == KVM_EXIT_IO);
            CHECK(sender.run->io.port == 0x10);
            CHECK(machine.read64(k_ipi_count) == ipis);
            receiving.kick_and_join();
            CHECK(receiving.error() == EINTR);
            WARN(c.name << ": IPI round trip (send, wake halted vCPU, handler, seen by sender) "
                        << (t1 - t0) / static_cast<int64_t>(ipis) / 1000 << " µs on average");
        }
    }
}

TEST_CASE("an emulation failure explains itself", "[soft_vm]") {
    auto backend = kvm::make_soft_backend();
    Machine machine(*backend);
    machine.load_guest("dirty");
    Vcpu& vcpu = machine.add_vcpu(0);
    kvm_sregs sregs{};
    REQUIRE(vcpu.handle->ioctl(KVM_GET_SREGS, ptr(&sregs)) == 0);
    sregs.cs.l = 0;  // compatibility mode: real KVM runs it, the interpreter does not
    sregs.cs.db = 1;
    REQUIRE(vcpu.handle->ioctl(KVM_SET_SREGS, ptr(&sregs)) == 0);
    REQUIRE(vcpu.handle->ioctl(KVM_RUN, 0) == 0);
    CHECK(vcpu.run->exit_reason == KVM_EXIT_INTERNAL_ERROR);
    CHECK(vcpu.run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION);
    auto detail = kvm::soft::internal_error_detail(*vcpu.handle);
    REQUIRE(detail);
    CHECK(!detail->empty());
    WARN("interpreter: " << *detail);
    CHECK(!kvm::soft::internal_error_detail(machine.vm()));
}
