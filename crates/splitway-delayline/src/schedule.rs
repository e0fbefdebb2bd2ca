//! The link arithmetic, free of I/O: when does each packet leave, and which
//! packets are tail-dropped.
//!
//! Owns the model of one direction of an emulated link: a FIFO serializer at
//! `rate_bps`, a drop-tail queue in front of it holding at most
//! `queue_limit_bytes`, and a fixed one-way propagation delay after it.
//! A packet of `b` bytes arriving at `t` finishes serialization at
//! `finish = max(t, previous finish) + b·8/rate` and is released at
//! `finish + delay`. Time is integer nanoseconds; the serializer's clock is
//! kept exactly (as `nanoseconds × rate`, a `u128`), so rounding never
//! accumulates: only each reported release time is rounded up to the next
//! whole nanosecond. Release times never decrease, so releasing in arrival
//! order is also releasing in time order.
//!
//! Impairments ([`Impairments`]): each packet is lost at random with a given
//! probability (Bernoulli, decided on arrival, before the queue: a lost
//! packet takes no link time and is never released), and each accepted
//! packet's propagation delay gains a random extra in `[0, jitter]`
//! (uniform). Order is kept, as on a real link: a packet is never released
//! before the one ahead of it, so jitter bunches packets rather than
//! reordering them (`release = max(finish + delay + extra, previous release)`).
//! Randomness comes from a seeded xorshift generator, so a seed replays.
//!
//! The caller supplies the clock; nothing here reads it.

use std::collections::VecDeque;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// What happens to one arriving packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Let it go at this time (nanoseconds on the caller's clock).
    Release { at_ns: u64 },
    /// The queue is full: drop it (tail drop).
    Drop,
    /// Lost at random (the link's loss rate).
    Lose,
}

/// One part in a billion: the unit of loss probabilities.
pub const PPB: u32 = 1_000_000_000;

/// Random loss and jitter of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Impairments {
    /// Probability that a packet is lost, in parts per billion (0..=10^9).
    pub loss_ppb: u32,
    /// Largest extra one-way delay; each packet draws uniformly from
    /// `[0, jitter_ns]`.
    pub jitter_ns: u64,
}

impl Impairments {
    /// From a loss percentage (0..=100) and a jitter.
    pub fn from_pct(loss_pct: f64, jitter_ns: u64) -> Impairments {
        let p = (loss_pct.clamp(0.0, 100.0) / 100.0 * f64::from(PPB)).round();
        Impairments {
            loss_ppb: p as u32,
            jitter_ns,
        }
    }
}

/// xorshift64*: small, fast, seeded; good enough for loss and jitter draws.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, n)` for `n > 0` (multiply-shift; bias below 2^-32).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// One direction of a link: rate, drop-tail queue, delay.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Bits per second; 0 means no rate limit (pure delay).
    rate_bps: u64,
    delay_ns: u64,
    queue_limit_bytes: u64,
    /// End of the last accepted packet's serialization, in ns × rate_bps.
    last_finish_scaled: u128,
    /// Accepted packets whose serialization has not finished at the last
    /// arrival: (finish in whole ns, rounded up; bytes).
    backlog: VecDeque<(u64, u32)>,
    backlog_bytes: u64,
    impair: Impairments,
    rng: Rng,
    /// Release time of the last accepted packet (jitter never reorders).
    last_release_ns: u64,
}

impl Schedule {
    /// A direction with the given rate (0 = unlimited), one-way delay and
    /// queue limit. The queue limit counts bytes accepted but not yet fully
    /// serialized (the packet on the wire included); a packet that finds the
    /// queue empty is always accepted, whatever its size.
    pub fn new(rate_bps: u64, delay_ns: u64, queue_limit_bytes: u64) -> Schedule {
        Schedule {
            rate_bps,
            delay_ns,
            queue_limit_bytes,
            last_finish_scaled: 0,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            impair: Impairments::default(),
            rng: Rng::new(0),
            last_release_ns: 0,
        }
    }

    /// Set random loss and jitter (from now on), with the generator's seed.
    pub fn with_impairments(mut self, impair: Impairments, seed: u64) -> Schedule {
        self.impair = impair;
        self.rng = Rng::new(seed);
        self
    }

