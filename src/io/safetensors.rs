//! safetensors files (the format PyTorch users save state_dicts in), through the
//! `safetensors` crate. Every tensor dtype of Kiln maps to the same-named safetensors dtype.

use super::write_atomic;
use crate::{DType, Device, Error, Result, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

fn to_st(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
    }
}

/// Little-endian bytes of a tensor's elements in row-major order.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    Ok(match t.dtype() {
        DType::F32 => t.to_vec::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F64 => t.to_vec::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => t.to_vec::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => t.to_vec::<half::bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I64 => t.to_vec::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
    })
}

/// The bytes of a safetensors file holding `tensors` and string `metadata`.
pub fn tensors_to_safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    let data: Vec<(String, DType, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.dtype(), t.dims().to_vec(), tensor_bytes(t)?)))
        .collect::<Result<_>>()?;
    let views = data
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(to_st(*d), s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::invalid("save_safetensors", e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = if metadata.is_empty() { None } else { Some(metadata.clone()) };
    safetensors::serialize(views, &meta).map_err(|e| Error::invalid("save_safetensors", e.to_string()))
}

/// Writes `tensors` (names unique) to `path` atomically.
pub fn save_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    write_atomic(path.as_ref(), &tensors_to_safetensors_bytes(tensors, metadata)?)
}

/// Reads every tensor of a safetensors file (in file order) and its metadata. A truncated or
/// corrupt file is an error naming it.
pub type Loaded = (Vec<(String, Tensor)>, HashMap<String, String>);

pub fn load_safetensors(path: impl AsRef<Path>, device: Device) -> Result<Loaded> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_bytes(path, &bytes, device)
}

/// Parses safetensors `bytes` already read from `path` (named in errors).
pub(crate) fn parse_bytes(path: &Path, bytes: &[u8], device: Device) -> Result<Loaded> {
    parse(bytes, device).map_err(|msg| Error::format(path, msg))
}

fn parse(bytes: &[u8], device: Device) -> std::result::Result<Loaded, String> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| format!("not a valid safetensors file: {e:?}"))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| format!("not a valid safetensors file: {e:?}"))?;
    // File order (by data offset), so saving and loading keep the same order.
    let mut names: Vec<(usize, String)> =
        meta.tensors().iter().map(|(n, info)| (info.data_offsets.0, n.clone())).collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for (_, name) in names {
        let v = st.tensor(&name).map_err(|e| format!("tensor `{name}`: {e:?}"))?;
        let shape = v.shape().to_vec();
        let d = v.data();
        let t = match v.dtype() {
            Dtype::F32 => Tensor::from_vec(
                d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>(),
                shape,
                device,
            ),
            Dtype::F64 => Tensor::from_vec(
                d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect::<Vec<_>>(),
                shape,
                device,
            ),
            Dtype::I64 => Tensor::from_vec(
                d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect::<Vec<_>>(),
                shape,
                device,
            ),
            Dtype::F16 => Tensor::from_vec(
                d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>(),
                shape,
                device,
            ),
            Dtype::BF16 => Tensor::from_vec(
                d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>(),
                shape,
                device,
            ),
            other => return Err(format!("tensor `{name}` has dtype {other:?}, which Kiln does not support")),
        }
        .map_err(|e| format!("tensor `{name}`: {e}"))?;
        out.push((name, t));
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}
