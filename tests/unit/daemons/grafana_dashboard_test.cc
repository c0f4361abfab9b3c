// SPDX-License-Identifier: GPL-2.0-or-later
// packaging/grafana/colod-dashboard.json against the metrics the daemons really serve: every
// colod_* name in its queries is a sample name of daemons/metrics_format.h's exposition, and
// every label its queries group by or print is a label of those samples (or one Prometheus
// adds). A metric or label renamed in the formatter fails here, before a dashboard shows
// "No data".
#include <catch2/catch.hpp>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <vector>

#include "daemons/metrics_format.h"
#include "daemons/watch_json.h"

using namespace colod;
using daemons::JsonValue;

namespace {

JsonValue dashboard() {
    std::ifstream in(COLOD_GRAFANA_DASHBOARD, std::ios::binary);
    INFO("reading " << COLOD_GRAFANA_DASHBOARD);
    REQUIRE(in);
    std::ostringstream text;
    text << in.rdbuf();
    auto doc = daemons::parse_json(text.str());
    INFO((doc ? std::string() : doc.error().message()));
    REQUIRE(doc);
    REQUIRE(doc->is(JsonValue::Kind::Object));
    return std::move(doc).value();
}

// Every string value of a member named `key`, anywhere in the document (panels nest in rows).
void strings_named(const JsonValue& value, std::string_view key, std::vector<std::string>& out) {
    if (value.is(JsonValue::Kind::Object)) {
        for (const auto& [name, member] : value.members()) {
            if (name == key && member.is(JsonValue::Kind::String))
                out.push_back(member.text());
            strings_named(member, key, out);
        }
    } else if (value.is(JsonValue::Kind::Array)) {
        for (const auto& item : value.items())
            strings_named(item, key, out);
    }
}

// Every panel, rows' nested panels included.
void panels_of(const JsonValue& value, std::vector<const JsonValue*>& out) {
    const JsonValue* panels = value.find("panels");
    if (!panels)
        return;
    for (const auto& panel : panels->items()) {
        out.push_back(&panel);
        panels_of(panel, out);
    }
}

// The exposition's sample names and label names, over statuses that between them take every
// branch of the formatter (a COLO primary, a standby, a standalone primary).
struct Exposition {
    std::set<std::string> metrics;
    std::set<std::string> labels;
};

Exposition real_exposition() {
    core::Status colo;
    colo.vm = "web";
    colo.role = "primary";
    colo.mode = "colo";
    colo.state = "protected";
    colo.backend = "kvm";
    colo.guest = "running";
    colo.peer_state = "connected";
    colo.checkpoints = 10;
    colo.checkpoints_forced = 2;
    colo.checkpoints_mismatch = 3;
    colo.pause_histogram.counts[1] = 4;
    colo.pause_histogram.count = 4;
    colo.failovers = 1;
    colo.last_failover_us = 1500;
    core::Status standby = colo;
    standby.role = "secondary";
    standby.mode = "checkpoint";
    standby.state = "standby";
    standby.checkpoints_applied = standby.checkpoints;
    core::Status standalone;
    standalone.vm = "db";
    standalone.role = "primary";
    standalone.state = "unprotected";
    standalone.peer_state = "none";

    Exposition out;
    static const std::regex sample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? \S+$)");
    static const std::regex label(R"(([a-zA-Z_][a-zA-Z0-9_]*)=")");
    for (const auto& status : {colo, standby, standalone}) {
        std::istringstream in(daemons::metrics_text(status));
        for (std::string line; std::getline(in, line);) {
            if (line.empty() || line.front() == '#')
                continue;
            std::smatch match;
            INFO(line);
            REQUIRE(std::regex_match(line, match, sample));
            out.metrics.insert(match[1]);
            std::string labels = match[3];
            for (std::sregex_iterator it(labels.begin(), labels.end(), label), end; it != end; ++it)
                out.labels.insert((*it)[1]);
        }
    }
    // Labels every scrape gets from Prometheus itself.
    out.labels.insert("instance");
    out.labels.insert("job");
    return out;
}

std::set<std::string> colod_names_in(const std::string& expr) {
    static const std::regex name(R"(\bcolod_[a-zA-Z0-9_:]*)");
    std::set<std::string> names;
    for (std::sregex_iterator it(expr.begin(), expr.end(), name), end; it != end; ++it)
        names.insert(it->str());
    return names;
}

// The problems of one query: colod_* names the exposition lacks, grouping labels it lacks.
std::vector<std::string> problems_of(const std::string& expr, const Exposition& exposition) {
    std::vector<std::string> problems;
    for (const auto& name : colod_names_in(expr))
        if (!exposition.metrics.count(name))
            problems.push_back("no metric " + name);
    static const std::regex grouping(R"(\b(?:by|without|on|ignoring)\s*\(([^)]*)\))");
    static const std::regex label(R"([a-zA-Z_][a-zA-Z0-9_]*)");
    for (std::sregex_iterator it(expr.begin(), expr.end(), grouping), end; it != end; ++it) {
        std::string labels = (*it)[1];
        for (std::sregex_iterator l(labels.begin(), labels.end(), label); l != end; ++l)
            if (!exposition.labels.count(l->str()))
                problems.push_back("no label " + l->str());
    }
    return problems;
}

}  // namespace

