//! The transport header a peer proxy sends first on every mesh connection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_proxy::transport::header::Header;

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    rt.block_on(async {
        let mut io = data;
        if let Ok(h) = Header::read(&mut io).await {
            // What parses encodes back to a header that parses to the same value.
            let bytes = h.encode();
            let mut again = &bytes[..];
            let h2 = Header::read(&mut again)
                .await
                .expect("an encoded header parses");
            assert_eq!(h, h2);
        }
    });
});
