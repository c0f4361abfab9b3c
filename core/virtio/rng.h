// SPDX-License-Identifier: GPL-2.0-or-later
// virtio-rng (virtio 1.x §5.4): device id 4, one queue ("requestq"), no configuration, no
// device features. Each chain the driver makes available is filled with entropy in its
// device-writable buffers and returned.
//
// Replication: what the guest receives must be reproducible on the other side of a pair, so
// the entropy comes from an EntropySource the machine chooses (the host's on a primary, bytes
// fed by the replication link on a COLO secondary) and every byte taken from it is shown to an
// observer, in order (the primary forwards exactly those bytes). Each chain receives exactly
// min(its writable bytes, k_max_request) bytes, never fewer: how the stream is cut into
// requests depends only on the guest (the same on both sides), never on how fast the source
// delivered. A chain the source cannot fill yet stays in the ring, untaken, and bytes already
// drawn for it wait in a staging buffer (part of the saved state, kept across a device reset,
// so no byte the observer saw is ever lost or given twice).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "base/result.h"
#include "core/virtio/device.h"

namespace colod::core::virtio {

class EntropySource {
public:
    virtual ~EntropySource() = default;
    // Fills the start of `out` with as many bytes as the source has now, without blocking, and
    // returns how many (0: none yet; the owner calls RngDevice::entropy_available() later).
    // Called with the transport's lock held.
    virtual size_t fill(std::span<std::byte> out) = 0;
};

// The host kernel's CSPRNG through getrandom(2).
class HostEntropy final : public EntropySource {
public:
    size_t fill(std::span<std::byte> out) override;
};

// Another source, but never more at once than `allowance()` says (a COLO primary limits how
// much entropy its guest takes between two checkpoints, since the secondary must hold all of
// it). The owner calls RngDevice::entropy_available() when the allowance grows again.
class LimitedEntropy final : public EntropySource {
public:
    LimitedEntropy(std::unique_ptr<EntropySource> inner, std::function<uint64_t()> allowance)
        : m_inner(std::move(inner)), m_allowance(std::move(allowance)) {}
    size_t fill(std::span<std::byte> out) override;

private:
    std::unique_ptr<EntropySource> m_inner;
    std::function<uint64_t()> m_allowance;
};

// A source fed from elsewhere by position in the device's stream: a COLO secondary's, fed the
// bytes the primary's device took (RNG_INPUT). It keeps every byte from the position of the
// last checkpoint on, including those its guest already took, because loading the next
// checkpoint rolls the guest back to that position (seek()). Shared between the engine that
// feeds it and the device that reads it; thread-safe.
class StreamEntropy final : public EntropySource {
public:
    explicit StreamEntropy(size_t capacity) : m_capacity(capacity) {}
    // Bytes at stream offset `offset`. They must continue what is held (bytes already held
    // or dropped by seek() are skipped); a gap or more than `capacity` held is an error and
    // changes nothing.
    base::Result<void> add(uint64_t offset, std::span<const std::byte> bytes);
    // The next byte given is the one at `offset` (a checkpoint was loaded whose device had
    // taken that many); bytes before it are dropped.
    void seek(uint64_t offset);
    // Forgets everything (a new primary starts its stream where its device stands).
    void clear();
    size_t held() const;
    size_t fill(std::span<std::byte> out) override;

private:
    mutable std::mutex m_mutex;
    const size_t m_capacity;
    bool m_known = false;        // m_base means something
    uint64_t m_base = 0;         // stream offset of m_bytes[0]
    uint64_t m_next = 0;         // stream offset of the next byte fill() gives
    std::vector<std::byte> m_bytes;
};

// A shared source behind the unique_ptr a device owns.
class SharedEntropy final : public EntropySource {
public:
    explicit SharedEntropy(std::shared_ptr<EntropySource> source) : m_source(std::move(source)) {}
    size_t fill(std::span<std::byte> out) override { return m_source->fill(out); }

private:
    std::shared_ptr<EntropySource> m_source;
};

class RngDevice final : public VirtioDevice {
public:
    static constexpr uint32_t k_device_id = 4;
    static constexpr uint16_t k_queue_size = 256;
    // Bytes given per request at most. Linux asks for small amounts (a cache line at a time in
    // 6.1), so this never shortens a real request; it bounds what a hostile driver can make a
    // notification do under the lock (a chain of many 4 GiB buffers), the staging buffer, and the state.
    static constexpr size_t k_max_request = 64 * 1024;
    static constexpr uint16_t k_state_version = 1;

    // Called with each run of bytes taken from the source, in order, with the stream offset of
    // the first (bytes_taken() before them). Transport lock held: it must only queue them, no
    // I/O.
    using Observer = std::function<void(uint64_t offset, std::span<const std::byte>)>;

    explicit RngDevice(std::unique_ptr<EntropySource> source, Observer observer = {});

    // The source has bytes again (any thread): completes pending requests and interrupts the
    // driver. Takes the transport's lock; does nothing while quiesced (resume() catches up).
    void entropy_available();
    // Replaces the source (a secondary taking over switches from the link's bytes to the
    // host's) or the observer. Any thread; takes the transport's lock.
    void set_source(std::unique_ptr<EntropySource> source);
    void set_observer(Observer observer);
    // Bytes taken from the source since the device was made, carried in its state: the
    // position in the source's stream where the next byte will come from. A secondary that
    // loads state positions its link-fed source here.
    uint64_t bytes_taken() const;
    // After a reboot in place loaded the device's power-on state: its place in the source's
    // stream goes on from `taken` (what bytes_taken() said before), never back, since a COLO
    // secondary positions its stream by it; the bytes staged before the reboot are dropped (both
    // sides skip them).
    void continue_stream_at(uint64_t taken);
    // Bytes drawn from the source that wait for a request.
    size_t bytes_staged() const;

    // VirtioDevice.
    std::string_view type_name() const override { return "rng"; }
    uint32_t device_id() const override { return k_device_id; }
    uint64_t device_features() const override { return 0; }
    uint16_t queue_count() const override { return 1; }
    uint16_t queue_max_size(uint16_t) const override { return k_queue_size; }
    void attach(Transport& transport) override { m_transport = &transport; }
    void read_config(uint32_t, std::span<std::byte> data) override { std::fill(data.begin(), data.end(), std::byte{0}); }
    void write_config(uint32_t, std::span<const std::byte>) override {}
    void activate() override { process(); }
    void reset() override {}  // nothing in flight: chains are taken only when complete
    void queue_notify(uint16_t index) override;
    uint16_t state_version() const override { return k_state_version; }
    std::vector<std::byte> save_state() const override;
    base::Result<void> check_state(uint16_t version, std::span<const std::byte> bytes) const override;
    base::Result<void> load_state(uint16_t version, std::span<const std::byte> bytes) override;

    // Pausable: while quiesced nothing touches guest memory or the source; resume() completes
    // whatever became possible meanwhile.
    void quiesce() override;
    void resume() override;

private:
    struct Saved;
    base::Result<Saved> decode_state(uint16_t version, std::span<const std::byte> bytes) const;
    // Completes every available request the source can fill (transport lock held).
    void process();
    void draw(size_t wanted);
    base::Result<void> deliver(const Chain& chain, size_t bytes);

    Transport* m_transport = nullptr;
    std::unique_ptr<EntropySource> m_source;
    Observer m_observer;
    bool m_quiesced = false;
    std::vector<std::byte> m_staged;  // drawn, not yet given; at most k_max_request
    uint64_t m_taken = 0;
};

}  // namespace colod::core::virtio
