//! Kubelet probes through the proxy's admin port. The kubelet has no mesh identity, so in strict
//! inbound mode its plaintext probes to the app's ports would be refused. The injector rewrites
//! each app container's httpGet and tcpSocket probe to `GET :7191/app-probe/<container>/<kind>`
//! (the admin port is never intercepted), and tells the proxy the original in `STRAIT_APP_PROBES`
//! (contracts.md); the proxy runs it against the app on loopback. exec and grpc probes are left
//! alone, as is a probe whose named port no container port resolves. The original handlers are
//! kept verbatim in the pod annotation `strait.io/original-probes`, so uninjecting restores them
//! exactly.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::template::ADMIN_PORT;

pub const ORIGINAL_PROBES_ANNOTATION: &str = "strait.io/original-probes";
pub const KINDS: [(&str, &str); 3] =
    [("livenessProbe", "liveness"), ("readinessProbe", "readiness"), ("startupProbe", "startup")];

/// What the rewrite produced: the `STRAIT_APP_PROBES` value and the originals, both keyed
/// `<container>/<kind>`.
#[derive(Debug, Default)]
pub struct Rewritten {
    pub app_probes: Map<String, Value>,
    pub originals: Map<String, Value>,
}

/// The kubelet's default probe timeout.
const DEFAULT_TIMEOUT_SECONDS: u64 = 1;

/// Rewrites the probes of `container` (an app container) in place.
pub fn rewrite(container: &mut Value, out: &mut Rewritten, warnings: &mut Vec<String>) {
    let Some(name) = container.get("name").and_then(Value::as_str).map(str::to_string) else { return };
    let named = named_ports(container);
    let Some(c) = container.as_object_mut() else { return };
    for (field, kind) in KINDS {
        let Some(probe) = c.get_mut(field).and_then(Value::as_object_mut) else { continue };
        let key = format!("{name}/{kind}");
        let timeout = probe.get("timeoutSeconds").and_then(Value::as_u64).unwrap_or(DEFAULT_TIMEOUT_SECONDS);
        let (handler, spec) = if let Some(h) = probe.get("httpGet").and_then(Value::as_object) {
            ("httpGet", http_spec(h, &named, timeout))
        } else if let Some(t) = probe.get("tcpSocket").and_then(Value::as_object) {
            (
                "tcpSocket",
                resolve(t.get("port"), &named)
                    .map(|port| json!({"port": port, "tcp": true, "timeoutSeconds": timeout})),
            )
        } else {
            continue;
        };
        let Some(spec) = spec else {
            warnings.push(format!(
                "the {kind} probe of container {name} is not rewritten: its port {} is not a port number or the name of one of its ports",
                probe.get(handler).and_then(|h| h.get("port")).map_or_else(|| "(none)".to_string(), Value::to_string)
            ));
            continue;
        };
        let Some(original) = probe.remove(handler) else { continue };
        out.originals.insert(key.clone(), json!({ handler: original }));
        out.app_probes.insert(key, spec);
        probe.insert("httpGet".into(), json!({"port": ADMIN_PORT, "path": format!("/app-probe/{name}/{kind}")}));
    }
}

fn http_spec(h: &Map<String, Value>, named: &BTreeMap<String, u16>, timeout: u64) -> Option<Value> {
    let port = resolve(h.get("port"), named)?;
    let mut spec = Map::new();
    spec.insert("port".into(), port.into());
    for (from, to) in [("path", "path"), ("scheme", "scheme"), ("host", "host")] {
        if let Some(v) = h.get(from).and_then(Value::as_str) {
            spec.insert(to.into(), v.into());
        }
    }
    if let Some(headers) = h.get("httpHeaders").and_then(Value::as_array) {
        let headers: Vec<Value> = headers
            .iter()
            .filter_map(|hd| Some(json!({"name": hd.get("name")?.as_str()?, "value": hd.get("value")?.as_str()?})))
            .collect();
        spec.insert("headers".into(), headers.into());
    }
    spec.insert("timeoutSeconds".into(), timeout.into());
    Some(Value::Object(spec))
}

/// A probe's port: a number, or the name of one of the container's ports.
fn resolve(port: Option<&Value>, named: &BTreeMap<String, u16>) -> Option<u16> {
    match port? {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0),
        Value::String(s) => match s.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            Ok(_) => None,
            Err(_) => named.get(s).copied(),
        },
        _ => None,
    }
}

/// The container's named ports (`ports[].name` → `containerPort`).
pub fn named_ports(container: &Value) -> BTreeMap<String, u16> {
    container
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p.get("name")?.as_str()?;
            let port = u16::try_from(p.get("containerPort")?.as_u64()?).ok()?;
            Some((name.to_string(), port))
        })
        .collect()
}

