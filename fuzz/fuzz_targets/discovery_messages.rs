//! Every other message the proxy decodes from the controller's discovery stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use strait_proto::discovery::v1 as pb;

fuzz_target!(|data: &[u8]| {
    let _ = pb::WatchResponse::decode(data);
    let _ = pb::InboundPolicy::decode(data);
});
