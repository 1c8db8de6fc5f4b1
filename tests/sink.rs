//! `volley sink` over real loopback sockets, driven by raw scripted clients.

mod common;

use std::time::{Duration, Instant};

use common::{Raw, data_transaction, dumped, sink, temp_dir};
use mailvolley::sink::Faults;

#[test]
fn pipelined_group_is_answered_in_order_in_one_send() {
    let s = sink(|_| {});
    let mut c = Raw::greeted(s.local_addr());
    let reads_before = c.reads;
    c.send(
        "EHLO t\r\nMAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\nRCPT TO:<c@test>\r\nRCPT TO:<bad>\r\n\
         NOOP\r\nVRFY x\r\nRSET\r\nMAIL FROM:<a@test>\r\nDATA\r\n",
    );
    let codes = c.codes(10);
    assert_eq!(codes, vec![250, 250, 250, 250, 501, 250, 252, 250, 250, 554]);
    assert_eq!(c.reads - reads_before, 1, "one group, one send");
    let counters = s.stop().unwrap();
    assert_eq!(counters.transactions, 2);
    assert_eq!(counters.protocol_errors, 1);
}

#[test]
fn ehlo_advertises_extensions_with_flags() {
    let s = sink(|_| {});
    let mut c = Raw::greeted(s.local_addr());
    c.send("EHLO t\r\n");
    let text = c.reply().text;
    for ext in ["PIPELINING", "CHUNKING", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"] {
        assert!(text.lines().any(|l| l == ext), "{ext} in {text:?}");
    }
    let s2 = sink(|c| {
        c.pipelining = false;
        c.chunking = false;
    });
    let mut c = Raw::greeted(s2.local_addr());
    c.send("EHLO t\r\n");
    let text = c.reply().text;
    assert!(!text.contains("PIPELINING") && !text.contains("CHUNKING"), "{text}");
}

#[test]
fn data_with_dot_stuffing_arrives_byte_exact() {
    let dir = temp_dir("dots");
    let s = sink(|c| c.dump = Some(dir.clone()));
    let mut c = Raw::greeted(s.local_addr());
    c.ehlo();
    let r = data_transaction(&mut c, b"Subject: t\r\n\r\n..leading\r\n...two\r\n.\r\n");
    assert_eq!(r.code, 250);
    assert_eq!(r.enhanced.map(|e| e.to_string()).as_deref(), Some("2.0.0"));
    let files = dumped(&dir);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].0, "MAIL FROM:<a@test>\r\nRCPT TO:<b@test>");
    assert_eq!(files[0].1, b"Subject: t\r\n\r\n.leading\r\n..two\r\n");
}

#[test]
fn smuggling_attempts_do_not_end_data() {
    let dir = temp_dir("smuggle");
    let s = sink(|c| c.dump = Some(dir.clone()));
    let mut c = Raw::greeted(s.local_addr());
    c.ehlo();
    let content: &[u8] = b"a\n.\nMAIL FROM:<evil@x>\r\nb\r.\rc\r\n.\nd\r\n.\r\n";
    c.send("MAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\nDATA\r\n");
    assert_eq!(c.codes(3), vec![250, 250, 354]);
    c.send(content);
    assert_eq!(c.reply().code, 250, "only CRLF.CRLF ends the message");
    assert_eq!(c.cmd("NOOP"), 250, "and nothing after the fake terminators ran as a command");
    let files = dumped(&dir);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].1, b"a\n.\nMAIL FROM:<evil@x>\r\nb\r.\rc\r\n\nd\r\n");
    let counters = s.stop().unwrap();
    assert_eq!(counters.messages_accepted, 1);
    assert_eq!(counters.bare_lf, 3);
    assert_eq!(counters.bare_cr, 2);
}

