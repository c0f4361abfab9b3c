// SPDX-License-Identifier: GPL-2.0-or-later
// colod-secondary: holds a replica of the primary's guest and takes over when the primary dies.
#include <boost/program_options.hpp>

#include <iostream>

#include "config/config.h"
#include "daemons/common.h"
#include "daemons/node.h"

namespace po = boost::program_options;
using namespace colod;

int main(int argc, char** argv) {
    daemons::block_termination_signals();
    std::string config_file;
    bool check_config = false;
    po::options_description visible("colod-secondary: hold a replica of a protected guest\n\nOptions");
    visible.add_options()
        ("config", po::value(&config_file)->value_name("FILE"), "the VM pair's config file (required)")
        ("check-config", po::bool_switch(&check_config), "validate the config file and exit")
        ("version", "print the version and exit")
        ("help", "print this help and exit");
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(argc, argv).options(visible).run(), vm);
        po::notify(vm);
    } catch (const po::error& e) {
        std::cerr << "colod-secondary: " << e.what() << "\nTry 'colod-secondary --help'.\n";
        return 2;
    }
    if (vm.count("help")) {
        std::cout << visible << "\n";
        return 0;
    }
    if (vm.count("version")) {
        std::cout << daemons::version_line("colod-secondary") << "\n";
        return 0;
    }
    if (config_file.empty()) {
        std::cerr << "colod-secondary: --config FILE is required\nTry 'colod-secondary --help'.\n";
        return 2;
    }
    auto cfg = config::load(config_file);
    if (!cfg) {
        std::cerr << "colod-secondary: invalid config:\n" << cfg.error().message() << "\n";
        return 2;
    }
    if (check_config) {
        std::cout << config_file << ": OK\n";
        return 0;
    }
    daemons::setup_logging(cfg->vm.name, "secondary");
    return daemons::run_node(*cfg, daemons::Program::Secondary, daemons::Protection::Replicated);
}
