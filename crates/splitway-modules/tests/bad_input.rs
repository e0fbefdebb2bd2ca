//! Corrupt, truncated and hostile input gives a typed error (or, where the
//! bytes happen to be valid, some output), never a panic, never more output
//! than the bounds allow.

mod common;

use common::{all_specs, noise, text};
use proptest::prelude::*;
use splitway_modules::compress::{MAX_RATIO, RECORD_MAX, ZSTD_NEW};
use splitway_modules::{ChainSpec, DecoderChain, LegSnapshot, ModuleError, Output, Stores};

fn decode_all(spec: &ChainSpec, input: &[u8], frame: usize) -> Result<Vec<u8>, ModuleError> {
    let stores = Stores::new(1 << 20);
    let mut dec = DecoderChain::new(spec, &stores)?;
    let mut got = Vec::new();
    for f in input.chunks(frame.max(1)) {
        let mut o = Output::default();
        dec.decode(f, &mut o)?;
        while dec.has_pending() {
            dec.drain(&mut o)?;
        }
        got.extend_from_slice(&o.data);
    }
    dec.finish()?;
    Ok(got)
}

fn zstd_record(orig_declared: u32, payload: &[u8]) -> Vec<u8> {
    let mut r = vec![ZSTD_NEW];
    r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    r.extend_from_slice(&orig_declared.to_le_bytes());
    r.extend_from_slice(payload);
    r
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_into_any_decoder_chain_never_panic(
        input in proptest::collection::vec(any::<u8>(), 0..4000),
        frame in 1usize..5000,
    ) {
        for spec in all_specs() {
            let _ = decode_all(&spec, &input, frame);
        }
    }

    #[test]
    fn a_flipped_byte_gives_an_error_or_bytes_but_never_a_panic(
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        seed in any::<u64>(),
    ) {
        let data = text(100_000, seed);
        for spec in all_specs() {
            let mut wire = splitway_modules::EncoderChain::new(&spec, &Default::default(), &Stores::new(1 << 20)).expect("enc");
            let mut o = Output::default();
            wire.encode(&data, true, &LegSnapshot::default(), &mut o).expect("encode");
            if o.data.is_empty() { continue; }
            let i = at.index(o.data.len());
            o.data[i] ^= 1 << bit;
            let _ = decode_all(&spec, &o.data, 7000);
        }
    }

    #[test]
    fn a_truncated_stream_is_an_error_or_a_prefix_never_other_bytes(
        cut in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let data = text(200_000, seed);
        for spec in all_specs() {
            let stores = Stores::new(1 << 20);
            let mut enc = splitway_modules::EncoderChain::new(&spec, &Default::default(), &stores).expect("enc");
            let mut o = Output::default();
            enc.encode(&data, true, &LegSnapshot::default(), &mut o).expect("encode");
            if o.data.is_empty() { continue; }
            let n = cut.index(o.data.len());
            if let Ok(got) = decode_all(&spec, &o.data[..n], 4096) {
                prop_assert!(data.starts_with(&got), "chain {}", spec.label());
            }
        }
    }
}

#[test]
fn a_record_that_decompresses_beyond_its_declared_size_is_refused() {
    let zeros = vec![0u8; 512 << 10];
    let payload = zstd::bulk::compress(&zeros, 3).expect("compress");
    let spec = ChainSpec::from_names(&["compress"]).expect("spec");
    let err = decode_all(&spec, &zstd_record(1000, &payload), 65536).unwrap_err();
    assert!(
        matches!(err, ModuleError::LengthMismatch { declared: 1000, .. }),
        "{err}"
    );
    assert_eq!(err.reason(), "compress_corrupt");
}

#[test]
fn a_declared_size_beyond_the_ratio_bound_is_a_bomb() {
    let spec = ChainSpec::from_names(&["compress"]).expect("spec");
    let declared = (10 + 9) * MAX_RATIO as u32 + 1;
    let err = decode_all(&spec, &zstd_record(declared, &[0u8; 10]), 65536).unwrap_err();
    assert!(matches!(err, ModuleError::Bomb { .. }), "{err}");
    assert_eq!(err.reason(), "compress_bomb");
    let err = decode_all(
        &spec,
        &zstd_record(RECORD_MAX as u32 + 1, &[0u8; 1000]),
        65536,
    )
    .unwrap_err();
    assert!(matches!(err, ModuleError::RecordTooLarge { .. }), "{err}");
}

#[test]
fn a_highly_compressible_stream_decodes_in_bounded_steps() {
    // 64 MiB of zeros in a few KiB: one decode call gives at most the budget.
    let zeros = vec![0u8; 64 << 20];
    let spec = ChainSpec::from_names(&["compress"]).expect("spec");
    let stores = Stores::new(1 << 20);
    let mut enc = splitway_modules::EncoderChain::new(
        &spec,
        &splitway_modules::chain::ModuleSettings {
            compress: splitway_modules::compress::AdaptConfig::fixed(3),
        },
        &stores,
    )
    .expect("enc");
    let mut o = Output::default();
    enc.encode(&zeros, true, &LegSnapshot::default(), &mut o)
        .expect("encode");
    assert!(o.data.len() < 200_000, "{} bytes", o.data.len());
    let mut dec = DecoderChain::new(&spec, &stores).expect("dec");
    let mut total = 0;
    let mut d = Output::default();
    dec.decode(&o.data, &mut d).expect("decode");
    assert!(d.data.len() <= splitway_modules::compress::OUT_BUDGET + RECORD_MAX);
    total += d.data.len();
    while dec.has_pending() {
        let mut d = Output::default();
        dec.drain(&mut d).expect("drain");
        assert!(d.data.len() <= splitway_modules::compress::OUT_BUDGET + RECORD_MAX);
        assert!(d.data.iter().all(|&b| b == 0));
        total += d.data.len();
    }
    assert_eq!(total, zeros.len());
    dec.finish().expect("finish");
}

