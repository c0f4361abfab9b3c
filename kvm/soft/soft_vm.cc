// SPDX-License-Identifier: GPL-2.0-or-later
#include "kvm/soft/soft_vm.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "kvm/soft/host_clock.h"
#include "kvm/soft/soft_vcpu.h"

namespace colod::kvm::soft {

namespace {

int fail(int err) {
    errno = err;
    return -1;
}

// SAFETY helper: the argument of a pointer ioctl, as KVM's copy_from_user would see it.
template <typename T>
T* arg_ptr(unsigned long arg) {
    return reinterpret_cast<T*>(arg);
}

class VcpuHandle final : public Handle, public VcpuHandleAccess {
public:
    VcpuHandle(std::shared_ptr<SoftVm> vm, SoftVcpu* vcpu) : m_vm(std::move(vm)), m_vcpu(vcpu) {}
    int ioctl(unsigned long request, unsigned long arg) override { return m_vcpu->ioctl(request, arg); }
    base::Result<std::unique_ptr<Handle>> create(unsigned long, unsigned long) override {
        return base::Error(base::Errc::Invalid, "a vCPU creates nothing", EINVAL);
    }
    base::Result<kvm_run*> map_run(size_t mmap_size) override {
        if (mmap_size == 0 || mmap_size > m_vcpu->run_size())
            return base::Error(base::Errc::Invalid,
                               fmt::format("mmap of {} bytes of a vCPU (at most {})", mmap_size, m_vcpu->run_size()),
                               EINVAL);
        return m_vcpu->run_struct();
    }
    SoftVcpu& soft_vcpu() override { return *m_vcpu; }

private:
    std::shared_ptr<SoftVm> m_vm;
    SoftVcpu* m_vcpu;
};

}  // namespace

int soft_check_extension(long capability) {
    switch (capability) {
    case KVM_CAP_IRQCHIP:
    case KVM_CAP_USER_MEMORY:
    case KVM_CAP_SET_TSS_ADDR:
    case KVM_CAP_PIT2:
    case KVM_CAP_PIT_STATE2:
    case KVM_CAP_EXT_CPUID:
    case KVM_CAP_MP_STATE:
    case KVM_CAP_VCPU_EVENTS:
    case KVM_CAP_DEBUGREGS:
    case KVM_CAP_XSAVE:
    case KVM_CAP_XCRS:
    case KVM_CAP_IMMEDIATE_EXIT:
    case KVM_CAP_GET_TSC_KHZ:
    case KVM_CAP_TSC_CONTROL:
    case KVM_CAP_TSC_DEADLINE_TIMER:
    case KVM_CAP_SIGNAL_MSI:
    case KVM_CAP_SET_IDENTITY_MAP_ADDR:
    case KVM_CAP_IRQ_INJECT_STATUS:
    case KVM_CAP_SYNC_MMU:
    case KVM_CAP_SREGS2:
    case KVM_CAP_IOEVENTFD:
        return 1;
    case KVM_CAP_ADJUST_CLOCK:
        return KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC;
    case KVM_CAP_NR_VCPUS: {
        unsigned cpus = std::thread::hardware_concurrency();
        return static_cast<int>(cpus == 0 ? 1 : (cpus > k_max_vcpus ? k_max_vcpus : cpus));
    }
    case KVM_CAP_MAX_VCPUS:
    case KVM_CAP_MAX_VCPU_ID:
        return static_cast<int>(k_max_vcpus);
    case KVM_CAP_NR_MEMSLOTS:
        return 32764;
    case KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2:
        return KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET;
    case KVM_CAP_XSAVE2:
        return 4096;
    default:
        return 0;
    }
}

std::shared_ptr<SoftVm> SoftVm::create() { return std::shared_ptr<SoftVm>(new SoftVm()); }

SoftVm::SoftVm() {
    // kvmclock starts at 0 when the VM is created, as KVM's does.
    m_kvmclock_offset = -boottime_ns();
    m_pic.on_ack = [this](int irq) {
        if (Pit* pit = m_pit.load(std::memory_order_acquire); irq == 0 && pit)
            pit->acknowledged();
    };
    m_pic.on_mask = [this](int irq, bool masked) {
        if (Pit* pit = m_pit.load(std::memory_order_acquire); irq == 0 && pit)
            pit->line_masked(masked);
    };
    m_ioapic.on_ack = [this](int pin) {
        if (Pit* pit = m_pit.load(std::memory_order_acquire); pin == 0 && pit)
            pit->acknowledged();
    };
    m_ioapic.on_mask = [this](int pin, bool masked) {
        if (Pit* pit = m_pit.load(std::memory_order_acquire); pin == 0 && pit)
            pit->line_masked(masked);
    };
    m_ioapic.deliver = [this](const ApicMessage& message) { return deliver(message, nullptr); };
}

SoftVm::~SoftVm() = default;

base::Result<std::unique_ptr<Handle>> SoftVm::create_vcpu(unsigned long id) {
    std::lock_guard lock(m_lock);
    if (id >= k_max_vcpus)
        return base::Error(base::Errc::Invalid, fmt::format("vCPU id {} (at most {})", id, k_max_vcpus - 1), EINVAL);
    uint32_t count = m_vcpu_count.load();
    for (uint32_t i = 0; i < count; ++i)
        if (m_vcpus[i].load()->id() == id)
            return base::Error(base::Errc::Invalid, fmt::format("vCPU {} exists", id), EEXIST);
    if (count >= k_max_vcpus)
        return base::Error(base::Errc::Invalid, "too many vCPUs", EINVAL);
    auto vcpu = TRY(SoftVcpu::create(*this, static_cast<uint32_t>(id)));
    SoftVcpu* raw = vcpu.get();
    m_vcpu_storage[count] = std::move(vcpu);
    m_vcpus[count].store(raw);
    m_vcpu_count.store(count + 1);
    return std::unique_ptr<Handle>(new VcpuHandle(shared_from_this(), raw));
}

int SoftVm::deliver(const ApicMessage& message, const Lapic* sender) {
    uint32_t count = m_vcpu_count.load();
    int result = -1;
    bool lowest = message.delivery_mode == apic_mode::lowest && message.shorthand == 0;
    for (uint32_t i = 0; i < count; ++i) {
        SoftVcpu* vcpu = m_vcpus[i].load();
        int accepted = vcpu->lapic().deliver(message, sender);
        if (accepted < 0)
            continue;
        result = (result < 0 ? 0 : result) + accepted;
        if (accepted > 0)
            vcpu->kick();
        // Lowest-priority arbitration: the first APIC that takes it wins (KVM picks by
        // arbitration priority; with one interrupt in flight per vector the outcome is the same
        // for the guests colod runs).
        if (lowest && accepted > 0)
            break;
    }
    return result;
}

void SoftVm::update_pic_output_locked() { m_pic_output.store(m_pic.output(), std::memory_order_seq_cst); }

void SoftVm::kick_pic_targets() {
    if (!m_pic_output.load(std::memory_order_seq_cst))
        return;
    uint32_t count = m_vcpu_count.load();
    for (uint32_t i = 0; i < count; ++i) {
        SoftVcpu* vcpu = m_vcpus[i].load();
        if (vcpu->lapic().accepts_pic_interrupts())
            vcpu->kick();
    }
}

int SoftVm::set_irq(uint32_t gsi, IrqSource source, bool level) {
    int result = -1;
    {
        std::lock_guard lock(m_irqchip_lock);
        auto merge = [&](int r) {
            if (r >= 0)
                result = r + (result < 0 ? 0 : result);
        };
        if (gsi < 16)
            merge(m_pic.set_irq(static_cast<int>(gsi), source, level));
        if (gsi < static_cast<uint32_t>(Ioapic::k_pins))
            merge(m_ioapic.set_irq(static_cast<int>(gsi), source, level));
        update_pic_output_locked();
    }
    kick_pic_targets();
    return result;
}

void SoftVm::eoi(int vector, bool level) {
    std::lock_guard lock(m_irqchip_lock);
    m_ioapic.eoi(vector, level);
}

int SoftVm::pic_pending_vector() {
    std::lock_guard lock(m_irqchip_lock);
    return m_pic.output() ? m_pic.peek_vector() : -1;
}

int SoftVm::pic_acknowledge() {
    std::lock_guard lock(m_irqchip_lock);
    int vector = m_pic.acknowledge();
    update_pic_output_locked();
    return vector;
}

bool SoftVm::handles_port(uint16_t port) const {
    if (has_irqchip() && Pic::handles_port(port))
        return true;
    Pit* pit = m_pit.load(std::memory_order_acquire);
    return pit && pit->handles_port(port);
}

void SoftVm::port_read(uint16_t port, void* data, uint32_t size, int64_t now) {
    std::memset(data, 0, size);
    uint8_t value;
    if (has_irqchip() && Pic::handles_port(port)) {
        std::lock_guard lock(m_irqchip_lock);
        value = m_pic.read_port(port);
        update_pic_output_locked();
    } else {
        value = m_pit.load(std::memory_order_acquire)->read_port(port, now);
    }
    // The 8259 and 8254 are byte devices; wider reads see the byte in the low lane.
    std::memcpy(data, &value, 1);
}

void SoftVm::port_write(uint16_t port, const void* data, uint32_t size, int64_t now) {
    uint8_t value;
    std::memcpy(&value, data, 1);
    if (has_irqchip() && Pic::handles_port(port)) {
        if (size != 1)
            return;  // KVM ignores non-byte PIC writes
        {
            std::lock_guard lock(m_irqchip_lock);
            m_pic.write_port(port, value);
            update_pic_output_locked();
        }
        kick_pic_targets();
    } else {
        m_pit.load(std::memory_order_acquire)->write_port(port, value, now);
    }
}

void SoftVm::ioapic_read(uint64_t gpa, void* data, uint32_t len) {
    std::lock_guard lock(m_irqchip_lock);
    m_ioapic.mmio_read(gpa, data, len);
}

void SoftVm::ioapic_write(uint64_t gpa, const void* data, uint32_t len) {
    std::lock_guard lock(m_irqchip_lock);
    m_ioapic.mmio_write(gpa, data, len);
}

void SoftVm::service_timers(int64_t now) {
    Pit* pit = m_pit.load(std::memory_order_acquire);
    if (!pit)
        return;
    if (pit->service(now)) {
        set_irq(0, IrqSource::Pit, true);
        set_irq(0, IrqSource::Pit, false);
    }
}

int64_t SoftVm::next_timer() const {
    Pit* pit = m_pit.load(std::memory_order_acquire);
    return pit ? pit->next_expiry() : k_never;
}

int64_t SoftVm::kvmclock_ns() const {
    std::lock_guard lock(m_clock_lock);
    return boottime_ns() + m_kvmclock_offset;
}

void SoftVm::request_tlb_flush() {
    uint32_t count = m_vcpu_count.load();
    for (uint32_t i = 0; i < count; ++i)
        m_vcpus[i].load()->request_tlb_flush();
}

int SoftVm::create_irqchip() {
    std::lock_guard lock(m_lock);
    if (has_irqchip())
        return fail(EEXIST);
    if (m_vcpu_count.load() != 0)
        return fail(EINVAL);
    m_has_irqchip.store(true, std::memory_order_release);
    return 0;
}

int SoftVm::create_pit(const kvm_pit_config& config) {
    std::lock_guard lock(m_lock);
    if (m_pit.load())
        return fail(EEXIST);
    if (!has_irqchip())
        return fail(ENOENT);
    m_pit_storage = std::make_unique<Pit>(config.flags);
    m_pit.store(m_pit_storage.get(), std::memory_order_release);
    return 0;
}

int SoftVm::irq_line(kvm_irq_level& irq, bool with_status) {
    if (!has_irqchip())
        return fail(ENXIO);
    int status = set_irq(irq.irq, IrqSource::Userspace, irq.level != 0);
    if (with_status)
        irq.status = status;
    return 0;
}

int SoftVm::signal_msi(const kvm_msi& msi) {
    if (msi.flags & ~static_cast<uint32_t>(KVM_MSI_VALID_DEVID))
        return fail(EINVAL);
    if (msi.flags & KVM_MSI_VALID_DEVID)
        return fail(EINVAL);  // no device IDs without interrupt remapping
    if (!has_irqchip())
        return fail(ENXIO);
    ApicMessage message;
    message.dest = (msi.address_lo >> 12) & 0xff;
    message.logical = msi.address_lo & (1u << 2);
    message.vector = static_cast<uint8_t>(msi.data & 0xff);
    message.delivery_mode = static_cast<uint8_t>((msi.data >> 8) & 7);
    message.level_trigger = msi.data & (1u << 15);
    message.assert = true;
    int result = deliver(message, nullptr);
    if (result < 0)
        return fail(EPERM);  // no destination: KVM answers -1 as well
    return result;
}

int SoftVm::get_irqchip(kvm_irqchip& chip) {
    if (!has_irqchip())
        return fail(ENXIO);
    std::lock_guard lock(m_irqchip_lock);
    switch (chip.chip_id) {
    case KVM_IRQCHIP_PIC_MASTER:
    case KVM_IRQCHIP_PIC_SLAVE:
        chip.chip.pic = m_pic.state(static_cast<int>(chip.chip_id));
        return 0;
    case KVM_IRQCHIP_IOAPIC:
        chip.chip.ioapic = m_ioapic.state();
        return 0;
    default:
        return fail(EINVAL);
    }
}

int SoftVm::set_irqchip(const kvm_irqchip& chip) {
    if (!has_irqchip())
        return fail(ENXIO);
    {
        std::lock_guard lock(m_irqchip_lock);
        switch (chip.chip_id) {
        case KVM_IRQCHIP_PIC_MASTER:
        case KVM_IRQCHIP_PIC_SLAVE:
            m_pic.set_state(static_cast<int>(chip.chip_id), chip.chip.pic);
            break;
        case KVM_IRQCHIP_IOAPIC:
            m_ioapic.set_state(chip.chip.ioapic);
            break;
        default:
            return fail(EINVAL);
        }
        update_pic_output_locked();
    }
    kick_pic_targets();
    return 0;
}

int SoftVm::set_memory_region(const kvm_userspace_memory_region& region) {
    std::lock_guard lock(m_lock);
    SliceGate::Exclusive exclusive(m_gate);
    DirtyInit init = (m_manual_dirty_protect & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) &&
                             (m_manual_dirty_protect & KVM_DIRTY_LOG_INITIALLY_SET)
                         ? DirtyInit::AllSet
                         : DirtyInit::Clear;
    int err = m_slots.set_region(region, init);
    if (err)
        return fail(err);
    request_tlb_flush();
    return 0;
}

int SoftVm::get_dirty_log(const kvm_dirty_log& log) {
    uint32_t as_id = log.slot >> 16;
    if (as_id >= 2 || (log.slot & 0xffff) >= 32764)
        return fail(EINVAL);
    if (as_id != 0)
        return fail(ENOENT);
    std::lock_guard lock(m_lock);
    bool manual = m_manual_dirty_protect & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
    auto* out = static_cast<uint64_t*>(log.dirty_bitmap);
    int err;
    if (manual) {
        // Reporting without clearing can race with vCPUs: a page they dirty meanwhile is either
        // in this report or stays set for the next one.
        err = m_slots.dirty_log(log.slot, out, HarvestMode::CopyOnly);
    } else {
        SliceGate::Exclusive exclusive(m_gate);
        err = m_slots.dirty_log(log.slot, out, HarvestMode::CopyAndClear);
    }
    return err ? fail(err) : 0;
}

int SoftVm::clear_dirty_log(const kvm_clear_dirty_log& log) {
    uint32_t as_id = log.slot >> 16;
    if (as_id >= 2 || (log.slot & 0xffff) >= 32764)
        return fail(EINVAL);
    if (log.first_page & 63)
        return fail(EINVAL);
    if (as_id != 0)
        return fail(ENOENT);
    std::lock_guard lock(m_lock);
    SliceGate::Exclusive exclusive(m_gate);
    int err = m_slots.clear_dirty_log(log.slot, log.first_page, log.num_pages,
                                      static_cast<const uint64_t*>(log.dirty_bitmap));
    return err ? fail(err) : 0;
}

int SoftVm::enable_cap(const kvm_enable_cap& cap) {
    if (cap.flags)
        return fail(EINVAL);
    if (cap.cap == KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) {
        uint64_t allowed = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET;
        if (cap.args[0] & ~allowed)
            return fail(EINVAL);
        std::lock_guard lock(m_lock);
        m_manual_dirty_protect = cap.args[0];
        return 0;
    }
    return fail(EINVAL);
}

int SoftVm::get_clock(kvm_clock_data& data) {
    std::memset(&data, 0, sizeof(data));
    data.clock = static_cast<uint64_t>(kvmclock_ns());
    data.realtime = static_cast<uint64_t>(realtime_ns());
    data.host_tsc = __builtin_ia32_rdtsc();
    data.flags = KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC;
    return 0;
}

int SoftVm::set_clock(const kvm_clock_data& data) {
    if (data.flags & ~static_cast<uint32_t>(KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC))
        return fail(EINVAL);
    int64_t clock = static_cast<int64_t>(data.clock);
    // With KVM_CLOCK_REALTIME the clock also advances by the wall-clock time since `realtime`
    // (KVM's kvm_vm_ioctl_set_clock()).
    if (data.flags & KVM_CLOCK_REALTIME) {
        int64_t now_real = realtime_ns();
        if (now_real > static_cast<int64_t>(data.realtime))
            clock += now_real - static_cast<int64_t>(data.realtime);
    }
    std::lock_guard lock(m_clock_lock);
    m_kvmclock_offset = clock - boottime_ns();
    return 0;
}

namespace {

// Whether `fd` is an eventfd (KVM's eventfd_ctx_fdget() refuses anything else).
bool is_eventfd(int fd) {
    char target[64] = {};
    ssize_t n = ::readlink(fmt::format("/proc/self/fd/{}", fd).c_str(), target, sizeof(target) - 1);
    return n > 0 && std::string_view(target, static_cast<size_t>(n)) == "anon_inode:[eventfd]";
}

// Whether two descriptors are the same open file (KVM compares eventfd contexts). Where kcmp
// is not offered, any eventfd counts as the same.
bool same_file(int a, int b) {
    constexpr int k_kcmp_file = 0;
    long result = ::syscall(SYS_kcmp, ::getpid(), ::getpid(), k_kcmp_file, a, b);
    return result == 0 || (result < 0 && errno == ENOSYS);
}

}  // namespace

// KVM's kvm_ioeventfd(): assign or deassign, with its checks and its collision rule.
int SoftVm::ioeventfd(const kvm_ioeventfd& request) {
    constexpr uint32_t k_known = KVM_IOEVENTFD_FLAG_DATAMATCH | KVM_IOEVENTFD_FLAG_PIO | KVM_IOEVENTFD_FLAG_DEASSIGN;
    if (request.flags & ~k_known)
        return fail(EINVAL);
    switch (request.len) {
    case 0: case 1: case 2: case 4: case 8: break;
    default: return fail(EINVAL);
    }
    if (request.addr + request.len < request.addr)
        return fail(EINVAL);
    bool pio = request.flags & KVM_IOEVENTFD_FLAG_PIO;
    bool wildcard = !(request.flags & KVM_IOEVENTFD_FLAG_DATAMATCH);
    if (request.len == 0 && (!wildcard || pio))
        return fail(EINVAL);
    if (!is_eventfd(request.fd))
        return fail(::fcntl(request.fd, F_GETFD) < 0 ? EBADF : EINVAL);

    std::lock_guard lock(m_ioeventfd_lock);
    if (request.flags & KVM_IOEVENTFD_FLAG_DEASSIGN) {
        for (auto it = m_ioeventfds.begin(); it != m_ioeventfds.end(); ++it) {
            if (it->pio != pio || it->addr != request.addr || it->len != request.len ||
                it->datamatch.has_value() == wildcard || (!wildcard && *it->datamatch != request.datamatch) ||
                !same_file(it->fd.get(), request.fd))
                continue;
            m_ioeventfds.erase(it);
            m_has_ioeventfds.store(!m_ioeventfds.empty(), std::memory_order_release);
            return 0;
        }
        return fail(ENOENT);
    }
    for (const auto& existing : m_ioeventfds)
        if (existing.pio == pio && existing.addr == request.addr &&
            (existing.len == 0 || request.len == 0 ||
             (existing.len == request.len &&
              (!existing.datamatch || wildcard || *existing.datamatch == request.datamatch))))
            return fail(EEXIST);
    base::Fd copy(::fcntl(request.fd, F_DUPFD_CLOEXEC, 0));
    if (!copy)
        return -1;
    IoEventFd entry;
    entry.pio = pio;
    entry.addr = request.addr;
    entry.len = request.len;
    if (!wildcard)
        entry.datamatch = request.datamatch;
    entry.fd = std::move(copy);
    m_ioeventfds.push_back(std::move(entry));
    m_has_ioeventfds.store(true, std::memory_order_release);
    return 0;
}

bool SoftVm::signal_ioeventfd(bool pio, uint64_t addr, const void* data, uint32_t len) {
    if (!m_has_ioeventfds.load(std::memory_order_acquire))
        return false;
    uint64_t value = 0;
    std::memcpy(&value, data, std::min<uint32_t>(len, sizeof(value)));  // little-endian, as KVM reads it
    std::lock_guard lock(m_ioeventfd_lock);
    for (const auto& entry : m_ioeventfds) {
        if (entry.pio != pio || entry.addr != addr)
            continue;
        if (entry.len != 0 && (entry.len != len || (entry.datamatch && *entry.datamatch != value)))
            continue;
        uint64_t one = 1;
        (void)!::write(entry.fd.get(), &one, sizeof(one));  // eventfd_signal(): never fails short of overflow
        return true;
    }
    return false;
}

int SoftVm::ioctl(unsigned long request, unsigned long arg) {
    // SAFETY: every pointer argument below has the type `request` defines in linux/kvm.h; the
    // caller owns the memory for the duration of the call (KVM's copy_from/to_user contract).
    switch (request) {
    case KVM_CHECK_EXTENSION: return soft_check_extension(static_cast<long>(arg));
    case KVM_SET_USER_MEMORY_REGION: return set_memory_region(*arg_ptr<const kvm_userspace_memory_region>(arg));
    case KVM_SET_TSS_ADDR:
        if (arg > 0xffffffffull - 3 * 4096)
            return fail(EINVAL);
        m_tss_addr = arg;
        return 0;
    case KVM_SET_IDENTITY_MAP_ADDR: {
        std::lock_guard lock(m_lock);
        if (m_vcpu_count.load() != 0)
            return fail(EINVAL);
        m_identity_map_addr = *arg_ptr<const uint64_t>(arg);
        return 0;
    }
    case KVM_CREATE_IRQCHIP: return create_irqchip();
    case KVM_CREATE_PIT2: return create_pit(*arg_ptr<const kvm_pit_config>(arg));
    case KVM_IRQ_LINE: return irq_line(*arg_ptr<kvm_irq_level>(arg), false);
    case KVM_IRQ_LINE_STATUS: return irq_line(*arg_ptr<kvm_irq_level>(arg), true);
    case KVM_SIGNAL_MSI: return signal_msi(*arg_ptr<const kvm_msi>(arg));
    case KVM_GET_IRQCHIP: return get_irqchip(*arg_ptr<kvm_irqchip>(arg));
    case KVM_SET_IRQCHIP: return set_irqchip(*arg_ptr<const kvm_irqchip>(arg));
    case KVM_GET_PIT2: {
        Pit* pit = m_pit.load(std::memory_order_acquire);
        if (!pit)
            return fail(ENXIO);
        *arg_ptr<kvm_pit_state2>(arg) = pit->state();
        return 0;
    }
    case KVM_SET_PIT2: {
        Pit* pit = m_pit.load(std::memory_order_acquire);
        if (!pit)
            return fail(ENXIO);
        pit->set_state(*arg_ptr<const kvm_pit_state2>(arg), monotonic_ns());
        return 0;
    }
    case KVM_GET_CLOCK: return get_clock(*arg_ptr<kvm_clock_data>(arg));
    case KVM_SET_CLOCK: return set_clock(*arg_ptr<const kvm_clock_data>(arg));
    case KVM_GET_DIRTY_LOG: return get_dirty_log(*arg_ptr<const kvm_dirty_log>(arg));
    case KVM_CLEAR_DIRTY_LOG: return clear_dirty_log(*arg_ptr<const kvm_clear_dirty_log>(arg));
    case KVM_ENABLE_CAP: return enable_cap(*arg_ptr<const kvm_enable_cap>(arg));
    case KVM_IOEVENTFD: return ioeventfd(*arg_ptr<const kvm_ioeventfd>(arg));
    case KVM_CREATE_VCPU:
        // Through create() only: a soft vCPU is not a file descriptor.
        return fail(EINVAL);
    default: return fail(ENOTTY);
    }
}

}  // namespace colod::kvm::soft
