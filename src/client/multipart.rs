//! A streaming `multipart/form-data` encoder (split image upload: parts `metadata` then `rootfs`).
//! Files are read as the body is sent, never loaded whole; the total length is known up front so
//! the request carries a `Content-Length`.

use std::io::{self, Cursor, Read};

/// One part: form field name, file name, its content and the content's length.
pub struct Part {
    pub name: String,
    pub filename: String,
    pub reader: Box<dyn Read + Send>,
    pub len: u64,
}

/// The encoded body as a reader plus its exact length and content type.
pub struct Multipart {
    pieces: Vec<Box<dyn Read + Send>>,
    current: usize,
    pub len: u64,
    pub content_type: String,
}

impl Multipart {
    pub fn new(boundary: &str, parts: Vec<Part>) -> Multipart {
        let mut pieces: Vec<Box<dyn Read + Send>> = Vec::new();
        let mut len = 0u64;
        let mut first = true;
        for p in parts {
            let head = format!(
                "{}--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
                if first { "" } else { "\r\n" },
                p.name,
                p.filename.replace('"', "\\\"")
            );
            first = false;
            len += head.len() as u64 + p.len;
            pieces.push(Box::new(Cursor::new(head.into_bytes())));
            pieces.push(Box::new(p.reader.take(p.len)));
        }
        let tail = format!("\r\n--{boundary}--\r\n");
        len += tail.len() as u64;
        pieces.push(Box::new(Cursor::new(tail.into_bytes())));
        Multipart {
            pieces,
            current: 0,
            len,
            content_type: format!("multipart/form-data; boundary={boundary}"),
        }
    }

    /// A boundary unlikely to appear in the data (random bytes from the kernel, else time and pid).
    pub fn random_boundary() -> String {
        let mut b = [0u8; 16];
        let ok = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .is_ok();
        if !ok {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            b[..16].copy_from_slice(&(t ^ u128::from(std::process::id())).to_le_bytes());
        }
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}

impl Read for Multipart {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current < self.pieces.len() {
            let n = self.pieces[self.current].read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.current += 1;
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_two_parts_with_exact_length() {
        let parts = vec![
            Part {
                name: "metadata".into(),
                filename: "meta.tar".into(),
                reader: Box::new(Cursor::new(b"META".to_vec())),
                len: 4,
            },
            Part {
                name: "rootfs".into(),
                filename: "rootfs.tar".into(),
                reader: Box::new(Cursor::new(b"ROOT!".to_vec())),
                len: 5,
            },
        ];
        let mut m = Multipart::new("XyZ", parts);
        let mut out = Vec::new();
        m.read_to_end(&mut out).unwrap();
        let want = "--XyZ\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"meta.tar\"\r\nContent-Type: application/octet-stream\r\n\r\nMETA\r\n--XyZ\r\nContent-Disposition: form-data; name=\"rootfs\"; filename=\"rootfs.tar\"\r\nContent-Type: application/octet-stream\r\n\r\nROOT!\r\n--XyZ--\r\n";
        assert_eq!(String::from_utf8(out.clone()).unwrap(), want);
        assert_eq!(m.len, out.len() as u64);
        assert_eq!(m.content_type, "multipart/form-data; boundary=XyZ");
    }

    #[test]
    fn boundary_is_hex() {
        let b = Multipart::random_boundary();
        assert_eq!(b.len(), 32);
        assert!(b.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
