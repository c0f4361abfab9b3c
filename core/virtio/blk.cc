// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/virtio/blk.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "base/log.h"
#include "core/state_io.h"

namespace colod::core::virtio {

namespace {

using disk::k_sector_size;

// struct virtio_blk_config up to blk_size: le64 capacity, le32 size_max, le32 seg_max, the
// geometry (le16 cylinders, u8 heads, u8 sectors: zero, as the feature is not offered),
// le32 blk_size.
constexpr uint32_t k_config_size = 24;

// The transport's lock, or none before the device is attached (nothing else can reach it then).
std::unique_lock<std::mutex> lock_of(Transport* transport) {
    return transport ? transport->lock() : std::unique_lock<std::mutex>();
}

template <typename T>
void put_le(std::byte* at, T value) {
    for (size_t i = 0; i < sizeof(T); ++i)
        at[i] = std::byte(static_cast<uint8_t>(static_cast<uint64_t>(value) >> (8 * i)));
}

template <typename T>
T get_le(const std::byte* at) {
    uint64_t value = 0;
    for (size_t i = 0; i < sizeof(T); ++i)
        value |= uint64_t{std::to_integer<uint8_t>(at[i])} << (8 * i);
    return static_cast<T>(value);
}

// The guest-physical pieces of bytes [start, start + len) of `buffers` laid end to end, each
// passed to `fn(gpa, length)`; stops at the first error `fn` returns. The caller keeps the
// range within the buffers' total.
template <typename Fn>
base::Result<void> for_each_piece(const std::vector<Buffer>& buffers, uint64_t start, uint64_t len, Fn&& fn) {
    uint64_t pos = 0;  // where the current buffer starts
    for (const Buffer& buffer : buffers) {
        if (len == 0)
            break;
        uint64_t end = pos + buffer.len;
        if (start < end) {
            uint64_t skip = start - pos;
            uint64_t take = std::min<uint64_t>(buffer.len - skip, len);
            TRY(fn(buffer.gpa + skip, static_cast<size_t>(take)));
            start += take;
            len -= take;
        }
        pos = end;
    }
    return base::ok();
}

constexpr std::array<std::string_view, 10> k_problem_names{
    "no status byte", "header too short", "data in the wrong direction", "data not whole sectors",
    "request too large", "outside the disk", "unsupported request type", "read failed",
    "write failed", "flush failed",
};

}  // namespace

BlkDevice::BlkDevice(std::shared_ptr<disk::BlockBackend> backend, std::string serial, Observer observer)
    : m_backend(std::move(backend)), m_serial(std::move(serial)), m_observer(std::move(observer)) {
    if (m_serial.size() > k_id_bytes)
        m_serial.resize(k_id_bytes);
}

std::string BlkDevice::serial_for(std::string_view path) {
    std::string_view name = path;
    while (name.size() > 1 && name.back() == '/')
        name.remove_suffix(1);
    if (auto slash = name.rfind('/'); slash != std::string_view::npos && name.size() > 1)
        name.remove_prefix(slash + 1);
    std::string serial(name);
    for (char& c : serial) {
        auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u >= 0x7f)
            c = '_';
    }
    if (serial.size() <= k_id_bytes)
        return serial;
    // FNV-1a over the whole name: stable across hosts and builds, unlike std::hash.
    uint32_t hash = 2166136261u;
    for (char c : name) {
        hash ^= static_cast<unsigned char>(c);
        hash *= 16777619u;
    }
    return fmt::format("{}-{:08x}", serial.substr(0, 11), hash);
}

void BlkDevice::set_observer(Observer observer) {
    auto lock = lock_of(m_transport);
    m_observer = std::move(observer);
}

