// SPDX-License-Identifier: GPL-2.0-or-later
// virtio-blk (virtio 1.x §5.2): device id 2, one request queue, a disk of BlockBackend's size.
//
// Offered features: VIRTIO_BLK_F_SIZE_MAX and VIRTIO_BLK_F_SEG_MAX (the bounds below, which
// Linux obeys when it builds requests), VIRTIO_BLK_F_BLK_SIZE (512) and VIRTIO_BLK_F_FLUSH.
// Not offered, so never done: read-only, discard, write-zeroes, a writeback toggle (with FLUSH
// and no CONFIG_WCE the driver treats the disk as a volatile write cache and flushes it), the
// topology, multiqueue. Configuration space: capacity (le64, sectors), size_max, seg_max,
// a zero geometry, blk_size.
//
// Requests (struct virtio_blk_req: le32 type, le32 reserved, le64 sector; the data; a status
// byte, the last device-writable byte of the chain): IN, OUT, FLUSH and GET_ID are done;
// any other type gets VIRTIO_BLK_S_UNSUPP. Every chain is hostile, and a bad one gets
// VIRTIO_BLK_S_IOERR while the guest and the device go on: a header shorter than 16 bytes,
// data in the wrong direction (readable data for IN, writable data beyond the status for
// OUT), data that is not whole sectors or longer than k_max_data, a range outside the disk, or
// a backend that failed. A chain with no device-writable byte has no place for a status: it is
// returned with used length 0 (the driver's own status byte stays what it was). A malformed
// ring (the queue's own checks) breaks the queue as for every device (DEVICE_NEEDS_RESET).
// Each kind of bad request is logged once for the device's lifetime, then only counted.
//
// Requests are done synchronously, on the thread that takes the guest's notification (the
// transport's doorbell thread, or a vCPU's MMIO exit where KVM has no ioeventfds), under the
// transport's lock: pread/pwrite into and out of guest memory, fdatasync for FLUSH. So no
// request is ever in flight when the machine pauses (quiesce() takes the lock after the
// request being done, and the device takes none while quiesced), and a checkpoint needs
// nothing from the device but its small state. Requests are done one after another; a worker
// pool would overlap them (when a guest's disk throughput matters more than this).
//
// Replication's hooks: an Observer is told (transport lock held: it may only copy or queue,
// never do I/O or call into the device) of every range a guest write changed, with the very
// bytes written to the backend, after the write succeeded, and of every flush that completed,
// in the order the guest's requests were done. set_backend() replaces the backend under the
// lock (an overlay in front of the image, say).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "core/disk/image.h"
#include "core/virtio/device.h"

namespace colod::core::virtio {

class BlkDevice final : public VirtioDevice {
public:
    static constexpr uint32_t k_device_id = 2;
    static constexpr uint16_t k_queue_size = 256;
    static constexpr uint16_t k_state_version = 1;
    // Device feature bits (§5.2.3).
    static constexpr uint64_t k_feature_size_max = 1ull << 1;
    static constexpr uint64_t k_feature_seg_max = 1ull << 2;
    static constexpr uint64_t k_feature_blk_size = 1ull << 6;
    static constexpr uint64_t k_feature_flush = 1ull << 9;
    // Request types and status values (§5.2.6).
    static constexpr uint32_t k_type_in = 0;
    static constexpr uint32_t k_type_out = 1;
    static constexpr uint32_t k_type_flush = 4;
    static constexpr uint32_t k_type_get_id = 8;
    static constexpr uint8_t k_status_ok = 0;
    static constexpr uint8_t k_status_ioerr = 1;
    static constexpr uint8_t k_status_unsupp = 2;
    static constexpr size_t k_header_size = 16;
    // GET_ID's answer: at most 20 bytes, NUL-padded.
    static constexpr size_t k_id_bytes = 20;
    // The bounds offered: data segments per request and bytes per segment. Their product bounds
    // the data of one request; a longer one is refused. It also bounds the buffer a write is
    // copied into, and so what one request makes a vCPU do.
    static constexpr uint32_t k_seg_max = 126;
    static constexpr uint32_t k_size_max = 64 * 1024;
    static constexpr uint64_t k_max_data = uint64_t{k_seg_max} * k_size_max;

    struct Observer {
        // A guest write of `bytes` at byte `offset` reached the backend.
        std::function<void(uint64_t offset, std::span<const std::byte> bytes)> written;
        // A guest flush completed: every write observed before it is durable in the backend.
        std::function<void()> flushed;
    };

