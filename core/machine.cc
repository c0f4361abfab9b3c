// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/machine.h"

#include <algorithm>
#include <csignal>
#include <cstring>
#include <ctime>

#include "base/log.h"
#include "base/thread_name.h"
#include "core/boot.h"
#include "core/acpi/tables.h"
#include "core/elf_loader.h"
#include "core/linux_boot.h"
#include "core/uart.h"
#include "core/virtio/rng.h"

namespace colod::core {

std::string_view stop_reason_name(StopReason reason) {
    switch (reason) {
    case StopReason::Running: return "running";
    case StopReason::PowerOff: return "power-off";
    case StopReason::TripleFault: return "triple-fault";
    case StopReason::HaltedNoInterrupts: return "halted-with-interrupts-off";
    case StopReason::InternalError: return "internal-error";
    case StopReason::Requested: return "requested";
    case StopReason::Reset: return "reset";
    }
    return "unknown";
}

base::Result<std::unique_ptr<Machine>> Machine::create(const MachineConfig& config) {
    if (config.vcpus == 0)
        return base::Error(base::Errc::Invalid, "a machine needs at least one vCPU");
    if (config.guest == GuestKind::Linux && config.backend != "kvm")
        return base::Error::make(base::Errc::Unsupported,
                                 "Linux guests need KVM; the {} backend runs only colod's own guests", config.backend);
    auto backend = TRY(kvm::System::make_backend(config.backend));
    auto system = TRY(kvm::System::open(*backend));
    int max_vcpus = system.check_extension(KVM_CAP_MAX_VCPUS);
    if (max_vcpus <= 0)
        max_vcpus = system.check_extension(KVM_CAP_NR_VCPUS);
    if (max_vcpus > 0 && config.vcpus > static_cast<uint32_t>(max_vcpus))
        return base::Error::make(base::Errc::Unsupported, "{} vCPUs requested; this host's KVM allows {}", config.vcpus,
                                 max_vcpus);
    auto vm = TRY(system.create_vm());
    auto memory = TRY(GuestMemory::create(config.memory_bytes));
    // Manual dirty-log protection must be on before the slots are created.
    TRY(vm.enable_manual_dirty_log());
    TRY(memory.register_slots(vm, true));
    TRY(vm.create_irqchip_and_pit());

    std::unique_ptr<Machine> machine(new Machine(std::move(backend), std::move(system), std::move(vm), std::move(memory)));
    TscDeadline tsc_deadline =
        machine->m_system.check_extension(KVM_CAP_TSC_DEADLINE_TIMER) > 0 ? TscDeadline::Present : TscDeadline::Absent;
    for (uint32_t id = 0; id < config.vcpus; ++id) {
        auto vcpu = TRY(machine->m_vm.create_vcpu(id));
        auto cpuid = cpuid_for_vcpu(machine->m_system.supported_cpuid(), id, tsc_deadline);
        TRY(vcpu.set_cpuid(cpuid));
        machine->m_vcpus.push_back(std::move(vcpu));
    }

    Machine* self = machine.get();
    auto power_off = [self](int code) {
        self->request_stop(StopInfo{StopReason::PowerOff, code, fmt::format("guest powered off with code {}", code)});
    };
    auto standard = TRY(build_standard_board(machine->m_board, power_off));
    machine->m_uart = standard.uart;
    machine->m_guest = config.guest;
    if (config.guest == GuestKind::Linux) {
        LinuxBoardCallbacks callbacks;
        callbacks.power_off = [self] {
            self->request_stop(StopInfo{StopReason::PowerOff, 0, "the guest powered off (ACPI S5)"});
        };
        callbacks.reset = [self] { self->guest_reset(); };
        machine->m_linux = TRY(build_linux_board(machine->m_board, std::move(callbacks), config.linux_board));
    }
    return machine;
}

Machine::Machine(std::unique_ptr<kvm::Backend> backend, kvm::System system, kvm::Vm vm, GuestMemory memory)
    : m_backend(std::move(backend)),
      m_system(std::move(system)),
      m_vm(std::move(vm)),
      m_memory(std::move(memory)),
      m_backend_name(m_system.backend_name()) {}

Machine::~Machine() {
    request_stop(StopInfo{StopReason::Requested, 0, "machine destroyed"});
    wait();
    if (m_reset_thread.joinable())
        m_reset_thread.join();  // its pause() returns at once on a stopped machine
}

base::Result<void> Machine::boot_elf(std::span<const std::byte> file, std::string_view cmdline) {
    auto image = TRY(parse_elf(file));
    TRY(load_elf(image, file, m_memory));
    kvm::Vcpu& bsp = m_vcpus.front();
    auto sregs = TRY(bsp.sregs());
    auto boot = TRY(setup_direct_boot(m_memory, image, vcpu_count(), cmdline, sregs));
    TRY(bsp.set_sregs(boot.sregs));
    TRY(bsp.set_regs(boot.regs));
    return base::ok();
}

base::Result<void> Machine::boot_linux(std::span<const std::byte> kernel, std::span<const std::byte> initrd,
                                       std::string_view cmdline) {
    TRY(prepare_reboot(kernel, initrd, cmdline));
    return load_linux(kernel, initrd, cmdline);
}

base::Result<void> Machine::prepare_reboot(std::span<const std::byte> kernel, std::span<const std::byte> initrd,
                                           std::string_view cmdline) {
    if (m_guest != GuestKind::Linux)
        return base::Error(base::Errc::Invalid, "a Linux kernel on a machine built for an ELF64 guest");
    if (!m_power_on)
        m_power_on = TRY(save_state());
    m_boot = BootImage{{kernel.begin(), kernel.end()}, {initrd.begin(), initrd.end()}, std::string(cmdline)};
    return base::ok();
}

void Machine::set_reboot_in_place(bool on) {
    std::lock_guard lock(m_mutex);
    m_reboot_in_place = on;
}

void Machine::guest_reset() {
    std::thread previous;
    bool reboot = false;
    {
        std::lock_guard lock(m_mutex);
        if (m_stop.reason != StopReason::Running || m_reset_pending)
            return;  // stopping anyway, or a reboot already under way
        if (m_reboot_in_place && m_boot && m_power_on) {
            // This vCPU thread cannot pause the machine it runs in: a thread of its own does,
            // once this exit is handled and the vCPU parks.
            reboot = true;
            m_reset_pending = true;
            previous = std::move(m_reset_thread);
            m_reset_thread = base::named_thread("reboot", [this] {
                reboot_in_place();
            });
        }
    }
    if (previous.joinable())
        previous.join();  // the last reboot's thread: it ended when it cleared m_reset_pending
    if (!reboot)
        request_stop(StopInfo{StopReason::Reset, 0, "the guest asked for a reset (reboot)"});
}

void Machine::reboot_in_place() {
    auto paused = pause();
    if (paused.paused() && !stopped()) {  // (the machine may have stopped while it paused)
        if (auto done = reboot_paused(); !done) {
            // Stopped before the pause ends: the half-reset guest never runs.
            request_stop(StopInfo{StopReason::InternalError, 0,
                                  fmt::format("the guest's reboot failed: {}", done.error().message())});
        } else {
            uint64_t count;
            {
                std::lock_guard lock(m_mutex);
                count = ++m_reboots;
            }
            base::log(base::Level::Notice, base::Event::GuestReset,
                      fmt::format("the guest rebooted in place (reboot {}): RAM cleared, every vCPU and device back "
                                  "to power-on, the kernel loaded again",
                                  count),
                      {{"REASON", "the guest wrote its reset register"}});
        }
    }
    std::lock_guard lock(m_mutex);
    m_reset_pending = false;
}

base::Result<void> Machine::reboot_paused() {
    m_memory.clear();
    // The virtio-rng's place in its stream survives the reboot (a COLO secondary follows it).
    uint64_t rng_taken = m_linux.rng ? m_linux.rng->bytes_taken() : 0;
    TRY(load_state(*m_power_on));
    if (m_linux.rng)
        m_linux.rng->continue_stream_at(rng_taken);
    return load_linux(m_boot->kernel, m_boot->initrd, m_boot->cmdline);
}

base::Result<void> Machine::load_linux(std::span<const std::byte> kernel, std::span<const std::byte> initrd,
                                       std::string_view cmdline) {
    if (m_guest != GuestKind::Linux)
        return base::Error(base::Errc::Invalid, "a Linux kernel on a machine built for an ELF64 guest");
    acpi::TableLayout layout;
    layout.vcpus = vcpu_count();
    for (const auto& device : m_board.announced())
        if (device.kind == Board::Announce::VirtioMmio)
            layout.virtio_mmio.push_back({device.mmio_base, static_cast<uint32_t>(device.mmio_size), device.irq});
    auto tables = TRY(acpi::build_tables(layout, linux_layout::k_acpi_tables,
                                         linux_layout::k_acpi_tables_end - linux_layout::k_acpi_tables));
    kvm::Vcpu& bsp = m_vcpus.front();
    auto sregs = TRY(bsp.sregs());
    auto boot = TRY(setup_linux_boot(m_memory, LinuxBoot{kernel, initrd, cmdline, tables.bytes, tables.rsdp_address},
                                     sregs));
    TRY(bsp.set_sregs(boot.sregs));
    TRY(bsp.set_regs(boot.regs));
    return base::ok();
}

base::Result<void> Machine::start() {
    kvm::install_kick_handler();
    std::lock_guard lock(m_mutex);
    if (!m_threads.empty())
        return base::Error(base::Errc::Invalid, "machine already started");
    m_board.seal();
    m_thread_ids.resize(m_vcpus.size());
    m_running = m_vcpus.size();
    for (size_t i = 0; i < m_vcpus.size(); ++i) {
        m_threads.emplace_back([this, i] { vcpu_loop(i); });
        m_thread_ids[i] = m_threads.back().native_handle();
    }
    return base::ok();
}

void Machine::kick_all() {
    // immediate_exit first, then the signal: a vCPU between two KVM_RUNs sees the flag, one
    // inside KVM_RUN is interrupted by the signal. No window loses the kick.
    for (auto& vcpu : m_vcpus)
        vcpu.set_immediate_exit(true);
    for (size_t i = 0; i < m_thread_ids.size(); ++i)
        pthread_kill(m_thread_ids[i], kvm::kick_signal());
}

Machine::PauseGuard Machine::pause() {
    std::unique_lock lock(m_mutex);
    m_changed.wait(lock, [&] { return !m_paused; });
    if (m_stop.reason != StopReason::Running && m_running == 0)
        return PauseGuard(nullptr);
    m_paused = true;
    m_pause_requested = true;
    kick_all();
    m_changed.wait(lock, [&] { return m_parked == m_running; });
    lock.unlock();
    m_board.quiesce();  // no device thread touches memory or device state from here
    return PauseGuard(this);
}

void Machine::resume() {
    m_board.resume();
    std::lock_guard lock(m_mutex);
    if (m_stop.reason == StopReason::Running)
        for (auto& vcpu : m_vcpus)
            vcpu.set_immediate_exit(false);
    m_pause_requested = false;
    m_paused = false;
    m_changed.notify_all();
}

void Machine::park() {
    std::unique_lock lock(m_mutex);
    if (!m_pause_requested || m_stop.reason != StopReason::Running)
        return;
    ++m_parked;
    m_changed.notify_all();
    m_changed.wait(lock, [&] { return !m_pause_requested || m_stop.reason != StopReason::Running; });
    --m_parked;
}

void Machine::request_stop(StopInfo info) {
    std::lock_guard lock(m_mutex);
    if (m_stop.reason == StopReason::Running) {
        m_stop = std::move(info);
        if (!m_threads.empty())
            base::logf(base::Level::Notice, base::Event::GuestStopped, "guest stopped: {} ({})",
                       stop_reason_name(m_stop.reason), m_stop.detail);
    }
    if (!m_threads.empty())
        kick_all();
    m_changed.notify_all();
}

base::Result<void> Machine::rearm() {
    if (!stopped())
        return base::Error(base::Errc::Invalid, "the guest has not stopped");
    (void)wait();  // the vCPU threads are joined
    std::lock_guard lock(m_mutex);
    m_threads.clear();
    m_stop = StopInfo{};
    for (auto& vcpu : m_vcpus)
        vcpu.set_immediate_exit(false);  // request_stop() kicked them
    return base::ok();
}

StopInfo Machine::wait() {
    {
        std::unique_lock lock(m_mutex);
        m_changed.wait(lock, [&] { return m_stop.reason != StopReason::Running; });
        // The threads are on their way out: never signal them again (a joined thread's id is
        // invalid for pthread_kill).
        m_thread_ids.clear();
    }
    for (auto& thread : m_threads)
        if (thread.joinable())
            thread.join();
    return stop_info();
}

bool Machine::started() const {
    std::lock_guard lock(m_mutex);
    return !m_threads.empty();
}

bool Machine::stopped() const {
    std::lock_guard lock(m_mutex);
    return m_stop.reason != StopReason::Running;
}

StopInfo Machine::stop_info() const {
    std::lock_guard lock(m_mutex);
    return m_stop;
}

void Machine::vcpu_loop(size_t index) {
    kvm::Vcpu& vcpu = m_vcpus[index];
    char name[16];
    std::snprintf(name, sizeof(name), "vcpu%zu", index);
    base::name_thread(name);
    for (;;) {
        auto result = vcpu.run();
        if (!result) {
            request_stop(StopInfo{StopReason::InternalError, 0, result.error().message()});
            break;
        }
        if (*result == kvm::RunResult::Interrupted) {
            // immediate_exit made KVM_RUN complete any pending I/O and return: a safe point.
            if (stopped())
                break;
            park();
            continue;
        }
        if (!handle_exit(vcpu))
            break;
    }
    std::lock_guard lock(m_mutex);
    --m_running;
    m_changed.notify_all();
}

bool Machine::handle_exit(kvm::Vcpu& vcpu) {
    kvm_run* run = vcpu.run_struct();
    switch (run->exit_reason) {
    case KVM_EXIT_IO: {
        // SAFETY: KVM places the I/O data inside the kvm_run mapping at data_offset.
        auto* data = reinterpret_cast<std::byte*>(run) + run->io.data_offset;
        for (uint32_t i = 0; i < run->io.count; ++i)
            m_bus.pio(run->io.port, std::span(data + i * run->io.size, run->io.size),
                      run->io.direction == KVM_EXIT_IO_OUT);
        return true;
    }
    case KVM_EXIT_MMIO:
        m_bus.mmio(run->mmio.phys_addr,
                   std::span(reinterpret_cast<std::byte*>(run->mmio.data), std::min<uint32_t>(run->mmio.len, 8)),
                   run->mmio.is_write != 0);
        return true;
    case KVM_EXIT_INTR:
        return true;
    case KVM_EXIT_SHUTDOWN: {
        // Where the guest was, for whoever reads the journal: a triple fault is the guest's own
        // failure (or a broken platform under it), and these registers are what tells which.
        // On AMD hosts KVM has already put the vCPU through INIT when it reports the shutdown,
        // so there the registers are the reset state and say nothing.
        std::string detail = fmt::format("vCPU {} triple-faulted", vcpu.id());
        auto regs = vcpu.regs();
        auto sregs = vcpu.sregs();
        if (regs && sregs && regs->rip == 0xfff0 && sregs->cs.selector == 0xf000)
            detail += " (its registers were reset by KVM, as on AMD hosts)";
        else if (regs && sregs)
            detail += fmt::format(" at rip {:#x} rsp {:#x} cs {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}",
                                  regs->rip, regs->rsp, sregs->cs.selector, sregs->cr0, sregs->cr2, sregs->cr3,
                                  sregs->cr4, sregs->efer);
        request_stop(StopInfo{StopReason::TripleFault, 0, std::move(detail)});
        return false;
    }
    case KVM_EXIT_HLT:
        request_stop(StopInfo{StopReason::HaltedNoInterrupts, 0, fmt::format("vCPU {} halted", vcpu.id())});
        return false;
    case KVM_EXIT_SYSTEM_EVENT:
        request_stop(StopInfo{StopReason::PowerOff, 0, fmt::format("system event {}", run->system_event.type)});
        return false;
    case KVM_EXIT_INTERNAL_ERROR: {
        std::string detail = fmt::format("vCPU {}: KVM internal error, suberror {}", vcpu.id(), run->internal.suberror);
        for (uint32_t i = 0; i < run->internal.ndata && i < 16; ++i)
            detail += fmt::format(" {:#x}", run->internal.data[i]);
        if (auto regs = vcpu.regs())
            detail += fmt::format(" at rip {:#x}", regs->rip);
        request_stop(StopInfo{StopReason::InternalError, 0, std::move(detail)});
        return false;
    }
    case KVM_EXIT_FAIL_ENTRY:
        request_stop(StopInfo{StopReason::InternalError, 0,
                              fmt::format("vCPU {}: VM entry failed, reason {:#x}", vcpu.id(),
                                          run->fail_entry.hardware_entry_failure_reason)});
        return false;
    default:
        request_stop(StopInfo{StopReason::InternalError, 0,
                              fmt::format("vCPU {}: unexpected KVM exit {}", vcpu.id(), run->exit_reason)});
        return false;
    }
}

base::Result<bool> Machine::halted_without_interrupts() {
    for (auto& vcpu : m_vcpus) {
        auto mp = TRY(vcpu.mp_state());
        auto regs = TRY(vcpu.regs());
        if (mp.mp_state != KVM_MP_STATE_HALTED || (regs.rflags & 0x200))
            return false;
    }
    return true;
}

namespace {
__u64* saved_tsc(kvm::VcpuState& state) {
    for (auto& entry : state.msrs)
        if (entry.index == kvm::k_msr_tsc)
            return &entry.data;
    return nullptr;
}
}  // namespace

base::Result<MachineState> Machine::save_state() {
    MachineState state;
    for (auto& vcpu : m_vcpus)
        state.vcpus.push_back(TRY(vcpu.save_state()));
    if (!m_vcpus.empty() && m_vcpus[0].has_tsc_offset()) {
        // Each vCPU's TSC was read at its own moment; say instead what every vCPU's TSC was at
        // the moment the first one's was read (they differ by their offsets only), so that a
        // restore keeps the vCPUs' TSCs exactly as far apart as they are here.
        __u64* first = saved_tsc(state.vcpus[0]);
        int64_t first_offset = TRY(m_vcpus[0].tsc_offset());
        for (size_t i = 1; first && i < m_vcpus.size(); ++i)
            if (__u64* tsc = saved_tsc(state.vcpus[i]))
                *tsc = *first + static_cast<uint64_t>(TRY(m_vcpus[i].tsc_offset()) - first_offset);
    }
    state.vm = TRY(m_vm.save_state());
    for (const auto& device : m_board.devices())
        state.devices.push_back(device->save_state());
    return state;
}

base::Result<void> Machine::load_state(const MachineState& state, ClockAtLoad clock) {
    // Validate the shape before touching anything.
    if (state.vcpus.size() != m_vcpus.size())
        return base::Error::make(base::Errc::Mismatch, "state has {} vCPUs, this machine {}", state.vcpus.size(),
                                 m_vcpus.size());
    if (state.devices.size() != m_board.devices().size())
        return base::Error::make(base::Errc::Mismatch, "state has {} devices, this machine {}", state.devices.size(),
                                 m_board.devices().size());
    for (size_t i = 0; i < m_board.devices().size(); ++i) {
        if (state.devices[i].name != m_board.devices()[i]->name())
            return base::Error::make(base::Errc::Mismatch, "state device {} is '{}', this machine has '{}'", i,
                                     state.devices[i].name, m_board.devices()[i]->name());
        TRY(m_board.devices()[i]->check_state(state.devices[i]));
    }
    std::chrono::nanoseconds advance{0};
    if (clock == ClockAtLoad::Continued && (state.vm.clock.flags & KVM_CLOCK_REALTIME)) {
        timespec now{};
        clock_gettime(CLOCK_REALTIME, &now);
        int64_t now_ns = static_cast<int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
        // Never backwards (a wall clock stepped back, or the other host's running ahead).
        advance = std::chrono::nanoseconds(std::max<int64_t>(0, now_ns - static_cast<int64_t>(state.vm.clock.realtime)));
    }
    TRY(m_vm.load_state(state.vm, advance));
    // Every vCPU's TSC is set against one reading of the host's: the guest's TSCs are what they
    // were at the capture (plus `advance`), as of that reading, and as far apart as they were.
    std::optional<uint64_t> host_tsc;
    if (!m_vcpus.empty() && m_vcpus[0].has_tsc_offset())
        host_tsc = TRY(m_vcpus[0].host_tsc());
    for (size_t i = 0; i < m_vcpus.size(); ++i) {
        uint64_t ticks = static_cast<uint64_t>(advance.count()) * state.vcpus[i].tsc_khz / 1'000'000;
        if (ticks == 0) {
            TRY(m_vcpus[i].load_state(state.vcpus[i], host_tsc));
            continue;
        }
        kvm::VcpuState advanced = state.vcpus[i];
        for (auto& entry : advanced.msrs)
            if (entry.index == kvm::k_msr_tsc)
                entry.data += ticks;
        TRY(m_vcpus[i].load_state(advanced, host_tsc));
    }
    for (size_t i = 0; i < m_board.devices().size(); ++i)
        TRY(m_board.devices()[i]->load_state(state.devices[i]));
    return base::ok();
}

}  // namespace colod::core
