// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <pthread.h>

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "base/result.h"
#include "core/board.h"
#include "core/device.h"
#include "core/guest_memory.h"
#include "core/io_bus.h"
#include "core/linux_board.h"
#include "kvm/state.h"
#include "kvm/system.h"
#include "kvm/vcpu.h"
#include "kvm/vm.h"

namespace colod::core {

class Uart;

// What the machine will boot: colod's direct-boot ELF64 contract (guests/abi.h), or Linux (the
// 64-bit boot protocol, ACPI, the devices a Linux kernel drives: core/linux_board.h).
enum class GuestKind { Elf, Linux };

struct MachineConfig {
    uint64_t memory_bytes = 256ull << 20;
    uint32_t vcpus = 1;
    std::string backend = "kvm";  // "kvm" (/dev/kvm) or "soft" (software backend)
    GuestKind guest = GuestKind::Elf;
    LinuxBoardOptions linux_board;  // GuestKind::Linux: its NIC and disk, if any
};

enum class StopReason {
    Running,            // not stopped
    PowerOff,           // the guest wrote its exit code to the power port
    TripleFault,        // KVM_EXIT_SHUTDOWN
    HaltedNoInterrupts, // every vCPU halted with interrupts disabled: it can never wake
    InternalError,      // KVM could not run the guest (emulation failure, failed entry ...)
    Requested,          // the owner stopped the machine
    Reset,              // the guest asked for a reset (a reboot) where it cannot reboot in place
};

std::string_view stop_reason_name(StopReason reason);

struct StopInfo {
    StopReason reason = StopReason::Running;
    int exit_code = 0;  // for PowerOff
    std::string detail;
};

// Everything of a machine but its RAM.
struct MachineState {
    std::vector<kvm::VcpuState> vcpus;
    kvm::VmState vm;
    std::vector<DeviceState> devices;
};

// One guest: a VM, its memory, its vCPU threads and its devices.
//
// Threads: each vCPU runs KVM_RUN in its own thread and handles its exits there (device
// handlers run on vCPU threads). pause() returns only when every vCPU thread is parked outside
// KVM_RUN with its pending I/O completed, so state can be read and written consistently until
// the PauseGuard it returns is released.
class Machine {
public:
    static base::Result<std::unique_ptr<Machine>> create(const MachineConfig& config);
    ~Machine();

    // Loads an ELF64 image and sets up the bootstrap vCPU for direct boot. Before start().
    base::Result<void> boot_elf(std::span<const std::byte> image, std::string_view cmdline);
    // Loads a Linux bzImage and its initrd, writes the ACPI tables that describe this machine
    // (every vCPU, the board's announced devices) and points the bootstrap vCPU at the kernel's
    // 64-bit entry; the other vCPUs wait for the kernel's INIT/SIPI. Before start(), on a
    // machine created with GuestKind::Linux and a KVM backend.
    base::Result<void> boot_linux(std::span<const std::byte> kernel, std::span<const std::byte> initrd,
                                  std::string_view cmdline);
    // A Linux machine's power-on state and boot image without booting it (a secondary's machine,
    // which only holds state until it takes over), for a reboot in place. boot_linux() does the
    // same. Before start().
    base::Result<void> prepare_reboot(std::span<const std::byte> kernel, std::span<const std::byte> initrd,
                                      std::string_view cmdline);
    // When on (off by default), a Linux guest that writes its reset register reboots in place:
    // the machine pauses, its RAM is cleared (every page marked dirty, so the next checkpoint
    // carries all of it), every vCPU, the in-kernel devices and colod's devices go back to their
    // power-on state, the kernel and initrd are loaded again, and the guest runs on
    // (`guest-reset`). When off, or without a boot image, the machine stops with
    // StopReason::Reset.
    void set_reboot_in_place(bool on);

    // Starts the vCPU threads. A secondary in checkpoint mode never calls this until it takes
    // over: its machine only holds state.
    class PauseGuard;
    base::Result<void> start();
    // Once the guest has stopped (stopped() true), waits for the vCPU threads to end and makes
    // the machine startable again with the state it holds: a COLO secondary runs its replica
    // again from a checkpoint after the replica stopped by itself.
    base::Result<void> rearm();

    // Stops every vCPU outside KVM_RUN, then quiesces the board's devices that have threads of
    // their own; the machine stays paused until the guard goes. Pauses
    // are serialised: a second pause() waits for the first guard to go. The guard may be moved
    // to, and released on, any thread (a pause is a state of the machine, not a lock held by a
    // thread). Returns an empty guard (nothing to resume) once the machine has stopped.
    PauseGuard pause();