#[test]
fn a_reference_to_a_chunk_never_sent_waits_asks_and_ends_as_an_error() {
    let spec = ChainSpec::from_names(&["dedup"]).expect("spec");
    let mut dec = DecoderChain::new(&spec, &Stores::new(1 << 20)).expect("dec");
    let mut input = vec![0x03];
    input.extend_from_slice(&[7u8; 32]);
    input.extend_from_slice(&[0x01, 3, 0, 0, 0, b'a', b'b', b'c']);
    let mut o = Output::default();
    dec.decode(&input, &mut o).expect("decode");
    assert!(o.data.is_empty());
    assert!(dec.waiting());
    assert_eq!(o.control.len(), 1);
    assert_eq!(o.control[0].msg[0], 0x02, "an ASK");
    assert_eq!(&o.control[0].msg[1..], &[7u8; 32]);
    // A wrong answer is refused; the stream ending while waiting is an error.
    let mut bad = vec![0x03];
    bad.extend_from_slice(&[7u8; 32]);
    bad.extend_from_slice(b"not the chunk");
    assert_eq!(
        dec.control(0, &bad, &mut o).unwrap_err(),
        ModuleError::AnswerMismatch
    );
    assert_eq!(dec.finish().unwrap_err(), ModuleError::EndedWaiting);
}

#[test]
fn an_answer_releases_the_bytes_held_behind_the_reference() {
    use sha2::Digest;
    let chunk = noise(5000, 4);
    let h: [u8; 32] = sha2::Sha256::digest(&chunk).into();
    let spec = ChainSpec::from_names(&["dedup"]).expect("spec");
    let mut dec = DecoderChain::new(&spec, &Stores::new(1 << 20)).expect("dec");
    let mut input = vec![0x03];
    input.extend_from_slice(&h);
    input.extend_from_slice(&[0x01, 3, 0, 0, 0, b'x', b'y', b'z']);
    let mut o = Output::default();
    dec.decode(&input, &mut o).expect("decode");
    let mut answer = vec![0x03];
    answer.extend_from_slice(&h);
    answer.extend_from_slice(&chunk);
    let mut o = Output::default();
    dec.control(0, &answer, &mut o).expect("answer");
    let mut want = chunk.clone();
    want.extend_from_slice(b"xyz");
    assert_eq!(o.data, want);
    assert!(o.control.iter().any(|c| c.msg[0] == 0x01), "an ACK");
    dec.finish().expect("finish");
}

#[test]
fn oversized_and_malformed_ops_are_typed_errors() {
    let spec = ChainSpec::from_names(&["dedup"]).expect("spec");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x01, 0, 0, 2, 0], "dedup_corrupt"), // DATA of 128 KiB
        (vec![0x02], "dedup_corrupt"),             // CUT of nothing
        (vec![0x09], "module_record"),
        (vec![0x01, 2, 0, 0], "module_truncated"),
    ];
    for (input, reason) in cases {
        let err = decode_all(&spec, &input, 100).unwrap_err();
        assert_eq!(err.reason(), reason, "{input:?}: {err}");
    }
    let mut enc =
        splitway_modules::EncoderChain::new(&spec, &Default::default(), &Stores::new(1 << 20))
            .expect("enc");
    let mut o = Output::default();
    assert_eq!(
        enc.control(0, &[0x02; 33], &mut o).unwrap_err(),
        ModuleError::UnknownAsk
    );
    assert_eq!(
        enc.control(0, &[0x01, 5, 0, 0, 0, 0, 0, 0, 0], &mut o)
            .unwrap_err(),
        ModuleError::BadAck
    );
    assert_eq!(
        enc.control(3, &[0x01], &mut o).unwrap_err(),
        ModuleError::NoSuchStage(3)
    );
}

#[test]
fn unknown_module_names_and_ids_are_named() {
    let err = ChainSpec::from_names(&["dedup", "gzip"]).unwrap_err();
    assert_eq!(err.to_string(), "unknown module \"gzip\"");
    assert_eq!(
        ChainSpec::from_ids(&[3, 9]).unwrap_err(),
        ModuleError::UnknownModuleId(9)
    );
    assert_eq!(
        ChainSpec::from_names(&["dedup", "dedup"]).unwrap_err(),
        ModuleError::Duplicate("dedup")
    );
}

#[test]
fn the_config_knows_exactly_the_built_in_modules() {
    let built_in: Vec<&str> = splitway_modules::ModuleKind::ALL
        .iter()
        .map(|k| k.name())
        .collect();
    assert_eq!(built_in, splitway_core::config::MODULE_NAMES);
}
