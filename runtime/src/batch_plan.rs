//! When merging queued requests pays.
//!
//! Merging is not free: on one thread a transformer's batch of 8 can cost more per item than 8
//! runs of one, while a small MLP runs a batch of 32 for little more than one. With the
//! `learned` policy each worker measures what every batch size (summed dim 0) costs per item
//! while it serves, and a batch takes one more request only while that lowers the cost per
//! item. Sizes are measured in rising order (three runs each) and by use; a size being refused
//! is still taken once every [`EXPLORE_EVERY`] refusals, so its figure keeps being measured: a
//! single unlucky run cannot stop growth for long, and the table follows a model whose cost
//! changes (other load on the machine, longer inputs). Each figure is a running mean of about
//! the last `1 / SMOOTHING` runs: runs this short vary by tens of percent from one to the next,
//! while neighbouring sizes of a small model differ by a few. A cost that falls again only past
//! a size that costs more is not found. The `fixed`
//! policy merges whatever is queued, as Triton does. Both stop at `max_batch_size` and at the
//! largest preferred size, and a batch holding a preferred size does not wait for more.

use std::time::Duration;

use crate::config::{BatchPolicy, BatchingConfig};

/// Measurements of one size before its cost is trusted.
const TRUSTED_AFTER: u32 = 3;
/// A size refused because it costs more is taken on every this many refusals, to measure it.
const EXPLORE_EVERY: u32 = 32;
/// A size whose merge failed is tried again on every this many refusals.
const RETRY_FAILED_EVERY: u32 = 1024;
/// Weight of a new measurement once a size has `1 / SMOOTHING` (a mean until then).
const SMOOTHING: f64 = 0.05;
/// A run counts as at most this many times the size's figure so far.
const OUTLIER: f64 = 1.5;
/// Largest batch size measured (the table is per worker): larger batches never grow with the
/// learned policy.
const MEASURED_SIZES: usize = 4096;

/// One worker's batching decisions and what it has measured.
#[derive(Debug)]
pub(crate) struct Plan {
    policy: BatchPolicy,
    max: usize,
    /// Ascending.
    preferred: Vec<usize>,
    /// Indexed by batch size (items); entry 0 unused.
    costs: Vec<Cost>,
    /// The trusted costs per item of sizes whose merges work, for the cheapest within a range.
    trusted: RangeMin,
    /// A batch of `.0` items that took a size costing more, to measure it: it grows on to `.1`
    /// items, whatever they cost.
    exploring: Option<(usize, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Take,
    /// Past a bound, or the batch's own size is still being measured.
    Stop,
    /// This size costs more per item than the batch's own.
    Dearer(usize),
}

#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    /// Smoothed seconds per item.
    per_item: f64,
    samples: u32,
    /// Queued requests refused because this size cost more.
    refusals: u32,
    /// The last merge to this size failed ([`Plan::failed`]).
    failed: bool,
}

impl Plan {
    pub(crate) fn new(config: &BatchingConfig) -> Self {
        let mut preferred = config.preferred_batch_size.clone();
        preferred.sort_unstable();
        preferred.dedup();
        let max = config.max_batch_size.max(1);
        let sizes = max.min(MEASURED_SIZES) + 1;
        Self {
            policy: config.policy,
            max,
            preferred,
            costs: vec![Cost::default(); sizes],
            trusted: RangeMin::new(sizes),
            exploring: None,
        }
    }

    /// A batch begins: what an earlier one explored is over (it may have ended without a run to
    /// record: its requests gone, or the run stopped).
    pub(crate) fn begin(&mut self) {
        self.exploring = None;
    }

    /// Whether a batch of `items` may take one more item at all: within the bounds, and (learned)
    /// its own size measured. Whether it pays is asked of each request by [`Plan::grow`].
    pub(crate) fn open(&self, items: usize) -> bool {
        self.verdict(items, 1) != Verdict::Stop
    }

