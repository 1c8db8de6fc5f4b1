//! The chunks a node holds (pending under it in the consumer group), and which of their rows
//! are not final yet: a chunk is acknowledged once every row of it is recorded final in Redis,
//! never before, so a chunk taken over always still names the rows its owner did not finish.

use std::collections::BTreeMap;

/// The rows of one chunk not yet recorded final.
struct Open {
    last: u64,
    lines: Vec<u64>,
}

#[derive(Default)]
pub struct Held {
    /// By first line.
    chunks: BTreeMap<u64, Open>,
    /// Chunks every row of which is recorded final: to acknowledge (and to keep fresh until
    /// then).
    done: Vec<u64>,
}

impl Held {
    /// Whether the chunk starting at `first` is held (open or waiting for its XACK).
    pub fn contains(&self, first: u64) -> bool {
        self.chunks.contains_key(&first) || self.done.contains(&first)
    }

    /// A chunk taken, with the lines of the rows handed to the source (those not final yet);
    /// none: it only waits for its acknowledgement.
    pub fn take(&mut self, first: u64, last: u64, lines: Vec<u64>) {
        match lines.is_empty() {
            true => self.done.push(first),
            false => {
                self.chunks.insert(first, Open { last, lines });
            }
        }
    }

    /// Row `line` is recorded final: its chunk is done once it was the last row open.
    pub fn finished(&mut self, line: u64) {
        let Some((&first, open)) = self.chunks.range_mut(..=line).next_back() else { return };
        if line > open.last {
            return;
        }
        if let Some(i) = open.lines.iter().position(|&l| l == line) {
            open.lines.swap_remove(i);
        }
        if open.lines.is_empty() {
            self.chunks.remove(&first);
            self.done.push(first);
        }
    }

    /// Chunks to acknowledge, at most `n`, taken out: put them back with [`Held::unacked`]
    /// if the acknowledgement fails.
    pub fn take_done(&mut self, n: usize) -> Vec<u64> {
        let n = n.min(self.done.len());
        self.done.drain(..n).collect()
    }

    pub fn unacked(&mut self, chunks: Vec<u64>) {
        self.done.splice(0..0, chunks);
    }

    pub fn has_done(&self) -> bool {
        !self.done.is_empty()
    }

    /// Every chunk pending under this node.
    pub fn ids(&self) -> Vec<u64> {
        self.chunks.keys().chain(self.done.iter()).copied().collect()
    }

    /// A chunk another node has taken over: the rows of it still open (for the source to
    /// drop if they only wait). A chunk only waiting for its acknowledgement stays: the
    /// acknowledgement is harmless, and its rows are recorded final.
    pub fn lose(&mut self, first: u64) -> Vec<u64> {
        self.chunks.remove(&first).map_or_else(Vec::new, |open| open.lines)
    }

    /// Chunks held, open or done.
    pub fn len(&self) -> usize {
        self.chunks.len() + self.done.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_done_when_its_last_open_row_is_final() {
        let mut held = Held::default();
        held.take(2, 5, vec![2, 3, 5]);
        held.take(6, 9, vec![7]);
        held.take(10, 12, vec![]);
        assert!(held.contains(2) && held.contains(10) && !held.contains(3));
        assert_eq!(held.take_done(8), vec![10], "a chunk with nothing open is done at once");
        held.finished(3);
        held.finished(4); // not one of its open rows (final elsewhere): nothing
        held.finished(42); // past every chunk: nothing
        held.finished(5);
        assert!(!held.has_done());
        held.finished(2);
        held.finished(7);
        assert_eq!(held.take_done(1), vec![2]);
        let rest = held.take_done(8);
        assert_eq!(rest, vec![6]);
        held.unacked(rest);
        assert_eq!(held.ids(), vec![6], "a chunk not yet acknowledged is still held");
    }

    #[test]
    fn a_lost_chunk_gives_its_open_rows() {
        let mut held = Held::default();
        held.take(2, 5, vec![2, 3, 5]);
        held.finished(3);
        let mut lost = held.lose(2);
        lost.sort();
        assert_eq!(lost, vec![2, 5]);
        assert!(held.is_empty() && held.lose(2).is_empty());
    }
}
