//! The client state machine against fuzzed servers, in two modes chosen by the second byte:
//!
//! - **raw**: arbitrary server bytes in arbitrary pieces. The client must never panic or loop,
//!   never report a message delivered without a positive final reply, and give every
//!   transaction exactly one outcome.
//! - **model**: a server that frames the client's commands and answers each one in order, as
//!   the fuzz data decides, but never answers the end of data (or BDAT) with 2xx; it may send
//!   any reply twice or slip in stray replies, up to three in a session, and it keeps
//!   answering until QUIT. However the replies shift, the client must report **nothing
//!   delivered**. That is the in-step rule's guarantee (see `proto::client`): checkpoints are
//!   proof against fewer extra replies than a transaction has commands (with more, a genuine
//!   `354` can be shifted exactly onto a later DATA), and a session cut short (421, a hang-up)
//!   before the next checkpoint proves nothing either way.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mailvolley::proto::client::{Event, TxnResult};
use mailvolley::proto::{Address, Body, Client, ClientConfig, Disposition, Domain, Envelope, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else { return };
    let Some((&mode, data)) = data.split_first() else { return };
    let now = Instant::now();
    let mut config = ClientConfig::new(Domain::new("fuzz.invalid").unwrap());
    config.depth = usize::from(flags & 7) + 1;
    config.pipelining = flags & 8 != 0;
    config.chunking = flags & 16 != 0;
    config.sync_every = usize::from(mode >> 5) + 1;
    // Sessions that end after one to four messages: their QUIT goes with the last content.
    if flags >> 5 < 4 {
        config.max_messages = u64::from(flags >> 5) + 1;
    }
    let client: Client<u32> = Client::new(config, now);
    let rcpts = vec![Address::new("a@x").unwrap(), Address::new("b@x").unwrap()];
    let envelope = Arc::new(Envelope { sender: Some(Address::new("s@x").unwrap()), recipients: rcpts });
    let message = Message::new(envelope, Body::new(b"hello\n.dot\n"));
    if mode & 1 == 0 {
        raw(client, message, flags, data, now);
    } else {
        model(client, message, mode, data, now);
    }
});

fn raw(mut client: Client<u32>, message: Message, flags: u8, data: &[u8], now: Instant) {
    let mut pushed = 0u32;
    let mut finished = 0u32;
    let mut buf = Vec::new();
    for (step, chunk) in data.chunks(usize::from(flags >> 5) * 7 + 1).enumerate() {
        while client.wants_transaction() && pushed < 16 {
            assert!(client.push(message.clone(), pushed).is_ok());
            pushed += 1;
        }
        while let Some(t) = client.poll_transmit(now) {
            client.recycle(t);
        }
        buf.extend_from_slice(chunk);
        let used = client.handle_input(now + Duration::from_millis(step as u64), &buf);
        assert!(used <= buf.len());
        buf.drain(..used);
        finished += drain(&mut client, false);
    }
    client.handle_eof();
    finished += drain(&mut client, false);
    assert!(client.is_closed());
    assert_eq!(finished, pushed, "every transaction pushed gets exactly one outcome");
}

/// Counts finished transactions; with `refused_all`, asserts none was delivered.
fn drain(client: &mut Client<u32>, refused_all: bool) -> u32 {
    let mut finished = 0;
    while let Some(event) = client.poll_event() {
        if let Event::Done(done) = event {
            finished += 1;
            if let TxnResult::Accepted(reply) = &done.result {
                assert!((200..300).contains(&reply.code), "delivered without a 2xx");
            }
            if refused_all {
                assert_ne!(done.disposition(), Disposition::Delivered, "{:?}", done.result);
                for i in 0..done.message.envelope.recipients.len() {
                    assert_ne!(done.recipient(i).0, Disposition::Delivered, "{:?}", done.result);
                }
            }
        }
    }
    finished
}

fn model(mut client: Client<u32>, message: Message, mode: u8, script: &[u8], now: Instant) {
    let mut server = Model::new(mode, script);
    let mut pushed = 0u32;
    let mut finished = 0u32;
    let mut inbuf = Vec::new();
    // FUZZ_TRACE=1 prints the conversation when replaying a crash.
    let trace = std::env::var_os("FUZZ_TRACE").is_some();
    for step in 0..2000u64 {
        let now = now + Duration::from_millis(step);
        while client.wants_transaction() && pushed < 24 {
            assert!(client.push(message.clone(), pushed).is_ok());
            pushed += 1;
        }
        let mut progress = false;
        while let Some(t) = client.poll_transmit(now) {
            if trace {
                eprintln!("C: {:?}", String::from_utf8_lossy(&t.to_vec()));
            }
            server.receive(&t.to_vec());
            client.recycle(t);
            progress = true;
        }
        if !server.out.is_empty() {
            // Hand the replies over in fuzz-sized pieces.
            let n = server.out.len().min(usize::from(server.byte()) % 64 + 1);
            if trace {
                eprintln!("S: {:?}", String::from_utf8_lossy(&server.out[..n]));
            }
            inbuf.extend(server.out.drain(..n));
            let used = client.handle_input(now, &inbuf);
            inbuf.drain(..used);
            progress = true;
        } else if server.closed && !client.is_closed() {
            client.handle_eof();
            progress = true;
        }
        finished += drain(&mut client, true);
        if !progress || client.is_closed() {
            break;
        }
    }
    if !client.is_closed() {
        client.handle_eof();
    }
    finished += drain(&mut client, true);
    assert_eq!(finished, pushed, "every transaction pushed gets exactly one outcome");
}

