// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/checkpoint_pipeline.h"

#include <algorithm>
#include <cstring>

#include "base/events.h"
#include "base/log.h"
#include "core/disk_replication.h"
#include "core/fault.h"
#include "core/replication.h"
#include "core/state_sections.h"

namespace colod::core {

using Clock = std::chrono::steady_clock;
using base::Event;
using base::Level;

namespace {

// Pre-copy pages are copied out of the running guest a chunk at a time before they are
// checksummed and sent: a page the guest writes while it is on its way would otherwise go out
// different from its CRC (and torn). 8 MiB per chunk keeps the copy buffer small; the copy costs
// far less than the transfer.
constexpr uint64_t k_precopy_chunk_pages = 2048;
// A pause longer than this is reported (rate-limited) as checkpoint-slow.
constexpr uint64_t k_slow_pause_us = 20'000;

uint64_t us_of(Clock::duration d) {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(d).count());
}

}  // namespace

CheckpointPipeline::CheckpointPipeline(Machine& machine, std::chrono::microseconds interval,
                                       std::chrono::milliseconds ack_timeout)
    : m_machine(machine), m_interval(interval), m_ack_timeout(ack_timeout), m_dirty(machine.memory().page_count()) {}

base::Result<void> CheckpointPipeline::restart_dirty_log() {
    m_precopy_pages = 0;
    m_dirty.clear();
    TRY(m_machine.memory().harvest_dirty(m_machine.vm(), m_dirty));
    m_dirty.clear();
    return base::ok();
}

base::Result<uint64_t> CheckpointPipeline::harvest() {
    TRY(m_machine.memory().harvest_dirty(m_machine.vm(), m_dirty));
    return m_dirty.count();
}

base::Result<void> CheckpointPipeline::precopy(Session& session, std::span<const uint64_t> all_pages,
                                               std::atomic<uint64_t>& next_seq) {
    GuestMemory& memory = m_machine.memory();
    for (size_t first = 0; first < all_pages.size(); first += k_precopy_chunk_pages) {
        auto pages = all_pages.subspan(first, std::min<size_t>(k_precopy_chunk_pages, all_pages.size() - first));
        if (!m_precopy_copy.ensure(pages.size() * k_page_size))
            return base::Error(base::Errc::System, "no memory for the pre-copy buffer");
        for (size_t i = 0; i < pages.size(); ++i)
            std::memcpy(m_precopy_copy.data() + i * k_page_size, memory.page(pages[i]), k_page_size);
        proto::StateInput input;
        input.seq = next_seq++;
        input.kind = proto::StateKind::Precopy;
        input.pages = pages;
        input.page_bytes = [this, pages](uint64_t page) {
            size_t at = static_cast<size_t>(std::lower_bound(pages.begin(), pages.end(), page) - pages.begin());
            return std::span<const std::byte>(m_precopy_copy.data() + at * k_page_size, k_page_size);
        };
        proto::StateEncoder encoder(proto::EncoderOptions{k_checkpoint_frame_payload, proto::ZeroScan::On});
        auto encoded = TRY(encoder.encode(input));
        TRY(session.send_state(encoded));
        m_bytes_sent += encoded.size().bytes;
        m_precopy_pages += pages.size();
    }
    return base::ok();
}

