//! The README's HTTP quickstart, run as written (curl, against the real binary), with only the
//! address changed to the test server's: every command succeeds and the search finds the
//! document the quickstart wrote.

mod common;

use std::process::Command;

/// The commands of the first `sh` block under README's "### HTTP/JSON", continuation lines
/// joined.
fn quickstart() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### HTTP/JSON")
        .nth(1)
        .expect("README has an HTTP/JSON section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section has a sh block");
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            continue;
        }
        current.push_str(line);
        if !current.trim().is_empty() && !current.trim_start().starts_with('#') {
            commands.push(std::mem::take(&mut current));
        }
        current.clear();
    }
    commands
}

#[test]
fn the_readme_http_quickstart_runs_as_written() {
    let commands = quickstart();
    assert!(commands.len() >= 3, "{commands:?}");
    assert!(
        commands.iter().all(|c| c.starts_with("curl ")),
        "{commands:?}"
    );
    let data = tempfile::tempdir().unwrap();
    let (server, _url, base) = common::start_binary_doors(data.path(), &[]);
    let _server = common::cli::Server(server);
    let addr = base.trim_start_matches("http://");
    let mut last = serde_json::Value::Null;
    for command in &commands {
        let command = command.replace("127.0.0.1:7080", addr);
        let out = Command::new("bash")
            .args(["-c", &format!("{command} --fail-with-body --max-time 60")])
            .output()
            .expect("bash and curl run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{command}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        last = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{command}: {e}: {stdout}"));
        assert!(last.get("code").is_none(), "{command}: {last}");
    }
    let hits = last["hits"].as_array().expect("the last command searches");
    assert_eq!(hits[0]["document_id"], "a", "{last}");
}
