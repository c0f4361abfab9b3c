// SPDX-License-Identifier: GPL-2.0-or-later
// colod-primary: runs the guest and protects it by checkpointing to colod-secondary.
#include <boost/program_options.hpp>

#include <chrono>
#include <iostream>

#include "base/log.h"
#include "config/config.h"
#include "core/guest_runtime.h"
#include "core/uart.h"
#include "daemons/common.h"
#include "daemons/control.h"
#include "daemons/status_format.h"

namespace po = boost::program_options;
using namespace colod;

namespace {

constexpr int k_exit_ok = 0;
constexpr int k_exit_failure = 1;
constexpr int k_exit_usage = 2;

struct Options {
    std::string config;
    bool standalone = false;
    bool check_config = false;
};

int run_standalone(const config::PairConfig& cfg) {
    auto self = cfg.role_config(config::Role::Primary).self;
    auto image = daemons::load_image(cfg.vm.image);
    if (!image) {
        base::logf(base::Level::Error, "error", "{}", image.error().message());
        return k_exit_failure;
    }

    core::RuntimeOptions options;
    options.machine.memory_bytes = cfg.vm.memory_bytes;
    options.machine.vcpus = cfg.vm.vcpus;
    options.machine.backend = daemons::choose_backend(cfg.vm.accelerator);
    options.console.host = self.console.host;
    options.console.port = self.console.port;
    options.console.max_clients = cfg.vm.console_clients;

    auto runtime = core::GuestRuntime::create(options);
    if (!runtime) {
        base::logf(base::Level::Error, "error", "cannot create the VM: {}", runtime.error().message());
        return k_exit_failure;
    }
    core::GuestRuntime& guest = **runtime;
    if (auto booted = guest.boot(image->bytes, cfg.vm.cmdline); !booted) {
        base::logf(base::Level::Error, "error", "cannot boot {}: {}", image->name, booted.error().message());
        return k_exit_failure;
    }
    if (auto opened = guest.open_console(); !opened) {
        base::logf(base::Level::Error, "error", "{}", opened.error().message());
        return k_exit_failure;
    }

    auto started_at = std::chrono::steady_clock::now();
    auto status = [&] {
        core::Status s;
        s.vm = cfg.vm.name;
        s.role = "primary";
        s.mode = std::string(config::mode_name(cfg.replication.mode));
        s.state = guest.machine().stopped() ? "stopped" : "unprotected";
        s.backend = std::string(guest.machine().backend_name());
        s.peer = cfg.secondary.replication.to_string();
        s.peer_state = "none";
        s.guest = guest.machine().stopped()
                      ? std::string(core::stop_reason_name(guest.machine().stop_info().reason))
                      : "running";
        s.console_clients = guest.console() ? guest.console()->client_count() : 0;
        s.uptime_ms = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                std::chrono::steady_clock::now() - started_at)
                                                .count());
        return s;
    };
    auto control = daemons::ControlServer::create(self.control, [&](const std::string& request) {
        if (request == "status")
            return daemons::ControlReply{true, daemons::status_text(status())};
        if (request == "status --json")
            return daemons::ControlReply{true, daemons::status_json(status())};
        if (request == "stop") {
            guest.stop("stopped by coloctl");
            return daemons::ControlReply{true, "stopping\n"};
        }
        if (request == "checkpoint" || request == "failover")
            return daemons::ControlReply{false, "this primary runs standalone: there is no secondary"};
        return daemons::ControlReply{false, fmt::format("unknown request '{}'", request)};
    });
    if (!control) {
        base::logf(base::Level::Error, "error", "{}", control.error().message());
        return k_exit_failure;
    }

    if (auto started = guest.start(); !started) {
        base::logf(base::Level::Error, "error", "cannot start the vCPUs: {}", started.error().message());
        return k_exit_failure;
    }
    base::log(base::Level::Notice, "started",
              fmt::format("guest {} running standalone (unprotected) on the {} backend; console on {}", image->name,
                          guest.machine().backend_name(), self.console.to_string()),
              {{"CONSOLE", self.console.to_string()}});
    daemons::notify(fmt::format("READY=1\nSTATUS=unprotected (standalone), console {}", self.console.to_string()));

    int signal = 0;
    while (!guest.machine().stopped()) {
        signal = daemons::wait_for_signal(100);
        if (signal)
            break;
    }
    daemons::notify("STOPPING=1");
    if (signal)
        guest.stop(fmt::format("signal {}", strsignal(signal)));
    core::StopInfo info = guest.wait();
    (*control)->stop();
    bool clean = info.reason == core::StopReason::Requested ||
                 (info.reason == core::StopReason::PowerOff && info.exit_code == 0);
    base::log(clean ? base::Level::Notice : base::Level::Error, "stopped",
              fmt::format("guest stopped: {} ({})", core::stop_reason_name(info.reason), info.detail),
              {{"REASON", std::string(core::stop_reason_name(info.reason))}});
    return clean ? k_exit_ok : k_exit_failure;
}

}  // namespace

int main(int argc, char** argv) {
    daemons::block_termination_signals();
    Options options;
    po::options_description visible("colod-primary: run a guest and protect it with a secondary\n\nOptions");
    visible.add_options()
        ("config", po::value(&options.config)->value_name("FILE"), "the VM pair's config file (required)")
        ("standalone", po::bool_switch(&options.standalone), "run the guest unprotected, without a secondary")
        ("check-config", po::bool_switch(&options.check_config), "validate the config file and exit")
        ("version", "print the version and exit")
        ("help", "print this help and exit");
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(argc, argv).options(visible).run(), vm);
        po::notify(vm);
    } catch (const po::error& e) {
        std::cerr << "colod-primary: " << e.what() << "\n" << "Try 'colod-primary --help'.\n";
        return k_exit_usage;
    }
    if (vm.count("help")) {
        std::cout << visible << "\n";
        return k_exit_ok;
    }
    if (vm.count("version")) {
        std::cout << daemons::version_line("colod-primary") << "\n";
        return k_exit_ok;
    }
    if (options.config.empty()) {
        std::cerr << "colod-primary: --config FILE is required\nTry 'colod-primary --help'.\n";
        return k_exit_usage;
    }
    auto cfg = config::load(options.config);
    if (!cfg) {
        std::cerr << "colod-primary: invalid config:\n" << cfg.error().message() << "\n";
        return k_exit_usage;
    }
    if (options.check_config) {
        std::cout << options.config << ": OK\n";
        return k_exit_ok;
    }
    daemons::setup_logging(cfg->vm.name, "primary");
    if (options.standalone)
        return run_standalone(*cfg);
    std::cerr << "colod-primary: protected mode is not available in this build yet; use --standalone\n";
    return k_exit_usage;
}
