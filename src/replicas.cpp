#include "p2pshare/replicas.hpp"

#include <algorithm>
#include <string>
#include <tuple>

#include <fmt/format.h>

#include "p2pshare/error.hpp"

namespace p2pshare::central {

void ReplicaPlanner::load(const FileId& file, std::uint32_t target) {
  if (target > 0) targets_[file].n = std::min(target, config_.max_target);
}

std::uint32_t ReplicaPlanner::recompute(Target& target) const {
  if (target.owners.empty()) return 0;
  std::uint32_t n = 0;
  for (const auto& [owner, asked] : target.owners) n = std::max(n, asked);
  return n;
}

std::optional<std::uint32_t> ReplicaPlanner::request(const PeerId& owner, const FileId& file, std::uint64_t chunks,
                                                     std::uint32_t n) {
  if (n > config_.max_target) {
    throw Error(Errc::bad_request,
                fmt::format("--replicas {} is more than the {} the central server keeps", n, config_.max_target));
  }
  auto it = targets_.find(file);
  const std::uint32_t before = it == targets_.end() ? 0 : it->second.n;
  const auto owned = it == targets_.end() ? nullptr : [&]() -> const std::uint32_t* {
    auto o = it->second.owners.find(owner);
    return o == it->second.owners.end() ? nullptr : &o->second;
  }();
  const std::uint64_t old_cost = owned != nullptr ? std::uint64_t{*owned} * chunks : 0;
  const std::uint64_t new_cost = std::uint64_t{n} * chunks;
  std::uint64_t& spent = owner_chunks_[owner];
  if (new_cost > old_cost && spent - old_cost + new_cost > config_.max_chunks_per_owner) {
    // The message first: erasing the entry frees what `spent` refers to.
    std::string message = fmt::format(
        "this peer already asks for {} replicated chunks; {} more would pass the {} "
        "the central server takes from one peer",
        spent, new_cost - old_cost, config_.max_chunks_per_owner);
    if (spent == 0) owner_chunks_.erase(owner);
    throw Error(Errc::limit, message);
  }
  spent = spent - old_cost + new_cost;
  if (spent == 0) owner_chunks_.erase(owner);
  if (it == targets_.end()) {
    if (n == 0) return std::nullopt;
    it = targets_.emplace(file, Target{}).first;
  }
  Target& target = it->second;
  target.chunks = chunks;
  if (n == 0) {
    target.owners.erase(owner);
  } else {
    target.owners[owner] = n;
  }
  // An owner asking for none while others ask keeps theirs; the last one's 0 ends it.
  target.n = recompute(target);
  const std::uint32_t after = target.n;
  if (after == 0 && target.fetchers.empty()) targets_.erase(it);
  if (after == before) return std::nullopt;
  return after;
}

std::optional<std::uint32_t> ReplicaPlanner::withdraw(const PeerId& peer, const FileId& file) {
  end_fetch(peer, file);
  if (auto v = volunteers_.find(peer); v != volunteers_.end()) v->second.cached.erase(file);
  auto it = targets_.find(file);
  if (it == targets_.end()) return std::nullopt;
  Target& target = it->second;
  const auto owner = target.owners.find(peer);
  if (owner == target.owners.end()) return std::nullopt;
  auto spent = owner_chunks_.find(peer);
  if (spent != owner_chunks_.end()) {
    spent->second -= std::min(spent->second, std::uint64_t{owner->second} * target.chunks);
    if (spent->second == 0) owner_chunks_.erase(spent);
  }
  target.owners.erase(owner);
  const std::uint32_t before = target.n;
  target.n = recompute(target);
  const std::uint32_t after = target.n;
  if (after == 0) {
    for (const auto& [fetcher, asked] : target.fetchers) {
      if (auto v = volunteers_.find(fetcher); v != volunteers_.end()) v->second.fetching.erase(file);
    }
    targets_.erase(it);
  }
  if (after == before) return std::nullopt;
  return after;
}

void ReplicaPlanner::announced(const PeerId& peer, const FileId& file, bool cached) {
  end_fetch(peer, file);
  if (!cached) return;
  if (auto v = volunteers_.find(peer); v != volunteers_.end()) v->second.cached.insert(file);
}

void ReplicaPlanner::registered(const PeerId& peer, std::uint64_t limit, std::uint64_t used) {
  disconnected(peer);
  if (limit > 0) volunteers_[peer] = Volunteer{limit, used, {}, {}, {}};
}

void ReplicaPlanner::disconnected(const PeerId& peer) {
  auto v = volunteers_.find(peer);
  if (v == volunteers_.end()) return;
  const auto fetching = v->second.fetching;
  for (const auto& [file, size] : fetching) end_fetch(peer, file);
  volunteers_.erase(v);
}

void ReplicaPlanner::end_fetch(const PeerId& peer, const FileId& file) {
  if (auto v = volunteers_.find(peer); v != volunteers_.end()) v->second.fetching.erase(file);
  auto it = targets_.find(file);
  if (it == targets_.end()) return;
  it->second.fetchers.erase(peer);
  if (it->second.n == 0 && it->second.fetchers.empty() && it->second.owners.empty()) targets_.erase(it);
}

std::uint32_t ReplicaPlanner::target(const FileId& file) const {
  auto it = targets_.find(file);
  return it == targets_.end() ? 0 : it->second.n;
}

std::size_t ReplicaPlanner::fetching(const FileId& file) const {
  auto it = targets_.find(file);
  return it == targets_.end() ? 0 : it->second.fetchers.size();
}

std::uint32_t ReplicaPlanner::live_copies(const FileId& file, const ReplicaFacts& facts) const {
  auto it = targets_.find(file);
  std::uint32_t copies = 0;
  for (const auto& holder : facts.live_complete) {
    if (it == targets_.end() || !it->second.owners.contains(holder)) ++copies;
  }
  return copies;
}

std::optional<ReplicaPlanner::Orders> ReplicaPlanner::heartbeat(const PeerId& peer, std::uint64_t used,
                                                                const std::vector<FileId>& gave_up,
                                                                Clock::time_point now, const View& view) {
  auto v = volunteers_.find(peer);
  if (v == volunteers_.end()) return std::nullopt;
  Volunteer& vol = v->second;
  vol.used = used;
  for (const auto& file : gave_up) {
    if (!vol.fetching.contains(file)) continue;
    end_fetch(peer, file);
    vol.refused[file] = now + config_.retry_after;
  }
  std::erase_if(vol.refused, [&](const auto& entry) { return entry.second <= now; });
  // Fetches that ran out of time go to others.
  std::vector<FileId> late;
  for (const auto& [file, size] : vol.fetching) {
    auto t = targets_.find(file);
    if (t == targets_.end()) {
      late.push_back(file);
      continue;
    }
    auto f = t->second.fetchers.find(peer);
    if (f == t->second.fetchers.end() || now - f->second >= config_.fetch_timeout) late.push_back(file);
  }
  for (const auto& file : late) {
    end_fetch(peer, file);
    vol.refused[file] = now + config_.retry_after;
  }

  Orders orders;
  std::uint64_t evictable = 0;
  for (const auto& file : vol.cached) {
    const std::uint32_t n = target(file);
    if (n == 0) {
      if (orders.drop.size() < config_.max_list) orders.drop.push_back(file);
      continue;
    }
    auto facts = view.facts(file);
    if (!facts) continue;
    if (live_copies(file, *facts) <= n && orders.keep.size() < config_.max_keep) {
      orders.keep.push_back(file);
    } else {
      evictable += facts->size;
    }
  }

  if (vol.fetching.size() >= config_.max_fetches_per_volunteer || targets_.empty()) return orders;
  std::uint64_t in_flight = 0;
  for (const auto& [file, size] : vol.fetching) in_flight += size;
  const std::uint64_t free = vol.limit > vol.used + in_flight ? vol.limit - vol.used - in_flight : 0;
  std::uint64_t room = free + std::min(evictable, vol.used);

  // Round robin over the targets, from where the last scan stopped, so no
  // file starves behind others and one heartbeat stays bounded.
  auto it = targets_.upper_bound(cursor_);
  std::size_t scanned = 0;
  std::vector<FileId> gone;
  while (scanned < std::min(config_.max_scan, targets_.size()) &&
         vol.fetching.size() < config_.max_fetches_per_volunteer && orders.fetch.size() < config_.max_list) {
    if (it == targets_.end()) it = targets_.begin();
    ++scanned;
    const FileId file = it->first;
    Target& target = it->second;
    cursor_ = file;
    ++it;
    if (target.n == 0 || target.owners.contains(peer) || vol.cached.contains(file) || vol.fetching.contains(file) ||
        vol.refused.contains(file)) {
      continue;
    }
    auto facts = view.facts(file);
    if (!facts) {
      if (target.fetchers.empty()) gone.push_back(file);
      continue;
    }
    if (std::find(facts->live_complete.begin(), facts->live_complete.end(), peer) != facts->live_complete.end()) {
      continue;
    }
    // A volunteer that expired mid-fetch is replaced: its fetch no longer counts.
    std::erase_if(target.fetchers, [&](const auto& entry) {
      if (view.live(entry.first)) return false;
      if (auto other = volunteers_.find(entry.first); other != volunteers_.end()) {
        other->second.fetching.erase(file);
      }
      return true;
    });
    const std::uint32_t copies = live_copies(file, *facts);
    if (copies + target.fetchers.size() >= target.n) continue;
    if (facts->size > room) continue;
    room -= facts->size;
    target.fetchers[peer] = now;
    vol.fetching[file] = facts->size;
    orders.fetch.push_back(file);
  }
  for (const auto& file : gone) targets_.erase(file);
  return orders;
}

}  // namespace p2pshare::central

namespace p2pshare::cache {

std::vector<FileId> eviction_order(std::vector<CacheCopy> copies, bool even_kept) {
  if (!even_kept) std::erase_if(copies, [](const CacheCopy& copy) { return copy.keep; });
  std::sort(copies.begin(), copies.end(), [](const CacheCopy& a, const CacheCopy& b) {
    return std::tie(a.keep, a.last_used_ms, a.file) < std::tie(b.keep, b.last_used_ms, b.file);
  });
  std::vector<FileId> order;
  order.reserve(copies.size());
  for (const auto& copy : copies) order.push_back(copy.file);
  return order;
}

}  // namespace p2pshare::cache