base::Result<void> BlkDevice::set_backend(std::shared_ptr<disk::BlockBackend> backend) {
    if (!backend)
        return base::Error(base::Errc::Invalid, "virtio-blk: no backend");
    auto lock = lock_of(m_transport);
    if (backend->size() != m_backend->size())
        return base::Error::make(base::Errc::Mismatch, "virtio-blk: backend {} is {} bytes, the disk {}",
                                 backend->describe(), backend->size(), m_backend->size());
    m_backend = std::move(backend);
    return base::ok();
}

std::shared_ptr<disk::BlockBackend> BlkDevice::backend() const {
    auto lock = lock_of(m_transport);
    return m_backend;
}

BlkDevice::Counters BlkDevice::counters() const {
    auto lock = lock_of(m_transport);
    return m_counters;
}

std::string BlkDevice::serial() const {
    auto lock = lock_of(m_transport);
    return m_serial;
}

uint64_t BlkDevice::capacity() const {
    auto lock = lock_of(m_transport);
    return m_backend->size() / k_sector_size;
}

void BlkDevice::read_config(uint32_t offset, std::span<std::byte> data) {
    std::array<std::byte, k_config_size> config{};
    put_le<uint64_t>(config.data(), m_backend->size() / k_sector_size);
    put_le<uint32_t>(config.data() + 8, k_size_max);
    put_le<uint32_t>(config.data() + 12, k_seg_max);
    put_le<uint32_t>(config.data() + 20, static_cast<uint32_t>(k_sector_size));
    for (size_t i = 0; i < data.size(); ++i) {
        uint64_t at = uint64_t{offset} + i;
        data[i] = at < k_config_size ? config[at] : std::byte{0};
    }
}

void BlkDevice::queue_notify(uint16_t index) {
    if (index == 0)
        process();
}

void BlkDevice::set_admission(std::function<bool()> admit) {
    auto lock = lock_of(m_transport);
    m_admit = std::move(admit);
}

void BlkDevice::kick() {
    auto lock = lock_of(m_transport);
    process();
}

void BlkDevice::quiesce() {
    auto lock = lock_of(m_transport);
    m_quiesced = true;
}

void BlkDevice::resume() {
    auto lock = lock_of(m_transport);
    m_quiesced = false;
    process();  // requests pending in a state just loaded, or a notification that waited
}

void BlkDevice::note(Problem problem, std::string_view detail) {
    auto bit = 1u << static_cast<unsigned>(problem);
    if (m_logged & bit)
        return;
    m_logged |= bit;
    bool backend = problem == Problem::ReadFailed || problem == Problem::WriteFailed || problem == Problem::FlushFailed;
    base::log(backend ? base::Level::Error : base::Level::Warning, base::Event::None,
              fmt::format("virtio-blk {}: {}: {}; the guest got {} (logged once: later ones are only counted)",
                          m_backend->describe(), k_problem_names[static_cast<unsigned>(problem)], detail,
                          problem == Problem::Unsupported ? "VIRTIO_BLK_S_UNSUPP"
                          : problem == Problem::NoStatus  ? "no status"
                                                          : "VIRTIO_BLK_S_IOERR"));
}

