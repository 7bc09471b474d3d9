//! Enterprises (企业, rules 21 and 22): orgs, their admins, their policy and the groups attached
//! to them, and the checks of admin recall.
//!
//! [`OrgBook`] is the plain data: `decide_*` checks a request against it and returns the
//! record to write (changing nothing), [`OrgBook::apply`] applies a record, live and on replay
//! alike, and [`OrgBook::check_recall`] is the one test of who may recall which packet.
//! [`Orgs`] is the live table: a change is decided, appended and applied under one lock (as
//! rosters are), so the table and the journal see concurrent changes in the same order; packet
//! actors read it when an admin recalls.
//!
//! # Limits
//!
//! `orgs_max` orgs, `org_admins_max` admins each, `org_whitelist_max` whitelisted senders,
//! `org_text_bytes_max` bytes of name or reason; over any: a typed error, nothing changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::clock::Timestamp;
use crate::error::{OrgError, RecallError};
use crate::journal::Journal;
use crate::limits::Limits;
use crate::money::{GroupId, OrgId, UserId};
use crate::record::{NewOrg, Policy, RecallPolicy, Record};

/// An org as callers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OrgView {
    /// The org.
    pub id: OrgId,
    /// Its name.
    pub name: String,
    /// Its admins, sorted.
    pub admins: Vec<UserId>,
    /// Its policy.
    pub policy: Policy,
    /// The groups attached to it, sorted.
    pub groups: Vec<GroupId>,
    /// When it was created.
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct OrgState {
    /// As created (admins as given), to tell a retry from a conflict.
    spec: NewOrg,
    admins: BTreeSet<UserId>,
    policy: Policy,
    groups: BTreeSet<GroupId>,
    created_at: Timestamp,
}

/// Every org, as plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OrgBook {
    orgs: BTreeMap<OrgId, OrgState>,
    /// Which org each attached group belongs to.
    group_org: HashMap<GroupId, OrgId>,
}

impl OrgBook {
    fn admin_of(&self, org: OrgId, by: UserId) -> Result<&OrgState, OrgError> {
        let state = self.orgs.get(&org).ok_or(OrgError::UnknownOrg)?;
        if !state.admins.contains(&by) {
            return Err(OrgError::NotAdmin { user: by });
        }
        Ok(state)
    }

    /// Decides the creation of `org`; changes nothing. `None`: it exists with these fields (a
    /// retry), nothing to record.
    ///
    /// # Errors
    ///
    /// `IdConflict`, `NoAdmins`, `TooManyAdmins`, `TextTooLong`, `TooManyOrgs`.
    pub(crate) fn decide_create(
        &self,
        org: OrgId,
        spec: &NewOrg,
        limits: &Limits,
        now: Timestamp,
    ) -> Result<Option<Record>, OrgError> {
        if let Some(existing) = self.orgs.get(&org) {
            return if existing.spec == *spec { Ok(None) } else { Err(OrgError::IdConflict { org }) };
        }
        let admins: BTreeSet<UserId> = spec.admins.iter().copied().collect();
        if admins.is_empty() {
            return Err(OrgError::NoAdmins);
        }
        if admins.len() > limits.org_admins_max {
            return Err(OrgError::TooManyAdmins { admins: admins.len(), max: limits.org_admins_max });
        }
        if spec.name.len() > limits.org_text_bytes_max {
            return Err(OrgError::TextTooLong { bytes: spec.name.len(), max: limits.org_text_bytes_max });
        }
        if self.orgs.len() >= limits.orgs_max {
            return Err(OrgError::TooManyOrgs { max: limits.orgs_max });
        }
        Ok(Some(Record::OrgCreated { org, spec: spec.clone(), at: now }))
    }

    /// Decides a policy change by `by`; changes nothing.
    ///
    /// # Errors
    ///
    /// `UnknownOrg`, `NotAdmin`, `WhitelistTooLong`.
    pub(crate) fn decide_policy(
        &self,
        org: OrgId,
        by: UserId,
        policy: &Policy,
        limits: &Limits,
        now: Timestamp,
    ) -> Result<Record, OrgError> {
        self.admin_of(org, by)?;
        if let RecallPolicy::Whitelist(senders) = &policy.recall {
            if senders.len() > limits.org_whitelist_max {
                return Err(OrgError::WhitelistTooLong { senders: senders.len(), max: limits.org_whitelist_max });
            }
        }
        Ok(Record::OrgPolicySet { org, by, policy: policy.clone(), at: now })
    }

