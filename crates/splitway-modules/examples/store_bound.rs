//! Streams N MiB (default 2048) through a `dedup` encoder and decoder with
//! stores of S MiB (default 64) and reports the stores' peak size, the wire
//! bytes and the speed. Exits non-zero if a store ever exceeded its bound or
//! a byte differed.
//!
//!   cargo run --release -p splitway-modules --example store_bound -- 2048 64

use std::time::Instant;

use splitway_modules::stream_test::block;
use splitway_modules::{ChainSpec, DecoderChain, EncoderChain, LegSnapshot, Output, Stores};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let mib = args.first().copied().unwrap_or(2048);
    let store = args.get(1).copied().unwrap_or(64) << 20;
    let spec = ChainSpec::from_names(&["dedup"]).expect("spec");
    let (a, b) = (Stores::new(store), Stores::new(store));
    let mut enc = EncoderChain::new(&spec, &Default::default(), &a).expect("enc");
    let mut dec = DecoderChain::new(&spec, &b).expect("dec");
    let (mut wire, mut peak_sent, mut peak_recv) = (0u64, 0usize, 0usize);
    let start = Instant::now();
    for i in 0..mib {
        let data = block(i, 1 << 20);
        let mut o = Output::default();
        enc.encode(&data, true, &LegSnapshot::default(), &mut o)
            .expect("encode");
        wire += o.data.len() as u64;
        let mut d = Output::default();
        dec.decode(&o.data, &mut d).expect("decode");
        for c in d.control {
            enc.control(c.stage, &c.msg, &mut Output::default())
                .expect("control");
        }
        if d.data != data {
            eprintln!("block {i} differs");
            std::process::exit(1);
        }
        peak_sent = peak_sent.max(a.dedup.sent.lock().expect("lock").bytes());
        peak_recv = peak_recv.max(b.dedup.received.lock().expect("lock").bytes());
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{mib} MiB through dedup, stores {} MiB: peak sent-model {} B, peak received store {} B, wire {:.1} % of input, {:.0} MiB/s (encode + decode, one core)",
        store >> 20,
        peak_sent,
        peak_recv,
        100.0 * wire as f64 / (mib << 20) as f64,
        mib as f64 / secs
    );
    if peak_sent as u64 > store || peak_recv as u64 > store {
        eprintln!("a store exceeded its bound");
        std::process::exit(1);
    }
}
