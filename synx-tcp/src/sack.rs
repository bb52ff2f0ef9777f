//! The sender's SACK scoreboard (RFC 2018, RFC 6675): which bytes above SND.UNA the peer holds.

use super::seq::SeqNum;

pub const MAX_BLOCKS: usize = 6;
/// RFC 6675 2: DupThresh.
pub const DUP_THRESH: u32 = 3;

#[derive(Clone, Copy, Debug, Default)]
pub struct Scoreboard {
    /// Sorted, disjoint `[left, right)` ranges, all above SND.UNA.
    blocks: [(SeqNum, SeqNum); MAX_BLOCKS],
    n: u8,
}

impl Scoreboard {
    pub fn blocks(&self) -> &[(SeqNum, SeqNum)] {
        &self.blocks[..self.n as usize]
    }

    pub fn clear(&mut self) {
        self.n = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn sacked_bytes(&self) -> u32 {
        self.blocks().iter().map(|&(l, r)| r.since(l)).sum()
    }

    pub fn highest(&self) -> Option<SeqNum> {
        self.blocks().last().map(|b| b.1)
    }

    /// Record a SACK block; ignored unless `una < left < right <= snd_max` (RFC 2018 and D-SACK
    /// blocks below SND.UNA carry nothing for recovery).
    pub fn add(&mut self, left: SeqNum, right: SeqNum, una: SeqNum, snd_max: SeqNum) {
        if !(una.lt(left) && left.lt(right) && right.le(snd_max)) {
            return;
        }
        let mut merged = (left, right);
        let mut out = [(SeqNum(0), SeqNum(0)); MAX_BLOCKS + 1];
        let mut k = 0;
        let mut placed = false;
        for &(l, r) in self.blocks() {
            if r.lt(merged.0) {
                out[k] = (l, r);
                k += 1;
            } else if l.gt(merged.1) {
                if !placed {
                    out[k] = merged;
                    k += 1;
                    placed = true;
                }
                out[k] = (l, r);
                k += 1;
            } else {
                merged = (merged.0.min(l), merged.1.max(r));
            }
        }
        if !placed {
            out[k] = merged;
            k += 1;
        }
        // Full: forget the highest ranges; that only makes recovery more conservative.
        let k = k.min(MAX_BLOCKS);
        self.blocks[..k].copy_from_slice(&out[..k]);
        self.n = k as u8;
    }

    /// Forget everything at or below the new SND.UNA.
    pub fn trim(&mut self, una: SeqNum) {
        let mut k = 0;
        for i in 0..self.n as usize {
            let (l, r) = self.blocks[i];
            if r.gt(una) {
                self.blocks[k] = (l.max(una), r);
                k += 1;
            }
        }
        self.n = k as u8;
    }

    /// Is `seq` inside a SACKed range? Returns the range's right edge.
    pub fn sacked_at(&self, seq: SeqNum) -> Option<SeqNum> {
        self.blocks().iter().find(|&&(l, r)| seq.in_range(l, r)).map(|b| b.1)
    }

    /// Next SACKed range start above `seq`.
    pub fn next_sacked_after(&self, seq: SeqNum) -> Option<SeqNum> {
        self.blocks().iter().find(|b| b.0.gt(seq)).map(|b| b.0)
    }

    /// RFC 6675 IsLost, by bytes: unSACKed data below the returned edge has more than
    /// (DupThresh - 1) * SMSS bytes SACKed above it.
    pub fn lost_edge(&self, smss: u32) -> Option<SeqNum> {
        let mut above = 0u32;
        for &(l, r) in self.blocks().iter().rev() {
            above += r.since(l);
            if above > (DUP_THRESH - 1) * smss {
                return Some(l);
            }
        }
        None
    }

    /// Unsacked bytes in `[from, to)`.
    pub fn unsacked_between(&self, from: SeqNum, to: SeqNum) -> u32 {
        if !from.lt(to) {
            return 0;
        }
        let mut n = to.since(from);
        for &(l, r) in self.blocks() {
            let lo = l.max(from);
            let hi = r.min(to);
            if lo.lt(hi) {
                n -= hi.since(lo);
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_trim_and_loss_edge() {
        let s = SeqNum;
        let mut b = Scoreboard::default();
        b.add(s(200), s(300), s(100), s(1000));
        b.add(s(400), s(500), s(100), s(1000));
        b.add(s(300), s(400), s(100), s(1000)); // joins both
        assert_eq!(b.blocks(), &[(s(200), s(500))]);
        b.add(s(50), s(60), s(100), s(1000)); // below una: ignored
        b.add(s(600), s(2000), s(100), s(1000)); // beyond snd_max: ignored
        assert_eq!(b.sacked_bytes(), 300);
        assert_eq!(b.lost_edge(100), Some(s(200)));
        assert_eq!(b.lost_edge(200), None);
        assert_eq!(b.unsacked_between(s(100), s(600)), 200);
        b.trim(s(250));
        assert_eq!(b.blocks(), &[(s(250), s(500))]);
        b.trim(s(500));
        assert!(b.is_empty());
    }
}