    struct Counters {
        uint64_t reads = 0, read_bytes = 0;
        uint64_t writes = 0, written_bytes = 0;
        uint64_t flushes = 0;
        uint64_t get_ids = 0;
        uint64_t unsupported = 0;  // answered VIRTIO_BLK_S_UNSUPP
        uint64_t bad_requests = 0; // answered VIRTIO_BLK_S_IOERR for the request's own fault
        uint64_t io_errors = 0;    // answered VIRTIO_BLK_S_IOERR because the backend failed
        uint64_t no_status = 0;    // returned without a status (no device-writable byte)
    };

    // `serial` is what GET_ID answers (at most k_id_bytes; longer is cut). A backend is required.
    BlkDevice(std::shared_ptr<disk::BlockBackend> backend, std::string serial, Observer observer = {});

    // A serial for an image at `path`: its file name if that fits in 20 bytes (other bytes than
    // printable ASCII replaced by '_'), else its first 11 bytes, '-' and 8 hex digits of a hash
    // of the whole name. The same for the same file name on both hosts of a pair; the serial
    // also travels in the device's state, so a takeover never changes it.
    static std::string serial_for(std::string_view path);

    // Any thread; take the transport's lock.
    void set_observer(Observer observer);
    // Back-pressure: while `admit` returns false (called under the transport's lock, before each
    // request), requests wait in the ring, untaken; they go on at resume() or kick(). Empty:
    // always admitted.
    void set_admission(std::function<bool()> admit);
    // Processes what waits in the ring now (the admission changed its mind). Any thread.
    void kick();
    // Replaces the backend; refused (nothing changes) unless it has the same size.
    base::Result<void> set_backend(std::shared_ptr<disk::BlockBackend> backend);
    std::shared_ptr<disk::BlockBackend> backend() const;
    Counters counters() const;
    std::string serial() const;
    // Capacity in sectors.
    uint64_t capacity() const;

    // VirtioDevice.
    std::string_view type_name() const override { return "blk"; }
    uint32_t device_id() const override { return k_device_id; }
    uint64_t device_features() const override {
        return k_feature_size_max | k_feature_seg_max | k_feature_blk_size | k_feature_flush;
    }
    uint16_t queue_count() const override { return 1; }
    uint16_t queue_max_size(uint16_t) const override { return k_queue_size; }
    void attach(Transport& transport) override { m_transport = &transport; }
    void read_config(uint32_t offset, std::span<std::byte> data) override;
    // Nothing in the offered configuration is writable (no CONFIG_WCE): writes are ignored.
    void write_config(uint32_t, std::span<const std::byte>) override {}
    void activate() override { process(); }
    void reset() override {}  // nothing is ever in flight (see the top)
    void queue_notify(uint16_t index) override;
    // Version 1: u64 capacity in sectors (a state from a disk of another size is refused), the
    // serial. Lock held, machine paused.
    uint16_t state_version() const override { return k_state_version; }
    std::vector<std::byte> save_state() const override;
    base::Result<void> check_state(uint16_t version, std::span<const std::byte> bytes) const override;
    base::Result<void> load_state(uint16_t version, std::span<const std::byte> bytes) override;

    // Pausable. Nothing runs on threads of the device's own, so there is nothing to park; a
    // notification while quiesced (a doorbell rung before the pause) waits for resume().
    void quiesce() override;
    void resume() override;

private:
    enum class Problem : unsigned {
        NoStatus,
        ShortHeader,
        WrongDirection,
        NotSectors,
        TooLarge,
        OutOfRange,
        Unsupported,
        ReadFailed,
        WriteFailed,
        FlushFailed,
        Count
    };
    struct Saved {
        uint64_t capacity;
        std::string serial;
    };

    // Does every available request (transport lock held).
    void process();
    // Does one request and returns the used length; an error only when the chain could not be
    // used at all (guest memory the queue had checked: the queue is then broken).
    base::Result<uint32_t> handle(const Chain& chain);
    // Logs `problem` the first time it happens; later ones are only counted.
    void note(Problem problem, std::string_view detail);
    base::Result<Saved> decode_state(uint16_t version, std::span<const std::byte> bytes) const;

    Transport* m_transport = nullptr;
    std::shared_ptr<disk::BlockBackend> m_backend;
    std::string m_serial;
    Observer m_observer;
    std::function<bool()> m_admit;
    bool m_quiesced = false;
    Counters m_counters;
    unsigned m_logged = 0;            // bit per Problem already logged
    std::vector<std::byte> m_bounce;  // a write's data, copied out of guest memory once
};

}  // namespace colod::core::virtio
