//! TCP header view and builder (RFC 9293 3.1) with the options synx uses: MSS, window scale
//! (RFC 7323 2), SACK-permitted and SACK blocks (RFC 2018), timestamps (RFC 7323 3).
//! Checksums belong to the wire layer: `parse` does not verify them, `write` leaves 0.

use super::seq::SeqNum;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack_permitted: bool,
    /// (TSval, TSecr)
    pub timestamps: Option<(u32, u32)>,
    /// Up to 3 SACK blocks (4 fit only without timestamps; we never send more than 3).
    pub sack: [(u32, u32); 3],
    pub sack_len: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub flags: u8,
    pub window: u16,
    pub options: Options,
}

impl Header {
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
    /// SEG.LEN: payload plus one for each of SYN and FIN (RFC 9293 3.4).
    pub fn seg_len(&self, payload: usize) -> u32 {
        payload as u32 + u32::from(self.has(SYN)) + u32::from(self.has(FIN))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("segment shorter than its header")]
    Truncated,
    #[error("data offset below 5")]
    BadOffset,
    #[error("malformed option")]
    BadOption,
}

/// Parse a segment (TCP header first) into its header and payload.
pub fn parse(b: &[u8]) -> Result<(Header, &[u8]), ParseError> {
    if b.len() < 20 {
        return Err(ParseError::Truncated);
    }
    let doff = usize::from(b[12] >> 4) * 4;
    if doff < 20 {
        return Err(ParseError::BadOffset);
    }
    if doff > b.len() {
        return Err(ParseError::Truncated);
    }
    let u16at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let u32at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut h = Header {
        src_port: u16at(0),
        dst_port: u16at(2),
        seq: SeqNum(u32at(4)),
        ack: SeqNum(u32at(8)),
        flags: b[13],
        window: u16at(14),
        options: Options::default(),
    };
    let opts = &b[20..doff];
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,
            1 => {
                i += 1;
                continue;
            }
            kind => {
                let len = *opts.get(i + 1).ok_or(ParseError::BadOption)? as usize;
                if len < 2 || i + len > opts.len() {
                    return Err(ParseError::BadOption);
                }
                let body = &opts[i + 2..i + len];
                match (kind, body.len()) {
                    (2, 2) => h.options.mss = Some(u16::from_be_bytes([body[0], body[1]])),
                    (3, 1) => h.options.wscale = Some(body[0].min(14)),
                    (4, 0) => h.options.sack_permitted = true,
                    (5, n) if n % 8 == 0 => {
                        for blk in body.chunks_exact(8).take(3) {
                            let l = u32::from_be_bytes([blk[0], blk[1], blk[2], blk[3]]);
                            let r = u32::from_be_bytes([blk[4], blk[5], blk[6], blk[7]]);
                            h.options.sack[h.options.sack_len as usize] = (l, r);
                            h.options.sack_len += 1;
                        }
                    }
                    (8, 8) => {
                        let v = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                        let e = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                        h.options.timestamps = Some((v, e));
                    }
                    _ => {} // unknown options are ignored (RFC 9293 3.1)
                }
                i += len;
            }
        }
    }
    Ok((h, &b[doff..]))
}

/// Length of the header `write` produces.
pub fn header_len(h: &Header) -> usize {
    let mut n = 20;
    if h.options.mss.is_some() {
        n += 4;
    }
    if h.options.wscale.is_some() {
        n += 4;
    }
    if h.options.sack_permitted {
        n += 4;
    }
    if h.options.timestamps.is_some() {
        n += 12;
    }
    if h.options.sack_len > 0 {
        n += 4 + 8 * h.options.sack_len as usize;
    }
    n
}

