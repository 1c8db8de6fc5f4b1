//! `volley serve` as a user runs it: the real binary, on a spool, stopped by SIGTERM or killed
//! with SIGKILL; and one HTTP/1.1 request to its API.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `volley serve`, SIGKILLed if the test ends without stopping it.
pub struct Serve {
    child: Option<Child>,
    pub smtp: SocketAddr,
    /// The HTTP API, when it runs.
    pub http: Option<SocketAddr>,
    /// `--metrics-listen`, when given.
    pub metrics: Option<SocketAddr>,
    pub lines: mpsc::Receiver<String>,
}

impl Serve {
    /// Starts `volley serve` on `spool`, delivering to `relay`, with `extra` flags, and waits
    /// for its listener.
    pub fn start(spool: &Path, relay: SocketAddr, extra: &[&str]) -> Serve {
        let relay = relay.to_string();
        let mut args = vec!["--relay", &relay];
        args.extend_from_slice(extra);
        Serve::routed(spool, &args)
    }

    /// Starts `volley serve` on `spool` with `args` (its routing among them), and waits for its
    /// listener.
    pub fn routed(spool: &Path, args: &[&str]) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_volley"));
        cmd.args(["serve", "--spool", spool.to_str().unwrap(), "--smtp-listen", "127.0.0.1:0"])
            .args(["--threads", "1"])
            // Retries a second apart, unless the test says otherwise.
            .args(if args.contains(&"--retry-after") { &[][..] } else { &["--retry-after", "1s"][..] })
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let line = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()));
            let line = line.unwrap_or_else(|_| panic!("volley serve did not start: {:?}", child.try_wait()));
            if let Some(rest) = line.strip_prefix("volley serve: SMTP on ") {
                let addr = rest.split([',', ' ']).next().unwrap().parse().unwrap();
                let after = |label: &str| {
                    rest.split(label).nth(1).map(|r| r.split([',', ' ']).next().unwrap().parse().unwrap())
                };
                let (http, metrics) = (after("HTTP on "), after("metrics on "));
                return Serve { child: Some(child), smtp: addr, http, metrics, lines };
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGTERM, then its exit code (within 30 s) and what it said.
    pub fn terminate(mut self) -> (Option<i32>, String) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("volley serve did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.code(), self.said())
    }

    /// Waits (up to 30 s) for it to stop by itself; its exit code and what it said.
    pub fn exited(mut self) -> (Option<i32>, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "volley serve did not stop by itself within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.code(), self.said())
    }

    /// Everything it said, once it has exited: the reader thread forwards its last lines after
    /// the exit, so they are waited for (until its stderr closes; 10 s at most), not only taken
    /// if already there.
    fn said(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            lines.push(line);
        }
        lines.join("\n")
    }

    /// SIGKILL, checking first that the process is volley itself, not a wrapper.
    pub fn kill_9(mut self) {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid())).unwrap();
        assert_eq!(comm.trim(), "volley", "the pid is volley's own");
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One HTTP/1.1 request; the answer's status, headers and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: volley\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    // A refused request may be answered before its body is read.
    let _ = stream.write_all(body.as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no answer: {answer:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// Waits until `done` holds, failing the test past `limit`.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
