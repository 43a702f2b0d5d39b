//! The directory of a zip archive read by byte ranges: the end-of-central-directory record (and its ZIP64 form, for
//! archives past 4 GiB), the central directory, and each entry's local header, so that a stored entry is a byte range
//! of the file. PyTorch writes its checkpoints this way (`torch.save` since 1.6): every entry stored, uncompressed.
//! Only what a reader of such an archive needs; a compressed entry is described, and refused when it is read.

use crate::model::checkpoint::source::ByteSource;
use crate::{Error, Result};

/// One entry of the archive.
#[derive(Clone, Debug, PartialEq)]
pub struct ZipEntry {
    pub name: String,
    /// 0: stored; anything else is compressed (8: deflate).
    pub method: u16,
    pub compressed_size: u64,
    pub size: u64,
    /// Where the entry's local header starts.
    header_offset: u64,
}

/// The entries of a zip archive, in the order of its central directory.
pub struct ZipDirectory {
    pub entries: Vec<ZipEntry>,
}

const EOCD: u32 = 0x0605_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_EOCD: u32 = 0x0606_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;
/// The most entries a directory may list, and the largest directory read (a bound, so that a damaged count cannot
/// ask for any amount of memory: a GPT-Neo state dict has a few hundred tensors).
const MAX_ENTRIES: u64 = 1 << 20;
const MAX_DIRECTORY: u64 = 256 << 20;

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]))
}

impl ZipDirectory {
    /// Read the directory of `src` (the end record in its last 64 KiB, then the central directory it points to).
    pub fn read(src: &dyn ByteSource) -> Result<Self> {
        let file = src.name().to_string();
        let bad = |what: String| Error::file(&file, format!("is not a readable zip archive: {what}"));
        let len = src.len();
        if len < 22 {
            return Err(bad(format!("{len} bytes is too short for its end record")));
        }
        let tail_len = len.min(22 + 65_535);
        let tail = src.read_at(len - tail_len, tail_len as usize)?;
        let at = (0..=tail.len() - 22).rev().find(|&i| u32_at(&tail, i) == EOCD).ok_or_else(|| {
            Error::file(
                &file,
                "is truncated or damaged: the zip directory that ends a complete archive is not there (was the \
                     download cut short?)",
            )
        })?;
        let eocd_offset = len - tail_len + at as u64;
        let e = &tail[at..];
        let (mut count, mut dir_size, mut dir_offset) =
            (u16_at(e, 10) as u64, u32_at(e, 12) as u64, u32_at(e, 16) as u64);
        if count == 0xffff || dir_size == 0xffff_ffff || dir_offset == 0xffff_ffff {
            // ZIP64: the locator sits just before the end record and points to the ZIP64 end record
            if eocd_offset < 20 {
                return Err(bad("its ZIP64 locator is missing".into()));
            }
            let loc = src.read_at(eocd_offset - 20, 20)?;
            if u32_at(&loc, 0) != ZIP64_LOCATOR {
                return Err(bad("its ZIP64 locator is missing".into()));
            }
            let rec_offset = u64_at(&loc, 8);
            let rec =
                src.read_at(rec_offset, 56).map_err(|_| bad("its ZIP64 end record lies outside the file".into()))?;
            if u32_at(&rec, 0) != ZIP64_EOCD {
                return Err(bad("its ZIP64 end record is damaged".into()));
            }
            (count, dir_size, dir_offset) = (u64_at(&rec, 32), u64_at(&rec, 40), u64_at(&rec, 48));
        }
        if count > MAX_ENTRIES || dir_size > MAX_DIRECTORY {
            return Err(bad(format!("its directory claims {count} entries in {dir_size} bytes")));
        }
        let dir = src
            .read_at(dir_offset, dir_size as usize)
            .map_err(|_| bad(format!("its directory ({dir_size} bytes at {dir_offset}) lies outside the file")))?;
        let mut entries = Vec::with_capacity(count as usize);
        let mut p = 0usize;
        for k in 0..count {
            if p + 46 > dir.len() || u32_at(&dir, p) != CENTRAL {
                return Err(bad(format!("directory entry {k} is damaged")));
            }
            let method = u16_at(&dir, p + 10);
            let mut compressed_size = u32_at(&dir, p + 20) as u64;
            let mut size = u32_at(&dir, p + 24) as u64;
            let (n, m, c) =
                (u16_at(&dir, p + 28) as usize, u16_at(&dir, p + 30) as usize, u16_at(&dir, p + 32) as usize);
            let mut header_offset = u32_at(&dir, p + 42) as u64;
            let end = p + 46 + n + m + c;
            if end > dir.len() {
                return Err(bad(format!("directory entry {k} runs past the directory")));
            }
            let name = String::from_utf8_lossy(&dir[p + 46..p + 46 + n]).into_owned();
            // the ZIP64 extra field holds, in this order, whichever of the three were saturated
            let mut x = p + 46 + n;
            while x + 4 <= p + 46 + n + m {
                let (id, sz) = (u16_at(&dir, x), u16_at(&dir, x + 2) as usize);
                let body = x + 4;
                if body + sz > p + 46 + n + m {
                    break;
                }
                if id == 0x0001 {
                    let mut q = body;
                    for field in [&mut size, &mut compressed_size, &mut header_offset] {
                        if *field == 0xffff_ffff && q + 8 <= body + sz {
                            *field = u64_at(&dir, q);
                            q += 8;
                        }
                    }
                }
                x = body + sz;
            }
            entries.push(ZipEntry { name, method, compressed_size, size, header_offset });
            p = end;
        }
        Ok(Self { entries })
    }

    /// The entry named `name`.
    pub fn entry(&self, name: &str) -> Option<&ZipEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Where the data of `e` lies in `src` (its offset and length), once its local header is read: only a stored
    /// entry is a byte range of the file; a compressed one is refused, naming it.
    pub fn data_range(&self, src: &dyn ByteSource, e: &ZipEntry) -> Result<(u64, u64)> {
        if e.method != 0 || e.compressed_size != e.size {
            return Err(Error::file(
                src.name(),
                format!(
                    "entry `{}` is compressed (zip method {}); this reader reads checkpoints whose entries are stored \
                     uncompressed, as torch.save writes them",
                    e.name, e.method
                ),
            ));
        }
        let h = src
            .read_at(e.header_offset, 30)
            .map_err(|_| Error::file(src.name(), format!("entry `{}`'s local header lies outside the file", e.name)))?;
        if u32_at(&h, 0) != LOCAL {
            return Err(Error::file(src.name(), format!("entry `{}`'s local header is damaged", e.name)));
        }
        let start = e.header_offset + 30 + u16_at(&h, 26) as u64 + u16_at(&h, 28) as u64;
        if start.checked_add(e.size).is_none_or(|end| end > src.len()) {
            return Err(Error::file(
                src.name(),
                format!("is truncated: entry `{}` ({} bytes) runs past the end", e.name, e.size),
            ));
        }
        Ok((start, e.size))
    }
}
