//! The reply parser on arbitrary server output, split at an arbitrary point: it must never
//! panic, must consume only what it returns, and must agree with itself across read boundaries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailvolley::proto::ReplyParser;

fn replies(chunks: &[&[u8]]) -> (Vec<(u16, usize)>, bool) {
    let mut parser = ReplyParser::new();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parser.parse(&buf) {
                Ok(Some((reply, n))) => {
                    assert!(n <= buf.len());
                    out.push((reply.code, reply.lines().count()));
                    buf.drain(..n);
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let cut = usize::from(cut).min(data.len());
    let whole = replies(&[data]);
    let split = replies(&[&data[..cut], &data[cut..]]);
    assert_eq!(whole, split);
});
