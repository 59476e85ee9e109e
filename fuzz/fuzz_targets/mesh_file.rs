//! The mesh file (embedded mode): YAML an operator edits by hand, read by controller and proxy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_proto::mesh::MeshFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = MeshFile::parse(text);
    }
});
