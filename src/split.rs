//! How a packet's total becomes shares: validation at send time and the lucky draw at grab
//! time. Pure functions over plain data, no runtime.
//!
//! # The lucky draw ("double mean")
//!
//! With `r` fen and `k` shares left, a grab draws uniformly from `[1, 2r/k]` (integer
//! division), then clamps so the `k - 1` shares after it can still each get at least 1 fen and
//! at most the cap: the share lies in `[max(1, r - (k-1)·cap), min(cap, r - (k-1))]`. The last
//! share takes the rest. The random stream is ChaCha8 seeded per packet with a recorded `u64`,
//! and the uniform draw is this module's own rejection sampler, so that the shares of a packet
//! can be re-derived from its seed by any later version of hongbao.
//!
//! The double mean favours later grabbers: the spread of a share grows with its position, and
//! at 10 shares the last grabber is the best luck more often than a middle one.
//!
//! # The shuffled draw (line cutting, then a seeded order)
//!
//! [`Draw::Shuffled`] decides every share when the packet is sent: the total less one fen per
//! share is cut at `k - 1` uniform points (line cutting), each piece plus one fen is a share;
//! a piece past the cap gives its excess to pieces with room, in a seeded random order; then
//! the shares are handed out in a seeded random order (Fisher–Yates). Because the order is a
//! uniform random permutation, every grab position has the same distribution of shares and
//! the same chance of the best luck. The same ChaCha8 stream and rejection sampler as the
//! double mean: [`shuffled_shares`] re-derives the shares from the packet's seed.
//!
//! # Invariants
//!
//! A packet that passed [`validate`] always has `k ≤ r ≤ k·cap` between grabs, so the clamp
//! range is never empty; [`draw`] asserts it. A shuffled packet's shares each lie in
//! `[1, cap]` and sum to the total; [`shuffled_shares`] asserts it.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use crate::limits::Limits;
use crate::money::{Amount, UserId};

/// How a lucky packet's shares are drawn. Recorded with the packet, so its shares re-derive
/// from its seed whatever the engine's default becomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Draw {
    /// WeChat's rule, at grab time: uniform in `[1, 2·remaining/left]`, clamped. Later
    /// grabbers get a wider spread and more often the best luck.
    #[default]
    DoubleMean,
    /// Line cutting at send, then a seeded random order: every grab position has the same
    /// distribution.
    Shuffled,
}

/// How a packet's total is divided.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Split {
    /// 拼手气: `total` split into `shares` random shares, by the rule `draw`.
    Lucky {
        /// The packet's total.
        total: Amount,
        /// How many members can win a share.
        shares: u32,
        /// The draw rule (the double mean unless asked otherwise).
        #[cfg_attr(feature = "serde", serde(default))]
        draw: Draw,
    },
    /// 普通: `shares` shares of `each`.
    Fixed {
        /// Every share's amount.
        each: Amount,
        /// How many members can win a share.
        shares: u32,
    },
    /// 专属: one share for one named recipient.
    Exclusive {
        /// The only member who may grab it.
        to: UserId,
        /// The share.
        amount: Amount,
    },
}

impl Split {
    /// A lucky split of `total` into `shares` shares by the double mean (WeChat's rule).
    pub fn lucky(total: Amount, shares: u32) -> Split {
        Split::Lucky { total, shares, draw: Draw::DoubleMean }
    }

    /// A lucky split of `total` into `shares` shares, cut at send and handed out in a seeded
    /// random order: fair to every grab position.
    pub fn shuffled(total: Amount, shares: u32) -> Split {
        Split::Lucky { total, shares, draw: Draw::Shuffled }
    }

    /// The number of shares.
    pub fn shares(&self) -> u32 {
        match *self {
            Split::Lucky { shares, .. } | Split::Fixed { shares, .. } => shares,
            Split::Exclusive { .. } => 1,
        }
    }

    /// The packet's total, or `None` if a fixed split's total overflows.
    pub fn total(&self) -> Option<Amount> {
        match *self {
            Split::Lucky { total, .. } => Some(total),
            Split::Fixed { each, shares } => each.as_fen().checked_mul(u64::from(shares)).map(Amount::fen),
            Split::Exclusive { amount, .. } => Some(amount),
        }
    }
}

