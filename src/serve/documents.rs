//! The status and metadata documents, with TensorFlow Serving's field names and order
//! (the JSON forms of its `GetModelStatusResponse` and `GetModelMetadataResponse`; int64
//! fields such as versions and sizes are strings, as protobuf's JSON mapping writes them).

use super::json::{INPUT_NAME, OUTPUT_NAME, SIGNATURE};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize)]
pub(crate) struct ModelStatus {
    model_version_status: Vec<VersionStatus>,
}

#[derive(Serialize)]
struct VersionStatus {
    version: String,
    state: &'static str,
    status: StatusProto,
}

#[derive(Serialize)]
struct StatusProto {
    error_code: &'static str,
    error_message: &'static str,
}

/// Every listed version is loaded and answering: AVAILABLE.
pub(crate) fn status(versions: &[u64]) -> ModelStatus {
    ModelStatus {
        model_version_status: versions
            .iter()
            .map(|v| VersionStatus {
                version: v.to_string(),
                state: "AVAILABLE",
                status: StatusProto { error_code: "OK", error_message: "" },
            })
            .collect(),
    }
}

#[derive(Serialize)]
pub(crate) struct ModelMetadata {
    model_spec: ModelSpec,
    metadata: Metadata,
}

#[derive(Serialize)]
struct ModelSpec {
    name: String,
    signature_name: &'static str,
    version: String,
}

#[derive(Serialize)]
struct Metadata {
    signature_def: SignatureDefMap,
}

#[derive(Serialize)]
struct SignatureDefMap {
    signature_def: BTreeMap<&'static str, SignatureDef>,
}

#[derive(Serialize)]
struct SignatureDef {
    inputs: BTreeMap<&'static str, TensorInfo>,
    outputs: BTreeMap<&'static str, TensorInfo>,
    method_name: &'static str,
}

#[derive(Serialize)]
struct TensorInfo {
    dtype: &'static str,
    tensor_shape: TensorShape,
    name: &'static str,
}

#[derive(Serialize)]
struct TensorShape {
    dim: Vec<Dim>,
    unknown_rank: bool,
}

#[derive(Serialize)]
struct Dim {
    size: String,
    name: &'static str,
}

/// A float tensor named `name` of `[-1 (the batch), per_instance...]`.
fn tensor(name: &'static str, per_instance: &[usize]) -> TensorInfo {
    let sizes = std::iter::once("-1".to_string()).chain(per_instance.iter().map(|d| d.to_string()));
    TensorInfo {
        dtype: "DT_FLOAT",
        tensor_shape: TensorShape { dim: sizes.map(|size| Dim { size, name: "" }).collect(), unknown_rank: false },
        name,
    }
}

/// The one signature of a Kiln model: `x` in, `logits` out.
pub(crate) fn metadata(name: &str, version: u64, input_shape: &[usize], output_shape: &[usize]) -> ModelMetadata {
    let def = SignatureDef {
        inputs: BTreeMap::from([(INPUT_NAME, tensor(INPUT_NAME, input_shape))]),
        outputs: BTreeMap::from([(OUTPUT_NAME, tensor(OUTPUT_NAME, output_shape))]),
        method_name: "tensorflow/serving/predict",
    };
    ModelMetadata {
        model_spec: ModelSpec { name: name.to_string(), signature_name: "", version: version.to_string() },
        metadata: Metadata { signature_def: SignatureDefMap { signature_def: BTreeMap::from([(SIGNATURE, def)]) } },
    }
}
