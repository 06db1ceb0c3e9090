//! Routing: which sessions a message goes to. The subscription index (sessions' filters, and
//! one entry per shared group), the shared groups with their members and round-robin cursor,
//! and the retained messages (a trie of their own, [`RetainedStore`]).
//!
//! Matching reuses two scratch vectors, so publishing allocates nothing here.

use std::collections::HashMap;
use std::mem;

use bulwark_proto::{QoS, SubscriptionId, SubscriptionOptions, TopicFilter};

use crate::SessionKey;
use crate::index::SubscriptionIndex;
use crate::message::GroupKey;
use crate::retained::RetainedStore;

/// What an index entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SubKey {
    Session(SessionKey),
    Group(GroupKey),
}

#[derive(Debug, Clone, Copy, Default)]
struct SubEntry {
    options: SubscriptionOptions,
    id: Option<SubscriptionId>,
    /// The ACL granted the filter with carve-outs: each message's topic is checked before
    /// delivery through it. Without, nothing is checked (the filter's every topic is allowed).
    checked: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Member {
    pub(crate) session: SessionKey,
    pub(crate) options: SubscriptionOptions,
    pub(crate) id: Option<SubscriptionId>,
    /// As [`SubEntry::checked`].
    pub(crate) checked: bool,
}

#[derive(Debug)]
struct Group {
    share: Box<str>,
    filter: Box<str>,
    members: Vec<Member>,
    cursor: usize,
}

/// A subscriber a message matched, before overlapping subscriptions are merged.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    session: SessionKey,
    qos: QoS,
    retain_as_published: bool,
    id: Option<SubscriptionId>,
    checked: bool,
}

/// What one message matched: the sessions' subscriptions (sorted by session) and the groups.
#[derive(Debug, Default)]
pub(crate) struct Matches {
    targets: Vec<Target>,
    /// The shared groups the message goes to (one member each).
    pub(crate) groups: Vec<GroupKey>,
}

/// One session's subscriptions that a message matched, merged: one copy at the highest QoS,
/// with every Subscription Identifier (§3.3.4).
#[derive(Debug)]
pub(crate) struct Merged {
    pub(crate) session: SessionKey,
    pub(crate) qos: QoS,
    pub(crate) retain_as_published: bool,
    pub(crate) ids: Vec<SubscriptionId>,
    /// Every matching subscription has carve-outs: the message's topic must be checked (one
    /// subscription without that matches is proof enough).
    pub(crate) checked: bool,
}

impl Matches {
    /// Subscriptions matched (a group counts once), before merging.
    #[inline]
    pub(crate) fn matched(&self) -> usize {
        self.targets.len() + self.groups.len()
    }

    /// The next session from `*at` on, its subscriptions merged; `*at` moves past them.
    #[inline]
    pub(crate) fn next_merged(&self, at: &mut usize) -> Option<Merged> {
        let first = self.targets.get(*at)?;
        let mut merged = Merged {
            session: first.session,
            qos: first.qos,
            retain_as_published: first.retain_as_published,
            ids: first.id.into_iter().collect(),
            checked: first.checked,
        };
        *at += 1;
        while let Some(next) = self
            .targets
            .get(*at)
            .filter(|t| t.session == merged.session)
        {
            merged.qos = merged.qos.max(next.qos);
            merged.retain_as_published |= next.retain_as_published;
            merged.ids.extend(next.id);
            merged.checked &= next.checked;
            *at += 1;
        }
        Some(merged)
    }
}

/// The routing state of the engine.
#[derive(Debug)]
pub(crate) struct Routing {
    index: SubscriptionIndex<SubKey, SubEntry>,
    groups: HashMap<(Box<str>, Box<str>), GroupKey>,
    group_members: HashMap<GroupKey, Group>,
    next_group: u64,
    /// Subscriptions of all sessions.
    pub(crate) subscriptions: usize,
    /// Retained messages.
    pub(crate) retained: RetainedStore,
    /// Scratch of [`Routing::take_matches`], kept between publications (empty outside one).
    scratch: Matches,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            index: SubscriptionIndex::new(),
            groups: HashMap::new(),
            group_members: HashMap::new(),
            next_group: 1,
            subscriptions: 0,
            retained: RetainedStore::new(),
            scratch: Matches::default(),
        }
    }
}