    /// Decides attaching `group` to `org` by `by`; changes nothing. `None`: attached already.
    ///
    /// # Errors
    ///
    /// `UnknownOrg`, `NotAdmin`, `GroupTaken` (attached to another org).
    pub(crate) fn decide_attach(
        &self,
        org: OrgId,
        group: GroupId,
        by: UserId,
        limits: &Limits,
        now: Timestamp,
    ) -> Result<Option<Record>, OrgError> {
        let state = self.admin_of(org, by)?;
        match self.group_org.get(&group) {
            Some(&owner) if owner == org => Ok(None),
            Some(&owner) => Err(OrgError::GroupTaken { group, org: owner }),
            None if state.groups.len() >= limits.org_groups_max => {
                Err(OrgError::TooManyGroups { max: limits.org_groups_max })
            }
            None => Ok(Some(Record::GroupAttached { org, group, by, at: now })),
        }
    }

    /// Whether `by` may recall a packet that `sender` sent in `group` (rule 22). In this
    /// order: the group is attached to an org, `by` is one of its admins, its recall policy
    /// is on, `sender` is on its whitelist.
    ///
    /// # Errors
    ///
    /// `NotOrgPacket`, `NotAdmin`, `RecallDisabled`, `NotWhitelisted`.
    pub(crate) fn check_recall(&self, group: GroupId, sender: UserId, by: UserId) -> Result<OrgId, RecallError> {
        let org = *self.group_org.get(&group).ok_or(RecallError::NotOrgPacket)?;
        let state = &self.orgs[&org];
        if !state.admins.contains(&by) {
            return Err(RecallError::NotAdmin { user: by });
        }
        match &state.policy.recall {
            RecallPolicy::Off => Err(RecallError::RecallDisabled),
            RecallPolicy::Whitelist(senders) if !senders.contains(&sender) => {
                Err(RecallError::NotWhitelisted { sender })
            }
            RecallPolicy::Whitelist(_) => Ok(org),
        }
    }

    /// Applies an org record; other records leave the book as it is.
    ///
    /// # Errors
    ///
    /// A description of a record that cannot happen (an org created twice, a change of an
    /// unknown org, a group attached to two orgs); nothing changes then.
    pub(crate) fn apply(&mut self, record: &Record) -> Result<(), String> {
        match record {
            Record::OrgCreated { org, spec, at } => {
                if self.orgs.contains_key(org) {
                    return Err(format!("org {org} created twice"));
                }
                let admins = spec.admins.iter().copied().collect();
                let state = OrgState {
                    spec: spec.clone(),
                    admins,
                    policy: Policy::default(),
                    groups: BTreeSet::new(),
                    created_at: *at,
                };
                self.orgs.insert(*org, state);
            }
            Record::OrgPolicySet { org, policy, .. } => {
                self.orgs.get_mut(org).ok_or(format!("policy of unknown org {org}"))?.policy = policy.clone();
            }
            Record::GroupAttached { org, group, .. } => {
                if self.group_org.get(group).is_some_and(|owner| owner != org) {
                    return Err(format!("group {group} attached to two orgs"));
                }
                self.orgs.get_mut(org).ok_or(format!("group attached to unknown org {org}"))?.groups.insert(*group);
                self.group_org.insert(*group, *org);
            }
            _ => {}
        }
        Ok(())
    }

    /// The org as callers see it.
    pub(crate) fn view(&self, org: OrgId) -> Option<OrgView> {
        let state = self.orgs.get(&org)?;
        Some(OrgView {
            id: org,
            name: state.spec.name.clone(),
            admins: state.admins.iter().copied().collect(),
            policy: state.policy.clone(),
            groups: state.groups.iter().copied().collect(),
            created_at: state.created_at,
        })
    }