/// A server that answers every command in order, from a script.
struct Model<'a> {
    script: &'a [u8],
    caps: String,
    inbuf: Vec<u8>,
    bdat: Option<usize>,
    data: bool,
    out: Vec<u8>,
    closed: bool,
    /// Extra replies still allowed.
    extra: u8,
}

impl<'a> Model<'a> {
    fn new(mode: u8, script: &'a [u8]) -> Self {
        let mut caps = String::from("250-fuzz.test\r\n");
        for (bit, cap) in [(2, "PIPELINING"), (4, "CHUNKING"), (8, "ENHANCEDSTATUSCODES"), (16, "8BITMIME")] {
            if mode & bit != 0 {
                caps.push_str(&format!("250-{cap}\r\n"));
            }
        }
        caps.push_str("250 SIZE 100000\r\n");
        let mut m =
            Model { script, caps, inbuf: Vec::new(), bdat: None, data: false, out: Vec::new(), closed: false, extra: 3 };
        m.reply("220 fuzz.test ESMTP");
        m
    }

    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.script.split_first() else { return 0 };
        self.script = rest;
        b
    }

    /// One reply, then maybe the same again or a stray that only its own command could not get.
    fn reply(&mut self, text: &str) {
        if self.closed {
            return;
        }
        let start = self.out.len();
        for line in text.split('\n') {
            self.out.extend_from_slice(line.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        let stray = match self.byte() % 8 {
            0 => Some(String::from_utf8(self.out[start..].to_vec()).unwrap()),
            1 => Some("250 2.0.0 Ok\r\n".into()),
            2 => Some("250 Ok\r\n".into()),
            3 => Some("250 2.1.5 Ok\r\n".into()),
            4 => Some("550 5.7.1 no\r\n".into()),
            _ => None,
        };
        if let Some(s) = stray.filter(|_| self.extra > 0) {
            self.extra -= 1;
            self.out.extend_from_slice(s.as_bytes());
        }
    }

    fn receive(&mut self, bytes: &[u8]) {
        self.inbuf.extend_from_slice(bytes);
        while !self.closed {
            if let Some(n) = self.bdat {
                if self.inbuf.len() < n {
                    return;
                }
                self.inbuf.drain(..n);
                self.bdat = None;
                self.final_reply();
                continue;
            }
            if self.data {
                let end = if self.inbuf.starts_with(b".\r\n") {
                    Some(0)
                } else {
                    self.inbuf.windows(5).position(|w| w == b"\r\n.\r\n").map(|p| p + 2)
                };
                let Some(end) = end else { return };
                self.inbuf.drain(..end + 3);
                self.data = false;
                self.final_reply();
                continue;
            }
            let Some(lf) = self.inbuf.iter().position(|&b| b == b'\n') else { return };
            let line: Vec<u8> = self.inbuf.drain(..=lf).collect();
            let line = String::from_utf8_lossy(&line).to_ascii_uppercase();
            self.command(line.trim_end());
        }
    }

    /// The end of data: refused, whatever else happens.
    fn final_reply(&mut self) {
        let text = ["554 5.7.1 refused", "451 4.7.1 greylisted", "552 5.3.4 too big", "550 5.7.0 spam"]
            [usize::from(self.byte() % 4)];
        self.reply(text);
    }

    fn command(&mut self, line: &str) {
        let b = self.byte() % 4;
        let verb = line.split(' ').next().unwrap_or("");
        let text = match verb {
            "EHLO" if b == 3 => "503 5.5.1 no second EHLO".to_owned(),
            "EHLO" => self.caps.trim_end().replace("\r\n", "\n"),
            "MAIL" => ["250 2.1.0 Ok", "250 2.1.0 Ok", "451 4.3.0 later", "550 5.1.8 bad sender"][usize::from(b)].into(),
            "RCPT" => ["250 2.1.5 Ok", "250 2.1.5 Ok", "450 4.2.0 busy", "550 5.1.1 unknown"][usize::from(b)].into(),
            "DATA" => ["354 go ahead", "354 go ahead", "451 4.3.0 later", "554 5.5.1 no"][usize::from(b)].into(),
            "RSET" | "NOOP" => "250 2.0.0 Ok".into(),
            "QUIT" => "221 2.0.0 Bye".into(),
            "BDAT" => {
                self.bdat = line.split(' ').nth(1).and_then(|n| n.parse().ok());
                if self.bdat.is_none() {
                    self.reply("501 5.5.4 bad BDAT");
                }
                return;
            }
            _ => "500 5.5.2 what".into(),
        };
        self.reply(&text);
        if verb == "DATA" && text.starts_with("354") {
            self.data = true;
        }
        if verb == "QUIT" {
            self.closed = true;
        }
    }
}
