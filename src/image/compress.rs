//! Compression: sniffing a file's format by its magic bytes (as LXD's `DetectCompressionFile`)
//! and wrapping readers and writers in the matching decoder or encoder.
//!
//! Decoders: gzip with flate2 (miniz_oxide, pure Rust), xz/lzma with liblzma (bundled C, the
//! fastest measured), zstd with zstd (bundled C), bzip2 with bzip2 0.6 (pure-Rust libbz2-rs-sys).

use std::io::{self, Read, Write};

use super::{Error, Result};

/// What a file is, by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Xz,
    Lzma,
    Bzip2,
    Zstd,
    /// An uncompressed tarball (`ustar` at offset 257).
    Tar,
    Squashfs,
    Qcow2,
    Unknown,
}

/// How many bytes `sniff` wants to see.
pub const SNIFF_LEN: usize = 512;

/// Detect the format from the first bytes of a file (at least `SNIFF_LEN` when available).
pub fn sniff(head: &[u8]) -> Format {
    let starts = |m: &[u8]| head.starts_with(m);
    if starts(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Format::Xz
    } else if starts(b"BZh") {
        Format::Bzip2
    } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Format::Zstd
    } else if starts(b"hsqs") {
        Format::Squashfs
    } else if starts(b"QFI\xfb") {
        Format::Qcow2
    } else if starts(&[0x5d, 0x00, 0x00]) {
        Format::Lzma
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Format::Tar
    } else {
        Format::Unknown
    }
}

/// The most memory an xz or lzma stream may make its decoder take. The header of a stream names
/// its dictionary size, which the decoder allocates up front: up to 4 GiB for 300 bytes of input
/// (found by the `tar_unpack` fuzz target). Real images need far less (`xz -9`: 65 MiB).
/// zstd's decoder has its own bound (a 128 MiB window), gzip and bzip2 need at most a few MiB.
pub const XZ_MEMLIMIT: u64 = 256 << 20;

/// An xz or lzma decoder whose memory-limit error says what happened.
struct LzmaDecoder<R: Read>(liblzma::read::XzDecoder<R>, &'static str);

impl<R: Read> Read for LzmaDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            let limit = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<liblzma::stream::Error>())
                .is_some_and(|i| matches!(i, liblzma::stream::Error::MemLimit));
            if limit {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the {} stream needs more than {} MiB of memory to decode",
                        self.1,
                        XZ_MEMLIMIT >> 20
                    ),
                )
            } else {
                e
            }
        })
    }
}

/// Wrap `r` (positioned at the start of the file) in the decoder for `fmt`.
pub fn decoder<'a>(fmt: Format, r: Box<dyn Read + 'a>) -> Result<Box<dyn Read + 'a>> {
    use liblzma::stream::{Stream, CONCATENATED};
    let lzma_err = |e: liblzma::stream::Error| Error::Internal(format!("xz decoder: {e}"));
    Ok(match fmt {
        Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Format::Xz => {
            let stream = Stream::new_stream_decoder(XZ_MEMLIMIT, CONCATENATED).map_err(lzma_err)?;
            Box::new(LzmaDecoder(
                liblzma::read::XzDecoder::new_stream(r, stream),
                "xz",
            ))
        }
        Format::Lzma => {
            let stream = Stream::new_lzma_decoder(XZ_MEMLIMIT).map_err(lzma_err)?;
            Box::new(LzmaDecoder(
                liblzma::read::XzDecoder::new_stream(r, stream),
                "lzma",
            ))
        }
        Format::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
        Format::Zstd => Box::new(
            zstd::stream::read::Decoder::new(r)
                .map_err(|e| Error::Internal(format!("zstd decoder: {e}")))?,
        ),
        Format::Tar => r,
        Format::Squashfs | Format::Qcow2 | Format::Unknown => {
            return Err(Error::BadRequest(format!(
                "unsupported image file format: {}",
                fmt.name()
            )))
        }
    })
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Gzip => "gzip",
            Format::Xz => "xz",
            Format::Lzma => "lzma",
            Format::Bzip2 => "bzip2",
            Format::Zstd => "zstd",
            Format::Tar => "tar",
            Format::Squashfs => "squashfs",
            Format::Qcow2 => "qcow2",
            Format::Unknown => "unknown (not a tarball, squashfs or known compression)",
        }
    }
}

/// Output compression of `pack` (LXD's `compression_algorithm` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Zstd,
    Bzip2,
    None,
}

impl Compression {
    /// LXD's names: "gzip", "xz", "zstd", "bzip2", "none" (empty = the default, gzip).
    pub fn from_name(name: &str) -> Result<Compression> {
        Ok(match name {
            "gzip" | "" => Compression::Gzip,
            "xz" => Compression::Xz,
            "zstd" => Compression::Zstd,
            "bzip2" => Compression::Bzip2,
            "none" => Compression::None,
            "lzma" | "squashfs" => {
                return Err(Error::BadRequest(format!(
                    "not supported yet: compression algorithm {name:?}"
                )))
            }
            _ => {
                return Err(Error::BadRequest(format!(
                    "unknown compression algorithm {name:?}"
                )))
            }
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::None => "none",
        }
    }
    /// The file name suffix LXD uses (`.tar.gz`...).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => ".tar.gz",
            Compression::Xz => ".tar.xz",
            Compression::Zstd => ".tar.zst",
            Compression::Bzip2 => ".tar.bz2",
            Compression::None => ".tar",
        }
    }
}

