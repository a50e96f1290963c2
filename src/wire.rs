//! The peer frame codec (DESIGN §1, §2): how one [`Envelope`] travels on a
//! peer link. Pure byte work over `Read`, no sockets, so every bad input can be
//! tested in memory.
//!
//! A frame is
//!
//! ```text
//! u32 big-endian: length of the rest | u8: WIRE_VERSION | postcard encoding of Envelope
//! ```
//!
//! The length covers the version byte and the payload. A reader refuses a
//! length above [`FRAME_BYTES_MAX`] before it allocates anything, and it never
//! allocates more than the bytes that actually arrive, so a lying or truncated
//! frame costs at most what the peer sent. A version above [`WIRE_VERSION`] is
//! refused by name, and so is an older one (each version so far changed a
//! message), so a mixed-version cluster says what is wrong instead of
//! misreading bytes.

use crate::protocol::message::Envelope;
use std::fmt;
use std::io::{self, Read};

/// The frame format this build writes and the newest it reads.
pub const WIRE_VERSION: u8 = 3;

/// Largest accepted frame (version byte plus payload). A promise or a catch-up
/// reply is the largest message; the protocol cuts those short (`truncated`)
/// long before this, so a bigger frame means a broken or hostile peer.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Bytes of the length prefix.
const LENGTH_BYTES: usize = 4;

const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);

/// Why a frame could not be read.
#[derive(Debug)]
pub enum WireError {
    /// The stream ended cleanly between two frames (the peer closed the link).
    Eof,
    /// Any other IO error, including a stream that ended inside a frame
    /// (`UnexpectedEof`) and a read timeout.
    Io(io::Error),
    /// The length prefix names more than [`FRAME_BYTES_MAX`] bytes.
    TooLarge {
        /// The length the prefix claimed, in bytes.
        size: usize,
        /// [`FRAME_BYTES_MAX`].
        limit: usize,
    },
    /// The frame was written by a newer wire format than this build reads.
    NewerVersion {
        /// The version byte in the frame.
        found: u8,
        /// [`WIRE_VERSION`].
        supported: u8,
    },
    /// The frame's bytes are not a valid envelope (or the frame is empty, or
    /// names version 0, which never existed).
    BadPayload(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Eof => write!(f, "end of stream"),
            WireError::Io(e) => write!(f, "io error: {e}"),
            WireError::TooLarge { size, limit } => {
                write!(f, "frame of {size} bytes exceeds the limit of {limit} bytes")
            }
            WireError::NewerVersion { found, supported } => {
                write!(f, "frame has wire version {found}, this build reads up to {supported}")
            }
            WireError::BadPayload(detail) => write!(f, "bad frame payload: {detail}"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Io(e)
    }
}

/// Encodes `env` as one whole frame, length prefix included.
pub fn encode(env: &Envelope) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_into(env, &mut frame);
    frame
}

/// Encodes `env` as one whole frame into `frame`, which is cleared first
/// (a caller that sends many frames keeps one buffer).
pub fn encode_into(env: &Envelope, frame: &mut Vec<u8>) {
    frame.clear();
    frame.extend_from_slice(&[0; LENGTH_BYTES]);
    frame.push(WIRE_VERSION);
    *frame = postcard::to_extend(env, std::mem::take(frame))
        .expect("an Envelope is plain data; postcard serializes it into a Vec");
    let rest = u32::try_from(frame.len() - LENGTH_BYTES)
        .expect("an envelope under 4 GiB; senders drop frames above FRAME_BYTES_MAX");
    frame[..LENGTH_BYTES].copy_from_slice(&rest.to_be_bytes());
}

/// Reads one frame and decodes its envelope. A clean end of stream before the
/// first byte of a frame is [`WireError::Eof`]; an end inside a frame is
/// [`WireError::Io`] with `UnexpectedEof`.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Envelope, WireError> {
    read_frame_into(r, &mut Vec::new())
}

