//! The DNS wire format, pure and tested without sockets: [`Message::parse`] reads a whole
//! message (header, questions, records), names with compression pointers that must point
//! strictly backwards (so a loop cannot exist) and at most 255 bytes long; [`build_reply`]
//! writes answers (A, AAAA) and errors, echoing the question and an EDNS OPT record when the
//! query had one; the client side ([`build_query`], [`labels_of`], [`Record::rdata_name`]) serves
//! bivy's own resolver; TCP framing. Nothing panics on any input.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

/// TTL of local answers (dnsmasq's default for DHCP names: 0, never cached).
pub const LOCAL_TTL: u32 = 0;

const MAX_NAME: usize = 255;
const MAX_JUMPS: usize = 64;

/// Why a message was not parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    Truncated,
    BadLabel,
    NameTooLong,
    BadPointer,
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DnsError::Truncated => "message truncated",
            DnsError::BadLabel => "bad label type",
            DnsError::NameTooLong => "name over 255 bytes",
            DnsError::BadPointer => "compression pointer not pointing backwards",
        })
    }
}

impl std::error::Error for DnsError {}

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub id: u16,
    pub flags: u16,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

impl Header {
    pub fn parse(b: &[u8]) -> Option<Header> {
        let w = |i: usize| Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
        Some(Header {
            id: w(0)?,
            flags: w(2)?,
            qdcount: w(4)?,
            ancount: w(6)?,
            nscount: w(8)?,
            arcount: w(10)?,
        })
    }
    pub fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }
    pub fn rcode(&self) -> u8 {
        (self.flags & 0xf) as u8
    }
}

/// A question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Labels as sent (case kept).
    pub labels: Vec<Vec<u8>>,
    pub qtype: u16,
    pub qclass: u16,
}

impl Question {
    /// The name, dotted, lowercased (non-printable bytes escaped as `\DDD`).
    pub fn name(&self) -> String {
        name_string(&self.labels)
    }

    /// The same question: type, class and name (ASCII case ignored).
    pub fn same(&self, o: &Question) -> bool {
        self.qtype == o.qtype && self.qclass == o.qclass && same_name(&self.labels, &o.labels)
    }
}

/// A resource record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub labels: Vec<Vec<u8>>,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub rdata: Vec<u8>,
    /// Where `rdata` starts in the message (a name in it may point back into the message).
    pub rdata_at: usize,
}

impl Record {
    /// The name in this record's data (a CNAME's target), read from `msg`, the message the
    /// record was parsed from.
    pub fn rdata_name(&self, msg: &[u8]) -> Result<Vec<Vec<u8>>, DnsError> {
        let (labels, end) = read_name(msg, self.rdata_at)?;
        if end != self.rdata_at + self.rdata.len() {
            return Err(DnsError::Truncated);
        }
        Ok(labels)
    }
}

/// A whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub questions: Vec<Question>,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

/// A name, dotted, lowercased (non-printable bytes escaped as `\DDD`).
pub fn name_string(labels: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        for &c in l {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_graphic() && c != b'.' && c != b'\\' {
                s.push(c as char);
            } else {
                s.push_str(&format!("\\{c:03}"));
            }
        }
    }
    s
}

/// Read a (possibly compressed) name at `pos`: its labels and the position after it.
pub fn read_name(b: &[u8], pos: usize) -> Result<(Vec<Vec<u8>>, usize), DnsError> {
    let mut labels = Vec::new();
    let mut at = pos;
    let mut end = None;
    let mut total = 1;
    let mut jumps = 0;
    loop {
        let len = *b.get(at).ok_or(DnsError::Truncated)?;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    return Ok((labels, end.unwrap_or(at + 1)));
                }
                let l = b
                    .get(at + 1..at + 1 + len as usize)
                    .ok_or(DnsError::Truncated)?;
                total += len as usize + 1;
                if total > MAX_NAME {
                    return Err(DnsError::NameTooLong);
                }
                labels.push(l.to_vec());
                at += 1 + len as usize;
            }
            0xc0 => {
                let lo = *b.get(at + 1).ok_or(DnsError::Truncated)?;
                let target = (usize::from(len & 0x3f) << 8) | usize::from(lo);
                // Strictly backwards: every jump lowers the position, so no loop.
                if target >= at {
                    return Err(DnsError::BadPointer);
                }
                jumps += 1;
                if jumps > MAX_JUMPS {
                    return Err(DnsError::BadPointer);
                }
                end.get_or_insert(at + 2);
                at = target;
            }
            _ => return Err(DnsError::BadLabel),
        }
    }
}

fn u16_at(b: &[u8], i: usize) -> Result<u16, DnsError> {
    Ok(u16::from_be_bytes([
        *b.get(i).ok_or(DnsError::Truncated)?,
        *b.get(i + 1).ok_or(DnsError::Truncated)?,
    ]))
}

fn read_records(b: &[u8], pos: &mut usize, n: u16) -> Result<Vec<Record>, DnsError> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (labels, p) = read_name(b, *pos)?;
        let rtype = u16_at(b, p)?;
        let class = u16_at(b, p + 2)?;
        let ttl = (u32::from(u16_at(b, p + 4)?) << 16) | u32::from(u16_at(b, p + 6)?);
        let rdlen = u16_at(b, p + 8)? as usize;
        let rdata = b
            .get(p + 10..p + 10 + rdlen)
            .ok_or(DnsError::Truncated)?
            .to_vec();
        *pos = p + 10 + rdlen;
        out.push(Record {
            labels,
            rtype,
            class,
            ttl,
            rdata,
            rdata_at: p + 10,
        });
    }
    Ok(out)
}

