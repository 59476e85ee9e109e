//! A `Service` answer from the controller (protobuf bytes): decoded, turned into the proxy's
//! profile, and its policy stack built, as the proxy does with every update.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use strait_proto::discovery::v1 as pb;
use strait_proxy::{discover::ServiceProfile, metrics::Metrics, outbound::policy::stack::Logicals};

fuzz_target!(|data: &[u8]| {
    let Ok(svc) = pb::Service::decode(data) else {
        return;
    };
    let Ok(profile) = ServiceProfile::from_proto(&svc) else {
        return;
    };
    let profile = Arc::new(profile);
    let metrics = Metrics::new();
    let logicals = Logicals::default();
    let _ = logicals.get(&profile, &metrics);
    // A second update of the same service refreshes the stack in place.
    let _ = logicals.get(&profile, &metrics);
});
