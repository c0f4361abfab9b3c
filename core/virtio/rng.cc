// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/virtio/rng.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "base/log.h"
#include "core/state_io.h"

namespace colod::core::virtio {

size_t HostEntropy::fill(std::span<std::byte> out) {
    size_t done = 0;
    unsigned flags = GRND_NONBLOCK;
    while (done < out.size()) {
        ssize_t n = ::getrandom(out.data() + done, out.size() - done, flags);
        if (n > 0) {
            done += static_cast<size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN && flags == GRND_NONBLOCK) {
            // The host's CRNG is not seeded yet: this happens only in the first moments after
            // the host boots. Waiting for it once (the kernel seeds itself from CPU jitter within
            // about a second) beats both handing the guest weaker bytes (GRND_INSECURE) and
            // returning 0, which would leave the request pending with nobody to wake it.
            base::logf(base::Level::Notice, base::Event::None, "virtio-rng: waiting for the host's entropy pool to be seeded");
            flags = 0;
            continue;
        }
        base::log_limited("virtio-rng getrandom", std::chrono::seconds(10), base::Level::Error, base::Event::Error,
                          fmt::format("virtio-rng: getrandom: {}", std::strerror(n < 0 ? errno : EIO)));
        break;
    }
    return done;
}

size_t LimitedEntropy::fill(std::span<std::byte> out) {
    uint64_t allowed = m_allowance();
    if (allowed < out.size())
        out = out.first(static_cast<size_t>(allowed));
    return out.empty() ? 0 : m_inner->fill(out);
}

base::Result<void> StreamEntropy::add(uint64_t offset, std::span<const std::byte> bytes) {
    std::lock_guard lock(m_mutex);
    if (!m_known) {
        m_known = true;
        m_base = m_next = offset;
    }
    uint64_t end = m_base + m_bytes.size();
    if (offset > end)
        return base::Error::make(base::Errc::Protocol, "virtio-rng bytes at stream offset {}, but {} comes next",
                                 offset, end);
    uint64_t skip = end - offset;  // already held, or dropped by a seek past them
    if (skip >= bytes.size())
        return base::ok();
    bytes = bytes.subspan(static_cast<size_t>(skip));
    if (m_bytes.size() + bytes.size() > m_capacity)
        return base::Error::make(base::Errc::Protocol,
                                 "virtio-rng bytes beyond {} KiB since the last checkpoint (the primary limits its "
                                 "guest to less)",
                                 m_capacity >> 10);
    m_bytes.insert(m_bytes.end(), bytes.begin(), bytes.end());
    return base::ok();
}

void StreamEntropy::seek(uint64_t offset) {
    std::lock_guard lock(m_mutex);
    uint64_t end = m_base + m_bytes.size();
    if (!m_known || offset < m_base || offset > end) {
        // Nothing held there: the bytes from `offset` on are still to come.
        m_bytes.clear();
        m_base = offset;
    } else {
        m_bytes.erase(m_bytes.begin(), m_bytes.begin() + static_cast<std::ptrdiff_t>(offset - m_base));
        m_base = offset;
    }
    m_known = true;
    m_next = offset;
}

void StreamEntropy::clear() {
    std::lock_guard lock(m_mutex);
    m_known = false;
    m_bytes.clear();
    m_base = m_next = 0;
}

size_t StreamEntropy::held() const {
    std::lock_guard lock(m_mutex);
    return m_bytes.size();
}

size_t StreamEntropy::fill(std::span<std::byte> out) {
    std::lock_guard lock(m_mutex);
    if (!m_known)
        return 0;
    uint64_t end = m_base + m_bytes.size();
    size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), end - m_next));
    std::memcpy(out.data(), m_bytes.data() + (m_next - m_base), n);
    m_next += n;
    return n;
}

RngDevice::RngDevice(std::unique_ptr<EntropySource> source, Observer observer)
    : m_source(std::move(source)), m_observer(std::move(observer)) {
    m_staged.reserve(k_max_request);
}

namespace {
// The transport's lock, or none before the device is attached (nothing else can reach it then).
std::unique_lock<std::mutex> lock_of(Transport* transport) {
    return transport ? transport->lock() : std::unique_lock<std::mutex>();
}
}  // namespace

void RngDevice::entropy_available() {
    auto lock = lock_of(m_transport);
    process();
}

void RngDevice::set_source(std::unique_ptr<EntropySource> source) {
    auto lock = lock_of(m_transport);
    m_source = std::move(source);
}

