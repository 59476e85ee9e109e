//! `STRAIT_APP_PROBES`: the application's own kubelet probes, which the injector rewrote to go
//! through the admin port (`GET /app-probe/<container>/<kind>`), so that they keep working when the
//! inbound side is strict (kubelet has no mesh identity). The injector writes this table from the
//! pod spec; the proxy checks it at start-up, so a bad table is a config error, not a probe that
//! fails at run time.
//!
//! ```json
//! {"app/readiness": {"port": 8080, "path": "/healthz", "scheme": "HTTP", "host": "web",
//!                    "headers": [{"name": "x-probe", "value": "1"}], "timeoutSeconds": 1},
//!  "app/liveness": {"port": 8080, "tcp": true}}
//! ```
//!
//! Unknown fields are refused: the injector and the proxy ship together, and a misspelt field that
//! was silently ignored would probe something else than the pod spec says.

use std::{collections::BTreeMap, fmt, time::Duration};

use http::{HeaderName, HeaderValue, uri::PathAndQuery};
use serde::Deserialize;

/// kubelet's default (`timeoutSeconds` defaults to 1 in the API).
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The probe kinds kubelet runs, as they appear in the key and in the admin path.
pub const PROBE_KINDS: [&str; 3] = ["liveness", "readiness", "startup"];

/// The probes by key `<container>/<kind>`.
#[derive(Clone, Debug, Default)]
pub struct AppProbes(BTreeMap<String, AppProbe>);

