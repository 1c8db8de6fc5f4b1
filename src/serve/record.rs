//! How the spool's values are laid out: a version octet, then fixed-width integers (big-endian)
//! and length-prefixed strings. Written by hand because they are few and small, and a reader
//! must refuse a damaged value with a typed error rather than trust it.

use thiserror::Error;

/// The layout version of every value written now.
const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("ends early (needs {needed} more octets)")]
    Short { needed: usize },
    #[error("layout version {0} is not one this volley reads")]
    Version(u8),
    #[error("a text field is not UTF-8")]
    NotUtf8,
    #[error("unknown {what} {value}")]
    Unknown { what: &'static str, value: u8 },
    #[error("{0} octets left over")]
    Trailing(usize),
}

/// Appends values in the spool's layout.
pub struct Writer(Vec<u8>);

impl Writer {
    pub fn new(capacity: usize) -> Writer {
        let mut v = Vec::with_capacity(capacity + 1);
        v.push(VERSION);
        Writer(v)
    }

    pub fn u8(mut self, v: u8) -> Writer {
        self.0.push(v);
        self
    }

    pub fn u32(mut self, v: u32) -> Writer {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(mut self, v: u64) -> Writer {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A string of at most 65,535 octets (addresses and names are far shorter; longer is cut
    /// at a character boundary rather than written wrong).
    pub fn str(mut self, s: &str) -> Writer {
        let mut end = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.0.extend_from_slice(&(end as u16).to_be_bytes());
        self.0.extend_from_slice(&s.as_bytes()[..end]);
        self
    }

    /// The rest of the value, unprefixed: only as the last field.
    pub fn rest(mut self, bytes: &[u8]) -> Vec<u8> {
        self.0.extend_from_slice(bytes);
        self.0
    }

    pub fn done(self) -> Vec<u8> {
        self.0
    }
}

/// Reads values in the spool's layout.
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(value: &'a [u8]) -> Result<Reader<'a>, DecodeError> {
        let mut r = Reader(value);
        match r.u8()? {
            VERSION => Ok(r),
            other => Err(DecodeError::Version(other)),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Short { needed: n - self.0.len() });
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let b = self.take(2)?;
        let len = u16::from_be_bytes([b[0], b[1]]) as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::NotUtf8)
    }

    pub fn rest(self) -> &'a [u8] {
        self.0
    }

    /// The value must end here.
    pub fn end(self) -> Result<(), DecodeError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn what_is_written_reads_back(a in any::<u8>(), b in any::<u32>(), c in any::<u64>(), s in ".{0,40}", rest in proptest::collection::vec(any::<u8>(), 0..64)) {
            let bytes = Writer::new(0).u8(a).u32(b).u64(c).str(&s).rest(&rest);
            let mut r = Reader::new(&bytes).unwrap();
            prop_assert_eq!(r.u8().unwrap(), a);
            prop_assert_eq!(r.u32().unwrap(), b);
            prop_assert_eq!(r.u64().unwrap(), c);
            prop_assert_eq!(r.str().unwrap(), s.as_str());
            prop_assert_eq!(r.rest(), rest.as_slice());
        }

        /// Any damage is an error or a value, never a panic.
        #[test]
        fn damaged_values_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(mut r) = Reader::new(&bytes) {
                let _ = r.u32().and_then(|_| r.str()).and_then(|_| r.u64());
            }
        }
    }

    #[test]
    fn damage_is_named() {
        assert_eq!(Reader::new(&[]).err(), Some(DecodeError::Short { needed: 1 }));
        assert_eq!(Reader::new(&[9]).err(), Some(DecodeError::Version(9)));
        let short = Writer::new(0).u8(1).done();
        let mut r = Reader::new(&short).unwrap();
        r.u8().unwrap();
        assert_eq!(r.u64(), Err(DecodeError::Short { needed: 8 }));
        let bad = [VERSION, 0, 2, 0xff, 0xfe];
        assert_eq!(Reader::new(&bad).unwrap().str(), Err(DecodeError::NotUtf8));
        let long = "é".repeat(40_000);
        let bytes = Writer::new(0).str(&long).done();
        let mut r = Reader::new(&bytes).unwrap();
        let cut = r.str().unwrap();
        assert!(cut.len() <= u16::MAX as usize && long.starts_with(cut), "cut at a character boundary");
        assert_eq!(r.end(), Ok(()));
    }
}
