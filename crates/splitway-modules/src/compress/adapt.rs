//! The compression level from the leg's state: ModNet's rule for adaptive
//! gzip. When the sink leg is the bottleneck (unsent bytes pile up in the
//! kernel or in splitway's queue: the congestion window is smaller than the
//! data waiting), spend more CPU per byte; when the leg takes everything at
//! once (nothing unsent anywhere: it drains faster than the compressor
//! produces), step down, to raw at the bottom. Steps need a few agreeing
//! records in a row, so one odd sample does not restart the zstd frame.
//!
//! The encoder's own CPU is the other bound: the leg can look backlogged
//! because the *far* relay is busy (a fast link, both relays CPU-bound). So
//! a level is climbed only while the encoder spends under half its time
//! encoding, and a saturated encoder (≥ 80 %) steps down and keeps below
//! the level it left for [`CEILING_RECORDS`] records.

use crate::state::LegSnapshot;

/// Records a level left because the encoder saturated stays out of reach.
pub const CEILING_RECORDS: u32 = 2048;

/// The ladder of levels; 0 means raw (no compression).
pub const LADDER: [i32; 8] = [0, 1, 3, 5, 7, 9, 12, 15];

/// Limits of the adaptive level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptConfig {
    /// The lowest level (0: may send raw).
    pub min_level: i32,
    /// The highest level.
    pub max_level: i32,
    /// The level of the first record.
    pub start_level: i32,
    /// Records in a row that say "backlogged" before one step up.
    pub up_after: u32,
    /// Records in a row that say "idle" before one step down.
    pub down_after: u32,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        AdaptConfig {
            min_level: 0,
            max_level: 9,
            start_level: 1,
            up_after: 2,
            down_after: 4,
        }
    }
}

impl AdaptConfig {
    /// A fixed level (no adaptation): the benchmark's "fixed high level".
    pub fn fixed(level: i32) -> Self {
        AdaptConfig {
            min_level: level,
            max_level: level,
            start_level: level,
            ..Self::default()
        }
    }
}

/// The adaptive level's state for one direction.
#[derive(Debug, Clone)]
pub struct Adapt {
    cfg: AdaptConfig,
    level: i32,
    up: u32,
    down: u32,
    /// A level left because the encoder saturated, and records until it
    /// may be tried again.
    ceiling: Option<(i32, u32)>,
}

impl Adapt {
    pub fn new(cfg: AdaptConfig) -> Self {
        let level = cfg.start_level.clamp(cfg.min_level, cfg.max_level);
        Adapt {
            cfg,
            level,
            up: 0,
            down: 0,
            ceiling: None,
        }
    }

    /// The current level (0 = raw).
    pub fn level(&self) -> i32 {
        self.level
    }

    /// Looks at the leg before a record and returns the level to use.
    pub fn observe(&mut self, s: &LegSnapshot) -> i32 {
        if self.cfg.min_level == self.cfg.max_level {
            return self.level;
        }
        if let Some((_, left)) = &mut self.ceiling {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.ceiling = None;
            }
        }
        if s.encoder_saturated() && self.level > self.cfg.min_level {
            self.up = 0;
            self.down += 1;
            if self.down >= self.cfg.down_after {
                self.down = 0;
                self.ceiling = Some((self.level, CEILING_RECORDS));
                self.level = self.step(-1);
            }
        } else if s.sink_backlogged() && s.encoder_has_room() {
            self.down = 0;
            self.up += 1;
            if self.up >= self.cfg.up_after {
                self.up = 0;
                let next = self.step(1);
                if self.ceiling.is_none_or(|(c, _)| next < c) {
                    self.level = next;
                }
            }
        } else if s.sink_idle() {
            self.up = 0;
            self.down += 1;
            if self.down >= self.cfg.down_after {
                self.down = 0;
                self.level = self.step(-1);
            }
        } else {
            self.up = 0;
            self.down = 0;
        }
        self.level
    }

    fn step(&self, dir: i32) -> i32 {
        let (min, max) = (self.cfg.min_level, self.cfg.max_level);
        let next = if dir > 0 {
            LADDER
                .iter()
                .copied()
                .find(|&l| l > self.level)
                .unwrap_or(max)
        } else {
            LADDER
                .iter()
                .rev()
                .copied()
                .find(|&l| l < self.level)
                .unwrap_or(min)
        };
        next.clamp(min, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TcpSnapshot;

    fn backlogged() -> LegSnapshot {
        LegSnapshot {
            sink: TcpSnapshot {
                cwnd_bytes: 100_000,
                notsent_bytes: 80_000,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_backlogged_leg_raises_the_level_to_the_maximum_and_no_further() {
        let mut a = Adapt::new(AdaptConfig::default());
        for _ in 0..100 {
            a.observe(&backlogged());
        }
        assert_eq!(a.level(), 9);
    }

    #[test]
    fn a_leg_that_drains_at_once_lowers_the_level_to_raw() {
        let mut a = Adapt::new(AdaptConfig {
            start_level: 9,
            ..AdaptConfig::default()
        });
        for _ in 0..100 {
            a.observe(&LegSnapshot::default());
        }
        assert_eq!(a.level(), 0);
    }

    #[test]
    fn one_odd_sample_does_not_change_the_level() {
        let mut a = Adapt::new(AdaptConfig {
            start_level: 3,
            ..AdaptConfig::default()
        });
        a.observe(&backlogged());
        a.observe(&LegSnapshot::default());
        a.observe(&backlogged());
        assert_eq!(a.level(), 3);
    }

    #[test]
    fn a_saturated_encoder_steps_down_and_stays_below_for_a_while() {
        let mut a = Adapt::new(AdaptConfig {
            start_level: 3,
            ..AdaptConfig::default()
        });
        let busy = |permille| LegSnapshot {
            encoder_busy_permille: permille,
            ..backlogged()
        };
        // backlogged, but the encoder is saturated: down, not up
        for _ in 0..4 {
            a.observe(&busy(900));
        }
        assert_eq!(a.level(), 1);
        // backlogged with room: up again, but not back to 3 for a while
        for _ in 0..50 {
            a.observe(&busy(100));
        }
        assert_eq!(a.level(), 1, "below the ceiling");
        for _ in 0..CEILING_RECORDS {
            a.observe(&busy(100));
        }
        assert!(a.level() >= 3, "{}", a.level());
        // half busy: no climbing, no falling
        let mut b = Adapt::new(AdaptConfig::default());
        for _ in 0..20 {
            b.observe(&busy(600));
        }
        assert_eq!(b.level(), 1);
    }

    #[test]
    fn a_fixed_level_never_moves() {
        let mut a = Adapt::new(AdaptConfig::fixed(12));
        for _ in 0..20 {
            a.observe(&LegSnapshot::default());
        }
        assert_eq!(a.level(), 12);
    }
}
