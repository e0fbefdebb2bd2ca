//! Every chain of built-ins is lossless for random and structured data, any
//! burst and frame split; dedup sends repeated content as references, across
//! flows and through the recovery path; compress adapts to the leg.

mod common;

use common::{all_specs, noise, text, Pair};
use proptest::prelude::*;
use splitway_modules::chain::ModuleSettings;
use splitway_modules::compress::AdaptConfig;
use splitway_modules::{ChainSpec, LegSnapshot, Stores, TcpSnapshot};

const STORE: u64 = 64 << 20;

use splitway_modules::stream_test::backlogged_leg as backlogged;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_chain_returns_random_bytes_unchanged(
        len in 0usize..300_000,
        seed in any::<u64>(),
        bursts in proptest::collection::vec(1usize..100_000, 1..5),
        frame in 1usize..70_000,
    ) {
        let data = noise(len, seed);
        for spec in all_specs() {
            let mut p = Pair::new(&spec, &Stores::new(STORE), &Stores::new(STORE));
            let got = p.transfer(&data, &bursts, frame, &LegSnapshot::default()).expect("transfer");
            prop_assert!(got == data, "chain {}", spec.label());
        }
    }

    #[test]
    fn every_chain_returns_repetitive_text_unchanged_twice_over_shared_stores(
        len in 1usize..400_000,
        seed in any::<u64>(),
        bursts in proptest::collection::vec(1usize..200_000, 1..4),
        frame in 1usize..70_000,
        busy in any::<bool>(),
    ) {
        let data = text(len, seed);
        let state = if busy { backlogged() } else { LegSnapshot::default() };
        for spec in all_specs() {
            let (a, b) = (Stores::new(STORE), Stores::new(STORE));
            for round in 0..2 {
                let mut p = Pair::new(&spec, &a, &b);
                let got = p.transfer(&data, &bursts, frame, &state).expect("transfer");
                prop_assert!(got == data, "chain {} round {round}", spec.label());
            }
        }
    }
}

#[test]
fn the_same_content_again_crosses_as_references_on_a_new_flow() {
    let data = noise(4 << 20, 3);
    let spec = ChainSpec::from_names(&["dedup"]).expect("spec");
    let (a, b) = (Stores::new(STORE), Stores::new(STORE));
    let mut first = Pair::new(&spec, &a, &b);
    assert_eq!(
        first
            .transfer(&data, &[65536], 16384, &LegSnapshot::default())
            .expect("first"),
        data
    );
    let mut second = Pair::new(&spec, &a, &b);
    assert_eq!(
        second
            .transfer(&data, &[100_000], 16384, &LegSnapshot::default())
            .expect("second"),
        data
    );
    assert!(first.wire > data.len() as u64);
    // What still crosses: the unfinished chunk at each flush (every other
    // burst here, far more often than a bulk transfer flushes) as DATA.
    assert!(
        second.wire < data.len() as u64 / 20,
        "second transfer sent {} bytes",
        second.wire
    );
    assert_eq!(second.asks, 0);
}

#[test]
fn a_changed_version_sends_little_more_than_the_change() {
    let v1 = text(3 << 20, 5);
    let mut v2 = v1.clone();
    for at in [100_000usize, 1_500_000, 2_900_000] {
        v2.splice(at..at + 500, noise(700, at as u64));
    }
    let spec = ChainSpec::from_names(&["dedup"]).expect("spec");
    let (a, b) = (Stores::new(STORE), Stores::new(STORE));
    Pair::new(&spec, &a, &b)
        .transfer(&v1, &[65536], 65536, &LegSnapshot::default())
        .expect("v1");
    let mut p = Pair::new(&spec, &a, &b);
    assert_eq!(
        p.transfer(&v2, &[65536], 65536, &LegSnapshot::default())
            .expect("v2"),
        v2
    );
    assert!(
        p.wire < v2.len() as u64 / 10,
        "changed version sent {} bytes",
        p.wire
    );
}

#[test]
fn a_restarted_far_relay_gets_every_chunk_it_asks_for() {
    let data = text(2 << 20, 8);
    let spec = ChainSpec::from_names(&["dedup", "compress"]).expect("spec");
    let a = Stores::new(STORE);
    Pair::new(&spec, &a, &Stores::new(STORE))
        .transfer(&data, &[50_000], 30_000, &LegSnapshot::default())
        .expect("first");
    // The far relay restarted: its store is empty, ours still believes.
    let mut p = Pair::new(&spec, &a, &Stores::new(STORE));
    assert_eq!(
        p.transfer(&data, &[50_000], 30_000, &LegSnapshot::default())
            .expect("after restart"),
        data
    );
    assert!(p.asks > 0, "no chunk was asked for");
    // What was asked was forgotten by the model: a third flow sends bytes
    // for those, not references that would be asked again.
    let mut third = Pair::new(&spec, &a, &Stores::new(STORE));
    assert_eq!(
        third
            .transfer(&data, &[50_000], 30_000, &LegSnapshot::default())
            .expect("third"),
        data
    );
}

