//! strait-proto owns the control-plane API (gRPC discovery and identity), the embedded mesh file
//! schema, and the annotation policy parser both sides share.

pub mod codec;
pub mod mesh;
pub mod policy;

pub mod discovery {
    pub mod v1 {
        tonic::include_proto!("strait.discovery.v1");
    }
}

pub mod identity {
    pub mod v1 {
        tonic::include_proto!("strait.identity.v1");
    }
}
