//! Writes seed inputs for the module fuzz targets (fuzz/corpus/module_*/):
//! real encoder output of text, random and repeated bytes.
//!
//!   cargo run -p splitway-modules --example fuzz_seeds -- fuzz/corpus

use splitway_modules::{ChainSpec, EncoderChain, LegSnapshot, Output, Stores};

fn text(n: usize) -> Vec<u8> {
    b"relay leg flow chunk window kernel socket "
        .iter()
        .copied()
        .cycle()
        .take(n)
        .collect()
}

fn encode(name: &str, data: &[u8], stores: &Stores) -> Vec<u8> {
    let spec = ChainSpec::from_names(&[name]).expect("spec");
    let mut enc = EncoderChain::new(&spec, &Default::default(), stores).expect("enc");
    let mut o = Output::default();
    enc.encode(data, true, &LegSnapshot::default(), &mut o)
        .expect("encode");
    o.data
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let noise: Vec<u8> = (0u32..3000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (i, data) in [text(3000), noise.clone(), vec![0u8; 5000]]
        .iter()
        .enumerate()
    {
        let mut seed = vec![16u8];
        seed.extend(encode("compress", data, &Stores::new(1 << 20)));
        std::fs::write(format!("{dir}/module_compress/seed-{i}"), seed)?;
    }
    // dedup: small chunks' DATA and CUT ops, then references to them (from
    // a second encoder on the same stores), framed as DATA pieces; a
    // libFuzzer seed stays under -max_len (4096).
    let stores = Stores::new(1 << 20);
    let mut big = Vec::new();
    for i in 0u32..40_000 {
        big.push((i.wrapping_mul(2_654_435_761) >> 11) as u8);
    }
    for i in 0..2 {
        let mut wire = encode("dedup", &big, &stores);
        wire.truncate(4000);
        let mut seed = Vec::new();
        for piece in wire.chunks(1000) {
            seed.push(0);
            seed.extend_from_slice(&(piece.len() as u16).to_le_bytes());
            seed.extend_from_slice(piece);
        }
        std::fs::write(format!("{dir}/module_dedup/seed-{i}"), seed)?;
        let _ = &noise;
    }
    Ok(())
}