#[test]
fn stores_of_different_sizes_at_the_two_ends_still_deliver_every_byte() {
    let spec = ChainSpec::from_names(&["dedup"]).expect("spec");
    let (a, b) = (Stores::new(8 << 20), Stores::new(1 << 20));
    for round in 0..4u64 {
        let data = noise(3 << 20, round % 2);
        let mut p = Pair::new(&spec, &a, &b);
        assert_eq!(
            p.transfer(&data, &[40_000], 9_000, &LegSnapshot::default())
                .expect("transfer"),
            data
        );
    }
    assert!(b.dedup.received.lock().expect("lock").bytes() <= 1 << 20);
    assert!(a.dedup.sent.lock().expect("lock").bytes() <= 8 << 20);
}

#[test]
fn interleaved_flows_over_one_peer_pair_stay_correct() {
    // Flow 2 references a chunk flow 1 cut but whose bytes have not reached
    // the far relay yet: the far decoder asks, and gets it.
    let spec = ChainSpec::from_names(&["dedup"]).expect("spec");
    let (a, b) = (Stores::new(STORE), Stores::new(STORE));
    let data = noise(1 << 20, 77);
    let mut f1 =
        splitway_modules::EncoderChain::new(&spec, &ModuleSettings::default(), &a).expect("enc");
    let mut held = splitway_modules::Output::default();
    f1.encode(&data, true, &LegSnapshot::default(), &mut held)
        .expect("encode");
    let mut f2 = Pair::new(&spec, &a, &b);
    assert_eq!(
        f2.transfer(&data, &[70_000], 20_000, &LegSnapshot::default())
            .expect("f2"),
        data
    );
    assert!(f2.asks > 0);
    let mut d1 = splitway_modules::DecoderChain::new(&spec, &b).expect("dec");
    let mut out = splitway_modules::Output::default();
    d1.decode(&held.data, &mut out).expect("late flow 1");
    assert_eq!(out.data, data);
}

#[test]
fn compressible_text_shrinks_and_a_busy_leg_buys_a_higher_level() {
    let data = text(4 << 20, 12);
    let spec = ChainSpec::from_names(&["compress"]).expect("spec");
    let mut low = Pair::with_settings(
        &spec,
        &ModuleSettings {
            compress: AdaptConfig::fixed(1),
        },
        &Stores::new(STORE),
        &Stores::new(STORE),
    );
    assert_eq!(
        low.transfer(&data, &[65536], 65536, &LegSnapshot::default())
            .expect("low"),
        data
    );
    let mut busy = Pair::new(&spec, &Stores::new(STORE), &Stores::new(STORE));
    assert_eq!(
        busy.transfer(&data, &[65536], 65536, &backlogged())
            .expect("busy"),
        data
    );
    assert!(
        low.wire < data.len() as u64 / 2,
        "level 1 sent {}",
        low.wire
    );
    assert!(
        busy.wire < low.wire,
        "adaptive on a busy leg sent {} vs {} at level 1",
        busy.wire,
        low.wire
    );
}

#[test]
fn a_leg_that_drains_at_once_gets_raw_bytes() {
    let data = text(4 << 20, 13);
    let spec = ChainSpec::from_names(&["compress"]).expect("spec");
    let mut idle = Pair::new(&spec, &Stores::new(STORE), &Stores::new(STORE));
    // nothing unsent, room in the window, the leg has delivered
    let drained = LegSnapshot {
        sink: TcpSnapshot {
            cwnd_bytes: 200_000,
            unacked_bytes: 20_000,
            delivery_rate: 100_000_000,
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(
        idle.transfer(&data, &[65536], 65536, &drained)
            .expect("idle"),
        data
    );
    // After a few records the level reaches 0: nearly everything raw.
    assert!(
        idle.wire > data.len() as u64 * 9 / 10,
        "idle leg sent {}",
        idle.wire
    );
}

#[test]
fn random_bytes_cost_compress_and_dedup_under_one_percent_on_the_wire() {
    let data = noise(8 << 20, 21);
    let spec = ChainSpec::from_names(&["dedup", "compress"]).expect("spec");
    let mut p = Pair::new(&spec, &Stores::new(STORE), &Stores::new(STORE));
    assert_eq!(
        p.transfer(&data, &[65536], 65536, &backlogged())
            .expect("random"),
        data
    );
    assert!(
        p.wire < data.len() as u64 * 101 / 100,
        "sent {} for {}",
        p.wire,
        data.len()
    );
}
