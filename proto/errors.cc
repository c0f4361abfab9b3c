// SPDX-License-Identifier: GPL-2.0-or-later
#include "proto/errors.h"

namespace colod::proto {

std::string_view reason_name(Reason reason) {
    switch (reason) {
    case Reason::None: return "none";
    case Reason::TruncatedHeader: return "truncated-header";
    case Reason::BadMagic: return "bad-magic";
    case Reason::BadVersion: return "bad-version";
    case Reason::UnknownType: return "unknown-type";
    case Reason::HeaderCheck: return "header-check";
    case Reason::LengthOverCap: return "length-over-cap";
    case Reason::TruncatedPayload: return "truncated-payload";
    case Reason::PayloadCrc: return "payload-crc";
    case Reason::BadFlags: return "bad-flags";
    case Reason::SequenceGap: return "sequence-gap";
    case Reason::Truncated: return "truncated";
    case Reason::BadField: return "bad-field";
    case Reason::UnexpectedMessage: return "unexpected-message";
    case Reason::PageBeyondMemory: return "page-beyond-memory";
    case Reason::RunsOutOfOrder: return "runs-out-of-order";
    case Reason::SectionOverrun: return "section-overrun";
    case Reason::DuplicateSection: return "duplicate-section";
    case Reason::MissingSection: return "missing-section";
    case Reason::UnknownSection: return "unknown-section";
    case Reason::UnknownSectionVersion: return "unknown-section-version";
    case Reason::EndMismatch: return "end-mismatch";
    case Reason::StateOrder: return "state-order";
    case Reason::BadSnapshot: return "bad-snapshot";
    case Reason::AuthFailed: return "auth-failed";
    case Reason::ReflectedChallenge: return "reflected-challenge";
    case Reason::Unauthenticated: return "unauthenticated";
    case Reason::FrameAuth: return "frame-auth";
    case Reason::KeyFile: return "key-file";
    case Reason::Refused: return "refused";
    }
    return "unknown-reason";
}

base::Errc errc_of(Reason reason) {
    switch (reason) {
    case Reason::AuthFailed:
    case Reason::ReflectedChallenge:
    case Reason::Unauthenticated:
    case Reason::FrameAuth: return base::Errc::Auth;
    case Reason::KeyFile: return base::Errc::Invalid;
    case Reason::Refused: return base::Errc::Mismatch;
    case Reason::None: return base::Errc::Failed;
    default: return base::Errc::Protocol;
    }
}

base::Error make_error(Reason reason, std::string details) {
    return base::Error(errc_of(reason), fmt::format("{}: {}", reason_name(reason), details),
                       static_cast<int>(reason));
}

Reason reason_of(const base::Error& error) {
    switch (error.code()) {
    case base::Errc::Protocol:
    case base::Errc::Auth:
    case base::Errc::Mismatch:
    case base::Errc::Invalid: {
        int n = error.sys_errno();
        if (n > 0 && n <= static_cast<int>(Reason::Refused))
            return static_cast<Reason>(n);
        return Reason::None;
    }
    default: return Reason::None;
    }
}

}  // namespace colod::proto
