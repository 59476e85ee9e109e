//! Per-workload settings from `config.strait.io/*` annotations, on the pod (or pod template) or
//! on its namespace; the pod's value wins. A value that does not parse never blocks the pod: the
//! injector's default is used and a warning names the annotation and the value.

use std::collections::BTreeMap;

use serde_json::Value;

use super::InjectorConfig;

pub const SKIP_INBOUND_PORTS: &str = "config.strait.io/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS: &str = "config.strait.io/skip-outbound-ports";
pub const OPAQUE_PORTS: &str = "config.strait.io/opaque-ports";
pub const PROXY_LOG_LEVEL: &str = "config.strait.io/proxy-log-level";
pub const PROXY_LOG_FORMAT: &str = "config.strait.io/proxy-log-format";
pub const PROXY_CPU_REQUEST: &str = "config.strait.io/proxy-cpu-request";
pub const PROXY_MEMORY_REQUEST: &str = "config.strait.io/proxy-memory-request";
pub const PROXY_CPU_LIMIT: &str = "config.strait.io/proxy-cpu-limit";
pub const PROXY_MEMORY_LIMIT: &str = "config.strait.io/proxy-memory-limit";
pub const REWRITE_PROBES: &str = "config.strait.io/rewrite-probes";

/// What the annotations asked for, already checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    /// `22,8000-8010`, normalized; `None`: no ports skipped.
    pub skip_inbound_ports: Option<String>,
    pub skip_outbound_ports: Option<String>,
    /// Port numbers and ranges (container port names resolved), for `STRAIT_INBOUND_OPAQUE_PORTS`.
    pub opaque_ports: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    /// The proxy's `resources`, the configuration's with the overrides applied.
    pub resources: Value,
    pub rewrite_probes: bool,
}

/// The annotations of a pod and its namespace, pod first.
pub struct Annotations<'a> {
    pub pod: Option<&'a serde_json::Map<String, Value>>,
    pub namespace: Option<&'a BTreeMap<String, String>>,
}

impl Annotations<'_> {
    /// The value and where it came from (`pod` or `namespace`). A pod annotation that is not a
    /// string (JSON can say anything) counts as absent there.
    pub fn get(&self, key: &str) -> Option<(&str, &'static str)> {
        if let Some(v) = self.pod.and_then(|m| m.get(key)).and_then(Value::as_str) {
            return Some((v, "pod"));
        }
        self.namespace.and_then(|m| m.get(key)).map(|v| (v.as_str(), "namespace"))
    }
}

fn warn(warnings: &mut Vec<String>, key: &str, value: &str, from: &str, why: &str, default: &str) {
    warnings.push(format!("annotation {key}={value:?} on the {from} ignored: {why}; using {default}"));
}

/// Reads every override; `ports` are the app containers' named ports (for opaque port names).
pub fn read(
    a: &Annotations<'_>,
    config: &InjectorConfig,
    named_ports: &BTreeMap<String, u16>,
    warnings: &mut Vec<String>,
) -> Overrides {
    let mut o = Overrides { resources: config.resources.clone(), rewrite_probes: true, ..Overrides::default() };
    for (key, slot) in
        [(SKIP_INBOUND_PORTS, &mut o.skip_inbound_ports), (SKIP_OUTBOUND_PORTS, &mut o.skip_outbound_ports)]
    {
        if let Some((v, from)) = a.get(key) {
            match port_ranges(v, &BTreeMap::new()) {
                Ok(list) if list.is_empty() => {}
                Ok(list) => *slot = Some(list),
                Err(why) => warn(warnings, key, v, from, &why, "no skipped ports"),
            }
        }
    }
    if let Some((v, from)) = a.get(OPAQUE_PORTS) {
        match port_ranges(v, named_ports) {
            Ok(list) if list.is_empty() => {}
            Ok(list) => o.opaque_ports = Some(list),
            Err(why) => warn(warnings, OPAQUE_PORTS, v, from, &why, "no opaque ports in the proxy's environment"),
        }
    }
    if let Some((v, from)) = a.get(PROXY_LOG_LEVEL) {
        match log_level(v) {
            Some(l) => o.log_level = Some(l),
            None => warn(
                warnings,
                PROXY_LOG_LEVEL,
                v,
                from,
                "not a log filter such as info or warn,strait_proxy=debug",
                &config.log_level,
            ),
        }
    }
    if let Some((v, from)) = a.get(PROXY_LOG_FORMAT) {
        match v.trim() {
            f @ ("plain" | "json") => o.log_format = Some(f.to_string()),
            _ => warn(warnings, PROXY_LOG_FORMAT, v, from, "not plain or json", "plain"),
        }
    }
    if let Some((v, from)) = a.get(REWRITE_PROBES) {
        match v.trim() {
            "true" => {}
            "false" => o.rewrite_probes = false,
            _ => warn(warnings, REWRITE_PROBES, v, from, "not true or false", "true"),
        }
    }
    o.resources = resources(a, &config.resources, warnings);
    o
}

