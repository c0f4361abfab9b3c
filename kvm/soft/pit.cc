// SPDX-License-Identifier: GPL-2.0-or-later
#include "kvm/soft/pit.h"

#include "kvm/soft/host_clock.h"

namespace colod::kvm::soft {

namespace {

enum : uint8_t { rw_lsb = 1, rw_msb = 2, rw_word0 = 3, rw_word1 = 4 };

// KVM's min_timer_period_us, applied to periodic PIT modes too.
constexpr int64_t k_min_period_ns = 200'000;

uint64_t ticks_between(int64_t from, int64_t to) {
    if (to <= from)
        return 0;
    return mul_div(static_cast<uint64_t>(to - from), Pit::k_frequency_hz, 1'000'000'000);
}

}  // namespace

Pit::Pit(uint32_t config_flags) : m_config_flags(config_flags), m_next(k_never) {
    int64_t now = monotonic_ns();
    for (int channel = 0; channel < 3; ++channel) {
        auto& c = m_state.channels[channel];
        c.mode = 0xff;  // no mode until the guest programs one (KVM's kvm_pit_reset)
        c.gate = channel != 2;
        load_count(channel, 0, now);
    }
}

bool Pit::handles_port(uint16_t port) const {
    return (port >= 0x40 && port <= 0x43) || (port == 0x61 && (m_config_flags & KVM_PIT_SPEAKER_DUMMY));
}

void Pit::load_count(int channel, uint32_t value, int64_t now) {
    auto& c = m_state.channels[channel];
    if (value == 0)
        value = 0x10000;
    c.count = value;
    c.count_load_time = now;
    if (channel != 0)
        return;
    m_period = 0;
    if (m_state.flags & KVM_PIT_FLAGS_HPET_LEGACY) {
        m_next.store(k_never, std::memory_order_release);
        return;
    }
    int64_t interval = static_cast<int64_t>(mul_div(value, 1'000'000'000, k_frequency_hz));
    switch (c.mode) {
    case 0:
    case 1:
    case 4:
        m_next.store(now + interval, std::memory_order_release);
        break;
    case 2:
    case 3:
        m_period = interval < k_min_period_ns ? k_min_period_ns : interval;
        m_next.store(now + interval, std::memory_order_release);
        break;
    default:
        m_next.store(k_never, std::memory_order_release);
        return;
    }
    // A new count starts the tick accounting afresh (KVM's kvm_pit_reset_reinject).
    m_pending.store(0);
    m_irq_ack.store(1);
}

uint32_t Pit::count_at(int channel, int64_t now) const {
    const auto& c = m_state.channels[channel];
    uint64_t d = ticks_between(c.count_load_time, now);
    uint64_t count = c.count;
    switch (c.mode) {
    case 0:
    case 1:
    case 4:
    case 5: return static_cast<uint32_t>((count - d) & 0xffff);
    case 3: return static_cast<uint32_t>(count - ((2 * d) % count));
    default: return static_cast<uint32_t>(count - (d % count));
    }
}

bool Pit::output_at(int channel, int64_t now) const {
    const auto& c = m_state.channels[channel];
    uint64_t d = ticks_between(c.count_load_time, now);
    uint64_t count = c.count;
    switch (c.mode) {
    case 0: return d >= count;
    case 1: return d < count;
    case 2: return (d % count) == 0 && d != 0;
    case 3: return (d % count) < ((count + 1) >> 1);
    case 4:
    case 5: return d == count;
    default: return false;
    }
}

void Pit::latch_count(int channel, int64_t now) {
    auto& c = m_state.channels[channel];
    if (c.count_latched)
        return;
    c.latched_count = static_cast<uint16_t>(count_at(channel, now));
    c.count_latched = c.rw_mode;
}

void Pit::latch_status(int channel, int64_t now) {
    auto& c = m_state.channels[channel];
    if (c.status_latched)
        return;
    c.status = static_cast<uint8_t>((output_at(channel, now) ? 0x80 : 0) | (c.rw_mode << 4) | ((c.mode & 7) << 1) | c.bcd);
    c.status_latched = 1;
}

void Pit::set_gate(int channel, bool gate, int64_t now) {
    auto& c = m_state.channels[channel];
    bool rising = !c.gate && gate;
    if (rising) {
        switch (c.mode) {
        case 1:
        case 2:
        case 3:
        case 5: c.count_load_time = now; break;
        default: break;
        }
    }
    c.gate = gate;
}

uint8_t Pit::read_port(uint16_t port, int64_t now) {
    std::lock_guard lock(m_lock);
    if (port == 0x61) {
        uint8_t refresh = static_cast<uint8_t>((static_cast<uint64_t>(now) >> 14) & 1);
        return static_cast<uint8_t>((output_at(2, now) ? 0x20 : 0) | (refresh << 4) | (m_speaker_data ? 2 : 0) |
                                    (m_state.channels[2].gate ? 1 : 0));
    }
    if (port == 0x43)
        return 0xff;  // the control register is write-only
    int channel = port - 0x40;
    auto& c = m_state.channels[channel];
    if (c.status_latched) {
        c.status_latched = 0;
        return c.status;
    }
    if (c.count_latched) {
        uint8_t value;
        switch (c.count_latched) {
        case rw_msb:
            value = static_cast<uint8_t>(c.latched_count >> 8);
            c.count_latched = 0;
            break;
        case rw_word0:
            value = static_cast<uint8_t>(c.latched_count);
            c.count_latched = rw_msb;
            break;
        default:
            value = static_cast<uint8_t>(c.latched_count);
            c.count_latched = 0;
            break;
        }
        return value;
    }
    uint32_t count = count_at(channel, now);
    switch (c.read_state) {
    case rw_msb: return static_cast<uint8_t>(count >> 8);
    case rw_word0:
        c.read_state = rw_word1;
        return static_cast<uint8_t>(count);
    case rw_word1:
        c.read_state = rw_word0;
        return static_cast<uint8_t>(count >> 8);
    default: return static_cast<uint8_t>(count);
    }
}

void Pit::write_port(uint16_t port, uint8_t value, int64_t now) {
    std::lock_guard lock(m_lock);
    if (port == 0x61) {
        m_speaker_data = value & 2;
        set_gate(2, value & 1, now);
        return;
    }
    if (port == 0x43) {
        int channel = value >> 6;
        if (channel == 3) {  // read-back command
            for (int i = 0; i < 3; ++i) {
                if (!(value & (2 << i)))
                    continue;
                if (!(value & 0x20))
                    latch_count(i, now);
                if (!(value & 0x10))
                    latch_status(i, now);
            }
            return;
        }
        auto& c = m_state.channels[channel];
        uint8_t access = (value >> 4) & 3;
        if (access == 0) {  // counter latch command
            latch_count(channel, now);
            return;
        }
        c.rw_mode = access;
        c.read_state = access;
        c.write_state = access;
        c.mode = (value >> 1) & 7;
        if (c.mode > 5)
            c.mode -= 4;  // modes 6 and 7 are aliases of 2 and 3
        c.bcd = value & 1;
        return;
    }
    int channel = port - 0x40;
    auto& c = m_state.channels[channel];
    switch (c.write_state) {
    case rw_msb: load_count(channel, static_cast<uint32_t>(value) << 8, now); break;
    case rw_word0:
        c.write_latch = value;
        c.write_state = rw_word1;
        break;
    case rw_word1:
        load_count(channel, c.write_latch | (static_cast<uint32_t>(value) << 8), now);
        c.write_state = rw_word0;
        break;
    default: load_count(channel, value, now); break;
    }
}

kvm_pit_state2 Pit::state() const {
    std::lock_guard lock(m_lock);
    kvm_pit_state2 out = m_state;
    if (m_speaker_data)
        out.flags |= KVM_PIT_FLAGS_SPEAKER_DATA_ON;
    return out;
}

void Pit::set_state(const kvm_pit_state2& state, int64_t now) {
    std::lock_guard lock(m_lock);
    for (int channel = 0; channel < 3; ++channel)
        m_state.channels[channel] = state.channels[channel];
    m_state.flags = state.flags & ~static_cast<uint32_t>(KVM_PIT_FLAGS_SPEAKER_DATA_ON);
    m_speaker_data = state.flags & KVM_PIT_FLAGS_SPEAKER_DATA_ON;
    for (int channel = 0; channel < 3; ++channel)
        load_count(channel, m_state.channels[channel].count, now);
}

bool Pit::service(int64_t now) {
    uint32_t expired = 0;
    if (m_next.load(std::memory_order_acquire) <= now) {
        std::lock_guard lock(m_lock);
        int64_t next = m_next.load(std::memory_order_relaxed);
        while (next <= now) {
            ++expired;
            if (m_period == 0) {
                next = k_never;
                break;
            }
            next += m_period;
        }
        m_next.store(next, std::memory_order_release);
    }
    if (expired)
        m_pending.fetch_add(static_cast<int>(expired));
    bool retry = m_retry.exchange(false);
    if (!expired && !retry)
        return false;
    // One interrupt in flight at a time.
    return m_irq_ack.exchange(0) != 0;
}

void Pit::acknowledged() {
    m_irq_ack.store(1);
    int pending = m_pending.load();
    while (pending > 0 && !m_pending.compare_exchange_weak(pending, pending - 1)) {
    }
    if (pending - 1 > 0)
        m_retry.store(true);
}

void Pit::line_masked(bool masked) {
    if (masked)
        return;
    m_pending.store(0);
    m_irq_ack.store(1);
}

}  // namespace colod::kvm::soft