base::Result<uint32_t> BlkDevice::handle(const Chain& chain) {
    GuestMemory& memory = m_transport->memory();
    if (chain.writable_bytes == 0) {
        ++m_counters.no_status;
        note(Problem::NoStatus, fmt::format("chain {} has no device-writable byte", chain.head));
        return 0u;
    }
    const uint64_t status_at = chain.writable_bytes - 1;
    auto finish = [&](uint8_t status, uint64_t data_written) -> base::Result<uint32_t> {
        auto write_status = [&](uint64_t gpa, size_t) -> base::Result<void> {
            auto target = TRY(memory.slice(gpa, 1, GuestMemory::Access::Write));
            target[0] = std::byte{status};
            return base::ok();
        };
        TRY(for_each_piece(chain.writable, status_at, 1, write_status));
        return static_cast<uint32_t>(data_written + 1);
    };
    auto bad = [&](Problem problem, std::string detail) -> base::Result<uint32_t> {
        ++m_counters.bad_requests;
        note(problem, detail);
        return finish(k_status_ioerr, 0);
    };
    if (chain.readable_bytes < k_header_size)
        return bad(Problem::ShortHeader,
                   fmt::format("chain {}: {} device-readable bytes, the header needs {}", chain.head,
                               chain.readable_bytes, k_header_size));
    // The header, copied once out of however many buffers it spans.
    std::array<std::byte, k_header_size> header;
    size_t got = 0;
    auto copy_header = [&](uint64_t gpa, size_t len) -> base::Result<void> {
        auto source = TRY(memory.slice(gpa, len, GuestMemory::Access::Read));
        std::memcpy(header.data() + got, source.data(), len);
        got += len;
        return base::ok();
    };
    TRY(for_each_piece(chain.readable, 0, k_header_size, copy_header));
    const uint32_t type = get_le<uint32_t>(header.data());
    const uint64_t sector = get_le<uint64_t>(header.data() + 8);
    const uint64_t readable_data = chain.readable_bytes - k_header_size;
    const uint64_t writable_data = status_at;
    const uint64_t capacity = m_backend->size() / k_sector_size;

    // IN and OUT: whole sectors, within the bound and the disk.
    auto check_range = [&](uint64_t len) -> std::optional<std::pair<Problem, std::string>> {
        if (len % k_sector_size != 0)
            return std::pair{Problem::NotSectors, fmt::format("chain {}: {} bytes of data", chain.head, len)};
        if (len > k_max_data)
            return std::pair{Problem::TooLarge,
                             fmt::format("chain {}: {} bytes of data (at most {})", chain.head, len, k_max_data)};
        if (sector > capacity || len / k_sector_size > capacity - sector)
            return std::pair{Problem::OutOfRange,
                             fmt::format("chain {}: {} sectors at sector {} of a disk of {}", chain.head,
                                         len / k_sector_size, sector, capacity)};
        return std::nullopt;
    };

    switch (type) {
    case k_type_in: {
        if (readable_data != 0)
            return bad(Problem::WrongDirection,
                       fmt::format("chain {}: a read with {} device-readable data bytes", chain.head, readable_data));
        if (auto problem = check_range(writable_data))
            return bad(problem->first, problem->second);
        uint64_t offset = sector * k_sector_size;
        std::optional<base::Error> failed;
        auto read_into = [&](uint64_t gpa, size_t len) -> base::Result<void> {
            if (failed)
                return base::ok();
            auto target = TRY(memory.slice(gpa, len, GuestMemory::Access::Write));
            if (auto read = m_backend->read(offset, target); !read)
                failed = std::move(read).error();
            offset += len;
            return base::ok();
        };
        TRY(for_each_piece(chain.writable, 0, writable_data, read_into));
        if (failed) {
            ++m_counters.io_errors;
            note(Problem::ReadFailed, failed->message());
            return finish(k_status_ioerr, 0);
        }
        ++m_counters.reads;
        m_counters.read_bytes += writable_data;
        return finish(k_status_ok, writable_data);
    }
    case k_type_out: {
        if (writable_data != 0)
            return bad(Problem::WrongDirection,
                       fmt::format("chain {}: a write with {} device-writable data bytes", chain.head, writable_data));
        if (auto problem = check_range(readable_data))
            return bad(problem->first, problem->second);
        // One copy out of guest memory: what reaches the backend and what the observer sees
        // are the same bytes, whatever the guest does to its buffers meanwhile.
        m_bounce.resize(static_cast<size_t>(readable_data));
        size_t at = 0;
        auto copy_data = [&](uint64_t gpa, size_t len) -> base::Result<void> {
            auto source = TRY(memory.slice(gpa, len, GuestMemory::Access::Read));
            std::memcpy(m_bounce.data() + at, source.data(), len);
            at += len;
            return base::ok();
        };
        TRY(for_each_piece(chain.readable, k_header_size, readable_data, copy_data));
        uint64_t offset = sector * k_sector_size;
        if (auto written = m_backend->write(offset, m_bounce); !written) {
            ++m_counters.io_errors;
            note(Problem::WriteFailed, written.error().message());
            return finish(k_status_ioerr, 0);
        }
        ++m_counters.writes;
        m_counters.written_bytes += readable_data;
        if (m_observer.written && !m_bounce.empty())
            m_observer.written(offset, m_bounce);
        return finish(k_status_ok, 0);
    }
    case k_type_flush: {
        if (auto flushed = m_backend->flush(); !flushed) {
            ++m_counters.io_errors;
            note(Problem::FlushFailed, flushed.error().message());
            return finish(k_status_ioerr, 0);
        }
        ++m_counters.flushes;
        if (m_observer.flushed)
            m_observer.flushed();
        return finish(k_status_ok, 0);
    }
    case k_type_get_id: {
        if (readable_data != 0)
            return bad(Problem::WrongDirection,
                       fmt::format("chain {}: GET_ID with {} device-readable data bytes", chain.head, readable_data));
        std::array<std::byte, k_id_bytes> id{};
        std::memcpy(id.data(), m_serial.data(), std::min(m_serial.size(), id.size()));
        uint64_t len = std::min<uint64_t>(writable_data, id.size());
        size_t at = 0;
        auto write_id = [&](uint64_t gpa, size_t n) -> base::Result<void> {
            auto target = TRY(memory.slice(gpa, n, GuestMemory::Access::Write));
            std::memcpy(target.data(), id.data() + at, n);
            at += n;
            return base::ok();
        };
        TRY(for_each_piece(chain.writable, 0, len, write_id));
        ++m_counters.get_ids;
        return finish(k_status_ok, len);
    }
    default:
        ++m_counters.unsupported;
        note(Problem::Unsupported, fmt::format("chain {}: type {}", chain.head, type));
        return finish(k_status_unsupp, 0);
    }
}

