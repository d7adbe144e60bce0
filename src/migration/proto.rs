//! LXD's migration control messages (`lxd/migration/migrate.proto` at lxd-5.0.2, proto2) and a
//! small protobuf encoder and decoder for exactly them: varints, length-delimited fields,
//! embedded messages, repeated fields written one element at a time (proto2's unpacked
//! default). The decoder skips unknown fields (wire types 0, 1, 2 and 5), takes the last value
//! of a repeated scalar, and refuses anything malformed (a truncated varint or length, a length
//! past the end, groups) with an error instead of panicking; missing required fields decode as
//! their defaults. No I/O here: one message is one websocket binary frame (`super::wire`).

use std::fmt;

/// `MigrationFSType`: how the filesystem travels. bivy offers and accepts only `RSYNC`.
pub const FS_RSYNC: i32 = 0;
/// `MigrationFSType.BTRFS` (named in errors).
pub const FS_BTRFS: i32 = 1;
/// bivy's transfer without an external program: each volume as an uncompressed unified image
/// tarball (`storage::send_volume`), unpacked by the image unpacker's rules on the target.
pub const XFER_STREAM: &str = "stream";
/// bivy's btrfs transfer: `btrfs send` of each read-only subvolume, incremental from the
/// snapshot sent before it, and `btrfs receive` on the target.
pub const XFER_BTRFS: &str = "btrfs";
/// `CRIUType.CRIU_RSYNC`: a live migration (the CRIU images rsynced on their own stream).
pub const CRIU_RSYNC: i32 = 0;
/// `CRIUType.NONE`: the source runs, but its state is not sent (a final sync follows).
pub const CRIU_NONE: i32 = 2;

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed migration message: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

type Result<T> = std::result::Result<T, DecodeError>;

/// `IDMapType`: one line of the on-disk id map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    pub isuid: bool,
    pub isgid: bool,
    pub hostid: i32,
    pub nsid: i32,
    pub maprange: i32,
}

/// `Config`: one key and value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub key: String,
    pub value: String,
}

/// A map as LXD's repeated `Config` entries.
pub fn configs(m: &std::collections::BTreeMap<String, String>) -> Vec<Config> {
    m.iter()
        .map(|(k, v)| Config {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

/// `Device`: a named device and its settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub config: Vec<Config>,
}

/// `Snapshot`: a snapshot's record as the source has it (dates are Unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    pub local_config: Vec<Config>,
    pub profiles: Vec<String>,
    pub ephemeral: bool,
    pub local_devices: Vec<Device>,
    /// LXD's architecture number (`2` is x86_64).
    pub architecture: i32,
    pub stateful: bool,
    pub creation_date: Option<i64>,
    pub last_used_date: Option<i64>,
    pub expiry_date: Option<i64>,
}

/// `rsyncFeatures`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RsyncFeatures {
    pub xattrs: Option<bool>,
    pub delete: Option<bool>,
    pub compress: Option<bool>,
    pub bidirectional: Option<bool>,
}

impl RsyncFeatures {
    /// Every feature: what a source offers.
    pub fn all() -> RsyncFeatures {
        RsyncFeatures {
            xattrs: Some(true),
            delete: Some(true),
            compress: Some(true),
            bidirectional: Some(true),
        }
    }
}

/// `MigrationHeader`: the source's offer and the sink's answer. The zfs and btrfs feature
/// messages are kept as raw bytes (bivy never uses them, but echoes nothing it did not get).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationHeader {
    pub fs: i32,
    pub criu: Option<i32>,
    pub idmap: Vec<IdMap>,
    pub snapshot_names: Vec<String>,
    pub snapshots: Vec<Snapshot>,
    pub predump: Option<bool>,
    pub rsync_features: Option<RsyncFeatures>,
    pub refresh: Option<bool>,
    pub zfs_features: Option<Vec<u8>>,
    pub volume_size: Option<i64>,
    pub btrfs_features: Option<Vec<u8>>,
    pub index_header_version: Option<u32>,
    /// bivy's own transfers (field 1001, unknown to LXD, which ignores it): in an offer the
    /// ones the source can send, in an answer the one the target chose ([`XFER_STREAM`],
    /// [`XFER_BTRFS`]). An answer without it means LXD's transfer (`fs`, rsync).
    pub bivy_transfer: Vec<String>,
    /// bivy's own (field 1002): the bytes the source expects to send with a bivy transfer, for
    /// the target's progress percentage.
    pub bivy_size: Option<i64>,
}

