//! Resilience policy from a Service's annotations (DESIGN §5). The parser lives in `strait-proto`,
//! so a proxy reading a mesh file directly applies the same policy the controller would send.

pub use strait_proto::policy::*;
