//! Byte-level plumbing shared by both directions: replaying peeked bytes, counting bytes,
//! the original destination of a redirected connection, the proxy-to-proxy transport header, and
//! bidirectional copy for opaque TCP.

pub mod counted;
pub mod header;
pub mod orig_dst;
pub mod prefixed;
pub mod tcp;

pub use counted::Counted;
pub use prefixed::Prefixed;
