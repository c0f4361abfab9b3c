// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>

#include "base/result.h"
#include "core/console.h"
#include "core/guest_network.h"
#include "core/machine.h"

namespace colod::core {

struct RuntimeOptions {
    MachineConfig machine;
    ConsoleOptions console;
    // The host's tap for the guest's NIC (MachineConfig::linux_board.nic_mac gives the NIC);
    // empty: no network.
    std::string net_tap;
    // How often a running guest is checked for a halt it can never leave (every vCPU halted
    // with interrupts off). Each check is one pause of the machine (tens of microseconds).
    std::chrono::milliseconds halt_check{1000};
};

// A machine with its console: the part the standalone primary, the protected primary and a
// secondary after takeover share. Console output goes through an output sink that the
// replication engine can replace (held output); by default it goes straight to the clients.
class GuestRuntime {
public:
    using OutputSink = std::function<void(std::span<const std::byte>)>;

    // Creates the machine (no guest loaded yet, console closed).
    static base::Result<std::unique_ptr<GuestRuntime>> create(const RuntimeOptions& options);
    ~GuestRuntime();

    // Loads and sets up an ELF64 guest for direct boot.
    base::Result<void> boot(std::span<const std::byte> image, std::string_view cmdline);
    // Loads a Linux kernel (bzImage) and its initrd (may be empty) for the 64-bit boot protocol.
    base::Result<void> boot_linux(std::span<const std::byte> kernel, std::span<const std::byte> initrd,
                                  std::string_view cmdline);
    // Opens the console endpoint (clients may connect from now on).
    base::Result<void> open_console();
    // Starts the vCPUs and the halt watchdog.
    base::Result<void> start();
    // Starts the vCPUs again after the guest stopped (Machine::rearm()), from whatever state
    // the machine holds now; the console stays as it is.
    base::Result<void> restart();
    // True while the vCPUs run (started, not stopped).
    bool running() const;
    // Stops the guest (reason Requested unless it already stopped) and closes the console.
    void stop(std::string why);
    // Blocks until the guest has stopped, then closes the console (its clients get what was
    // written to it first).
    StopInfo wait();
    // Blocks until the guest has stopped; the console stays open, so that output released
    // after the stop (a protected guest's held output at power-off) still reaches its clients.
    StopInfo wait_stopped();

    // Where guest console output goes. The sink runs on vCPU threads.
    void set_output_sink(OutputSink sink);
    // Console input passes through `tap` (which pushes it into the UART itself and returns how
    // much it took) instead of going straight to the UART: COLO mode forwards it to the peer.
    using InputTap = std::function<size_t(std::span<const std::byte>)>;
    void set_input_tap(InputTap tap);
    // Sends bytes to the console clients now (the held-output path releases through this).
    void release_output(std::span<const std::byte> bytes);

    // Opens the NIC's tap (RuntimeOptions::net_tap) without reading from it: see
    // core/guest_network.h. Does nothing without a tap configured.
    base::Result<void> open_network();
    // The network once opened; null without one.
    GuestNetwork* network() { return m_network_view.load(std::memory_order_acquire); }

    Machine& machine() { return *m_machine; }
    // The console once opened (any thread; open_console() may run on another).
    ConsoleServer* console() { return m_console_view.load(std::memory_order_acquire); }

private:
    GuestRuntime(const RuntimeOptions& options, std::unique_ptr<Machine> machine);
    void watchdog();
    void on_output(std::span<const std::byte> bytes);

    RuntimeOptions m_options;
    std::unique_ptr<Machine> m_machine;
    std::unique_ptr<ConsoleServer> m_console;  // written once, by open_console()
    std::atomic<ConsoleServer*> m_console_view{nullptr};
    // After m_machine: goes first (it routes the NIC's frames, which it stops on destruction).
    std::unique_ptr<GuestNetwork> m_network;  // written once, by open_network()
    std::atomic<GuestNetwork*> m_network_view{nullptr};

    std::mutex m_sink_mutex;
    OutputSink m_sink;  // empty: straight to the console

    // The console's input: the tap if set, else the UART.
    class Input final : public ConsoleInput {
    public:
        explicit Input(GuestRuntime& runtime) : m_runtime(runtime) {}
        size_t push_input(std::span<const std::byte> bytes) override;

    private:
        GuestRuntime& m_runtime;
    };
    Input m_input{*this};
    std::mutex m_tap_mutex;
    InputTap m_tap;

    std::mutex m_watchdog_mutex;
    std::condition_variable m_watchdog_wake;
    bool m_watchdog_stop = false;
    std::thread m_watchdog;
};

}  // namespace colod::core