/// Why a split cannot be sent.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum InvalidSplit {
    /// A packet needs at least one share.
    #[error("a packet needs at least one share")]
    ZeroShares,
    /// More shares than `shares_per_packet_max`.
    #[error("{shares} shares is more than the limit of {max}")]
    TooManyShares {
        /// Shares asked for.
        shares: u32,
        /// The limit.
        max: u32,
    },
    /// A zero total or share.
    #[error("the amount is zero")]
    Zero,
    /// The total cannot give every share at least 1 fen.
    #[error("{total} cannot give each of {shares} shares at least 0.01")]
    ShareBelowOneFen {
        /// The total.
        total: Amount,
        /// The shares.
        shares: u32,
    },
    /// Some share would have to exceed the per-share cap.
    #[error("a share would exceed the per-share cap of {cap}")]
    ShareAboveCap {
        /// The cap.
        cap: Amount,
    },
    /// The total exceeds the packet total cap.
    #[error("the total exceeds the packet cap of {cap}")]
    TotalAboveCap {
        /// The cap.
        cap: Amount,
    },
}

/// Checks a split against the limits and returns `(total, shares)`.
///
/// # Errors
///
/// [`InvalidSplit`] for zero shares or amounts, too many shares, a total that cannot give
/// every share between 1 fen and the cap, or a total above the packet cap.
pub fn validate(split: &Split, limits: &Limits) -> Result<(Amount, u32), InvalidSplit> {
    let shares = split.shares();
    if shares == 0 {
        return Err(InvalidSplit::ZeroShares);
    }
    if shares > limits.shares_per_packet_max {
        return Err(InvalidSplit::TooManyShares { shares, max: limits.shares_per_packet_max });
    }
    let total_cap = Amount::fen(limits.packet_total_fen_max);
    let total = split.total().ok_or(InvalidSplit::TotalAboveCap { cap: total_cap })?;
    check_servable(split, limits.share_fen_max)?;
    if total > total_cap {
        return Err(InvalidSplit::TotalAboveCap { cap: total_cap });
    }
    Ok((total, shares))
}

/// Checks that a split can be drawn under the per-share cap `cap_fen`: at least one share,
/// every share between 1 fen and the cap, the shares summing to the total. What every packet,
/// new or replayed, must satisfy before a share is drawn ([`draw`] relies on it).
///
/// # Errors
///
/// [`InvalidSplit`] naming the first bound that does not hold.
pub fn check_servable(split: &Split, cap_fen: u64) -> Result<(), InvalidSplit> {
    let shares = split.shares();
    if shares == 0 {
        return Err(InvalidSplit::ZeroShares);
    }
    // Far beyond any balance the limits allow; it keeps `2 × remaining` in the draw exact.
    let bound = Amount::fen(1 << 62);
    let total = split.total().filter(|&t| t <= bound).ok_or(InvalidSplit::TotalAboveCap { cap: bound })?;
    if total.is_zero() {
        return Err(InvalidSplit::Zero);
    }
    let cap = Amount::fen(cap_fen);
    match *split {
        Split::Lucky { total, shares, .. } => {
            if total.as_fen() < u64::from(shares) {
                return Err(InvalidSplit::ShareBelowOneFen { total, shares });
            }
            if total.as_fen() > cap_fen.saturating_mul(u64::from(shares)) {
                return Err(InvalidSplit::ShareAboveCap { cap });
            }
        }
        Split::Fixed { each, .. } | Split::Exclusive { amount: each, .. } => {
            if each > cap {
                return Err(InvalidSplit::ShareAboveCap { cap });
            }
        }
    }
    Ok(())
}

/// The random stream of a packet.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A uniform draw from `[lo, hi]` by rejection, stable across versions of `rand`.
fn uniform(rng: &mut impl RngCore, lo: u64, hi: u64) -> u64 {
    debug_assert!(lo <= hi);
    let span = hi - lo + 1; // hi - lo < u64::MAX here: amounts are far below it.
                            // Reject the top partial block of the u64 range so every value is equally likely.
    let zone = u64::MAX - (u64::MAX % span + 1) % span;
    loop {
        let x = rng.next_u64();
        if x <= zone {
            return lo + x % span;
        }
    }
}

