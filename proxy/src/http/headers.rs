//! Header hygiene when a message changes protocol version or hops through the proxy.

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Marks a request that was HTTP/1 at the client and travels as HTTP/2 between proxies, so the
/// receiving proxy turns it back into HTTP/1 for the application.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("strait-orig-proto");
pub const ORIG_PROTO_HTTP1: HeaderValue = HeaderValue::from_static("HTTP/1.1");
/// The peer's identity, given to the application; never trusted when it arrives from outside.
pub const CLIENT_ID: HeaderName = HeaderName::from_static("strait-client-id");

/// Removes connection-specific headers (RFC 9110 §7.6.1), which HTTP/2 forbids and which describe
/// only the hop they arrived on. `te: trailers` is the one value HTTP/2 allows and gRPC needs.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if let Some(conn) = h.get(header::CONNECTION).cloned() {
        if let Ok(s) = conn.to_str() {
            for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                    if n != header::TE {
                        h.remove(n);
                    }
                }
            }
        }
    }
    for n in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        h.remove(n);
    }
    if let Some(te) = h.get(header::TE) {
        if !te.to_str().map(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("trailers"))).unwrap_or(false) {
            h.remove(header::TE);
        } else if te != "trailers" {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

/// Whether the request asks to switch protocols (HTTP/1 `Upgrade`, e.g. WebSocket).
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-foo"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn detects_upgrades() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(&h));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(is_upgrade(&h));
    }
}
