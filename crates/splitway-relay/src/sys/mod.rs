//! Every OS-specific socket and pipe trick splitway uses, in one place.
//!
//! - [`sockopt`]: socket options (transparent, marks, Nagle, keep-alive,
//!   buffers, linger-0 resets, TCP_INFO, Fast Open).
//! - [`pipe`]: pipes and `splice(2)` for the zero-copy engine.

pub mod pipe;
pub mod sockopt;
