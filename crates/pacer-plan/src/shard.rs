//! Splitting a plan across workers exactly (k6's execution segments, with integer weights).
//!
//! Every executor is cut along a sequence of *positions*: arrival `k` of the global schedule
//! (arrival-rate executors) or global VU number `v` at position `v - 1` (VU executors). The
//! positions are dealt to the workers by a fixed, periodic *stripe* over their weights: in
//! each period of `sum(weights)` positions worker `i` owns exactly `weights[i]` of them,
//! spread so that every prefix of positions is within one of its share (Tijdeman's
//! earliest-deadline schedule, see [`stripe`]). So:
//!
//! - the shards of one split partition the positions: together they run every arrival and
//!   every VU of the plan exactly once, at the global times, with global VU numbers;
//! - any prefix of positions is shared in proportion to the weights, within one position;
//! - counts that are not positions (shared iterations, `maxInFlight`) are split by the
//!   largest-remainder method, so they too sum exactly to the plan's.
//!
//! Everything here is a pure function of the weights and the plan: a controller and its
//! workers compute the same split without talking about it.

use crate::model::Executor;
use crate::ramp::RampSchedule;

/// Most workers one split may have.
pub const MAX_WORKERS: u32 = 10_000;
/// Largest sum of weights (the length of one stripe period).
pub const MAX_TOTAL_WEIGHT: u64 = 1_000_000;

/// Why a split cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("weights: a split needs at least one worker")]
    NoWorkers,
    #[error("weights: at most {MAX_WORKERS} workers, got {0}")]
    TooManyWorkers(usize),
    #[error("weights[{0}]: must be at least 1")]
    ZeroWeight(usize),
    #[error("weights: the sum must be at most {MAX_TOTAL_WEIGHT}, got {0}")]
    TotalTooLarge(u64),
    #[error("index: {index} is not below the number of workers {count}")]
    IndexOutOfRange { index: u32, count: u32 },
}

/// One worker's part of a plan: worker `index` of `weights.len()` workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    index: u32,
    weights: Vec<u32>,
    /// Length of one stripe period (`sum(weights)`).
    period: u64,
    /// The positions of one period this shard owns, ascending.
    slots: Vec<u32>,
}

impl Default for Shard {
    fn default() -> Self {
        Self::whole()
    }
}

/// Which worker owns each position of one stripe period.
///
/// Tijdeman's solution of the "chairman assignment problem": with shares `λ_i = w_i / W`,
/// the `j`-th position of worker `i` (1-based) may be dealt at step `t` (1-based) only when
/// `t > (j - 1) / λ_i` (its release) and must be dealt by `t = ⌈j / λ_i⌉` (its deadline);
/// each step deals the released position with the earliest deadline (ties to the lower
/// index). Some position is always released (`Σ ⌈t λ_i⌉ ≥ t`) and earliest-deadline-first
/// meets every deadline, so after every step `t` each worker owns between `⌊t λ_i⌋` and
/// `⌈t λ_i⌉` positions: every prefix is shared within one position of its ideal. After `W`
/// steps each worker owns exactly `w_i`, so the pattern repeats with period `W`.
fn stripe(weights: &[u32]) -> Vec<u32> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    // Release and deadline steps of worker i's j-th position.
    let release = |i: usize, j: u64| (j - 1) * total / u64::from(weights[i]) + 1;
    let deadline = |i: usize, j: u64| (j * total).div_ceil(u64::from(weights[i]));
    // Positions not yet released, by release step; released ones, by deadline.
    let mut waiting: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
    let mut ready: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
    let mut next = vec![1u64; weights.len()];
    for i in 0..weights.len() {
        waiting.push(Reverse((release(i, 1), i as u32)));
    }
    let mut out = Vec::with_capacity(total as usize);
    for t in 1..=total {
        while let Some(&Reverse((r, i))) = waiting.peek() {
            if r > t {
                break;
            }
            waiting.pop();
            ready.push(Reverse((deadline(i as usize, next[i as usize]), i)));
        }
        // Never empty (see above); the fallback keeps the period a partition regardless.
        let Some(Reverse((_, i))) = ready.pop().or_else(|| waiting.pop()) else {
            break;
        };
        out.push(i);
        let iu = i as usize;
        next[iu] += 1;
        if next[iu] <= u64::from(weights[iu]) {
            waiting.push(Reverse((release(iu, next[iu]), i)));
        }
    }
    out
}

