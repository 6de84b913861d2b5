//! Driving the real binary from tests: a server killed if the test fails, and the CLI.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_quarry");

/// Runs `quarry ARGS` against `url` (`--server` goes after the (sub)command's name).
pub fn quarry(url: &str, args: &[&str]) -> Output {
    let at = if matches!(
        args[0],
        "jobs" | "snapshot" | "alias" | "evalset" | "settings"
    ) {
        2
    } else {
        1
    };
    Command::new(BIN)
        .args(&args[..at])
        .args(["--server", url])
        .args(&args[at..])
        .output()
        .unwrap()
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}

/// The server process, killed if the test panics with it running.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start(data: &Path, extra: &[&str]) -> (Server, String) {
    let (child, url) = super::start_binary(data, extra);
    (Server(child), url)
}

pub fn kill(server: Server) {
    drop(server);
}

pub fn terminate(mut server: Server) {
    Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            assert!(status.success(), "server exited with {status}");
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no exit");
        std::thread::sleep(Duration::from_millis(100));
    }
}
