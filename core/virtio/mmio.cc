// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/virtio/mmio.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "base/log.h"
#include "base/thread_name.h"
#include "core/state_io.h"

namespace colod::core::virtio {

namespace {

// Register offsets (§4.2.2, Table 4.1).
constexpr uint64_t MAGIC_VALUE = 0x000, VERSION = 0x004, DEVICE_ID = 0x008, VENDOR_ID = 0x00c;
constexpr uint64_t DEVICE_FEATURES = 0x010, DEVICE_FEATURES_SEL = 0x014;
constexpr uint64_t DRIVER_FEATURES = 0x020, DRIVER_FEATURES_SEL = 0x024;
constexpr uint64_t QUEUE_SEL = 0x030, QUEUE_NUM_MAX = 0x034, QUEUE_NUM = 0x038, QUEUE_READY = 0x044;
constexpr uint64_t QUEUE_NOTIFY = 0x050, INTERRUPT_STATUS = 0x060, INTERRUPT_ACK = 0x064, STATUS = 0x070;
constexpr uint64_t QUEUE_DESC_LOW = 0x080, QUEUE_DESC_HIGH = 0x084;
constexpr uint64_t QUEUE_DRIVER_LOW = 0x090, QUEUE_DRIVER_HIGH = 0x094;
constexpr uint64_t QUEUE_DEVICE_LOW = 0x0a0, QUEUE_DEVICE_HIGH = 0x0a4;
constexpr uint64_t SHM_SEL = 0x0ac, SHM_LEN_LOW = 0x0b0, SHM_LEN_HIGH = 0x0b4, SHM_BASE_LOW = 0x0b8, SHM_BASE_HIGH = 0x0bc;
constexpr uint64_t QUEUE_RESET = 0x0c0, CONFIG_GENERATION = 0x0fc, CONFIG = 0x100;

constexpr uint32_t k_known_status = k_status_acknowledge | k_status_driver | k_status_driver_ok | k_status_features_ok |
                                    k_status_needs_reset | k_status_failed;
// Queues a transport offers at most (virtio-net with many queue pairs stays far below).
constexpr uint16_t k_max_queues = 1024;
constexpr auto k_log_interval = std::chrono::seconds(10);

uint64_t with_low(uint64_t old, uint32_t low) { return (old & ~0xffff'ffffull) | low; }
uint64_t with_high(uint64_t old, uint32_t high) { return (old & 0xffff'ffffull) | (uint64_t{high} << 32); }

}  // namespace

struct MmioTransport::Saved {
    uint8_t status;
    uint64_t driver_features;
    uint32_t device_features_sel, driver_features_sel, queue_sel;
    uint32_t interrupt_status;
    uint32_t config_generation;
    std::vector<Queue::State> queues;
    uint16_t device_version;
    std::vector<std::byte> device_bytes;
};

base::Result<std::unique_ptr<MmioTransport>> MmioTransport::create(std::unique_ptr<VirtioDevice> device, uint64_t base,
                                                                   GuestMemory& memory, std::function<void(bool)> irq) {
    if (!device)
        return base::Error(base::Errc::Invalid, "virtio-mmio: no device model");
    uint16_t count = device->queue_count();
    if (count == 0 || count > k_max_queues)
        return base::Error::make(base::Errc::Invalid, "virtio-{}: {} queues (1 to {})", device->type_name(), count,
                                 k_max_queues);
    for (uint16_t i = 0; i < count; ++i) {
        uint16_t max = device->queue_max_size(i);
        if (max == 0 || max > k_max_queue_size || !std::has_single_bit(max))
            return base::Error::make(base::Errc::Invalid, "virtio-{}: queue {} of at most {} entries (a power of two to {})",
                                     device->type_name(), i, max, k_max_queue_size);
    }
    if (base % 4 != 0)
        return base::Error::make(base::Errc::Invalid, "virtio-{}: MMIO base {:#x} is not 4-byte aligned", device->type_name(), base);
    return std::unique_ptr<MmioTransport>(new MmioTransport(std::move(device), base, memory, std::move(irq)));
}

MmioTransport::MmioTransport(std::unique_ptr<VirtioDevice> device, uint64_t base, GuestMemory& memory,
                             std::function<void(bool)> irq)
    : m_device(std::move(device)),
      m_base(base),
      m_memory(&memory),
      m_irq(std::move(irq)),
      m_name(fmt::format("virtio-{}@{:x}", m_device->type_name(), base)) {
    for (uint16_t i = 0; i < m_device->queue_count(); ++i)
        m_queues.emplace_back(memory, m_device->queue_max_size(i));
    m_device->attach(*this);
}

MmioTransport::~MmioTransport() {
    if (m_bell_thread.joinable()) {
        uint64_t one = 1;
        (void)!::write(m_bell_stop.get(), &one, sizeof(one));
        m_bell_thread.join();
        for (uint32_t i = 0; i < m_bells.size(); ++i)
            m_wiring->disconnect(m_base + QUEUE_NOTIFY, i, m_bells[i].get());
    }
}

base::Result<void> MmioTransport::use_doorbells(DoorbellWiring& wiring) {
    if (m_bell_thread.joinable())
        return base::Error::make(base::Errc::Invalid, "{}: doorbells already in use", m_name);
    std::vector<base::Fd> bells;  // one per queue, then the thread's stop
    for (size_t i = 0; i <= m_queues.size(); ++i) {
        base::Fd fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
        if (!fd)
            return base::Error::from_errno(fmt::format("{}: eventfd", m_name));
        bells.push_back(std::move(fd));
    }
    const uint64_t notify = m_base + QUEUE_NOTIFY;
    for (uint32_t i = 0; i < m_queues.size(); ++i) {
        if (auto connected = wiring.connect(notify, i, bells[i].get()); !connected) {
            for (uint32_t j = 0; j < i; ++j)
                wiring.disconnect(notify, j, bells[j].get());
            return std::move(connected).error().context(fmt::format("{} queue {}", m_name, i));
        }
    }
    m_wiring = &wiring;
    m_bell_stop = std::move(bells.back());
    bells.pop_back();
    m_bells = std::move(bells);
    m_bell_thread_name = fmt::format("bell-{}", m_device->type_name()).substr(0, 15);
    m_bell_thread = base::named_thread(m_bell_thread_name.c_str(), [this] { ring_loop(); });
    return base::ok();
}

void MmioTransport::ring_loop() {
    std::vector<pollfd> fds;
    for (const auto& bell : m_bells)
        fds.push_back({bell.get(), POLLIN, 0});
    fds.push_back({m_bell_stop.get(), POLLIN, 0});
    for (;;) {
        if (::poll(fds.data(), fds.size(), -1) < 0) {
            if (errno == EINTR)
                continue;
            base::logf(base::Level::Error, base::Event::Error, "{}: waiting for doorbells: {}; notifications now stop",
                       m_name, std::strerror(errno));
            return;
        }
        if (fds.back().revents)
            return;
        for (uint32_t i = 0; i + 1 < fds.size(); ++i) {
            if (!(fds[i].revents & POLLIN))
                continue;
            uint64_t count;
            (void)!::read(fds[i].fd, &count, sizeof(count));  // rung once or many times: one look at the queue
            std::lock_guard lock(m_mutex);
            notify_queue(i);
        }
    }
}

void MmioTransport::notify_queue(uint32_t index) {
    if (index < m_queues.size() && active() && m_queues[index].ready())
        m_device->queue_notify(static_cast<uint16_t>(index));
}

uint32_t MmioTransport::status() const {
    std::lock_guard lock(m_mutex);
    return m_status;
}

uint32_t MmioTransport::interrupt_status() const {
    std::lock_guard lock(m_mutex);
    return m_interrupt_status;
}

bool MmioTransport::active() const {
    return (m_status & k_status_driver_ok) && !(m_status & k_status_needs_reset);
}

void MmioTransport::update_line() {
    bool level = m_interrupt_status != 0;
    if (level == m_line)
        return;
    m_line = level;
    if (m_irq)
        m_irq(level);
}

void MmioTransport::raise(uint32_t bits) {
    m_interrupt_status |= bits;
    update_line();
}

void MmioTransport::notify_used(uint16_t index) {
    auto wanted = m_queues[index].should_interrupt();
    if (!wanted) {
        queue_broken(index, wanted.error());
        return;
    }
    if (*wanted)
        raise(k_interrupt_used);
}

void MmioTransport::config_changed() {
    ++m_config_generation;
    if (m_status & k_status_driver_ok)
        raise(k_interrupt_config);
}

void MmioTransport::queue_broken(uint16_t index, const base::Error& why) {
    if (m_status & k_status_needs_reset)
        return;  // already broken: one record per breakage
    m_status |= k_status_needs_reset;
    base::log_limited(m_name + " needs reset", k_log_interval, base::Level::Warning, base::Event::None,
                      fmt::format("{}: queue {} is malformed, the device needs a reset: {}", m_name, index, why.message()));
    // §2.1.2: after setting DEVICE_NEEDS_RESET with DRIVER_OK set, the device must send a
    // configuration change notification.
    if (m_status & k_status_driver_ok)
        raise(k_interrupt_config);
}

Queue* MmioTransport::selected_queue() {
    return m_queue_sel < m_queues.size() ? &m_queues[m_queue_sel] : nullptr;
}

void MmioTransport::reset_device() {
    m_device->reset();
    for (auto& queue : m_queues)
        queue.reset();
    m_status = 0;
    m_driver_features = 0;
    m_device_features_sel = 0;
    m_driver_features_sel = 0;
    m_queue_sel = 0;
    m_interrupt_status = 0;  // §4.2.2.1: reset clears InterruptStatus and every QueueReady
    update_line();
}

void MmioTransport::write_status(uint32_t value) {
    if (value == 0) {
        reset_device();
        return;
    }
    uint32_t current = m_status & ~k_status_needs_reset;
    uint32_t requested = value & k_known_status & ~k_status_needs_reset;  // NEEDS_RESET is the device's
    if (current & ~requested) {
        base::log_limited(m_name + " status", k_log_interval, base::Level::Warning, base::Event::None,
                          fmt::format("{}: driver cleared status bits ({:#x} -> {:#x}) without a reset; ignored", m_name,
                                      current, value));
        return;
    }
    uint32_t added = requested & ~current;
    if (added & k_status_features_ok) {
        uint64_t offered = offered_features();
        const char* refusal = nullptr;
        if (m_driver_features & ~offered)
            refusal = "features that were not offered";
        else if (!(m_driver_features & k_feature_version_1))
            refusal = "no VIRTIO_F_VERSION_1 (legacy drivers are not supported)";
        if (refusal) {
            // The driver reads Status back, sees FEATURES_OK clear and gives up (§3.1.1).
            base::log_limited(m_name + " features", k_log_interval, base::Level::Warning, base::Event::None,
                              fmt::format("{}: FEATURES_OK refused, driver accepted {:#x}: {}", m_name, m_driver_features,
                                          refusal));
            requested &= ~k_status_features_ok;
            added &= ~k_status_features_ok;
        }
    }
    if ((added & k_status_driver_ok) && !(requested & k_status_features_ok)) {
        base::log_limited(m_name + " status", k_log_interval, base::Level::Warning, base::Event::None,
                          fmt::format("{}: DRIVER_OK without FEATURES_OK; ignored", m_name));
        requested &= ~k_status_driver_ok;
        added &= ~k_status_driver_ok;
    }
    m_status = requested | (m_status & k_status_needs_reset);
    if (added & k_status_driver_ok)
        m_device->activate();
}

uint32_t MmioTransport::read_register(uint64_t offset) {
    Queue* queue = selected_queue();
    switch (offset) {
    case MAGIC_VALUE:
        return k_magic;
    case VERSION:
        return k_version;
    case DEVICE_ID:
        return m_device->device_id();
    case VENDOR_ID:
        return k_vendor_id;
    case DEVICE_FEATURES:
        if (m_device_features_sel > 1)
            return 0;
        return static_cast<uint32_t>(offered_features() >> (32 * m_device_features_sel));
    case QUEUE_NUM_MAX:
        return queue ? queue->max_size() : 0;
    case QUEUE_READY:
        return queue && queue->ready() ? 1 : 0;
    case INTERRUPT_STATUS:
        return m_interrupt_status;
    case STATUS:
        return m_status;
    case SHM_LEN_LOW:
    case SHM_LEN_HIGH:
    case SHM_BASE_LOW:
    case SHM_BASE_HIGH:
        return 0xffff'ffff;  // no shared memory regions: a length of ~0 says so (§4.2.2)
    case QUEUE_RESET:
        return 0;  // VIRTIO_F_RING_RESET is not offered
    case CONFIG_GENERATION:
        return m_config_generation;
    }
    base::log_limited(m_name + " register", k_log_interval, base::Level::Debug, base::Event::None,
                      fmt::format("{}: read of write-only or unknown register {:#x}", m_name, offset));
    return 0;
}

void MmioTransport::write_register(uint64_t offset, uint32_t value) {
    Queue* queue = selected_queue();
    // The queue's configuration changes only while it is not in use (§4.2.3.2).
    Queue* idle_queue = queue && !queue->ready() ? queue : nullptr;
    switch (offset) {
    case DEVICE_FEATURES_SEL:
        m_device_features_sel = value;
        return;
    case DRIVER_FEATURES:
        if (m_status & k_status_features_ok)
            return;  // §2.2.2: no new features after FEATURES_OK
        if (m_driver_features_sel == 0)
            m_driver_features = with_low(m_driver_features, value);
        else if (m_driver_features_sel == 1)
            m_driver_features = with_high(m_driver_features, value);
        return;
    case DRIVER_FEATURES_SEL:
        m_driver_features_sel = value;
        return;
    case QUEUE_SEL:
        m_queue_sel = value;
        return;
    case QUEUE_NUM:
        if (idle_queue)
            idle_queue->set_size(value <= k_max_queue_size ? static_cast<uint16_t>(value) : 0);
        return;
    case QUEUE_READY:
        if (!queue)
            return;
        if (value == 0) {
            queue->disable();
        } else if (!queue->ready()) {
            // Queues are set up after FEATURES_OK (§3.1.1), so the ring features are final.
            if (!(m_status & k_status_features_ok))
                queue_broken(static_cast<uint16_t>(m_queue_sel),
                             base::Error(base::Errc::Invalid, "queue enabled before FEATURES_OK"));
            else if (auto enabled = queue->enable(m_driver_features); !enabled)
                queue_broken(static_cast<uint16_t>(m_queue_sel), enabled.error());
        }
        return;
    case QUEUE_NOTIFY:
        notify_queue(value);
        return;
    case INTERRUPT_ACK:
        m_interrupt_status &= ~value;
        update_line();
        return;
    case STATUS:
        write_status(value);
        return;
    case QUEUE_DESC_LOW:
    case QUEUE_DESC_HIGH:
        if (idle_queue)
            idle_queue->set_desc_addr(offset == QUEUE_DESC_LOW ? with_low(idle_queue->desc_addr(), value)
                                                               : with_high(idle_queue->desc_addr(), value));
        return;
    case QUEUE_DRIVER_LOW:
    case QUEUE_DRIVER_HIGH:
        if (idle_queue)
            idle_queue->set_driver_addr(offset == QUEUE_DRIVER_LOW ? with_low(idle_queue->driver_addr(), value)
                                                                   : with_high(idle_queue->driver_addr(), value));
        return;
    case QUEUE_DEVICE_LOW:
    case QUEUE_DEVICE_HIGH:
        if (idle_queue)
            idle_queue->set_device_addr(offset == QUEUE_DEVICE_LOW ? with_low(idle_queue->device_addr(), value)
                                                                   : with_high(idle_queue->device_addr(), value));
        return;
    case SHM_SEL:
    case QUEUE_RESET:
        return;  // no shared memory regions; VIRTIO_F_RING_RESET is not offered
    }
    base::log_limited(m_name + " register", k_log_interval, base::Level::Debug, base::Event::None,
                      fmt::format("{}: write of {:#x} to read-only or unknown register {:#x}", m_name, value, offset));
}

void MmioTransport::mmio_read(uint64_t addr, std::span<std::byte> data) {
    uint64_t offset = addr - m_base;
    std::fill(data.begin(), data.end(), std::byte{0});
    if (offset >= CONFIG) {
        // §4.2.2.2: 8-, 16- and 32-bit accesses to the configuration space (64-bit fields are
        // read as two 32-bit halves under ConfigGeneration).
        if (data.size() == 1 || data.size() == 2 || data.size() == 4) {
            std::lock_guard lock(m_mutex);
            m_device->read_config(static_cast<uint32_t>(offset - CONFIG), data);
        }
        return;
    }
    // §4.2.2.2: the control registers are accessed 32 bits wide and aligned only; anything else
    // reads as zero.
    if (data.size() != 4 || offset % 4 != 0) {
        base::log_limited(m_name + " access", k_log_interval, base::Level::Warning, base::Event::None,
                          fmt::format("{}: {}-byte read at register offset {:#x} (only aligned 32-bit); ignored", m_name,
                                      data.size(), offset));
        return;
    }
    uint32_t value;
    {
        std::lock_guard lock(m_mutex);
        value = read_register(offset);
    }
    std::memcpy(data.data(), &value, 4);  // little-endian host: the register's byte order
}

void MmioTransport::mmio_write(uint64_t addr, std::span<const std::byte> data) {
    uint64_t offset = addr - m_base;
    if (offset >= CONFIG) {
        if (data.size() == 1 || data.size() == 2 || data.size() == 4) {
            std::lock_guard lock(m_mutex);
            m_device->write_config(static_cast<uint32_t>(offset - CONFIG), data);
        }
        return;
    }
    if (data.size() != 4 || offset % 4 != 0) {
        base::log_limited(m_name + " access", k_log_interval, base::Level::Warning, base::Event::None,
                          fmt::format("{}: {}-byte write at register offset {:#x} (only aligned 32-bit); ignored", m_name,
                                      data.size(), offset));
        return;
    }
    uint32_t value;
    std::memcpy(&value, data.data(), 4);
    std::lock_guard lock(m_mutex);
    write_register(offset, value);
}

void MmioTransport::quiesce() {
    m_device->quiesce();
}

void MmioTransport::resume() {
    m_device->resume();
}

// Layout, version 1 (big-endian, StateWriter):
//   u32 device id, u64 offered features   (identify the model: refused if they differ)
//   u8 status, u64 driver features, u32 device/driver features selectors, u32 queue selector,
//   u32 interrupt status, u32 config generation,
//   u16 queue count, then per queue: u16 size, u8 ready, u64 descriptor/driver/device areas,
//     u16 last_avail, u16 used_idx, u16 signalled_used,
//   u16 model state version, blob model state.
DeviceState MmioTransport::save_state() const {
    std::lock_guard lock(m_mutex);
    StateWriter w;
    w.put(m_device->device_id());
    w.put(offered_features());
    w.put(static_cast<uint8_t>(m_status));
    w.put(m_driver_features);
    w.put(m_device_features_sel);
    w.put(m_driver_features_sel);
    w.put(m_queue_sel);
    w.put(m_interrupt_status);
    w.put(m_config_generation);
    w.put(static_cast<uint16_t>(m_queues.size()));
    for (const auto& queue : m_queues) {
        Queue::State q = queue.state();
        w.put(q.size);
        w.put(static_cast<uint8_t>(q.ready));
        w.put(q.desc_addr);
        w.put(q.driver_addr);
        w.put(q.device_addr);
        w.put(q.last_avail);
        w.put(q.used_idx);
        w.put(q.signalled_used);
    }
    w.put(m_device->state_version());
    w.put_blob(m_device->save_state());
    return DeviceState{m_name, k_state_version, w.take()};
}

// Lock held.
base::Result<MmioTransport::Saved> MmioTransport::decode_state(const DeviceState& state) const {
    if (state.version != k_state_version)
        return base::Error::make(base::Errc::Unsupported, "{} state version {} (this build reads {})", m_name, state.version,
                                 k_state_version);
    StateReader r(state.bytes);
    uint32_t device_id = r.get<uint32_t>();
    uint64_t offered = r.get<uint64_t>();
    Saved s;
    s.status = r.get<uint8_t>();
    s.driver_features = r.get<uint64_t>();
    s.device_features_sel = r.get<uint32_t>();
    s.driver_features_sel = r.get<uint32_t>();
    s.queue_sel = r.get<uint32_t>();
    s.interrupt_status = r.get<uint32_t>();
    s.config_generation = r.get<uint32_t>();
    uint16_t queue_count = r.get<uint16_t>();
    if (!r.failed() && queue_count != m_queues.size())
        r.fail(fmt::format("{} queues, this device has {}", queue_count, m_queues.size()));
    for (uint16_t i = 0; i < queue_count && !r.failed(); ++i) {
        Queue::State q;
        q.size = r.get<uint16_t>();
        uint8_t ready = r.get<uint8_t>();
        q.ready = ready != 0;
        q.desc_addr = r.get<uint64_t>();
        q.driver_addr = r.get<uint64_t>();
        q.device_addr = r.get<uint64_t>();
        q.last_avail = r.get<uint16_t>();
        q.used_idx = r.get<uint16_t>();
        q.signalled_used = r.get<uint16_t>();
        if (ready > 1)
            r.fail(fmt::format("queue {} ready flag {}", i, ready));
        s.queues.push_back(q);
    }
    s.device_version = r.get<uint16_t>();
    s.device_bytes = r.get_blob(k_max_device_state);
    TRY(r.finish(m_name));

    if (device_id != m_device->device_id() || offered != offered_features())
        return base::Error::make(base::Errc::Mismatch, "{}: state of device id {} offering {:#x}, this is {} offering {:#x}",
                                 m_name, device_id, offered, m_device->device_id(), offered_features());
    if (s.status & ~k_known_status)
        return base::Error::make(base::Errc::Invalid, "{}: unknown status bits {:#x}", m_name, s.status);
    if ((s.status & k_status_driver_ok) && !(s.status & k_status_features_ok))
        return base::Error::make(base::Errc::Invalid, "{}: status {:#x} has DRIVER_OK without FEATURES_OK", m_name, s.status);
    if (s.driver_features & ~offered)
        return base::Error::make(base::Errc::Invalid, "{}: driver features {:#x} beyond the offered {:#x}", m_name,
                                 s.driver_features, offered);
    if ((s.status & k_status_features_ok) && !(s.driver_features & k_feature_version_1))
        return base::Error::make(base::Errc::Invalid, "{}: FEATURES_OK without VIRTIO_F_VERSION_1", m_name);
    if (s.interrupt_status & ~(k_interrupt_used | k_interrupt_config))
        return base::Error::make(base::Errc::Invalid, "{}: interrupt status {:#x}", m_name, s.interrupt_status);
    for (size_t i = 0; i < s.queues.size(); ++i) {
        if (s.queues[i].ready && !(s.status & k_status_features_ok))
            return base::Error::make(base::Errc::Invalid, "{}: queue {} ready without FEATURES_OK", m_name, i);
        if (auto checked = m_queues[i].check(s.queues[i], s.driver_features); !checked)
            return std::move(checked).error().context(fmt::format("{} queue {}", m_name, i));
    }
    if (auto checked = m_device->check_state(s.device_version, s.device_bytes); !checked)
        return std::move(checked).error().context(m_name);
    return s;
}

base::Result<void> MmioTransport::check_state(const DeviceState& state) const {
    std::lock_guard lock(m_mutex);
    TRY(decode_state(state));
    return base::ok();
}

base::Result<void> MmioTransport::load_state(const DeviceState& state) {
    std::lock_guard lock(m_mutex);
    Saved s = TRY(decode_state(state));
    // The model validated the same bytes just now; its load changes nothing unless it succeeds,
    // and it goes first so that nothing of the transport has changed if it fails anyway.
    TRY(m_device->load_state(s.device_version, s.device_bytes));
    m_status = s.status;
    m_driver_features = s.driver_features;
    m_device_features_sel = s.device_features_sel;
    m_driver_features_sel = s.driver_features_sel;
    m_queue_sel = s.queue_sel;
    m_interrupt_status = s.interrupt_status;
    m_config_generation = s.config_generation;
    for (size_t i = 0; i < m_queues.size(); ++i)
        m_queues[i].load(s.queues[i], s.driver_features);
    // The irqchip's state came with the VM's; drive the line to what InterruptStatus says, even
    // if our idea of it already agrees (a secondary's line may have been left anywhere).
    m_line = m_interrupt_status != 0;
    if (m_irq)
        m_irq(m_line);
    return base::ok();
}

}  // namespace colod::core::virtio
