//! Crash-safe writes: the bytes go to a temporary file beside the target, are flushed to
//! disk, and only then renamed over it. A crash leaves either the old file or the new one.

use crate::{Error, Result};
use std::cell::Cell;
use std::io::Write;
use std::path::Path;

thread_local! {
    static FAIL_AFTER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Test hook: make the next atomic writes on this thread fail after `bytes` bytes (as a
/// crash or full disk would), or stop failing with `None`.
#[doc(hidden)]
pub fn inject_write_failure(bytes: Option<usize>) {
    FAIL_AFTER.with(|f| f.set(bytes));
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        let limit = FAIL_AFTER.with(|f| f.get());
        for chunk in bytes.chunks(1 << 20).scan(0usize, |done, c| {
            *done += c.len();
            Some((*done, c))
        }) {
            let (done, c) = chunk;
            if let Some(limit) = limit.filter(|&l| done > l) {
                let keep = c.len() - (done - limit);
                f.write_all(&c[..keep])?;
                return Err(std::io::Error::other(format!("injected failure after {limit} bytes")));
            }
            f.write_all(c)?;
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}
