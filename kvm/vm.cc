// SPDX-License-Identifier: GPL-2.0-or-later
#include "kvm/vm.h"

#include <algorithm>
#include <ctime>

#include "kvm/system.h"
#include "kvm/vcpu.h"

namespace colod::kvm {

Vm::~Vm() = default;

base::Result<void> Vm::create_irqchip_and_pit() {
    TRY(checked_ioctl(*m_handle, KVM_CREATE_IRQCHIP, 0ul));
    kvm_pit_config pit{};
    pit.flags = KVM_PIT_SPEAKER_DUMMY;
    TRY(checked_ioctl(*m_handle, KVM_CREATE_PIT2, &pit));
    return base::ok();
}

base::Result<void> Vm::set_memory_slot(const MemorySlot& slot) {
    kvm_userspace_memory_region region{};
    region.slot = slot.slot;
    region.flags = slot.log_dirty ? KVM_MEM_LOG_DIRTY_PAGES : 0;
    region.guest_phys_addr = slot.guest_phys;
    region.memory_size = slot.size;
    region.userspace_addr = reinterpret_cast<uint64_t>(slot.host);
    auto result = checked_ioctl(*m_handle, KVM_SET_USER_MEMORY_REGION, &region);
    if (!result)
        return std::move(result).error().context(
            fmt::format("memory slot {} at {:#x} ({} bytes)", slot.slot, slot.guest_phys, slot.size));
    return base::ok();
}

base::Result<DirtyLogMode> Vm::enable_manual_dirty_log() {
    int supported = check_extension(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
    if (!(supported & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)) {
        m_dirty_mode = DirtyLogMode::Legacy;
        return m_dirty_mode;
    }
    kvm_enable_cap cap{};
    cap.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
    // Without KVM_DIRTY_LOG_INITIALLY_SET: the first harvest reports only pages written since
    // logging started, which is what the checkpoint loop wants after its full copy.
    cap.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
    TRY(checked_ioctl(*m_handle, KVM_ENABLE_CAP, &cap));
    m_dirty_mode = DirtyLogMode::ManualProtect;
    return m_dirty_mode;
}

base::Result<void> Vm::dirty_log(uint32_t slot, std::span<uint64_t> bitmap) {
    kvm_dirty_log log{};
    log.slot = slot;
    log.dirty_bitmap = bitmap.data();
    TRY(checked_ioctl(*m_handle, KVM_GET_DIRTY_LOG, &log));
    return base::ok();
}

base::Result<void> Vm::clear_dirty_log(uint32_t slot, uint64_t first_page, uint64_t num_pages,
                                       std::span<uint64_t> bitmap) {
    if (m_dirty_mode != DirtyLogMode::ManualProtect)
        return base::ok();  // legacy GET_DIRTY_LOG already re-armed these pages
    kvm_clear_dirty_log clear{};
    clear.slot = slot;
    clear.first_page = first_page;
    clear.num_pages = static_cast<uint32_t>(num_pages);
    clear.dirty_bitmap = bitmap.data();
    TRY(checked_ioctl(*m_handle, KVM_CLEAR_DIRTY_LOG, &clear));
    return base::ok();
}

base::Result<void> Vm::irq_line(uint32_t gsi, bool level) {
    kvm_irq_level irq{};
    irq.irq = gsi;
    irq.level = level ? 1 : 0;
    TRY(checked_ioctl(*m_handle, KVM_IRQ_LINE, &irq));
    return base::ok();
}

namespace {

kvm_ioeventfd mmio_ioeventfd(uint64_t addr, uint32_t len, uint64_t value, int fd, uint32_t extra_flags) {
    kvm_ioeventfd request{};
    request.datamatch = value;
    request.addr = addr;
    request.len = len;
    request.fd = fd;
    request.flags = KVM_IOEVENTFD_FLAG_DATAMATCH | extra_flags;
    return request;
}

}  // namespace

base::Result<void> Vm::assign_ioeventfd(uint64_t addr, uint32_t len, uint64_t value, int fd) {
    if (check_extension(KVM_CAP_IOEVENTFD) <= 0)
        return base::Error(base::Errc::Unsupported, "KVM_IOEVENTFD: not offered by this KVM (KVM_CAP_IOEVENTFD)");
    auto request = mmio_ioeventfd(addr, len, value, fd, 0);
    auto result = checked_ioctl(*m_handle, KVM_IOEVENTFD, &request);
    if (!result)
        return std::move(result).error().context(fmt::format("ioeventfd for {}-byte writes of {:#x} to {:#x}", len, value, addr));
    return base::ok();
}

base::Result<void> Vm::deassign_ioeventfd(uint64_t addr, uint32_t len, uint64_t value, int fd) {
    auto request = mmio_ioeventfd(addr, len, value, fd, KVM_IOEVENTFD_FLAG_DEASSIGN);
    auto result = checked_ioctl(*m_handle, KVM_IOEVENTFD, &request);
    if (!result)
        return std::move(result).error().context(fmt::format("removing the ioeventfd of {:#x}", addr));
    return base::ok();
}

base::Result<VmState> Vm::save_state() {
    VmState state;
    kvm_irqchip chip{};
    chip.chip_id = KVM_IRQCHIP_PIC_MASTER;
    TRY(checked_ioctl(*m_handle, KVM_GET_IRQCHIP, &chip));
    state.pic_master = chip.chip.pic;
    chip = {};
    chip.chip_id = KVM_IRQCHIP_PIC_SLAVE;
    TRY(checked_ioctl(*m_handle, KVM_GET_IRQCHIP, &chip));
    state.pic_slave = chip.chip.pic;
    chip = {};
    chip.chip_id = KVM_IRQCHIP_IOAPIC;
    TRY(checked_ioctl(*m_handle, KVM_GET_IRQCHIP, &chip));
    state.ioapic = chip.chip.ioapic;
    TRY(checked_ioctl(*m_handle, KVM_GET_PIT2, &state.pit));
    TRY(checked_ioctl(*m_handle, KVM_GET_CLOCK, &state.clock));
    if (!(state.clock.flags & KVM_CLOCK_REALTIME)) {
        // KVM pairs the clock with the host's wall clock only when the host's clocksource is the
        // TSC: the same reading, taken just after, for a loader that continues the guest's time.
        timespec now{};
        clock_gettime(CLOCK_REALTIME, &now);
        state.clock.realtime = static_cast<uint64_t>(now.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(now.tv_nsec);
        state.clock.flags |= KVM_CLOCK_REALTIME;
    }
    return state;
}

base::Result<void> Vm::load_state(const VmState& state, std::chrono::nanoseconds advance) {
    // flags = 0: passing GET_CLOCK's KVM_CLOCK_REALTIME back would advance the guest clock by
    // the time the state spent in transit (KVM-NOTES: kvmclock); a caller that wants that says
    // so with `advance`.
    kvm_clock_data clock{};
    clock.clock = state.clock.clock + static_cast<uint64_t>(std::max<int64_t>(0, advance.count()));
    TRY(checked_ioctl(*m_handle, KVM_SET_CLOCK, &clock));
    kvm_irqchip chip{};
    chip.chip_id = KVM_IRQCHIP_PIC_MASTER;
    chip.chip.pic = state.pic_master;
    TRY(checked_ioctl(*m_handle, KVM_SET_IRQCHIP, &chip));
    chip = {};
    chip.chip_id = KVM_IRQCHIP_PIC_SLAVE;
    chip.chip.pic = state.pic_slave;
    TRY(checked_ioctl(*m_handle, KVM_SET_IRQCHIP, &chip));
    chip = {};
    chip.chip_id = KVM_IRQCHIP_IOAPIC;
    chip.chip.ioapic = state.ioapic;
    TRY(checked_ioctl(*m_handle, KVM_SET_IRQCHIP, &chip));
    kvm_pit_state2 pit = state.pit;
    TRY(checked_ioctl(*m_handle, KVM_SET_PIT2, &pit));
    return base::ok();
}

int Vm::check_extension(long capability) {
    int ret = m_handle->ioctl(KVM_CHECK_EXTENSION, static_cast<unsigned long>(capability));
    return ret < 0 ? 0 : ret;
}

base::Result<Vcpu> Vm::create_vcpu(uint32_t id) {
    auto handle = TRY(m_handle->create(KVM_CREATE_VCPU, id));
    kvm_run* run = TRY(handle->map_run(m_vcpu_mmap_size));
    int xsave2 = check_extension(KVM_CAP_XSAVE2);
    size_t xsave_bytes = xsave2 > static_cast<int>(sizeof(kvm_xsave)) ? static_cast<size_t>(xsave2) : sizeof(kvm_xsave);
    Vcpu vcpu(id, std::move(handle), run, xsave_bytes);
    TRY(vcpu.probe(m_msr_index_list));
    return vcpu;
}

}  // namespace colod::kvm
