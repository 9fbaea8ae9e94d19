//! The ResNet image classifier as a tract graph, built from `config.json` and the checkpoint's weights.
//!
//! Mirrors transformers' `ResNetForImageClassification`: a 7x7 stride-2 stem and a 3x3 stride-2 max pool,
//! stages of basic or bottleneck residual layers, global average pooling and the classifier. Every
//! batch norm is folded into the convolution before it at export time, so the graph is convolutions,
//! activations, additions and pooling only.

use serde::Deserialize;
use tract_core::internal::*;
use tract_core::ops;
use tract_core::ops::nn::DataFormat;

use super::InputSize;
use super::native::{Native, NativeConfig};
use crate::Precision;
use crate::graph::{Activation, BatchNorm, Conv2d, GraphWiring, PoolWindow};

/// `nn.BatchNorm2d`'s default epsilon, which transformers' ResNet keeps.
const BATCH_NORM_EPS: f64 = 1e-5;
/// A bottleneck's inner width is its output width divided by this.
const BOTTLENECK_REDUCTION: usize = 4;

/// The architecture hyper-parameters of a ResNet checkpoint; every field comes from `config.json`, with
/// transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct ResNetConfig {
    /// Input channels; only 3 (RGB) is supported.
    #[serde(default = "default_num_channels")]
    pub num_channels: usize,
    /// Channels of the stem.
    #[serde(default = "default_embedding_size")]
    pub embedding_size: usize,
    /// Output channels of each stage.
    #[serde(default = "default_hidden_sizes")]
    pub hidden_sizes: Vec<usize>,
    /// Layers of each stage.
    #[serde(default = "default_depths")]
    pub depths: Vec<usize>,
    /// The residual layer kind.
    #[serde(default)]
    pub layer_type: LayerType,
    /// Activation of the stem and of each layer's output, as in transformers' `ACT2FN` (the convolutions
    /// inside a layer always use ReLU, as in transformers).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Whether the first stage halves the resolution too.
    #[serde(default)]
    pub downsample_in_first_stage: bool,
    /// Whether a bottleneck strides in its first 1x1 convolution rather than its 3x3 one.
    #[serde(default)]
    pub downsample_in_bottleneck: bool,
}

/// `layer_type`: ResNet-18/34's two 3x3 convolutions, or ResNet-50+'s 1x1-3x3-1x1 bottleneck.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerType {
    /// Two 3x3 convolutions.
    Basic,
    /// 1x1 down to a quarter of the width, 3x3, 1x1 back up.
    #[default]
    Bottleneck,
}

fn default_num_channels() -> usize {
    3
}
fn default_embedding_size() -> usize {
    64
}
fn default_hidden_sizes() -> Vec<usize> {
    vec![256, 512, 1024, 2048]
}
fn default_depths() -> Vec<usize> {
    vec![3, 4, 6, 3]
}
fn default_act() -> String {
    "relu".into()
}

/// One convolution + batch norm (`ResNetConvLayer` or `ResNetShortCut`): where its weights are, its shape.
struct ConvLayer {
    /// The module's parameter prefix, holding `convolution` and `normalization`.
    prefix: String,
    inputs: usize,
    outputs: usize,
    /// Square kernel side; the padding is half of it, as in transformers.
    kernel: usize,
    stride: usize,
}

/// Where one residual layer sits and the shape it maps.
struct ResidualLayer {
    stage: usize,
    layer: usize,
    inputs: usize,
    outputs: usize,
    stride: usize,
}

/// `ResNetForImageClassification`.
impl NativeConfig for ResNetConfig {
    type Checked = Activation;

    /// Convolutions only: kiln's int8 path quantizes linear layers, which a ResNet has but one of.
    const PRECISIONS: &'static [Precision] = &[Precision::F32];

    /// Any input size works: nothing in a ResNet depends on it.
    fn validate(&self, _input: InputSize) -> Result<Activation, String> {
        if self.num_channels != 3 {
            return Err(format!("num_channels is {}, only 3 (RGB) is supported", self.num_channels));
        }
        if self.hidden_sizes.is_empty() || self.hidden_sizes.len() != self.depths.len() {
            return Err(format!(
                "hidden_sizes has {} entries and depths {}: one of each per stage",
                self.hidden_sizes.len(),
                self.depths.len()
            ));
        }
        let narrowest = match self.layer_type {
            LayerType::Basic => 1,
            LayerType::Bottleneck => BOTTLENECK_REDUCTION,
        };
        if self.embedding_size == 0 || self.hidden_sizes.iter().any(|size| *size < narrowest) {
            return Err(format!(
                "embedding_size {} or hidden_sizes {:?} too small for {:?} layers",
                self.embedding_size, self.hidden_sizes, self.layer_type
            ));
        }
        Activation::from_hidden_act(&self.hidden_act)
    }

