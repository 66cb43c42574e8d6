//! Frames on the worker's socket: a length, a JSON header, and binary payload the header refers
//! to (see `PROTOCOL.md`). Big buffers go through shared memory instead of the payload.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::shm::Shm;

/// Largest frame either side may send; a larger length is a broken peer, not a big request
/// (big tensors travel through shared memory).
pub(crate) const MAX_FRAME: usize = 1 << 30;
/// Alignment of buffers in shared memory, so numpy views of them are aligned for any type.
const ALIGN: usize = 64;

/// Where a buffer a header names lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufRef {
    /// In the frame's payload.
    Frame {
        /// Byte offset in the payload.
        offset: usize,
        /// Length in bytes.
        len: usize,
    },
    /// In the shared-memory file.
    Shm {
        /// Byte offset in the file.
        offset: usize,
        /// Length in bytes.
        len: usize,
    },
}

impl BufRef {
    fn to_json(self) -> Value {
        match self {
            BufRef::Frame { offset, len } => json!(["frame", offset, len]),
            BufRef::Shm { offset, len } => json!(["shm", offset, len]),
        }
    }

    pub(crate) fn from_json(v: &Value) -> Result<Self, String> {
        let bad = || format!("{v} is not a buffer reference ([\"frame\"|\"shm\", offset, length])");
        let a = v.as_array().filter(|a| a.len() == 3).ok_or_else(bad)?;
        let offset = a[1].as_u64().ok_or_else(bad)? as usize;
        let len = a[2].as_u64().ok_or_else(bad)? as usize;
        match a[0].as_str() {
            Some("frame") => Ok(BufRef::Frame { offset, len }),
            Some("shm") => Ok(BufRef::Shm { offset, len }),
            _ => Err(bad()),
        }
    }
}

/// Where a request's buffers go: small ones into the frame, big ones into shared memory.
pub struct Outbox<'a> {
    payload: Vec<u8>,
    shm: &'a mut Shm,
    shm_used: usize,
    threshold: usize,
}

impl<'a> Outbox<'a> {
    pub(crate) fn new(shm: &'a mut Shm, threshold: usize) -> Self {
        Self {
            payload: Vec::new(),
            shm,
            shm_used: 0,
            threshold,
        }
    }

    /// Stores `data` and returns the reference to put in the header.
    pub fn put(&mut self, data: &[u8]) -> std::io::Result<Value> {
        let len = data.len();
        if len < self.threshold {
            let offset = self.payload.len();
            self.payload.extend_from_slice(data);
            return Ok(BufRef::Frame { offset, len }.to_json());
        }
        let offset = self.shm_used.next_multiple_of(ALIGN);
        let end = offset + len;
        self.shm.ensure(end)?;
        let dst = self
            .shm
            .slice_mut(offset, len)
            .ok_or_else(|| std::io::Error::other("shared memory smaller than it was grown to"))?;
        dst.copy_from_slice(data);
        self.shm_used = end;
        Ok(BufRef::Shm { offset, len }.to_json())
    }

    /// The payload, and the first offset of shared memory the worker may write its outputs to.
    pub(crate) fn finish(self) -> (Vec<u8>, usize, usize) {
        let free = self.shm_used.next_multiple_of(ALIGN);
        let size = self.shm.len();
        (self.payload, free, size)
    }
}

/// A worker's answer: its header, and the buffers it refers to.
pub struct Reply<'a> {
    /// The JSON header (its `op` checked already).
    pub header: Map<String, Value>,
    payload: Vec<u8>,
    shm: &'a Shm,
}

impl<'a> Reply<'a> {
    pub(crate) fn new(header: Map<String, Value>, payload: Vec<u8>, shm: &'a Shm) -> Self {
        Self {
            header,
            payload,
            shm,
        }
    }

    /// The bytes a buffer reference in the header names; an error when it points outside the
    /// frame or the shared memory (a broken worker).
    pub fn bytes(&self, r: &Value) -> Result<&[u8], String> {
        let out = match BufRef::from_json(r)? {
            BufRef::Frame { offset, len } => offset
                .checked_add(len)
                .and_then(|end| self.payload.get(offset..end)),
            BufRef::Shm { offset, len } => self.shm.slice(offset, len),
        };
        out.ok_or_else(|| format!("buffer {r} lies outside what the worker sent"))
    }
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the socket (or it broke).
    Closed(String),
    /// The deadline passed first.
    TimedOut,
    /// What arrived is not a frame.
    Malformed(String),
}

/// Writes one frame.
pub(crate) fn write(
    stream: &mut UnixStream,
    header: &Value,
    payload: &[u8],
) -> std::io::Result<()> {
    let header = serde_json::to_vec(header)?;
    let body = 4 + header.len() + payload.len();
    if body > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a frame of {body} bytes is more than the protocol's limit"
        )));
    }
    let mut head = Vec::with_capacity(8 + header.len());
    head.extend_from_slice(&(body as u32).to_le_bytes());
    head.extend_from_slice(&(header.len() as u32).to_le_bytes());
    head.extend_from_slice(&header);
    stream.write_all(&head)?;
    stream.write_all(payload)?;
    stream.flush()
}