base::Result<void> CheckpointPipeline::run(Session& session, uint64_t seq, proto::StateKind kind, const Hooks& hooks) {
    GuestMemory& memory = m_machine.memory();
    MachineState state;
    std::vector<proto::DiskWrites> disk_writes;
    uint64_t pause_us = 0;
    std::string breakdown;
    size_t grown = 0;
    {
        // ---- capture: the guest is paused only for this block ----
        auto started = Clock::now();
        auto paused = m_machine.pause();
        if (!paused.paused())
            return base::Error(base::Errc::Stopped, "the guest has stopped");
        auto stopped = Clock::now();
        // m_dirty may already hold pages a pre-copy round harvested but did not send: add to
        // them, capture everything, and only then start afresh.
        TRY(memory.harvest_dirty(m_machine.vm(), m_dirty));
        auto harvested = Clock::now();
        grown = m_capture.capture(memory, m_dirty);
        m_dirty.clear();
        auto copied = Clock::now();
        {
            std::unique_lock<std::mutex> input;
            if (hooks.lock_input)
                input = hooks.lock_input();
            state = TRY(m_machine.save_state());
            if (hooks.devices_saved)
                hooks.devices_saved(seq);
        }
        if (hooks.disk_writes)
            disk_writes = TRY(hooks.disk_writes(seq));
        fault_point("primary.paused");
        breakdown = fmt::format("stop {} us, harvest {} us, copy {} us, device state {} us", us_of(stopped - started),
                                us_of(harvested - stopped), us_of(copied - harvested), us_of(Clock::now() - copied));
        if (hooks.paused)
            hooks.paused(seq, paused);
        pause_us = us_of(Clock::now() - started);
    }  // the guest runs again (unless the engine kept it): the transfer overlaps its execution
    if (grown)
        base::logf(Level::Warning, Event::None,
                   "checkpoint {}: the capture buffer grew by {} MiB inside the pause (the dirty set outgrew what "
                   "was reserved)",
                   seq, grown >> 20);

    // ---- encode ----
    EncodedSections sections(state);
    proto::StateInput input;
    input.seq = seq;
    input.kind = kind;
    input.pages = m_capture.pages();
    input.page_bytes = [this](uint64_t page) { return m_capture.bytes_of(page); };
    input.sections = sections.inputs();
    proto::StateEncoder encoder(proto::EncoderOptions{k_checkpoint_frame_payload, proto::ZeroScan::On});
    auto encoded = TRY(encoder.encode(input));

    // ---- send ----
    auto sent_at = Clock::now();
    fault_point("primary.before-send");
    // The disk's writes first, so the standby holds them when the state completes.
    uint64_t disk_count = 0;
    for (const auto& message : disk_writes)
        disk_count += message.writes.size();
    uint64_t disk_bytes = TRY(send_disk_writes(session, std::move(disk_writes), m_ack_timeout));
    m_bytes_sent += disk_bytes;
    TRY(session.send_state(encoded));
    m_bytes_sent += encoded.size().bytes;
    fault_point("primary.sent");

    // ---- acks ----
    TRY(session.await<proto::VmstateReceived>(seq, Clock::now() + m_ack_timeout));
    fault_point("primary.received");
    TRY(session.await<proto::VmstateLoaded>(seq, Clock::now() + m_ack_timeout));
    fault_point("primary.loaded");

    // ---- release ----
    if (hooks.committed)
        hooks.committed(seq);
    fault_point("primary.released");
    m_capture.reserve_ahead(memory.size());  // the transfer no longer needs the buffer: grow it now if needed

    uint64_t pages = m_capture.size();
    ++m_checkpoints;
    m_dirty_last = pages;
    m_dirty_total += pages;
    m_pauses.add(pause_us);
    auto round_trip = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - sent_at);
    base::log(Level::Debug, Event::None,
              fmt::format("checkpoint {}: {} pages, pause {} us ({}), transfer and apply {} us{}", seq, pages, pause_us,
                          breakdown, round_trip.count(),
                          hooks.disk_writes ? fmt::format(", disk {} writes {} bytes", disk_count, disk_bytes) : ""),
              {{"SEQ", std::to_string(seq)}, {"PAUSE_US", std::to_string(pause_us)}});
    if (pause_us > k_slow_pause_us || round_trip > m_interval * 2) {
        auto now = Clock::now();
        if (now - m_last_slow_log > std::chrono::seconds(10)) {
            m_last_slow_log = now;
            base::log(Level::Warning, Event::CheckpointSlow,
                      fmt::format("checkpoint {} was slow: pause {} us ({}), {} dirty pages, transfer and apply {} ms",
                                  seq, pause_us, breakdown, pages, round_trip.count() / 1000),
                      {{"SEQ", std::to_string(seq)}, {"PAUSE_US", std::to_string(pause_us)}});
        }
    }
    return base::ok();
}

}  // namespace colod::core
