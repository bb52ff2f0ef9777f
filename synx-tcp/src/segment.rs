//! TCP header (RFC 9293 3.1), options (MSS; window scale and timestamps, RFC 7323; SACK, RFC 2018)
//! and payload: parse from bytes starting at the TCP header, write into a buffer. Checksums belong
//! to the wire layer: they are neither verified nor computed here; the checksum field is 0.

use super::seq::SeqNum;

/// Fixed header length (data offset 5).
pub const HEADER_LEN: usize = 20;
/// Longest header: data offset 15.
pub const MAX_HEADER_LEN: usize = 60;
/// At most this many SACK blocks fit in 40 bytes of options (RFC 2018 3).
pub const MAX_SACK_BLOCKS: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    pub const FIN: Flags = Flags(0x01);
    pub const SYN: Flags = Flags(0x02);
    pub const RST: Flags = Flags(0x04);
    pub const PSH: Flags = Flags(0x08);
    pub const ACK: Flags = Flags(0x10);
    pub const URG: Flags = Flags(0x20);
    pub const ECE: Flags = Flags(0x40);
    pub const CWR: Flags = Flags(0x80);

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn fin(self) -> bool {
        self.contains(Self::FIN)
    }
    pub fn syn(self) -> bool {
        self.contains(Self::SYN)
    }
    pub fn rst(self) -> bool {
        self.contains(Self::RST)
    }
    pub fn ack(self) -> bool {
        self.contains(Self::ACK)
    }
}

impl core::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl core::fmt::Debug for Flags {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
        let mut first = true;
        for (i, name) in NAMES.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// SACK blocks (RFC 2018): `[left, right)` edges.
#[derive(Clone, Copy, Default, Debug)]
pub struct SackBlocks {
    len: u8,
    blocks: [(SeqNum, SeqNum); MAX_SACK_BLOCKS],
}

impl SackBlocks {
    pub fn as_slice(&self) -> &[(SeqNum, SeqNum)] {
        &self.blocks[..self.len as usize]
    }
    /// Returns false (and drops the block) when full.
    pub fn push(&mut self, left: SeqNum, right: SeqNum) -> bool {
        if (self.len as usize) < MAX_SACK_BLOCKS {
            self.blocks[self.len as usize] = (left, right);
            self.len += 1;
            true
        } else {
            false
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn len(&self) -> usize {
        self.len as usize
    }
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n as u8);
    }
}

impl PartialEq for SackBlocks {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for SackBlocks {}

#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct Options {
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub sack: SackBlocks,
    /// (TSval, TSecr), RFC 7323 3.
    pub timestamps: Option<(u32, u32)>,
}

impl Options {
    /// Encoded length including NOP padding to a multiple of 4.
    pub fn encoded_len(&self) -> usize {
        options_unpadded_len(self).div_ceil(4) * 4
    }

