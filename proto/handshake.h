// SPDX-License-Identifier: GPL-2.0-or-later
// The handshake both sides run right after connect/accept, before any other frame:
//
//   each side:  send HELLO{identity, state, nonce}         (both directions at once)
//               receive the peer's HELLO
//               refuse a HELLO that carries our own nonce   (Reason::ReflectedChallenge)
//               send AUTH{proof over the peer's nonce, verdict on the peer's HELLO}
//               receive the peer's AUTH, check its proof     (Reason::AuthFailed)
//               the peer refused us, or we refused it        (Reason::Refused)
//
// The proof binds the key, the prover's side, both nonces and both HELLOs (auth.h). A refusal
// is only acted upon after the refusing side has proved the key, and both sides log its reason.
// Only after success is the link authenticated: until then it delivers nothing but handshake
// frames, so an unauthenticated peer can never reach state decoding.
#pragma once

#include <functional>
#include <string>

#include "base/result.h"
#include "proto/auth.h"
#include "proto/link.h"
#include "proto/messages.h"

namespace colod::proto {

// Extra checks on an identity-compatible peer (roles): return a refusal reason, or empty.
// Example: a primary returns "peer is secondary-active" to avoid a second running guest.
using PeerPolicy = std::function<std::string(const Hello& peer)>;

// Runs the handshake on a fresh link. `local` is this side's HELLO; its nonce is replaced by a
// fresh random one. Returns the peer's HELLO. Errors: Errc::Auth (AuthFailed,
// ReflectedChallenge, Unauthenticated), Errc::Mismatch (Refused: identity or policy, either
// side), Errc::Protocol, Eof, Timeout, Stopped. On failure the link must be closed.
base::Result<Hello> handshake(Link& link, const Key& key, Hello local, Deadline deadline, PeerPolicy policy = {});

}  // namespace colod::proto