    /// The records that rebuild this book (for snapshots): each org's creation, its policy
    /// and its groups.
    pub(crate) fn records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for (&org, state) in &self.orgs {
            out.push(Record::OrgCreated { org, spec: state.spec.clone(), at: state.created_at });
            let admin = *state.admins.first().expect("an org has an admin");
            let at = state.created_at;
            out.push(Record::OrgPolicySet { org, by: admin, policy: state.policy.clone(), at });
            out.extend(state.groups.iter().map(|&group| Record::GroupAttached { org, group, by: admin, at }));
        }
        out
    }

    /// How many orgs there are.
    pub(crate) fn len(&self) -> usize {
        self.orgs.len()
    }
}

/// The live table of orgs: changes decided, appended and applied under one lock.
pub(crate) struct Orgs {
    book: Mutex<OrgBook>,
    limits: Limits,
}

/// What a change of an org hears back: its view once the change is durable.
pub(crate) type Answer = oneshot::Receiver<Option<OrgView>>;

impl Orgs {
    pub(crate) fn new(book: OrgBook, limits: Limits) -> Orgs {
        Orgs { book: Mutex::new(book), limits }
    }

    /// Decides with `decide`, appends and applies what it returns (nothing for a repeat), and
    /// answers with the org's view once that is durable.
    ///
    /// # Errors
    ///
    /// What `decide` refuses; nothing changes then.
    pub(crate) fn change(
        &self,
        org: OrgId,
        journal: &dyn Journal,
        decide: impl FnOnce(&OrgBook, &Limits) -> Result<Option<Record>, OrgError>,
    ) -> Result<Answer, OrgError> {
        let (tx, rx) = oneshot::channel();
        let mut book = self.book.lock();
        let decided = decide(&book, &self.limits)?;
        if let Some(record) = &decided {
            book.apply(record).expect("decided against this book");
        }
        let view = book.view(org);
        let then = Box::new(move || {
            let _ = tx.send(view);
        });
        // Appended under the lock: the journal orders changes of an org as the table does.
        match decided {
            Some(record) => journal.append(record, then),
            None => journal.barrier(then),
        }
        Ok(rx)
    }

    /// The org's view.
    pub(crate) fn view(&self, org: OrgId) -> Option<OrgView> {
        self.book.lock().view(org)
    }

    /// The rules of the org `group` is attached to, if any.
    pub(crate) fn rules_of(&self, group: GroupId) -> Option<crate::ledger::OrgRules> {
        let book = self.book.lock();
        let org = *book.group_org.get(&group)?;
        let policy = &book.orgs[&org].policy;
        Some(crate::ledger::OrgRules {
            org,
            sent_fen_max: policy.daily_sent_fen_max,
            approval_above: policy.approval_above,
        })
    }

    /// The rules of `org` for a transfer by `user`.
    ///
    /// # Errors
    ///
    /// `UnknownOrg`; `NotOrgMember` unless `is_member` holds for one of the org's groups.
    pub(crate) fn transfer_rules(
        &self,
        org: OrgId,
        is_member: impl Fn(GroupId) -> bool,
    ) -> Result<crate::ledger::OrgRules, crate::error::TransferError> {
        let book = self.book.lock();
        let state = book.orgs.get(&org).ok_or(crate::error::TransferError::UnknownOrg)?;
        if !state.groups.iter().any(|&g| is_member(g)) {
            return Err(crate::error::TransferError::NotOrgMember { org });
        }
        let policy = &state.policy;
        Ok(crate::ledger::OrgRules {
            org,
            sent_fen_max: policy.daily_sent_fen_max,
            approval_above: policy.approval_above,
        })
    }

    /// Whether `user` is an admin of `org`.
    pub(crate) fn is_admin(&self, org: OrgId, user: UserId) -> bool {
        self.book.lock().orgs.get(&org).is_some_and(|o| o.admins.contains(&user))
    }

