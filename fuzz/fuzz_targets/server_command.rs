//! Command-line framing and parsing on arbitrary input: never panics, never reads past a line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailvolley::proto::server::{Line, MAX_COMMAND_LINE, next_line, parse_command};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match next_line(rest) {
            Line::Complete { len, text_len } => {
                assert!(text_len < len && len <= rest.len() && len <= MAX_COMMAND_LINE);
                let _ = parse_command(&rest[..text_len]);
                rest = &rest[len..];
            }
            Line::TooLong => {
                assert!(rest.len() >= MAX_COMMAND_LINE);
                rest = &rest[MAX_COMMAND_LINE..];
            }
            Line::Incomplete => break,
        }
    }
});
