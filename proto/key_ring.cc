// SPDX-License-Identifier: GPL-2.0-or-later
#include "proto/key_ring.h"

namespace colod::proto {

base::Result<KeySet> KeySet::load(const std::string& current_path, const std::string& next_path) {
    KeySet set;
    Key current = TRY(Key::load_file(current_path, "auth-key-file"));
    set.m_entries.push_back({std::move(current), "auth-key-file " + current_path});
    if (!next_path.empty()) {
        Key next = TRY(Key::load_file(next_path, "auth-key-file-next"));
        if (next.id() != set.m_entries.front().key.id())
            set.m_entries.push_back({std::move(next), "auth-key-file-next " + next_path});
    }
    return set;
}

KeySet::KeySet(Key current, std::optional<Key> next) {
    m_entries.push_back({std::move(current), "auth-key-file"});
    if (next && next->id() != m_entries.front().key.id())
        m_entries.push_back({std::move(*next), "auth-key-file-next"});
}

std::vector<KeyId> KeySet::ids() const {
    std::vector<KeyId> out;
    for (const auto& entry : m_entries)
        out.push_back(entry.key.id());
    return out;
}

const KeySet::Entry* KeySet::find(const KeyId& id) const {
    for (const auto& entry : m_entries)
        if (entry.key.id() == id)
            return &entry;
    return nullptr;
}

std::string KeySet::describe() const {
    std::string out;
    for (const auto& entry : m_entries) {
        if (!out.empty())
            out += ", ";
        out += fmt::format("{} (key id {})", entry.source, key_id_hex(entry.key.id()));
    }
    return out;
}

KeyRing::KeyRing(KeySet keys) : m_keys(std::make_shared<const KeySet>(std::move(keys))) {}

std::shared_ptr<const KeySet> KeyRing::keys() const {
    std::lock_guard lock(m_mutex);
    return m_keys;
}

void KeyRing::replace(KeySet keys) {
    auto fresh = std::make_shared<const KeySet>(std::move(keys));
    std::lock_guard lock(m_mutex);
    m_keys = std::move(fresh);
}

}  // namespace colod::proto
