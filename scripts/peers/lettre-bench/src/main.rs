//! lettre-bench HOST PORT MESSAGES CONNECTIONS: sends MESSAGES 1000-octet messages through
//! lettre's pooled transport, CONNECTIONS at a time, and prints "<messages/s> <delivered>".

use std::time::Instant;

use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, host, port, messages, connections] = &args[..] else {
        eprintln!("usage: lettre-bench HOST PORT MESSAGES CONNECTIONS");
        std::process::exit(2);
    };
    let (port, messages, connections): (u16, u64, u64) =
        (port.parse().unwrap(), messages.parse().unwrap(), connections.parse().unwrap());
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
        .port(port)
        .pool_config(PoolConfig::new().max_size(connections as u32))
        .build();
    // Headers plus filler to about 1000 octets, like volley bench and smtp-source -l 1000.
    let message = Message::builder()
        .from("bench@volley.invalid".parse().unwrap())
        .to("rcpt0@sink.invalid".parse().unwrap())
        .subject("lettre bench")
        .body("x".repeat(72).repeat(11))
        .unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..connections {
        let (transport, message) = (transport.clone(), message.clone());
        let share = messages / connections + u64::from(worker < messages % connections);
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for _ in 0..share {
                if transport.send(message.clone()).await.is_ok() {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut delivered = 0;
    for t in tasks {
        delivered += t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{:.0} {delivered}", delivered as f64 / secs);
}