    /// Whether a batch of `items` takes a queued request of `more` items. A size that costs more
    /// is still taken every [`EXPLORE_EVERY`] refusals, to measure it again, and that batch grows
    /// on to twice its size and stops there: the sizes just past a cheap one may measure dear
    /// when seldom run, and a larger one seen cheaper is grown towards from then on.
    pub(crate) fn grow(&mut self, items: usize, more: usize) -> bool {
        let verdict = self.verdict(items, more);
        if let Some((from, to)) = self.exploring {
            if items > from && items < to {
                return verdict != Verdict::Stop;
            }
            self.exploring = None;
            if items > from {
                // The exploring batch is done: its run measures `to`.
                return false;
            }
        }
        match verdict {
            Verdict::Take => true,
            Verdict::Stop => false,
            Verdict::Dearer(next) => {
                let cost = &mut self.costs[next];
                cost.refusals = cost.refusals.wrapping_add(1);
                let explore =
                    cost.refusals.is_multiple_of(if cost.failed { RETRY_FAILED_EVERY } else { EXPLORE_EVERY });
                if explore {
                    self.exploring = Some((items, next.max(items.saturating_mul(2))));
                }
                explore
            }
        }
    }

    fn verdict(&self, items: usize, more: usize) -> Verdict {
        let next = items.saturating_add(more);
        if next > self.max || self.preferred.last().is_some_and(|&top| next > top) {
            return Verdict::Stop;
        }
        if next == items {
            return Verdict::Take;
        }
        match self.policy {
            BatchPolicy::Fixed => Verdict::Take,
            // Sizes are measured in rising order: a batch grows into a size to measure only
            // once its own size is measured. It grows through a size that looks dearer towards
            // a larger one, up to twice its own, that is cheaper: a size seldom run measures
            // dearer than it is (the runs around it were of other shapes). A size whose merge
            // failed is not grown into.
            BatchPolicy::Learned => match (self.fresh(items), self.fresh(next)) {
                (_, Some(_)) if self.costs[next].failed => Verdict::Dearer(next),
                (Some(now), Some(then)) if then < now || self.cheapest_ahead(next, items) < now => Verdict::Take,
                (Some(_), Some(_)) => Verdict::Dearer(next),
                (Some(_), None) => Verdict::Take,
                (None, _) => Verdict::Stop,
            },
        }
    }

    /// Whether `items` is one of the preferred sizes: a batch that has held one waits no more.
    pub(crate) fn preferred(&self, items: usize) -> bool {
        self.preferred.binary_search(&items).is_ok()
    }

    /// Whether a batch of `items` should wait (up to `max_queue_delay`) for more requests,
    /// rather than only take what is queued already.
    pub(crate) fn wait(&self, items: usize) -> bool {
        match self.policy {
            BatchPolicy::Fixed => true,
            BatchPolicy::Learned => self
                .fresh(items)
                .is_some_and(|now| self.fresh(items + 1).is_none() || self.cheapest_ahead(items + 1, items) < now),
        }
    }

    /// Records one successful execution of `items` items that took `took`, of `merged`
    /// requests or of one. The first [`TRUSTED_AFTER`] runs give their fastest (a first run
    /// pays for warming caches); later ones move a running mean, each at most [`OUTLIER`] times
    /// the figure so far (a run the thread was preempted in says nothing about the batch size).
    /// A size whose merge failed is measured afresh by a merge that works, not by one request
    /// of that size.
    pub(crate) fn record(&mut self, items: usize, took: Duration, merged: bool) {
        self.exploring = None;
        let Some(cost) = self.costs.get_mut(items) else { return };
        if cost.failed {
            if !merged {
                return;
            }
            *cost = Cost::default();
        }
        let per_item = took.as_secs_f64() / items.max(1) as f64;
        cost.samples = cost.samples.saturating_add(1);
        if cost.samples == 1 {
            cost.per_item = per_item;
        } else if cost.samples <= TRUSTED_AFTER {
            cost.per_item = cost.per_item.min(per_item);
        } else {
            let weight = (1.0 / f64::from(cost.samples)).max(SMOOTHING);
            cost.per_item += (per_item.min(cost.per_item * OUTLIER) - cost.per_item) * weight;
        }
        self.update_trusted(items);
    }

    /// The lowest trusted cost per item of a batch from `next` items up to twice `items` (the
    /// sizes an exploring batch of `items` measures), leaving out sizes whose merge failed.
    fn cheapest_ahead(&self, next: usize, items: usize) -> f64 {
        self.trusted.min(next, items.saturating_mul(2).max(next))
    }

    /// Brings [`Plan::trusted`] up to date after the cost of `items` changed.
    fn update_trusted(&mut self, items: usize) {
        let Some(cost) = self.costs.get(items) else { return };
        let trusted = cost.samples >= TRUSTED_AFTER && !cost.failed;
        self.trusted.set(items, if trusted { cost.per_item } else { f64::INFINITY });
    }