/// [`read_frame`] with a caller's buffer for the payload, so a link that
/// reads many frames allocates it once (a buffer grown past
/// [`PAYLOAD_BUF_KEPT_MAX`] by a large frame is given back).
pub fn read_frame_into<R: Read>(r: &mut R, payload: &mut Vec<u8>) -> Result<Envelope, WireError> {
    payload.clear();
    if payload.capacity() > PAYLOAD_BUF_KEPT_MAX {
        *payload = Vec::new();
    }
    let size = read_length(r)?;
    if size > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge { size, limit: FRAME_BYTES_MAX });
    }
    if size == 0 {
        return Err(WireError::BadPayload("empty frame (no version byte)".into()));
    }
    let mut version = [0u8; 1];
    r.read_exact(&mut version)?;
    match version[0] {
        0 => return Err(WireError::BadPayload("wire version 0 does not exist".into())),
        v if v > WIRE_VERSION => {
            return Err(WireError::NewerVersion { found: v, supported: WIRE_VERSION })
        }
        v if v < WIRE_VERSION => {
            // Version 3 changed ACCEPT: an older frame would be misread.
            return Err(WireError::BadPayload(format!(
                "frame has wire version {v}, older than this build's {WIRE_VERSION}; \
                 run the same build on every replica"
            )));
        }
        _ => {}
    }
    // `take` + `read_to_end` grows the buffer only as bytes arrive, so a
    // length prefix that lies costs nothing up front.
    let payload_bytes = size - 1;
    r.take(payload_bytes as u64).read_to_end(payload)?;
    if payload.len() < payload_bytes {
        return Err(WireError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame cut short: {} of {payload_bytes} payload bytes", payload.len()),
        )));
    }
    postcard::from_bytes(payload).map_err(|e| WireError::BadPayload(e.to_string()))
}

/// A payload buffer kept between frames stays below this size.
const PAYLOAD_BUF_KEPT_MAX: usize = 1 << 20;

