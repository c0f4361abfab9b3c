// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/guest_runtime.h"

#include "base/log.h"
#include "base/thread_name.h"
#include "core/uart.h"

namespace colod::core {

base::Result<std::unique_ptr<GuestRuntime>> GuestRuntime::create(const RuntimeOptions& options) {
    auto machine = TRY(Machine::create(options.machine));
    std::unique_ptr<GuestRuntime> runtime(new GuestRuntime(options, std::move(machine)));
    GuestRuntime* self = runtime.get();
    runtime->m_machine->uart().set_output([self](std::span<const std::byte> bytes) { self->on_output(bytes); });
    return runtime;
}

GuestRuntime::GuestRuntime(const RuntimeOptions& options, std::unique_ptr<Machine> machine)
    : m_options(options), m_machine(std::move(machine)) {}

GuestRuntime::~GuestRuntime() {
    stop("shutting down");
    wait();
}

base::Result<void> GuestRuntime::boot(std::span<const std::byte> image, std::string_view cmdline) {
    return m_machine->boot_elf(image, cmdline);
}

base::Result<void> GuestRuntime::boot_linux(std::span<const std::byte> kernel, std::span<const std::byte> initrd,
                                            std::string_view cmdline) {
    return m_machine->boot_linux(kernel, initrd, cmdline);
}

base::Result<void> GuestRuntime::open_console() {
    if (m_console)
        return base::ok();
    m_console = TRY(ConsoleServer::create(m_options.console, m_input));
    ConsoleServer* console = m_console.get();
    m_machine->uart().set_space_callback([console] { console->input_space_available(); });
    m_console_view.store(console, std::memory_order_release);  // other threads see it from now on
    return base::ok();
}

base::Result<void> GuestRuntime::open_network() {
    if (m_network || m_options.net_tap.empty())
        return base::ok();
    virtio::NetDevice* nic = m_machine->linux_devices().net;
    if (!nic)
        return base::Error::make(base::Errc::Invalid, "net-tap {} is set, but the machine has no NIC",
                                 m_options.net_tap);
    m_network = TRY(GuestNetwork::open(m_options.net_tap, *nic));
    m_network_view.store(m_network.get(), std::memory_order_release);
    return base::ok();
}

base::Result<void> GuestRuntime::start() {
    TRY(m_machine->start());
    if (!m_watchdog.joinable())
        m_watchdog = base::named_thread("watchdog", [this] {
            watchdog();
        });
    return base::ok();
}

base::Result<void> GuestRuntime::restart() {
    // The halt watchdog ends once the guest has stopped; wait for it, then run both again.
    {
        std::lock_guard lock(m_watchdog_mutex);
        m_watchdog_stop = true;
    }
    m_watchdog_wake.notify_all();
    if (m_watchdog.joinable())
        m_watchdog.join();
    {
        std::lock_guard lock(m_watchdog_mutex);
        m_watchdog_stop = false;
    }
    TRY(m_machine->rearm());
    return start();
}

bool GuestRuntime::running() const { return m_machine->started() && !m_machine->stopped(); }

void GuestRuntime::stop(std::string why) {
    m_machine->request_stop(StopInfo{StopReason::Requested, 0, std::move(why)});
    {
        std::lock_guard lock(m_watchdog_mutex);
        m_watchdog_stop = true;
    }
    m_watchdog_wake.notify_all();
}

StopInfo GuestRuntime::wait_stopped() {
    StopInfo info = m_machine->wait();
    {
        std::lock_guard lock(m_watchdog_mutex);
        m_watchdog_stop = true;
    }
    m_watchdog_wake.notify_all();
    if (m_watchdog.joinable())
        m_watchdog.join();
    return info;
}

StopInfo GuestRuntime::wait() {
    StopInfo info = wait_stopped();
    if (ConsoleServer* console = this->console())
        console->stop();
    return info;
}

void GuestRuntime::set_output_sink(OutputSink sink) {
    std::lock_guard lock(m_sink_mutex);
    m_sink = std::move(sink);
}

void GuestRuntime::set_input_tap(InputTap tap) {
    std::lock_guard lock(m_tap_mutex);
    m_tap = std::move(tap);
}

size_t GuestRuntime::Input::push_input(std::span<const std::byte> bytes) {
    std::lock_guard lock(m_runtime.m_tap_mutex);
    if (m_runtime.m_tap)
        return m_runtime.m_tap(bytes);
    return m_runtime.m_machine->uart().push_input(bytes);
}

void GuestRuntime::release_output(std::span<const std::byte> bytes) {
    if (ConsoleServer* console = this->console())
        console->broadcast(bytes);
}

void GuestRuntime::on_output(std::span<const std::byte> bytes) {
    std::lock_guard lock(m_sink_mutex);
    if (m_sink)
        m_sink(bytes);
    else
        release_output(bytes);
}

void GuestRuntime::watchdog() {
    std::unique_lock lock(m_watchdog_mutex);
    while (!m_watchdog_stop) {
        m_watchdog_wake.wait_for(lock, m_options.halt_check, [&] { return m_watchdog_stop; });
        if (m_watchdog_stop || m_machine->stopped())
            break;
        lock.unlock();
        {
            auto guard = m_machine->pause();
            auto halted = m_machine->halted_without_interrupts();
            if (!halted)
                base::logf(base::Level::Warning, base::Event::None, "halt check failed: {}", halted.error().message());
            else if (*halted)
                m_machine->request_stop(StopInfo{StopReason::HaltedNoInterrupts, 0,
                                                 "every vCPU halted with interrupts disabled"});
        }
        lock.lock();
    }
}

}  // namespace colod::core
