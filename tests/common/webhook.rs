//! A webhook receiver for tests: takes HTTP/1.1 POSTs on loopback (keep-alive), keeps each
//! request's head and body, and answers with the statuses it is told (200 once those run out).

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request: its head (lower-cased) and body.
#[derive(Debug, Clone)]
pub struct Got {
    pub head: String,
    pub body: Vec<u8>,
    /// The status it was answered.
    pub status: u16,
}

impl Got {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
    }
}

#[derive(Default)]
struct Shared {
    got: Mutex<Vec<Got>>,
    answers: Mutex<VecDeque<u16>>,
    then: Mutex<u16>,
    stop: AtomicBool,
    /// Every connection taken, closed at a stop (the receiver goes down).
    streams: Mutex<Vec<TcpStream>>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Listens on `addr` (a port picked before, to be "down" until now).
    pub fn start(addr: SocketAddr) -> Receiver {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared { then: Mutex::new(200), ..Shared::default() });
        let s = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let s = Arc::clone(&s);
                        std::thread::spawn(move || serve(stream, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Receiver { addr, shared, thread: Some(thread) }
    }

    /// Answers these statuses to the next requests, in order, then `then`.
    pub fn answer(&self, first: &[u16], then: u16) {
        *self.shared.answers.lock().unwrap() = first.iter().copied().collect();
        *self.shared.then.lock().unwrap() = then;
    }

    pub fn got(&self) -> Vec<Got> {
        self.shared.got.lock().unwrap().clone()
    }

    pub fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        for stream in self.shared.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for stream in self.shared.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A free loopback port, for a receiver started later.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn serve(stream: TcpStream, shared: &Shared) {
    shared.streams.lock().unwrap().push(stream.try_clone().unwrap());
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push_str(&line.to_ascii_lowercase()),
            }
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() || shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let status = shared.answers.lock().unwrap().pop_front().unwrap_or(*shared.then.lock().unwrap());
        shared.got.lock().unwrap().push(Got { head, body, status });
        let answer = format!("HTTP/1.1 {status} Whatever\r\nContent-Length: 2\r\n\r\nok");
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