impl AppProbes {
    pub fn get(&self, container: &str, kind: &str) -> Option<&AppProbe> {
        self.0.get(&format!("{container}/{kind}"))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the JSON object; every problem is returned (one message per problem), none ignored.
    pub fn parse(json: &str) -> Result<Self, Vec<String>> {
        let raw: BTreeMap<String, RawProbe> = serde_json::from_str(json).map_err(|e| vec![e.to_string()])?;
        let mut errors = Vec::new();
        let mut table = BTreeMap::new();
        for (key, raw) in raw {
            match AppProbe::from_raw(&key, raw) {
                Ok(probe) => {
                    table.insert(key, probe);
                }
                Err(e) => errors.push(format!("{key:?}: {e}")),
            }
        }
        if errors.is_empty() { Ok(AppProbes(table)) } else { Err(errors) }
    }
}

/// One probe as kubelet would have run it against the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppProbe {
    /// The application's port (on 127.0.0.1).
    pub port: u16,
    /// The whole probe (connect, TLS, request, response) must finish within this.
    pub timeout: Duration,
    pub action: ProbeAction,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeAction {
    /// `tcpSocket`: a connection is accepted.
    Tcp,
    /// `httpGet`.
    Http(HttpProbe),
}

#[derive(Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// `scheme: HTTPS`: TLS without verification, as kubelet does.
    pub https: bool,
    pub path: PathAndQuery,
    /// The `Host` header (`host`, or a `Host` entry of `headers`); `None`: `<pod IP>:<port>`, as kubelet.
    pub host: Option<HeaderValue>,
    /// Extra headers, in order (a name may repeat); they replace the default `User-Agent` and `Accept`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Header values may hold credentials and `/config` prints the configuration: names only.
impl fmt::Debug for HttpProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpProbe")
            .field("https", &self.https)
            .field("path", &self.path)
            .field("host", &self.host)
            .field("headers (values hidden)", &names)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProbe {
    port: u16,
    path: Option<String>,
    scheme: Option<String>,
    host: Option<String>,
    headers: Option<Vec<RawHeader>>,
    #[serde(default)]
    tcp: bool,
    timeout_seconds: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    value: String,
}

impl AppProbe {
    fn from_raw(key: &str, raw: RawProbe) -> Result<Self, String> {
        let Some((container, kind)) = key.split_once('/') else {
            return Err("the key is not <container>/<liveness|readiness|startup>".into());
        };
        if container.is_empty() || kind.contains('/') {
            return Err("the key is not <container>/<liveness|readiness|startup>".into());
        }
        if !PROBE_KINDS.contains(&kind) {
            return Err(format!("{kind:?} is not liveness, readiness or startup"));
        }
        let port = raw.port;
        if port == 0 {
            return Err("port 0 is not a port".into());
        }
        // The API server defaults 0 (unset) to 1 s.
        let timeout = match raw.timeout_seconds {
            None | Some(0) => DEFAULT_PROBE_TIMEOUT,
            Some(s) => Duration::from_secs(u64::from(s)),
        };
        let action = if raw.tcp {
            if raw.path.is_some() || raw.scheme.is_some() || raw.host.is_some() || raw.headers.is_some() {
                return Err("a tcp probe takes no path, scheme, host or headers".into());
            }
            ProbeAction::Tcp
        } else {
            ProbeAction::Http(HttpProbe::from_raw(raw)?)
        };
        Ok(AppProbe { port, timeout, action })
    }
}

impl HttpProbe {
    fn from_raw(raw: RawProbe) -> Result<Self, String> {
        let https = match raw.scheme.as_deref() {
            None => false,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) => return Err(format!("scheme {s:?} is not HTTP or HTTPS")),
        };
        // kubelet requests `/` for an empty path and joins a relative one to the root.
        let path = match raw.path.as_deref() {
            None | Some("") => "/".to_owned(),
            Some(p) if p.starts_with('/') => p.to_owned(),
            Some(p) => format!("/{p}"),
        };
        let path = PathAndQuery::try_from(path.as_str()).map_err(|e| format!("path {path:?}: {e}"))?;
        let mut host = match raw.host {
            None => None,
            Some(h) if h.is_empty() => None,
            Some(h) => {
                Some(HeaderValue::try_from(h.as_str()).map_err(|_| format!("host {h:?} is not a header value"))?)
            }
        };
        let mut headers = Vec::new();
        for h in raw.headers.unwrap_or_default() {
            let name =
                HeaderName::try_from(h.name.as_str()).map_err(|_| format!("header name {:?} is not valid", h.name))?;
            let value = HeaderValue::try_from(h.value.as_str())
                .map_err(|_| format!("the value of header {:?} is not a header value", h.name))?;
            // kubelet: a `Host` header sets the request's host.
            if name == http::header::HOST {
                host = Some(value);
            } else {
                headers.push((name, value));
            }
        }
        Ok(HttpProbe { https, path, host, headers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_and_tcp_probes() {
        let t = AppProbes::parse(
            r#"{"app/readiness": {"port": 8080, "path": "/healthz?full=1", "scheme": "HTTPS", "host": "web",
                 "headers": [{"name": "X-Probe", "value": "1"}, {"name": "Host", "value": "other"}], "timeoutSeconds": 3},
                "app/liveness": {"port": 8080, "tcp": true},
                "side/startup": {"port": 9000, "path": "ready"}}"#,
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        let r = t.get("app", "readiness").unwrap();
        assert_eq!((r.port, r.timeout), (8080, Duration::from_secs(3)));
        let ProbeAction::Http(h) = &r.action else { panic!("{r:?}") };
        assert!(h.https);
        assert_eq!(h.path.as_str(), "/healthz?full=1");
        assert_eq!(h.host.as_ref().unwrap(), "other", "a Host header wins, as in kubelet");
        assert_eq!(h.headers, [(HeaderName::from_static("x-probe"), HeaderValue::from_static("1"))]);
        assert!(!format!("{h:?}").contains("\"1\""), "header values are not printed: {h:?}");
        let l = t.get("app", "liveness").unwrap();
        assert_eq!((l.port, l.timeout, &l.action), (8080, DEFAULT_PROBE_TIMEOUT, &ProbeAction::Tcp));
        let ProbeAction::Http(s) = &t.get("side", "startup").unwrap().action else { panic!() };
        assert_eq!((s.https, s.path.as_str(), s.host.is_none()), (false, "/ready", true));
        assert!(t.get("app", "startup").is_none());
    }

    #[test]
    fn refuses_bad_tables_with_every_reason() {
        for bad in ["", "[]", "{\"app/readiness\": {\"path\": \"/\"}}", "{\"app/readiness\": {\"port\": 70000}}"] {
            assert!(AppProbes::parse(bad).is_err(), "{bad}");
        }
        let e = AppProbes::parse(
            r#"{"app/ready": {"port": 1}, "noslash": {"port": 1}, "a/liveness": {"port": 0},
                "b/liveness": {"port": 1, "scheme": "ftp"}, "c/liveness": {"port": 1, "tcp": true, "path": "/"},
                "d/liveness": {"port": 1, "headers": [{"name": "bad name", "value": "x"}]},
                "e/liveness": {"port": 1, "timeout": 3}}"#,
        )
        .unwrap_err();
        // The unknown field fails the whole document (serde), before the per-entry checks.
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("unknown field `timeout`"), "{e:?}");
        let e = AppProbes::parse(
            r#"{"app/ready": {"port": 1}, "noslash": {"port": 1}, "a/liveness": {"port": 0},
                "b/liveness": {"port": 1, "scheme": "ftp"}, "c/liveness": {"port": 1, "tcp": true, "path": "/"},
                "d/liveness": {"port": 1, "headers": [{"name": "bad name", "value": "x"}]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.len(), 6, "{e:?}");
        assert!(e.iter().any(|m| m.contains("\"ready\" is not liveness, readiness or startup")), "{e:?}");
    }
}
