//! A sans-IO pair of relays for module tests: an encoder chain wired to a
//! decoder chain, control messages delivered both ways, frames of any size.

#![allow(dead_code)]

use splitway_modules::{
    chain::ModuleSettings, ChainSpec, DecoderChain, EncoderChain, LegSnapshot, ModuleError, Output,
    Stores,
};

pub struct Pair {
    pub enc: EncoderChain,
    pub dec: DecoderChain,
    /// Encoded bytes that crossed the leg.
    pub wire: u64,
    /// Control bytes that crossed (both ways).
    pub control: u64,
    pub asks: u64,
}

impl Pair {
    pub fn new(spec: &ChainSpec, sender: &Stores, receiver: &Stores) -> Self {
        Self::with_settings(spec, &ModuleSettings::default(), sender, receiver)
    }

    pub fn with_settings(
        spec: &ChainSpec,
        settings: &ModuleSettings,
        sender: &Stores,
        receiver: &Stores,
    ) -> Self {
        Pair {
            enc: EncoderChain::new(spec, settings, sender).expect("encoder chain"),
            dec: DecoderChain::new(spec, receiver).expect("decoder chain"),
            wire: 0,
            control: 0,
            asks: 0,
        }
    }

    /// Sends `data` in bursts of `bursts` sizes (cycled), frames of `frame`
    /// bytes; returns what came out of the decoder.
    pub fn transfer(
        &mut self,
        data: &[u8],
        bursts: &[usize],
        frame: usize,
        state: &LegSnapshot,
    ) -> Result<Vec<u8>, ModuleError> {
        let mut got = Vec::new();
        let mut rest = data;
        let mut i = 0;
        while !rest.is_empty() {
            let n = bursts[i % bursts.len()].clamp(1, rest.len());
            i += 1;
            let (burst, r) = rest.split_at(n);
            rest = r;
            // Flush at the end of every other burst and at the end.
            let flush = rest.is_empty() || i % 2 == 0;
            self.send(burst, flush, frame, state, &mut got)?;
        }
        self.dec.finish()?;
        Ok(got)
    }

    pub fn send(
        &mut self,
        burst: &[u8],
        flush: bool,
        frame: usize,
        state: &LegSnapshot,
        got: &mut Vec<u8>,
    ) -> Result<(), ModuleError> {
        let mut eo = Output::default();
        self.enc.encode(burst, flush, state, &mut eo)?;
        self.wire += eo.data.len() as u64;
        let mut fwd = std::mem::take(&mut eo.control);
        for f in eo.data.chunks(frame.max(1)) {
            let mut d = Output::default();
            self.dec.decode(f, &mut d)?;
            got.extend_from_slice(&d.data);
            while self.dec.has_pending() {
                let mut d2 = Output::default();
                self.dec.drain(&mut d2)?;
                got.extend_from_slice(&d2.data);
                d.control.extend(d2.control);
            }
            self.exchange(d.control, &mut fwd, got)?;
        }
        self.exchange(Vec::new(), &mut fwd, got)
    }

    /// Delivers control messages until none are left.
    fn exchange(
        &mut self,
        mut rev: Vec<splitway_modules::Control>,
        fwd: &mut Vec<splitway_modules::Control>,
        got: &mut Vec<u8>,
    ) -> Result<(), ModuleError> {
        while !rev.is_empty() || !fwd.is_empty() {
            for c in rev.drain(..) {
                self.control += c.msg.len() as u64;
                if c.msg.first() == Some(&0x02) {
                    self.asks += 1;
                }
                let mut eo = Output::default();
                self.enc.control(c.stage, &c.msg, &mut eo)?;
                fwd.extend(eo.control);
            }
            for c in std::mem::take(fwd) {
                self.control += c.msg.len() as u64;
                let mut d = Output::default();
                self.dec.control(c.stage, &c.msg, &mut d)?;
                got.extend_from_slice(&d.data);
                rev.extend(d.control);
                while self.dec.has_pending() {
                    let mut d2 = Output::default();
                    self.dec.drain(&mut d2)?;
                    got.extend_from_slice(&d2.data);
                    rev.extend(d2.control);
                }
            }
        }
        Ok(())
    }
}

/// xorshift bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

/// Text-like bytes: words from a small vocabulary, compressible about 3×.
pub fn text(n: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "relay", "leg", "flow", "the", "of", "chunk", "window", "fn", "let", "mut", "self",
        "return", "struct", "impl", "error", "{", "}", "(", ")", ";", "\n", "    ", "match",
        "Some", "None", "Ok", "Err", "bytes", "len", "pos", "0x", "1", "42", "socket", "kernel",
    ];
    let r = noise(n, seed);
    let mut out = Vec::with_capacity(n + 16);
    let mut i = 0;
    while out.len() < n {
        out.extend_from_slice(WORDS[r[i % r.len()] as usize % WORDS.len()].as_bytes());
        out.push(b' ');
        i += 1;
    }
    out.truncate(n);
    out
}

/// Every chain of distinct built-ins up to three stages, in every order.
pub fn all_specs() -> Vec<ChainSpec> {
    let names = ["null", "compress", "dedup"];
    let mut out = vec![ChainSpec::default()];
    for a in names {
        out.push(ChainSpec::from_names(&[a]).expect("spec"));
        for b in names {
            if b != a {
                out.push(ChainSpec::from_names(&[a, b]).expect("spec"));
                for c in names {
                    if c != a && c != b {
                        out.push(ChainSpec::from_names(&[a, b, c]).expect("spec"));
                    }
                }
            }
        }
    }
    out
}
