// SPDX-License-Identifier: GPL-2.0-or-later
#include "proto/handshake.h"

#include <algorithm>

#include "base/log.h"
#include "proto/errors.h"
#include "proto/link_crypto.h"

namespace colod::proto {

namespace {

LinkSide other(LinkSide side) { return side == LinkSide::Connecting ? LinkSide::Accepting : LinkSide::Connecting; }

// Tells the peer why we give up before the caller closes the link. Best effort: the peer may
// already be gone, and the error we return matters more than this one.
void send_error(Link& link, Reason reason, std::string text) {
    ErrorMessage message{static_cast<uint16_t>(reason), std::move(text)};
    (void)link.send(message, deadline_after(std::chrono::milliseconds(200)));
}

void log_failure(const Link& link, const base::Error& err) {
    // A peer that keeps trying (a second active side, a wrong key) must not flood the log: one
    // record per peer host and reason every 10 s.
    // The accepting side sees a new port on every attempt: it keys on the peer's host only.
    std::string peer = link.peer_address();
    bool accepting = link.side() == LinkSide::Accepting;
    std::string who = accepting ? "accepting " + peer.substr(0, peer.rfind(':')) : "connecting " + peer;
    std::string reason(reason_name(reason_of(err)));
    base::log_limited("handshake-failed " + who + " " + reason, std::chrono::seconds(10), base::Level::Warning,
                      base::Event::HandshakeFailed, fmt::format("handshake with {} failed: {}", peer, err.message()),
                      {{"PEER", peer}, {"REASON", reason}});
}

// The peer gave up and said why: an ERROR carrying an auth reason stays an auth failure.
base::Error peer_gave_up(const Link& link, const Frame& frame) {
    auto message = frame.message();
    if (!message)
        return std::move(message).error();
    const auto& e = std::get<ErrorMessage>(message.value());
    Reason reason = static_cast<Reason>(e.code);
    if (reason != Reason::AuthFailed && reason != Reason::ReflectedChallenge && reason != Reason::Unauthenticated)
        reason = Reason::Refused;
    return error(reason, "peer {} refused the connection: {}", link.peer_address(), e.reason);
}

base::Result<Frame> expect(Link& link, MessageType type, Deadline deadline) {
    Frame frame = TRY(link.receive(deadline));
    if (frame.header.type == MessageType::Error)
        return peer_gave_up(link, frame);
    if (frame.header.type != type)
        return error(Reason::UnexpectedMessage, "{} from {} during the handshake where {} belongs",
                     message_type_name(frame.header.type), link.peer_address(), message_type_name(type));
    return frame;
}

bool holds(const std::vector<KeyId>& ids, const KeyId& id) { return std::find(ids.begin(), ids.end(), id) != ids.end(); }

std::string ids_text(const std::vector<KeyId>& ids) {
    std::string out;
    for (const auto& id : ids)
        out += (out.empty() ? "" : ", ") + key_id_hex(id);
    return out.empty() ? "none" : out;
}

base::Result<Hello> run(Link& link, const KeySet& keys, Hello local, Deadline deadline, const PeerPolicy& policy,
                        std::string& session) {
    local.nonce = make_nonce();
    if (local.aead == Aead::Auto)
        local.aead = preferred_aead();
    local.key_ids = keys.ids();
    auto local_payload = local.encode();
    TRY(link.send(local, deadline));

    Frame hello_frame = TRY(expect(link, MessageType::Hello, deadline));
    auto peer_or = Hello::decode(hello_frame.payload());
    if (!peer_or) {
        send_error(link, reason_of(peer_or.error()), peer_or.error().message());
        return std::move(peer_or).error();
    }
    Hello peer = std::move(peer_or).value();
    if (peer.nonce == local.nonce) {
        send_error(link, Reason::ReflectedChallenge, "reflected challenge");
        return error(Reason::ReflectedChallenge, "peer {} sent our own challenge back", link.peer_address());
    }

    std::string refusal = incompatibility(local, peer);
    if (refusal.empty() && policy)
        refusal = policy(peer);

    const LinkSide me = link.side();
    // The key both sides use: the first of the connecting side's list that the accepting side
    // holds too (both compute the same from the two HELLOs). A protocol 1 peer lists no keys:
    // it is refused above, and hears why once it checks our proof under the current key.
    const KeySet::Entry* chosen = nullptr;
    if (peer.protocol_version < 2) {
        chosen = &keys.entries().front();
    } else {
        const auto& connecting_ids = me == LinkSide::Connecting ? local.key_ids : peer.key_ids;
        const auto& accepting_ids = me == LinkSide::Connecting ? peer.key_ids : local.key_ids;
        for (const auto& id : connecting_ids) {
            if (holds(accepting_ids, id)) {
                chosen = keys.find(id);
                break;
            }
        }
    }
    if (!chosen) {
        send_error(link, Reason::AuthFailed, "no key in common");
        return error(Reason::AuthFailed, "peer {} holds none of this side's keys (this side: {}; the peer's key ids: {})",
                     link.peer_address(), keys.describe(), ids_text(peer.key_ids));
    }
    const Key& key = chosen->key;

    auto peer_payload = hello_frame.payload();
    auto transcript = me == LinkSide::Connecting ? transcript_hash(local_payload, peer_payload)
                                                 : transcript_hash(peer_payload, local_payload);
    Auth auth;
    auth.proof = make_proof(key, me, peer.nonce, local.nonce, transcript);
    auth.verdict = refusal.empty() ? Verdict::Accept : Verdict::Refuse;
    auth.reason = refusal;
    TRY(link.send(auth, deadline));

    Frame auth_frame = TRY(expect(link, MessageType::Auth, deadline));
    auto peer_auth_or = Auth::decode(auth_frame.payload());
    if (!peer_auth_or) {
        send_error(link, reason_of(peer_auth_or.error()), peer_auth_or.error().message());
        return std::move(peer_auth_or).error();
    }
    const Auth& peer_auth = peer_auth_or.value();
    auto expected = make_proof(key, other(me), local.nonce, peer.nonce, transcript);
    if (!proofs_equal(expected, peer_auth.proof)) {
        send_error(link, Reason::AuthFailed, "authentication failed");
        // The proofs cover both HELLOs as sent: a peer with another key and a HELLO changed on
        // the path (a downgrade) fail alike. What the peer's HELLO asked for, when this side
        // would have refused it, tells the operator which one it more likely was.
        return error(Reason::AuthFailed, "peer {} does not hold the pair's key, or a HELLO was changed on the path{}",
                     link.peer_address(),
                     refusal.empty() ? std::string()
                                     : fmt::format(" (its HELLO as it arrived, not authenticated: {})", refusal));
    }
    // From here on the peer has proved the key: its refusal is believed and logged. When both
    // refused, this side's own reason reads better in this side's log ("local" is this side).
    if (!refusal.empty())
        return error(Reason::Refused, "we refused peer {}: {}", link.peer_address(), refusal);
    if (peer_auth.verdict == Verdict::Refuse)
        return error(Reason::Refused, "peer {} refused us: {}", link.peer_address(), peer_auth.reason);

    // Both sides asked for the same link security (else refused above).
    std::optional<Link::SessionCiphers> ciphers;
    session = fmt::format("link-security {}", link_security_name(local.link_security));
    if (local.link_security != LinkSecurity::None) {
        SessionParams params;
        params.security = local.link_security;
        params.aead = agreed_aead(local.aead, peer.aead);
        params.connecting_nonce = me == LinkSide::Connecting ? local.nonce : peer.nonce;
        params.accepting_nonce = me == LinkSide::Connecting ? peer.nonce : local.nonce;
        params.transcript = transcript;
        auto send = TRY(FrameCipher::derive(key, me, params, FrameCipher::Direction::Seal));
        auto receive = TRY(FrameCipher::derive(key, other(me), params, FrameCipher::Direction::Open));
        ciphers.emplace(Link::SessionCiphers{std::move(send), std::move(receive)});
        session += fmt::format(" ({})", aead_name(params.aead));
    }
    session += fmt::format(", key id {} ({})", key_id_hex(key.id()), chosen->source);
    link.set_authenticated(std::move(ciphers));
    return peer;
}

}  // namespace

base::Result<Hello> handshake(Link& link, const KeySet& keys, Hello local, Deadline deadline, PeerPolicy policy) {
    std::string session;
    auto result = run(link, keys, std::move(local), deadline, policy, session);
    if (!result) {
        log_failure(link, result.error());
        return result;
    }
    base::log(base::Level::Info, base::Event::PeerAuthenticated,
              fmt::format("peer {} authenticated: VM {} in state {}; {}", link.peer_address(), result->vm_name,
                          peer_state_name(result->state), session),
              {{"PEER", link.peer_address()}});
    return result;
}

base::Result<Hello> handshake(Link& link, const KeyRing& keys, Hello local, Deadline deadline, PeerPolicy policy) {
    auto now = keys.keys();
    return handshake(link, *now, std::move(local), deadline, std::move(policy));
}

base::Result<Hello> handshake(Link& link, const Key& key, Hello local, Deadline deadline, PeerPolicy policy) {
    return handshake(link, KeySet(key), std::move(local), deadline, std::move(policy));
}

}  // namespace colod::proto
