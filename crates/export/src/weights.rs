//! Reads named parameter tensors from `model.safetensors` or `pytorch_model.bin` as `f32`.

use std::path::{Path, PathBuf};

use pytorch_reader::{DType, PytorchReader};
use safetensors::{Dtype, SafeTensors};
use tract_core::prelude::*;

use crate::ExportError;

/// A checkpoint's parameters, whichever container holds them.
pub enum Weights {
    /// A safetensors file, read whole (its tensors are borrowed views into these bytes).
    Safetensors { path: PathBuf, bytes: Vec<u8> },
    /// A `torch.save` zip of pickles, read tensor by tensor with burn's `pytorch-reader`.
    Pytorch { path: PathBuf, reader: PytorchReader },
}

impl Weights {
    /// Opens a safetensors file and validates its header.
    pub fn safetensors(path: &Path) -> Result<Weights, ExportError> {
        let bytes =
            std::fs::read(path).map_err(|source| ExportError::Io { path: path.to_owned(), source })?;
        SafeTensors::deserialize(&bytes)
            .map_err(|e| ExportError::Checkpoint { path: path.to_owned(), reason: e.to_string() })?;
        Ok(Weights::Safetensors { path: path.to_owned(), bytes })
    }

    /// Opens a PyTorch checkpoint (zip or legacy format) without Python.
    pub fn pytorch(path: &Path) -> Result<Weights, ExportError> {
        let reader = PytorchReader::new(path)
            .map_err(|e| ExportError::Checkpoint { path: path.to_owned(), reason: e.to_string() })?;
        Ok(Weights::Pytorch { path: path.to_owned(), reader })
    }

    fn path(&self) -> &Path {
        match self {
            Weights::Safetensors { path, .. } | Weights::Pytorch { path, .. } => path,
        }
    }

    /// The tensor called `name` as a tract constant (see [`Weights::values`]).
    pub fn get(&self, name: &str, expected_shape: &[usize]) -> Result<Tensor, ExportError> {
        let values = self.values(name, expected_shape)?;
        Tensor::from_shape(expected_shape, &values).map_err(|e| ExportError::Checkpoint {
            path: self.path().to_owned(),
            reason: format!("tensor {name}: {e}"),
        })
    }

    /// The values of tensor `name`, converted to `f32`, checked against the shape the config implies.
    pub fn values(&self, name: &str, expected_shape: &[usize]) -> Result<Vec<f32>, ExportError> {
        let bad = |reason: String| ExportError::Checkpoint { path: self.path().to_owned(), reason };
        let (shape, values) = match self {
            Weights::Safetensors { bytes, .. } => {
                let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
                let view = st
                    .tensor(name)
                    .or_else(|_| st.tensor(&module_name(name)))
                    .map_err(|_| bad(format!("tensor {name} is missing")))?;
                let kind = match view.dtype() {
                    Dtype::F32 => FloatKind::F32,
                    Dtype::F16 => FloatKind::F16,
                    Dtype::BF16 => FloatKind::Bf16,
                    other => return Err(bad(format!("tensor {name} has dtype {other:?}, expected a float"))),
                };
                (view.shape().to_vec(), kind.to_f32(view.data()))
            }
            Weights::Pytorch { reader, .. } => {
                let tensor = reader
                    .get(name)
                    .or_else(|| reader.get(&module_name(name)))
                    .ok_or_else(|| bad(format!("tensor {name} is missing")))?;
                let kind = match tensor.dtype() {
                    DType::F32 => FloatKind::F32,
                    DType::F16 => FloatKind::F16,
                    DType::BF16 => FloatKind::Bf16,
                    other => return Err(bad(format!("tensor {name} has dtype {other:?}, expected a float"))),
                };
                let data = tensor.read().map_err(|e| bad(e.to_string()))?;
                (tensor.shape().to_vec(), kind.to_f32(&data))
            }
        };
        if shape != expected_shape {
            return Err(bad(format!(
                "tensor {name} has shape {shape:?}, the config implies {expected_shape:?}"
            )));
        }
        Ok(values)
    }
}

/// The name transformers 5 modules give a parameter that checkpoints (and `save_pretrained`) call `name`:
/// a raw `torch.save(model.state_dict())` from transformers 5 uses these.
fn module_name(name: &str) -> String {
    // ViT, DeiT and BEiT moved their layers out of `encoder` (DINOv2 did not); BEiT moved its bias tables.
    ["vit", "deit", "beit"]
        .iter()
        .fold(name.to_owned(), |n, model| {
            n.replace(&format!("{model}.encoder.layer."), &format!("{model}.layers."))
        })
        .replace("beit.encoder.relative_position_bias.", "beit.shared_position_bias.")
        .replace(".attention.attention.relative_position_bias.", ".relative_position_bias.")
        .replace(".attention.attention.query.", ".attention.q_proj.")
        .replace(".attention.attention.key.", ".attention.k_proj.")
        .replace(".attention.attention.value.", ".attention.v_proj.")
        .replace(".attention.output.dense.", ".attention.o_proj.")
        .replace(".intermediate.dense.", ".mlp.fc1.")
        .replace(".output.dense.", ".mlp.fc2.")
}

/// The float encodings checkpoints use for parameters.
enum FloatKind {
    F32,
    F16,
    Bf16,
}

impl FloatKind {
    /// Little-endian bytes to `f32` (all three encodings are exact in `f32`).
    fn to_f32(&self, data: &[u8]) -> Vec<f32> {
        match self {
            FloatKind::F32 => {
                data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            FloatKind::F16 => data
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            FloatKind::Bf16 => data
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
        }
    }
}
