//! `strait inject` / `strait uninject` on a stream of YAML documents. The stream is split on its
//! `---` lines here, not by a YAML library, so every document that is not changed (a ConfigMap, a
//! Service, a workload that did not ask for injection) is written back as its original text, byte
//! for byte, comments included. Changed documents are re-serialized, their keys kept in the order
//! the input had them.
//!
//! Pods are injected, and the pod templates of Deployments, StatefulSets, DaemonSets,
//! ReplicaSets, ReplicationControllers, Jobs and CronJobs (`spec.jobTemplate.spec.template`), also
//! inside a `List`'s items.

use serde_json::Value;

use super::{Context, ManifestError, Outcome, template::INJECT_ANNOTATION};

/// What to do with every pod template.
#[derive(Clone, Copy, Debug)]
pub enum Mode<'a> {
    /// `enable`: inject even without the opt-in annotation, adding it (an explicit
    /// `strait.io/inject: disabled` still wins).
    Inject {
        ctx: Context<'a>,
        enable: bool,
    },
    Uninject,
}

/// The new stream and one line per workload for the user (injected, skipped and why, warnings).
pub fn process(input: &[u8], mode: Mode<'_>) -> Result<(String, Vec<String>), ManifestError> {
    let input = std::str::from_utf8(input).map_err(|_| ManifestError::NotUtf8)?;
    let mut out = String::with_capacity(input.len() * 2);
    let mut report = Vec::new();
    for (i, doc) in split(input).into_iter().enumerate() {
        let parse_text = format!("{}\n{}", doc.separator_rest(), doc.body);
        let parsed = match serde_yaml::from_str::<serde_yaml::Value>(&parse_text) {
            Ok(v) => v,
            Err(e) => {
                report.push(format!("document {}: not YAML ({e}); written back unchanged", i + 1));
                out.push_str(doc.separator);
                out.push_str(doc.body);
                continue;
            }
        };
        let changed = match serde_json::to_value(&parsed) {
            Ok(json) if json.is_object() => {
                let mut json = json;
                process_object(&mut json, mode, &mut report).then_some(json)
            }
            // Empty documents, scalars, lists and YAML that JSON cannot hold (non-string keys).
            _ => None,
        };
        match changed {
            None => {
                out.push_str(doc.separator);
                out.push_str(doc.body);
            }
            Some(json) => {
                if !doc.separator.is_empty() {
                    out.push_str("---\n");
                }
                out.push_str(&serde_yaml::to_string(&ordered_like(&json, Some(&parsed)))?);
            }
        }
    }
    Ok((out, report))
}

/// A document: its separator line (empty for the first) and the text up to the next one.
struct Doc<'a> {
    separator: &'a str,
    body: &'a str,
}

impl Doc<'_> {
    /// What follows `---` on the separator line (`--- {a: 1}` is a document too).
    fn separator_rest(&self) -> &str {
        self.separator.strip_prefix("---").unwrap_or("").trim_end_matches(['\n', '\r'])
    }
}

fn is_separator(line: &str) -> bool {
    let l = line.trim_end_matches(['\n', '\r']);
    l == "---" || l.starts_with("--- ") || l.starts_with("---\t")
}

fn split(input: &str) -> Vec<Doc<'_>> {
    let mut docs = Vec::new();
    let (mut separator, mut start, mut pos) = ("", 0, 0);
    for line in input.split_inclusive('\n') {
        if is_separator(line) {
            docs.push(Doc { separator, body: &input[start..pos] });
            separator = &input[pos..pos + line.len()];
            start = pos + line.len();
        }
        pos += line.len();
    }
    docs.push(Doc { separator, body: &input[start..] });
    // A stream that starts with `---` has nothing before it.
    if docs.first().is_some_and(|d| d.separator.is_empty() && d.body.is_empty()) && docs.len() > 1 {
        docs.remove(0);
    }
    docs
}

