//! Every bound in hongbao, in one place, with its unit last.
//!
//! A bound that is exceeded produces a typed error naming the bound; nothing queues without
//! limit and nothing is dropped silently. [`Limits::validate`] checks the relations between
//! the bounds once, when the engine starts.

use thiserror::Error;

/// The largest record the journal format frames, in bytes; every limit that sizes a record (a
/// greeting, a roster) is checked against it, so no record is acknowledged that a restart
/// could not read.
pub const RECORD_BYTES_MAX: usize = 64 << 20;

/// The largest mailbox or event buffer the runtimes can allocate without trouble (actix and
/// tokio refuse, or reserve memory for, larger ones).
pub const QUEUE_LEN_MAX: usize = 1 << 24;

/// The bytes of a send record besides its greeting (tag, ids, seed, times, cap, split, length).
const SEND_RECORD_FIXED_BYTES: usize = 1 + 7 * 8 + 1 + 2 * 8 + 4;

/// The bytes of a roster record besides its members (tag, group, count).
const ROSTER_RECORD_FIXED_BYTES: usize = 1 + 8 + 4;

/// The engine's bounds. `Limits::default()` holds the product defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Seconds from sending until the unclaimed remainder is refunded (default 86 400: 24 h).
    pub expiry_secs: u64,
    /// Largest single share, in fen (default 20 000: 200 yuan).
    pub share_fen_max: u64,
    /// Largest packet total, in fen (default 20 000 000: 200 000 yuan).
    pub packet_total_fen_max: u64,
    /// Most shares in one packet (default 10 000).
    pub shares_per_packet_max: u32,
    /// Most members in one group roster (default 100 000).
    pub members_per_group_max: usize,
    /// Most groups with a roster (default 1 000 000).
    pub groups_max: usize,
    /// Longest greeting, in UTF-8 bytes (default 256).
    pub greeting_bytes_max: usize,
    /// Largest wallet balance, in fen (default 10¹²: ten billion yuan). A deposit that would
    /// pass it is refused; it also keeps every sum in the engine far from `u64` overflow.
    pub balance_fen_max: u64,
    /// Most packets open at once, across the engine (default 4 000 000).
    pub open_packets_max: usize,
    /// Requests a packet actor's mailbox holds before a grab is answered `Busy` (default 4 096).
    pub packet_mailbox_capacity: usize,
    /// Requests a wallet shard's mailbox holds before a request is answered `Busy`
    /// (default 16 384). Credits from packets are never refused: they are bounded by the
    /// shares of open packets, not by this number.
    pub wallet_mailbox_capacity: usize,
    /// Most event subscribers at once (default 1 024).
    pub subscribers_max: usize,
    /// Events buffered for a slow subscriber before it is told it lagged (default 65 536).
    pub event_buffer_len: usize,
    /// Seconds a closed (sold-out or expired) packet is kept after it closed, answering repeat
    /// grabs and queries, before it is dropped from memory and from later snapshots (default
    /// 2 592 000: 30 days, the query window of a payment platform's red packet records).
    pub closed_retention_secs: u64,
    /// Seconds an applied operation id is remembered, so that a retry is applied once
    /// (default 604 800: 7 days). After that the id may be used again.
    pub op_retention_secs: u64,
    /// Seconds between sweeps that retire closed packets and operation ids past their
    /// retention (default 3 600).
    pub retire_interval_secs: u64,
    /// Largest single transfer, in fen (default 5 000 000: 50 000 yuan).
    pub transfer_fen_max: u64,
    /// Longest delay a sender may give a transfer, in seconds (default 86 400: 24 h; the
    /// product offers 2 h and 24 h).
    pub transfer_delay_secs_max: u64,
    /// Seconds an arrived transfer waits for its receiver before it returns to the sender
    /// (default 86 400: 24 h).
    pub transfer_accept_secs: u64,
    /// Longest transfer note, in UTF-8 bytes (default 256).
    pub transfer_note_bytes_max: usize,
    /// Most transfers not yet settled, across the engine (default 4 000 000).
    pub pending_transfers_max: usize,
    /// Seconds a settled transfer is kept after it settled, answering repeats and queries,
    /// before it is dropped from memory and from later snapshots (default 2 592 000: 30 days).
    pub settled_transfer_retention_secs: u64,
    /// Most a user may send in one day, in fen: packets and transfers together, counted when
    /// sent (a refund does not give the allowance back) (default 20 000 000: 200 000 yuan).
    pub daily_sent_fen_max: u64,
    /// Most packets a user may send in one day (default 10 000).
    pub daily_packets_max: u32,
    /// Where the day starts for the daily caps: seconds east of UTC (default 28 800: UTC+8),
    /// by the engine's clock. Each send records its day, so a later change of this setting
    /// changes no past decision.
    pub day_utc_offset_secs: i32,
    /// Longest cooling-off window a user may set, in seconds (default 86 400: 24 h).
    pub cooling_off_secs_max: u64,
    /// Most orgs (default 100 000).
    pub orgs_max: usize,
    /// Most admins of one org (default 100).
    pub org_admins_max: usize,
    /// Most senders on an org's recall whitelist (default 10 000).
    pub org_whitelist_max: usize,
    /// Most groups attached to one org (default 10 000).
    pub org_groups_max: usize,
    /// Longest org name, and longest reason an admin gives, in UTF-8 bytes (default 256).
    pub org_text_bytes_max: usize,
    /// Seconds an org's operation log keeps an entry (default 15 552 000: 180 days).
    pub op_log_retention_secs: u64,
    /// Most entries one page of an operation log query returns (default 1 000).
    pub op_log_page_max: usize,
    /// Seconds a send waits for its approver before it is rejected, refunding the sender
    /// (default 86 400: 24 h).
    pub approval_secs: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            expiry_secs: 86_400,
            share_fen_max: 20_000,
            packet_total_fen_max: 20_000_000,
            shares_per_packet_max: 10_000,
            members_per_group_max: 100_000,
            groups_max: 1_000_000,
            greeting_bytes_max: 256,
            balance_fen_max: 1_000_000_000_000,
            open_packets_max: 4_000_000,
            packet_mailbox_capacity: 4_096,
            wallet_mailbox_capacity: 16_384,
            subscribers_max: 1_024,
            event_buffer_len: 65_536,
            closed_retention_secs: 30 * 86_400,
            op_retention_secs: 7 * 86_400,
            retire_interval_secs: 3_600,
            transfer_fen_max: 5_000_000,
            transfer_delay_secs_max: 86_400,
            transfer_accept_secs: 86_400,
            transfer_note_bytes_max: 256,
            pending_transfers_max: 4_000_000,
            settled_transfer_retention_secs: 30 * 86_400,
            daily_sent_fen_max: 20_000_000,
            daily_packets_max: 10_000,
            day_utc_offset_secs: 8 * 3_600,
            cooling_off_secs_max: 86_400,
            orgs_max: 100_000,
            org_admins_max: 100,
            org_whitelist_max: 10_000,
            org_groups_max: 10_000,
            org_text_bytes_max: 256,
            op_log_retention_secs: 180 * 86_400,
            op_log_page_max: 1_000,
            approval_secs: 86_400,
        }
    }
}