    // Ends the machine (first reason wins) and wakes wait().
    void request_stop(StopInfo info);
    // Blocks until the machine has stopped and every vCPU thread has exited.
    StopInfo wait();
    bool stopped() const;
    bool started() const;
    StopInfo stop_info() const;

    // While paused: true when every vCPU is halted with interrupts off (a guest that can never
    // wake). The caller stops the machine.
    base::Result<bool> halted_without_interrupts();

    // While paused: capture and restore of vCPUs, in-kernel devices and colod's devices.
    base::Result<MachineState> save_state();
    // What the guest's clocks (kvmclock and every TSC) read once the state is loaded:
    //   AsCaptured  what they read at the capture, as if the guest had been paused since (a
    //               checkpoint resumed on takeover: no time passed for the guest);
    //   Continued   that plus the wall-clock time since the capture (COLO's secondary, whose
    //               guest runs beside the primary's: its clocks go on with the primary's, so that
    //               whatever the guests read from them, TCP timestamps included, agrees).
    enum class ClockAtLoad { AsCaptured, Continued };
    base::Result<void> load_state(const MachineState& state, ClockAtLoad clock = ClockAtLoad::AsCaptured);

    GuestMemory& memory() { return m_memory; }
    kvm::Vm& vm() { return m_vm; }
    IoBus& bus() { return m_bus; }
    Uart& uart() { return *m_uart; }
    // A Linux guest's devices (all null for an ELF64 guest).
    const LinuxDevices& linux_devices() const { return m_linux; }
    // The device manager: more devices may be added until start().
    Board& board() { return m_board; }
    // The machine's devices in a fixed order (state sections use the index as instance).
    const std::vector<std::unique_ptr<Device>>& devices() const { return m_board.devices(); }
    uint32_t vcpu_count() const { return static_cast<uint32_t>(m_vcpus.size()); }
    std::string_view backend_name() const { return m_backend_name; }

private:
    Machine(std::unique_ptr<kvm::Backend> backend, kvm::System system, kvm::Vm vm, GuestMemory memory);
    void vcpu_loop(size_t index);
    bool handle_exit(kvm::Vcpu& vcpu);  // false when the machine must stop
    void park();                        // a vCPU thread waits out a pause
    void kick_all();
    void resume();
    base::Result<void> load_linux(std::span<const std::byte> kernel, std::span<const std::byte> initrd,
                                  std::string_view cmdline);
    void guest_reset();      // a vCPU thread: the guest wrote its reset register
    void reboot_in_place();  // the reset thread
    base::Result<void> reboot_paused();

    std::unique_ptr<kvm::Backend> m_backend;
    kvm::System m_system;
    kvm::Vm m_vm;
    GuestMemory m_memory;
    std::string m_backend_name;
    GuestKind m_guest = GuestKind::Elf;
    LinuxDevices m_linux;  // GuestKind::Linux: the devices only a Linux guest has
    std::vector<kvm::Vcpu> m_vcpus;
    IoBus m_bus;
    Board m_board{m_vm, m_memory, m_bus};
    Uart* m_uart = nullptr;

    std::vector<std::thread> m_threads;
    std::vector<pthread_t> m_thread_ids;

    mutable std::mutex m_mutex;
    std::condition_variable m_changed;
    bool m_pause_requested = false;
    size_t m_parked = 0;
    size_t m_running = 0;  // vCPU threads that have not exited
    StopInfo m_stop;
    bool m_paused = false;  // a PauseGuard is live; the next pause() waits for it to go

    // Reboot in place (Linux guests): the power-on state and what boot_linux loaded.
    struct BootImage {
        std::vector<std::byte> kernel, initrd;
        std::string cmdline;
    };
    std::optional<BootImage> m_boot;
    std::optional<MachineState> m_power_on;
    bool m_reboot_in_place = false;  // guarded by m_mutex, as the two below
    bool m_reset_pending = false;
    uint64_t m_reboots = 0;  // for the log
    std::thread m_reset_thread;  // the last reboot's; joined before the next one and at the end

public:
    class PauseGuard {
    public:
        PauseGuard() = default;
        PauseGuard(PauseGuard&& other) noexcept : m_machine(std::exchange(other.m_machine, nullptr)) {}
        PauseGuard& operator=(PauseGuard&&) = delete;
        ~PauseGuard() { release(); }
        // Resumes the machine now (from any thread).
        void release() {
            if (m_machine)
                std::exchange(m_machine, nullptr)->resume();
        }
        bool paused() const { return m_machine != nullptr; }

    private:
        friend class Machine;
        explicit PauseGuard(Machine* machine) : m_machine(machine) {}
        Machine* m_machine = nullptr;
    };
};

}  // namespace colod::core
