// SPDX-License-Identifier: GPL-2.0-or-later
// Errors as values: every fallible function inside colod returns Result<T>.
// Exceptions are used only at the edge (main), for libraries that throw.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace colod::base {

// Broad classes of failure that callers must tell apart (the failover rules need
// EOF, timeout and protocol errors to be different things).
enum class Errc {
    Failed,       // anything without a more precise class
    System,       // a system call failed; sys_errno holds errno
    Eof,          // the peer closed the connection
    Timeout,      // a deadline passed
    Protocol,     // malformed or unexpected bytes from a peer
    Auth,         // a peer failed authentication
    Invalid,      // bad input (config, command line, image, state)
    Unsupported,  // a capability or feature is missing
    Mismatch,     // two sides disagree (VM shape, image, version)
    Stopped,      // the operation was abandoned because the object is stopping
};

std::string_view errc_name(Errc code);

class [[nodiscard]] Error {
public:
    Error(Errc code, std::string message, int sys_errno = 0)
        : m_code(code), m_errno(sys_errno), m_message(std::move(message)) {}

    // "what" names the call (an ioctl, a syscall, a file) so the message says where it failed.
    static Error from_errno(std::string_view what, int err) {
        return Error(Errc::System, fmt::format("{}: {}", what, std::strerror(err)), err);
    }
    static Error from_errno(std::string_view what) { return from_errno(what, errno); }

    template <typename... Args>
    static Error make(Errc code, fmt::format_string<Args...> format, Args&&... args) {
        return Error(code, fmt::format(format, std::forward<Args>(args)...));
    }

    Errc code() const { return m_code; }
    int sys_errno() const { return m_errno; }
    const std::string& message() const { return m_message; }

    // Adds context in front of the message: "loading image: ELF header truncated".
    Error context(std::string_view prefix) && {
        m_message = fmt::format("{}: {}", prefix, m_message);
        return std::move(*this);
    }

private:
    Errc m_code;
    int m_errno;
    std::string m_message;
};

template <typename T>
class [[nodiscard]] Result {
public:
    Result(T value) : m_v(std::in_place_index<0>, std::move(value)) {}
    Result(Error error) : m_v(std::in_place_index<1>, std::move(error)) {}

    bool ok() const { return m_v.index() == 0; }
    explicit operator bool() const { return ok(); }

    T& value() & { return std::get<0>(m_v); }
    const T& value() const& { return std::get<0>(m_v); }
    T&& value() && { return std::get<0>(std::move(m_v)); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() & { return value(); }

    const Error& error() const& { return std::get<1>(m_v); }
    Error&& error() && { return std::get<1>(std::move(m_v)); }

private:
    std::variant<T, Error> m_v;
};

template <>
class [[nodiscard]] Result<void> {
public:
    Result() = default;
    Result(Error error) : m_error(std::move(error)), m_failed(true) {}

    bool ok() const { return !m_failed; }
    explicit operator bool() const { return ok(); }
    void value() const {}
    const Error& error() const& { return m_error; }
    Error&& error() && { return std::move(m_error); }

private:
    Error m_error{Errc::Failed, {}};
    bool m_failed = false;
};

inline Result<void> ok() { return {}; }

}  // namespace colod::base

// TRY(expr): evaluates a Result; returns its error from the enclosing function, else yields
// the value. Uses a statement expression (GCC and Clang).
#define TRY(expr)                                   \
    ({                                              \
        auto&& try_result_ = (expr);                \
        if (!try_result_.ok())                      \
            return std::move(try_result_).error();  \
        std::move(try_result_).value();             \
    })