/// `MigrationControl`: the end of a migration, or an abort with its reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationControl {
    pub success: bool,
    pub message: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Encoding

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field << 3 | u32::from(wire)));
    }
    fn bool(&mut self, field: u32, v: bool) {
        self.key(field, VARINT);
        self.varint(u64::from(v));
    }
    /// int32 and enums: negative values sign-extend to ten bytes, as Go writes them.
    fn int32(&mut self, field: u32, v: i32) {
        self.key(field, VARINT);
        self.varint(i64::from(v) as u64);
    }
    fn int64(&mut self, field: u32, v: i64) {
        self.key(field, VARINT);
        self.varint(v as u64);
    }
    fn uint32(&mut self, field: u32, v: u32) {
        self.key(field, VARINT);
        self.varint(u64::from(v));
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
}

impl IdMap {
    fn encode(&self) -> Vec<u8> {
        let mut w = W::default();
        w.bool(1, self.isuid);
        w.bool(2, self.isgid);
        w.int32(3, self.hostid);
        w.int32(4, self.nsid);
        w.int32(5, self.maprange);
        w.0
    }
}

impl Config {
    fn encode(&self) -> Vec<u8> {
        let mut w = W::default();
        w.string(1, &self.key);
        w.string(2, &self.value);
        w.0
    }
}

impl Device {
    fn encode(&self) -> Vec<u8> {
        let mut w = W::default();
        w.string(1, &self.name);
        for c in &self.config {
            w.bytes(2, &c.encode());
        }
        w.0
    }
}

impl Snapshot {
    fn encode(&self) -> Vec<u8> {
        let mut w = W::default();
        w.string(1, &self.name);
        for c in &self.local_config {
            w.bytes(2, &c.encode());
        }
        for p in &self.profiles {
            w.string(3, p);
        }
        w.bool(4, self.ephemeral);
        for d in &self.local_devices {
            w.bytes(5, &d.encode());
        }
        w.int32(6, self.architecture);
        w.bool(7, self.stateful);
        if let Some(v) = self.creation_date {
            w.int64(8, v);
        }
        if let Some(v) = self.last_used_date {
            w.int64(9, v);
        }
        if let Some(v) = self.expiry_date {
            w.int64(10, v);
        }
        w.0
    }
}

impl RsyncFeatures {
    fn encode(&self) -> Vec<u8> {
        let mut w = W::default();
        for (f, v) in [
            (1, self.xattrs),
            (2, self.delete),
            (3, self.compress),
            (4, self.bidirectional),
        ] {
            if let Some(v) = v {
                w.bool(f, v);
            }
        }
        w.0
    }
}

