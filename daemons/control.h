// SPDX-License-Identifier: GPL-2.0-or-later
// The control socket: a Unix stream socket (mode 0600) that coloctl talks to. One request line
// per connection ("status --json", "checkpoint", "failover", "stop", "reload"); the answer is "OK" or
// "ERR <reason>" on the first line, then the body, then the daemon closes the connection.
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "base/fd.h"
#include "base/result.h"

namespace colod::daemons {

struct ControlReply {
    bool ok = true;
    std::string body;  // for !ok: the reason, one line
};

class ControlServer {
public:
    using Handler = std::function<ControlReply(const std::string& request)>;

    // Binds `path` (creating its directory), refusing if a live daemon already answers there.
    static base::Result<std::unique_ptr<ControlServer>> create(const std::filesystem::path& path, Handler handler);
    ~ControlServer();
    void stop();

private:
    ControlServer(std::filesystem::path path, base::Fd listener, Handler handler);
    void loop();
    void serve(base::Fd client);

    std::filesystem::path m_path;
    base::Fd m_listener;
    base::Fd m_wake;
    Handler m_handler;
    std::atomic<bool> m_stop{false};
    std::thread m_thread;
};

// coloctl's side: sends one request and returns the reply. Errors are connection failures.
base::Result<ControlReply> control_request(const std::filesystem::path& path, const std::string& request,
                                           int timeout_ms);

}  // namespace colod::daemons