void RngDevice::set_observer(Observer observer) {
    auto lock = lock_of(m_transport);
    m_observer = std::move(observer);
}

uint64_t RngDevice::bytes_taken() const {
    auto lock = lock_of(m_transport);
    return m_taken;
}

void RngDevice::continue_stream_at(uint64_t taken) {
    auto lock = lock_of(m_transport);
    m_taken = taken;
    m_staged.clear();
}

size_t RngDevice::bytes_staged() const {
    auto lock = lock_of(m_transport);
    return m_staged.size();
}

void RngDevice::queue_notify(uint16_t index) {
    if (index == 0)
        process();
}

void RngDevice::quiesce() {
    auto lock = lock_of(m_transport);
    m_quiesced = true;
}

void RngDevice::resume() {
    auto lock = lock_of(m_transport);
    m_quiesced = false;
    // Entropy that arrived while quiesced, or requests pending in a state just loaded.
    process();
}

// Draws up to `wanted` more bytes into the staging buffer, showing each run to the observer.
void RngDevice::draw(size_t wanted) {
    while (wanted > 0 && m_source) {
        size_t old = m_staged.size();
        m_staged.resize(old + wanted);
        // A source that claims more than it was given room for is believed only that far.
        size_t got = std::min(m_source->fill(std::span(m_staged.data() + old, wanted)), wanted);
        m_staged.resize(old + got);
        if (got == 0)
            return;
        uint64_t offset = m_taken;
        m_taken += got;
        wanted -= got;
        if (m_observer)
            m_observer(offset, std::span<const std::byte>(m_staged.data() + old, got));
    }
}

// Copies the first `bytes` staged bytes into the chain's writable buffers, in order.
base::Result<void> RngDevice::deliver(const Chain& chain, size_t bytes) {
    size_t offset = 0;
    for (const Buffer& buffer : chain.writable) {
        if (offset == bytes)
            break;
        size_t part = std::min<size_t>(buffer.len, bytes - offset);
        auto target = TRY(m_transport->memory().slice(buffer.gpa, part, GuestMemory::Access::Write));
        std::memcpy(target.data(), m_staged.data() + offset, part);
        offset += part;
    }
    m_staged.erase(m_staged.begin(), m_staged.begin() + static_cast<std::ptrdiff_t>(bytes));
    return base::ok();
}

void RngDevice::process() {
    if (!m_transport || m_quiesced || !m_transport->active())
        return;
    serve_queue(*m_transport, 0, [this](const Chain& chain) -> Served {
        size_t want = static_cast<size_t>(std::min<uint64_t>(chain.writable_bytes, k_max_request));
        if (m_staged.size() < want)
            draw(want - m_staged.size());
        if (m_staged.size() < want)
            return leave_in_ring();  // the chain stays in the ring until entropy_available()
        TRY(deliver(chain, want));
        return used_chain(static_cast<uint32_t>(want));
    });
}

// Layout, version 1: u64 bytes taken from the source, blob of the staged bytes.
std::vector<std::byte> RngDevice::save_state() const {
    StateWriter w;
    w.put(m_taken);
    w.put_blob(m_staged);
    return w.take();
}

struct RngDevice::Saved {
    uint64_t taken;
    std::vector<std::byte> staged;
};

base::Result<RngDevice::Saved> RngDevice::decode_state(uint16_t version, std::span<const std::byte> bytes) const {
    if (version != k_state_version)
        return base::Error::make(base::Errc::Unsupported, "virtio-rng state version {} (this build reads {})", version,
                                 k_state_version);
    StateReader r(bytes);
    Saved saved;
    saved.taken = r.get<uint64_t>();
    saved.staged = r.get_blob(k_max_request);
    TRY(r.finish("virtio-rng state"));
    if (saved.staged.size() > saved.taken)
        return base::Error::make(base::Errc::Invalid, "virtio-rng state: {} bytes staged of {} ever taken",
                                 saved.staged.size(), saved.taken);
    return saved;
}

base::Result<void> RngDevice::check_state(uint16_t version, std::span<const std::byte> bytes) const {
    TRY(decode_state(version, bytes));
    return base::ok();
}

base::Result<void> RngDevice::load_state(uint16_t version, std::span<const std::byte> bytes) {
    Saved saved = TRY(decode_state(version, bytes));
    m_taken = saved.taken;
    m_staged.assign(saved.staged.begin(), saved.staged.end());
    return base::ok();
}

}  // namespace colod::core::virtio
