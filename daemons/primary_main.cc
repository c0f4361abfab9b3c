// SPDX-License-Identifier: GPL-2.0-or-later
// colod-primary: runs the guest and protects it by checkpointing to colod-secondary.
#include <boost/program_options.hpp>

#include <chrono>
#include <iostream>

#include "config/config.h"
#include "daemons/common.h"
#include "daemons/node.h"

namespace po = boost::program_options;
using namespace colod;

namespace {
struct Options {
    std::string config;
    bool standalone = false;
    bool check_config = false;
};
}  // namespace

int main(int argc, char** argv) {
    using daemons::k_exit_ok;
    using daemons::k_exit_usage;
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
    return daemons::run_node(*cfg, daemons::Program::Primary,
                             options.standalone ? daemons::Protection::Standalone : daemons::Protection::Replicated);
}
