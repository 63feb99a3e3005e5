// SPDX-License-Identifier: Apache-2.0
//! The ZDS messages and their protobuf encoding, written out by hand: the protocol has six tiny
//! messages, and a code generator (with its build step and dependencies) would be larger than
//! the codec.
//!
//! Only what ZDS uses of protobuf is here: varints and length-delimited fields (strings and
//! embedded messages). Encoding follows proto3: a string or number field holding its default
//! (empty, 0) is left out, an embedded message that is present is always written, even empty
//! (so an empty ack is `0a 00`). Decoding skips fields it does not know, whatever their wire
//! type (except the long-deprecated groups), and rejects truncated or malformed input with a
//! [`DecodeError`]; it never panics. A field that appears twice takes its last value (protobuf
//! would merge two copies of an embedded message; neither side of ZDS ever sends one twice).
//!
//! Field numbers, as ztunnel accepts them:
//!
//! ```text
//! ZdsHello         { version = 1 (enum, V1 = 1) }
//! WorkloadInfo     { name = 1, namespace = 2, service_account = 3 }
//! AddWorkload      { uid = 1, workload_info = 2 }
//! DelWorkload      { uid = 2 }                      field 2, not 1
//! KeepWorkload     { uid = 1 }
//! SnapshotSent     { }
//! WorkloadRequest  oneof { add = 1, del = 2, snapshot_sent = 3, keep = 5 }
//! Ack              { error = 1 }                    empty: success
//! WorkloadResponse oneof { ack = 1 }
//! ```

use std::fmt;

/// The only protocol version there is (`Version.V1`).
pub const VERSION_V1: u64 = 1;

/// ztunnel reads at most this many bytes per packet: a longer message would arrive truncated.
pub const MAX_MESSAGE: usize = 1024;

/// The first message, from ztunnel (the client) to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u64,
}

/// Who a workload is; ztunnel matches it to its XDS workload by these three on its node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadInfo {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
}

/// A workload to serve; its netns travels as the packet's one `SCM_RIGHTS` fd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add {
    pub uid: String,
    /// Optional on the wire, but ztunnel exits on an add without it.
    pub workload_info: Option<WorkloadInfo>,
}

/// A `WorkloadRequest`, from the server to ztunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Add(Add),
    Del {
        uid: String,
    },
    /// Ends the snapshot: what was not added (or kept) since the connection began is dropped.
    SnapshotSent,
    /// Before the snapshot ends only: keep a workload without sending its netns again. ztunnel
    /// exits on one after the snapshot.
    Keep {
        uid: String,
    },
}

/// The payload of a `WorkloadResponse`, ztunnel's answer to every request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ack {
    /// Empty on success.
    pub error: String,
}

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

type Result<T> = std::result::Result<T, DecodeError>;

fn error<T>(msg: impl Into<String>) -> Result<T> {
    Err(DecodeError(msg.into()))
}

// ---------------------------------------------------------------------------------------------
// Encoding

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, u64::from(field) << 3 | u64::from(wire));
}

/// A number field; proto3 leaves out the default 0.
fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_key(out, field, VARINT);
        put_varint(out, v);
    }
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A string field; proto3 leaves out the default "".
fn put_string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(out, field, s.as_bytes());
    }
}

pub fn encode_hello(hello: &Hello) -> Vec<u8> {
    let mut out = Vec::new();
    put_uint(&mut out, 1, hello.version);
    out
}

fn encode_workload_info(info: &WorkloadInfo) -> Vec<u8> {
    let mut out = Vec::new();
    put_string(&mut out, 1, &info.name);
    put_string(&mut out, 2, &info.namespace);
    put_string(&mut out, 3, &info.service_account);
    out
}

fn encode_add(add: &Add) -> Vec<u8> {
    let mut out = Vec::new();
    put_string(&mut out, 1, &add.uid);
    if let Some(info) = &add.workload_info {
        put_bytes(&mut out, 2, &encode_workload_info(info));
    }
    out
}

/// One field holding a string, as `DelWorkload` (field 2) and `KeepWorkload` (field 1) are.
fn encode_uid(field: u32, uid: &str) -> Vec<u8> {
    let mut out = Vec::new();
    put_string(&mut out, field, uid);
    out
}

pub fn encode_request(req: &Request) -> Vec<u8> {
    let (field, body) = match req {
        Request::Add(add) => (1, encode_add(add)),
        Request::Del { uid } => (2, encode_uid(2, uid)),
        Request::SnapshotSent => (3, Vec::new()),
        Request::Keep { uid } => (5, encode_uid(1, uid)),
    };
    let mut out = Vec::new();
    put_bytes(&mut out, field, &body);
    out
}