/// Puts back the original handlers of the rewritten probes in `containers`: from the
/// `strait.io/original-probes` annotation, else rebuilt from the proxy's `STRAIT_APP_PROBES`.
pub fn restore(
    containers: &mut [Value],
    originals: Option<&Map<String, Value>>,
    app_probes: Option<&Map<String, Value>>,
) {
    for c in containers {
        let Some(name) = c.get("name").and_then(Value::as_str).map(str::to_string) else { continue };
        let Some(obj) = c.as_object_mut() else { continue };
        for (field, kind) in KINDS {
            let Some(probe) = obj.get_mut(field).and_then(Value::as_object_mut) else { continue };
            let path = format!("/app-probe/{name}/{kind}");
            let rewritten = probe.get("httpGet").is_some_and(|h| {
                h.get("path").and_then(Value::as_str) == Some(path.as_str())
                    && h.get("port").and_then(Value::as_u64) == Some(u64::from(ADMIN_PORT))
            });
            if !rewritten {
                continue;
            }
            let key = format!("{name}/{kind}");
            let handler = originals
                .and_then(|o| o.get(&key))
                .and_then(Value::as_object)
                .filter(|h| h.len() == 1)
                .cloned()
                .or_else(|| app_probes.and_then(|a| a.get(&key)).and_then(from_app_probe));
            if let Some(handler) = handler {
                probe.remove("httpGet");
                probe.extend(handler);
            }
        }
    }
}

/// An httpGet or tcpSocket handler from a `STRAIT_APP_PROBES` entry (named ports come back as numbers).
fn from_app_probe(spec: &Value) -> Option<Map<String, Value>> {
    let port = spec.get("port")?.as_u64()?;
    let mut m = Map::new();
    if spec.get("tcp").and_then(Value::as_bool) == Some(true) {
        m.insert("tcpSocket".into(), json!({"port": port}));
        return Some(m);
    }
    let mut h = Map::new();
    h.insert("port".into(), port.into());
    for k in ["path", "scheme", "host"] {
        if let Some(v) = spec.get(k) {
            h.insert(k.into(), v.clone());
        }
    }
    if let Some(headers) = spec.get("headers") {
        h.insert("httpHeaders".into(), headers.clone());
    }
    m.insert("httpGet".into(), Value::Object(h));
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_tcp_probes_go_through_the_admin_port_named_ports_resolved() {
        let mut c = json!({
            "name": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"httpGet": {"port": "http", "path": "/healthz", "httpHeaders": [{"name": "X", "value": "1"}]}, "periodSeconds": 3},
            "readinessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 2},
            "startupProbe": {"exec": {"command": ["true"]}}
        });
        let original = c.clone();
        let (mut out, mut warnings) = (Rewritten::default(), Vec::new());
        rewrite(&mut c, &mut out, &mut warnings);
        assert!(warnings.is_empty());
        assert_eq!(
            c["livenessProbe"],
            json!({"httpGet": {"port": 7191, "path": "/app-probe/web/liveness"}, "periodSeconds": 3})
        );
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"port": 7191, "path": "/app-probe/web/readiness"}, "timeoutSeconds": 2})
        );
        assert_eq!(c["startupProbe"], original["startupProbe"]);
        assert_eq!(
            Value::Object(out.app_probes.clone()),
            json!({
                "web/liveness": {"port": 8080, "path": "/healthz", "headers": [{"name": "X", "value": "1"}], "timeoutSeconds": 1},
                "web/readiness": {"port": 8080, "tcp": true, "timeoutSeconds": 2}
            })
        );
        let mut restored = [c.clone()];
        restore(&mut restored, Some(&out.originals), None);
        assert_eq!(restored[0], original);
        // Without the annotation, from the proxy's environment: the named port comes back as a number.
        let mut rebuilt = [c];
        restore(&mut rebuilt, None, Some(&out.app_probes));
        assert_eq!(rebuilt[0]["livenessProbe"]["httpGet"]["port"], 8080);
        assert_eq!(rebuilt[0]["readinessProbe"], original["readinessProbe"]);
    }

    #[test]
    fn an_unresolvable_port_is_left_alone_with_a_warning() {
        let mut c = json!({"name": "web", "livenessProbe": {"httpGet": {"port": "nope"}}, "readinessProbe": {"tcpSocket": {"port": 0}}});
        let original = c.clone();
        let (mut out, mut warnings) = (Rewritten::default(), Vec::new());
        rewrite(&mut c, &mut out, &mut warnings);
        assert_eq!(c, original);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(out.app_probes.is_empty());
    }
}