impl Routing {
    /// Indexes a subscription of `session` (a member of its group, for a shared one),
    /// replacing the one it had on the same filter.
    pub(crate) fn index(
        &mut self,
        session: SessionKey,
        filter: &TopicFilter,
        options: SubscriptionOptions,
        id: Option<SubscriptionId>,
        checked: bool,
    ) {
        match filter.share_name() {
            None => {
                self.index.insert(
                    filter.as_str(),
                    SubKey::Session(session),
                    SubEntry {
                        options,
                        id,
                        checked,
                    },
                );
            }
            Some(share) => {
                let name = (
                    Box::<str>::from(share),
                    Box::<str>::from(filter.match_filter()),
                );
                let key = match self.groups.get(&name) {
                    Some(&key) => key,
                    None => {
                        let key = GroupKey(self.next_group);
                        self.next_group += 1;
                        self.index.insert(
                            filter.match_filter(),
                            SubKey::Group(key),
                            SubEntry::default(),
                        );
                        self.group_members.insert(
                            key,
                            Group {
                                share: name.0.clone(),
                                filter: name.1.clone(),
                                members: Vec::new(),
                                cursor: 0,
                            },
                        );
                        self.groups.insert(name, key);
                        key
                    }
                };
                if let Some(group) = self.group_members.get_mut(&key) {
                    let member = Member {
                        session,
                        options,
                        id,
                        checked,
                    };
                    match group.members.iter_mut().find(|m| m.session == session) {
                        Some(existing) => *existing = member,
                        None => group.members.push(member),
                    }
                }
            }
        }
    }

    /// Removes a subscription of `session` from the index (a group with no member left goes).
    pub(crate) fn unindex(&mut self, session: SessionKey, filter: &TopicFilter) {
        match filter.share_name() {
            None => {
                self.index
                    .remove(filter.as_str(), &SubKey::Session(session));
            }
            Some(share) => {
                let name = (
                    Box::<str>::from(share),
                    Box::<str>::from(filter.match_filter()),
                );
                let Some(&key) = self.groups.get(&name) else {
                    return;
                };
                let empty = self.group_members.get_mut(&key).is_none_or(|group| {
                    group.members.retain(|m| m.session != session);
                    group.members.is_empty()
                });
                if empty {
                    self.groups.remove(&name);
                    self.group_members.remove(&key);
                    self.index
                        .remove(filter.match_filter(), &SubKey::Group(key));
                }
            }
        }
    }

    /// What a message on `topic` from `publisher` matches (No Local subscriptions of the
    /// publisher left out). Hand the result back with [`Routing::give_back`] so that its
    /// vectors are used again.
    pub(crate) fn take_matches(&mut self, topic: &str, publisher: Option<SessionKey>) -> Matches {
        let mut matches = mem::take(&mut self.scratch);
        matches.targets.clear();
        matches.groups.clear();
        let Matches { targets, groups } = &mut matches;
        self.index.for_each_match(topic, |key, entry| match *key {
            SubKey::Session(session) => {
                if !(entry.options.no_local && Some(session) == publisher) {
                    targets.push(Target {
                        session,
                        qos: entry.options.qos,
                        retain_as_published: entry.options.retain_as_published,
                        id: entry.id,
                        checked: entry.checked,
                    });
                }
            }
            SubKey::Group(group) => groups.push(group),
        });
        // Overlapping subscriptions of one session are merged: they must be next to each other.
        targets.sort_unstable_by_key(|t| t.session);
        matches
    }

    /// Takes back the vectors of [`Routing::take_matches`].
    #[inline]
    pub(crate) fn give_back(&mut self, matches: Matches) {
        self.scratch = matches;
    }

