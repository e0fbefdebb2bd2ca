//! The dedup stores never exceed their bound on a long stream that both
//! fills and hits them (48 MiB here; `cargo run --release -p
//! splitway-modules --example store_bound -- 2048` streams 2 GiB).

use splitway_modules::stream_test::block;
use splitway_modules::{ChainSpec, DecoderChain, EncoderChain, LegSnapshot, Output, Stores};

#[test]
fn both_stores_stay_within_their_bound_and_every_byte_arrives() {
    const STORE: u64 = 4 << 20;
    let spec = ChainSpec::from_names(&["dedup"]).expect("spec");
    let (a, b) = (Stores::new(STORE), Stores::new(STORE));
    let mut enc = EncoderChain::new(&spec, &Default::default(), &a).expect("enc");
    let mut dec = DecoderChain::new(&spec, &b).expect("dec");
    let (mut refs_bytes, mut total) = (0u64, 0u64);
    for i in 0..48u64 {
        let data = block(i, 1 << 20);
        let mut o = Output::default();
        enc.encode(&data, true, &LegSnapshot::default(), &mut o)
            .expect("encode");
        refs_bytes += o.data.len() as u64;
        let mut d = Output::default();
        dec.decode(&o.data, &mut d).expect("decode");
        assert!(d.control.iter().all(|c| c.msg[0] == 0x01), "only ACKs");
        for c in d.control {
            enc.control(c.stage, &c.msg, &mut Output::default())
                .expect("ack");
        }
        assert_eq!(d.data, data, "block {i}");
        total += data.len() as u64;
        assert!(a.dedup.sent.lock().expect("lock").bytes() as u64 <= STORE);
        assert!(b.dedup.received.lock().expect("lock").bytes() as u64 <= STORE);
    }
    assert!(
        b.dedup.received.lock().expect("lock").evictions() > 0,
        "the store never filled"
    );
    assert!(refs_bytes < total, "no repeat was sent as a reference");
}
