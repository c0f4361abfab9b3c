// SPDX-License-Identifier: GPL-2.0-or-later
// Guest output that must not reach the world before the standby holds the state that produced
// it. Each kind of output is a channel of discrete records: console writes today; packets and
// disk writes plug into the same interface. The active engine drives every channel through the
// checkpoint's lifecycle; the channel decides what goes out when.
//
//   checkpoint mode: OutputBuffer holds each epoch's records until the checkpoint that sealed
//                    it is loaded on the standby;
//   COLO mode:       OutputComparator releases the primary's records as soon as the standby's
//                    guest produced the same ones in the same epoch, and asks for a checkpoint
//                    when they differ or the standby falls behind.
//
// A channel's framing says what a record boundary means. Stream: nothing (console bytes; the
// two guests may write them in different pieces, so they are compared as one stream and
// adjacent records may merge). Datagram: everything (a packet is compared whole, and released
// as the record it was).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>

#include "core/pause_stats.h"

namespace colod::core {

enum class Framing { Stream, Datagram };

class OutputChannel {
public:
    // Sends one record to the world (a console broadcast, a packet onto the tap, ...).
    using ReleaseFn = std::function<void(std::span<const std::byte>)>;

    virtual ~OutputChannel() = default;
    virtual std::string_view name() const = 0;

    // A record of the guest's output (device threads).
    virtual void put(std::span<const std::byte> record) = 0;

    // The checkpoint's lifecycle, from the engine:
    // protected from now on; output belongs to the run after checkpoint `epoch`.
    virtual void protect(uint64_t epoch) = 0;
    // The machine is paused at checkpoint `seq`: the open epoch's output belongs to it.
    virtual void captured(uint64_t seq) = 0;
    // The standby loaded checkpoint `seq`: output of every epoch <= seq may go out.
    virtual void committed(uint64_t seq) = 0;
    // No standby: everything held goes out, and output passes straight through from now on.
    virtual void release_all() = 0;
    // The daemon goes away and its standby carries on from its last checkpoint, producing this
    // output again: drop it.
    virtual void discard_all() = 0;

    // COLO: the standby guest's record for `epoch`, and the periodic lag check.
    virtual void secondary(uint64_t /*epoch*/, std::span<const std::byte> /*record*/) {}
    virtual void check_lag() {}

    // Bytes held now (any thread, without waiting: devices ask it for back-pressure).
    virtual uint64_t held_bytes() const = 0;
    // COLO: from a primary record to its match, in microseconds.
    virtual PauseStats::Summary compare_latency() const { return {}; }
};

}  // namespace colod::core