    /// Records that `items` requests could not be merged (their outputs could not be split
    /// back): the size is refused, and tried again only every [`RETRY_FAILED_EVERY`] refusals.
    pub(crate) fn failed(&mut self, items: usize) {
        self.exploring = None;
        if let Some(cost) = self.costs.get_mut(items) {
            *cost = Cost { per_item: f64::INFINITY, samples: TRUSTED_AFTER, refusals: 0, failed: true };
        }
        self.update_trusted(items);
    }

    /// The cost per item of batches of `items`, when measured enough.
    fn fresh(&self, items: usize) -> Option<f64> {
        let cost = self.costs.get(items)?;
        (cost.samples >= TRUSTED_AFTER).then_some(cost.per_item)
    }
}

/// The lowest of a fixed number of values within any range of them, in logarithmic time (a
/// segment tree): the cost table has up to [`MEASURED_SIZES`] sizes, and a batch asks at each
/// request it might take.
#[derive(Debug)]
struct RangeMin {
    /// `leaves` leaves from index `leaves` on; each inner node the lower of its two children.
    nodes: Vec<f64>,
    leaves: usize,
}

impl RangeMin {
    /// `len` values, all infinite.
    fn new(len: usize) -> Self {
        let leaves = len.next_power_of_two();
        Self { nodes: vec![f64::INFINITY; 2 * leaves], leaves }
    }

    fn set(&mut self, at: usize, value: f64) {
        let mut i = self.leaves + at;
        self.nodes[i] = value;
        while i > 1 {
            i /= 2;
            self.nodes[i] = self.nodes[2 * i].min(self.nodes[2 * i + 1]);
        }
    }

