//! `keyauth serve` as a real process: start it on a free port, read its log lines, stop it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use keyauth_proto::key_authority_service_client::KeyAuthorityServiceClient;

use super::ADMIN_TOKEN;

pub(crate) fn keyauth() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyauth"));
    command
        .env_remove("KEYAUTH_ADMIN_TOKEN")
        .env_remove("KEYAUTH_DATABASE_URL");
    command
}

/// The server's stderr, a line at a time, read on a thread of its own (so the server never
/// blocks on a full pipe).
pub(crate) fn log_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Waits for a log line containing `needle` and returns it.
pub(crate) fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no log line with {needle:?}: {e}"),
        }
    }
}

/// The value after ` name` in a log line (the first `name` when it opens the line's fields).
fn field(line: &str, name: &str) -> String {
    line.split(&format!(" {name}"))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        .to_owned()
}

/// A `keyauth serve` child process on a free port.
pub(crate) struct ServerProcess {
    pub child: Child,
    pub addr: String,
    pub lines: mpsc::Receiver<String>,
    /// The `keyauth serving` log line.
    pub serving: String,
}

impl ServerProcess {
    /// Starts `keyauth serve` on `database` with extra flags, and waits until it serves.
    pub(crate) fn start(database: &str, extra: &[&str]) -> Self {
        let mut child = keyauth()
            .args(["serve", "--listen", "127.0.0.1:0", "--database", database])
            .args(extra)
            .env("KEYAUTH_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "keyauth=debug")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = log_lines(&mut child);
        let serving = wait_for_line(&lines, "keyauth serving");
        let addr = field(&serving, "addr=");
        ServerProcess {
            addr,
            serving: serving.clone(),
            child,
            lines,
        }
    }

    /// The HTTP listener's address, from the `keyauth serving` line (`off` without one).
    pub(crate) fn http_addr(&self) -> String {
        field(&self.serving, "http_addr=")
    }

    pub(crate) async fn client(&self) -> KeyAuthorityServiceClient<tonic::transport::Channel> {
        KeyAuthorityServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// SIGKILL: no drain, no flush, no goodbye.
    pub(crate) fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
