//! Fuzz both proxy-ingress request parsers: `socks5::Handshake` and
//! `http_connect::parse` (what an unauthenticated client sends).
//!
//! Input: byte 0 picks the parser (bit 0: SOCKS5 / HTTP CONNECT) and
//! whether users are required (bit 1); byte 1 is a cut point; the rest is
//! what the client sends. Properties checked on every input:
//! 1. Neither parser panics, and neither claims more bytes than it was
//!    given (HTTP: nor more than the head bound).
//! 2. Fed the same bytes in two pieces (cut at byte 1's point), SOCKS5
//!    takes the same steps as fed at once; HTTP gives the same answer once
//!    everything has arrived.
//! 3. A host name it accepts is a valid host name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use splitway_core::http_connect::{self, Parsed};
use splitway_core::proxy::{valid_host_name, Target, Users};
use splitway_core::socks5::{Handshake, Step};

/// Run a SOCKS5 handshake over `data`, delivered up to `cut` first.
fn socks(users: &Users, data: &[u8], cut: usize) -> Vec<Step> {
    let mut h = Handshake::new(users);
    let mut steps = Vec::new();
    let mut start = 0;
    for have in [cut, data.len()] {
        loop {
            let step = h.step(&data[start..have.max(start)]);
            match &step {
                Step::NeedMore => break,
                Step::Send { used, .. } => {
                    assert!(*used > 0 && start + used <= have);
                    start += used;
                }
                Step::Connect { used, target } => {
                    assert!(start + used <= have);
                    check(target);
                    steps.push(step);
                    return steps;
                }
                Step::Refuse { .. } => {
                    steps.push(step);
                    return steps;
                }
            }
            steps.push(step);
        }
    }
    steps
}

fn check(t: &Target) {
    if let Target::Name { host, .. } = t {
        assert!(valid_host_name(host), "{host:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let (Some(&mode), Some(&cut)) = (data.first(), data.get(1)) else {
        return;
    };
    let body = &data[2..];
    let cut = (cut as usize).min(body.len());
    let users = if mode & 2 != 0 {
        Users::new([("alice".to_string(), b"s3cret".to_vec())])
    } else {
        Users::default()
    };
    if mode & 1 == 0 {
        let whole = socks(&users, body, body.len());
        assert_eq!(socks(&users, body, cut), whole);
    } else {
        let max = 256 + (mode as usize >> 2) * 64;
        let r = http_connect::parse(body, max, &users);
        if let Ok(Parsed::Connect(req)) = &r {
            assert!(req.used <= body.len() && req.used <= max);
            check(&req.target);
            // A prefix that already holds the head gives the same answer.
            assert_eq!(http_connect::parse(&body[..req.used], max, &users), r);
        }
        let _ = http_connect::parse(&body[..cut], max, &users);
    }
});
