//! Policy annotations (`retry.strait.io/*`, `timeout.strait.io/*`, …): any keys, any values.
//! Input: lines of `key=value`.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let map: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let (policy, errors) = strait_proto::policy::from_annotations(&map);
    // An annotation that was rejected is named in the errors; the policy is still whole.
    let _ = (policy, errors);
    for v in map.values() {
        let _ = strait_proto::policy::parse_duration_ms(v);
        let _ = strait_proto::policy::grpc_status_code(v);
    }
});