    /// The lowest value from `first` to `last`, both included (infinite when the range is empty
    /// or past the end).
    fn min(&self, first: usize, last: usize) -> f64 {
        let last = last.min(self.leaves - 1);
        if first > last {
            return f64::INFINITY;
        }
        let (mut lo, mut hi) = (first + self.leaves, last + self.leaves + 1);
        let mut lowest = f64::INFINITY;
        while lo < hi {
            if lo % 2 == 1 {
                lowest = lowest.min(self.nodes[lo]);
                lo += 1;
            }
            if hi % 2 == 1 {
                hi -= 1;
                lowest = lowest.min(self.nodes[hi]);
            }
            lo /= 2;
            hi /= 2;
        }
        lowest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(policy: BatchPolicy, max: usize, preferred: &[usize]) -> Plan {
        Plan::new(&BatchingConfig {
            policy,
            max_batch_size: max,
            preferred_batch_size: preferred.to_vec(),
            ..BatchingConfig::default()
        })
    }

    /// Serves `rounds` batches from a queue that always holds `queued` one-item requests,
    /// with `cost(items)` the seconds an execution takes; the sizes run, in order.
    fn serve(plan: &mut Plan, queued: usize, rounds: usize, mut cost: impl FnMut(usize) -> f64) -> Vec<usize> {
        (0..rounds)
            .map(|_| {
                plan.begin();
                let mut items = 1;
                while items < queued && plan.open(items) && plan.grow(items, 1) {
                    items += 1;
                }
                plan.record(items, Duration::from_secs_f64(cost(items)), items > 1);
                items
            })
            .collect()
    }

    #[test]
    fn a_model_slower_per_item_in_batches_runs_alone_once_measured() {
        // A one-thread encoder: a batch of n costs n·(1 + n/20) units.
        let mut p = plan(BatchPolicy::Learned, 32, &[]);
        let sizes = serve(&mut p, 8, 3000, |n| n as f64 * (1.0 + n as f64 / 20.0));
        let late = &sizes[100..];
        let merged_late = late.iter().filter(|&&n| n > 1).count();
        // After measuring, only the runs that measure size 2 again (one every EXPLORE_EVERY
        // refusals) merge, and they stop at 2.
        let at: Vec<(usize, usize)> = sizes.iter().copied().enumerate().filter(|&(_, n)| n > 1).collect();
        assert!(
            merged_late <= late.len() / EXPLORE_EVERY as usize + 1,
            "merged {merged_late} times after learning: {at:?}"
        );
        assert!(late.iter().all(|&n| n <= 2), "{at:?}");
        assert!(sizes[..20].iter().any(|&n| n > 1), "sizes above 1 were never tried: {:?}", &sizes[..20]);
        assert!(!p.wait(1), "waiting for a batch cannot pay here");
    }

    #[test]
    fn a_model_cheaper_per_item_in_batches_merges_all_that_is_queued() {
        // An MLP: a fixed cost per run dwarfs the cost per item.
        let mut p = plan(BatchPolicy::Learned, 32, &[]);
        let sizes = serve(&mut p, 8, 500, |n| 10.0 + n as f64);
        assert!(sizes[50..].iter().all(|&n| n == 8), "{:?}", &sizes[50..80]);
        assert!(p.wait(8), "larger batches are cheaper per item, so waiting may pay");
        assert!(p.grow(8, 24) && !p.grow(8, 25) && !p.open(32), "max_batch_size bounds every batch");
    }

    #[test]
    fn the_cheapest_size_is_kept_when_costs_turn() {
        // Cheaper per item up to 4 items, dearer above (a cache that stops fitting).
        let mut p = plan(BatchPolicy::Learned, 16, &[]);
        let cost = |n: usize| if n <= 4 { 4.0 + n as f64 } else { 4.0 + 3.0 * n as f64 };
        let sizes = serve(&mut p, 16, 2000, cost);
        // The first explorations measure sizes 6 and 7 in rising order, three runs each.
        let late = &sizes[400..];
        let off: Vec<(usize, usize)> = late.iter().copied().enumerate().filter(|&(_, n)| n != 4).collect();
        // Only the runs that measure again, one every EXPLORE_EVERY refusals, of twice the size.
        assert!(off.len() <= late.len() / EXPLORE_EVERY as usize + 1, "{off:?}");
        assert!(off.iter().all(|&(_, n)| n == 8), "{off:?}");
    }

    #[test]
    fn a_stale_measurement_is_taken_again() {
        let mut p = plan(BatchPolicy::Learned, 4, &[]);
        // Batches of 2 looked dear at first...
        let sizes = serve(&mut p, 2, 20, |n| if n == 1 { 1.0 } else { 5.0 });
        assert_eq!(&sizes[10..], &[1; 10]);
        // ...then got cheap: measured again every EXPLORE_EVERY refusals, size 2 is kept once its
        // running mean falls below size 1's.
        let sizes = serve(&mut p, 2, 20 * EXPLORE_EVERY as usize, |n| if n == 1 { 1.0 } else { 1.2 });
        assert!(sizes.ends_with(&[2; 10]), "{:?}", &sizes[sizes.len() - 10..]);
    }

    #[test]
    fn one_preempted_run_does_not_stop_batches_growing() {
        let mut p = plan(BatchPolicy::Learned, 32, &[]);
        let cost = |n: usize| 10.0 + n as f64;
        serve(&mut p, 8, 200, cost);
        // The thread lost the CPU for a thousand runs' time in one run of 8.
        p.record(8, Duration::from_secs_f64(1000.0 * cost(8)), true);
        let sizes = serve(&mut p, 8, 100, cost);
        assert!(sizes.iter().all(|&n| n == 8), "{sizes:?}");
    }

    #[test]
    fn a_batch_grows_past_sizes_that_measured_dear_by_chance() {
        // An MLP whose runs vary by up to ±30% (caches), one in 50 ten times as long (the thread
        // preempted): neighbouring sizes differ by less than that, so single measurements often
        // rank them wrongly.
        let mut p = plan(BatchPolicy::Learned, 32, &[]);
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut noise = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let outlier = if state.is_multiple_of(50) { 10.0 } else { 1.0 };
            outlier * (0.7 + 0.6 * (state >> 11) as f64 / (1u64 << 53) as f64)
        };
        let sizes = serve(&mut p, 32, 20_000, |n| (10.0 + n as f64) * noise());
        let late = &sizes[10_000..];
        let mean = late.iter().sum::<usize>() as f64 / late.len() as f64;
        assert!(mean > 28.0, "mean batch {mean}: {:?}", &late[..60]);
    }

