// SPDX-License-Identifier: GPL-2.0-or-later
// A COLO secondary's disk between two checkpoints (docs/disk.md): its guest runs beside the
// primary's and writes its disk too, but the image must stay at the last committed checkpoint.
// An Overlay keeps those writes in memory, in 4 KiB pages in front of the image: reads see the
// guest's own writes over the image, writes never reach it. Loading the next checkpoint drops
// the overlay (the primary's writes of that epoch then go into the image through the journal);
// a takeover that continues the running guest writes the overlay into the image and from then
// on lets everything through.
//
// Thread-safe: the device calls it under its transport lock, the standby engine from its own
// thread while the guest is paused (clear) or running (commit).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/disk/image.h"

namespace colod::core::disk {

class Overlay final : public BlockBackend {
public:
    static constexpr uint64_t k_page = 4096;

    explicit Overlay(std::shared_ptr<BlockBackend> image) : m_image(std::move(image)), m_size(m_image->size()) {}

    uint64_t size() const override { return m_size; }
    std::string describe() const override { return m_image->describe() + " (overlay)"; }
    base::Result<void> read(uint64_t offset, std::span<std::byte> data) override;
    // Into the overlay (pages the write covers only in part are first read from the image), or
    // straight into the image once passing through.
    base::Result<void> write(uint64_t offset, std::span<const std::byte> data) override;
    // Nothing to make durable while the writes stay here (the image's flush once passing through).
    base::Result<void> flush() override;

    // Bytes held (whole pages).
    uint64_t bytes() const { return m_bytes.load(std::memory_order_relaxed); }
    // Drops every write held (a checkpoint is loaded).
    void clear();
    // Writes every page held into the image, makes it durable, and lets every later call
    // through to the image.
    base::Result<void> commit();
    bool passing_through() const;

private:
    std::shared_ptr<BlockBackend> m_image;
    const uint64_t m_size;
    mutable std::mutex m_mutex;
    std::unordered_map<uint64_t, std::vector<std::byte>> m_pages;  // page index → k_page bytes
    bool m_through = false;
    std::atomic<uint64_t> m_bytes{0};
};

}  // namespace colod::core::disk
