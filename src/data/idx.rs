//! The IDX format of the MNIST files (plain or gzip): a big-endian magic 0x0000TTNN (TT the
//! element type, NN the number of dims), then each dim as u32, then the elements.

use crate::{Error, Result};
use std::io::Read;
use std::path::Path;

/// An n-d array of u8 read from an IDX file.
#[derive(Debug, Clone)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes (type 0x08), gzip'd or not. Errors name the file and
/// what is wrong (bad magic, unsupported element type, truncated header or body, trailing
/// bytes).
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt gzip stream: {e}")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|msg| Error::format(path, msg))
}

fn parse_idx(b: &[u8]) -> std::result::Result<IdxArray, String> {
    if b.len() < 4 {
        return Err(format!("file of {} bytes is too short for an IDX header", b.len()));
    }
    if b[0] != 0 || b[1] != 0 {
        return Err(format!(
            "bad magic number 0x{:02x}{:02x}{:02x}{:02x} at offset 0 (IDX starts with two zero bytes)",
            b[0], b[1], b[2], b[3]
        ));
    }
    if b[2] != 0x08 {
        return Err(format!("element type 0x{:02x} at offset 2 is not supported (only 0x08, unsigned byte)", b[2]));
    }
    let rank = b[3] as usize;
    let header = 4 + 4 * rank;
    if rank == 0 || b.len() < header {
        return Err(format!("header of {rank} dims needs {header} bytes, the file has {}", b.len()));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| u32::from_be_bytes([b[4 + 4 * i], b[5 + 4 * i], b[6 + 4 * i], b[7 + 4 * i]]) as usize)
        .collect();
    let n: usize = dims.iter().product();
    let body = b.len() - header;
    if body < n {
        return Err(format!(
            "truncated: dims {dims:?} need {n} bytes of data from offset {header}, only {body} present"
        ));
    }
    if body > n {
        return Err(format!("{} unexpected bytes after the data at offset {}", body - n, header + n));
    }
    Ok(IdxArray { dims, data: b[header..].to_vec() })
}
