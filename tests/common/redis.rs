//! A private redis-server (Debian's) for the multi-node tests, on a free loopback port.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    aof: bool,
}

/// Whether the tests may skip when redis-server is missing (`cargo test` on a machine without
/// it); CI sets VOLLEY_REQUIRE_REDIS=1 and installs it, so there they cannot skip.
fn installed() -> bool {
    let found = Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_ok();
    if !found && std::env::var_os("VOLLEY_REQUIRE_REDIS").is_some() {
        panic!("redis-server is not installed and VOLLEY_REQUIRE_REDIS is set");
    }
    if !found {
        eprintln!("skipped: redis-server is not installed (apt-get install redis-server)");
    }
    found
}

impl Redis {
    /// Starts redis-server with its files in `dir`; with `aof`, every write is in the
    /// append-only file before it is answered (`appendfsync always`). `None`: not installed.
    pub fn start(dir: &Path, aof: bool) -> Option<Redis> {
        if !installed() {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Redis { child: None, port, dir: dir.to_owned(), aof };
        redis.spawn();
        Some(redis)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args(["--appendonly", if self.aof { "yes" } else { "no" }, "--appendfsync", "always"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("redis-server starts"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and files after `down`.
    pub fn kill_and_restart(&mut self, down: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::thread::sleep(down);
        self.spawn();
    }

    pub fn url(&self, campaign: &str) -> String {
        format!("redis://127.0.0.1:{}/{campaign}", self.port)
    }

    pub fn connection(&self) -> redis::Connection {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).unwrap();
        client.get_connection().unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
