//! The two stream compressions IDENTIFY can negotiate, as nsqd puts them on the wire, pure
//! and incremental (bytes in, bytes out; no I/O):
//!
//! - `snappy`: the Snappy *framing* format (a stream identifier chunk, then compressed or
//!   uncompressed chunks of at most 64 KiB, each with a masked CRC-32C of its data), as Go's
//!   `snappy.NewWriter`/`NewReader` write and read it. Blocks are compressed with `snap`.
//! - `deflate`: raw DEFLATE (no zlib header), with a sync flush after every write, as Go's
//!   `compress/flate` writer does on `Flush`. Done with `flate2`.

use bytes::{Buf, BufMut, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Largest uncompressed chunk in the framing format.
const MAX_CHUNK: usize = 1 << 16;
const STREAM_IDENTIFIER: &[u8; 10] = b"\xff\x06\x00\x00sNaPpY";
const CHUNK_COMPRESSED: u8 = 0x00;
const CHUNK_UNCOMPRESSED: u8 = 0x01;
const CHUNK_PADDING: u8 = 0xfe;
const CHUNK_STREAM_IDENTIFIER: u8 = 0xff;

/// Why a peer's compressed stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("snappy: {0}")]
    Snappy(String),
    #[error("snappy block")]
    SnappyBlock(#[from] snap::Error),
    #[error("deflate")]
    Deflate(#[from] flate2::DecompressError),
    #[error("deflate: the peer ended the compressed stream")]
    DeflateEnded,
    #[error("compressing")]
    Compress(#[from] flate2::CompressError),
}

/// A connection's compression, once negotiated.
#[derive(Debug)]
pub enum Codec {
    Snappy(Box<Snappy>),
    Deflate(Deflate),
}

impl Codec {
    pub fn snappy() -> Codec {
        Codec::Snappy(Box::default())
    }

    pub fn deflate(level: u32) -> Codec {
        Codec::Deflate(Deflate::new(level))
    }

    /// Decompresses what can be from the front of `raw` onto `plain`, leaving any partial
    /// chunk in `raw`.
    pub fn decode(&mut self, raw: &mut BytesMut, plain: &mut BytesMut) -> Result<(), CodecError> {
        match self {
            Codec::Snappy(s) => s.decode(raw, plain),
            Codec::Deflate(d) => d.decode(raw, plain),
        }
    }

    /// Compresses all of `plain` onto `raw`, flushed: the peer can read all of it.
    pub fn encode(&mut self, plain: &[u8], raw: &mut BytesMut) -> Result<(), CodecError> {
        match self {
            Codec::Snappy(s) => {
                s.encode(plain, raw);
                Ok(())
            }
            Codec::Deflate(d) => d.encode(plain, raw),
        }
    }
}

/// Both directions of a snappy-framed stream.
pub struct Snappy {
    encoder: snap::raw::Encoder,
    decoder: snap::raw::Decoder,
    scratch: Vec<u8>,
    sent_identifier: bool,
    seen_identifier: bool,
}

impl std::fmt::Debug for Snappy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snappy").finish_non_exhaustive()
    }
}

impl Default for Snappy {
    fn default() -> Snappy {
        Snappy {
            encoder: snap::raw::Encoder::new(),
            decoder: snap::raw::Decoder::new(),
            scratch: Vec::new(),
            sent_identifier: false,
            seen_identifier: false,
        }
    }
}

impl Snappy {
    fn encode(&mut self, plain: &[u8], raw: &mut BytesMut) {
        if !self.sent_identifier {
            raw.put_slice(STREAM_IDENTIFIER);
            self.sent_identifier = true;
        }
        for chunk in plain.chunks(MAX_CHUNK) {
            let crc = masked_crc(chunk);
            self.scratch
                .resize(snap::raw::max_compress_len(chunk.len()), 0);
            // Compression into a buffer of max_compress_len cannot fail; if it does anyway,
            // the chunk goes uncompressed.
            let compressed = self.encoder.compress(chunk, &mut self.scratch).ok();
            // Like Go's writer: compressed only if it saves at least 1/8.
            let (kind, data) = match compressed {
                Some(n) if n < chunk.len() - chunk.len() / 8 => {
                    (CHUNK_COMPRESSED, &self.scratch[..n])
                }
                _ => (CHUNK_UNCOMPRESSED, chunk),
            };
            let len = data.len() + 4;
            raw.reserve(4 + len);
            raw.put_u8(kind);
            raw.put_slice(&(len as u32).to_le_bytes()[..3]);
            raw.put_u32_le(crc);
            raw.put_slice(data);
        }
    }

    fn decode(&mut self, raw: &mut BytesMut, plain: &mut BytesMut) -> Result<(), CodecError> {
        let bad = |why: &str| CodecError::Snappy(why.to_owned());
        while raw.len() >= 4 {
            let kind = raw[0];
            let len = u32::from_le_bytes([raw[1], raw[2], raw[3], 0]) as usize;
            if kind <= CHUNK_UNCOMPRESSED && len > snap::raw::max_compress_len(MAX_CHUNK) + 4 {
                return Err(bad("chunk too large"));
            }
            if raw.len() < 4 + len {
                raw.reserve(4 + len - raw.len());
                return Ok(());
            }
            let chunk = &raw[4..4 + len];
            match kind {
                CHUNK_STREAM_IDENTIFIER => {
                    if chunk != &STREAM_IDENTIFIER[4..] {
                        return Err(bad("bad stream identifier"));
                    }
                    self.seen_identifier = true;
                }
                CHUNK_COMPRESSED | CHUNK_UNCOMPRESSED => {
                    if !self.seen_identifier {
                        return Err(bad("data before the stream identifier"));
                    }
                    let [a, b, c, d, data @ ..] = chunk else {
                        return Err(bad("chunk too short"));
                    };
                    let crc = u32::from_le_bytes([*a, *b, *c, *d]);
                    let start = plain.len();
                    if kind == CHUNK_COMPRESSED {
                        let n = snap::raw::decompress_len(data)?;
                        if n > MAX_CHUNK {
                            return Err(bad("chunk decompresses to more than 64 KiB"));
                        }
                        plain.resize(start + n, 0);
                        self.decoder.decompress(data, &mut plain[start..])?;
                    } else {
                        if data.len() > MAX_CHUNK {
                            return Err(bad("uncompressed chunk over 64 KiB"));
                        }
                        plain.extend_from_slice(data);
                    }
                    if masked_crc(&plain[start..]) != crc {
                        return Err(bad("checksum mismatch"));
                    }
                }
                0x02..=0x7f => return Err(bad("reserved unskippable chunk")),
                // Padding (0xfe) and reserved skippable chunks.
                _ => debug_assert!(kind >= 0x80 || kind == CHUNK_PADDING),
            }
            raw.advance(4 + len);
        }
        Ok(())
    }
}

/// The framing format's checksum: CRC-32C, rotated and offset.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// Both directions of a raw-deflate stream.
pub struct Deflate {
    compress: Compress,
    decompress: Decompress,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Deflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflate").finish_non_exhaustive()
    }
}

