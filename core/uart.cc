// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/uart.h"

#include "core/state_io.h"

namespace colod::core {

namespace {
// Register offsets (DLAB = LCR bit 7 selects the divisor latch at 0 and 1).
constexpr unsigned RBR_THR = 0, IER = 1, IIR_FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;
constexpr uint8_t LCR_DLAB = 0x80;
constexpr uint8_t IER_RDA = 0x01, IER_THRE = 0x02, IER_RLS = 0x04, IER_MS = 0x08;
constexpr uint8_t MCR_OUT2 = 0x08, MCR_LOOP = 0x10;
constexpr uint8_t LSR_DR = 0x01, LSR_OE = 0x02, LSR_THRE = 0x20, LSR_TEMT = 0x40;
constexpr uint8_t IIR_NONE = 0x01, IIR_RLS = 0x06, IIR_RDA = 0x04, IIR_THRE = 0x02, IIR_MS = 0x00;
constexpr uint8_t IIR_FIFO = 0xc0;
}  // namespace

Uart::Uart(uint16_t base_port, OutputFn output, IrqFn irq)
    : m_base(base_port), m_output(std::move(output)), m_irq(std::move(irq)) {}

void Uart::set_space_callback(SpaceFn fn) {
    std::lock_guard lock(m_mutex);
    m_space = std::move(fn);
}

void Uart::set_output(OutputFn output) {
    std::lock_guard lock(m_mutex);
    m_output = std::move(output);
}

uint8_t Uart::interrupt_id() const {
    if ((m_ier & IER_RLS) && m_lsr_overrun)
        return IIR_RLS;
    if ((m_ier & IER_RDA) && !m_rx.empty())
        return IIR_RDA;
    if ((m_ier & IER_THRE) && m_thr_interrupt)
        return IIR_THRE;
    if ((m_ier & IER_MS) && (m_msr & 0x0f))
        return IIR_MS;
    return IIR_NONE;
}

void Uart::update_irq() {
    // A real 16550 drives its IRQ pin only when OUT2 is set (the PC gates it with OUT2).
    bool level = interrupt_id() != IIR_NONE && (m_mcr & MCR_OUT2);
    if (level != m_irq_level) {
        m_irq_level = level;
        if (m_irq)
            m_irq(level);
    }
}

uint8_t Uart::read_register(unsigned offset) {
    switch (offset) {
    case RBR_THR: {
        if (m_lcr & LCR_DLAB)
            return m_dll;
        if (m_rx.empty())
            return 0;
        uint8_t byte = m_rx.front();
        m_rx.pop_front();
        return byte;
    }
    case IER:
        return (m_lcr & LCR_DLAB) ? m_dlm : m_ier;
    case IIR_FCR: {
        uint8_t id = interrupt_id();
        if (id == IIR_THRE)
            m_thr_interrupt = false;  // reading IIR acknowledges THR-empty
        return static_cast<uint8_t>(id | ((m_fcr & 0x01) ? IIR_FIFO : 0));
    }
    case LCR:
        return m_lcr;
    case MCR:
        return m_mcr;
    case LSR: {
        uint8_t lsr = 0;
        if (!m_ready || m_ready())
            lsr |= LSR_THRE | LSR_TEMT;  // transmission is instantaneous while the path takes bytes
        if (!m_rx.empty())
            lsr |= LSR_DR;
        if (m_lsr_overrun)
            lsr |= LSR_OE;
        m_lsr_overrun = 0;
        return lsr;
    }
    case MSR: {
        uint8_t msr = m_msr;
        m_msr &= 0xf0;  // reading clears the delta bits
        return msr;
    }
    case SCR:
        return m_scr;
    }
    return 0xff;
}

void Uart::write_register(unsigned offset, uint8_t value) {
    switch (offset) {
    case RBR_THR:
        if (m_lcr & LCR_DLAB) {
            m_dll = value;
        } else if (m_mcr & MCR_LOOP) {
            if (m_rx.size() < k_rx_capacity)
                m_rx.push_back(value);
            m_thr_interrupt = true;
        }
        break;
    case IER:
        if (m_lcr & LCR_DLAB) {
            m_dlm = value;
        } else {
            bool thre_enabled_now = !(m_ier & IER_THRE) && (value & IER_THRE);
            m_ier = value & 0x0f;
            if (thre_enabled_now)
                m_thr_interrupt = true;  // enabling THRE while THR is empty raises it at once
        }
        break;
    case IIR_FCR:
        m_fcr = value & 0xc9;
        if (value & 0x02)  // clear receive FIFO
            m_rx.clear();
        break;
    case LCR:
        m_lcr = value;
        break;
    case MCR:
        m_mcr = value & 0x1f;
        break;
    case LSR:
    case MSR:
        break;  // read-only
    case SCR:
        m_scr = value;
        break;
    }
}

void Uart::pio_read(uint16_t port, std::span<std::byte> data) {
    SpaceFn notify;
    {
        std::lock_guard lock(m_mutex);
        size_t before = m_rx.size();
        // Wider accesses read consecutive registers, byte by byte (as the ISA bus splits them).
        for (size_t i = 0; i < data.size(); ++i)
            data[i] = std::byte{read_register(static_cast<unsigned>((port - m_base + i) & 7))};
        update_irq();
        if (m_rx.size() < before && m_space)
            notify = m_space;
    }
    if (notify)
        notify();
}

void Uart::pio_write(uint16_t port, std::span<const std::byte> data) {
    // Transmitted bytes are handed on after the lock is released: the output path takes the
    // console's lock, and the console calls push_input() under its own lock.
    std::byte transmitted[4];
    size_t count = 0;
    OutputFn output;
    {
        std::lock_guard lock(m_mutex);
        for (size_t i = 0; i < data.size(); ++i) {
            unsigned offset = static_cast<unsigned>((port - m_base + i) & 7);
            if (offset == RBR_THR && !(m_lcr & LCR_DLAB) && !(m_mcr & MCR_LOOP) && count < sizeof(transmitted)) {
                if (m_ready && !m_ready()) {
                    ++m_tx_dropped;  // written while LSR said busy: lost, as on the chip
                    m_tx_waiting = true;
                    continue;
                }
                transmitted[count++] = data[i];
                m_thr_interrupt = true;  // THR is empty again at once
            } else {
                write_register(offset, static_cast<uint8_t>(data[i]));
            }
        }
        update_irq();
        if (count)
            output = m_output;
    }
    if (output)
        output(std::span(transmitted, count));
}

void Uart::set_transmit_ready(ReadyFn ready) {
    std::lock_guard lock(m_mutex);
    m_ready = std::move(ready);
}

void Uart::transmitter_ready() {
    std::lock_guard lock(m_mutex);
    if (!m_tx_waiting || (m_ready && !m_ready()))
        return;
    m_tx_waiting = false;
    m_thr_interrupt = true;
    update_irq();
}

uint64_t Uart::transmit_dropped() const {
    std::lock_guard lock(m_mutex);
    return m_tx_dropped;
}

size_t Uart::push_input(std::span<const std::byte> bytes) {
    std::lock_guard lock(m_mutex);
    size_t taken = std::min(bytes.size(), k_rx_capacity - m_rx.size());
    for (size_t i = 0; i < taken; ++i)
        m_rx.push_back(static_cast<uint8_t>(bytes[i]));
    if (taken)
        update_irq();
    return taken;
}

size_t Uart::input_space() const {
    std::lock_guard lock(m_mutex);
    return k_rx_capacity - m_rx.size();
}

DeviceState Uart::save_state() const {
    std::lock_guard lock(m_mutex);
    StateWriter w;
    for (uint8_t reg : {m_ier, m_lcr, m_mcr, m_scr, m_fcr, m_msr, m_dll, m_dlm, m_lsr_overrun})
        w.put(reg);
    w.put(static_cast<uint8_t>(m_thr_interrupt));
    w.put(static_cast<uint32_t>(m_rx.size()));
    for (uint8_t byte : m_rx)
        w.put(byte);
    return DeviceState{std::string(name()), k_state_version, w.take()};
}

struct Uart::Saved {
    uint8_t regs[9];
    bool thr_interrupt;
    std::deque<uint8_t> rx;
};

base::Result<Uart::Saved> Uart::decode_state(const DeviceState& state) const {
    if (state.version != k_state_version)
        return base::Error::make(base::Errc::Unsupported, "{} state version {} (this build reads {})", name(),
                                 state.version, k_state_version);
    Saved saved;
    StateReader r(state.bytes);
    for (auto& reg : saved.regs)
        reg = r.get<uint8_t>();
    uint8_t thr = r.get<uint8_t>();
    uint32_t count = r.get<uint32_t>();
    if (count > k_rx_capacity)
        r.fail(fmt::format("receive buffer of {} bytes (at most {})", count, k_rx_capacity));
    for (uint32_t i = 0; i < count && !r.failed(); ++i)
        saved.rx.push_back(r.get<uint8_t>());
    if (thr > 1)
        r.fail("THR-empty flag is not 0 or 1");
    TRY(r.finish(name()));
    saved.thr_interrupt = thr != 0;
    return saved;
}

base::Result<void> Uart::check_state(const DeviceState& state) const {
    TRY(decode_state(state));
    return base::ok();
}

base::Result<void> Uart::load_state(const DeviceState& state) {
    Saved saved = TRY(decode_state(state));
    std::lock_guard lock(m_mutex);
    const uint8_t* regs = saved.regs;
    m_ier = regs[0], m_lcr = regs[1], m_mcr = regs[2], m_scr = regs[3], m_fcr = regs[4], m_msr = regs[5];
    m_dll = regs[6], m_dlm = regs[7], m_lsr_overrun = regs[8];
    m_thr_interrupt = saved.thr_interrupt;
    m_rx = std::move(saved.rx);
    // The irqchip state was restored with the VM; bring our idea of the line in line with it by
    // re-asserting whatever the restored registers demand.
    m_irq_level = !(interrupt_id() != IIR_NONE && (m_mcr & MCR_OUT2));
    update_irq();
    return base::ok();
}

}  // namespace colod::core