impl MigrationHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W::default();
        w.int32(1, self.fs);
        if let Some(v) = self.criu {
            w.int32(2, v);
        }
        for m in &self.idmap {
            w.bytes(3, &m.encode());
        }
        for n in &self.snapshot_names {
            w.string(4, n);
        }
        for s in &self.snapshots {
            w.bytes(5, &s.encode());
        }
        if let Some(v) = self.predump {
            w.bool(7, v);
        }
        if let Some(f) = &self.rsync_features {
            w.bytes(8, &f.encode());
        }
        if let Some(v) = self.refresh {
            w.bool(9, v);
        }
        if let Some(b) = &self.zfs_features {
            w.bytes(10, b);
        }
        if let Some(v) = self.volume_size {
            w.int64(11, v);
        }
        if let Some(b) = &self.btrfs_features {
            w.bytes(12, b);
        }
        if let Some(v) = self.index_header_version {
            w.uint32(13, v);
        }
        for t in &self.bivy_transfer {
            w.string(1001, t);
        }
        if let Some(v) = self.bivy_size {
            w.int64(1002, v);
        }
        w.0
    }

    pub fn decode(b: &[u8]) -> Result<MigrationHeader> {
        let mut h = MigrationHeader::default();
        let mut r = R::new(b);
        while let Some((field, v)) = r.next()? {
            match field {
                1 => h.fs = v.int32()?,
                2 => h.criu = Some(v.int32()?),
                3 => h.idmap.push(IdMap::decode(v.bytes()?)?),
                4 => h.snapshot_names.push(v.string()?),
                5 => h.snapshots.push(Snapshot::decode(v.bytes()?)?),
                7 => h.predump = Some(v.bool()?),
                8 => h.rsync_features = Some(RsyncFeatures::decode(v.bytes()?)?),
                9 => h.refresh = Some(v.bool()?),
                10 => h.zfs_features = Some(v.bytes()?.to_vec()),
                11 => h.volume_size = Some(v.int64()?),
                12 => h.btrfs_features = Some(v.bytes()?.to_vec()),
                13 => h.index_header_version = Some(v.uint32()?),
                1001 => h.bivy_transfer.push(v.string()?),
                1002 => h.bivy_size = Some(v.int64()?),
                _ => {}
            }
        }
        Ok(h)
    }

    /// The rsync features as a list of names (LXD's `GetRsyncFeaturesSlice`).
    pub fn rsync_feature_names(&self) -> Vec<&'static str> {
        let Some(f) = &self.rsync_features else {
            return vec![];
        };
        [
            ("xattrs", f.xattrs),
            ("delete", f.delete),
            ("compress", f.compress),
            ("bidirectional", f.bidirectional),
        ]
        .into_iter()
        .filter(|(_, v)| *v == Some(true))
        .map(|(n, _)| n)
        .collect()
    }
}

impl MigrationControl {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W::default();
        w.bool(1, self.success);
        if let Some(m) = &self.message {
            w.string(2, m);
        }
        w.0
    }

    pub fn decode(b: &[u8]) -> Result<MigrationControl> {
        let mut c = MigrationControl::default();
        let mut r = R::new(b);
        while let Some((field, v)) = r.next()? {
            match field {
                1 => c.success = v.bool()?,
                2 => c.message = Some(v.string()?),
                _ => {}
            }
        }
        Ok(c)
    }
}

/// Fuzzing entry point (`tests/fuzz` target `migration_proto`, and the deterministic test): the
/// bytes as a [`MigrationHeader`] and as a [`MigrationControl`], as the other side's websocket
/// frames arrive. Where they decode, encoding the message and decoding it again gives the same
/// message (and the same bytes once more). Must never panic.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    if let Ok(h) = MigrationHeader::decode(data) {
        let bytes = h.encode();
        let again = MigrationHeader::decode(&bytes).expect("a re-encoded header decodes");
        assert_eq!(again, h, "header changed in a round trip");
        assert_eq!(again.encode(), bytes, "header encodes differently");
        let _ = h.rsync_feature_names();
    }
    if let Ok(c) = MigrationControl::decode(data) {
        let bytes = c.encode();
        let again = MigrationControl::decode(&bytes).expect("a re-encoded control decodes");
        assert_eq!(again, c, "control message changed in a round trip");
        assert_eq!(again.encode(), bytes, "control message encodes differently");
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// One field's value as it came off the wire.
enum V<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> V<'a> {
    fn varint(&self) -> Result<u64> {
        match self {
            V::Varint(v) => Ok(*v),
            _ => Err(DecodeError("wrong wire type for a number")),
        }
    }
    fn bool(&self) -> Result<bool> {
        Ok(self.varint()? != 0)
    }
    /// int32 as Go decodes it: the low 32 bits of the varint.
    fn int32(&self) -> Result<i32> {
        Ok(self.varint()? as u32 as i32)
    }
    fn int64(&self) -> Result<i64> {
        Ok(self.varint()? as i64)
    }
    fn uint32(&self) -> Result<u32> {
        Ok(self.varint()? as u32)
    }
    fn bytes(&self) -> Result<&'a [u8]> {
        match self {
            V::Bytes(b) => Ok(b),
            _ => Err(DecodeError("wrong wire type for a string or message")),
        }
    }
    fn string(&self) -> Result<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError("string is not UTF-8"))
    }
}