    #[test]
    fn a_size_whose_merge_failed_is_not_grown_into_even_towards_a_cheaper_one() {
        // Two-item requests; six-item ones run alone, cheap per item; merging two into four
        // fails (the model's outputs cannot be split back).
        let mut p = plan(BatchPolicy::Learned, 8, &[]);
        for _ in 0..3 {
            p.record(2, Duration::from_secs_f64(10.0), false);
            p.record(6, Duration::from_secs_f64(12.0), false);
        }
        p.failed(4);
        // A request of four items alone works: that says nothing of merging to four.
        p.record(4, Duration::from_secs_f64(11.0), false);
        let grown = (0..RETRY_FAILED_EVERY - 1)
            .filter(|_| {
                p.begin();
                p.grow(2, 2)
            })
            .count();
        assert_eq!(grown, 0, "a batch of two grew into the failed size");
        p.begin();
        assert!(p.grow(2, 2), "the failed size is tried again every RETRY_FAILED_EVERY refusals");
        // The retry's merge works: the size is measured afresh.
        p.record(4, Duration::from_secs_f64(11.0), true);
        assert!(!p.costs[4].failed);
    }

    #[test]
    fn an_exploring_batch_that_ran_nothing_leaves_the_next_batch_alone() {
        // An MLP-like model whose sizes 2 and up look dear: a batch of 2 explores to 4.
        let mut p = plan(BatchPolicy::Learned, 16, &[]);
        for _ in 0..3 {
            p.record(1, Duration::from_secs_f64(1.0), false);
            p.record(2, Duration::from_secs_f64(4.0), true);
            p.record(3, Duration::from_secs_f64(9.0), true);
            p.record(4, Duration::from_secs_f64(16.0), true);
        }
        let explored = (0..EXPLORE_EVERY)
            .find(|_| {
                p.begin();
                p.grow(1, 1)
            })
            .is_some();
        assert!(explored, "no exploration in EXPLORE_EVERY refusals");
        // Its requests went away before the run: nothing is recorded. The next batch, of a
        // three-item request, grows only as its costs say (four is dearer than three).
        p.begin();
        assert!(!p.grow(3, 1), "the next batch went on exploring");
    }

    #[test]
    fn range_min_agrees_with_a_scan() {
        let values: Vec<f64> = (0..37_u32).map(|i| f64::from((i * 7919) % 23)).collect();
        let mut tree = RangeMin::new(values.len());
        for (i, &v) in values.iter().enumerate() {
            tree.set(i, v);
        }
        for first in 0..values.len() + 2 {
            for last in first.saturating_sub(1)..values.len() + 2 {
                let scan = values.iter().take(last + 1).skip(first).copied().fold(f64::INFINITY, f64::min);
                assert_eq!(tree.min(first, last), scan, "{first}..={last}");
            }
        }
    }

    #[test]
    fn the_fixed_policy_merges_whatever_is_queued() {
        let mut p = plan(BatchPolicy::Fixed, 8, &[]);
        let sizes = serve(&mut p, 20, 50, |n| n as f64 * 100.0);
        assert!(sizes.iter().all(|&n| n == 8), "{sizes:?}");
    }

    #[test]
    fn preferred_sizes_stop_collecting_and_waiting() {
        let mut p = plan(BatchPolicy::Fixed, 16, &[8, 4, 4]);
        assert!(p.grow(4, 1) && p.grow(7, 1), "below the largest preferred size a batch may grow");
        assert!(!p.grow(8, 1), "the largest preferred size stops a batch");
        assert!(!p.grow(7, 2), "no request takes a batch past the largest preferred size");
        assert!(p.grow(6, 2), "a request may bring a batch to the preferred size");
        assert!(p.preferred(4) && p.preferred(8) && !p.preferred(5), "{p:?}");
    }

    #[test]
    fn a_huge_max_batch_size_keeps_the_table_small() {
        let mut p = plan(BatchPolicy::Learned, usize::MAX, &[]);
        assert!(p.costs.len() <= MEASURED_SIZES + 1);
        let sizes = serve(&mut p, MEASURED_SIZES + 10, 3 * (MEASURED_SIZES + 2), |n| 1.0 + n as f64 * 1e-3);
        assert!(sizes.iter().all(|&n| n <= MEASURED_SIZES + 1), "{:?}", sizes.iter().max());
        assert!(!p.grow(MEASURED_SIZES + 1, 1), "sizes past the table are not grown");
    }

    #[test]
    fn refusals_count_only_requests_turned_away() {
        let mut p = plan(BatchPolicy::Learned, 4, &[]);
        serve(&mut p, 2, 6, |n| n as f64 * 2.0);
        for _ in 0..5000 {
            assert!(p.open(1), "size 1 is measured, so a batch of one may still ask");
        }
        assert_eq!(p.costs[2].refusals, 0, "asking is not refusing");
        assert!(!p.grow(1, 1));
        assert_eq!(p.costs[2].refusals, 1);
    }
}