/// Reads one frame, waiting until `deadline` at most (forever when `None`).
pub(crate) fn read(
    stream: &mut UnixStream,
    deadline: Option<Instant>,
) -> Result<(Map<String, Value>, Vec<u8>), ReadError> {
    let mut len = [0u8; 4];
    read_full(stream, &mut len, deadline)?;
    let body = u32::from_le_bytes(len) as usize;
    if !(4..=MAX_FRAME).contains(&body) {
        return Err(ReadError::Malformed(format!(
            "a frame length of {body} bytes"
        )));
    }
    let mut buf = vec![0u8; body];
    read_full(stream, &mut buf, deadline)?;
    let header_len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if header_len > body - 4 {
        return Err(ReadError::Malformed(format!(
            "a header of {header_len} bytes in a frame of {body}"
        )));
    }
    let header: Map<String, Value> = serde_json::from_slice(&buf[4..4 + header_len])
        .map_err(|e| ReadError::Malformed(format!("a header that is not a JSON object ({e})")))?;
    if !header.get("op").is_some_and(Value::is_string) {
        return Err(ReadError::Malformed("a header without an op".into()));
    }
    buf.drain(..4 + header_len);
    Ok((header, buf))
}

fn read_full(
    stream: &mut UnixStream,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> Result<(), ReadError> {
    let mut at = 0;
    while at < buf.len() {
        let wait = match deadline {
            None => None,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Err(ReadError::TimedOut),
            },
        };
        stream
            .set_read_timeout(wait)
            .map_err(|e| ReadError::Closed(e.to_string()))?;
        match stream.read(&mut buf[at..]) {
            Ok(0) => return Err(ReadError::Closed("the socket closed".into())),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(ReadError::TimedOut);
                }
            }
            Err(e) => return Err(ReadError::Closed(e.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn frames_round_trip_and_broken_ones_are_named() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        write(&mut a, &json!({"op": "ready", "n": 1}), b"payload").unwrap();
        let (h, p) = read(&mut b, None).unwrap();
        assert_eq!(h["n"], 1);
        assert_eq!(p, b"payload");

        // A length no frame has: the peer is broken, not slow.
        a.write_all(&0xffff_ff7fu32.to_le_bytes()).unwrap();
        assert!(
            matches!(read(&mut b, None), Err(ReadError::Malformed(m)) if m.contains("frame length"))
        );

        let (mut a, mut b) = UnixStream::pair().unwrap();
        let header = b"not json";
        a.write_all(&((4 + header.len()) as u32).to_le_bytes())
            .unwrap();
        a.write_all(&(header.len() as u32).to_le_bytes()).unwrap();
        a.write_all(header).unwrap();
        assert!(matches!(read(&mut b, None), Err(ReadError::Malformed(m)) if m.contains("JSON")));

        // Half a frame, then nothing: the deadline ends the wait.
        a.write_all(&100u32.to_le_bytes()).unwrap();
        let deadline = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            read(&mut b, Some(deadline)),
            Err(ReadError::TimedOut)
        ));
        drop(a);
        assert!(matches!(read(&mut b, None), Err(ReadError::Closed(_))));
    }

    #[test]
    fn big_buffers_go_to_shared_memory_aligned_and_references_are_checked() {
        let mut shm = Shm::create().unwrap();
        let mut out = Outbox::new(&mut shm, 1024);
        let small = out.put(&[7u8; 10]).unwrap();
        let big = out.put(&[1u8; 5000]).unwrap();
        let bigger = out.put(&[2u8; 3000]).unwrap();
        assert_eq!(small, json!(["frame", 0, 10]));
        assert_eq!(big, json!(["shm", 0, 5000]));
        assert_eq!(bigger, json!(["shm", 5056, 3000]), "64-byte aligned");
        let (payload, free, size) = out.finish();
        assert_eq!((payload.len(), free), (10, 8064));
        assert!(size >= 8056);
        let reply = Reply::new(Map::new(), payload, &shm);
        assert_eq!(reply.bytes(&small).unwrap(), &[7u8; 10]);
        assert_eq!(reply.bytes(&bigger).unwrap(), &[2u8; 3000]);
        assert!(reply.bytes(&json!(["shm", size, 1])).is_err());
        assert!(reply.bytes(&json!(["frame", 5, 6])).is_err());
        assert!(reply.bytes(&json!(["disk", 0, 1])).is_err());
        let path = shm.path().unwrap().to_path_buf();
        drop(shm);
        assert!(!path.exists(), "the file goes with it");
    }
}
