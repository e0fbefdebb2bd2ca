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
        }
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
        if self.rate_bps == 0 {
            return Decision::Release {
                at_ns: now_ns.saturating_add(self.delay_ns),
            };
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
        Decision::Release {
            at_ns: finish_ns.saturating_add(self.delay_ns),
        }
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
