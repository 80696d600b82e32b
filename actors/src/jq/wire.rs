//! The evaluator protocol: length-prefixed frames on a worker's stdin and
//! stdout, one request then one reply, over and over.
//!
//! Every frame is a big-endian `u32` payload length, then the payload:
//!
//! - request: `u64` max output bytes, `u32` filter length, the filter
//!   (UTF-8), then the input as JSON text (the rest);
//! - reply: a kind byte (0: the output as JSON text, 1: an error text), a
//!   flags byte (1: the worker exits after this reply), then the body.
//!
//! Binary framing keeps the filter and the values opaque: no escaping, and
//! nothing a filter produces can be mistaken for a frame boundary.

use std::io::{self, Read, Write};

/// Largest request payload a worker accepts.
pub const MAX_REQUEST_BYTES: usize = 512 * 1024 * 1024;
/// Room a reply takes besides its output (kind, flags, error text).
pub const REPLY_OVERHEAD_BYTES: usize = 64 * 1024;

const KIND_OUTPUT: u8 = 0;
const KIND_ERROR: u8 = 1;
const FLAG_RETIRE: u8 = 1;

/// One evaluation asked of a worker.
#[derive(Debug, PartialEq)]
pub struct Request {
    /// Largest output (JSON text) the worker may return.
    pub max_output_bytes: usize,
    /// The jq program.
    pub filter: String,
    /// The input, JSON text.
    pub input: Vec<u8>,
}

/// What an evaluation came to.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The first output, JSON text.
    Output(Vec<u8>),
    /// Why there is none (the filter's error, or a limit).
    Error(String),
}

/// A worker's answer to a request.
#[derive(Debug, PartialEq)]
pub struct Reply {
    /// The result.
    pub outcome: Outcome,
    /// The worker exits after this reply: do not send it another request.
    pub retire: bool,
}

/// A request frame, ready to write.
pub fn encode_request(filter: &str, input: &[u8], max_output_bytes: usize) -> Vec<u8> {
    let len = 8 + 4 + filter.len() + input.len();
    let mut b = Vec::with_capacity(4 + len);
    b.extend_from_slice(&(len as u32).to_be_bytes());
    b.extend_from_slice(&(max_output_bytes as u64).to_be_bytes());
    b.extend_from_slice(&(filter.len() as u32).to_be_bytes());
    b.extend_from_slice(filter.as_bytes());
    b.extend_from_slice(input);
    b
}

fn invalid(m: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.into())
}

/// Reads the next request; `None` at a clean end of input (the parent is
/// done with this worker).
pub fn read_request(r: &mut impl Read) -> io::Result<Option<Request>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(12..=MAX_REQUEST_BYTES).contains(&len) {
        return Err(invalid(format!("request of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    let (max, rest) = payload.split_at(8);
    let (flen, rest) = rest.split_at(4);
    let max = u64::from_be_bytes(max.try_into().map_err(|_| invalid("max"))?);
    let flen = u32::from_be_bytes(flen.try_into().map_err(|_| invalid("filter length"))?);
    let flen = flen as usize;
    if flen > rest.len() {
        return Err(invalid("filter longer than the request"));
    }
    let (filter, input) = rest.split_at(flen);
    let filter = String::from_utf8(filter.to_vec()).map_err(|_| invalid("filter is not UTF-8"))?;
    Ok(Some(Request {
        max_output_bytes: usize::try_from(max).unwrap_or(usize::MAX),
        filter,
        input: input.to_vec(),
    }))
}

/// Writes a reply frame (and flushes it).
pub fn write_reply(w: &mut impl Write, reply: &Reply) -> io::Result<()> {
    let (kind, body) = match &reply.outcome {
        Outcome::Output(b) => (KIND_OUTPUT, b.as_slice()),
        Outcome::Error(e) => (KIND_ERROR, e.as_bytes()),
    };
    let flags = if reply.retire { FLAG_RETIRE } else { 0 };
    let len = u32::try_from(2 + body.len()).map_err(|_| invalid("reply too large"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&[kind, flags])?;
    w.write_all(body)?;
    w.flush()
}

/// Decodes a reply payload (after its length).
pub fn decode_reply(mut payload: Vec<u8>) -> Result<Reply, String> {
    if payload.len() < 2 {
        return Err("reply too short".into());
    }
    let (kind, flags) = (payload[0], payload[1]);
    let body = payload.split_off(2);
    let outcome = match kind {
        KIND_OUTPUT => Outcome::Output(body),
        KIND_ERROR => Outcome::Error(String::from_utf8_lossy(&body).into_owned()),
        k => return Err(format!("reply of unknown kind {k}")),
    };
    Ok(Reply {
        outcome,
        retire: flags & FLAG_RETIRE != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let mut b = encode_request(".a | \"é\"", br#"{"a":1}"#, 1234);
        b.extend(encode_request("", b"", 0));
        let mut r = b.as_slice();
        let req = read_request(&mut r).unwrap().unwrap();
        assert_eq!(
            req,
            Request {
                max_output_bytes: 1234,
                filter: ".a | \"é\"".into(),
                input: br#"{"a":1}"#.to_vec(),
            }
        );
        assert_eq!(read_request(&mut r).unwrap().unwrap().filter, "");
        assert_eq!(read_request(&mut r).unwrap(), None);
    }

    #[test]
    fn bad_requests_are_errors() {
        let mut r: &[u8] = &[0, 0, 0, 3, 1, 2, 3];
        assert!(read_request(&mut r).is_err());
        let mut b = encode_request("abc", b"", 1);
        b[4 + 8 + 3] = 200; // filter length beyond the payload
        assert!(read_request(&mut b.as_slice()).is_err());
        // Truncated mid-frame: not a clean end.
        let b = encode_request("abc", b"1", 1);
        assert!(read_request(&mut &b[..b.len() - 1]).is_err());
    }

    #[test]
    fn reply_round_trip() {
        for reply in [
            Reply {
                outcome: Outcome::Output(b"[1]".to_vec()),
                retire: false,
            },
            Reply {
                outcome: Outcome::Error("boom".into()),
                retire: true,
            },
        ] {
            let mut b = Vec::new();
            write_reply(&mut b, &reply).unwrap();
            let len = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
            assert_eq!(len, b.len() - 4);
            assert_eq!(decode_reply(b[4..].to_vec()).unwrap(), reply);
        }
        assert!(decode_reply(vec![7, 0]).is_err());
    }
}