/// Injects or uninjects the pod templates of one object; whether anything changed.
fn process_object(obj: &mut Value, mode: Mode<'_>, report: &mut Vec<String>) -> bool {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("(unnamed)").to_string();
    let namespace = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
    let pointer = match kind.as_str() {
        "List" => {
            let Some(items) = obj.get_mut("items").and_then(Value::as_array_mut) else { return false };
            let mut changed = false;
            for item in items.iter_mut().filter(|i| i.is_object()) {
                changed |= process_object(item, mode, report);
            }
            return changed;
        }
        "Pod" => "",
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => return false,
    };
    let who = format!("{}/{name}", kind.to_ascii_lowercase());
    let Some(template) = obj.pointer_mut(pointer) else {
        report.push(format!("{who}: skipped: no pod template at {pointer}"));
        return false;
    };
    match mode {
        Mode::Uninject => {
            let new = super::uninject_template(template);
            if new == *template {
                report.push(format!("{who}: skipped: not injected"));
                return false;
            }
            *template = new;
            report.push(format!("{who} uninjected"));
            true
        }
        Mode::Inject { ctx, enable } => {
            let mut input = template.clone();
            if enable {
                annotate(&mut input);
            }
            let ctx = Context { namespace: &namespace, ..ctx };
            match super::inject_template(&input, &ctx) {
                Outcome::Injected { template: new, warnings } => {
                    *template = new;
                    report.extend(warnings.iter().map(|w| format!("{who}: warning: {w}")));
                    report.push(format!("{who} injected"));
                    true
                }
                Outcome::Unchanged { reason } => {
                    report.push(format!("{who}: skipped: {reason}"));
                    false
                }
            }
        }
    }
}

/// Adds `strait.io/inject: enabled` to a template that has no opt-in annotation.
fn annotate(template: &mut Value) {
    let Some(root) = template.as_object_mut() else { return };
    let metadata = root.entry("metadata").or_insert_with(|| Value::Object(Default::default()));
    if metadata.is_null() {
        *metadata = Value::Object(Default::default());
    }
    let Some(metadata) = metadata.as_object_mut() else { return };
    let annotations = metadata.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
    if annotations.is_null() {
        *annotations = Value::Object(Default::default());
    }
    if let Some(a) = annotations.as_object_mut() {
        a.entry(INJECT_ANNOTATION).or_insert_with(|| "enabled".into());
    }
}

/// `new` as YAML, with the keys `old` had in `old`'s order and new keys after them (`name` first,
/// as people write Kubernetes objects). List items are matched by `name`, else by position.
fn ordered_like(new: &Value, old: Option<&serde_yaml::Value>) -> serde_yaml::Value {
    use serde_yaml::Value as Y;
    match new {
        Value::Object(m) => {
            let old_map = old.and_then(Y::as_mapping);
            let mut out = serde_yaml::Mapping::new();
            let mut keys: Vec<&String> = Vec::new();
            if let Some(om) = old_map {
                keys.extend(om.keys().filter_map(Y::as_str).filter_map(|k| m.get_key_value(k).map(|(k, _)| k)));
            }
            let mut rest: Vec<&String> = m.keys().filter(|k| !keys.contains(k)).collect();
            rest.sort_by_key(|k| (k.as_str() != "name", k.as_str()));
            keys.extend(rest);
            for k in keys {
                let old_v = old_map.and_then(|om| om.get(k.as_str()));
                out.insert(Y::String(k.clone()), ordered_like(&m[k], old_v));
            }
            Y::Mapping(out)
        }
        Value::Array(items) => {
            let old_items = old.and_then(Y::as_sequence);
            let by_name =
                |name: &str| old_items.and_then(|o| o.iter().find(|i| i.get("name").and_then(Y::as_str) == Some(name)));
            Y::Sequence(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let old_item = match item.get("name").and_then(Value::as_str) {
                            Some(n) => by_name(n),
                            None => old_items.and_then(|o| o.get(i)),
                        };
                        ordered_like(item, old_item)
                    })
                    .collect(),
            )
        }
        other => serde_yaml::to_value(other).unwrap_or(Y::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_separator_lines_only() {
        let docs = split("a: 1\n---\nb: '---'\n--- # c\nc: 3\n---\n");
        let parts: Vec<(&str, &str)> = docs.iter().map(|d| (d.separator, d.body)).collect();
        assert_eq!(parts, [("", "a: 1\n"), ("---\n", "b: '---'\n"), ("--- # c\n", "c: 3\n"), ("---\n", "")]);
        let docs = split("---\na: 1");
        assert_eq!(docs.len(), 1);
        assert_eq!((docs[0].separator, docs[0].body), ("---\n", "a: 1"));
        let joined: String = split("x\n---\ny\n").iter().map(|d| format!("{}{}", d.separator, d.body)).collect();
        assert_eq!(joined, "x\n---\ny\n");
    }
}