TEST_CASE("the Grafana dashboard queries only metrics and labels the daemons serve", "[grafana]") {
    auto doc = dashboard();
    auto exposition = real_exposition();
    REQUIRE(exposition.metrics.count("colod_checkpoint_pause_seconds_bucket"));

    std::vector<std::string> exprs;
    strings_named(doc, "expr", exprs);
    REQUIRE(exprs.size() >= 10);
    std::set<std::string> mentioned;
    for (const auto& expr : exprs) {
        INFO(expr);
        CHECK(problems_of(expr, exposition).empty());
        auto names = colod_names_in(expr);
        CHECK(!names.empty());
        mentioned.insert(names.begin(), names.end());
        // Each selector follows the vm variable, so that the dashboard shows the chosen pairs.
        for (const auto& name : names) {
            std::string selector = name + "{vm=~\"$vm\"}";
            CHECK(expr.find(selector) != std::string::npos);
        }
    }
    // The figures the dashboard is for: role and state, the link, checkpoints by cause, pause
    // quantiles, dirty pages, replication bytes, held output, failovers, the live copy.
    for (const char* metric :
         {"colod_role", "colod_state", "colod_peer_connected", "colod_checkpoints_total",
          "colod_checkpoint_pause_seconds_bucket", "colod_dirty_pages_total", "colod_replication_sent_bytes_total",
          "colod_held_output_bytes", "colod_failovers_total", "colod_last_failover_duration_seconds",
          "colod_sync_progress_ratio"}) {
        INFO(metric);
        CHECK(mentioned.count(metric));
    }
    bool quantiles = false;
    for (const auto& expr : exprs)
        quantiles |= expr.find("histogram_quantile(") != std::string::npos &&
                     expr.find("colod_checkpoint_pause_seconds_bucket") != std::string::npos;
    CHECK(quantiles);

    // Legends print labels the samples have.
    std::vector<std::string> legends;
    strings_named(doc, "legendFormat", legends);
    static const std::regex placeholder(R"(\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\})");
    for (const auto& legend : legends)
        for (std::sregex_iterator it(legend.begin(), legend.end(), placeholder), end; it != end; ++it) {
            INFO(legend);
            CHECK(exposition.labels.count((*it)[1]));
        }
}

TEST_CASE("the dashboard check fails on a renamed metric or label", "[grafana]") {
    auto exposition = real_exposition();
    CHECK(problems_of(R"(rate(colod_checkpoints_total{vm=~"$vm"}[5m]))", exposition).empty());
    CHECK(problems_of(R"(rate(colod_checkpoint_total{vm=~"$vm"}[5m]))", exposition) ==
          std::vector<std::string>{"no metric colod_checkpoint_total"});
    CHECK(problems_of(R"(sum by (instance, reason) (rate(colod_checkpoints_total[5m])))", exposition) ==
          std::vector<std::string>{"no label reason"});
    // A histogram's family name is not a sample name: queries need _bucket, _sum or _count.
    CHECK(!problems_of("colod_checkpoint_pause_seconds", exposition).empty());
}

TEST_CASE("the dashboard picks the VM from colod_info and the data source from a variable", "[grafana]") {
    auto doc = dashboard();
    const JsonValue* templating = doc.find("templating");
    REQUIRE(templating);
    std::map<std::string, const JsonValue*> variables;
    for (const auto& variable : templating->find("list")->items())
        variables[variable.find("name")->text()] = &variable;
    REQUIRE(variables.count("vm"));
    REQUIRE(variables.count("datasource"));
    CHECK(variables["datasource"]->find("type")->text() == "datasource");
    CHECK(variables["datasource"]->find("query")->text() == "prometheus");
    const JsonValue& vm = *variables["vm"];
    CHECK(vm.find("type")->text() == "query");
    // Grafana writes a query variable's query as a string, or (newer versions) as an object.
    const JsonValue* query = vm.find("query");
    REQUIRE(query);
    std::string query_text = query->is(JsonValue::Kind::Object) ? query->find("query")->text() : query->text();
    CHECK(query_text == "label_values(colod_info, vm)");
    CHECK(real_exposition().metrics.count("colod_info"));

    // Every panel and query reads the chosen data source; panel ids are unique (Grafana
    // keys a panel's links and state by its id).
    std::vector<const JsonValue*> panels;
    panels_of(doc, panels);
    REQUIRE(panels.size() >= 10);
    std::set<uint64_t> ids;
    for (const JsonValue* panel : panels) {
        INFO(panel->find("title")->text());
        auto id = panel->find("id")->as_u64();
        REQUIRE(id);
        CHECK(ids.insert(*id).second);
        if (panel->find("type")->text() == "row")
            continue;
        CHECK(panel->find("datasource")->find("uid")->text() == "${datasource}");
        std::set<std::string> refs;
        for (const auto& target : panel->find("targets")->items()) {
            CHECK(target.find("datasource")->find("uid")->text() == "${datasource}");
            CHECK(refs.insert(target.find("refId")->text()).second);
        }
    }
}
