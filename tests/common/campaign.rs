//! Running `volley send` from the integration tests and reading its delivery log.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Runs `cmd`, killed after `limit` so a hung run fails the test instead of hanging it.
pub fn run(mut cmd: impl std::borrow::BorrowMut<Command>, limit: Duration) -> Output {
    let child = cmd.borrow_mut().stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_within(child, limit)
}

/// Waits for `child` to end and takes its output, killing it after `limit` so a process that
/// does not end fails the test instead of hanging it.
pub fn wait_within(child: std::process::Child, limit: Duration) -> Output {
    let id = child.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    // Told when the run ends, so it never kills a later process that got the same pid.
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(limit).is_err() {
            let _ = Command::new("kill").args(["-9", &id.to_string()]).status();
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done.send(());
    let _ = watchdog.join();
    out
}

/// `Command::output` bounded in time, for the short commands a test runs (`check`, `token`,
/// `queue`, help texts): one that hangs is killed after [`SHORT`] instead of hanging the test.
pub trait OutputWithin {
    fn output_within(&mut self, limit: Duration) -> Output;
}

impl OutputWithin for Command {
    fn output_within(&mut self, limit: Duration) -> Output {
        run(self, limit)
    }
}

/// Long enough for any short command on a loaded machine.
pub const SHORT: Duration = Duration::from_secs(60);

pub fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Each input line's final record; fails if a line has two.
pub fn finals(records: &[Value]) -> BTreeMap<u64, Value> {
    let mut finals = BTreeMap::new();
    for r in records {
        let status = r["status"].as_str().unwrap();
        if status == "run" || status == "deferred" || status == "shaping" {
            continue;
        }
        let line = r["line"].as_u64().unwrap();
        assert!(finals.insert(line, r.clone()).is_none(), "line {line} has two final records");
    }
    finals
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A list of two recipients (`a@`, `b@`) at each of `domains` and a short message, written to
/// `dir` as `list.csv` and `msg.txt`: the paths.
pub fn two_per_domain<'a>(
    dir: &Path,
    domains: impl IntoIterator<Item = &'a str>,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let list: String = std::iter::once("email".to_owned())
        .chain(domains.into_iter().flat_map(|d| [format!("a@{d}"), format!("b@{d}")]))
        .collect::<Vec<_>>()
        .join("\n");
    let list_path = dir.join("list.csv");
    std::fs::write(&list_path, list + "\n").unwrap();
    let msg = dir.join("msg.txt");
    std::fs::write(&msg, "From: a@example.com\nSubject: hi\n\nhello\n").unwrap();
    (list_path, msg)
}
