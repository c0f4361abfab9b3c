// SPDX-License-Identifier: GPL-2.0-or-later
// Precise failure classes of the wire protocol. Every error proto/ returns for bytes that came
// from a peer or a file carries one of these Reasons, so tests and the replication state machine
// can tell "page index beyond memory" from "payload CRC mismatch" without parsing messages.
//
// The Reason travels inside base::Error: its code() is the broad class (Protocol, Auth,
// Mismatch, ...) and its sys_errno() slot holds the Reason's number (errno is meaningless for
// these classes). Use reason_of(error) to read it back; it yields Reason::None for errors that
// did not come from proto/.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "base/result.h"

namespace colod::proto {

enum class Reason : int {
    None = 0,
    // Frames (base::Errc::Protocol).
    TruncatedHeader = 1,   // fewer bytes than a frame header
    BadMagic,              // the header does not start with the frame magic
    BadVersion,            // a wire format version this build does not speak
    UnknownType,           // a message type this build does not know
    HeaderCheck,           // the header's CRC32C does not match its bytes
    LengthOverCap,         // payload length above the cap of its message type
    TruncatedPayload,      // the frame ends before its payload and trailer
    PayloadCrc,            // the payload's CRC32C trailer does not match
    BadFlags,              // header flags this build does not know
    SequenceGap,           // a frame or checkpoint sequence number is not the expected next one
    // Message payloads (base::Errc::Protocol).
    Truncated,             // a field runs past the end of its payload or section
    BadField,              // a field holds a value outside its range
    UnexpectedMessage,     // a valid message that is not allowed at this point of the exchange
    // State sections (base::Errc::Protocol).
    PageBeyondMemory,      // a page index at or past the guest's page count
    RunsOutOfOrder,        // page runs unsorted or overlapping within a checkpoint
    SectionOverrun,        // a section claims more bytes than its frame holds
    DuplicateSection,      // the same section (id, instance) twice in a checkpoint
    MissingSection,        // a required section absent when END arrives
    UnknownSection,        // a section id this build does not know
    UnknownSectionVersion, // a known section id with a version this build cannot read
    EndMismatch,           // END (or VMSTATE_SIZE) counts disagree with what arrived
    StateOrder,            // VMSTATE_SEND frames out of order, after END, or without VMSTATE_SIZE
    BadSnapshot,           // a snapshot file header that is not ours
    // Authentication (base::Errc::Auth).
    AuthFailed,            // the peer's proof does not match the pre-shared key
    ReflectedChallenge,    // the peer sent our own challenge back
    Unauthenticated,       // a frame other than the handshake before authentication completed
    FrameAuth,             // a per-frame MAC missing or wrong
    KeyFile,               // the key file is unreadable, too short or too open (Errc::Invalid)
    // Handshake outcome (base::Errc::Mismatch).
    Refused,               // one side refused the other (shape, image, version, role)
};

std::string_view reason_name(Reason reason);

// The broad base::Errc a Reason belongs to.
base::Errc errc_of(Reason reason);

// Builds the error for a Reason; the message reads "<reason-name>: <details>".
base::Error make_error(Reason reason, std::string details);

template <typename... Args>
base::Error error(Reason reason, fmt::format_string<Args...> format, Args&&... args) {
    return make_error(reason, fmt::format(format, std::forward<Args>(args)...));
}

// The Reason carried by an error made by proto/, else Reason::None.
Reason reason_of(const base::Error& error);

}  // namespace colod::proto
