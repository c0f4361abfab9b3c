// SPDX-License-Identifier: GPL-2.0-or-later
// The closed list of COLOD_EVENT values: every structured log record names one of these (or
// none, for plain messages). docs/events.md documents each; a test checks that the two agree.
#pragma once

#include <string_view>

namespace colod::base {

#define COLOD_EVENTS(X)                                                                                   \
    X(None, "")                                                                                           \
    X(Started, "started")                     /* a daemon is up: guest running or listening */           \
    X(Stopped, "stopped")                     /* a daemon is exiting, with the reason */                 \
    X(Error, "error")                         /* something failed that an operator must look at */       \
    X(GuestStopped, "guest-stopped")          /* the guest stopped: power-off, crash, request */         \
    X(GuestShutdown, "guest-shutdown")        /* the guest powered off; both sides stop, no failover */  \
    X(GuestReset, "guest-reset")              /* the guest rebooted in place (its reset register) */     \
    X(PeerConnected, "peer-connected")        /* a replication link is up and authenticated */           \
    X(PeerAuthenticated, "peer-authenticated")/* the handshake proved the peer holds the key */          \
    X(HandshakeFailed, "handshake-failed")    /* a peer was refused (wrong key, other VM, policy) */     \
    X(PeerLost, "peer-lost")                  /* EOF, timeout or protocol error on the link */           \
    X(Syncing, "syncing")                     /* the live initial copy started */                        \
    X(Synced, "synced")                       /* the initial copy is complete on the secondary */        \
    X(Protected, "protected")                 /* checkpoints are flowing: failover is possible */        \
    X(Unprotected, "unprotected")             /* running without a replica, with the reason */           \
    X(Reprotected, "reprotected")             /* protected again after a loss */                         \
    X(CheckpointSlow, "checkpoint-slow")      /* a checkpoint's pause or round trip was over target */   \
    X(CheckpointFailed, "checkpoint-failed")  /* a checkpoint could not be taken or applied */           \
    X(FenceRun, "fence-run")                  /* the fence command ran: exit status and output */        \
    X(Failover, "failover")                   /* second tag on every failover record (see docs) */       \
    X(FailoverBegin, "failover-begin")        /* the secondary decided to take over: why, from what */   \
    X(FailoverDone, "failover-done")          /* the guest runs on the former secondary: how long */     \
    X(FailoverAborted, "failover-aborted")    /* the fence failed, or no complete checkpoint: no takeover */ \
    X(Refused, "refused")                     /* a daemon refused to start (peer already active ...) */

enum class Event {
#define COLOD_EVENT_ENUM(name, text) name,
    COLOD_EVENTS(COLOD_EVENT_ENUM)
#undef COLOD_EVENT_ENUM
};

constexpr std::string_view event_name(Event event) {
    switch (event) {
#define COLOD_EVENT_CASE(name, text) \
    case Event::name:                \
        return text;
        COLOD_EVENTS(COLOD_EVENT_CASE)
#undef COLOD_EVENT_CASE
    }
    return "";
}

}  // namespace colod::base