fn check_weights(weights: &[u32]) -> Result<u64, ShardError> {
    if weights.is_empty() {
        return Err(ShardError::NoWorkers);
    }
    if weights.len() > MAX_WORKERS as usize {
        return Err(ShardError::TooManyWorkers(weights.len()));
    }
    if let Some(i) = weights.iter().position(|&w| w == 0) {
        return Err(ShardError::ZeroWeight(i));
    }
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total > MAX_TOTAL_WEIGHT {
        return Err(ShardError::TotalTooLarge(total));
    }
    Ok(total)
}

/// Split `total` in proportion to `weights` so that the parts sum to `total` exactly: each
/// part is the floor of its quota, and the units left go to the largest remainders (ties to
/// the lower index). All-zero weights give all-zero parts (and `total` must then be 0 to be
/// exact; callers never do that).
pub fn largest_remainder(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut parts = Vec::with_capacity(weights.len());
    let mut rems = Vec::with_capacity(weights.len());
    let mut given: u64 = 0;
    for (i, &w) in weights.iter().enumerate() {
        let q = u128::from(total) * u128::from(w);
        let part = (q / sum) as u64;
        given += part;
        parts.push(part);
        rems.push((q % sum, i));
    }
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rems.iter().take((total - given) as usize) {
        parts[i] += 1;
    }
    parts
}

impl Shard {
    /// The whole plan: worker 0 of 1.
    pub fn whole() -> Self {
        Shard {
            index: 0,
            weights: vec![1],
            period: 1,
            slots: vec![0],
        }
    }

    /// Worker `index` of `weights.len()` workers with these weights.
    pub fn new(index: u32, weights: Vec<u32>) -> Result<Self, ShardError> {
        let period = check_weights(&weights)?;
        if index as usize >= weights.len() {
            return Err(ShardError::IndexOutOfRange {
                index,
                count: weights.len() as u32,
            });
        }
        let slots = stripe(&weights)
            .into_iter()
            .enumerate()
            .filter(|&(_, owner)| owner == index)
            .map(|(p, _)| p as u32)
            .collect();
        Ok(Shard {
            index,
            weights,
            period,
            slots,
        })
    }

    /// Worker `index` of `count` workers of equal weight.
    pub fn equal(index: u32, count: u32) -> Result<Self, ShardError> {
        Self::new(index, vec![1; count as usize])
    }

    /// Every shard of one split, in index order.
    pub fn all(weights: &[u32]) -> Result<Vec<Shard>, ShardError> {
        let period = check_weights(weights)?;
        let owners = stripe(weights);
        let mut slots = vec![Vec::new(); weights.len()];
        for (p, &owner) in owners.iter().enumerate() {
            slots[owner as usize].push(p as u32);
        }
        Ok(slots
            .into_iter()
            .enumerate()
            .map(|(i, slots)| Shard {
                index: i as u32,
                weights: weights.to_vec(),
                period,
                slots,
            })
            .collect())
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Number of workers in the split.
    pub fn count(&self) -> u32 {
        self.weights.len() as u32
    }

    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// One worker runs everything.
    pub fn is_whole(&self) -> bool {
        self.weights.len() == 1
    }

    /// Does this shard own position `p`?
    pub fn owns(&self, p: u64) -> bool {
        let slot = (p % self.period) as u32;
        self.slots.binary_search(&slot).is_ok()
    }

    /// How many of the positions `0..n` this shard owns.
    pub fn owned_below(&self, n: u64) -> u64 {
        let full = n / self.period;
        let rest = (n % self.period) as u32;
        let partial = self.slots.partition_point(|&s| s < rest) as u64;
        full * self.slots.len() as u64 + partial
    }

    /// The positions below `n` this shard owns, ascending.
    pub fn positions_below(&self, n: u64) -> impl Iterator<Item = u64> + '_ {
        let period = self.period;
        (0u64..)
            .take_while(move |c| c.saturating_mul(period) < n)
            .flat_map(move |c| self.slots.iter().map(move |&s| c * period + u64::from(s)))
            .take_while(move |&p| p < n)
    }

    /// The global VU numbers (1-based, of `1..=vus`) this shard runs.
    pub fn vus(&self, vus: u32) -> Vec<u32> {
        self.positions_below(u64::from(vus))
            .map(|p| p as u32 + 1)
            .collect()
    }