    /// Change loss and jitter for later packets (the generator goes on).
    pub fn set_impairments(&mut self, impair: Impairments) {
        self.impair = impair;
    }

    pub fn impairments(&self) -> Impairments {
        self.impair
    }

    /// Lost at random? Draws only when a loss rate is set.
    fn lost(&mut self) -> bool {
        let p = self.impair.loss_ppb;
        p > 0 && (p >= PPB || self.rng.below(u64::from(PPB)) < u64::from(p))
    }

    /// The release time of a packet whose delay ends at `at`: plus jitter,
    /// never before the previous release.
    fn release(&mut self, at: u64) -> Decision {
        let j = self.impair.jitter_ns;
        let at = if j > 0 {
            at.saturating_add(self.rng.below(j + 1))
        } else {
            at
        };
        let at = at.max(self.last_release_ns);
        self.last_release_ns = at;
        Decision::Release { at_ns: at }
    }

    pub fn rate_bps(&self) -> u64 {
        self.rate_bps
    }

    pub fn delay_ns(&self) -> u64 {
        self.delay_ns
    }

    /// Bytes waiting for, or in, serialization as of the last arrival.
    pub fn backlog_bytes(&self) -> u64 {
        self.backlog_bytes
    }

    /// A packet of `bytes` arrives at `now_ns`. Arrival times must not
    /// decrease between calls (a smaller one is treated as equal to the
    /// latest seen).
    pub fn arrive(&mut self, now_ns: u64, bytes: u32) -> Decision {
        if self.lost() {
            return Decision::Lose;
        }
        if self.rate_bps == 0 {
            return self.release(now_ns.saturating_add(self.delay_ns));
        }
        while let Some(&(finish, b)) = self.backlog.front() {
            if finish > now_ns {
                break;
            }
            self.backlog.pop_front();
            self.backlog_bytes -= u64::from(b);
        }
        if !self.backlog.is_empty()
            && self.backlog_bytes + u64::from(bytes) > self.queue_limit_bytes
        {
            return Decision::Drop;
        }
        let rate = u128::from(self.rate_bps);
        let start = (u128::from(now_ns) * rate).max(self.last_finish_scaled);
        let finish_scaled = start + u128::from(bytes) * 8 * NANOS_PER_SEC;
        self.last_finish_scaled = finish_scaled;
        let finish_ns = u64::try_from(finish_scaled.div_ceil(rate)).unwrap_or(u64::MAX);
        self.backlog.push_back((finish_ns, bytes));
        self.backlog_bytes += u64::from(bytes);
        self.release(finish_ns.saturating_add(self.delay_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn idle_link_adds_serialization_and_delay() {
        // 1500 B at 100 Mbit/s = 120 µs; delay 10 ms.
        let mut s = Schedule::new(100_000_000, 10_000_000, 100_000);
        assert_eq!(
            s.arrive(1_000, 1500),
            Decision::Release {
                at_ns: 1_000 + 120_000 + 10_000_000
            }
        );
    }

    #[test]
    fn back_to_back_packets_queue_behind_each_other() {
        let mut s = Schedule::new(100_000_000, 0, 1_000_000);
        let r: Vec<_> = (0..3).map(|_| s.arrive(0, 1500)).collect();
        assert_eq!(
            r,
            vec![
                Decision::Release { at_ns: 120_000 },
                Decision::Release { at_ns: 240_000 },
                Decision::Release { at_ns: 360_000 },
            ]
        );
        // after the queue drained the link is idle again
        assert_eq!(
            s.arrive(1_000_000, 1500),
            Decision::Release { at_ns: 1_120_000 }
        );
    }

    #[test]
    fn rounding_does_not_accumulate() {
        // 1 byte at 3 bit/s = 8/3 s each; 3 bytes must take exactly 8 s.
        let mut s = Schedule::new(3, 0, 1_000);
        let mut last = Decision::Drop;
        for _ in 0..3 {
            last = s.arrive(0, 1);
        }
        assert_eq!(
            last,
            Decision::Release {
                at_ns: 8_000_000_000
            }
        );
    }

    #[test]
    fn tail_drop_when_queue_full_and_recovers() {
        let mut s = Schedule::new(8_000, 0, 3_000); // 1 byte per ms
        assert!(matches!(s.arrive(0, 1000), Decision::Release { .. }));
        assert!(matches!(s.arrive(0, 1000), Decision::Release { .. }));
        assert!(matches!(s.arrive(0, 1000), Decision::Release { .. }));
        assert_eq!(s.arrive(0, 1000), Decision::Drop);
        assert_eq!(s.backlog_bytes(), 3000);
        // the first packet finished at 1 s: room for one more
        assert_eq!(
            s.arrive(1_000_000_000, 1000),
            Decision::Release {
                at_ns: 4_000_000_000
            }
        );
        assert_eq!(s.arrive(1_000_000_000, 1000), Decision::Drop);
    }

    #[test]
    fn oversized_packet_on_empty_queue_is_accepted() {
        let mut s = Schedule::new(1_000_000, 0, 100);
        assert!(matches!(s.arrive(0, 1500), Decision::Release { .. }));
        assert_eq!(s.arrive(0, 10), Decision::Drop);
    }

    #[test]
    fn unlimited_rate_is_pure_delay() {
        let mut s = Schedule::new(0, 5, 0);
        for t in [0, 0, 7, 9] {
            assert_eq!(s.arrive(t, 60_000), Decision::Release { at_ns: t + 5 });
        }
    }

    #[test]
    fn loss_rate_matches_over_many_packets() {
        // 1 % of 1,000,000 packets: 10,000 expected, σ ≈ 99.5; allow 4σ.
        let mut s = Schedule::new(0, 0, 0).with_impairments(Impairments::from_pct(1.0, 0), 7);
        let lost = (0..1_000_000u64)
            .filter(|&t| s.arrive(t, 100) == Decision::Lose)
            .count();
        assert!((lost as i64 - 10_000).abs() < 400, "lost {lost}");
        // 0 % loses nothing, 100 % everything
        let mut s = Schedule::new(0, 0, 0).with_impairments(Impairments::from_pct(0.0, 0), 7);
        assert!((0..10_000).all(|t| s.arrive(t, 100) != Decision::Lose));
        let mut s = Schedule::new(0, 0, 0).with_impairments(Impairments::from_pct(100.0, 0), 7);
        assert!((0..10_000).all(|t| s.arrive(t, 100) == Decision::Lose));
    }

    #[test]
    fn lost_packets_take_no_link_time() {
        let mut s =
            Schedule::new(8_000, 0, 1_000_000).with_impairments(Impairments::from_pct(100.0, 0), 1);
        assert_eq!(s.arrive(0, 1000), Decision::Lose);
        s.set_impairments(Impairments::default());
        // 1000 B at 8 kbit/s = 1 s: the lost packet did not occupy the serializer
        assert_eq!(
            s.arrive(0, 1000),
            Decision::Release {
                at_ns: 1_000_000_000
            }
        );
    }

    #[test]
    fn jitter_spreads_delay_but_keeps_order() {
        let jitter = 5_000_000; // 5 ms
        let mut s =
            Schedule::new(0, 20_000_000, 0).with_impairments(Impairments::from_pct(0.0, jitter), 3);
        let mut prev = 0;
        let mut extras = Vec::new();
        for i in 0..10_000u64 {
            // one packet every 10 ms: far apart, so order-keeping rarely binds
            let t = i * 10_000_000;
            let Decision::Release { at_ns } = s.arrive(t, 100) else {
                panic!("no loss configured");
            };
            assert!(at_ns >= prev, "order kept");
            assert!(at_ns >= t + 20_000_000 && at_ns <= t + 20_000_000 + jitter);
            extras.push(at_ns - t - 20_000_000);
            prev = at_ns;
        }
        let mean = extras.iter().sum::<u64>() as f64 / extras.len() as f64;
        assert!((mean - 2_500_000.0).abs() < 100_000.0, "mean extra {mean}");
        assert!(*extras.iter().max().unwrap() > 4_900_000);
        assert!(*extras.iter().min().unwrap() < 100_000);
        // back to back, order-keeping binds: releases still never decrease
        let mut prev = 0;
        for _ in 0..1000 {
            let Decision::Release { at_ns } = s.arrive(200_000_000_000, 100) else {
                panic!()
            };
            assert!(at_ns >= prev);
            prev = at_ns;
        }
    }

    fn arrivals() -> impl Strategy<Value = Vec<(u64, u32)>> {
        proptest::collection::vec((0u64..2_000_000, 1u32..65_536), 1..300).prop_map(|v| {
            let mut t = 0u64;
            v.into_iter()
                .map(|(gap, b)| {
                    t += gap;
                    (t, b)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn schedule_invariants(
            arr in arrivals(),
            rate in 1_000u64..10_000_000_000,
            delay in 0u64..300_000_000,
            limit in 0u64..5_000_000,
        ) {
            let mut s = Schedule::new(rate, delay, limit);
            let mut accepted: Vec<(u64, u64, u32)> = Vec::new(); // (arrival, release, bytes)
            for &(t, b) in &arr {
                match s.arrive(t, b) {
                    Decision::Release { at_ns } => {
                        // every release >= arrival + delay + own serialization
                        let ser = (u128::from(b) * 8 * NANOS_PER_SEC).div_ceil(u128::from(rate));
                        prop_assert!(u128::from(at_ns) >= u128::from(t) + u128::from(delay) + ser);
                        // order is kept
                        if let Some(&(_, prev, _)) = accepted.last() {
                            prop_assert!(at_ns >= prev);
                        }
                        accepted.push((t, at_ns, b));
                    }
                    Decision::Drop => prop_assert!(limit > 0 || !accepted.is_empty()),
                    Decision::Lose => prop_assert!(false, "no loss configured"),
                }
                prop_assert!(s.backlog_bytes() <= limit.max(65_536));
            }
            // rate never exceeded: between the releases of accepted packets
            // i < j, the bits of packets i+1..=j fit in (release_j - release_i
            // + 1 ns of rounding) at the configured rate.
            let n = accepted.len();
            let mut prefix = vec![0u128; n + 1];
            for (k, &(_, _, b)) in accepted.iter().enumerate() {
                prefix[k + 1] = prefix[k] + u128::from(b) * 8;
            }
            for i in 0..n {
                for j in i + 1..n.min(i + 40) {
                    let bits = prefix[j + 1] - prefix[i + 1];
                    let span = u128::from(accepted[j].1 - accepted[i].1) + 1;
                    prop_assert!(bits * NANOS_PER_SEC <= u128::from(rate) * span,
                        "bits {} span {} rate {}", bits, span, rate);
                }
            }
        }

        #[test]
        fn impaired_schedule_keeps_order_and_bounds(
            arr in arrivals(),
            rate in 0u64..10_000_000_000,
            delay in 0u64..300_000_000,
            loss in 0u32..PPB,
            jitter in 0u64..50_000_000,
            seed: u64,
        ) {
            let mut s = Schedule::new(rate, delay, 1_000_000)
                .with_impairments(Impairments { loss_ppb: loss, jitter_ns: jitter }, seed);
            let mut prev = 0u64;
            for &(t, b) in &arr {
                if let Decision::Release { at_ns } = s.arrive(t, b) {
                    prop_assert!(at_ns >= prev);
                    prop_assert!(at_ns >= t + delay);
                    prev = at_ns;
                }
            }
        }

        #[test]
        fn a_lone_packet_on_an_idle_link_is_not_held_longer_than_needed(
            t in 0u64..1_000_000_000_000, b in 1u32..65_536,
            rate in 1_000u64..10_000_000_000, delay in 0u64..1_000_000_000,
        ) {
            let mut s = Schedule::new(rate, delay, 0);
            let ser = u64::try_from((u128::from(b) * 8 * NANOS_PER_SEC).div_ceil(u128::from(rate))).unwrap();
            prop_assert_eq!(s.arrive(t, b), Decision::Release { at_ns: t + ser + delay });
        }
    }
}