impl Message {
    /// Parse a whole message; never panics. Trailing bytes are ignored.
    pub fn parse(b: &[u8]) -> Result<Message, DnsError> {
        let header = Header::parse(b).ok_or(DnsError::Truncated)?;
        let mut pos = 12;
        let mut questions = Vec::new();
        for _ in 0..header.qdcount {
            let (labels, p) = read_name(b, pos)?;
            questions.push(Question {
                labels,
                qtype: u16_at(b, p)?,
                qclass: u16_at(b, p + 2)?,
            });
            pos = p + 4;
        }
        let answers = read_records(b, &mut pos, header.ancount)?;
        let authority = read_records(b, &mut pos, header.nscount)?;
        let additional = read_records(b, &mut pos, header.arcount)?;
        Ok(Message {
            header,
            questions,
            answers,
            authority,
            additional,
        })
    }

    /// The EDNS UDP payload size of the OPT record, when there is one.
    pub fn edns_size(&self) -> Option<u16> {
        self.additional
            .iter()
            .find(|r| r.rtype == TYPE_OPT)
            .map(|r| r.class)
    }
}

/// An answer record for the question's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rtype: u16,
    pub ttl: u32,
    pub rdata: Vec<u8>,
}

impl Answer {
    pub fn a(ip: Ipv4Addr) -> Answer {
        Answer {
            rtype: TYPE_A,
            ttl: LOCAL_TTL,
            rdata: ip.octets().to_vec(),
        }
    }
    pub fn aaaa(ip: Ipv6Addr) -> Answer {
        Answer {
            rtype: TYPE_AAAA,
            ttl: LOCAL_TTL,
            rdata: ip.octets().to_vec(),
        }
    }
    /// A PTR record naming `name` (dot-separated labels, each 1 to 63 bytes; None otherwise).
    pub fn ptr(name: &str) -> Option<Answer> {
        let labels: Vec<Vec<u8>> = name
            .split('.')
            .filter(|l| !l.is_empty())
            .map(|l| l.as_bytes().to_vec())
            .collect();
        if labels.is_empty() || labels.iter().any(|l| l.len() > 63) {
            return None;
        }
        let mut rdata = Vec::new();
        write_labels(&mut rdata, &labels);
        (rdata.len() <= 255).then_some(Answer {
            rtype: TYPE_PTR,
            ttl: LOCAL_TTL,
            rdata,
        })
    }
}

fn write_labels(out: &mut Vec<u8>, labels: &[Vec<u8>]) {
    for l in labels {
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
}

/// A reply to `q`: its id, opcode and RD echoed, RA set, AA as given, the first question echoed,
/// `answers` for that name (compressed to point at the question), an OPT record (4096) when the
/// query had one.
pub fn build_reply(q: &Message, rcode: u8, aa: bool, answers: &[Answer]) -> Vec<u8> {
    let question = q.questions.first();
    let answers = if question.is_some() { answers } else { &[] };
    let edns = q.edns_size().is_some();
    let flags = 0x8000
        | (u16::from(q.header.opcode()) << 11)
        | if aa { 0x0400 } else { 0 }
        | (q.header.flags & 0x0100)
        | 0x0080
        | u16::from(rcode & 0xf);
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&q.header.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&u16::from(question.is_some()).to_be_bytes());
    out.extend_from_slice(&(answers.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&u16::from(edns).to_be_bytes());
    if let Some(qu) = question {
        write_labels(&mut out, &qu.labels);
        out.extend_from_slice(&qu.qtype.to_be_bytes());
        out.extend_from_slice(&qu.qclass.to_be_bytes());
    }
    for a in answers {
        out.extend_from_slice(&[0xc0, 12]);
        out.extend_from_slice(&a.rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&a.ttl.to_be_bytes());
        out.extend_from_slice(&(a.rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&a.rdata);
    }
    if edns {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&4096u16.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    out
}

/// Two names are the same: equal labels, ASCII case ignored.
pub fn same_name(a: &[Vec<u8>], b: &[Vec<u8>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
}

/// The labels of dotted name `name` (one trailing dot allowed), or None when it is no name:
/// empty, an empty label, a label over 63 bytes, over 255 bytes in all.
pub fn labels_of(name: &str) -> Option<Vec<Vec<u8>>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() + 2 > MAX_NAME {
        return None;
    }
    name.split('.')
        .map(|l| (!l.is_empty() && l.len() <= 63).then(|| l.as_bytes().to_vec()))
        .collect()
}

/// A standard query (RD set) with id `id` for `labels`, type `qtype`, class IN; with an EDNS
/// OPT record advertising `edns` bytes of UDP payload when given.
pub fn build_query(id: u16, labels: &[Vec<u8>], qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&u16::from(edns.is_some()).to_be_bytes());
    write_labels(&mut out, labels);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    if let Some(size) = edns {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    out
}

/// A header-only error reply to a query whose body did not parse (None: not even a query
/// header, or a response: dropped).
pub fn error_header(b: &[u8], rcode: u8) -> Option<Vec<u8>> {
    let h = Header::parse(b)?;
    if h.is_response() {
        return None;
    }
    let flags = 0x8000 | (h.flags & 0x7900) | 0x0080 | u16::from(rcode);
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&h.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    Some(out)
}

/// One TCP-framed message (a 2-byte length, then the message).
pub fn read_framed(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len)?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    r.read_exact(&mut msg)?;
    Ok(msg)
}

/// Write `msg` TCP-framed.
pub fn write_framed(w: &mut impl Write, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    w.write_all(&out)
}