    /// See [`OrgBook::check_recall`].
    pub(crate) fn check_recall(&self, group: GroupId, sender: UserId, by: UserId) -> Result<OrgId, RecallError> {
        self.book.lock().check_recall(group, sender, by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timestamp = Timestamp(1);

    fn book() -> OrgBook {
        let mut b = OrgBook::default();
        let spec = NewOrg { admins: vec![UserId(100), UserId(101)], name: "org".into() };
        let created = b.decide_create(OrgId(3), &spec, &Limits::default(), T).unwrap().unwrap();
        b.apply(&created).unwrap();
        b
    }

    #[test]
    fn creation_is_once_per_id_and_bounded() {
        let mut b = book();
        let l = Limits::default();
        let same = NewOrg { admins: vec![UserId(100), UserId(101)], name: "org".into() };
        assert_eq!(b.decide_create(OrgId(3), &same, &l, T), Ok(None));
        let other = NewOrg { name: "other".into(), ..same.clone() };
        assert_eq!(b.decide_create(OrgId(3), &other, &l, T), Err(OrgError::IdConflict { org: OrgId(3) }));
        let none = NewOrg { admins: vec![], name: String::new() };
        assert_eq!(b.decide_create(OrgId(4), &none, &l, T), Err(OrgError::NoAdmins));
        let few = Limits { orgs_max: 1, ..Limits::default() };
        assert_eq!(b.decide_create(OrgId(4), &same, &few, T), Err(OrgError::TooManyOrgs { max: 1 }));
        let created = Record::OrgCreated { org: OrgId(3), spec: same, at: T };
        assert!(b.apply(&created).unwrap_err().contains("twice"));
    }

    #[test]
    fn only_admins_change_an_org_and_a_group_has_one_org() {
        let mut b = book();
        let l = Limits::default();
        let policy = Policy { recall: RecallPolicy::Whitelist(vec![UserId(7)]), ..Policy::default() };
        assert_eq!(b.decide_policy(OrgId(3), UserId(7), &policy, &l, T), Err(OrgError::NotAdmin { user: UserId(7) }));
        assert_eq!(b.decide_policy(OrgId(9), UserId(100), &policy, &l, T), Err(OrgError::UnknownOrg));
        let set = b.decide_policy(OrgId(3), UserId(101), &policy, &l, T).unwrap();
        b.apply(&set).unwrap();
        let attached = b.decide_attach(OrgId(3), GroupId(7), UserId(100), &l, T).unwrap().unwrap();
        b.apply(&attached).unwrap();
        assert_eq!(b.decide_attach(OrgId(3), GroupId(7), UserId(100), &l, T), Ok(None));
        let spec = NewOrg { admins: vec![UserId(200)], name: "b".into() };
        b.apply(&b.decide_create(OrgId(4), &spec, &l, T).unwrap().unwrap()).unwrap();
        let taken = OrgError::GroupTaken { group: GroupId(7), org: OrgId(3) };
        assert_eq!(b.decide_attach(OrgId(4), GroupId(7), UserId(200), &l, T), Err(taken));
        let view = b.view(OrgId(3)).unwrap();
        assert_eq!((view.groups, view.policy), (vec![GroupId(7)], policy));
    }

    #[test]
    fn recall_needs_an_org_group_an_admin_the_switch_and_the_whitelist_in_that_order() {
        let mut b = book();
        let l = Limits::default();
        assert_eq!(b.check_recall(GroupId(7), UserId(7), UserId(100)), Err(RecallError::NotOrgPacket));
        b.apply(&b.decide_attach(OrgId(3), GroupId(7), UserId(100), &l, T).unwrap().unwrap()).unwrap();
        assert_eq!(b.check_recall(GroupId(7), UserId(7), UserId(7)), Err(RecallError::NotAdmin { user: UserId(7) }));
        assert_eq!(b.check_recall(GroupId(7), UserId(7), UserId(100)), Err(RecallError::RecallDisabled));
        let policy = Policy { recall: RecallPolicy::Whitelist(vec![UserId(7)]), ..Policy::default() };
        b.apply(&b.decide_policy(OrgId(3), UserId(100), &policy, &l, T).unwrap()).unwrap();
        assert_eq!(
            b.check_recall(GroupId(7), UserId(8), UserId(100)),
            Err(RecallError::NotWhitelisted { sender: UserId(8) })
        );
        assert_eq!(b.check_recall(GroupId(7), UserId(7), UserId(101)), Ok(OrgId(3)));
        // Its records rebuild the same book.
        let mut rebuilt = OrgBook::default();
        b.records().iter().for_each(|r| rebuilt.apply(r).unwrap());
        assert_eq!(rebuilt.view(OrgId(3)), b.view(OrgId(3)));
        assert_eq!(rebuilt.check_recall(GroupId(7), UserId(7), UserId(101)), Ok(OrgId(3)));
    }
}