    /// This shard's part of `total` (largest remainder over the weights).
    pub fn share_of(&self, total: u64) -> u64 {
        let w: Vec<u64> = self.weights.iter().map(|&w| u64::from(w)).collect();
        largest_remainder(total, &w)[self.index as usize]
    }

    /// `maxInFlight` of an arrival-rate executor for this shard: the global value split by
    /// weight, at least 1 (a shard with arrivals must be able to run one).
    pub fn max_in_flight(&self, global: u32) -> u32 {
        if self.is_whole() {
            return global;
        }
        (self.share_of(u64::from(global)) as u32).max(1)
    }

    /// shared-iterations: `(first global iteration number, count)` for this shard. The
    /// iterations are split in proportion to each shard's VU count (largest remainder), so a
    /// shard without VUs gets none and the per-VU load is the one process's.
    pub fn shared_iterations(&self, iterations: u64, vus: u32) -> (u64, u64) {
        if self.is_whole() {
            return (0, iterations);
        }
        // Each shard's VU count: positions below `vus` per owner, from one stripe period.
        let owners = stripe(&self.weights);
        let n = u64::from(vus);
        let (full, rest) = (n / self.period, (n % self.period) as usize);
        let mut per_shard = vec![0u64; self.weights.len()];
        for (p, &owner) in owners.iter().enumerate() {
            per_shard[owner as usize] += full + u64::from(p < rest);
        }
        let parts = largest_remainder(iterations, &per_shard);
        let first = parts[..self.index as usize].iter().sum();
        (first, parts[self.index as usize])
    }

    /// Iterations this shard starts if nothing stops it early (`None` for VU executors,
    /// whose count depends on response times). Summed over the shards of a split, this is
    /// exactly [`Executor::planned_iterations`].
    pub fn planned_iterations(&self, executor: &Executor) -> Option<u64> {
        match executor {
            Executor::ConstantArrivalRate { rate, duration, .. } => {
                Some(self.owned_below(RampSchedule::constant(*rate, *duration).total()))
            }
            Executor::RampingArrivalRate {
                start_rate, stages, ..
            } => Some(self.owned_below(RampSchedule::new(*start_rate, stages).total())),
            Executor::PerVuIterations {
                vus, iterations, ..
            } => Some(self.owned_below(u64::from(*vus)) * iterations),
            Executor::SharedIterations {
                vus, iterations, ..
            } => Some(self.shared_iterations(*iterations, *vus).1),
            Executor::ConstantVus { .. } | Executor::RampingVus { .. } => None,
        }
    }

