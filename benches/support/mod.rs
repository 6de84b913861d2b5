//! What the benchmarks share: where SciFact is, and the CPU to name beside every figure.

use std::path::PathBuf;

/// SciFact's directory (`QUARRY_SCIFACT`, else `../shared/datasets/scifact`), or exit loudly.
pub fn scifact_or_exit() -> PathBuf {
    let dir = std::env::var_os("QUARRY_SCIFACT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/scifact")
        });
    if !dir.join("corpus.jsonl.gz").exists() {
        eprintln!("!!! SKIPPED: SciFact not found (set QUARRY_SCIFACT or provide ../shared/datasets/scifact)");
        std::process::exit(2);
    }
    dir
}

/// The CPU's model name from /proc/cpuinfo.
#[allow(dead_code)]
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}