/// Reads the 4-byte length prefix, telling a clean end of stream (no byte at
/// all) apart from one inside the prefix.
fn read_length<R: Read>(r: &mut R) -> Result<usize, WireError> {
    let mut prefix = [0u8; LENGTH_BYTES];
    let mut filled = 0;
    while filled < LENGTH_BYTES {
        match r.read(&mut prefix[filled..]) {
            Ok(0) if filled == 0 => return Err(WireError::Eof),
            Ok(0) => {
                return Err(WireError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("frame cut short: {filled} of {LENGTH_BYTES} length bytes"),
                )))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WireError::Io(e)),
        }
    }
    Ok(u32::from_be_bytes(prefix) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::PeerMsg;
    use crate::protocol::types::{
        Command, Entry, EntryId, Epoch, Formation, Incarnation, LogIndex, ReplicaId,
    };
    use std::collections::BTreeMap;
    use std::io::Cursor;

    fn envelope(msg: PeerMsg) -> Envelope {
        Envelope {
            from: ReplicaId(2),
            incarnation: Incarnation { counter: 3, nonce: 0xdead_beef },
            epoch: Epoch(7),
            formation: Formation::Complete(42),
            learner: false,
            msg,
        }
    }

    fn promise() -> Envelope {
        let entry = Entry {
            id: EntryId { epoch: Epoch(5), index: LogIndex(9) },
            ballot: Epoch(7),
            command: Command::put("k", &[0, 0xff, b'\n', b' ']),
        };
        let mut incarnations = BTreeMap::new();
        incarnations.insert(ReplicaId(1), Incarnation { counter: 1, nonce: 2 });
        incarnations.insert(ReplicaId(3), Incarnation { counter: 4, nonce: 5 });
        envelope(PeerMsg::Promise {
            epoch: Epoch(7),
            commit: LogIndex(8),
            entries: vec![(LogIndex(9), entry)],
            truncated: false,
            incarnations,
        })
    }

    fn frame_with(version: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        f.push(version);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let a = promise();
        let b = envelope(PeerMsg::Heartbeat { epoch: Epoch(7), seq: 1, progress: None });
        let mut bytes = encode(&a);
        bytes.extend(encode(&b));
        let mut r = Cursor::new(bytes);
        assert_eq!(read_frame(&mut r).unwrap(), a);
        assert_eq!(read_frame(&mut r).unwrap(), b);
        assert!(matches!(read_frame(&mut r), Err(WireError::Eof)));
    }

    #[test]
    fn frame_header_names_length_and_version() {
        let bytes = encode(&promise());
        let rest = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        assert_eq!(rest, bytes.len() - 4);
        assert_eq!(bytes[4], WIRE_VERSION);
    }

    #[test]
    fn truncated_frame_is_an_error_at_every_cut() {
        let bytes = encode(&promise());
        for cut in 1..bytes.len() {
            match read_frame(&mut Cursor::new(&bytes[..cut])) {
                Err(WireError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn oversize_length_is_refused_before_reading_the_payload() {
        let mut bytes = u32::MAX.to_be_bytes().to_vec();
        bytes.push(WIRE_VERSION);
        match read_frame(&mut Cursor::new(bytes)) {
            Err(WireError::TooLarge { size, limit }) => {
                assert_eq!(size, u32::MAX as usize);
                assert_eq!(limit, FRAME_BYTES_MAX);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lying_length_under_the_limit_does_not_allocate_it() {
        // Claims 64 MiB, sends 3 bytes: an UnexpectedEof, not a 64 MiB buffer.
        let mut bytes = (FRAME_BYTES_MAX as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[WIRE_VERSION, b'{', b'}']);
        assert!(matches!(read_frame(&mut Cursor::new(bytes)), Err(WireError::Io(_))));
    }

    #[test]
    fn newer_version_is_named() {
        let payload = postcard::to_stdvec(&promise()).unwrap();
        let newer = WIRE_VERSION + 1;
        match read_frame(&mut Cursor::new(frame_with(newer, &payload))) {
            Err(e @ WireError::NewerVersion { found, supported: WIRE_VERSION })
                if found == newer =>
            {
                assert!(e.to_string().contains(&format!("version {newer}")), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_older_version_is_named() {
        let payload = postcard::to_stdvec(&promise()).unwrap();
        match read_frame(&mut Cursor::new(frame_with(WIRE_VERSION - 1, &payload))) {
            Err(WireError::BadPayload(detail)) => assert!(detail.contains("older"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn version_zero_and_empty_frames_are_bad_payloads() {
        let payload = postcard::to_stdvec(&promise()).unwrap();
        let zero = read_frame(&mut Cursor::new(frame_with(0, &payload)));
        assert!(matches!(zero, Err(WireError::BadPayload(_))), "{zero:?}");
        let empty = read_frame(&mut Cursor::new(vec![0, 0, 0, 0]));
        assert!(matches!(empty, Err(WireError::BadPayload(_))), "{empty:?}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let garbage = frame_with(WIRE_VERSION, b"\xff\x00not json at all{{{");
        match read_frame(&mut Cursor::new(garbage)) {
            Err(WireError::BadPayload(detail)) => assert!(!detail.is_empty()),
            other => panic!("{other:?}"),
        }
        let wrong_shape = frame_with(WIRE_VERSION, br#"{"from":1}"#);
        assert!(matches!(read_frame(&mut Cursor::new(wrong_shape)), Err(WireError::BadPayload(_))));
        // Text where a frame belongs: "GET " is a length of ~1.2 GB, refused.
        let text = b"GET key\n".to_vec();
        assert!(matches!(read_frame(&mut Cursor::new(text)), Err(WireError::TooLarge { .. })));
        // Pseudo-random bytes never panic.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..200 {
            let bytes: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x & 0xff) as u8
                })
                .collect();
            let _ = read_frame(&mut Cursor::new(bytes));
        }
    }
}
