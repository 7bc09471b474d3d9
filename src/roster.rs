//! Rosters: who belongs to which group, and so who may grab a packet.
//!
//! The rules are plain functions: [`eligible`] is the one test of who may grab, and
//! [`change`] is the one way a roster record changes a roster, used by the live engine and by
//! replay alike. [`Rosters`] is the live table: packet actors read it (caching a group's roster
//! until the epoch moves), and only [`Rosters::change`] writes it.
//!
//! # Order
//!
//! A change is decided, appended to the journal and applied to the table under one lock, so
//! the table and the journal see concurrent changes of a group in the same order: a restart
//! rebuilds exactly the roster the running engine enforced.
//!
//! # Limits
//!
//! `members_per_group_max` members per group, `groups_max` groups; a change that would pass
//! either is refused and changes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::EngineError;
use crate::journal::{Completion, Journal};
use crate::money::{GroupId, IdSet, UserId};
use crate::record::Record;
use crate::split::Split;

/// Whether `user` may grab a packet split as `split` in a group whose roster is `members`:
/// the named recipient of an exclusive packet, or a member of the group.
pub(crate) fn eligible(split: &Split, members: Option<&IdSet<UserId>>, user: UserId) -> bool {
    match *split {
        Split::Exclusive { to, .. } => to == user,
        _ => members.is_some_and(|m| m.contains(&user)),
    }
}

/// Applies a roster record to a group's roster: a replacement, additions or removals. Other
/// records leave it as it is. Returns whether the record was a roster record.
pub(crate) fn change(members: &mut IdSet<UserId>, record: &Record) -> bool {
    match record {
        Record::Roster { members: all, .. } => {
            members.clear();
            members.extend(all.iter().copied());
        }
        Record::MembersAdded { members: added, .. } => members.extend(added.iter().copied()),
        Record::MembersRemoved { members: removed, .. } => removed.iter().for_each(|m| {
            members.remove(m);
        }),
        _ => return false,
    }
    true
}

/// The group a roster record is about.
pub(crate) fn group_of(record: &Record) -> Option<GroupId> {
    match record {
        Record::Roster { group, .. } | Record::MembersAdded { group, .. } | Record::MembersRemoved { group, .. } => {
            Some(*group)
        }
        _ => None,
    }
}

/// Every group's roster, as plain data (replay and snapshots).
pub(crate) type RosterBook = HashMap<GroupId, IdSet<UserId>>;

/// Applies a roster record to a book of rosters.
pub(crate) fn apply(book: &mut RosterBook, record: &Record) {
    if let Some(group) = group_of(record) {
        change(book.entry(group).or_default(), record);
    }
}

/// A roster change asked for by a caller, before it is checked.
#[derive(Debug)]
pub(crate) enum Change {
    Set(Vec<UserId>),
    Add(Vec<UserId>),
    Remove(Vec<UserId>),
}

/// Sorts and deduplicates ids as they come, refusing more than twice `max` before sorting so
/// that an endless iterator cannot exhaust memory.
pub(crate) fn collect_ids(ids: impl IntoIterator<Item = UserId>, max: usize) -> Result<Vec<UserId>, EngineError> {
    let mut sorted: Vec<UserId> = Vec::new();
    for id in ids {
        sorted.push(id);
        if sorted.len() > max.saturating_mul(2) {
            return Err(EngineError::TooManyMembers { members: sorted.len(), max });
        }
    }
    sorted.sort_unstable();
    sorted.dedup();
    Ok(sorted)
}

/// The live rosters.
#[derive(Debug)]
pub(crate) struct Rosters {
    table: DashMap<GroupId, Arc<IdSet<UserId>>>,
    /// Bumped by every change, so packet actors know when their cached roster is old.
    epoch: AtomicU64,
    /// Held while a change is applied and appended: see "Order" above.
    writer: Mutex<()>,
    members_per_group_max: usize,
    groups_max: usize,
}

impl Rosters {
    /// The rosters of `book` (empty for a new engine).
    pub(crate) fn new(book: RosterBook, members_per_group_max: usize, groups_max: usize) -> Rosters {
        let table = book.into_iter().map(|(g, m)| (g, Arc::new(m))).collect();
        Rosters { table, epoch: AtomicU64::new(0), writer: Mutex::new(()), members_per_group_max, groups_max }
    }

    /// The current roster of `group`.
    pub(crate) fn get(&self, group: GroupId) -> Option<Arc<IdSet<UserId>>> {
        self.table.get(&group).map(|r| Arc::clone(r.value()))
    }

    /// The current epoch; a roster read after it is at least as new.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether `user` is a member of `group`.
    pub(crate) fn is_member(&self, group: GroupId, user: UserId) -> bool {
        self.table.get(&group).is_some_and(|r| r.contains(&user))
    }

    /// Whether `user` may grab a packet of `group` split as `split`.
    pub(crate) fn is_eligible(&self, group: GroupId, split: &Split, user: UserId) -> bool {
        eligible(split, self.get(group).as_deref(), user)
    }