    /// Most VUs this shard runs at once for a VU executor (for pool sizing), or its
    /// `maxInFlight` for an arrival-rate executor.
    pub fn concurrency(&self, executor: &Executor) -> u32 {
        match executor {
            Executor::ConstantArrivalRate { max_in_flight, .. }
            | Executor::RampingArrivalRate { max_in_flight, .. } => {
                self.max_in_flight(*max_in_flight)
            }
            Executor::ConstantVus { vus, .. }
            | Executor::PerVuIterations { vus, .. }
            | Executor::SharedIterations { vus, .. } => self.owned_below(u64::from(*vus)) as u32,
            Executor::RampingVus {
                start_vus, stages, ..
            } => {
                let max = stages.iter().map(|s| s.target).max().unwrap_or(0);
                self.owned_below(u64::from(max.max(*start_vus))) as u32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::Rate;
    use crate::model::{RateStage, VuStage};

    #[test]
    fn equal_weights_deal_round_robin() {
        let shards = Shard::all(&[1, 1, 1]).unwrap();
        assert_eq!(shards[1].positions_below(10).collect::<Vec<_>>(), [1, 4, 7]);
        assert_eq!(shards[0].vus(7), [1, 4, 7]);
        assert_eq!(shards[2].owned_below(10), 3);
    }

    /// Every prefix of every split of up to 4 workers with weights 1..=6 (and the case CI
    /// found, where ordering slots by their ideal place was off by more than one) is dealt
    /// within one position of its share.
    #[test]
    fn every_prefix_is_within_one() {
        let mut cases: Vec<Vec<u32>> = vec![
            vec![5, 3, 1, 3, 5, 1],
            vec![1; 9],
            vec![6, 1, 1, 1, 1, 1, 1, 1],
        ];
        for n in 1..=4usize {
            let mut w = vec![1u32; n];
            loop {
                cases.push(w.clone());
                let Some(k) = w.iter().position(|&x| x < 6) else {
                    break;
                };
                w[k] += 1;
                w[..k].iter_mut().for_each(|x| *x = 1);
            }
        }
        for w in cases {
            let shards = Shard::all(&w).unwrap();
            let total: u64 = w.iter().map(|&x| u64::from(x)).sum();
            for n in 0..=2 * total {
                for s in &shards {
                    let wi = u64::from(w[s.index() as usize]);
                    let got = s.owned_below(n);
                    // floor(n w / W) <= got <= ceil(n w / W)
                    assert!(
                        got >= n * wi / total && got <= (n * wi).div_ceil(total),
                        "{w:?} n={n} shard {} got {got}",
                        s.index()
                    );
                }
            }
        }
    }

    #[test]
    fn uneven_weights_interleave() {
        // 1:3 -> every period of 4 positions, worker 1 owns three, spread out.
        let s = Shard::all(&[1, 3]).unwrap();
        let p0: Vec<u64> = s[0].positions_below(8).collect();
        let p1: Vec<u64> = s[1].positions_below(8).collect();
        assert_eq!(p0.len(), 2);
        assert_eq!(p1.len(), 6);
        assert_eq!(s[0].share_of(10), 3);
        assert_eq!(s[1].share_of(10), 7);
    }

    #[test]
    fn rejects_bad_splits_naming_the_field() {
        assert_eq!(Shard::new(0, vec![]), Err(ShardError::NoWorkers));
        assert_eq!(
            Shard::new(0, vec![1, 0]).unwrap_err().to_string(),
            "weights[1]: must be at least 1"
        );
        assert!(matches!(
            Shard::new(2, vec![1, 1]),
            Err(ShardError::IndexOutOfRange { index: 2, count: 2 })
        ));
        assert!(matches!(
            Shard::new(0, vec![600_000, 600_000]),
            Err(ShardError::TotalTooLarge(_))
        ));
    }

    #[test]
    fn whole_runs_everything() {
        let w = Shard::whole();
        assert!(w.owns(0) && w.owns(12345));
        assert_eq!(w.shared_iterations(25, 4), (0, 25));
        assert_eq!(w.max_in_flight(7), 7);
        assert_eq!(w.vus(3), [1, 2, 3]);
    }

    #[test]
    fn shared_iterations_follow_vus() {
        // 1 VU, 4 workers: only worker 0 has a VU, so it runs every iteration.
        let s = Shard::all(&[1, 1, 1, 1]).unwrap();
        let parts: Vec<_> = s.iter().map(|s| s.shared_iterations(25, 1)).collect();
        assert_eq!(parts, [(0, 25), (25, 0), (25, 0), (25, 0)]);
        let parts: Vec<_> = s.iter().map(|s| s.shared_iterations(25, 4)).collect();
        assert_eq!(parts, [(0, 7), (7, 6), (13, 6), (19, 6)]);
    }

    fn rate(n: u64) -> Rate {
        Rate::per_second(n)
    }

    fn executors() -> impl Strategy<Value = Executor> {
        let d = (1u64..5000).prop_map(Duration::from_millis);
        prop_oneof![
            (1u64..500, d.clone(), 1u32..2000).prop_map(|(r, duration, m)| {
                Executor::ConstantArrivalRate {
                    rate: rate(r),
                    duration,
                    max_in_flight: m,
                }
            }),
            (
                0u64..50,
                prop::collection::vec((0u64..300, 1u64..3000), 1..4),
                1u32..2000
            )
                .prop_map(|(s, st, m)| Executor::RampingArrivalRate {
                    start_rate: rate(s),
                    stages: st
                        .into_iter()
                        .map(|(t, ms)| RateStage {
                            target: rate(t),
                            duration: Duration::from_millis(ms),
                        })
                        .collect(),
                    max_in_flight: m,
                }),
            (1u32..300, 1u64..100).prop_map(|(vus, iterations)| Executor::PerVuIterations {
                vus,
                iterations,
                max_duration: Duration::from_secs(60),
            }),
            (1u32..300, 0u64..10_000).prop_map(|(vus, iterations)| {
                Executor::SharedIterations {
                    vus,
                    iterations,
                    max_duration: Duration::from_secs(60),
                }
            }),
            (1u32..300).prop_map(|vus| Executor::ConstantVus {
                vus,
                duration: Duration::from_secs(1),
            }),
            (
                0u32..20,
                prop::collection::vec((0u32..300, 1u64..3000), 1..4)
            )
                .prop_map(|(start_vus, st)| Executor::RampingVus {
                    start_vus,
                    stages: st
                        .into_iter()
                        .map(|(target, ms)| VuStage {
                            target,
                            duration: Duration::from_millis(ms),
                        })
                        .collect(),
                    graceful_ramp_down: Duration::ZERO,
                }),
        ]
    }

    fn vu_count(e: &Executor) -> Option<u32> {
        match e {
            Executor::ConstantVus { vus, .. }
            | Executor::PerVuIterations { vus, .. }
            | Executor::SharedIterations { vus, .. } => Some(*vus),
            Executor::RampingVus {
                start_vus, stages, ..
            } => Some(
                stages
                    .iter()
                    .map(|s| s.target)
                    .max()
                    .unwrap_or(0)
                    .max(*start_vus),
            ),
            _ => None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// For any executor and any split, the shards' planned iterations sum exactly to the
        /// plan's; arrival positions and VU numbers are partitioned (each exactly once).
        #[test]
        fn shards_sum_to_the_whole(
            e in executors(),
            weights in prop::collection::vec(1u32..6, 1..9),
        ) {
            let shards = Shard::all(&weights).unwrap();
            // the same shards whether built one by one or all at once
            for s in &shards {
                prop_assert_eq!(s, &Shard::new(s.index(), weights.clone()).unwrap());
            }
            match e.planned_iterations() {
                Some(total) => {
                    let sum: u64 = shards.iter().map(|s| s.planned_iterations(&e).unwrap()).sum();
                    prop_assert_eq!(sum, total);
                }
                None => prop_assert!(shards.iter().all(|s| s.planned_iterations(&e).is_none())),
            }
            if let Some(total) = match &e {
                Executor::ConstantArrivalRate { rate, duration, .. } =>
                    Some(RampSchedule::constant(*rate, *duration).total()),
                Executor::RampingArrivalRate { start_rate, stages, .. } =>
                    Some(RampSchedule::new(*start_rate, stages).total()),
                _ => None,
            } {
                let mut seen = vec![0u8; total as usize];
                for s in &shards {
                    let mine: Vec<u64> = s.positions_below(total).collect();
                    prop_assert_eq!(mine.len() as u64, s.owned_below(total));
                    prop_assert!(mine.windows(2).all(|w| w[0] < w[1]));
                    for k in mine {
                        prop_assert!(s.owns(k));
                        seen[k as usize] += 1;
                    }
                }
                prop_assert!(seen.iter().all(|&c| c == 1), "arrivals not partitioned");
            }
            if let Some(vus) = vu_count(&e) {
                let mut all: Vec<u32> = shards.iter().flat_map(|s| s.vus(vus)).collect();
                all.sort_unstable();
                prop_assert_eq!(all, (1..=vus).collect::<Vec<_>>());
            }
            if let Executor::SharedIterations { vus, iterations, .. } = &e {
                // contiguous, disjoint blocks of global iteration numbers
                let mut next = 0;
                for s in &shards {
                    let (first, n) = s.shared_iterations(*iterations, *vus);
                    prop_assert_eq!(first, next);
                    prop_assert!(n == 0 || s.owned_below(u64::from(*vus)) > 0);
                    next += n;
                }
                prop_assert_eq!(next, *iterations);
            }
            // any prefix is dealt in proportion to the weights, within one position
            let total_w: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            for n in [1u64, 7, 100, 1001] {
                for s in &shards {
                    let ideal = n as f64 * f64::from(weights[s.index() as usize]) / total_w as f64;
                    let got = s.owned_below(n) as f64;
                    prop_assert!((got - ideal).abs() <= 1.0 + 1e-9, "n={} ideal {} got {}", n, ideal, got);
                }
            }
        }

        #[test]
        fn largest_remainder_is_exact(total in 0u64..1_000_000, w in prop::collection::vec(1u64..100, 1..20)) {
            let parts = largest_remainder(total, &w);
            prop_assert_eq!(parts.iter().sum::<u64>(), total);
            let sum: u64 = w.iter().sum();
            for (p, wi) in parts.iter().zip(&w) {
                let ideal = total as f64 * *wi as f64 / sum as f64;
                prop_assert!((*p as f64 - ideal).abs() < 1.0 + 1e-9);
            }
        }
    }
}
