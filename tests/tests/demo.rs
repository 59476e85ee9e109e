//! `strait demo` (what `make demo` runs) starts a whole mesh, carries traffic through it and prints
//! golden metrics; here it runs for a few seconds and its output is checked.

use std::process::Command;

#[test]
fn the_demo_runs_and_prints_golden_metrics() {
    let out = Command::new(strait_tests::bin("strait"))
        .args(["demo", "--duration", "6", "--interval", "2", "--rps", "30"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("controller"), "the demo runs a controller:\n{stdout}");
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("orders.demo") || l.starts_with("payments.demo")).collect();
    assert!(rows.len() >= 4, "two services, printed at least twice:\n{stdout}");
    // Traffic flowed: a request rate above zero and a success rate on every row.
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        let rps: f64 = cols[2].parse().unwrap();
        assert!(rps > 5.0, "{row}");
        assert!(cols[1].ends_with('%'), "{row}");
    }
}