/// Draws the next lucky share from `remaining_fen` with `shares_left` shares left.
///
/// # Panics
///
/// Panics if the invariant `shares_left ≤ remaining_fen ≤ shares_left·cap_fen` does not hold:
/// that is a bug in the caller, never an input error.
pub fn draw(rng: &mut impl RngCore, remaining_fen: u64, shares_left: u32, cap_fen: u64) -> u64 {
    let k = u64::from(shares_left);
    assert!(
        k >= 1 && remaining_fen >= k && remaining_fen <= k.saturating_mul(cap_fen),
        "lucky invariant broken: {remaining_fen} fen, {k} shares, cap {cap_fen}"
    );
    if k == 1 {
        return remaining_fen;
    }
    let mean_twice = 2 * remaining_fen / k;
    let drawn = uniform(rng, 1, mean_twice);
    let lo = remaining_fen.saturating_sub((k - 1).saturating_mul(cap_fen)).max(1);
    let hi = cap_fen.min(remaining_fen - (k - 1));
    drawn.clamp(lo, hi)
}

/// Every share of a shuffled lucky packet in grab order, re-derived from its seed (see the
/// module's documentation).
///
/// # Panics
///
/// If `shares ≤ total_fen ≤ shares·cap_fen` does not hold: [`check_servable`] refuses such a
/// split before anything draws it.
pub fn shuffled_shares(total_fen: u64, shares: u32, cap_fen: u64, seed: u64) -> Vec<u64> {
    let k = u64::from(shares);
    assert!(
        k >= 1 && total_fen >= k && total_fen <= k.saturating_mul(cap_fen),
        "shuffled split out of bounds: {total_fen} fen, {k} shares, cap {cap_fen}"
    );
    let mut rng = rng(seed);
    // Line cutting: `k - 1` uniform points on [0, total - k] cut it into `k` pieces.
    let free = total_fen - k;
    let mut cuts: Vec<u64> = (1..k).map(|_| uniform(&mut rng, 0, free)).collect();
    cuts.sort_unstable();
    let mut pieces: Vec<u64> = Vec::with_capacity(shares as usize);
    let mut last = 0;
    for &c in cuts.iter().chain(std::iter::once(&free)) {
        pieces.push(c - last);
        last = c;
    }
    // A piece past the cap (less the fen every share has) gives its excess to pieces with
    // room, visited in a seeded random order; the bounds guarantee there is room enough.
    let room = cap_fen - 1;
    let mut excess: u64 = pieces.iter_mut().map(|p| std::mem::replace(p, (*p).min(room)).saturating_sub(room)).sum();
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    shuffle(&mut rng, &mut order);
    for i in order {
        if excess == 0 {
            break;
        }
        let give = excess.min(room - pieces[i]);
        pieces[i] += give;
        excess -= give;
    }
    assert_eq!(excess, 0, "the cap leaves room for the excess");
    let mut shares_fen: Vec<u64> = pieces.into_iter().map(|p| p + 1).collect();
    // The order the shares are handed out in: a uniform permutation.
    shuffle(&mut rng, &mut shares_fen);
    debug_assert_eq!(shares_fen.iter().sum::<u64>(), total_fen);
    shares_fen
}

/// A seeded Fisher–Yates shuffle with this module's sampler.
fn shuffle<T>(rng: &mut impl RngCore, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = uniform(rng, 0, i as u64) as usize;
        items.swap(i, j);
    }
}

/// Every share of a lucky packet in grab order, re-derived from its seed, by its draw rule.
pub fn shares_of(total_fen: u64, shares: u32, cap_fen: u64, seed: u64, draw: Draw) -> Vec<u64> {
    match draw {
        Draw::DoubleMean => lucky_shares(total_fen, shares, cap_fen, seed),
        Draw::Shuffled => shuffled_shares(total_fen, shares, cap_fen, seed),
    }
}