void BlkDevice::process() {
    if (!m_transport || m_quiesced || !m_transport->active())
        return;
    serve_queue(*m_transport, 0, [this](const Chain& chain) -> Served {
        if (m_admit && !m_admit())
            return leave_in_ring();  // back-pressure: the requests wait in the ring until resume() or kick()
        return used_chain(TRY(handle(chain)));
    });
}

std::vector<std::byte> BlkDevice::save_state() const {
    StateWriter w;
    w.put(static_cast<uint64_t>(m_backend->size() / k_sector_size));
    w.put_string(m_serial);
    return w.take();
}

base::Result<BlkDevice::Saved> BlkDevice::decode_state(uint16_t version, std::span<const std::byte> bytes) const {
    if (version != k_state_version)
        return base::Error::make(base::Errc::Unsupported, "virtio-blk state version {} (this build reads {})", version,
                                 k_state_version);
    StateReader r(bytes);
    Saved saved;
    saved.capacity = r.get<uint64_t>();
    saved.serial = r.get_string(k_id_bytes);
    TRY(r.finish("virtio-blk state"));
    uint64_t capacity = m_backend->size() / k_sector_size;
    if (saved.capacity != capacity)
        return base::Error::make(base::Errc::Mismatch, "virtio-blk state of a disk of {} sectors, this disk ({}) has {}",
                                 saved.capacity, m_backend->describe(), capacity);
    return saved;
}

base::Result<void> BlkDevice::check_state(uint16_t version, std::span<const std::byte> bytes) const {
    TRY(decode_state(version, bytes));
    return base::ok();
}

base::Result<void> BlkDevice::load_state(uint16_t version, std::span<const std::byte> bytes) {
    Saved saved = TRY(decode_state(version, bytes));
    m_serial = std::move(saved.serial);
    return base::ok();
}

}  // namespace colod::core::virtio
