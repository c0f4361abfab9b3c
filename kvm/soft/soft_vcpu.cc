// SPDX-License-Identifier: GPL-2.0-or-later
#include "kvm/soft/soft_vcpu.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base/log.h"
#include "kvm/soft/host_clock.h"
#include "kvm/kernel_abi.h"
#include "kvm/soft/soft_vm.h"

namespace colod::kvm::soft {

namespace {

int fail(int err) {
    errno = err;
    return -1;
}

template <typename T>
T* arg_ptr(unsigned long arg) {
    return reinterpret_cast<T*>(arg);
}

// MSR numbers.
constexpr uint32_t msr_tsc = 0x10, msr_apic_base = 0x1b, msr_sysenter_cs = 0x174, msr_sysenter_esp = 0x175,
                   msr_sysenter_eip = 0x176, msr_misc_enable = 0x1a0, msr_pat = 0x277, msr_tsc_deadline = 0x6e0,
                   msr_efer = 0xc0000080, msr_star = 0xc0000081, msr_lstar = 0xc0000082, msr_cstar = 0xc0000083,
                   msr_fmask = 0xc0000084, msr_fs_base = 0xc0000100, msr_gs_base = 0xc0000101,
                   msr_kernel_gs_base = 0xc0000102, msr_tsc_aux = 0xc0000103;

// KVM's default IA32_MISC_ENABLE: no PEBS, no BTS.
constexpr uint64_t k_misc_enable_default = (1u << 11) | (1u << 12);
// KVM's MAX_IO_MSRS.
constexpr uint32_t k_max_io_msrs = 256;
// XCR0 components a saved state may carry (x87, SSE, AVX, MPX, AVX-512, PKRU); the
// interpreter executes none of the vector ones, the XSAVE image keeps them for a restore.
constexpr uint64_t k_xcr0_storable = 0x2ff;

constexpr uint64_t cr0_pe = 1, cr0_nw = 1u << 29, cr0_cd = 1u << 30, cr0_pg = 1u << 31;
constexpr uint64_t cr4_pae = 1u << 5;
// CR4 bits the guest may set: VME .. OSXMMEXCPT. CPUID offers nothing gated above them.
constexpr uint64_t cr4_allowed = 0x7ff;
constexpr uint64_t efer_sce = 1, efer_lme = 1u << 8, efer_lma = 1u << 10, efer_nxe = 1u << 11;
constexpr uint64_t efer_allowed = efer_sce | efer_lme | efer_lma | efer_nxe;

bool canonical(uint64_t address) {
    auto high = static_cast<int64_t>(address) >> 47;
    return high == 0 || high == -1;
}

bool valid_pat(uint64_t value) {
    for (int i = 0; i < 8; ++i) {
        uint64_t type = (value >> (8 * i)) & 0xff;
        if (type != 0 && type != 1 && type != 4 && type != 5 && type != 6 && type != 7)
            return false;
    }
    return true;
}

bool valid_xcr0(uint64_t xcr0) {
    if (!(xcr0 & 1) || (xcr0 & ~k_xcr0_storable))
        return false;
    if ((xcr0 & 4) && !(xcr0 & 2))
        return false;  // AVX needs SSE
    if (((xcr0 >> 3) & 1) != ((xcr0 >> 4) & 1))
        return false;  // MPX components come together
    uint64_t avx512 = xcr0 & 0xe0;
    if (avx512 && (avx512 != 0xe0 || !(xcr0 & 4)))
        return false;
    return true;
}

// The host TSC rate, measured once, rounded to MHz. It is the default guest TSC rate, as in
// KVM; the guest TSC itself is derived from CLOCK_MONOTONIC at that rate.
uint32_t host_tsc_khz() {
    static const uint32_t khz = [] {
        int64_t start_ns = monotonic_ns();
        uint64_t start_tsc = __builtin_ia32_rdtsc();
        int64_t now_ns;
        do {
            now_ns = monotonic_ns();
        } while (now_ns - start_ns < 2'000'000);
        uint64_t ticks = __builtin_ia32_rdtsc() - start_tsc;
        uint64_t measured = mul_div(ticks, 1'000'000, static_cast<uint64_t>(now_ns - start_ns));
        uint64_t rounded = (measured + 500) / 1000 * 1000;
        return static_cast<uint32_t>(std::clamp<uint64_t>(rounded, 100'000, 10'000'000));
    }();
    return khz;
}

}  // namespace

base::Result<std::unique_ptr<SoftVcpu>> SoftVcpu::create(SoftVm& vm, uint32_t id) {
    base::Fd event(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!event)
        return base::Error::from_errno("eventfd(vcpu)");
    void* addr = ::mmap(nullptr, k_vcpu_mmap_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (addr == MAP_FAILED)
        return base::Error::from_errno("mmap(vcpu kvm_run)");
    return std::unique_ptr<SoftVcpu>(new SoftVcpu(vm, id, std::move(event), base::Mapping(addr, k_vcpu_mmap_size)));
}

SoftVcpu::SoftVcpu(SoftVm& vm, uint32_t id, base::Fd event, base::Mapping run)
    : m_vm(vm), m_id(id), m_event(std::move(event)), m_run(std::move(run)), m_lapic(id, id == 0) {
    m_tsc.khz = host_tsc_khz();
    m_tsc.offset = -static_cast<int64_t>(m_tsc.at(monotonic_ns()));  // the guest TSC starts at 0
    reset_state(false);
    // The BSP runs; application processors wait for INIT/SIPI (KVM: kvm_vcpu_is_reset_bsp()).
    m_mp_state = id == 0 ? KVM_MP_STATE_RUNNABLE : KVM_MP_STATE_UNINITIALIZED;
}

SoftVcpu::~SoftVcpu() = default;

void SoftVcpu::reset_state(bool init_event) {
    // The architectural reset state (Intel SDM vol. 3, table 9-1), as KVM's kvm_vcpu_reset().
    m_state.regs = {};
    m_state.regs.rip = 0xfff0;
    m_state.regs.rflags = 0x2;
    m_state.regs.rdx = 0x600;
    kvm_sregs& s = m_state.sregs;
    s = {};
    auto data_segment = [](kvm_segment& seg) {
        seg = {};
        seg.limit = 0xffff;
        seg.type = 3;
        seg.present = 1;
        seg.s = 1;
    };
    s.cs = {};
    s.cs.selector = 0xf000;
    s.cs.base = 0xffff0000;
    s.cs.limit = 0xffff;
    s.cs.type = 0xb;
    s.cs.present = 1;
    s.cs.s = 1;
    data_segment(s.ds);
    data_segment(s.es);
    data_segment(s.fs);
    data_segment(s.gs);
    data_segment(s.ss);
    s.tr.limit = 0xffff;
    s.tr.type = 0xb;
    s.tr.present = 1;
    s.ldt.limit = 0xffff;
    s.ldt.type = 2;
    s.ldt.present = 1;
    s.gdt.limit = 0xffff;
    s.idt.limit = 0xffff;
    s.cr0 = 0x60000010;
    m_state.interrupt_shadow = 0;
    m_state.xcr0 = 1;
    if (!init_event) {
        m_state.star = m_state.lstar = m_state.cstar = m_state.fmask = m_state.kernel_gs_base = 0;
        m_state.sysenter_cs = m_state.sysenter_esp = m_state.sysenter_eip = 0;
        m_state.tsc_aux = 0;
        m_state.pat = 0x0007040600070406ull;
        m_misc_enable = k_misc_enable_default;
        std::memset(m_xsave, 0, sizeof(m_xsave));
        uint16_t fcw = 0x37f;
        uint32_t mxcsr = 0x1f80, mxcsr_mask = 0xffff;
        uint64_t xstate_bv = 0x3;
        std::memcpy(m_xsave + 0, &fcw, 2);
        std::memcpy(m_xsave + 24, &mxcsr, 4);
        std::memcpy(m_xsave + 28, &mxcsr_mask, 4);
        std::memcpy(m_xsave + 512, &xstate_bv, 8);
        m_debugregs = {};
        m_debugregs.dr6 = 0xffff0ff0;
        m_debugregs.dr7 = 0x400;
    }
    m_lapic.reset(m_id == 0, init_event);
    m_cpu.flush_tlb();
}

void SoftVcpu::kick() {
    // Pairs with the fence in wait(): either the waiter sees what the caller just raised, or
    // the caller sees the waiter and wakes it.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (m_waiting.load(std::memory_order_seq_cst)) {
        uint64_t one = 1;
        [[maybe_unused]] ssize_t n = ::write(m_event.get(), &one, sizeof(one));
    }
}

std::string SoftVcpu::internal_error() const { return m_internal_error; }

bool SoftVcpu::immediate_exit() const { return __atomic_load_n(&run_struct()->immediate_exit, __ATOMIC_SEQ_CST) != 0; }

int SoftVcpu::interrupted() {
    run_struct()->exit_reason = KVM_EXIT_INTR;
    finish_exit();
    return fail(EINTR);
}

void SoftVcpu::finish_exit() {
    // KVM's post_kvm_run_save().
    kvm_run* run = run_struct();
    run->if_flag = (m_state.regs.rflags & (1u << 9)) ? 1 : 0;
    run->cr8 = read_cr8();
    run->apic_base = m_lapic.apic_base();
    run->ready_for_interrupt_injection = run->if_flag && !m_state.interrupt_shadow;
    run->flags = 0;
}

// --- CpuBus ---

uint8_t* SoftVcpu::ram_page(uint64_t gpa, Access access) {
    // The APIC page of an enabled in-kernel LAPIC shadows RAM (KVM's APIC access page).
    if (m_vm.has_irqchip() && m_lapic.covers(gpa))
        return nullptr;
    return m_vm.slots().page(gpa, access == Access::Write);
}

BusResult SoftVcpu::mmio_read(uint64_t gpa, void* data, uint32_t len) {
    if (m_vm.has_irqchip()) {
        if (m_lapic.covers(gpa)) {
            m_lapic.mmio_read(static_cast<uint32_t>(gpa & 0xfff), data, len, monotonic_ns(), m_tsc);
            return BusResult::Done;
        }
        if (m_vm.ioapic_covers(gpa)) {
            m_vm.ioapic_read(gpa, data, len);
            return BusResult::Done;
        }
    }
    kvm_run* run = run_struct();
    run->exit_reason = KVM_EXIT_MMIO;
    run->mmio.phys_addr = gpa;
    run->mmio.len = len;
    run->mmio.is_write = 0;
    std::memset(run->mmio.data, 0, sizeof(run->mmio.data));
    std::memset(data, 0, len);
    m_pending = Pending::MmioRead;
    m_exit_gpa = gpa;
    m_exit_len = len;
    m_exit_recorded = true;
    return BusResult::Exit;
}

BusResult SoftVcpu::mmio_write(uint64_t gpa, const void* data, uint32_t len) {
    if (m_vm.has_irqchip()) {
        if (m_lapic.covers(gpa)) {
            LapicWriteEffect effect = m_lapic.mmio_write(static_cast<uint32_t>(gpa & 0xfff), data, len, monotonic_ns());
            if (effect.eoi_vector >= 0)
                m_vm.eoi(effect.eoi_vector, effect.eoi_level);
            if (effect.ipi)
                m_vm.deliver(*effect.ipi, &m_lapic);
            return BusResult::Done;
        }
        if (m_vm.ioapic_covers(gpa)) {
            m_vm.ioapic_write(gpa, data, len);
            return BusResult::Done;
        }
    }
    if (m_vm.signal_ioeventfd(false, gpa, data, len))
        return BusResult::Done;
    kvm_run* run = run_struct();
    run->exit_reason = KVM_EXIT_MMIO;
    run->mmio.phys_addr = gpa;
    run->mmio.len = len;
    run->mmio.is_write = 1;
    std::memset(run->mmio.data, 0, sizeof(run->mmio.data));
    std::memcpy(run->mmio.data, data, std::min<uint32_t>(len, sizeof(run->mmio.data)));
    m_pending = Pending::None;
    m_exit_recorded = true;
    return BusResult::Exit;
}

BusResult SoftVcpu::pio_in(uint16_t port, void* data, uint32_t size) {
    if (m_vm.handles_port(port)) {
        m_vm.port_read(port, data, size, monotonic_ns());
        return BusResult::Done;
    }
    kvm_run* run = run_struct();
    run->exit_reason = KVM_EXIT_IO;
    run->io.direction = KVM_EXIT_IO_IN;
    run->io.size = static_cast<uint8_t>(size);
    run->io.port = port;
    run->io.count = 1;
    run->io.data_offset = k_pio_data_offset;
    std::memset(m_run.data() + k_pio_data_offset, 0, 8);
    std::memset(data, 0, size);
    m_pending = Pending::PioIn;
    m_exit_len = size;
    m_exit_recorded = true;
    return BusResult::Exit;
}

BusResult SoftVcpu::pio_out(uint16_t port, const void* data, uint32_t size) {
    if (m_vm.handles_port(port)) {
        m_vm.port_write(port, data, size, monotonic_ns());
        return BusResult::Done;
    }
    if (m_vm.signal_ioeventfd(true, port, data, size))
        return BusResult::Done;
    kvm_run* run = run_struct();
    run->exit_reason = KVM_EXIT_IO;
    run->io.direction = KVM_EXIT_IO_OUT;
    run->io.size = static_cast<uint8_t>(size);
    run->io.port = port;
    run->io.count = 1;
    run->io.data_offset = k_pio_data_offset;
    std::memcpy(m_run.data() + k_pio_data_offset, data, size);
    m_pending = Pending::None;
    m_exit_recorded = true;
    return BusResult::Exit;
}

bool SoftVcpu::rdmsr(uint32_t index, uint64_t& value) { return get_msr(index, value); }

bool SoftVcpu::wrmsr(uint32_t index, uint64_t value) { return set_msr(index, value, Initiator::Guest); }

void SoftVcpu::cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
    m_cpuid.lookup(leaf, subleaf, out);
    // KVM's runtime fix-up: CPUID.1:EDX.APIC follows the APIC's global enable.
    if (leaf == 1 && !m_lapic.hw_enabled())
        out[3] &= ~(1u << 9);
}

int SoftVcpu::pending_interrupt() {
    if (!m_vm.has_irqchip())
        return -1;
    // The PIC's ExtINT comes first (KVM's kvm_cpu_get_interrupt()).
    if (m_vm.pic_output() && m_lapic.accepts_pic_interrupts()) {
        int vector = m_vm.pic_pending_vector();
        if (vector >= 0) {
            m_interrupt_source = Source::Pic;
            return vector;
        }
    }
    m_interrupt_source = Source::Lapic;
    return m_lapic.pending_vector();
}

void SoftVcpu::acknowledge_interrupt(int vector) {
    if (m_interrupt_source == Source::Pic) {
        m_vm.pic_acknowledge();
        m_interrupt_source = Source::Lapic;
        return;
    }
    m_lapic.acknowledge(vector);
}

uint64_t SoftVcpu::read_cr8() { return m_vm.has_irqchip() ? m_lapic.read_cr8() : m_cr8_no_irqchip; }

void SoftVcpu::write_cr8(uint64_t value) {
    if (m_vm.has_irqchip())
        m_lapic.write_cr8(value);
    else
        m_cr8_no_irqchip = value & 0xf;
}

uint64_t SoftVcpu::tsc() { return m_tsc.at(monotonic_ns()); }

// --- MSRs ---

bool SoftVcpu::get_msr(uint32_t index, uint64_t& value) {
    switch (index) {
    case msr_tsc: value = tsc(); return true;
    case msr_apic_base: value = m_lapic.apic_base(); return true;
    case msr_tsc_deadline: value = m_vm.has_irqchip() ? m_lapic.tsc_deadline() : 0; return true;
    case msr_misc_enable: value = m_misc_enable; return true;
    case msr_sysenter_cs: value = m_state.sysenter_cs; return true;
    case msr_sysenter_esp: value = m_state.sysenter_esp; return true;
    case msr_sysenter_eip: value = m_state.sysenter_eip; return true;
    case msr_pat: value = m_state.pat; return true;
    case msr_efer: value = m_state.sregs.efer; return true;
    case msr_star: value = m_state.star; return true;
    case msr_lstar: value = m_state.lstar; return true;
    case msr_cstar: value = m_state.cstar; return true;
    case msr_fmask: value = m_state.fmask; return true;
    case msr_fs_base: value = m_state.sregs.fs.base; return true;
    case msr_gs_base: value = m_state.sregs.gs.base; return true;
    case msr_kernel_gs_base: value = m_state.kernel_gs_base; return true;
    case msr_tsc_aux: value = m_state.tsc_aux; return true;
    default: return false;
    }
}

bool SoftVcpu::set_msr(uint32_t index, uint64_t value, Initiator initiator) {
    switch (index) {
    case msr_tsc:
        // Writing the TSC moves the guest's TSC offset (KVM's kvm_write_tsc()).
        m_tsc.offset += static_cast<int64_t>(value - m_tsc.at(monotonic_ns()));
        return true;
    case msr_apic_base:
        if (!m_lapic.set_apic_base(value))
            return false;
        m_flush_tlb.store(true, std::memory_order_relaxed);
        return true;
    case msr_tsc_deadline:
        if (m_vm.has_irqchip())
            m_lapic.set_tsc_deadline(value, monotonic_ns());
        return true;
    case msr_misc_enable:
        m_misc_enable = value;
        return true;
    case msr_sysenter_cs: m_state.sysenter_cs = value & 0xffff; return true;
    // KVM on AMD keeps only the low 32 bits of SYSENTER_ESP/EIP (the VMCB's width) unless the
    // guest's CPUID says Intel; colod's guests run with the host's vendor.
    case msr_sysenter_esp:
        if (!canonical(value))
            return false;
        m_state.sysenter_esp = m_amd ? static_cast<uint32_t>(value) : value;
        return true;
    case msr_sysenter_eip:
        if (!canonical(value))
            return false;
        m_state.sysenter_eip = m_amd ? static_cast<uint32_t>(value) : value;
        return true;
    case msr_pat:
        if (!valid_pat(value))
            return false;
        m_state.pat = value;
        return true;
    case msr_efer:
        if (value & ~efer_allowed)
            return false;
        // A guest cannot flip LME while paging is on, and LMA is read-only to it.
        if (initiator == Initiator::Guest) {
            if ((m_state.sregs.cr0 & cr0_pg) && ((value ^ m_state.sregs.efer) & efer_lme))
                return false;
            value = (value & ~efer_lma) | (m_state.sregs.efer & efer_lma);
        }
        m_state.sregs.efer = value;
        m_flush_tlb.store(true, std::memory_order_relaxed);
        return true;
    case msr_star: m_state.star = value; return true;
    case msr_lstar:
    case msr_cstar:
    case msr_fs_base:
    case msr_gs_base:
    case msr_kernel_gs_base:
        if (!canonical(value))
            return false;
        if (index == msr_lstar)
            m_state.lstar = value;
        else if (index == msr_cstar)
            m_state.cstar = value;
        else if (index == msr_fs_base)
            m_state.sregs.fs.base = value;
        else if (index == msr_gs_base)
            m_state.sregs.gs.base = value;
        else
            m_state.kernel_gs_base = value;
        return true;
    case msr_fmask: m_state.fmask = value & 0xffffffff; return true;
    case msr_tsc_aux:
        if (value >> 32)
            return false;
        m_state.tsc_aux = value;
        return true;
    default: return false;
    }
}

int SoftVcpu::get_msrs(kvm_msrs& msrs) {
    if (msrs.nmsrs >= k_max_io_msrs)
        return fail(E2BIG);
    kvm_msr_entry* entries = abi::msr_entries(&msrs);
    uint32_t done = 0;
    for (; done < msrs.nmsrs; ++done) {
        uint64_t value = 0;
        if (!get_msr(entries[done].index, value))
            break;
        entries[done].data = value;
    }
    return static_cast<int>(done);
}

int SoftVcpu::set_msrs(kvm_msrs& msrs) {
    if (msrs.nmsrs >= k_max_io_msrs)
        return fail(E2BIG);
    const kvm_msr_entry* entries = abi::msr_entries(&msrs);
    uint32_t done = 0;
    for (; done < msrs.nmsrs; ++done)
        if (!set_msr(entries[done].index, entries[done].data, Initiator::Host))
            break;
    return static_cast<int>(done);
}

// --- state ioctls ---

int SoftVcpu::get_sregs(kvm_sregs& sregs) {
    sregs = m_state.sregs;
    sregs.cr8 = read_cr8();
    sregs.apic_base = m_lapic.apic_base();
    std::memset(sregs.interrupt_bitmap, 0, sizeof(sregs.interrupt_bitmap));
    return 0;
}

int SoftVcpu::set_sregs(const kvm_sregs& sregs) {
    // KVM's kvm_is_valid_sregs().
    if ((sregs.efer & efer_lme) && (sregs.cr0 & cr0_pg)) {
        if (!(sregs.cr4 & cr4_pae) || !(sregs.efer & efer_lma))
            return fail(EINVAL);
        if (sregs.cr3 >> 40)
            return fail(EINVAL);
    } else if ((sregs.efer & efer_lma) || sregs.cs.l) {
        return fail(EINVAL);
    }
    if ((sregs.cr0 >> 32) || ((sregs.cr0 & cr0_nw) && !(sregs.cr0 & cr0_cd)) ||
        ((sregs.cr0 & cr0_pg) && !(sregs.cr0 & cr0_pe)))
        return fail(EINVAL);
    if (sregs.cr4 & ~cr4_allowed)
        return fail(EINVAL);
    if (sregs.efer & ~efer_allowed)
        return fail(EINVAL);
    if (!m_lapic.set_apic_base(sregs.apic_base))
        return fail(EINVAL);
    m_state.sregs = sregs;
    std::memset(m_state.sregs.interrupt_bitmap, 0, sizeof(m_state.sregs.interrupt_bitmap));
    write_cr8(sregs.cr8);
    // An interrupt the saved state was injecting is delivered again.
    for (int word = 0; word < 4; ++word) {
        if (sregs.interrupt_bitmap[word]) {
            int vector = word * 64 + __builtin_ctzll(sregs.interrupt_bitmap[word]);
            m_lapic.requeue(vector);
            break;
        }
    }
    m_cpu.flush_tlb();
    return 0;
}

int SoftVcpu::set_regs(const kvm_regs& regs) {
    m_state.regs = regs;
    m_state.regs.rflags |= 0x2;  // the fixed bit, as KVM's __set_regs() forces it
    m_cpu.flush_tlb();
    return 0;
}

void SoftVcpu::get_fpu(kvm_fpu& fpu) const {
    // The FPU image is the legacy region of the XSAVE area (FXSAVE layout).
    fpu = {};
    std::memcpy(&fpu.fcw, m_xsave + 0, 2);
    std::memcpy(&fpu.fsw, m_xsave + 2, 2);
    std::memcpy(&fpu.ftwx, m_xsave + 4, 1);
    std::memcpy(&fpu.last_opcode, m_xsave + 6, 2);
    std::memcpy(&fpu.last_ip, m_xsave + 8, 8);
    std::memcpy(&fpu.last_dp, m_xsave + 16, 8);
    // KVM's GET_FPU leaves mxcsr 0 and its SET_FPU ignores it: MXCSR travels only in XSAVE.
    std::memcpy(fpu.fpr, m_xsave + 32, sizeof(fpu.fpr));
    std::memcpy(fpu.xmm, m_xsave + 160, sizeof(fpu.xmm));
}

void SoftVcpu::set_fpu(const kvm_fpu& fpu) {
    std::memcpy(m_xsave + 0, &fpu.fcw, 2);
    std::memcpy(m_xsave + 2, &fpu.fsw, 2);
    std::memcpy(m_xsave + 4, &fpu.ftwx, 1);
    std::memcpy(m_xsave + 6, &fpu.last_opcode, 2);
    std::memcpy(m_xsave + 8, &fpu.last_ip, 8);
    std::memcpy(m_xsave + 16, &fpu.last_dp, 8);
    std::memcpy(m_xsave + 32, fpu.fpr, sizeof(fpu.fpr));
    std::memcpy(m_xsave + 160, fpu.xmm, sizeof(fpu.xmm));
    // The x87 and SSE components are now in use.
    uint64_t xstate_bv;
    std::memcpy(&xstate_bv, m_xsave + 512, 8);
    xstate_bv |= 0x3;
    std::memcpy(m_xsave + 512, &xstate_bv, 8);
}

int SoftVcpu::set_xsave(const kvm_xsave& xsave) {
    const auto* bytes = reinterpret_cast<const uint8_t*>(xsave.region);
    uint64_t xstate_bv, xcomp_bv;
    std::memcpy(&xstate_bv, bytes + 512, 8);
    std::memcpy(&xcomp_bv, bytes + 520, 8);
    uint32_t mxcsr;
    std::memcpy(&mxcsr, bytes + 24, 4);
    // The checks of the kernel's validate_user_xstate_header(): standard format only, known
    // components only, reserved header bytes zero, no reserved MXCSR bits.
    if ((xstate_bv & ~k_xcr0_storable) || xcomp_bv != 0)
        return fail(EINVAL);
    for (int i = 528; i < 576; ++i)
        if (bytes[i])
            return fail(EINVAL);
    if (mxcsr & ~0xffffu)
        return fail(EINVAL);
    std::memcpy(m_xsave, bytes, sizeof(m_xsave));
    // As XRSTOR does (and so KVM): a component whose XSTATE_BV bit is clear takes its initial
    // state, whatever the image holds; MXCSR comes from the image only with SSE or AVX present.
    if (!(xstate_bv & 0x1)) {
        std::memset(m_xsave + 0, 0, 24);
        std::memset(m_xsave + 32, 0, 128);
        uint16_t fcw = 0x37f;
        std::memcpy(m_xsave + 0, &fcw, 2);
    }
    if (!(xstate_bv & 0x2))
        std::memset(m_xsave + 160, 0, 256);
    if (!(xstate_bv & 0x4))
        std::memset(m_xsave + 576, 0, 256);
    if (!(xstate_bv & 0x6)) {
        uint32_t init_mxcsr = 0x1f80;
        std::memcpy(m_xsave + 24, &init_mxcsr, 4);
    }
    return 0;
}

int SoftVcpu::set_xcrs(const kvm_xcrs& xcrs) {
    if (xcrs.nr_xcrs > KVM_MAX_XCRS || xcrs.flags)
        return fail(EINVAL);
    for (uint32_t i = 0; i < xcrs.nr_xcrs; ++i) {
        if (xcrs.xcrs[i].xcr != 0)
            continue;
        if (!valid_xcr0(xcrs.xcrs[i].value))
            return fail(EINVAL);
        m_state.xcr0 = xcrs.xcrs[i].value;
        break;
    }
    return 0;
}

int SoftVcpu::set_debugregs(const kvm_debugregs& debugregs) {
    if (debugregs.flags || (debugregs.dr6 >> 32) || (debugregs.dr7 >> 32))
        return fail(EINVAL);
    m_debugregs = debugregs;
    std::memset(m_debugregs.reserved, 0, sizeof(m_debugregs.reserved));
    return 0;
}

int SoftVcpu::get_events(kvm_vcpu_events& events) {
    events = {};
    events.interrupt.shadow = m_state.interrupt_shadow;
    // SVM has one interrupt-shadow bit; KVM on AMD reports it as both kinds.
    if (m_amd && events.interrupt.shadow)
        events.interrupt.shadow = KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI;
    m_nmi_pending += m_lapic.take_nmis();
    events.nmi.pending = m_nmi_pending ? 1 : 0;
    events.nmi.masked = m_nmi_masked ? 1 : 0;
    events.sipi_vector = m_sipi_vector;
    events.flags = KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM;
    return 0;
}

int SoftVcpu::set_events(const kvm_vcpu_events& events) {
    constexpr uint32_t known = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR |
                               KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM;
    if (events.flags & ~known)
        return fail(EINVAL);
    // The interpreter delivers exceptions at once and never leaves one pending across an exit,
    // so there is nothing to hold one in; nor is there SMM.
    if (events.exception.injected || events.exception.pending)
        return fail(EINVAL);
    if ((events.flags & KVM_VCPUEVENT_VALID_SMM) && (events.smi.smm || events.smi.pending))
        return fail(EINVAL);
    if (events.interrupt.injected && events.interrupt.soft)
        return fail(EINVAL);
    if (events.interrupt.injected)
        m_lapic.requeue(events.interrupt.nr);
    if (events.flags & KVM_VCPUEVENT_VALID_SHADOW)
        m_state.interrupt_shadow = events.interrupt.shadow & (KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI);
    m_lapic.take_nmis();
    if (events.flags & KVM_VCPUEVENT_VALID_NMI_PENDING)
        m_nmi_pending = events.nmi.pending ? 1 : 0;
    if (events.nmi.injected)
        m_nmi_pending = 1;
    m_nmi_masked = events.nmi.masked;
    if (events.flags & KVM_VCPUEVENT_VALID_SIPI_VECTOR)
        m_sipi_vector = events.sipi_vector;
    return 0;
}

int SoftVcpu::set_mp_state(const kvm_mp_state& state) {
    switch (state.mp_state) {
    case KVM_MP_STATE_RUNNABLE:
        break;
    case KVM_MP_STATE_UNINITIALIZED:
    case KVM_MP_STATE_INIT_RECEIVED:
    case KVM_MP_STATE_HALTED:
    case KVM_MP_STATE_SIPI_RECEIVED:
        if (!m_vm.has_irqchip())
            return fail(EINVAL);
        break;
    default:
        return fail(EINVAL);
    }
    if (state.mp_state == KVM_MP_STATE_SIPI_RECEIVED) {
        // As KVM: wait in INIT_RECEIVED with the SIPI already latched.
        m_mp_state = KVM_MP_STATE_INIT_RECEIVED;
        ApicMessage sipi;
        sipi.delivery_mode = apic_mode::sipi;
        sipi.vector = static_cast<uint8_t>(m_sipi_vector);
        sipi.shorthand = 1;
        m_lapic.deliver(sipi, &m_lapic);
        return 0;
    }
    m_mp_state = state.mp_state;
    return 0;
}

int SoftVcpu::set_cpuid(const kvm_cpuid2& cpuid) {
    if (cpuid.nent > k_max_cpuid_entries)
        return fail(E2BIG);
    std::span<const kvm_cpuid_entry2> entries(abi::cpuid_entries(&cpuid), cpuid.nent);
    // After the first KVM_RUN, KVM accepts only the table it already has.
    if (m_ran)
        return m_cpuid.same_as(entries) ? 0 : fail(EINVAL);
    m_cpuid.assign(entries);
    m_lapic.set_tsc_deadline_supported(m_cpuid.has_tsc_deadline());
    return 0;
}

int SoftVcpu::get_cpuid(kvm_cpuid2& cpuid) {
    const auto& entries = m_cpuid.entries();
    if (cpuid.nent < entries.size())
        return fail(E2BIG);
    cpuid.nent = static_cast<uint32_t>(entries.size());
    std::copy(entries.begin(), entries.end(), abi::cpuid_entries(&cpuid));
    return 0;
}

int SoftVcpu::set_tsc_khz(unsigned long khz) {
    if (khz == 0)
        khz = host_tsc_khz();
    if (khz < 1000 || khz > 100'000'000)
        return fail(EINVAL);
    // The guest TSC continues from its current value at the new rate.
    int64_t now = monotonic_ns();
    uint64_t current = m_tsc.at(now);
    m_tsc.khz = static_cast<uint32_t>(khz);
    m_tsc.offset = 0;
    m_tsc.offset = static_cast<int64_t>(current - m_tsc.at(now));
    return 0;
}

// --- KVM_RUN ---

void SoftVcpu::accept_events() {
    // KVM's kvm_apic_accept_events(): INIT resets the vCPU (the BSP restarts at the reset
    // vector, an AP waits for its SIPI); a SIPI starts a waiting AP.
    if (!m_vm.has_irqchip() || !m_lapic.has_requests())
        return;
    if (m_lapic.take_init()) {
        reset_state(true);
        m_mp_state = m_id == 0 ? KVM_MP_STATE_RUNNABLE : KVM_MP_STATE_INIT_RECEIVED;
    }
    if (auto vector = m_lapic.take_sipi(); vector && m_mp_state == KVM_MP_STATE_INIT_RECEIVED) {
        m_sipi_vector = *vector;
        m_state.sregs.cs.selector = static_cast<uint16_t>(*vector << 8);
        m_state.sregs.cs.base = static_cast<uint64_t>(*vector) << 12;
        m_state.regs.rip = 0;
        m_mp_state = KVM_MP_STATE_RUNNABLE;
        m_cpu.flush_tlb();
    }
    m_nmi_pending += m_lapic.take_nmis();
}

void SoftVcpu::process_events(int64_t now) {
    if (!m_vm.has_irqchip())
        return;
    accept_events();
    if (m_lapic.next_timer(m_tsc) <= now)
        m_lapic.service_timer(now, m_tsc);
    m_vm.service_timers(now);
}

bool SoftVcpu::wake_condition() {
    // KVM's kvm_vcpu_has_events() for a halted vCPU: an interrupt the guest would take now
    // (RFLAGS.IF set). INIT and SIPI are handled by process_events(). NMIs are recorded but not
    // delivered (the interpreter has no NMI entry), so they do not end a halt either.
    if (!(m_state.regs.rflags & (1u << 9)))
        return false;
    if (m_vm.pic_output() && m_lapic.accepts_pic_interrupts() && m_vm.pic_pending_vector() >= 0)
        return true;
    return m_lapic.pending_vector() >= 0;
}

int64_t SoftVcpu::next_deadline() { return std::min(m_lapic.next_timer(m_tsc), m_vm.next_timer()); }

SoftVcpu::Wait SoftVcpu::wait(int64_t deadline) {
    // Race-free sleep: with every signal blocked, announce the wait and check for a kick; then
    // ppoll() atomically restores the caller's mask, so a signal that arrived in between is
    // delivered there and interrupts the sleep (EINTR) instead of being missed.
    sigset_t all, original;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &original);
    m_waiting.store(true, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    Wait result = Wait::Woken;
    bool ready = immediate_exit() || m_lapic.has_requests() ||
                 (m_mp_state == KVM_MP_STATE_HALTED && wake_condition()) || next_deadline() <= monotonic_ns();
    if (!ready) {
        pollfd fd{m_event.get(), POLLIN, 0};
        timespec timeout{};
        timespec* timeout_ptr = nullptr;
        if (deadline != k_never) {
            int64_t left = std::max<int64_t>(deadline - monotonic_ns(), 0);
            timeout.tv_sec = left / 1'000'000'000;
            timeout.tv_nsec = left % 1'000'000'000;
            timeout_ptr = &timeout;
        }
        int n = ::ppoll(&fd, 1, timeout_ptr, &original);
        if (n < 0 && errno == EINTR)
            result = Wait::Interrupted;
        if (n > 0) {
            uint64_t drained;
            [[maybe_unused]] ssize_t r = ::read(m_event.get(), &drained, sizeof(drained));
        }
    }
    m_waiting.store(false, std::memory_order_seq_cst);
    pthread_sigmask(SIG_SETMASK, &original, nullptr);
    if (immediate_exit())
        result = Wait::Interrupted;
    return result;
}

int SoftVcpu::run() {
    kvm_run* run = run_struct();
    // Complete the exit userspace has just handled, also when immediate_exit is set (KVM
    // finishes pending I/O before honouring it).
    if (m_pending == Pending::PioIn)
        m_cpu.complete_pio_in(m_state, m_run.data() + k_pio_data_offset, m_exit_len);
    else if (m_pending == Pending::MmioRead)
        m_cpu.complete_mmio_read(m_exit_gpa, run->mmio.data, m_exit_len);
    m_pending = Pending::None;

    // immediate_exit at entry: KVM returns EINTR without touching exit_reason (a signal taken
    // while the guest runs, below, reports KVM_EXIT_INTR).
    if (immediate_exit()) {
        finish_exit();
        return fail(EINTR);
    }

    for (;;) {
        int64_t now = monotonic_ns();
        process_events(now);

        if (m_mp_state == KVM_MP_STATE_UNINITIALIZED || m_mp_state == KVM_MP_STATE_INIT_RECEIVED) {
            if (wait(k_never) == Wait::Interrupted)
                return interrupted();
            continue;
        }
        if (m_mp_state == KVM_MP_STATE_HALTED) {
            if (!wake_condition()) {
                if (wait(next_deadline()) == Wait::Interrupted)
                    return interrupted();
                continue;
            }
            m_mp_state = KVM_MP_STATE_RUNNABLE;
        }
        if (immediate_exit())
            return interrupted();

        if (m_flush_tlb.exchange(false, std::memory_order_relaxed))
            m_cpu.flush_tlb();
        m_exit_recorded = false;
        m_ran = true;  // the guest has run: KVM freezes CPUID from here on
        m_vm.gate().enter();
        Stop stop = m_cpu.run(m_state, *this, m_budget);
        m_vm.gate().leave();

        // Keep a slice near 10-20 µs whatever the interpreter's speed, so that timers, kicks
        // and dirty-log harvests never wait long for it.
        int64_t elapsed = monotonic_ns() - now;
        if (stop.reason == StopReason::Budget) {
            if (elapsed < 8'000 && m_budget < (1u << 20))
                m_budget *= 2;
            else if (elapsed > 20'000 && m_budget > 64)
                m_budget /= 2;
        }

        switch (stop.reason) {
        case StopReason::Budget:
            continue;
        case StopReason::Halt:
            if (!m_vm.has_irqchip()) {
                run->exit_reason = KVM_EXIT_HLT;
                finish_exit();
                return 0;
            }
            // With the in-kernel irqchip HLT never leaves KVM_RUN: the vCPU waits for an
            // interrupt it can take.
            m_mp_state = KVM_MP_STATE_HALTED;
            continue;
        case StopReason::IoExit:
        case StopReason::MmioExit:
            if (!m_exit_recorded) {
                run->exit_reason = KVM_EXIT_INTERNAL_ERROR;
                run->internal.suberror = KVM_INTERNAL_ERROR_EMULATION;
                run->internal.ndata = 0;
                m_internal_error = "interpreter reported an exit the bus did not record";
                finish_exit();
                return 0;
            }
            finish_exit();
            return 0;
        case StopReason::Shutdown:
            run->exit_reason = KVM_EXIT_SHUTDOWN;
            finish_exit();
            return 0;
        case StopReason::Internal:
            run->exit_reason = KVM_EXIT_INTERNAL_ERROR;
            run->internal.suberror = KVM_INTERNAL_ERROR_EMULATION;
            run->internal.ndata = 0;
            m_internal_error = stop.detail;
            base::logf(base::Level::Warning, base::Event::None, "soft vCPU {}: emulation failure: {}", m_id, stop.detail);
            finish_exit();
            return 0;
        }
    }
}

int SoftVcpu::ioctl(unsigned long request, unsigned long arg) {
    std::lock_guard lock(m_ioctl_lock);
    // SAFETY: every pointer argument below has the type `request` defines in linux/kvm.h; the
    // caller owns the memory for the duration of the call (KVM's copy_from/to_user contract).
    switch (request) {
    case KVM_RUN:
        if (arg)
            return fail(EINVAL);
        return run();
    case KVM_GET_REGS: *arg_ptr<kvm_regs>(arg) = m_state.regs; return 0;
    case KVM_SET_REGS: return set_regs(*arg_ptr<const kvm_regs>(arg));
    case KVM_GET_SREGS: return get_sregs(*arg_ptr<kvm_sregs>(arg));
    case KVM_SET_SREGS: return set_sregs(*arg_ptr<const kvm_sregs>(arg));
    case KVM_GET_SREGS2: {
        kvm_sregs sregs{};
        get_sregs(sregs);
        auto& out = *arg_ptr<kvm_sregs2>(arg);
        out = {};
        out.cs = sregs.cs, out.ds = sregs.ds, out.es = sregs.es, out.fs = sregs.fs, out.gs = sregs.gs;
        out.ss = sregs.ss, out.tr = sregs.tr, out.ldt = sregs.ldt, out.gdt = sregs.gdt, out.idt = sregs.idt;
        out.cr0 = sregs.cr0, out.cr2 = sregs.cr2, out.cr3 = sregs.cr3, out.cr4 = sregs.cr4, out.cr8 = sregs.cr8;
        out.efer = sregs.efer, out.apic_base = sregs.apic_base;
        return 0;
    }
    case KVM_SET_SREGS2: {
        const auto& in = *arg_ptr<const kvm_sregs2>(arg);
        if (in.flags & ~static_cast<uint64_t>(KVM_SREGS2_FLAGS_PDPTRS_VALID))
            return fail(EINVAL);
        kvm_sregs sregs{};
        sregs.cs = in.cs, sregs.ds = in.ds, sregs.es = in.es, sregs.fs = in.fs, sregs.gs = in.gs;
        sregs.ss = in.ss, sregs.tr = in.tr, sregs.ldt = in.ldt, sregs.gdt = in.gdt, sregs.idt = in.idt;
        sregs.cr0 = in.cr0, sregs.cr2 = in.cr2, sregs.cr3 = in.cr3, sregs.cr4 = in.cr4, sregs.cr8 = in.cr8;
        sregs.efer = in.efer, sregs.apic_base = in.apic_base;
        return set_sregs(sregs);
    }
    case KVM_GET_FPU: get_fpu(*arg_ptr<kvm_fpu>(arg)); return 0;
    case KVM_SET_FPU: set_fpu(*arg_ptr<const kvm_fpu>(arg)); return 0;
    case KVM_GET_XSAVE:
    case KVM_GET_XSAVE2: std::memcpy(arg_ptr<kvm_xsave>(arg)->region, m_xsave, sizeof(m_xsave)); return 0;
    case KVM_SET_XSAVE: return set_xsave(*arg_ptr<const kvm_xsave>(arg));
    case KVM_GET_XCRS: {
        auto& xcrs = *arg_ptr<kvm_xcrs>(arg);
        xcrs = {};
        xcrs.nr_xcrs = 1;
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = m_state.xcr0;
        return 0;
    }
    case KVM_SET_XCRS: return set_xcrs(*arg_ptr<const kvm_xcrs>(arg));
    case KVM_GET_DEBUGREGS: *arg_ptr<kvm_debugregs>(arg) = m_debugregs; return 0;
    case KVM_SET_DEBUGREGS: return set_debugregs(*arg_ptr<const kvm_debugregs>(arg));
    case KVM_GET_VCPU_EVENTS: return get_events(*arg_ptr<kvm_vcpu_events>(arg));
    case KVM_SET_VCPU_EVENTS: return set_events(*arg_ptr<const kvm_vcpu_events>(arg));
    case KVM_GET_MP_STATE:
        accept_events();
        arg_ptr<kvm_mp_state>(arg)->mp_state = m_mp_state;
        return 0;
    case KVM_SET_MP_STATE: return set_mp_state(*arg_ptr<const kvm_mp_state>(arg));
    case KVM_GET_LAPIC:
        if (!m_vm.has_irqchip())
            return fail(EINVAL);
        *arg_ptr<kvm_lapic_state>(arg) = m_lapic.state(monotonic_ns());
        return 0;
    case KVM_SET_LAPIC:
        if (!m_vm.has_irqchip())
            return fail(EINVAL);
        m_lapic.set_state(*arg_ptr<const kvm_lapic_state>(arg), monotonic_ns());
        m_flush_tlb.store(true, std::memory_order_relaxed);
        return 0;
    case KVM_GET_MSRS: return get_msrs(*arg_ptr<kvm_msrs>(arg));
    case KVM_SET_MSRS: return set_msrs(*arg_ptr<kvm_msrs>(arg));
    case KVM_SET_CPUID2: return set_cpuid(*arg_ptr<const kvm_cpuid2>(arg));
    case KVM_GET_CPUID2: return get_cpuid(*arg_ptr<kvm_cpuid2>(arg));
    case KVM_GET_TSC_KHZ: return static_cast<int>(m_tsc.khz);
    case KVM_SET_TSC_KHZ: return set_tsc_khz(arg);
    default: return fail(ENOTTY);
    }
}

}  // namespace colod::kvm::soft
