//! How the results are printed. Text for people: one line per check under its group, the hint
//! below a check that is not ok. JSON for scripts, a stable schema (fields are only ever added):
//!
//! ```json
//! {"status": "ok|warn|fail",
//!  "groups": [{"name": "webhook",
//!              "checks": [{"name": "webhook-ca-bundle", "status": "fail", "detail": "...", "hint": "..."}]}]}
//! ```
//!
//! `status` is the worst of the checks'; `hint` is null for an ok check; `detail` is for people.

use serde::Serialize;

use super::{Group, Status};

#[derive(Serialize)]
struct Report<'a> {
    status: Status,
    groups: &'a [Group],
}

fn worst(groups: &[Group]) -> Status {
    groups.iter().flat_map(|g| &g.checks).map(|c| c.status).max().unwrap_or(Status::Ok)
}

pub fn json(groups: &[Group]) -> Result<String, serde_json::Error> {
    let mut s = serde_json::to_string_pretty(&Report { status: worst(groups), groups })?;
    s.push('\n');
    Ok(s)
}

pub fn text(groups: &[Group]) -> String {
    let mut out = String::new();
    for g in groups {
        out.push_str(g.name);
        out.push('\n');
        for c in &g.checks {
            let mark = match c.status {
                Status::Ok => "[ok]  ",
                Status::Warn => "[warn]",
                Status::Fail => "[FAIL]",
            };
            out.push_str(&format!("  {mark} {}: {}\n", c.name, c.detail));
            if let Some(hint) = &c.hint {
                out.push_str(&format!("         hint: {hint}\n"));
            }
        }
    }
    let (warn, fail) = groups.iter().flat_map(|g| &g.checks).fold((0, 0), |(w, f), c| match c.status {
        Status::Warn => (w + 1, f),
        Status::Fail => (w, f + 1),
        Status::Ok => (w, f),
    });
    out.push_str(&match (warn, fail) {
        (0, 0) => "status: ok\n".to_string(),
        (w, 0) => format!("status: ok with {w} warning(s)\n"),
        (w, f) => format!("status: {f} failed, {w} warning(s)\n"),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Check;

    #[test]
    fn schema() {
        let groups =
            [Group { name: "webhook", checks: vec![Check::ok("a", "fine"), Check::fail("b", "broken", "fix it")] }];
        let v: serde_json::Value = serde_json::from_str(&json(&groups).unwrap()).unwrap();
        assert_eq!(v["status"], "fail");
        assert_eq!(v["groups"][0]["name"], "webhook");
        assert_eq!(
            v["groups"][0]["checks"][0],
            serde_json::json!({"name": "a", "status": "ok", "detail": "fine", "hint": null})
        );
        assert_eq!(v["groups"][0]["checks"][1]["hint"], "fix it");
        let t = text(&groups);
        assert!(t.contains("[FAIL] b: broken\n         hint: fix it\n"), "{t}");
        assert!(t.ends_with("status: 1 failed, 0 warning(s)\n"), "{t}");
    }
}
