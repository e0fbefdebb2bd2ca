//! Little-endian fixed-width helpers for the module wire formats.

/// Reads a little-endian u32 at `at`, if the slice is long enough.
pub(crate) fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a little-endian u64 at `at`, if the slice is long enough.
pub(crate) fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    let b = buf.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}