    /// Drop SACK blocks until the options fit in 40 bytes.
    pub fn fit(&mut self) {
        while self.encoded_len() > MAX_HEADER_LEN - HEADER_LEN && !self.sack.is_empty() {
            let n = self.sack.len() - 1;
            self.sack.truncate(n);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Header {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub flags: Flags,
    /// The raw 16-bit window field (not scaled).
    pub window: u16,
    pub urgent: u16,
    pub options: Options,
    /// Not of the TCP header: the IP header of the arriving segment carried CE (RFC 3168 5),
    /// as the wire layer read it. Neither parsed nor written here.
    pub ce: bool,
}

impl Header {
    /// Header length with options.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options.encoded_len()
    }
    /// SEG.LEN (RFC 9293 3.3.1): payload plus one for each of SYN and FIN.
    pub fn seg_len(&self, payload_len: usize) -> u32 {
        payload_len as u32 + self.flags.syn() as u32 + self.flags.fin() as u32
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("segment shorter than the 20-byte TCP header")]
    Truncated,
    #[error("data offset {0} is below 5 or beyond the segment")]
    BadDataOffset(u8),
    #[error("option kind {kind} has a bad length or overruns the header")]
    BadOption { kind: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffer of {have} bytes is too small for a {need}-byte segment")]
pub struct BufferTooSmall {
    pub need: usize,
    pub have: usize,
}

/// Parse a TCP segment; returns the header and the payload.
pub fn parse(bytes: &[u8]) -> Result<(Header, &[u8]), ParseError> {
    if bytes.len() < HEADER_LEN {
        return Err(ParseError::Truncated);
    }
    let be16 = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
    let be32 = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let offset = bytes[12] >> 4;
    let hlen = offset as usize * 4;
    if offset < 5 || hlen > bytes.len() {
        return Err(ParseError::BadDataOffset(offset));
    }
    let options = parse_options(&bytes[HEADER_LEN..hlen])?;
    let header = Header {
        src_port: be16(0),
        dst_port: be16(2),
        seq: SeqNum(be32(4)),
        ack: SeqNum(be32(8)),
        flags: Flags(bytes[13]),
        window: be16(14),
        urgent: be16(18),
        options,
        ce: false,
    };
    Ok((header, &bytes[hlen..]))
}

fn parse_options(mut opts: &[u8]) -> Result<Options, ParseError> {
    let mut o = Options::default();
    while let Some(&kind) = opts.first() {
        match kind {
            0 => break, // RFC 9293 3.2: end of option list
            1 => {
                opts = &opts[1..];
                continue;
            }
            _ => {}
        }
        let bad = ParseError::BadOption { kind };
        let len = *opts.get(1).ok_or(bad)? as usize;
        if len < 2 || len > opts.len() {
            return Err(bad);
        }
        let body = &opts[2..len];
        match kind {
            2 if len == 4 => o.mss = Some(u16::from_be_bytes([body[0], body[1]])),
            3 if len == 3 => o.window_scale = Some(body[0]),
            4 if len == 2 => o.sack_permitted = true,
            5 if len >= 10 && (len - 2).is_multiple_of(8) && (len - 2) / 8 <= MAX_SACK_BLOCKS => {
                o.sack = SackBlocks::default();
                for b in body.as_chunks::<8>().0 {
                    let l = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    let r = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                    o.sack.push(SeqNum(l), SeqNum(r));
                }
            }
            8 if len == 10 => {
                let v = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let e = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                o.timestamps = Some((v, e));
            }
            2..=5 | 8 => return Err(bad),
            _ => {} // RFC 9293 3.2: unknown options are skipped by their length.
        }
        opts = &opts[len..];
    }
    Ok(o)
}

/// Options length before padding.
fn options_unpadded_len(o: &Options) -> usize {
    o.mss.map_or(0, |_| 4)
        + if o.sack_permitted { 2 } else { 0 }
        + o.window_scale.map_or(0, |_| 3)
        + o.timestamps.map_or(0, |_| 10)
        + if o.sack.is_empty() { 0 } else { 2 + 8 * o.sack.len() }
}

/// Write header, options and payload into `buf`; returns the segment length. Options that do
/// not fit in 40 bytes lose SACK blocks (see [`Options::fit`]). The checksum field is 0.
pub fn write(header: &Header, payload: &[u8], buf: &mut [u8]) -> Result<usize, BufferTooSmall> {
    let mut options = header.options;
    options.fit();
    let olen = options.encoded_len();
    let hlen = HEADER_LEN + olen;
    let need = hlen + payload.len();
    if buf.len() < need {
        return Err(BufferTooSmall { need, have: buf.len() });
    }
    buf[0..2].copy_from_slice(&header.src_port.to_be_bytes());
    buf[2..4].copy_from_slice(&header.dst_port.to_be_bytes());
    buf[4..8].copy_from_slice(&header.seq.0.to_be_bytes());
    buf[8..12].copy_from_slice(&header.ack.0.to_be_bytes());
    buf[12] = ((hlen / 4) as u8) << 4;
    buf[13] = header.flags.0;
    buf[14..16].copy_from_slice(&header.window.to_be_bytes());
    buf[16..18].copy_from_slice(&[0, 0]);
    buf[18..20].copy_from_slice(&header.urgent.to_be_bytes());
    let mut at = HEADER_LEN;
    let mut put = |buf: &mut [u8], bytes: &[u8]| {
        buf[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    if let Some(mss) = options.mss {
        let m = mss.to_be_bytes();
        put(buf, &[2, 4, m[0], m[1]]);
    }
    if options.sack_permitted {
        put(buf, &[4, 2]);
    }
    if let Some(ws) = options.window_scale {
        put(buf, &[3, 3, ws]);
    }
    if let Some((v, e)) = options.timestamps {
        put(buf, &[8, 10]);
        put(buf, &v.to_be_bytes());
        put(buf, &e.to_be_bytes());
    }
    if !options.sack.is_empty() {
        put(buf, &[5, 2 + 8 * options.sack.len() as u8]);
        for &(l, r) in options.sack.as_slice() {
            put(buf, &l.0.to_be_bytes());
            put(buf, &r.0.to_be_bytes());
        }
    }
    // The options written so far end where the NOP padding starts.
    let w = HEADER_LEN + options_unpadded_len(&options);
    buf[w..hlen].fill(1); // NOP padding
    buf[hlen..need].copy_from_slice(payload);
    Ok(need)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn arb_options() -> impl Strategy<Value = Options> {
        (
            proptest::option::of(any::<u16>()),
            proptest::option::of(0u8..=14),
            any::<bool>(),
            proptest::collection::vec((any::<u32>(), any::<u32>()), 0..=4),
            proptest::option::of((any::<u32>(), any::<u32>())),
        )
            .prop_map(|(mss, ws, sp, blocks, ts)| {
                let mut o = Options { mss, window_scale: ws, sack_permitted: sp, timestamps: ts, ..Default::default() };
                for (l, r) in blocks {
                    o.sack.push(SeqNum(l), SeqNum(r));
                }
                o.fit();
                o
            })
    }

    pub fn arb_header() -> impl Strategy<Value = Header> {
        (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>(), any::<u8>(), any::<u16>(), any::<u16>(), arb_options())
            .prop_map(|(sp, dp, seq, ack, fl, win, urg, options)| Header {
                src_port: sp,
                dst_port: dp,
                seq: SeqNum(seq),
                ack: SeqNum(ack),
                flags: Flags(fl),
                window: win,
                urgent: urg,
                options,
                ce: false,
            })
    }

    proptest! {
        #[test]
        fn parse_write_roundtrip(h in arb_header(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = [0u8; 200];
            let n = write(&h, &payload, &mut buf).unwrap();
            prop_assert_eq!(n, h.header_len() + payload.len());
            let (parsed, p) = parse(&buf[..n]).unwrap();
            prop_assert_eq!(parsed, h);
            prop_assert_eq!(p, &payload[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn arbitrary_options_never_panic(opts in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut bytes = vec![0u8; 20];
            let olen = opts.len() / 4 * 4;
            bytes[12] = (((20 + olen) / 4) as u8) << 4;
            bytes.extend_from_slice(&opts[..olen]);
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert_eq!(parse(&[0; 19]), Err(ParseError::Truncated));
        let mut b = [0u8; 20];
        b[12] = 4 << 4;
        assert_eq!(parse(&b), Err(ParseError::BadDataOffset(4)));
        b[12] = 6 << 4;
        assert_eq!(parse(&b), Err(ParseError::BadDataOffset(6)));
        let mut b = [0u8; 24];
        b[12] = 6 << 4;
        b[20..24].copy_from_slice(&[2, 3, 0, 0]); // MSS with length 3
        assert_eq!(parse(&b), Err(ParseError::BadOption { kind: 2 }));
        b[20..24].copy_from_slice(&[1, 1, 99, 5]); // unknown option overruns
        assert_eq!(parse(&b), Err(ParseError::BadOption { kind: 99 }));
        b[20..24].copy_from_slice(&[1, 1, 99, 0]); // length 0
        assert_eq!(parse(&b), Err(ParseError::BadOption { kind: 99 }));
        b[20..24].copy_from_slice(&[1, 1, 1, 8]); // TS kind without length byte
        assert_eq!(parse(&b), Err(ParseError::BadOption { kind: 8 }));
        b[20..24].copy_from_slice(&[5, 4, 0, 0]); // SACK shorter than one block
        assert_eq!(parse(&b), Err(ParseError::BadOption { kind: 5 }));
        b[20..24].copy_from_slice(&[1, 0, 8, 0]); // EOL ends the list
        assert!(parse(&b).is_ok());
    }

    #[test]
    fn writes_known_bytes() {
        let h = Header {
            src_port: 80,
            dst_port: 40000,
            seq: SeqNum(1),
            ack: SeqNum(2),
            flags: Flags::ACK | Flags::PSH,
            window: 512,
            urgent: 0,
            options: Options { timestamps: Some((7, 9)), ..Default::default() },
            ce: false,
        };
        let mut buf = [0u8; 64];
        let n = write(&h, b"hi", &mut buf).unwrap();
        assert_eq!(n, 20 + 12 + 2);
        assert_eq!(buf[12], 8 << 4);
        assert_eq!(&buf[16..18], &[0, 0]);
        assert_eq!(&buf[20..32], &[8, 10, 0, 0, 0, 7, 0, 0, 0, 9, 1, 1]);
        assert_eq!(&buf[32..34], b"hi");
        assert!(write(&h, b"hi", &mut buf[..33]).is_err());
    }
}