    fn logits(
        model: &Native<Self>,
        g: &mut GraphWiring,
        pixel_values: OutletId,
        _precision: Precision,
    ) -> TractResult<OutletId> {
        let config = &model.config;
        let stem = ConvLayer {
            prefix: "resnet.embedder.embedder".into(),
            inputs: 3,
            outputs: config.embedding_size,
            kernel: 7,
            stride: 2,
        };
        let x = model.conv_layer(g, "stem.conv", &stem, pixel_values, Some(model.checked))?;
        let window = PoolWindow { size: 3, stride: 2, padding: 1 };
        let mut x = g.max_pool2d("stem.pool", x, DataFormat::NCHW, window)?;

        let mut inputs = config.embedding_size;
        for (stage, (&outputs, &depth)) in config.hidden_sizes.iter().zip(&config.depths).enumerate() {
            let stride = if stage > 0 || config.downsample_in_first_stage { 2 } else { 1 };
            for layer in 0..depth {
                let (inputs, stride) = if layer == 0 { (inputs, stride) } else { (outputs, 1) };
                x = model.residual_layer(g, &ResidualLayer { stage, layer, inputs, outputs, stride }, x)?;
            }
            inputs = outputs;
        }

        let pooled = g.global_average_pool("head.pool", x, DataFormat::NCHW)?;
        g.linear(
            "head.classifier",
            pooled,
            model.weights.get("classifier.1.weight", &[model.classes, inputs])?,
            Some(model.weights.get("classifier.1.bias", &[model.classes])?),
        )
    }
}

impl Native<ResNetConfig> {
    /// A convolution with its batch norm folded in, then `activation` if any.
    fn conv_layer(
        &self,
        g: &mut GraphWiring,
        name: &str,
        layer: &ConvLayer,
        x: OutletId,
        activation: Option<Activation>,
    ) -> TractResult<OutletId> {
        let prefix = &layer.prefix;
        let kernel = self.weights.get(
            &format!("{prefix}.convolution.weight"),
            &[layer.outputs, layer.inputs, layer.kernel, layer.kernel],
        )?;
        let norm = BatchNorm::read(
            &self.weights,
            &format!("{prefix}.normalization"),
            layer.outputs,
            BATCH_NORM_EPS,
        )?;
        let conv = Conv2d::new(kernel, None)
            .stride([layer.stride; 2])
            .padding([layer.kernel / 2; 2])
            .fold_batch_norm(&norm)?;
        let y = g.conv2d(name, x, DataFormat::NCHW, conv)?;
        match activation {
            Some(activation) => g.activation(&format!("{name}.act"), y, activation),
            None => Ok(y),
        }
    }

    /// One `ResNetBasicLayer` or `ResNetBottleNeckLayer`: the convolutions, the shortcut (projected when
    /// the shape changes), their sum, the activation.
    fn residual_layer(&self, g: &mut GraphWiring, at: &ResidualLayer, x: OutletId) -> TractResult<OutletId> {
        let &ResidualLayer { stage, layer, inputs, outputs, stride } = at;
        let prefix = format!("resnet.encoder.stages.{stage}.layers.{layer}");
        let name = |s: &str| format!("stage{stage}.layer{layer}.{s}");
        let conv = |index: usize, inputs, outputs, kernel, stride| ConvLayer {
            prefix: format!("{prefix}.layer.{index}"),
            inputs,
            outputs,
            kernel,
            stride,
        };
        let convs = match self.config.layer_type {
            LayerType::Basic => vec![conv(0, inputs, outputs, 3, stride), conv(1, outputs, outputs, 3, 1)],
            LayerType::Bottleneck => {
                let reduced = outputs / BOTTLENECK_REDUCTION;
                let (first, middle) =
                    if self.config.downsample_in_bottleneck { (stride, 1) } else { (1, stride) };
                vec![
                    conv(0, inputs, reduced, 1, first),
                    conv(1, reduced, reduced, 3, middle),
                    conv(2, reduced, outputs, 1, 1),
                ]
            }
        };
        let last = convs.len() - 1;
        let mut h = x;
        for (index, spec) in convs.iter().enumerate() {
            let activation = if index == last { None } else { Some(Activation::Relu) };
            h = self.conv_layer(g, &name(&format!("conv{index}")), spec, h, activation)?;
        }
        let shortcut = if inputs != outputs || stride != 1 {
            let spec = ConvLayer { prefix: format!("{prefix}.shortcut"), inputs, outputs, kernel: 1, stride };
            self.conv_layer(g, &name("shortcut"), &spec, x, None)?
        } else {
            x
        };
        let sum = g.binary(&name("residual"), ops::math::add(), h, shortcut)?;
        g.activation(&name("act"), sum, self.checked)
    }
}

#[cfg(test)]
mod tests {
    use super::super::reference::{CheckError, LOGIT_TOLERANCE, check_f32_logits, export_fixture};
    use crate::{ExportError, Precision};

    #[test]
    fn resnet_reproduces_pytorch_logits() -> Result<(), CheckError> {
        for file in ["model.safetensors", "pytorch_model.bin"] {
            check_f32_logits("tiny-resnet", &format!("models/tiny-resnet/{file}"), LOGIT_TOLERANCE)?;
        }
        Ok(())
    }

    #[test]
    fn resnet_exports_in_f32_only() -> Result<(), CheckError> {
        export_fixture("tiny-resnet", Precision::F32)?;
        let refused = export_fixture("tiny-resnet", Precision::Int8).err().ok_or("int8 was accepted")?;
        let refused = refused.downcast::<ExportError>()?;
        assert!(matches!(*refused, ExportError::UnsupportedPrecision { .. }), "{refused}");
        Ok(())
    }
}
