//! CPU seconds per GB and peak memory of each module (encode + decode, one
//! core, no sockets): the modules' own cost, beside the relay benchmark.
//!
//!   tar cf /tmp/corpus.tar -C /usr/lib/python3.11 .     # a corpus nobody here wrote
//!   cargo run --release -p splitway-modules --example bench -- /tmp/corpus.tar 64
//!
//! Rows: null; compress at level 1, 3 and 9 (fixed) and adaptive on an idle
//! leg (it steps down to raw) and a busy one (it steps up); dedup on new
//! bytes and on the same bytes again; dedup+compress. Each on the corpus
//! (first N MiB) and on random bytes. CPU time is the process's
//! (`CLOCK_PROCESS_CPUTIME_ID`), so run it alone on a quiet core.

use splitway_modules::chain::ModuleSettings;
use splitway_modules::compress::AdaptConfig;
use splitway_modules::{
    ChainSpec, DecoderChain, EncoderChain, LegSnapshot, Output, Stores, TcpSnapshot,
};

/// A bench row: name, chain, settings, leg state, leg label, run twice.
type Row<'a> = (
    &'a str,
    &'a [&'a str],
    ModuleSettings,
    LegSnapshot,
    &'a str,
    bool,
);

fn cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Encodes and decodes `data` in 64 KiB bursts; returns (CPU s/GB, wire %).
fn run(
    names: &[&str],
    settings: ModuleSettings,
    state: LegSnapshot,
    data: &[u8],
    stores: &(Stores, Stores),
) -> (f64, f64) {
    let spec = ChainSpec::from_names(names).expect("spec");
    let mut enc = EncoderChain::new(&spec, &settings, &stores.0).expect("enc");
    let mut dec = DecoderChain::new(&spec, &stores.1).expect("dec");
    let t0 = cpu_secs();
    let mut wire = 0usize;
    let mut out = 0usize;
    let mut eo = Output::default();
    let mut d = Output::default();
    for burst in data.chunks(64 << 10) {
        eo.clear();
        enc.encode(burst, true, &state, &mut eo).expect("encode");
        wire += eo.data.len();
        d.clear();
        dec.decode(&eo.data, &mut d).expect("decode");
        out += d.data.len();
        for c in d.control.drain(..) {
            let mut a = Output::default();
            enc.control(c.stage, &c.msg, &mut a).expect("control");
        }
        while dec.has_pending() {
            d.clear();
            dec.drain(&mut d).expect("drain");
            out += d.data.len();
        }
    }
    assert_eq!(out, data.len());
    let secs = cpu_secs() - t0;
    (
        secs / (data.len() as f64 / 1e9),
        100.0 * wire as f64 / data.len() as f64,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let mut corpus = args
        .first()
        .and_then(|p| std::fs::read(p).ok())
        .unwrap_or_default();
    if corpus.is_empty() {
        eprintln!("no corpus file given or readable: corpus rows use repeated text");
        corpus = b"relay leg module chunk window kernel socket ".repeat(mib << 15);
    }
    while corpus.len() < mib << 20 {
        let c = corpus.clone();
        corpus.extend_from_slice(&c);
    }
    corpus.truncate(mib << 20);
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..mib << 20)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    // nothing unsent, room in the window, a known delivery rate
    let idle = LegSnapshot {
        sink: TcpSnapshot {
            cwnd_bytes: 200_000,
            unacked_bytes: 20_000,
            delivery_rate: 100_000_000,
            ..Default::default()
        },
        ..Default::default()
    };
    let busy = splitway_modules::stream_test::backlogged_leg();
    let fixed = |l| ModuleSettings {
        compress: AdaptConfig::fixed(l),
    };
    let adaptive = ModuleSettings::default();
    println!("| module | leg | content | CPU s/GB (encode+decode) | bytes on the wire | peak RSS so far |");
    println!("|---|---|---|---:|---:|---:|");
    for (content, data) in [("corpus", &corpus), ("random", &random)] {
        let rows: Vec<Row> = vec![
            ("null", &["null"], adaptive, idle, "-", false),
            (
                "compress level 1",
                &["compress"],
                fixed(1),
                idle,
                "-",
                false,
            ),
            (
                "compress level 3",
                &["compress"],
                fixed(3),
                idle,
                "-",
                false,
            ),
            (
                "compress level 9",
                &["compress"],
                fixed(9),
                idle,
                "-",
                false,
            ),
            (
                "compress adaptive",
                &["compress"],
                adaptive,
                idle,
                "idle (drains at once)",
                false,
            ),
            (
                "compress adaptive",
                &["compress"],
                adaptive,
                busy,
                "busy (unsent piles up)",
                false,
            ),
            ("dedup, new bytes", &["dedup"], adaptive, idle, "-", false),
            (
                "dedup, same bytes again",
                &["dedup"],
                adaptive,
                idle,
                "-",
                true,
            ),
            (
                "dedup+compress adaptive",
                &["dedup", "compress"],
                adaptive,
                busy,
                "busy",
                false,
            ),
        ];
        for (name, names, settings, state, leg, again) in rows {
            let stores = (Stores::new(256 << 20), Stores::new(256 << 20));
            if again {
                run(names, settings, state, data, &stores);
            }
            let (spg, wire) = run(names, settings, state, data, &stores);
            println!(
                "| {name} | {leg} | {content} | {spg:.2} | {wire:.1} % | {} MiB |",
                hwm_kib() >> 10
            );
        }
    }
}