struct R<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> R<'a> {
    fn new(b: &'a [u8]) -> R<'a> {
        R { b, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let byte = *self
                .b
                .get(self.pos)
                .ok_or(DecodeError("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint longer than ten bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or(DecodeError("length past the end"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next field number and value, or `None` at the end.
    fn next(&mut self) -> Result<Option<(u32, V<'a>)>> {
        if self.pos >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| DecodeError("field number too big"))?;
        if field == 0 {
            return Err(DecodeError("field number 0"));
        }
        let v = match (key & 7) as u8 {
            VARINT => V::Varint(self.varint()?),
            FIXED64 => {
                self.take(8)?;
                V::Fixed
            }
            LEN => {
                let n = usize::try_from(self.varint()?)
                    .map_err(|_| DecodeError("length past the end"))?;
                V::Bytes(self.take(n)?)
            }
            FIXED32 => {
                self.take(4)?;
                V::Fixed
            }
            _ => return Err(DecodeError("unsupported wire type")),
        };
        Ok(Some((field, v)))
    }
}

impl IdMap {
    fn decode(b: &[u8]) -> Result<IdMap> {
        let mut m = IdMap::default();
        let mut r = R::new(b);
        while let Some((field, v)) = r.next()? {
            match field {
                1 => m.isuid = v.bool()?,
                2 => m.isgid = v.bool()?,
                3 => m.hostid = v.int32()?,
                4 => m.nsid = v.int32()?,
                5 => m.maprange = v.int32()?,
                _ => {}
            }
        }
        Ok(m)
    }
}

impl Config {
    fn decode(b: &[u8]) -> Result<Config> {
        let mut c = Config::default();
        let mut r = R::new(b);
        while let Some((field, v)) = r.next()? {
            match field {
                1 => c.key = v.string()?,
                2 => c.value = v.string()?,
                _ => {}
            }
        }
        Ok(c)
    }
}

impl Device {
    fn decode(b: &[u8]) -> Result<Device> {
        let mut d = Device::default();
        let mut r = R::new(b);
        while let Some((field, v)) = r.next()? {
            match field {
                1 => d.name = v.string()?,
                2 => d.config.push(Config::decode(v.bytes()?)?),
                _ => {}
            }
        }
        Ok(d)
    }
}

impl Snapshot {
    fn decode(b: &[u8]) -> Result<Snapshot> {
        let mut s = Snapshot::default();
        let mut r = R::new(b);
        while let Some((field, v)) = r.next()? {
            match field {
                1 => s.name = v.string()?,
                2 => s.local_config.push(Config::decode(v.bytes()?)?),
                3 => s.profiles.push(v.string()?),
                4 => s.ephemeral = v.bool()?,
                5 => s.local_devices.push(Device::decode(v.bytes()?)?),
                6 => s.architecture = v.int32()?,
                7 => s.stateful = v.bool()?,
                8 => s.creation_date = Some(v.int64()?),
                9 => s.last_used_date = Some(v.int64()?),
                10 => s.expiry_date = Some(v.int64()?),
                _ => {}
            }
        }
        Ok(s)
    }
}

impl RsyncFeatures {
    fn decode(b: &[u8]) -> Result<RsyncFeatures> {
        let mut f = RsyncFeatures::default();
        let mut r = R::new(b);
        while let Some((field, v)) = r.next()? {
            match field {
                1 => f.xattrs = Some(v.bool()?),
                2 => f.delete = Some(v.bool()?),
                3 => f.compress = Some(v.bool()?),
                4 => f.bidirectional = Some(v.bool()?),
                _ => {}
            }
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MigrationHeader {
        MigrationHeader {
            fs: FS_RSYNC,
            criu: Some(CRIU_NONE),
            idmap: vec![IdMap {
                isuid: true,
                isgid: false,
                hostid: 1_000_000,
                nsid: 0,
                maprange: 65536,
            }],
            snapshot_names: vec!["snap0".into(), "snap1".into()],
            snapshots: vec![Snapshot {
                name: "snap0".into(),
                local_config: vec![Config {
                    key: "user.a".into(),
                    value: "b".into(),
                }],
                profiles: vec!["default".into()],
                ephemeral: false,
                local_devices: vec![Device {
                    name: "root".into(),
                    config: vec![Config {
                        key: "path".into(),
                        value: "/".into(),
                    }],
                }],
                architecture: 2,
                stateful: false,
                creation_date: Some(1_700_000_000),
                last_used_date: Some(0),
                // Go's zero time in Unix seconds: a negative int64, ten varint bytes.
                expiry_date: Some(-62_135_596_800),
            }],
            predump: Some(false),
            rsync_features: Some(RsyncFeatures {
                xattrs: Some(true),
                delete: Some(true),
                compress: Some(false),
                bidirectional: Some(true),
            }),
            refresh: Some(false),
            zfs_features: None,
            volume_size: None,
            btrfs_features: Some(vec![0x08, 0x01]),
            index_header_version: Some(1),
            bivy_transfer: vec![XFER_STREAM.into(), XFER_BTRFS.into()],
            bivy_size: Some(1 << 33),
        }
    }

    #[test]
    fn header_round_trips() {
        let h = sample();
        assert_eq!(MigrationHeader::decode(&h.encode()).unwrap(), h);
        assert_eq!(
            MigrationHeader::decode(&MigrationHeader::default().encode()).unwrap(),
            MigrationHeader::default()
        );
        assert_eq!(
            h.rsync_feature_names(),
            ["xattrs", "delete", "bidirectional"]
        );
    }

    #[test]
    fn bivy_fields_are_unknown_fields_to_lxd() {
        // Field 1001 (length-delimited) and 1002 (varint): keys of two bytes each, which a
        // decoder that knows only LXD's fields 1 to 13 skips.
        let h = MigrationHeader {
            bivy_transfer: vec!["stream".into()],
            bivy_size: Some(5),
            ..Default::default()
        };
        let b = h.encode();
        assert_eq!(
            &b[2..],
            [0xca, 0x3e, 6, b's', b't', b'r', b'e', b'a', b'm', 0xd0, 0x3e, 5]
        );
        let mut lxd_view = R::new(&b);
        let mut fields = Vec::new();
        while let Some((f, _)) = lxd_view.next().unwrap() {
            fields.push(f);
        }
        assert_eq!(fields, [1, 1001, 1002]);
    }

    #[test]
    fn control_bytes_match_protoc() {
        // `protoc --encode=migration.MigrationControl`: success: false, message: "no".
        let c = MigrationControl {
            success: false,
            message: Some("no".into()),
        };
        assert_eq!(c.encode(), [0x08, 0x00, 0x12, 0x02, b'n', b'o']);
        assert_eq!(MigrationControl::decode(&c.encode()).unwrap(), c);
        let ok = MigrationControl {
            success: true,
            message: None,
        };
        assert_eq!(ok.encode(), [0x08, 0x01]);
    }

    #[test]
    fn header_bytes_match_protoc() {
        // fs: RSYNC, criu: NONE, indexHeaderVersion: 1, rsyncFeatures {xattrs: true}.
        let h = MigrationHeader {
            fs: FS_RSYNC,
            criu: Some(CRIU_NONE),
            rsync_features: Some(RsyncFeatures {
                xattrs: Some(true),
                ..Default::default()
            }),
            index_header_version: Some(1),
            ..Default::default()
        };
        assert_eq!(
            h.encode(),
            [0x08, 0x00, 0x10, 0x02, 0x42, 0x02, 0x08, 0x01, 0x68, 0x01]
        );
        // A negative int32 is ten bytes on the wire and comes back as itself.
        let neg = IdMap {
            hostid: -1,
            ..Default::default()
        };
        let b = neg.encode();
        assert_eq!(b.len(), 2 + 2 + 11 + 2 + 2);
        assert_eq!(IdMap::decode(&b).unwrap(), neg);
    }

    #[test]
    fn unknown_fields_are_skipped_and_malformed_input_refused() {
        // Field 6 (unused) as a varint, field 14 as fixed32, field 15 as fixed64, field 16 as bytes.
        let mut b = vec![0x30, 0x05, 0x75, 1, 2, 3, 4, 0x79, 0, 0, 0, 0, 0, 0, 0, 0];
        b.extend([0x82, 0x01, 0x01, 0xff]);
        b.extend([0x08, 0x01]);
        assert_eq!(MigrationHeader::decode(&b).unwrap().fs, 1);
        for bad in [
            &[0x08][..],             // key without value
            &[0x12, 0x05, b'a'][..], // length past the end
            &[0x0b][..],             // group start
            &[0x00, 0x01][..],       // field 0
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ][..],
            &[0x22, 0x01, 0xff][..], // snapshot name not UTF-8
            &[0x0a, 0x00][..],       // fs as bytes
        ] {
            assert!(MigrationHeader::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decoder_never_panics_on_random_bytes() {
        // xorshift: deterministic, no dependency. Random buffers, and mutations of a real one.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let real = sample().encode();
        for i in 0..20_000 {
            let buf: Vec<u8> = if i % 2 == 0 {
                let n = (next() % 96) as usize;
                (0..n).map(|_| next() as u8).collect()
            } else {
                let mut b = real.clone();
                for _ in 0..(1 + next() % 4) {
                    let at = (next() as usize) % b.len();
                    b[at] = next() as u8;
                }
                b.truncate((next() as usize) % (b.len() + 1));
                b
            };
            let _ = MigrationHeader::decode(&buf);
            let _ = MigrationControl::decode(&buf);
        }
    }

    /// The seeds of the `migration_proto` fuzz target (`tests/fuzz/corpus/migration_proto`),
    /// made by this encoder: what bivy's source offers (a stopped instance with an id map and a
    /// snapshot; a running one, stateless), the sink's answer, LXD's offer from a btrfs pool, and
    /// the two control messages.
    fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        let features = |all: bool| RsyncFeatures {
            xattrs: Some(true),
            delete: Some(true),
            compress: Some(all),
            bidirectional: Some(all),
        };
        let idmap = |isuid: bool| IdMap {
            isuid,
            isgid: !isuid,
            hostid: 1_000_000,
            nsid: 0,
            maprange: 1_000_000_000,
        };
        let snap = Snapshot {
            name: "snap0".into(),
            local_config: vec![
                Config {
                    key: "image.os".into(),
                    value: "busybox".into(),
                },
                Config {
                    key: "volatile.base_image".into(),
                    value: "52736835c351dd5dc062a05312c0eb10c6558d3e0cef33967ccc418c983a87c6"
                        .into(),
                },
            ],
            profiles: vec!["default".into()],
            ephemeral: false,
            local_devices: vec![Device {
                name: "root".into(),
                config: vec![
                    Config {
                        key: "path".into(),
                        value: "/".into(),
                    },
                    Config {
                        key: "pool".into(),
                        value: "default".into(),
                    },
                    Config {
                        key: "type".into(),
                        value: "disk".into(),
                    },
                ],
            }],
            architecture: 2,
            stateful: false,
            creation_date: Some(1_795_000_000),
            last_used_date: Some(-62_135_596_800),
            expiry_date: Some(-62_135_596_800),
        };
        let offer = MigrationHeader {
            fs: FS_RSYNC,
            criu: None,
            idmap: vec![idmap(true), idmap(false)],
            snapshot_names: vec!["snap0".into()],
            snapshots: vec![snap.clone()],
            predump: Some(false),
            rsync_features: Some(features(true)),
            index_header_version: Some(1),
            ..Default::default()
        };
        let running = MigrationHeader {
            criu: Some(CRIU_NONE),
            snapshot_names: vec![],
            snapshots: vec![],
            ..offer.clone()
        };
        let answer = MigrationHeader {
            fs: FS_RSYNC,
            criu: None,
            snapshot_names: vec!["snap0".into()],
            snapshots: vec![snap.clone()],
            predump: Some(false),
            rsync_features: Some(features(true)),
            refresh: Some(false),
            index_header_version: Some(1),
            ..Default::default()
        };
        // LXD 5.0.2 from a btrfs pool: its fs type, no rsync compress/bidirectional without
        // the extension, the btrfs features message (field 1: "migration_header_subvolumes").
        let mut btrfs_features = vec![0x0a, 27];
        btrfs_features.extend_from_slice(b"migration_header_subvolumes");
        let lxd_btrfs = MigrationHeader {
            fs: FS_BTRFS,
            criu: Some(CRIU_RSYNC),
            idmap: vec![idmap(true), idmap(false)],
            snapshot_names: vec!["snap0".into()],
            snapshots: vec![snap],
            predump: Some(false),
            rsync_features: Some(features(false)),
            refresh: Some(false),
            volume_size: Some(10 << 30),
            btrfs_features: Some(btrfs_features),
            index_header_version: Some(1),
            ..Default::default()
        };
        let ok = MigrationControl {
            success: true,
            message: None,
        };
        let failed = MigrationControl {
            success: false,
            message: Some("Failed to create instance: Instance \"c1\" already exists".into()),
        };
        vec![
            ("bivy_offer_stopped", offer.encode()),
            ("bivy_offer_running", running.encode()),
            ("bivy_answer", answer.encode()),
            ("lxd_offer_btrfs", lxd_btrfs.encode()),
            ("control_success", ok.encode()),
            ("control_failure", failed.encode()),
        ]
    }

    /// The committed seeds are what this encoder makes (`BIVY_WRITE_FUZZ_SEEDS=1` rewrites them).
    #[test]
    fn fuzz_seeds_are_the_encoders() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz/corpus/migration_proto");
        for (name, bytes) in seeds() {
            let path = dir.join(name);
            if std::env::var_os("BIVY_WRITE_FUZZ_SEEDS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (BIVY_WRITE_FUZZ_SEEDS=1 writes it)",
                    path.display()
                )
            });
            assert_eq!(committed, bytes, "{name} differs from the encoder's");
        }
    }

    #[test]
    fn fuzz_migration_proto_deterministic() {
        let tokens: &[&[u8]] = &[
            &[0x08, 0x01],
            &[0x10, 0x02],
            &[0x12, 0x00],
            &[0x1a, 0x02, 0x08, 0x01],
            &[0x2a, 0x7f],
            &[0x42, 0x02, 0x08, 0x01],
            &[
                0x58, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            &[0x62, 0x80, 0x80, 0x80, 0x80, 0x10],
            &[0x68, 0x80, 0x80, 0x80, 0x80, 0x10],
            &[0x75, 1, 2, 3, 4],
            &[0x79, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0x0b],
            &[0xc3, 0x28],
        ];
        crate::http::fuzz::tests::fuzz_corpus_and_mutations(
            "migration_proto",
            0x6a09_e667_f3bc_c908,
            tokens,
            fuzz_decode,
        );
    }
}
