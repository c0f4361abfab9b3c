// SPDX-License-Identifier: GPL-2.0-or-later
// The handshake both sides run right after connect/accept, before any other frame:
//
//   each side:  send HELLO{identity, state, link security, nonce, AEAD preference, key ids}
//                                                            (both directions at once)
//               receive the peer's HELLO
//               refuse a HELLO that carries our own nonce   (Reason::ReflectedChallenge)
//               pick the key: the first of the connecting side's key ids that the accepting
//               side holds too; none in common               (Reason::AuthFailed)
//               send AUTH{proof over the peer's nonce, verdict on the peer's HELLO}
//               receive the peer's AUTH, check its proof     (Reason::AuthFailed)
//               the peer refused us, or we refused it        (Reason::Refused)
//               derive the session's frame ciphers (link_crypto.h) unless link security is none
//
// The proof binds the key, the prover's side, both nonces and both HELLOs (auth.h), so a HELLO
// changed on the way (a link security or key list rewritten to force a weaker choice) fails
// it. A refusal is only acted upon after the refusing side has proved the key, and both sides
// log its reason. Only after success is the link authenticated: until then it delivers nothing
// but handshake frames, so an unauthenticated peer can never reach state decoding.
#pragma once

#include <functional>
#include <string>

#include "base/result.h"
#include "proto/auth.h"
#include "proto/key_ring.h"
#include "proto/link.h"
#include "proto/messages.h"

namespace colod::proto {

// Extra checks on an identity-compatible peer (roles): return a refusal reason, or empty.
// Example: a primary returns "peer is secondary-active" to avoid a second running guest.
using PeerPolicy = std::function<std::string(const Hello& peer)>;

// Runs the handshake on a fresh link. `local` is this side's HELLO: its nonce is replaced by a
// fresh random one, its key ids by those of `keys`, and an Auto AEAD by preferred_aead().
// Returns the peer's HELLO. Errors: Errc::Auth (AuthFailed, ReflectedChallenge,
// Unauthenticated), Errc::Mismatch (Refused: identity, link security or policy, either side),
// Errc::Protocol, Eof, Timeout, Stopped. On failure the link must be closed.
base::Result<Hello> handshake(Link& link, const KeySet& keys, Hello local, Deadline deadline, PeerPolicy policy = {});
// The same with the keys a ring holds when it starts (a reload meanwhile changes nothing here).
base::Result<Hello> handshake(Link& link, const KeyRing& keys, Hello local, Deadline deadline, PeerPolicy policy = {});
// The same with a single key (tests, tools).
base::Result<Hello> handshake(Link& link, const Key& key, Hello local, Deadline deadline, PeerPolicy policy = {});

}  // namespace colod::proto
