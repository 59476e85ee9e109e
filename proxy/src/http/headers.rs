//! Header hygiene when a message changes protocol version or hops through the proxy.

use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::ProxyError;

/// The largest request header list the proxy forwards, on either hop, counted as HTTP/2 counts it
/// (name + value + 32 bytes per field, RFC 9113 §6.5.2). hyper's HTTP/2 default of 16 KiB made a
/// request with large cookies or tokens fail between two proxies (431) although each HTTP/1 hop
/// took it; Envoy allows 60 KiB, so what passes there passes here. Beyond it: 431 with
/// `strait-error: headers-too-large`. The proxy's own `strait-*` headers are not counted, so a list
/// the outbound side forwards is never refused by the inbound side for what the proxy added.
pub const DEFAULT_MAX_HEADER_LIST_SIZE: usize = 64 * 1024;
/// What the HTTP/1 and HTTP/2 codecs (servers and clients) accept: above the limit, so an oversized
/// list still reaches the proxy and gets its 431 with `strait-error` instead of the codec's bare
/// 431 or a stream reset; the margin also covers pseudo-headers and the proxy's own headers.
pub const CODEC_MAX_HEADER_LIST_SIZE: usize = 2 * DEFAULT_MAX_HEADER_LIST_SIZE;

/// Refuses a header list over [`DEFAULT_MAX_HEADER_LIST_SIZE`].
pub fn check_size(h: &HeaderMap) -> Result<(), ProxyError> {
    let size: usize = h
        .iter()
        .filter(|(n, _)| !n.as_str().starts_with("strait-"))
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum();
    if size > DEFAULT_MAX_HEADER_LIST_SIZE { Err(ProxyError::HeadersTooLarge) } else { Ok(()) }
}

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