/// Every share of a double-mean lucky packet in grab order, re-derived from its seed.
pub fn lucky_shares(total_fen: u64, shares: u32, cap_fen: u64, seed: u64) -> Vec<u64> {
    let mut rng = rng(seed);
    let mut remaining = total_fen;
    (0..shares)
        .map(|i| {
            let share = draw(&mut rng, remaining, shares - i, cap_fen);
            remaining -= share;
            share
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    const CAP: u64 = 20_000;

    fn check(total: u64, shares: u32, cap: u64, seed: u64) {
        for draw in [Draw::DoubleMean, Draw::Shuffled] {
            let got = shares_of(total, shares, cap, seed, draw);
            let ctx = format!("{draw:?} total={total} shares={shares} cap={cap} seed={seed}");
            assert_eq!(got.len(), shares as usize, "{ctx}");
            assert_eq!(got.iter().sum::<u64>(), total, "{ctx}");
            assert!(got.iter().all(|&s| (1..=cap).contains(&s)), "{ctx}: {got:?}");
            assert_eq!(got, shares_of(total, shares, cap, seed, draw), "{ctx}: not reproducible");
        }
    }

    #[test]
    fn random_splits_sum_exactly_within_bounds() {
        let base_seed = 0x5EED_0001;
        let mut gen = rng(base_seed);
        for case in 0..2_000 {
            let shares = gen.random_range(1..=1_000u32);
            let cap = if case % 3 == 0 { gen.random_range(1..=50u64) } else { CAP };
            let total = gen.random_range(u64::from(shares)..=u64::from(shares) * cap);
            let seed = gen.next_u64();
            check(total, shares, cap, seed);
        }
    }

    #[test]
    fn edge_cases() {
        check(1, 1, CAP, 1); // one share of 1 fen
        check(CAP, 1, CAP, 2); // one share at the cap
        check(1_000, 1_000, CAP, 3); // shares == total in fen: every share is 1 fen
        assert!(lucky_shares(1_000, 1_000, CAP, 3).iter().all(|&s| s == 1));
        check(CAP * 1_000, 1_000, CAP, 4); // cap-tight: every share is the cap
        assert!(lucky_shares(CAP * 1_000, 1_000, CAP, 4).iter().all(|&s| s == CAP));
        check(CAP * 1_000 - 1, 1_000, CAP, 5); // one fen below cap-tight
        check(1_001, 1_000, CAP, 6); // one fen above the floor
        check(10_000 * 100, 10_000, CAP, 7); // the maximum share count
    }

    #[test]
    fn same_seed_same_shares_other_seed_other_shares() {
        assert_eq!(lucky_shares(10_000, 100, CAP, 42), lucky_shares(10_000, 100, CAP, 42));
        assert_ne!(lucky_shares(10_000, 100, CAP, 42), lucky_shares(10_000, 100, CAP, 43));
    }

    #[test]
    fn draws_are_stable_across_versions() {
        // Pinned so that a change of the draw (which would break re-deriving shares from
        // journals already written) fails here first.
        assert_eq!(lucky_shares(1_000, 5, CAP, 7), PINNED.to_vec());
    }
    const PINNED: [u64; 5] = [236, 247, 2, 479, 36];

    #[test]
    fn shuffled_draws_are_stable_across_versions() {
        assert_eq!(shuffled_shares(1_000, 5, CAP, 7), PINNED_SHUFFLED.to_vec());
    }
    const PINNED_SHUFFLED: [u64; 5] = [22, 91, 226, 216, 445];

    /// Every position of a shuffled packet has the same distribution: its mean share and its
    /// chance of the best luck are the same, where the double mean's are not.
    #[test]
    fn the_shuffled_draw_is_fair_to_every_position() {
        let (packets, shares, total) = (20_000u64, 10u32, 1_000u64);
        let stats = |draw| {
            let (mut sums, mut best) = (vec![0u64; shares as usize], vec![0u64; shares as usize]);
            for seed in 0..packets {
                let got = shares_of(total, shares, CAP, seed, draw);
                got.iter().enumerate().for_each(|(i, s)| sums[i] += s);
                // The engine's best luck: the largest share, the earlier on a tie.
                let max = *got.iter().max().unwrap();
                best[got.iter().position(|&s| s == max).unwrap()] += 1;
            }
            let means: Vec<f64> = sums.iter().map(|&s| s as f64 / packets as f64).collect();
            let best: Vec<f64> = best.iter().map(|&b| b as f64 / packets as f64).collect();
            (means, best)
        };
        let (means, best) = stats(Draw::Shuffled);
        // Each mean is 100 fen; with 20 000 packets its standard error is about 0.7 fen.
        assert!(means.iter().all(|m| (m - 100.0).abs() < 4.0), "{means:?}");
        // Ties go to the earlier position, so the first has a little more than 1/10.
        assert!(best.iter().all(|&b| (0.08..0.13).contains(&b)), "{best:?}");
        let (_, best) = stats(Draw::DoubleMean);
        assert!(best[9] > best[4] + 0.02, "the double mean favours the last grabber: {best:?}");
    }

    #[test]
    fn double_mean_bounds_each_draw() {
        let mut gen = rng(9);
        for _ in 0..10_000 {
            let s = draw(&mut gen, 10_000, 100, CAP);
            assert!((1..=200).contains(&s), "{s}");
        }
    }

    #[test]
    fn uniform_covers_its_range() {
        let mut gen = rng(11);
        let mut seen = [0u32; 6];
        for _ in 0..6_000 {
            seen[(uniform(&mut gen, 5, 10) - 5) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (850..=1150).contains(&c)), "{seen:?}");
    }

    fn limits() -> Limits {
        Limits { shares_per_packet_max: 1_000, ..Limits::default() }
    }

    #[test]
    fn validation_accepts_good_splits() {
        let l = limits();
        assert_eq!(validate(&Split::lucky(Amount::yuan(100), 100), &l), Ok((Amount::yuan(100), 100)));
        assert_eq!(validate(&Split::shuffled(Amount::yuan(100), 100), &l), Ok((Amount::yuan(100), 100)));
        assert_eq!(validate(&Split::Fixed { each: Amount::fen(88), shares: 10 }, &l), Ok((Amount::fen(880), 10)));
        assert_eq!(
            validate(&Split::Exclusive { to: UserId(3), amount: Amount::yuan(200) }, &l),
            Ok((Amount::yuan(200), 1))
        );
    }

    #[test]
    fn validation_refuses_bad_splits() {
        use InvalidSplit::*;
        let l = limits();
        let cap = Amount::fen(l.share_fen_max);
        let lucky = |fen, shares| Split::lucky(Amount::fen(fen), shares);
        assert_eq!(validate(&lucky(100, 0), &l), Err(ZeroShares));
        assert_eq!(validate(&lucky(100_000, 1_001), &l), Err(TooManyShares { shares: 1_001, max: 1_000 }));
        assert_eq!(validate(&lucky(0, 1), &l), Err(Zero));
        assert_eq!(validate(&lucky(99, 100), &l), Err(ShareBelowOneFen { total: Amount::fen(99), shares: 100 }));
        assert_eq!(validate(&lucky(20_001, 1), &l), Err(ShareAboveCap { cap }));
        assert_eq!(validate(&Split::Fixed { each: Amount::fen(20_001), shares: 2 }, &l), Err(ShareAboveCap { cap }));
        assert_eq!(validate(&Split::Fixed { each: Amount::ZERO, shares: 2 }, &l), Err(Zero));
        assert_eq!(
            validate(&Split::Exclusive { to: UserId(1), amount: Amount::fen(20_001) }, &l),
            Err(ShareAboveCap { cap })
        );
        let tight = Limits { packet_total_fen_max: 50_000, ..limits() };
        assert_eq!(validate(&lucky(50_001, 10), &tight), Err(TotalAboveCap { cap: Amount::fen(50_000) }));
        assert_eq!(
            validate(&Split::Fixed { each: Amount::fen(u64::MAX / 2), shares: 3 }, &l),
            Err(TotalAboveCap { cap: Amount::fen(l.packet_total_fen_max) })
        );
    }
}
