//! Micro-benchmarks of the protocol core: the per-message costs the engine and sink pay.
//! Run: `cargo bench --bench proto`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mailvolley::proto::body::{Framing, encode};
use mailvolley::proto::client::Event;
use mailvolley::proto::server::DataReceiver;
use mailvolley::proto::{Address, Body, Client, ClientConfig, Domain, Envelope, Message, ReplyParser};

/// A realistic body: 76-character lines, a few starting with a dot, some bare LFs.
fn body(size: usize) -> Vec<u8> {
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n";
    let mut v = Vec::with_capacity(size + line.len());
    let mut i = 0;
    while v.len() < size {
        if i % 97 == 0 {
            v.push(b'.');
        }
        if i % 131 == 0 {
            v.extend_from_slice(&line[..line.len() - 2]);
            v.push(b'\n');
        } else {
            v.extend_from_slice(line);
        }
        i += 1;
    }
    v.truncate(size);
    v
}

fn replies(c: &mut Criterion) {
    let mut stream = Vec::new();
    stream.extend_from_slice(b"250-mx.example.org Hello\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n");
    for _ in 0..100 {
        stream.extend_from_slice(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as 1A2B3C4D5E\r\n");
    }
    let mut g = c.benchmark_group("reply_parser");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("pipelined_stream", |b| {
        b.iter(|| {
            let mut p = ReplyParser::new();
            let mut rest = &stream[..];
            let mut n = 0;
            while let Some((r, len)) = p.parse(rest).unwrap() {
                n += u32::from(r.code);
                rest = &rest[len..];
            }
            black_box(n)
        })
    });
    g.finish();
}

fn bodies(c: &mut Criterion) {
    let input = body(1 << 20);
    let mut g = c.benchmark_group("body_1MiB");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("encode_data", |b| b.iter(|| black_box(encode(Framing::Data, black_box(&input)))));
    g.bench_function("encode_raw_bdat", |b| b.iter(|| black_box(encode(Framing::Raw, black_box(&input)))));
    let clean: Vec<u8> = encode(Framing::Raw, &input).into_iter().collect();
    g.bench_function("encode_data_clean_crlf", |b| {
        b.iter(|| black_box(encode(Framing::Data, black_box(&clean))))
    });
    let wire = encode(Framing::Data, &input);
    g.bench_function("receive_data_counting", |b| {
        b.iter(|| {
            let mut r = DataReceiver::new();
            black_box(r.feed(black_box(&wire), None))
        })
    });
    g.bench_function("receive_data_keeping", |b| {
        let mut out = Vec::with_capacity(wire.len());
        b.iter(|| {
            out.clear();
            let mut r = DataReceiver::new();
            black_box(r.feed(black_box(&wire), Some(&mut out)))
        })
    });
    g.finish();
}

/// One pipelined transaction through the client state machine, replies included: the CPU the
/// engine spends per message outside the kernel.
fn client(c: &mut Criterion) {
    let now = Instant::now();
    let envelope = Arc::new(Envelope {
        sender: Some(Address::new("bench@volley.invalid").unwrap()),
        recipients: vec![Address::new("rcpt@sink.invalid").unwrap()],
    });
    let message = Message::new(envelope, Body::new(&body(1000)));
    let mut g = c.benchmark_group("client");
    for (name, caps, replies) in [
        (
            "bdat_transaction",
            "250-x\r\n250-PIPELINING\r\n250 CHUNKING\r\n",
            ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok: queued"],
        ),
        ("data_transaction", "250-x\r\n250 PIPELINING\r\n", ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 go"]),
    ] {
        let data_mode = name.starts_with("data");
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| {
            let mut config = ClientConfig::new(Domain::new("bench.invalid").unwrap());
            config.depth = 1;
            let mut client: Client<u64> = Client::new(config, now);
            client.handle_input(now, b"220 hi\r\n");
            let t = client.poll_transmit(now).unwrap();
            client.recycle(t);
            client.handle_input(now, caps.as_bytes());
            while client.poll_event().is_some() {}
            let feed = |client: &mut Client<u64>, line: &str| {
                client.handle_input(now, format!("{line}\r\n").as_bytes());
                while let Some(t) = client.poll_transmit(now) {
                    black_box(t.len());
                    client.recycle(t);
                }
            };
            b.iter(|| {
                client.push(message.clone(), 0).unwrap();
                while let Some(t) = client.poll_transmit(now) {
                    black_box(t.len());
                    client.recycle(t);
                }
                for line in replies {
                    feed(&mut client, line);
                }
                if data_mode {
                    feed(&mut client, "250 2.0.0 Ok: queued");
                }
                match client.poll_event() {
                    Some(Event::Done(d)) => black_box(d.user),
                    other => panic!("{other:?}"),
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, replies, bodies, client);
criterion_main!(benches);
