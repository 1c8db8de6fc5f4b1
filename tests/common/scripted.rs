//! A small SMTP server over real sockets that misbehaves on purpose: duplicated replies, stray
//! replies, refusals. One thread per connection; it stops when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Every reply is written twice (the greeting too).
    DuplicateEveryReply,
    /// A stray `250` a moment after the EHLO reply, once the client has pipelined its first
    /// transaction.
    StrayAfterEhlo,
    /// A stray `250` after the reply to the third RCPT of the session.
    StrayMidPipeline,
    /// `250` written right behind the `220` to STARTTLS, in the same segment: what a man in
    /// the middle injects (CVE-2011-0411).
    InjectAfterStartTls,
    /// `220` to STARTTLS, then bytes that are no TLS record.
    BrokenTls,
}

#[derive(Debug, Clone)]
pub struct Script {
    /// EHLO keywords, e.g. `["PIPELINING", "CHUNKING"]`; none makes a one-line EHLO reply.
    pub caps: Vec<&'static str>,
    /// The reply to the end of data (or BDAT LAST).
    pub final_reply: &'static str,
    pub fault: Fault,
    /// RCPT replies by recipient: the first whose fragment is in the address answers (else
    /// `250`).
    pub rcpt_replies: Vec<(&'static str, &'static str)>,
}

impl Script {
    pub fn new(caps: &[&'static str], final_reply: &'static str, fault: Fault) -> Script {
        Script { caps: caps.to_vec(), final_reply, fault, rcpt_replies: Vec::new() }
    }

    /// Answers RCPT of an address holding `fragment` with `reply`.
    pub fn rcpt_reply(mut self, fragment: &'static str, reply: &'static str) -> Script {
        self.rcpt_replies.push((fragment, reply));
        self
    }
}

#[derive(Debug, Default)]
pub struct Counts {
    pub sessions: AtomicU64,
    /// Messages answered with a 2xx at their end.
    pub accepted: AtomicU64,
    /// Messages answered with anything else at their end.
    pub refused: AtomicU64,
    /// Peer addresses seen.
    pub peers: Mutex<Vec<SocketAddr>>,
}

pub struct Scripted {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Scripted {
    pub fn start(script: Script) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let (stop2, counts2) = (Arc::clone(&stop), Arc::clone(&counts));
        let acceptor = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        counts2.sessions.fetch_add(1, Ordering::Relaxed);
                        counts2.peers.lock().unwrap().push(peer);
                        let (script, counts, stop) =
                            (script.clone(), Arc::clone(&counts2), Arc::clone(&stop2));
                        std::thread::spawn(move || {
                            let _ = serve(conn, &script, &counts, &stop);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Scripted { addr, counts, stop, acceptor: Some(acceptor) }
    }

    pub fn accepted(&self) -> u64 {
        self.counts.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn serve(conn: TcpStream, script: &Script, counts: &Counts, stop: &AtomicBool) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    conn.set_nodelay(true)?;
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let dup = script.fault == Fault::DuplicateEveryReply;
    let mut reply = |out: &mut TcpStream, text: &str| -> std::io::Result<()> {
        let mut bytes = text.replace('\n', "\r\n").into_bytes();
        bytes.extend_from_slice(b"\r\n");
        if dup {
            bytes.extend_from_slice(&bytes.clone());
        }
        out.write_all(&bytes)
    };
    reply(&mut out, "220 scripted ESMTP")?;
    let (mut rcpts, mut ehlos) = (0, 0);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e),
        }
        let cmd = line.trim_end().to_ascii_uppercase();
        let verb = cmd.split(' ').next().unwrap_or("");
        match verb {
            "EHLO" => {
                let mut lines = vec!["250-scripted".to_owned()];
                lines.extend(script.caps.iter().map(|c| format!("250-{c}")));
                let last = lines.len() - 1;
                lines[last].replace_range(3..4, " ");
                reply(&mut out, &lines.join("\n"))?;
                ehlos += 1;
                if script.fault == Fault::StrayAfterEhlo && ehlos == 1 {
                    std::thread::sleep(Duration::from_millis(30));
                    out.write_all(b"250 2.0.0 Ok\r\n")?;
                }
            }
            "HELO" => reply(&mut out, "250 scripted")?,
            "MAIL" => reply(&mut out, "250 2.1.0 Ok")?,
            "RCPT" => {
                let scripted = script
                    .rcpt_replies
                    .iter()
                    .find(|(fragment, _)| cmd.contains(&fragment.to_ascii_uppercase()));
                reply(&mut out, scripted.map_or("250 2.1.5 Ok", |(_, r)| r))?;
                rcpts += 1;
                if script.fault == Fault::StrayMidPipeline && rcpts == 3 {
                    out.write_all(b"250 2.1.5 Ok\r\n")?;
                }
            }
            "RSET" | "NOOP" => reply(&mut out, "250 2.0.0 Ok")?,
            "STARTTLS" if script.fault == Fault::InjectAfterStartTls => {
                out.write_all(b"220 2.0.0 Ready to start TLS\r\n250 2.0.0 injected\r\n")?;
                // Hold the line open: the client must hang up by itself.
                std::thread::sleep(Duration::from_millis(300));
                return Ok(());
            }
            "STARTTLS" if script.fault == Fault::BrokenTls => {
                reply(&mut out, "220 2.0.0 Ready to start TLS")?;
                std::thread::sleep(Duration::from_millis(20));
                out.write_all(b"this is no TLS record\r\n")?;
                return Ok(());
            }
            "DATA" => {
                reply(&mut out, "354 End data with <CR><LF>.<CR><LF>")?;
                let mut last = String::new();
                loop {
                    last.clear();
                    if reader.read_line(&mut last)? == 0 {
                        return Ok(());
                    }
                    if last == ".\r\n" {
                        break;
                    }
                }
                finish(&mut reply, &mut out, script, counts)?;
            }
            "BDAT" => {
                let n: usize = cmd.split(' ').nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                let mut chunk = vec![0u8; n];
                reader.read_exact(&mut chunk)?;
                finish(&mut reply, &mut out, script, counts)?;
            }
            "QUIT" => {
                reply(&mut out, "221 2.0.0 Bye")?;
                return Ok(());
            }
            _ => reply(&mut out, "502 5.5.2 Error: command not recognized")?,
        }
    }
}

fn finish(
    reply: &mut impl FnMut(&mut TcpStream, &str) -> std::io::Result<()>,
    out: &mut TcpStream,
    script: &Script,
    counts: &Counts,
) -> std::io::Result<()> {
    let counter = if script.final_reply.starts_with('2') { &counts.accepted } else { &counts.refused };
    counter.fetch_add(1, Ordering::Relaxed);
    reply(out, script.final_reply)
}