/// A configuration whose bounds contradict each other.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("invalid limits: {0}")]
pub struct InvalidLimits(pub String);

impl Limits {
    /// Checks the relations between the bounds.
    ///
    /// # Errors
    ///
    /// [`InvalidLimits`] naming the first relation that does not hold.
    pub fn validate(&self) -> Result<(), InvalidLimits> {
        let fail = |why: &str| Err(InvalidLimits(why.to_string()));
        if self.expiry_secs == 0 {
            return fail("expiry_secs must be at least 1");
        }
        if self.share_fen_max == 0 {
            return fail("share_fen_max must be at least 1 fen");
        }
        if self.packet_total_fen_max < self.share_fen_max {
            return fail("packet_total_fen_max must be at least share_fen_max");
        }
        if self.shares_per_packet_max == 0 {
            return fail("shares_per_packet_max must be at least 1");
        }
        if self.balance_fen_max < self.packet_total_fen_max {
            return fail("balance_fen_max must be at least packet_total_fen_max");
        }
        // Sums of balances and escrow are computed in u64; this bound keeps them exact for
        // any number of wallets the process could hold.
        if self.balance_fen_max > u64::MAX >> 24 {
            return fail("balance_fen_max must be below 2^40 fen so that sums cannot overflow");
        }
        if self.packet_mailbox_capacity == 0 || self.wallet_mailbox_capacity == 0 {
            return fail("mailbox capacities must be at least 1");
        }
        if self.members_per_group_max == 0 || self.groups_max == 0 || self.open_packets_max == 0 {
            return fail("members_per_group_max, groups_max and open_packets_max must be at least 1");
        }
        if self.event_buffer_len == 0 {
            return fail("event_buffer_len must be at least 1");
        }
        if [self.packet_mailbox_capacity, self.wallet_mailbox_capacity, self.event_buffer_len]
            .iter()
            .any(|&len| len > QUEUE_LEN_MAX)
        {
            return fail("mailbox capacities and event_buffer_len must be at most 2^24");
        }
        if self.subscribers_max == 0 {
            return fail("subscribers_max must be at least 1");
        }
        if self.retire_interval_secs == 0 {
            return fail("retire_interval_secs must be at least 1");
        }
        if self.transfer_fen_max == 0 {
            return fail("transfer_fen_max must be at least 1 fen");
        }
        if self.transfer_accept_secs == 0 || self.pending_transfers_max == 0 {
            return fail("transfer_accept_secs and pending_transfers_max must be at least 1");
        }
        if self.daily_sent_fen_max == 0 || self.daily_packets_max == 0 {
            return fail("daily_sent_fen_max and daily_packets_max must be at least 1");
        }
        if self.day_utc_offset_secs.unsigned_abs() >= 86_400 {
            return fail("day_utc_offset_secs must be less than a day either way");
        }
        // Deadlines are milliseconds in a u64 and only saturate: every window must be far
        // below that, so that a deadline is never "forever" by accident.
        let windows =
            [self.transfer_delay_secs_max, self.transfer_accept_secs, self.cooling_off_secs_max, self.approval_secs];
        if windows.iter().any(|&secs| secs > 100 * 365 * 86_400) {
            return fail("transfer and cooling-off windows must be at most 100 years");
        }
        if self.transfer_note_bytes_max > RECORD_BYTES_MAX - SEND_RECORD_FIXED_BYTES {
            return fail(
                "transfer_note_bytes_max must leave a transfer record within the journal's 64 MiB record bound",
            );
        }
        if self.op_log_page_max == 0 || self.approval_secs == 0 {
            return fail("op_log_page_max and approval_secs must be at least 1");
        }
        if self.orgs_max == 0 || self.org_admins_max == 0 {
            return fail("orgs_max and org_admins_max must be at least 1");
        }
        let org_ids = self.org_admins_max.max(self.org_whitelist_max);
        if org_ids > (RECORD_BYTES_MAX - 64) / 8 || self.org_text_bytes_max > RECORD_BYTES_MAX - 64 - org_ids * 8 {
            return fail("org_admins_max, org_whitelist_max and org_text_bytes_max must leave an org record within the journal's 64 MiB record bound");
        }
        // Every record the limits allow must fit the journal's frame.
        if self.greeting_bytes_max > RECORD_BYTES_MAX - SEND_RECORD_FIXED_BYTES {
            return fail("greeting_bytes_max must leave a send record within the journal's 64 MiB record bound");
        }
        if self.members_per_group_max > (RECORD_BYTES_MAX - ROSTER_RECORD_FIXED_BYTES) / 8 {
            return fail("members_per_group_max must leave a roster record within the journal's 64 MiB record bound");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_product() {
        let l = Limits::default();
        l.validate().unwrap();
        assert_eq!(l.expiry_secs, 24 * 60 * 60);
        assert_eq!(l.share_fen_max, 200 * 100);
        assert!(l.shares_per_packet_max >= 1_000);
    }

    #[test]
    fn contradictions_are_refused() {
        let l = Limits { packet_total_fen_max: 10, share_fen_max: 20, ..Limits::default() };
        assert!(l.validate().is_err());
        let l = Limits { packet_mailbox_capacity: 0, ..Limits::default() };
        assert!(l.validate().is_err());
        let l = Limits { balance_fen_max: u64::MAX, ..Limits::default() };
        assert!(l.validate().is_err());
        for l in [
            Limits { event_buffer_len: usize::MAX, ..Limits::default() },
            Limits { packet_mailbox_capacity: usize::MAX, ..Limits::default() },
            Limits { wallet_mailbox_capacity: QUEUE_LEN_MAX + 1, ..Limits::default() },
            Limits { greeting_bytes_max: RECORD_BYTES_MAX, ..Limits::default() },
            Limits { members_per_group_max: RECORD_BYTES_MAX / 8, ..Limits::default() },
            Limits { subscribers_max: 0, ..Limits::default() },
        ] {
            assert!(l.validate().is_err(), "{l:?}");
        }
        // The largest values that still fit are accepted.
        let l = Limits { greeting_bytes_max: RECORD_BYTES_MAX - SEND_RECORD_FIXED_BYTES, ..Limits::default() };
        assert!(l.validate().is_ok());
        // Every share count the type holds can be served: the sums are saturating.
        let l = Limits { shares_per_packet_max: u32::MAX, ..Limits::default() };
        assert!(l.validate().is_ok());
    }
}
