//! A numeric CSV reader: every column a feature except the label column.

use super::TensorDataset;
use crate::{Device, Error, Result, Tensor};
use std::path::Path;

/// Reads `path` as features [N, F] F32 and integer labels [N] I64 taken from column
/// `label_column` (negative counts from the end: -1 = last). With `header`, the first line is
/// skipped. Errors name the file, the line and the column of a bad field.
pub fn read_csv(path: impl AsRef<Path>, label_column: isize, header: bool, device: Device) -> Result<TensorDataset> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let (mut feats, mut labels, mut width) = (Vec::new(), Vec::new(), None::<usize>);
    for (lineno, line) in text.lines().enumerate().skip(header as usize) {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let n = fields.len();
        match width {
            None => width = Some(n),
            Some(w) if w != n => {
                return Err(Error::format(
                    path,
                    format!("line {}: {n} fields, the first data line has {w}", lineno + 1),
                ))
            }
            _ => {}
        }
        let lc = if label_column < 0 { n as isize + label_column } else { label_column };
        if lc < 0 || lc as usize >= n {
            return Err(Error::format(path, format!("label column {label_column} does not exist in {n} fields")));
        }
        for (c, f) in fields.iter().enumerate() {
            let bad =
                |what: &str| Error::format(path, format!("line {}, column {}: `{f}` is not {what}", lineno + 1, c + 1));
            if c == lc as usize {
                labels.push(f.parse::<i64>().map_err(|_| bad("an integer label"))?);
            } else {
                feats.push(f.parse::<f32>().map_err(|_| bad("a number"))?);
            }
        }
    }
    let rows = labels.len();
    let f = width.map(|w| w - 1).unwrap_or(0);
    TensorDataset::new(Tensor::from_vec(feats, [rows, f], device)?, Tensor::from_vec(labels, [rows], device)?)
}