/// A compressing writer that must be `finish`ed to write its trailer.
pub enum Encoder<'a> {
    Gzip(flate2::write::GzEncoder<&'a mut dyn Write>),
    Xz(liblzma::write::XzEncoder<&'a mut dyn Write>),
    Zstd(zstd::stream::write::Encoder<'static, &'a mut dyn Write>),
    Bzip2(bzip2::write::BzEncoder<&'a mut dyn Write>),
    None(&'a mut dyn Write),
}

impl<'a> Encoder<'a> {
    pub fn new(c: Compression, out: &'a mut dyn Write) -> io::Result<Encoder<'a>> {
        Ok(match c {
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::default(),
            )),
            Compression::Xz => Encoder::Xz(liblzma::write::XzEncoder::new(out, 6)),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(out, 3)?),
            Compression::Bzip2 => Encoder::Bzip2(bzip2::write::BzEncoder::new(
                out,
                bzip2::Compression::default(),
            )),
            Compression::None => Encoder::None(out),
        })
    }
    pub fn finish(self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.finish()?.flush(),
            Encoder::Xz(e) => e.finish()?.flush(),
            Encoder::Zstd(e) => e.finish()?.flush(),
            Encoder::Bzip2(e) => e.finish()?.flush(),
            Encoder::None(w) => w.flush(),
        }
    }
}

impl Write for Encoder<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Xz(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Bzip2(e) => e.write(buf),
            Encoder::None(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Xz(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Bzip2(e) => e.flush(),
            Encoder::None(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = Encoder::new(c, &mut out).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap();
        out
    }

    #[test]
    fn sniff_magics() {
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        let cases: &[(&[u8], Format)] = &[
            (&[0x1f, 0x8b, 8, 0], Format::Gzip),
            (b"\xfd7zXZ\x00\x00", Format::Xz),
            (b"BZh91AY", Format::Bzip2),
            (&[0x28, 0xb5, 0x2f, 0xfd, 0], Format::Zstd),
            (b"hsqs\x00\x00", Format::Squashfs),
            (b"QFI\xfb\x00", Format::Qcow2),
            (&[0x5d, 0, 0, 0x80, 0], Format::Lzma),
            (&tar, Format::Tar),
            (b"hello world", Format::Unknown),
            (b"", Format::Unknown),
        ];
        for (head, want) in cases {
            assert_eq!(sniff(head), *want, "{head:?}");
        }
    }

    #[test]
    fn encoders_round_trip_through_sniffed_decoders() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [
            Compression::Gzip,
            Compression::Xz,
            Compression::Zstd,
            Compression::Bzip2,
        ] {
            let z = compress(c, &data);
            let fmt = sniff(&z);
            assert_eq!(fmt.name(), c.name());
            let mut out = Vec::new();
            decoder(fmt, Box::new(&z[..]))
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data, "{c:?}");
        }
    }

    #[test]
    fn xz_and_lzma_decoders_have_a_memory_limit() {
        // A .lzma header naming a 4 GiB dictionary: the decoder allocated it (2.3 GB for the
        // 324-byte input the tar_unpack fuzz target found, kept in its corpus).
        let mut z = vec![0x5d, 0, 0, 0, 0xff];
        z.extend([0xff; 8]);
        z.extend([0u8; 64]);
        let found = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fuzz/corpus/tar_unpack/oom_lzma_dictionary"),
        )
        .unwrap();
        for data in [z, found] {
            assert_eq!(sniff(&data), Format::Lzma);
            let mut out = Vec::new();
            let e = decoder(Format::Lzma, Box::new(&data[..]))
                .unwrap()
                .read_to_end(&mut out)
                .unwrap_err();
            assert!(
                e.to_string()
                    .contains("lzma stream needs more than 256 MiB of memory"),
                "{e}"
            );
        }
        // What a real image needs passes: xz -9's 64 MiB dictionary.
        let data = b"xz payload ".repeat(1000);
        let opts = liblzma::stream::LzmaOptions::new_preset(9).unwrap();
        let stream = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
        let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        enc.write_all(&data).unwrap();
        let z = enc.finish().unwrap();
        let mut out = Vec::new();
        decoder(Format::Lzma, Box::new(&z[..]))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn legacy_lzma_decodes() {
        let data = b"lzma alone payload ".repeat(1000);
        let opts = liblzma::stream::LzmaOptions::new_preset(6).unwrap();
        let stream = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
        let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        enc.write_all(&data).unwrap();
        let z = enc.finish().unwrap();
        assert_eq!(sniff(&z), Format::Lzma);
        let mut out = Vec::new();
        decoder(Format::Lzma, Box::new(&z[..]))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn compression_names() {
        for n in ["gzip", "xz", "zstd", "bzip2", "none"] {
            assert_eq!(Compression::from_name(n).unwrap().name(), n);
        }
        assert_eq!(Compression::from_name("").unwrap(), Compression::Gzip);
        assert!(matches!(
            Compression::from_name("rar"),
            Err(Error::BadRequest(_))
        ));
    }
}
