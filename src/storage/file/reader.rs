//! Sequential record reading over a segment file, shared by recovery and reads.
//!
//! A [`Reader`] keeps a window of the file in memory and reads the next window with one
//! `pread` when a record crosses its end, so reading many small records costs few syscalls.
//! It never reads past `limit`: for the active segment that is the length written when the
//! read began, so a concurrent append is never seen half-written.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::record::{self, FRAME_HEADER, MIN_PAYLOAD};

/// What is at a position of a segment.
#[derive(Debug)]
pub(super) enum Step {
    /// A whole record with a good CRC: its offset and the position after it. Its payload is
    /// [`Reader::payload`].
    Record { offset: u64, next: u64 },
    /// The end of the readable bytes.
    End,
    /// Not a good record: a bad length or CRC, or a frame cut short by `limit`.
    Bad,
}

/// A window over a segment file.
#[derive(Debug)]
pub(super) struct Reader<'f> {
    file: &'f File,
    limit: u64,
    /// File position of `buf[0]`.
    at: u64,
    buf: Vec<u8>,
    /// Size of the next window; grows from `first_chunk` up to `max_chunk`.
    chunk: usize,
    max_chunk: usize,
    /// Position and length of the payload of the last [`Step::Record`].
    payload: (u64, usize),
}

impl<'f> Reader<'f> {
    /// A reader of `file` up to `limit` bytes. Windows start at `first_chunk` bytes and
    /// double up to `max_chunk`, so a point read stays small and a long read stays cheap.
    pub(super) fn new(file: &'f File, limit: u64, first_chunk: usize, max_chunk: usize) -> Self {
        Reader {
            file,
            limit,
            at: 0,
            buf: Vec::new(),
            chunk: first_chunk,
            max_chunk,
            payload: (0, 0),
        }
    }

    /// The bytes at `[pos, pos + len)`, or None if they reach past `limit`.
    pub(super) fn bytes(&mut self, pos: u64, len: usize) -> io::Result<Option<&[u8]>> {
        let Some(end) = pos.checked_add(len as u64).filter(|&end| end <= self.limit) else {
            return Ok(None);
        };
        let buffered = self.at + self.buf.len() as u64;
        if pos < self.at || end > buffered {
            self.fill(pos, len)?;
        }
        let start = (pos - self.at) as usize;
        Ok(Some(&self.buf[start..start + len]))
    }

    /// Reads a window starting at `pos` holding at least `len` bytes.
    fn fill(&mut self, pos: u64, len: usize) -> io::Result<()> {
        let want = len.max(self.chunk) as u64;
        let size = want.min(self.limit - pos) as usize;
        self.buf.clear();
        self.buf.resize(size, 0);
        self.file.read_exact_at(&mut self.buf, pos)?;
        self.at = pos;
        self.chunk = (self.chunk * 2).min(self.max_chunk);
        Ok(())
    }

    /// What is at `pos`.
    pub(super) fn step(&mut self, pos: u64) -> io::Result<Step> {
        if pos >= self.limit {
            return Ok(Step::End);
        }
        let Some(header) = self.bytes(pos, FRAME_HEADER)? else {
            return Ok(Step::Bad);
        };
        let Some(len) = record::frame_len(header) else {
            return Ok(Step::Bad);
        };
        let Some(frame) = self.bytes(pos, FRAME_HEADER + len)? else {
            return Ok(Step::Bad);
        };
        let Some(offset) = record::check_frame(frame) else {
            return Ok(Step::Bad);
        };
        self.payload = (pos + FRAME_HEADER as u64, len);
        let next = pos + (FRAME_HEADER + len) as u64;
        Ok(Step::Record { offset, next })
    }

    /// The payload of the record the last [`Reader::step`] returned.
    pub(super) fn payload(&mut self) -> io::Result<&[u8]> {
        let (pos, len) = self.payload;
        Ok(self.bytes(pos, len)?.unwrap_or_default())
    }

    /// The first position at or after `pos` where a good record with an offset in `offsets`
    /// starts: how reading resumes after a corrupt record. Candidates are ruled out cheaply
    /// (plausible length, version, offset) before their CRC is computed.
    pub(super) fn resync(
        &mut self,
        mut pos: u64,
        offsets: std::ops::Range<u64>,
    ) -> io::Result<Option<u64>> {
        let min_frame = (FRAME_HEADER + MIN_PAYLOAD) as u64;
        while pos + min_frame <= self.limit {
            if self.candidate(pos, &offsets)? {
                return Ok(Some(pos));
            }
            pos += 1;
        }
        Ok(None)
    }

    fn candidate(&mut self, pos: u64, offsets: &std::ops::Range<u64>) -> io::Result<bool> {
        let Some(head) = self.bytes(pos, FRAME_HEADER + MIN_PAYLOAD)? else {
            return Ok(false);
        };
        let Some(len) = record::frame_len(head) else {
            return Ok(false);
        };
        match record::peek(&head[FRAME_HEADER..]) {
            Some((record::VERSION, offset)) if offsets.contains(&offset) => {}
            _ => return Ok(false),
        }
        let Some(frame) = self.bytes(pos, FRAME_HEADER + len)? else {
            return Ok(false);
        };
        Ok(record::check_frame(frame).is_some_and(|o| offsets.contains(&o)))
    }
}
