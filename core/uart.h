// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>

#include "core/console.h"
#include "core/device.h"

namespace colod::core {

// A 16550A UART (COM1). Transmitted bytes go to an output callback; received bytes come from
// the console through push_input(). The receive buffer is larger than the chip's 16-byte FIFO
// (invisible to the guest: LSR.DR simply stays set) and bounded; when it is full, push_input()
// accepts fewer bytes and the console applies back-pressure to its clients, so no byte is lost.
// Transmission is instantaneous unless the output path is full (held output waiting for a
// checkpoint): then LSR shows the transmitter busy until it drains, which slows a guest that
// polls LSR (as a driver must); a byte written to THR while busy is dropped, as on the chip.
class Uart final : public Device, public ConsoleInput {
public:
    static constexpr uint16_t k_port_count = 8;
    static constexpr size_t k_rx_capacity = 4096;
    static constexpr uint16_t k_state_version = 1;

    using OutputFn = std::function<void(std::span<const std::byte>)>;
    using IrqFn = std::function<void(bool level)>;
    using SpaceFn = std::function<void()>;
    using ReadyFn = std::function<bool()>;

    Uart(uint16_t base_port, OutputFn output, IrqFn irq);

    std::string_view name() const override { return "uart-com1"; }
    uint16_t state_version() const override { return k_state_version; }
    void pio_read(uint16_t port, std::span<std::byte> data) override;
    void pio_write(uint16_t port, std::span<const std::byte> data) override;
    DeviceState save_state() const override;
    base::Result<void> check_state(const DeviceState& state) const override;
    base::Result<void> load_state(const DeviceState& state) override;

    // Queues received bytes; returns how many were taken (fewer when the buffer is full).
    size_t push_input(std::span<const std::byte> bytes) override;
    size_t input_space() const;
    // Called (from a vCPU thread) when the guest has read bytes and space is free again.
    void set_space_callback(SpaceFn fn);
    // Replaces where transmitted bytes go (the machine switches between direct and held output).
    void set_output(OutputFn output);
    // Whether the output path takes more bytes now; empty (the default): always.
    void set_transmit_ready(ReadyFn ready);
    // Bytes the guest wrote to THR while the transmitter was busy (dropped), since start.
    uint64_t transmit_dropped() const;
    // The output path may take bytes again (held output was released): a guest whose bytes
    // were dropped while the transmitter was busy gets its THR-empty interrupt now, as a real
    // UART's THR empties. Without it an interrupt-driven driver (Linux's 8250) would wait for
    // that interrupt for ever, its tty stuck. Any thread.
    void transmitter_ready();

private:
    struct Saved;
    base::Result<Saved> decode_state(const DeviceState& state) const;
    uint8_t read_register(unsigned offset);
    void write_register(unsigned offset, uint8_t value);
    // Recomputes the interrupt line and tells the irqchip when it changes. Caller holds m_mutex.
    void update_irq();
    uint8_t interrupt_id() const;

    const uint16_t m_base;
    OutputFn m_output;
    IrqFn m_irq;
    SpaceFn m_space;
    ReadyFn m_ready;
    uint64_t m_tx_dropped = 0;  // host-side counter, not guest state
    bool m_tx_waiting = false;  // a byte was dropped since the last transmitter_ready()

    mutable std::mutex m_mutex;
    std::deque<uint8_t> m_rx;
    uint8_t m_ier = 0, m_lcr = 0, m_mcr = 0, m_scr = 0, m_fcr = 0, m_msr = 0xb0;
    uint8_t m_dll = 0x0c, m_dlm = 0;  // 9600 baud until the guest programs it
    uint8_t m_lsr_overrun = 0;
    bool m_thr_interrupt = false;  // THR-empty interrupt pending (cleared by IIR read / THR write)
    bool m_irq_level = false;
};

}  // namespace colod::core
