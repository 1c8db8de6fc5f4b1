//! Serves a zone file over UDP until killed: `cargo run --release --example dns_stub -- ZONE
//! 127.0.0.1:5353`. Used by scripts/bench-send.sh; see `mailvolley::testkit::dns` for the format.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(zone), Some(addr)) = (args.next(), args.next()) else {
        return Err("usage: dns_stub ZONE-FILE IP:PORT".into());
    };
    let zone: mailvolley::testkit::dns::Zone = std::fs::read_to_string(&zone)?.parse()?;
    let stub = mailvolley::testkit::dns::DnsStub::start(addr.parse()?, zone)?;
    eprintln!("dns_stub: serving on {}", stub.addr());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