/// The proxy's resources: the configuration's, with the four overrides. A request above its
/// limit would make the API server reject the pod, so it is lowered to the limit (with a warning).
fn resources(a: &Annotations<'_>, base: &Value, warnings: &mut Vec<String>) -> Value {
    let mut r = match base {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    let overrides = [
        (PROXY_CPU_REQUEST, "requests", "cpu"),
        (PROXY_MEMORY_REQUEST, "requests", "memory"),
        (PROXY_CPU_LIMIT, "limits", "cpu"),
        (PROXY_MEMORY_LIMIT, "limits", "memory"),
    ];
    for (key, section, resource) in overrides {
        let Some((v, from)) = a.get(key) else { continue };
        let v = v.trim();
        if quantity(v).is_none() {
            warn(
                warnings,
                key,
                v,
                from,
                "not a Kubernetes quantity such as 100m, 0.5, 64Mi or 1G",
                "the injector's default",
            );
            continue;
        }
        let entry = r.entry(section).or_insert_with(|| Value::Object(serde_json::Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(serde_json::Map::new());
        }
        if let Some(m) = entry.as_object_mut() {
            m.insert(resource.to_string(), Value::String(v.to_string()));
        }
    }
    for resource in ["cpu", "memory"] {
        let get = |section: &str| r.get(section).and_then(|s| s.get(resource)).cloned();
        let (Some(req), Some(lim)) = (get("requests"), get("limits")) else { continue };
        let (Some(rq), Some(lq)) = (quantity_value(&req), quantity_value(&lim)) else { continue };
        if rq > lq {
            warnings.push(format!(
                "the proxy's {resource} request {} is above its limit {}: the request is set to the limit",
                display(&req),
                display(&lim)
            ));
            if let Some(m) = r.get_mut("requests").and_then(Value::as_object_mut) {
                m.insert(resource.to_string(), lim);
            }
        }
    }
    Value::Object(r)
}

fn display(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn quantity_value(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => quantity(s),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// The value of a Kubernetes quantity (`100m`, `0.5`, `64Mi`, `1G`, `1e3`), or `None` when it is
/// not one (or is negative: no resource is).
pub fn quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(end);
    if num.is_empty() || num.starts_with('.') && num.len() == 1 || num.matches('.').count() > 1 {
        return None;
    }
    let n: f64 = num.trim_start_matches('+').parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse::<i32>().ok().filter(|x| x.abs() <= 18)?),
        _ => return None,
    };
    let v = n * mult;
    v.is_finite().then_some(v)
}

/// A `tracing` filter (`info`, `warn,strait_proxy=debug`), normalized; `None` when it is not one.
pub fn log_level(s: &str) -> Option<String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let s = s.trim();
    if s.is_empty() || s.len() > 512 {
        return None;
    }
    let target_ok =
        |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'));
    for d in s.split(',').map(str::trim) {
        let ok = match d.split_once('=') {
            Some((t, l)) => target_ok(t) && LEVELS.contains(&l.to_ascii_lowercase().as_str()),
            None => LEVELS.contains(&d.to_ascii_lowercase().as_str()) || target_ok(d),
        };
        if !ok {
            return None;
        }
    }
    Some(s.split(',').map(str::trim).collect::<Vec<_>>().join(","))
}

/// `22, 8000-8010, http` → `22,8000-8010,8080` (names from `named`); the grammar of
/// `strait-proxy init --skip-*-ports` and `STRAIT_INBOUND_OPAQUE_PORTS`.
pub fn port_ranges(s: &str, named: &BTreeMap<String, u16>) -> Result<String, String> {
    let port = |p: &str| -> Result<u16, String> {
        let p = p.trim();
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            Ok(_) | Err(_) if p.chars().all(|c| c.is_ascii_digit()) => Err(format!("{p:?} is not a port (1-65535)")),
            _ => named
                .get(p)
                .copied()
                .ok_or_else(|| format!("{p:?} is not a port number or the name of a container port")),
        }
    };
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if a > b {
                    return Err(format!("{part:?} is an empty range"));
                }
                out.push(if a == b { a.to_string() } else { format!("{a}-{b}") });
            }
            None => out.push(port(part)?.to_string()),
        }
    }
    Ok(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity("100m"), Some(0.1));
        assert_eq!(quantity("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("1G"), Some(1e9));
        assert_eq!(quantity("0.5"), Some(0.5));
        assert_eq!(quantity("1e3"), Some(1000.0));
        for bad in ["", "lots", "-1", "1.2.3", "10mb", ".", "1e999", "Mi"] {
            assert_eq!(quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn log_levels_and_ports() {
        assert_eq!(log_level(" warn, strait_proxy=debug ").as_deref(), Some("warn,strait_proxy=debug"));
        assert_eq!(log_level("loud=yes"), None);
        assert_eq!(log_level("a b"), None);
        let named = BTreeMap::from([("http".to_string(), 8080)]);
        assert_eq!(port_ranges("22, 8000-8010,http,9-9", &named).unwrap(), "22,8000-8010,8080,9");
        assert!(port_ranges("0", &named).is_err());
        assert!(port_ranges("70000", &named).is_err());
        assert!(port_ranges("9-1", &named).is_err());
        assert!(port_ranges("grpc", &named).is_err());
    }
}
