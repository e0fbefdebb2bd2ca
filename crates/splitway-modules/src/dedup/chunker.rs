//! Content-defined chunking: FastCDC (Xia et al., 2016) with a Gear rolling
//! hash and normalised chunking (a stricter mask before the average size, a
//! looser one after). Streaming: boundaries do not depend on how the input
//! was split into bursts, only on the bytes.

/// Chunks are never shorter (except a stream's tail).
pub const MIN_CHUNK: usize = 2 << 10;
/// The size chunks tend to.
pub const AVG_CHUNK: usize = 8 << 10;
/// Chunks are never longer.
pub const MAX_CHUNK: usize = 64 << 10;

/// Before the average size: 15 one-bits (boundaries rarer).
const MASK_S: u64 = !0u64 << (64 - 15);
/// After it: 11 one-bits (boundaries likelier).
const MASK_L: u64 = !0u64 << (64 - 11);

/// The Gear table: 256 pseudo-random words (splitmix64 from a fixed seed),
/// the same on every relay and every run.
const GEAR: [u64; 256] = gear_table();

const fn gear_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut state: u64 = 0x5350_4c57_4445_4455; // "SPLWDEDU"
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
}

/// The chunker's state between bursts.
#[derive(Debug, Clone, Default)]
pub struct Chunker {
    hash: u64,
    /// Bytes of the current chunk seen so far.
    len: usize,
}

impl Chunker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of the current, unfinished chunk.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Scans `data` (the stream's next bytes); returns `Some(n)` if the
    /// current chunk ends after `data[..n]` (the state is then reset for the
    /// next chunk), `None` if all of `data` belongs to the current chunk.
    pub fn next_boundary(&mut self, data: &[u8]) -> Option<usize> {
        let mut h = self.hash;
        let mut len = self.len;
        for (i, &b) in data.iter().enumerate() {
            h = (h << 1).wrapping_add(GEAR[b as usize]);
            len += 1;
            if len < MIN_CHUNK {
                continue;
            }
            let mask = if len < AVG_CHUNK { MASK_S } else { MASK_L };
            if h & mask == 0 || len >= MAX_CHUNK {
                self.hash = 0;
                self.len = 0;
                return Some(i + 1);
            }
        }
        self.hash = h;
        self.len = len;
        None
    }
}

/// Chunk lengths of a whole buffer (tests and benchmarks).
pub fn chunk_lengths(data: &[u8]) -> Vec<usize> {
    let mut c = Chunker::new();
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(n) = c.next_boundary(rest) {
        out.push(n);
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        out.push(rest.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    #[test]
    fn chunks_stay_within_their_bounds_and_average_near_the_target() {
        let data = noise(4 << 20, 7);
        let lens = chunk_lengths(&data);
        let (last, body) = lens.split_last().expect("chunks");
        assert!(*last <= MAX_CHUNK);
        assert!(body.iter().all(|&l| (MIN_CHUNK..=MAX_CHUNK).contains(&l)));
        let avg = data.len() / lens.len();
        assert!(
            (AVG_CHUNK / 2..AVG_CHUNK * 2).contains(&avg),
            "average chunk {avg}"
        );
    }

    #[test]
    fn boundaries_do_not_depend_on_how_the_stream_was_split() {
        let data = noise(1 << 20, 9);
        let whole = chunk_lengths(&data);
        let mut c = Chunker::new();
        let mut got = Vec::new();
        let mut cur = 0;
        for piece in data.chunks(1000) {
            let mut rest = piece;
            while let Some(n) = c.next_boundary(rest) {
                got.push(cur + n);
                cur = 0;
                rest = &rest[n..];
            }
            cur += rest.len();
        }
        if cur > 0 {
            got.push(cur);
        }
        assert_eq!(got, whole);
    }

    #[test]
    fn an_insertion_changes_only_the_chunks_around_it() {
        let a = noise(2 << 20, 11);
        let mut b = a.clone();
        b.splice(1 << 20..1 << 20, b"inserted bytes".iter().copied());
        let ca = chunk_lengths(&a);
        let cb = chunk_lengths(&b);
        let common_tail = ca
            .iter()
            .rev()
            .zip(cb.iter().rev())
            .take_while(|(x, y)| x == y)
            .count();
        let common_head = ca.iter().zip(cb.iter()).take_while(|(x, y)| x == y).count();
        assert!(
            common_head + common_tail + 3 >= ca.len(),
            "{common_head}+{common_tail} of {}",
            ca.len()
        );
    }
}
