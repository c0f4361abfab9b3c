// SPDX-License-Identifier: GPL-2.0-or-later
// An engine's state with the transitions it may take, as a table. A move the table does not
// hold is refused and logged as an error: the state never changes silently. The tables are
// documented in docs/engines.md exactly as the engines declare them.
//
// Not thread-safe: each engine moves its machine under its own state mutex.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>

#include "base/events.h"
#include "base/log.h"

namespace colod::core {

template <typename State>
struct Transition {
    State from;
    State to;
    std::string_view on;  // what causes it (for the docs and the error)
};

template <typename State>
class StateMachine {
public:
    using NameFn = std::string_view (*)(State);

    StateMachine(std::string_view engine, State initial, std::span<const Transition<State>> table, NameFn name)
        : m_engine(engine), m_state(initial), m_table(table), m_name(name) {}

    State state() const { return m_state; }

    bool allowed(State to) const {
        for (const auto& t : m_table)
            if (t.from == m_state && t.to == to)
                return true;
        return false;
    }

    // Moves to `to`; staying where it is counts as allowed. False, with an error logged, when
    // the table has no such transition (the state is left as it was).
    bool move(State to, std::string_view why) {
        if (to == m_state)
            return true;
        if (!allowed(to)) {
            base::log(base::Level::Error, base::Event::Error,
                      fmt::format("{} engine: refused the transition {} -> {} ({}): not in its table", m_engine,
                                  m_name(m_state), m_name(to), why));
            ++m_refused;
            return false;
        }
        if (m_observer)
            m_observer(m_state, to);
        m_state = to;
        return true;
    }

    std::span<const Transition<State>> table() const { return m_table; }
    uint64_t refused() const { return m_refused; }
    // Tests: sees every transition taken (under the engine's state mutex).
    void observe(std::function<void(State, State)> observer) { m_observer = std::move(observer); }

private:
    std::string_view m_engine;
    State m_state;
    std::span<const Transition<State>> m_table;
    NameFn m_name;
    uint64_t m_refused = 0;
    std::function<void(State, State)> m_observer;
};

}  // namespace colod::core
