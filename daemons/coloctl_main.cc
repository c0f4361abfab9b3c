// SPDX-License-Identifier: GPL-2.0-or-later
// coloctl: asks a running colod-primary or colod-secondary for its status or to act, or
// attaches to the guest's console.
#include <unistd.h>

#include <boost/program_options.hpp>

#include <iostream>

#include "config/config.h"
#include "daemons/common.h"
#include "daemons/console_client.h"
#include "daemons/control.h"
#include "daemons/watch.h"

namespace po = boost::program_options;
using namespace colod;

namespace {

// coloctl console: the exit status says how the session ended (0 detached or input done, 1 the
// daemon closed the console, 3 the console cannot be reached).
int attach(const config::PairConfig& cfg, config::Role role) {
    const config::ConsoleAddress& address = cfg.host(role).console;
    auto console = daemons::connect_console(address);
    if (!console) {
        std::cerr << "coloctl: cannot reach the " << config::role_name(role) << " console: "
                  << console.error().message() << "\n";
        return 3;
    }
    const bool terminal = ::isatty(STDIN_FILENO) == 1;
    if (terminal)
        std::cerr << "Connected to the " << config::role_name(role) << " console of " << cfg.vm.name << " ("
                  << address.to_string() << ").\nEscape character is ^] (Ctrl + ])\n";
    auto end = daemons::attach_console(std::move(console).value());
    if (terminal)
        std::cerr << "\n";
    if (!end) {
        std::cerr << "coloctl: console: " << end.error().message() << "\n";
        return 1;
    }
    if (*end == daemons::ConsoleEnd::ConsoleClosed) {
        std::cerr << "coloctl: the daemon closed the console (it stopped, or has no room for another client)\n";
        return 1;
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::string config_file, role_text, command;
    std::vector<std::string> args;
    std::string interval_text;
    bool json = false;
    bool watch = false;
    po::options_description visible(
        "coloctl: control a colod daemon\n\n"
        "Usage: coloctl --config FILE --role primary|secondary COMMAND\n"
        "Commands: status [--json | --watch [--interval SECONDS]] | checkpoint | failover | stop\n"
        "          | reload (the key files)\n"
        "          | console (attach to the guest's console; Ctrl-] detaches)\n"
        "Diagnostics: digest (active side: checkpoint and hold the guest paused; standby: its checkpoint)\n"
        "             | resume (active side: end the hold)\n\n"
        "status --watch runs until Ctrl-C or SIGTERM (exit status 0); it exits 3 when the daemon\n"
        "goes away (or cannot be reached), 1 when it refuses.\n\nOptions");
    visible.add_options()
        ("config", po::value(&config_file)->value_name("FILE"), "the VM pair's config file")
        ("role", po::value(&role_text)->value_name("ROLE"), "which daemon to ask: primary or secondary")
        ("json", po::bool_switch(&json), "status as one JSON object")
        ("watch", po::bool_switch(&watch),
         "status as a live view refreshed in place (state, peer, pauses, dirty pages, bytes/s, held output, "
         "checkpoints/s); one block of lines per refresh when stdout is not a terminal")
        ("interval", po::value(&interval_text)->value_name("SECONDS"),
         "with status --watch: the time between refreshes, in seconds (0.5) or with a unit (500ms); default 1")
        ("version", "print the version and exit")
        ("help", "print this help and exit");
    po::options_description hidden;
    hidden.add_options()("command", po::value(&args)->multitoken());
    po::options_description all;
    all.add(visible).add(hidden);
    po::positional_options_description positional;
    positional.add("command", -1);
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(argc, argv).options(all).positional(positional).run(), vm);
        po::notify(vm);
    } catch (const po::error& e) {
        std::cerr << "coloctl: " << e.what() << "\nTry 'coloctl --help'.\n";
        return 2;
    }
    if (vm.count("help")) {
        std::cout << visible << "\n";
        return 0;
    }
    if (vm.count("version")) {
        std::cout << daemons::version_line("coloctl") << "\n";
        return 0;
    }
    // "status --json" may also come after the command word.
    std::vector<std::string> words;
    for (const auto& arg : args) {
        if (arg == "--json")
            json = true;
        else
            words.push_back(arg);
    }
    if (config_file.empty() || role_text.empty() || words.size() != 1) {
        std::cerr << "coloctl: usage: coloctl --config FILE --role primary|secondary status [--json | --watch "
                     "[--interval SECONDS]] | checkpoint | failover | stop | reload | console\n";
        return 2;
    }
    command = words.front();
    if (command != "status" && command != "checkpoint" && command != "failover" && command != "stop" &&
        command != "reload" && command != "console" && command != "digest" && command != "resume") {
        std::cerr << "coloctl: unknown command '" << command
                  << "' (status, checkpoint, failover, stop, reload, console; diagnostics: digest, resume)\n";
        return 2;
    }
    if (json && command != "status") {
        std::cerr << "coloctl: --json goes with status only\n";
        return 2;
    }
    if (watch && command != "status") {
        std::cerr << "coloctl: --watch goes with status only\n";
        return 2;
    }
    if (watch && json) {
        std::cerr << "coloctl: status takes --json or --watch, not both\n";
        return 2;
    }
    if (vm.count("interval") && !watch) {
        std::cerr << "coloctl: --interval goes with status --watch only\n";
        return 2;
    }
    std::chrono::microseconds interval = daemons::k_watch_default_interval;
    if (vm.count("interval")) {
        auto parsed = daemons::parse_watch_interval(interval_text);
        if (!parsed) {
            std::cerr << "coloctl: --interval '" << interval_text << "': " << parsed.error().message() << "\n";
            return 2;
        }
        interval = *parsed;
    }
    auto role = config::parse_role(role_text);
    if (!role) {
        std::cerr << "coloctl: " << role.error().message() << "\n";
        return 2;
    }
    auto cfg = config::load(config_file);
    if (!cfg) {
        std::cerr << "coloctl: invalid config:\n" << cfg.error().message() << "\n";
        return 2;
    }
    if (command == "console")
        return attach(*cfg, *role);
    auto path = cfg->host(*role).control;
    if (watch)
        return static_cast<int>(daemons::watch_status(path, role_text, interval));
    std::string request = json ? "status --json" : command;
    // A failover waits for a final checkpoint and the peer's takeover; give it time.
    int timeout_ms = command == "failover" ? 60'000 : 10'000;
    auto reply = daemons::control_request(path, request, timeout_ms);
    if (!reply) {
        std::cerr << "coloctl: cannot reach the " << role_text << " daemon at " << path.string() << ": "
                  << reply.error().message() << "\n";
        return 3;
    }
    if (!reply->ok) {
        std::cerr << "coloctl: " << reply->body << "\n";
        return 1;
    }
    std::cout << reply->body;
    return 0;
}
