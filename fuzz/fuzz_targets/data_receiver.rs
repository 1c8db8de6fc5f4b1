//! The sink's DATA receiver on arbitrary content split anywhere: never panics, finds the same
//! end and the same content whatever the read boundaries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailvolley::proto::server::DataReceiver;

fn receive(chunks: &[&[u8]]) -> (Option<usize>, Vec<u8>) {
    let mut r = DataReceiver::new();
    let mut out = Vec::new();
    let mut offset = 0;
    for chunk in chunks {
        if let Some(n) = r.feed(chunk, Some(&mut out)) {
            assert!(n <= chunk.len());
            return (Some(offset + n), out);
        }
        offset += chunk.len();
    }
    assert_eq!(r.size(), out.len() as u64);
    (None, out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let cut = usize::from(cut).min(data.len());
    assert_eq!(receive(&[data]), receive(&[&data[..cut], &data[cut..]]));
});
