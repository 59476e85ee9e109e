//! strait-proto owns the control-plane API (gRPC discovery and identity) and the embedded mesh file schema.

pub mod mesh;

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
