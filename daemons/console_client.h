// SPDX-License-Identifier: GPL-2.0-or-later
// coloctl console: this terminal attached to a daemon's guest console, as `virsh console` does.
#pragma once

#include "base/fd.h"
#include "base/result.h"
#include "config/endpoint.h"

namespace colod::daemons {

// Connects to the console at `address` (a TCP console on a wildcard address is reached over
// loopback). The errors name the address and, for the usual causes (nothing listening there,
// no permission on the socket), what to do.
base::Result<base::Fd> connect_console(const config::ConsoleAddress& address);

// How an attached session ended.
enum class ConsoleEnd {
    Detached,       // the escape character on a terminal, or SIGINT, SIGTERM, SIGHUP
    InputEnded,     // stdin ended and the console's output went quiet
    ConsoleClosed,  // the daemon closed the console (it stopped, or had no room for this client)
};

// The escape character that detaches a terminal: Ctrl-], as in virsh and telnet.
constexpr char k_console_escape = 0x1d;

// Copies stdin to the console and the console's output to stdout until one of the ends above.
// When stdin is a terminal it is put in raw mode, so that every key (Ctrl-C too) goes to the
// guest; Enter is sent as a newline (the console takes whole lines), Ctrl-] detaches, and the
// terminal's settings are restored before this returns, on errors too. When stdin is not a
// terminal the bytes are copied as they are, and once stdin ends the console's output is still
// copied until it has been quiet for a moment, so that `printf 'PING\n' | coloctl ... console`
// prints the answer.
base::Result<ConsoleEnd> attach_console(base::Fd console);

}  // namespace colod::daemons
