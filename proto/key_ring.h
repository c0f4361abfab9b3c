// SPDX-License-Identifier: GPL-2.0-or-later
// The keys a daemon accepts on the replication link, and how they change while it runs.
//
// A KeySet holds the current key ([replication] auth-key-file) and, while a key is being
// replaced, the next one (auth-key-file-next). The handshake advertises both ids and uses the
// first key of the connecting side's list that the accepting side also holds, so a pair
// whose sides hold {old}, {old, new} or {new, old}, and {new} at the various steps of a
// rotation always finds a key (docs/operator-guide.md, "Replacing the key").
//
// A KeyRing is the daemon's reloadable holder: the engines keep a pointer to it and take a
// snapshot of its KeySet for each handshake, and a reload (SIGHUP, coloctl reload) swaps in a
// freshly loaded KeySet. A session that is already up keeps the keys it derived.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"
#include "proto/auth.h"

namespace colod::proto {

class KeySet {
public:
    struct Entry {
        Key key;
        std::string source;  // "auth-key-file /etc/colod/demo.key": where it came from, for logs
    };

    // Loads the current key and, unless `next_path` is empty, the next one (Key::load_file's
    // rules for both). A next file that holds the same key as the current one adds nothing and
    // is dropped. Errors name the config key and the file (Reason::KeyFile).
    static base::Result<KeySet> load(const std::string& current_path, const std::string& next_path);
    // Keys given directly (tests, benchmarks).
    explicit KeySet(Key current, std::optional<Key> next = std::nullopt);

    // The current key first.
    const std::vector<Entry>& entries() const { return m_entries; }
    std::vector<KeyId> ids() const;
    // The key with this id, or null.
    const Entry* find(const KeyId& id) const;
    // "auth-key-file /etc/colod/demo.key (key id 0123456789abcdef), auth-key-file-next …".
    std::string describe() const;

private:
    KeySet() = default;
    std::vector<Entry> m_entries;
};

class KeyRing {
public:
    explicit KeyRing(KeySet keys);

    // The keys now: what one handshake uses from start to end, whatever a reload does meanwhile.
    std::shared_ptr<const KeySet> keys() const;
    // Replaces the keys for every later handshake. Any thread.
    void replace(KeySet keys);

private:
    mutable std::mutex m_mutex;
    std::shared_ptr<const KeySet> m_keys;  // guarded by m_mutex
};

}  // namespace colod::proto