#[test]
fn bdat_chunks_of_odd_sizes() {
    let dir = temp_dir("bdat");
    let s = sink(|c| c.dump = Some(dir.clone()));
    let mut c = Raw::greeted(s.local_addr());
    c.ehlo();
    c.send("MAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\nBDAT 1\r\nxBDAT 3\r\n\r\n.BDAT 0\r\nBDAT 0 LAST\r\n");
    let replies: Vec<_> = (0..6).map(|_| c.reply()).collect();
    let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
    // BDAT 0 without LAST is a syntax error-free no-op chunk in RFC 3030; we accept it.
    assert_eq!(codes, vec![250, 250, 250, 250, 250, 250]);
    assert!(replies[5].text.contains("queued"), "{:?}", replies[5]);
    // Chunks split across writes, and bytes that look like commands inside a chunk.
    c.send("MAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\nBDAT 11 LAST\r\nQUIT\r\n");
    assert_eq!(c.codes(2), vec![250, 250]);
    std::thread::sleep(Duration::from_millis(50));
    c.send("\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    let files = dumped(&dir);
    let bodies: Vec<&[u8]> = files.iter().map(|f| f.1.as_slice()).collect();
    assert!(bodies.contains(&&b"x\r\n."[..]), "{bodies:?}");
    assert!(bodies.contains(&&b"QUIT\r\n\r\n.\r\n"[..]), "{bodies:?}");
}

#[test]
fn bdat_without_transaction_is_consumed_then_refused() {
    let s = sink(|_| {});
    let mut c = Raw::greeted(s.local_addr());
    c.ehlo();
    c.send("BDAT 6 LAST\r\nNOOP\r\nNOOP\r\n");
    assert_eq!(c.codes(2), vec![503, 250], "the chunk's bytes were not run as commands");
    c.send("MAIL FROM:<a@test>\r\nBDAT 2 LAST\r\nxy");
    assert_eq!(c.codes(2), vec![250, 503], "no recipients");
}

#[test]
fn sequence_and_syntax_errors() {
    let s = sink(|c| c.max_size = 100);
    let mut c = Raw::greeted(s.local_addr());
    let cases: &[(&str, u16)] = &[
        ("MAIL FROM:<a@test>", 503),
        ("EHLO", 501),
        ("EHLO t", 250),
        ("RCPT TO:<b@test>", 503),
        ("DATA", 503),
        ("FROB", 500),
        ("STARTTLS", 502),
        ("MAIL FROM:<a@test> SIZE=101", 552),
        ("MAIL FROM:<a@test> FOO=BAR", 555),
        ("MAIL FROM:<a b@test>", 501),
        ("MAIL FROM:<a@test>", 250),
        ("MAIL FROM:<a@test>", 503),
        ("RCPT TO:<b@test> NOTIFY=NEVER", 555),
        ("DATA", 554),
        ("RSET", 250),
        ("HELP", 214),
        ("", 500),
        ("QUIT", 221),
    ];
    for (line, code) in cases {
        assert_eq!(c.cmd(line), *code, "{line:?}");
    }
    assert!(c.closed());
}

#[test]
fn message_over_size_limit_is_refused_after_its_content() {
    let s = sink(|c| c.max_size = 100);
    let mut c = Raw::greeted(s.local_addr());
    c.ehlo();
    let mut big = vec![b'x'; 150];
    big.extend_from_slice(b"\r\n.\r\n");
    assert_eq!(data_transaction(&mut c, &big).code, 552);
    c.send("MAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\nBDAT 150 LAST\r\n");
    c.send(vec![b'y'; 150]);
    assert_eq!(c.codes(3), vec![250, 250, 552]);
    assert_eq!(c.cmd("NOOP"), 250);
    let counters = s.stop().unwrap();
    assert_eq!(counters.messages_rejected, 2);
    assert_eq!(counters.messages_accepted, 0);
}

#[test]
fn overlong_lines_are_refused_without_buffering() {
    let s = sink(|_| {});
    let mut c = Raw::greeted(s.local_addr());
    c.send(format!("NOOP {}\r\n", "x".repeat(600)));
    let r = c.reply();
    assert_eq!((r.code, r.enhanced.map(|e| e.to_string())), (500, Some("5.5.2".into())));
    assert_eq!(c.cmd("NOOP"), 250, "the rest of the long line was discarded");
    // Four megabytes without a line end: one 500, memory stays bounded, the session goes on.
    let chunk = vec![b'z'; 64 * 1024];
    for _ in 0..64 {
        c.send(&chunk);
    }
    c.send("\r\nNOOP\r\n");
    assert_eq!(c.codes(2), vec![500, 250]);
    let counters = s.stop().unwrap();
    assert_eq!(counters.protocol_errors, 2);
}

#[test]
fn a_line_of_exactly_512_octets_is_accepted() {
    let s = sink(|_| {});
    let mut c = Raw::greeted(s.local_addr());
    let line = format!("NOOP {}", "x".repeat(512 - 2 - 5));
    assert_eq!(line.len() + 2, 512);
    assert_eq!(c.cmd(&line), 250);
}

#[test]
fn abrupt_disconnects_do_not_hurt_the_server() {
    let s = sink(|_| {});
    for cut in [
        "EHLO t\r\nMAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\nDATA\r\npartial con",
        "EHLO t\r\nMAIL FR",
        "EHLO t\r\nMAIL FROM:<a@test>\r\nBDAT 100\r\nabc",
    ] {
        let mut c = Raw::greeted(s.local_addr());
        c.send(cut);
        std::thread::sleep(Duration::from_millis(30));
        drop(c);
    }
    // Junk that is not SMTP at all.
    let mut c = Raw::greeted(s.local_addr());
    c.send(b"\x00\xff\xfe\r\n\x16\x03\x01\x02\x00\x01\x00\r\n");
    assert_eq!(c.codes(2), vec![500, 500]);
    drop(c);
    // Still serving.
    let mut c = Raw::greeted(s.local_addr());
    c.ehlo();
    assert_eq!(data_transaction(&mut c, b"ok\r\n.\r\n").code, 250);
    std::thread::sleep(Duration::from_millis(50));
    let counters = s.stop().unwrap();
    assert_eq!(counters.transactions_aborted, 2);
    assert_eq!(counters.messages_accepted, 1);
}

fn fault_script(seed: u64) -> Vec<u16> {
    let s = sink(|c| {
        let mut f = Faults::default();
        f.add_fail("rcpt=451:0.3").unwrap();
        f.add_fail("data=554:0.3").unwrap();
        c.faults = f;
        c.seed = seed;
    });
    let mut c = Raw::greeted(s.local_addr());
    c.ehlo();
    let mut codes = Vec::new();
    for _ in 0..40 {
        c.send("MAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\nDATA\r\n");
        let got = c.codes(3);
        codes.extend(&got);
        if got[2] == 354 {
            c.send("x\r\n.\r\n");
            codes.push(c.reply().code);
        } else {
            assert_eq!(c.cmd("RSET"), 250);
        }
    }
    codes
}

#[test]
fn fault_injection_is_repeatable_with_a_seed() {
    let a = fault_script(7);
    assert_eq!(a, fault_script(7), "same seed, same replies");
    assert_ne!(a, fault_script(8), "another seed, other replies");
    let count = |code| a.iter().filter(|&&c| c == code).count();
    assert!(count(451) > 3 && count(451) < 25, "{a:?}");
    assert!(count(554) > 0, "{a:?}");
}

#[test]
fn injected_421_and_disconnect_close_the_connection() {
    let s = sink(|c| {
        let mut f = Faults::default();
        f.add_fail("mail=421").unwrap();
        c.faults = f;
    });
    let mut c = Raw::greeted(s.local_addr());
    c.ehlo();
    c.send("MAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\n");
    assert_eq!(c.reply().code, 421);
    assert!(c.closed(), "421 closes, the pipelined RCPT gets no reply");

    let s = sink(|c| {
        let mut f = Faults::default();
        f.add_disconnect("rcpt=1").unwrap();
        c.faults = f;
    });
    let mut c = Raw::greeted(s.local_addr());
    c.ehlo();
    c.send("MAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\n");
    assert_eq!(c.reply().code, 250);
    assert!(c.closed(), "dropped without a reply");
    let counters = s.stop().unwrap();
    assert_eq!(counters.injected_disconnects, 1);
}

#[test]
fn delays_hold_the_reply() {
    let s = sink(|c| {
        let mut f = Faults::default();
        f.add_delay("greeting=150ms").unwrap();
        f.add_delay("data=100ms").unwrap();
        c.faults = f;
    });
    let started = Instant::now();
    let mut c = Raw::greeted(s.local_addr());
    assert!(started.elapsed() >= Duration::from_millis(150));
    c.ehlo();
    let before = Instant::now();
    assert_eq!(data_transaction(&mut c, b"x\r\n.\r\n").code, 250);
    assert!(before.elapsed() >= Duration::from_millis(100));
}

#[test]
fn connection_and_message_limits() {
    let s = sink(|c| {
        c.max_connections = Some(1);
        c.max_messages_per_connection = Some(2);
    });
    let mut first = Raw::greeted(s.local_addr());
    let mut second = Raw::connect(s.local_addr());
    assert_eq!(second.reply().code, 421);
    assert!(second.closed());
    first.ehlo();
    for _ in 0..2 {
        assert_eq!(data_transaction(&mut first, b"x\r\n.\r\n").code, 250);
    }
    assert_eq!(first.cmd("MAIL FROM:<a@test>"), 421);
    assert!(first.closed());
    let counters = s.stop().unwrap();
    assert_eq!(counters.connections_refused, 1);
}

#[test]
fn idle_connections_time_out() {
    let s = sink(|c| c.idle_timeout = Duration::from_millis(200));
    let mut c = Raw::greeted(s.local_addr());
    let r = c.reply();
    assert_eq!(r.code, 421);
    assert!(c.closed());
    assert_eq!(s.stop().unwrap().idle_timeouts, 1);
}

#[test]
fn exits_after_n_messages() {
    let s = sink(|c| {
        c.exit_after_messages = Some(3);
        c.threads = 2;
    });
    let mut c = Raw::greeted(s.local_addr());
    c.ehlo();
    for _ in 0..3 {
        assert_eq!(data_transaction(&mut c, b"x\r\n.\r\n").code, 250);
    }
    let counters = s.join().unwrap();
    assert_eq!(counters.messages_accepted, 3);
}

#[test]
fn a_quit_after_the_last_message_is_answered_when_the_sink_exits_regression() {
    // With `--exit-after-messages`, the sink used to end its threads, dropping every session,
    // as soon as the last message was accepted: swaks's QUIT then met a closed connection.
    let s = sink(|c| c.exit_after_messages = Some(1));
    let mut c = Raw::greeted(s.local_addr());
    c.ehlo();
    assert_eq!(data_transaction(&mut c, b"x\r\n.\r\n").code, 250);
    let waited = Instant::now();
    while !s.stop_requested() && waited.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Past the accept loop's stop poll: the threads are on their way out.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(c.cmd("QUIT"), 221);
    assert!(c.closed_cleanly());
    assert_eq!(s.join().unwrap().messages_accepted, 1);
}

#[test]
fn dump_write_failure_defers_instead_of_losing_the_message() {
    let dir = temp_dir("gone");
    let s = sink(|c| c.dump = Some(dir.join("missing-subdir")));
    let mut c = Raw::greeted(s.local_addr());
    c.ehlo();
    let r = data_transaction(&mut c, b"x\r\n.\r\n");
    assert_eq!(r.code, 451, "{r:?}");
    let counters = s.stop().unwrap();
    assert_eq!((counters.dump_errors, counters.messages_accepted), (1, 0));
}

#[test]
fn closing_with_unread_input_delivers_every_reply_regression() {
    // The sink used to close at once after a 421, with the client's pipelined commands still
    // unread: the kernel then sends RST, which can destroy replies in flight, so a client lost
    // the 250 of an accepted message and sent it again.
    let s = sink(|c| c.max_messages_per_connection = Some(1));
    let mut trailing = String::new();
    for _ in 0..2000 {
        trailing.push_str("RCPT TO:<more@test>\r\n");
    }
    for round in 0..30 {
        let mut c = Raw::greeted(s.local_addr());
        c.send(format!(
            "EHLO t\r\nMAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\nBDAT 3 LAST\r\nabcMAIL FROM:<a@test>\r\n{trailing}"
        ));
        assert_eq!(c.codes(5), vec![250, 250, 250, 250, 421], "round {round}");
        assert!(c.closed_cleanly(), "round {round}");
    }
    let counters = s.stop().unwrap();
    assert_eq!(counters.messages_accepted, 30);
}