/// A `WorkloadResponse` carrying `ack`.
pub fn encode_response(ack: &Ack) -> Vec<u8> {
    let mut body = Vec::new();
    put_string(&mut body, 1, &ack.error);
    let mut out = Vec::new();
    put_bytes(&mut out, 1, &body);
    out
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// One field's value as the wire carries it.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// Fixed-width numbers: ZDS has none, they can only be skipped.
    Fixed,
}

impl Value<'_> {
    fn wire_name(&self) -> &'static str {
        match self {
            Value::Varint(_) => "varint",
            Value::Bytes(_) => "length-delimited",
            Value::Fixed => "fixed-width",
        }
    }
}

/// Walks the fields of one message.
struct Fields<'a> {
    buf: &'a [u8],
    /// Which message, for error messages.
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Fields { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return error(format!(
                "{}: truncated ({n} bytes announced, {} left)",
                self.what,
                self.buf.len()
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = self.buf.split_first() else {
                return error(format!("{}: truncated varint", self.what));
            };
            self.buf = rest;
            // The tenth byte holds bit 63 only.
            if i == 9 && b > 1 {
                return error(format!("{}: varint overflows 64 bits", self.what));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        error(format!("{}: varint longer than 10 bytes", self.what))
    }

    /// The next field number and value, or None at the end of the message.
    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > (1 << 29) - 1 {
            return error(format!("{}: invalid field number {field}", self.what));
        }
        let field = field as u32;
        let value = match (key & 7) as u8 {
            VARINT => Value::Varint(self.varint()?),
            FIXED64 => {
                self.take(8)?;
                Value::Fixed
            }
            LEN => {
                let len = self.varint()?;
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                Value::Bytes(self.take(len)?)
            }
            FIXED32 => {
                self.take(4)?;
                Value::Fixed
            }
            START_GROUP | END_GROUP => {
                return error(format!("{}: field {field} is a group", self.what))
            }
            wire => return error(format!("{}: field {field}: wire type {wire}", self.what)),
        };
        Ok(Some((field, value)))
    }

    fn mismatch<T>(&self, field: u32, value: &Value<'_>, expected: &str) -> Result<T> {
        error(format!(
            "{}: field {field} is {}, expected {expected}",
            self.what,
            value.wire_name()
        ))
    }

    /// The value of a known varint field.
    fn uint(&self, field: u32, value: Value<'_>) -> Result<u64> {
        match value {
            Value::Varint(v) => Ok(v),
            other => self.mismatch(field, &other, "varint"),
        }
    }

    /// The bytes of a known length-delimited field (an embedded message).
    fn bytes(&self, field: u32, value: Value<'a>) -> Result<&'a [u8]> {
        match value {
            Value::Bytes(b) => Ok(b),
            other => self.mismatch(field, &other, "length-delimited"),
        }
    }

    /// The value of a known string field, which proto3 requires to be UTF-8.
    fn string(&self, field: u32, value: Value<'_>) -> Result<String> {
        let bytes = match value {
            Value::Bytes(b) => b,
            other => return self.mismatch(field, &other, "a string"),
        };
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => error(format!("{}: field {field} is not UTF-8", self.what)),
        }
    }
}

pub fn decode_hello(buf: &[u8]) -> Result<Hello> {
    let mut fields = Fields::new(buf, "hello");
    let mut hello = Hello { version: 0 };
    while let Some((field, value)) = fields.next()? {
        if field == 1 {
            hello.version = fields.uint(field, value)?;
        }
    }
    Ok(hello)
}

fn decode_workload_info(buf: &[u8]) -> Result<WorkloadInfo> {
    let mut fields = Fields::new(buf, "workload info");
    let mut info = WorkloadInfo::default();
    while let Some((field, value)) = fields.next()? {
        match field {
            1 => info.name = fields.string(field, value)?,
            2 => info.namespace = fields.string(field, value)?,
            3 => info.service_account = fields.string(field, value)?,
            _ => {}
        }
    }
    Ok(info)
}

fn decode_add(buf: &[u8]) -> Result<Add> {
    let mut fields = Fields::new(buf, "add");
    let mut add = Add {
        uid: String::new(),
        workload_info: None,
    };
    while let Some((field, value)) = fields.next()? {
        match field {
            1 => add.uid = fields.string(field, value)?,
            2 => add.workload_info = Some(decode_workload_info(fields.bytes(field, value)?)?),
            _ => {}
        }
    }
    Ok(add)
}

/// The string in field `uid_field` of a one-string message (del, keep).
fn decode_uid(buf: &[u8], uid_field: u32, what: &'static str) -> Result<String> {
    let mut fields = Fields::new(buf, what);
    let mut uid = String::new();
    while let Some((field, value)) = fields.next()? {
        if field == uid_field {
            uid = fields.string(field, value)?;
        }
    }
    Ok(uid)
}

/// A `WorkloadRequest`; one without any payload this codec knows is an error.
pub fn decode_request(buf: &[u8]) -> Result<Request> {
    let mut fields = Fields::new(buf, "request");
    let mut req = None;
    while let Some((field, value)) = fields.next()? {
        // A oneof: the last member on the wire wins.
        match field {
            1 => req = Some(Request::Add(decode_add(fields.bytes(field, value)?)?)),
            2 => {
                let uid = decode_uid(fields.bytes(field, value)?, 2, "del")?;
                req = Some(Request::Del { uid });
            }
            3 => {
                // SnapshotSent has no fields; whatever it holds is skipped (but must parse).
                let mut inner = Fields::new(fields.bytes(field, value)?, "snapshot sent");
                while inner.next()?.is_some() {}
                req = Some(Request::SnapshotSent);
            }
            5 => {
                let uid = decode_uid(fields.bytes(field, value)?, 1, "keep")?;
                req = Some(Request::Keep { uid });
            }
            _ => {}
        }
    }
    req.map_or_else(|| error("request: no add, del, snapshot sent or keep"), Ok)
}

/// A `WorkloadResponse`'s ack; a response without one is an error.
pub fn decode_response(buf: &[u8]) -> Result<Ack> {
    let mut fields = Fields::new(buf, "response");
    let mut ack = None;
    while let Some((field, value)) = fields.next()? {
        if field == 1 {
            let mut inner = Fields::new(fields.bytes(field, value)?, "ack");
            let mut decoded = Ack::default();
            while let Some((field, value)) = inner.next()? {
                if field == 1 {
                    decoded.error = inner.string(field, value)?;
                }
            }
            ack = Some(decoded);
        }
    }
    ack.map_or_else(|| error("response: no ack"), Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(uid: &str, name: &str, namespace: &str, sa: &str) -> Request {
        Request::Add(Add {
            uid: uid.into(),
            workload_info: Some(WorkloadInfo {
                name: name.into(),
                namespace: namespace.into(),
                service_account: sa.into(),
            }),
        })
    }

    #[test]
    fn hello_is_08_01() {
        let hello = Hello {
            version: VERSION_V1,
        };
        assert_eq!(encode_hello(&hello), [0x08, 0x01]);
        assert_eq!(decode_hello(&[0x08, 0x01]), Ok(hello));
        // Version 0 (NOT_USED) is the default, hence no bytes at all.
        assert_eq!(encode_hello(&Hello { version: 0 }), [0u8; 0]);
        assert_eq!(decode_hello(&[]), Ok(Hello { version: 0 }));
    }

    #[test]
    fn empty_ack_is_0a_00() {
        assert_eq!(encode_response(&Ack::default()), [0x0a, 0x00]);
        assert_eq!(decode_response(&[0x0a, 0x00]), Ok(Ack::default()));
    }

    #[test]
    fn ack_with_error() {
        let ack = Ack { error: "no".into() };
        let bytes = [0x0a, 0x04, 0x0a, 0x02, b'n', b'o'];
        assert_eq!(encode_response(&ack), bytes);
        assert_eq!(decode_response(&bytes), Ok(ack));
    }

    #[test]
    fn add_with_every_field() {
        let req = add("u1", "app", "ns", "sa");
        let bytes = [
            0x0a, 0x13, // request field 1 (add), 19 bytes
            0x0a, 0x02, b'u', b'1', // add.uid
            0x12, 0x0d, // add.workload_info, 13 bytes
            0x0a, 0x03, b'a', b'p', b'p', // name
            0x12, 0x02, b'n', b's', // namespace
            0x1a, 0x02, b's', b'a', // service_account
        ];
        assert_eq!(encode_request(&req), bytes);
        assert_eq!(decode_request(&bytes), Ok(req));
    }

    #[test]
    fn add_keeps_an_empty_workload_info_present() {
        let req = Request::Add(Add {
            uid: "u".into(),
            workload_info: Some(WorkloadInfo::default()),
        });
        let bytes = [0x0a, 0x05, 0x0a, 0x01, b'u', 0x12, 0x00];
        assert_eq!(encode_request(&req), bytes);
        assert_eq!(decode_request(&bytes), Ok(req));
        // Without it, the add decodes (ztunnel would exit on it, which is the caller's call).
        let bare = [0x0a, 0x03, 0x0a, 0x01, b'u'];
        let Ok(Request::Add(add)) = decode_request(&bare) else {
            panic!("bare add did not decode");
        };
        assert_eq!(add.workload_info, None);
    }

    #[test]
    fn del_puts_the_uid_in_field_2() {
        let req = Request::Del { uid: "u1".into() };
        let bytes = [0x12, 0x04, 0x12, 0x02, b'u', b'1'];
        assert_eq!(encode_request(&req), bytes);
        assert_eq!(decode_request(&bytes), Ok(req));
        // A uid in field 1 is an unknown field of DelWorkload: skipped, not taken for the uid.
        assert_eq!(
            decode_request(&[0x12, 0x04, 0x0a, 0x02, b'u', b'1']),
            Ok(Request::Del { uid: "".into() })
        );
    }

    #[test]
    fn snapshot_sent_is_1a_00() {
        assert_eq!(encode_request(&Request::SnapshotSent), [0x1a, 0x00]);
        assert_eq!(decode_request(&[0x1a, 0x00]), Ok(Request::SnapshotSent));
    }

    #[test]
    fn keep_is_field_5_with_the_uid_in_field_1() {
        let req = Request::Keep { uid: "k".into() };
        let bytes = [0x2a, 0x03, 0x0a, 0x01, b'k'];
        assert_eq!(encode_request(&req), bytes);
        assert_eq!(decode_request(&bytes), Ok(req));
    }

    #[test]
    fn long_fields_use_multi_byte_lengths() {
        let uid = "x".repeat(300);
        let req = Request::Del { uid: uid.clone() };
        let bytes = encode_request(&req);
        // 300 = 0xac 0x02; the outer length 303 = 0xaf 0x02.
        assert_eq!(&bytes[..6], [0x12, 0xaf, 0x02, 0x12, 0xac, 0x02]);
        assert_eq!(bytes.len(), 3 + 3 + 300);
        assert_eq!(decode_request(&bytes), Ok(req));
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let bytes = [
            0x08, 0x01, // hello version 1
            0x10, 0x96, 0x01, // field 2 varint 150
            0x1a, 0x02, 0xff, 0xfe, // field 3 bytes (not UTF-8: never looked at)
            0x21, 1, 2, 3, 4, 5, 6, 7, 8, // field 4 fixed64
            0x2d, 1, 2, 3, 4, // field 5 fixed32
        ];
        assert_eq!(decode_hello(&bytes), Ok(Hello { version: 1 }));
        let mut ack = vec![0x0a, 0x05, 0x10, 0x07, 0x0a, 0x01, b'e'];
        ack.extend([0x12, 0x00]); // unknown response field 2
        assert_eq!(decode_response(&ack), Ok(Ack { error: "e".into() }));
        // A request of an unknown kind only is no request.
        assert!(decode_request(&[0x22, 0x00]).is_err());
    }

    #[test]
    fn malformed_input_is_an_error() {
        let cases: &[(&str, &[u8])] = &[
            ("truncated varint", &[0x08, 0x80]),
            ("truncated key", &[0x88]),
            (
                "varint overflow",
                &[
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ],
            ),
            (
                "varint too long",
                &[
                    0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
                ],
            ),
            ("length past the end", &[0x0a, 0x05, 0x0a]),
            (
                "huge length",
                &[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            ),
            ("field number 0", &[0x00, 0x01]),
            ("group", &[0x0b, 0x0c]),
            ("wire type 7", &[0x0f]),
            ("truncated fixed64", &[0x09, 1, 2]),
            ("add as a varint", &[0x08, 0x01]),
            ("uid not UTF-8", &[0x0a, 0x03, 0x0a, 0x01, 0xff]),
            ("uid as a varint", &[0x0a, 0x02, 0x08, 0x01]),
            (
                "workload info truncated",
                &[0x0a, 0x04, 0x12, 0x02, 0x0a, 0x05],
            ),
            ("no payload", &[]),
        ];
        for (what, bytes) in cases {
            assert!(
                decode_request(bytes).is_err(),
                "request, {what}: {bytes:02x?}"
            );
        }
        assert!(
            decode_hello(&[0x0a, 0x00]).is_err(),
            "hello version as bytes"
        );
        assert!(decode_hello(&[0x08]).is_err(), "hello truncated");
        assert!(decode_response(&[]).is_err(), "response without ack");
        assert!(
            decode_response(&[0x0a, 0x02, 0x0a, 0x09]).is_err(),
            "ack truncated"
        );
        assert!(decode_response(&[0x08, 0x00]).is_err(), "ack as a varint");
    }

    #[test]
    fn every_prefix_of_a_valid_message_decodes_or_errors() {
        // No panic on any cut; the whole message decodes.
        let bytes = encode_request(&add("uid-1", "app-a", "default", "app-a"));
        for cut in 0..bytes.len() {
            let _ = decode_request(&bytes[..cut]);
        }
        assert!(decode_request(&bytes).is_ok());
    }

    #[test]
    fn the_last_oneof_member_wins() {
        let mut bytes = encode_request(&Request::SnapshotSent);
        bytes.extend(encode_request(&Request::Del { uid: "d".into() }));
        assert_eq!(decode_request(&bytes), Ok(Request::Del { uid: "d".into() }));
    }
}