    /// Applies `change` to `group`'s roster and appends its record; `then` runs once the
    /// record is durable. Additions and removals are recorded as what they change (members
    /// already in, or not in, the roster are left out); a change that changes nothing records
    /// nothing, and removing from a group without a roster does not create one.
    ///
    /// # Errors
    ///
    /// `TooManyMembers` over `members_per_group_max`, `TooManyGroups` over `groups_max`;
    /// nothing changes then.
    pub(crate) fn change(
        &self,
        group: GroupId,
        change: Change,
        journal: &dyn Journal,
        then: Completion,
    ) -> Result<(), EngineError> {
        let _order = self.writer.lock();
        let current = self.get(group);
        let Some(record) = decide(group, current.as_deref(), change, self.members_per_group_max)? else {
            // Nothing to record; the reply still waits for what was appended before.
            journal.barrier(then);
            return Ok(());
        };
        if current.is_none() && self.table.len() >= self.groups_max {
            return Err(EngineError::TooManyGroups { max: self.groups_max });
        }
        let mut members = current.as_deref().cloned().unwrap_or_default();
        self::change(&mut members, &record);
        // Recorded before it takes effect: a claim that the change makes eligible is appended
        // after the change, so no failure can keep the claim and lose the change. (The caller
        // hears back only after this returns, so it sees its change.)
        journal.append(record, then);
        self.table.insert(group, Arc::new(members));
        // After the insert: an actor that sees the new epoch finds the new roster.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// `group`'s members, sorted, sent on `reply` once every change made before is durable.
    pub(crate) fn members(&self, group: GroupId, journal: &dyn Journal, reply: oneshot::Sender<Vec<UserId>>) {
        // Under the change lock: a change is either not visible yet, or its record is appended
        // and the barrier waits for it, so a reply never shows a change a crash could undo.
        let _order = self.writer.lock();
        let mut members: Vec<UserId> = self.get(group).map(|m| m.iter().copied().collect()).unwrap_or_default();
        members.sort_unstable();
        crate::journal::reply_after_barrier(journal, reply, members);
    }
}

/// Decides a roster change: the record that makes it, `None` if it changes nothing.
///
/// # Errors
///
/// `TooManyMembers` if the roster would pass `max` members.
fn decide(
    group: GroupId,
    current: Option<&IdSet<UserId>>,
    change: Change,
    max: usize,
) -> Result<Option<Record>, EngineError> {
    let has = |m: &UserId| current.is_some_and(|c| c.contains(m));
    let record = match change {
        Change::Set(members) => Record::Roster { group, members },
        Change::Add(mut members) => {
            members.retain(|m| !has(m));
            let after = current.map_or(0, |c| c.len()) + members.len();
            if after > max {
                return Err(EngineError::TooManyMembers { members: after, max });
            }
            Record::MembersAdded { group, members }
        }
        Change::Remove(mut members) => {
            members.retain(has);
            Record::MembersRemoved { group, members }
        }
    };
    Ok(match &record {
        Record::Roster { members, .. } if members.len() > max => {
            return Err(EngineError::TooManyMembers { members: members.len(), max })
        }
        Record::MembersAdded { members, .. } | Record::MembersRemoved { members, .. } if members.is_empty() => None,
        _ => Some(record),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Amount;

    fn ids(v: &[u64]) -> Vec<UserId> {
        v.iter().copied().map(UserId).collect()
    }

    #[test]
    fn changes_replace_add_and_remove() {
        let mut book = RosterBook::new();
        let g = GroupId(1);
        apply(&mut book, &Record::Roster { group: g, members: ids(&[1, 2, 3]) });
        apply(&mut book, &Record::MembersAdded { group: g, members: ids(&[3, 4]) });
        apply(&mut book, &Record::MembersRemoved { group: g, members: ids(&[1, 9]) });
        let mut got: Vec<u64> = book[&g].iter().map(|u| u.0).collect();
        got.sort_unstable();
        assert_eq!(got, vec![2, 3, 4]);
        apply(&mut book, &Record::Roster { group: g, members: vec![] });
        assert!(book[&g].is_empty());
    }

    #[test]
    fn eligibility_is_membership_or_the_named_recipient() {
        let members: IdSet<UserId> = ids(&[1, 2]).into_iter().collect();
        let lucky = Split::lucky(Amount::fen(10), 2);
        assert!(eligible(&lucky, Some(&members), UserId(1)));
        assert!(!eligible(&lucky, Some(&members), UserId(3)));
        assert!(!eligible(&lucky, None, UserId(1)));
        let exclusive = Split::Exclusive { to: UserId(3), amount: Amount::fen(1) };
        assert!(eligible(&exclusive, Some(&members), UserId(3)));
        assert!(!eligible(&exclusive, Some(&members), UserId(1)));
    }

    #[test]
    fn ids_are_sorted_deduplicated_and_bounded() {
        assert_eq!(collect_ids(ids(&[3, 1, 3, 2]), 10).unwrap(), ids(&[1, 2, 3]));
        assert!(matches!(collect_ids((0..).map(UserId), 10), Err(EngineError::TooManyMembers { max: 10, .. })));
    }
}