/// Write header, options and `payload` into `out`; returns the segment length, or `None` if
/// `out` is too small.
pub fn write(h: &Header, payload: &[u8], out: &mut [u8]) -> Option<usize> {
    let hl = header_len(h);
    let total = hl + payload.len();
    if out.len() < total || hl > 60 {
        return None;
    }
    out[0..2].copy_from_slice(&h.src_port.to_be_bytes());
    out[2..4].copy_from_slice(&h.dst_port.to_be_bytes());
    out[4..8].copy_from_slice(&h.seq.0.to_be_bytes());
    out[8..12].copy_from_slice(&h.ack.0.to_be_bytes());
    out[12] = ((hl / 4) as u8) << 4;
    out[13] = h.flags;
    out[14..16].copy_from_slice(&h.window.to_be_bytes());
    out[16..20].copy_from_slice(&[0, 0, 0, 0]);
    let mut i = 20;
    let mut put = |bytes: &[u8], i: &mut usize| {
        out[*i..*i + bytes.len()].copy_from_slice(bytes);
        *i += bytes.len();
    };
    if let Some(m) = h.options.mss {
        put(&[2, 4], &mut i);
        put(&m.to_be_bytes(), &mut i);
    }
    if h.options.sack_permitted {
        put(&[1, 1, 4, 2], &mut i);
    }
    if let Some((v, e)) = h.options.timestamps {
        put(&[1, 1, 8, 10], &mut i);
        put(&v.to_be_bytes(), &mut i);
        put(&e.to_be_bytes(), &mut i);
    }
    if let Some(w) = h.options.wscale {
        put(&[1, 3, 3, w], &mut i);
    }
    if h.options.sack_len > 0 {
        put(&[1, 1, 5, 2 + 8 * h.options.sack_len], &mut i);
        for &(l, r) in &h.options.sack[..h.options.sack_len as usize] {
            put(&l.to_be_bytes(), &mut i);
            put(&r.to_be_bytes(), &mut i);
        }
    }
    out[hl..total].copy_from_slice(payload);
    Some(total)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn roundtrip_with_every_option() {
        let mut h = Header {
            src_port: 80,
            dst_port: 40000,
            seq: SeqNum(7),
            ack: SeqNum(9),
            flags: ACK | PSH,
            window: 512,
            options: Options {
                mss: Some(1460),
                wscale: Some(7),
                sack_permitted: true,
                timestamps: Some((1, 2)),
                ..Default::default()
            },
        };
        h.options.sack[0] = (100, 200);
        h.options.sack_len = 1;
        let mut buf = [0u8; 100];
        let n = write(&h, b"hello", &mut buf).unwrap();
        let (back, payload) = parse(&buf[..n]).unwrap();
        assert_eq!(back, h);
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn malformed_options_are_errors() {
        let mut b = [0u8; 24];
        b[12] = 6 << 4;
        b[20] = 2;
        b[21] = 9; // runs past the header
        assert_eq!(parse(&b).unwrap_err(), ParseError::BadOption);
        b[21] = 1; // shorter than 2
        assert_eq!(parse(&b).unwrap_err(), ParseError::BadOption);
        b[12] = 4 << 4;
        assert_eq!(parse(&b).unwrap_err(), ParseError::BadOffset);
        b[12] = 15 << 4;
        assert_eq!(parse(&b).unwrap_err(), ParseError::Truncated);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse(&b);
        }

        #[test]
        fn write_then_parse_is_identity(
            seq: u32, ack: u32, flags: u8, window: u16, mss: Option<u16>, ws in proptest::option::of(0u8..=14),
            sp: bool, ts: Option<(u32, u32)>, payload in proptest::collection::vec(any::<u8>(), 0..40)
        ) {
            let h = Header {
                src_port: 1, dst_port: 2, seq: SeqNum(seq), ack: SeqNum(ack), flags, window,
                options: Options { mss, wscale: ws, sack_permitted: sp, timestamps: ts, ..Default::default() },
            };
            let mut buf = [0u8; 200];
            let n = write(&h, &payload, &mut buf).unwrap();
            let (back, p) = parse(&buf[..n]).unwrap();
            prop_assert_eq!(back, h);
            prop_assert_eq!(p, &payload[..]);
        }
    }
}