    /// Picks the next member of a shared group, round robin, preferring connected members
    /// (`online`), never `except`, never one with carve-outs whose client may not receive the
    /// message (`may_receive`).
    pub(crate) fn choose_member(
        &mut self,
        group: GroupKey,
        except: Option<SessionKey>,
        may_receive: impl Fn(SessionKey) -> bool,
        online: impl Fn(SessionKey) -> bool,
    ) -> Option<Member> {
        let g = self.group_members.get_mut(&group)?;
        let n = g.members.len();
        let mut chosen = None;
        let mut fallback = None;
        for step in 0..n {
            let idx = (g.cursor + step) % n;
            let Some(member) = g.members.get(idx) else {
                continue;
            };
            if Some(member.session) == except {
                continue;
            }
            if member.checked && !may_receive(member.session) {
                continue;
            }
            if online(member.session) {
                chosen = Some((idx, *member));
                break;
            }
            if fallback.is_none() {
                fallback = Some((idx, *member));
            }
        }
        let (idx, member) = chosen.or(fallback)?;
        g.cursor = (idx + 1) % n.max(1);
        Some(member)
    }

    /// Shared groups with their share name, filter and member count.
    pub(crate) fn shared_groups(&self) -> Vec<(String, String, usize)> {
        self.group_members
            .values()
            .map(|g| (g.share.to_string(), g.filter.to_string(), g.members.len()))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn options(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions::qos(qos)
    }

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::new(text).unwrap()
    }

    #[test]
    fn overlapping_subscriptions_of_one_session_merge() {
        let mut routing = Routing::default();
        let (a, b) = (SessionKey(1), SessionKey(2));
        routing.index(
            a,
            &filter("t/+"),
            options(QoS::AtMostOnce),
            SubscriptionId::new(1),
            true,
        );
        routing.index(
            a,
            &filter("t/#"),
            options(QoS::ExactlyOnce),
            SubscriptionId::new(2),
            false,
        );
        routing.index(b, &filter("t/x"), options(QoS::AtLeastOnce), None, true);
        let matches = routing.take_matches("t/x", None);
        assert_eq!(matches.matched(), 3);
        let mut at = 0;
        let first = matches.next_merged(&mut at).unwrap();
        assert_eq!(
            (first.session, first.qos, first.checked),
            (a, QoS::ExactlyOnce, false)
        );
        let mut ids: Vec<u32> = first.ids.iter().map(|id| id.get()).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2]);
        let second = matches.next_merged(&mut at).unwrap();
        assert_eq!(
            (second.session, second.qos, second.checked),
            (b, QoS::AtLeastOnce, true)
        );
        assert!(matches.next_merged(&mut at).is_none());
        routing.give_back(matches);
        // No Local: the publisher's own subscription is left out.
        let mut no_local = options(QoS::AtMostOnce);
        no_local.no_local = true;
        routing.index(b, &filter("t/x"), no_local, None, false);
        assert_eq!(routing.take_matches("t/x", Some(b)).matched(), 2);
    }

    #[test]
    fn shared_groups_take_turns_and_go_with_their_last_member() {
        let mut routing = Routing::default();
        let (a, b) = (SessionKey(1), SessionKey(2));
        routing.index(
            a,
            &filter("$share/g/t"),
            options(QoS::AtLeastOnce),
            None,
            false,
        );
        routing.index(
            b,
            &filter("$share/g/t"),
            options(QoS::AtLeastOnce),
            None,
            false,
        );
        let matches = routing.take_matches("t", None);
        assert_eq!(matches.groups.len(), 1);
        let group = *matches.groups.first().unwrap();
        let pick = |routing: &mut Routing, except| {
            routing
                .choose_member(group, except, |_| true, |_| true)
                .map(|m| m.session)
        };
        assert_eq!(pick(&mut routing, None), Some(a));
        assert_eq!(pick(&mut routing, None), Some(b));
        assert_eq!(pick(&mut routing, None), Some(a));
        assert_eq!(pick(&mut routing, Some(b)), Some(a));
        // Connected members first.
        let member = routing.choose_member(group, None, |_| true, |s| s == b);
        assert_eq!(member.map(|m| m.session), Some(b));
        assert_eq!(
            routing.shared_groups(),
            [("g".to_owned(), "t".to_owned(), 2)]
        );
        routing.unindex(a, &filter("$share/g/t"));
        routing.unindex(b, &filter("$share/g/t"));
        assert!(routing.shared_groups().is_empty());
        assert_eq!(routing.take_matches("t", None).matched(), 0);
    }
}
