//! How module legs use the v2 frames (`splitway_core::frame`): the chain
//! announcement that follows the header, control messages in MODULE frames,
//! and DATA framing of encoded bytes. The layout is in `docs/wire.md`
//! ("Modules").

use splitway_core::frame::{self, Frame, LEG_STREAM, MAX_PAYLOAD};
use splitway_modules::Control;

/// MODULE flags: the chain announcement (first frame of a module leg).
pub const FLAG_CHAIN: u8 = 0x00;
/// MODULE flags bit 7: a stage's control message; bits 0–5: the stage.
pub const FLAG_STAGE: u8 = 0x80;
/// MODULE flags bit 6: for the receiver's encoder (sent by the far decoder,
/// against the direction); clear: for the receiver's decoder.
pub const FLAG_TO_ENCODER: u8 = 0x40;
const STAGE_MASK: u8 = 0x3f;
/// DATA flags bit 0: a plain record. Its payload is the direction's plain
/// bytes, past both chains (the sender's chain passed them unchanged and
/// held nothing); the receiver writes them as they are (spliced).
pub const DATA_PLAIN: u8 = 0x01;

/// Appends the chain announcement (module ids in encoding order).
pub fn put_chain(out: &mut Vec<u8>, ids: &[u8]) {
    let f = Frame::Module {
        stream: LEG_STREAM,
        flags: FLAG_CHAIN,
        payload: ids,
    };
    f.encode(out);
}

/// Appends `data` as DATA frames on the leg's stream.
pub fn put_data(out: &mut Vec<u8>, mut data: &[u8]) {
    while !data.is_empty() {
        let n = frame::encode_data_head(out, LEG_STREAM, 0, data.len());
        out.extend_from_slice(&data[..n]);
        data = &data[n..];
    }
}

/// Appends control messages as MODULE frames. `to_encoder`: they go to the
/// far relay's encoder (sent by a decoder here).
pub fn put_controls(out: &mut Vec<u8>, controls: &[Control], to_encoder: bool) {
    for c in controls {
        let mut flags = FLAG_STAGE | (c.stage & STAGE_MASK);
        if to_encoder {
            flags |= FLAG_TO_ENCODER;
        }
        debug_assert!(c.msg.len() <= MAX_PAYLOAD);
        let f = Frame::Module {
            stream: LEG_STREAM,
            flags,
            payload: &c.msg,
        };
        f.encode(out);
    }
}

/// Where a received MODULE frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleTarget {
    Chain,
    Decoder(u8),
    Encoder(u8),
}

pub fn target(flags: u8) -> ModuleTarget {
    if flags & FLAG_STAGE == 0 {
        ModuleTarget::Chain
    } else if flags & FLAG_TO_ENCODER != 0 {
        ModuleTarget::Encoder(flags & STAGE_MASK)
    } else {
        ModuleTarget::Decoder(flags & STAGE_MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip_with_their_target() {
        let mut out = Vec::new();
        put_chain(&mut out, &[3, 2]);
        put_controls(
            &mut out,
            &[Control {
                stage: 1,
                msg: vec![9; 40],
            }],
            true,
        );
        put_controls(
            &mut out,
            &[Control {
                stage: 0,
                msg: vec![1],
            }],
            false,
        );
        put_data(&mut out, &vec![7u8; 70_000]);
        let mut d = frame::Decoder::new();
        d.push(&out);
        let mut seen = Vec::new();
        while let Ok(Some(f)) = d.next_frame() {
            seen.push(match f {
                Frame::Module { flags, payload, .. } => {
                    (format!("{:?}", target(flags)), payload.len())
                }
                Frame::Data { payload, .. } => ("data".into(), payload.len()),
                _ => ("other".into(), 0),
            });
        }
        let want: Vec<(String, usize)> = vec![
            ("Chain".into(), 2),
            ("Encoder(1)".into(), 40),
            ("Decoder(0)".into(), 1),
            ("data".into(), 65_535),
            ("data".into(), 70_000 - 65_535),
        ];
        assert_eq!(seen, want);
    }
}
