//! The client state machine fed arbitrary server bytes (in arbitrary pieces) while it has
//! transactions to send: it must never panic or loop, and must never report a message delivered
//! without a positive final reply.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mailvolley::proto::client::{Event, TxnResult};
use mailvolley::proto::{Address, Body, Client, ClientConfig, Domain, Envelope, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else { return };
    let now = Instant::now();
    let mut config = ClientConfig::new(Domain::new("fuzz.invalid").unwrap());
    config.depth = usize::from(flags & 7) + 1;
    config.pipelining = flags & 8 != 0;
    config.chunking = flags & 16 != 0;
    let mut client: Client<u32> = Client::new(config, now);
    let rcpts = vec![Address::new("a@x").unwrap(), Address::new("b@x").unwrap()];
    let envelope = Arc::new(Envelope { sender: Some(Address::new("s@x").unwrap()), recipients: rcpts });
    let message = Message { envelope, body: Body::new(b"hello\n.dot\n") };
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
        while let Some(event) = client.poll_event() {
            if let Event::Done(done) = event {
                finished += 1;
                if let TxnResult::Accepted(reply) = &done.result {
                    assert!((200..300).contains(&reply.code), "delivered without a 2xx");
                }
            }
        }
    }
    client.handle_eof();
    while let Some(event) = client.poll_event() {
        if let Event::Done(_) = event {
            finished += 1;
        }
    }
    assert!(client.is_closed());
    assert_eq!(finished, pushed, "every transaction pushed gets exactly one outcome");
});