impl Deflate {
    fn new(level: u32) -> Deflate {
        Deflate {
            compress: Compress::new(Compression::new(level), false),
            decompress: Decompress::new(false),
            scratch: Vec::new(),
        }
    }

    fn encode(&mut self, plain: &[u8], raw: &mut BytesMut) -> Result<(), CodecError> {
        let mut consumed = 0;
        loop {
            self.scratch.clear();
            self.scratch.reserve(plain.len() - consumed + 64);
            let before = self.compress.total_in();
            self.compress.compress_vec(
                &plain[consumed..],
                &mut self.scratch,
                FlushCompress::Sync,
            )?;
            consumed += (self.compress.total_in() - before) as usize;
            raw.extend_from_slice(&self.scratch);
            // The sync flush is complete once the output did not fill the buffer.
            if consumed == plain.len() && self.scratch.len() < self.scratch.capacity() {
                return Ok(());
            }
        }
    }

    fn decode(&mut self, raw: &mut BytesMut, plain: &mut BytesMut) -> Result<(), CodecError> {
        while !raw.is_empty() {
            self.scratch.clear();
            self.scratch.reserve((raw.len() * 4).max(16 * 1024));
            let (in_before, out_before) = (self.decompress.total_in(), self.decompress.total_out());
            let status =
                self.decompress
                    .decompress_vec(raw, &mut self.scratch, FlushDecompress::None)?;
            let used = (self.decompress.total_in() - in_before) as usize;
            let made = (self.decompress.total_out() - out_before) as usize;
            raw.advance(used);
            plain.extend_from_slice(&self.scratch);
            if status == Status::StreamEnd {
                return Err(CodecError::DeflateEnded);
            }
            if used == 0 && made == 0 {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(mut codec: Codec, mut peer: Codec, data: &[u8]) {
        let mut raw = BytesMut::new();
        codec.encode(data, &mut raw).unwrap();
        codec.encode(b"second write", &mut raw).unwrap();
        // Fed in small pieces, as a socket might deliver it.
        let mut plain = BytesMut::new();
        let mut pending = BytesMut::new();
        for piece in raw.chunks(7) {
            pending.extend_from_slice(piece);
            peer.decode(&mut pending, &mut plain).unwrap();
        }
        let mut expected = data.to_vec();
        expected.extend_from_slice(b"second write");
        assert_eq!(&plain[..], &expected[..]);
    }

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 997) as u8)
            .collect()
    }

    #[test]
    fn snappy_round_trips_across_chunks() {
        round_trip(Codec::snappy(), Codec::snappy(), &sample());
        round_trip(Codec::snappy(), Codec::snappy(), b"x");
    }

    #[test]
    fn deflate_round_trips_in_pieces() {
        round_trip(Codec::deflate(6), Codec::deflate(6), &sample());
        round_trip(Codec::deflate(1), Codec::deflate(1), b"OK");
    }

    #[test]
    fn snappy_output_is_go_compatible_framing() {
        let mut raw = BytesMut::new();
        Codec::snappy().encode(b"hello", &mut raw).unwrap();
        assert_eq!(&raw[..10], STREAM_IDENTIFIER);
        // Too short to compress: an uncompressed chunk with the masked CRC.
        assert_eq!(raw[10], CHUNK_UNCOMPRESSED);
        assert_eq!(&raw[11..14], &[9, 0, 0]);
        assert_eq!(&raw[18..], b"hello");
        let crc = u32::from_le_bytes([raw[14], raw[15], raw[16], raw[17]]);
        assert_eq!(crc, masked_crc(b"hello"));
    }

    #[test]
    fn snappy_refuses_corruption() {
        let mut raw = BytesMut::new();
        Codec::snappy().encode(b"hello", &mut raw).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let err = Codec::snappy().decode(&mut raw, &mut BytesMut::new());
        assert!(err.is_err());
        let mut no_identifier = BytesMut::from(&b"\x01\x09\x00\x00abcdhello"[..]);
        assert!(Codec::snappy()
            .decode(&mut no_identifier, &mut BytesMut::new())
            .is_err());
    }
}
