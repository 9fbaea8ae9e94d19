//! Hugging Face image processors, as transformers 5.23 runs them with its PIL backend, turned into an
//! artifact's [`PreprocessSpec`].
//!
//! A checkpoint's `preprocessor_config.json` names a transformers image processor class and overrides some of
//! that class's attributes; transformers then runs the class's `preprocess`. [`ImageProcessor::read`] does
//! the same on paper: it finds the class (`image_processor_type`, else the older `feature_extractor_type`,
//! else `config.json`'s `model_type` through transformers' auto mapping), lays the file over the class's
//! defaults (a `null` keeps the default, as in transformers), and works out the steps the class's
//! `_preprocess` runs with that class's own arithmetic: ConvNext's and PoolFormer's `crop_pct`, LeViT's
//! 256/224, EfficientNet's `rescale_offset` and `include_top`, MobileViT's channel flip. Every key in the
//! file is either understood, on [`PIXEL_NEUTRAL_KEYS`], or refused naming the file and the key; a class, or
//! a setting, whose steps an artifact cannot express is refused with the reason.
//!
//! ```ignore
//! let processor = ImageProcessor::read(&dir.join("preprocessor_config.json"), &config, &config_path)?;
//! let spec = processor.spec(ResizeMode::Pil)?;
//! ```
//!
//! "Exactly" means transformers' PIL backend, the one it uses when torchvision is not installed; with
//! torchvision, `AutoImageProcessor` picks the torchvision backend, whose tensor resize differs slightly.

use std::fmt;
use std::path::{Path, PathBuf};

use artifact::{ChannelOrder, CropSize, Decoder, PreprocessSpec, ResampleFilter, ResizeMode, ResizeSize};
use serde_json::{Map, Value, json};

use crate::ExportError;

/// Keys of transformers' `ImagesKwargs` (every class reads them) whose effect on pixels is worked out here.
/// `do_convert_rgb` is among them: the pipeline's `load_image` already converts to RGB, but `convert_to_rgb`
/// also whitens the colour key Pillow keeps in `info["transparency"]` (`transparency_to_white`).
const UNDERSTOOD_KEYS: &[&str] = &[
    "do_resize",
    "size",
    "default_to_square",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_pad",
    "pad_size",
    "do_convert_rgb",
];

/// Keys that never change an image-classification input's `pixel_values`, ignored whatever their value.
pub const PIXEL_NEUTRAL_KEYS: &[&str] = &[
    // Which class this is; read before the settings are.
    "image_processor_type",
    "feature_extractor_type",
    "processor_class",
    "auto_map",
    // Output layout, device and batching: the PIL backend ignores them.
    "data_format",
    "input_data_format",
    "return_tensors",
    "device",
    "disable_grouping",
    "image_seq_length",
    // Segmentation labels only (`reduce_labels` is the old spelling).
    "do_reduce_labels",
    "reduce_labels",
    // PoolFormerFeatureExtractor's switch: transformers 5.23 no longer reads it, and its `do_resize` /
    // `do_center_crop` defaults do what it did.
    "do_resize_and_center_crop",
];

/// The image processor class transformers' auto mapping gives each image-classification `model_type`
/// (`IMAGE_PROCESSOR_MAPPING_NAMES` restricted to `MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES`);
/// `dinov2_with_registers` and `hgnet_v2` have none there.
const CLASS_FOR_MODEL_TYPE: &[(&str, &str)] = &[
    ("beit", "BeitImageProcessor"),
    ("bit", "BitImageProcessor"),
    ("clip", "CLIPImageProcessor"),
    ("convnext", "ConvNextImageProcessor"),
    ("convnextv2", "ConvNextImageProcessor"),
    ("cvt", "ConvNextImageProcessor"),
    ("data2vec-vision", "BeitImageProcessor"),
    ("deit", "DeiTImageProcessor"),
    ("dinat", "ViTImageProcessor"),
    ("dinov2", "BitImageProcessor"),
    ("donut-swin", "DonutImageProcessor"),
    ("efficientnet", "EfficientNetImageProcessor"),
    ("focalnet", "BitImageProcessor"),
    ("hiera", "BitImageProcessor"),
    ("ijepa", "ViTImageProcessor"),
    ("imagegpt", "ImageGPTImageProcessor"),
    ("levit", "LevitImageProcessor"),
    ("metaclip_2", "CLIPImageProcessor"),
    ("mobilenet_v1", "MobileNetV1ImageProcessor"),
    ("mobilenet_v2", "MobileNetV2ImageProcessor"),
    ("mobilevit", "MobileViTImageProcessor"),
    ("mobilevitv2", "MobileViTImageProcessor"),
    ("perceiver", "PerceiverImageProcessor"),
    ("poolformer", "PoolFormerImageProcessor"),
    ("pp_lcnet", "PPLCNetImageProcessor"),
    ("pvt", "PvtImageProcessor"),
    ("pvt_v2", "PvtImageProcessor"),
    ("regnet", "ConvNextImageProcessor"),
    ("resnet", "ConvNextImageProcessor"),
    ("segformer", "SegformerImageProcessor"),
    ("shieldgemma2", "Gemma3ImageProcessor"),
    ("siglip", "SiglipImageProcessor"),
    ("siglip2", "Siglip2ImageProcessor"),
    ("swiftformer", "ViTImageProcessor"),
    ("swin", "ViTImageProcessor"),
    ("swinv2", "ViTImageProcessor"),
    ("textnet", "TextNetImageProcessor"),
    ("timm_wrapper", "TimmWrapperImageProcessor"),
    ("vit", "ViTImageProcessor"),
    ("vit_msn", "ViTImageProcessor"),
];

/// The class used when a checkpoint has no `preprocessor_config.json`, sized by `config.json`'s `image_size`.
const FALLBACK_CLASS: &str = "ViTImageProcessor";

// Pillow's `Image.Resampling` numbering, which is what the files store.
const BILINEAR: u8 = 2;
const BICUBIC: u8 = 3;

const IMAGENET_STANDARD: [f64; 3] = [0.5, 0.5, 0.5];
const IMAGENET_DEFAULT_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_DEFAULT_STD: [f64; 3] = [0.229, 0.224, 0.225];
const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// A checkpoint's image preprocessing, resolved from its image processor class and settings into the steps
/// an artifact runs; [`ImageProcessor::spec`] writes them down for one resize mode.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    /// The file the settings came from (`config.json` when there is no `preprocessor_config.json`).
    path: PathBuf,
    /// The transformers class, without a `Fast` / `Pil` backend suffix.
    class: String,
    resample: ResampleFilter,
    size: ResizeSize,
    crop: Option<CropSize>,
    channel_order: ChannelOrder,
    /// The effective `do_convert_rgb` (class default, else the file's).
    convert_rgb: bool,
    /// `pixel_values[c] = u8 * scale[c] + offset[c]`, folded in f64.
    scale: [f64; 3],
    offset: [f64; 3],
}

impl ImageProcessor {
    /// Reads `preprocessor_path` (which may not exist: then `ViTImageProcessor`'s defaults at `config.json`'s
    /// `image_size`, as kiln always did) with `model_config`, the parsed `config.json` at `config_path`.
    pub fn read(
        preprocessor_path: &Path,
        model_config: &Value,
        config_path: &Path,
    ) -> Result<ImageProcessor, ExportError> {
        if !preprocessor_path.exists() {
            let (height, width) = image_size(model_config)
                .map_err(|reason| ExportError::InvalidConfig { path: config_path.to_owned(), reason })?;
            let mut file = Map::new();
            file.insert("size".into(), json!({"height": height, "width": width}));
            return ImageProcessor::resolve(FALLBACK_CLASS, &file, config_path);
        }
        let invalid =
            |reason: String| ExportError::InvalidConfig { path: preprocessor_path.to_owned(), reason };
        let text = std::fs::read_to_string(preprocessor_path)
            .map_err(|source| ExportError::Io { path: preprocessor_path.to_owned(), source })?;
        let file = match serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))? {
            Value::Object(file) => file,
            _ => return Err(invalid("is not a JSON object".into())),
        };
        let class = match class_named_in(&file).map_err(invalid)? {
            Some(class) => class,
            None => class_for_model(model_config)
                .map_err(|reason| ExportError::InvalidConfig { path: config_path.to_owned(), reason })?,
        };
        ImageProcessor::resolve(&class, &file, preprocessor_path)
    }

    /// The transformers class this was resolved as (`ConvNextImageProcessor`, ...).
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The spec for an artifact resizing with `resize`: transformers' own steps for [`ResizeMode::Pil`]
    /// (Pillow decoding, EXIF orientation applied as `load_image` does); for [`ResizeMode::Tf`] the TF
    /// Serving seed's (TensorFlow decoding, no orientation), which only resizes bilinearly straight to one
    /// size, so a processor that does anything else is refused.
    pub fn spec(&self, resize: ResizeMode) -> Result<PreprocessSpec, ExportError> {
        let (decoder, exif_orientation) = match resize {
            ResizeMode::Pil => (Decoder::Pillow, true),
            ResizeMode::Tf => {
                self.check_tf_expressible().map_err(|reason| ExportError::InvalidConfig {
                    path: self.path.clone(),
                    reason: format!("--resize tf: {reason}"),
                })?;
                (Decoder::Tensorflow, false)
            }
        };
        Ok(PreprocessSpec {
            processor: self.class.clone(),
            decoder,
            exif_orientation,
            resize,
            resample: self.resample,
            size: self.size,
            crop: self.crop,
            channel_order: self.channel_order,
            transparency_to_white: self.convert_rgb && decoder == Decoder::Pillow,
            scale: self.scale.map(|v| v as f32),
            offset: self.offset.map(|v| v as f32),
        })
    }

    fn check_tf_expressible(&self) -> Result<(), String> {
        let steps = Steps { size: self.size, crop: self.crop };
        if !matches!(self.size, ResizeSize::Exact { .. }) || self.crop.is_some() {
            return Err(format!(
                "TensorFlow resizing goes straight to one exact size, but {} {steps}; export with \
                 --resize pil",
                self.class
            ));
        }
        if self.resample != ResampleFilter::Bilinear {
            return Err(format!(
                "TensorFlow resizing is bilinear, but {} resamples with {:?}; export with --resize pil",
                self.class, self.resample
            ));
        }
        Ok(())
    }

    /// Resolves `class` with the settings of `file` (read from `path`).
    fn resolve(class: &str, file: &Map<String, Value>, path: &Path) -> Result<ImageProcessor, ExportError> {
        let invalid = |reason: String| ExportError::InvalidConfig { path: path.to_owned(), reason };
        let (family, defaults) = processor_class(class).ok_or_else(|| {
            invalid(format!(
                "image processor class {class} is not one kiln knows (it knows the classes transformers 5.23 \
                 maps image-classification models to)"
            ))
        })?;
        if let Family::Unsupported(why) = family {
            return Err(invalid(format!("{class} is not supported: {why}")));
        }
        let settings = Settings::new(class, family, defaults, file).map_err(invalid)?;
        let steps = settings.steps().map_err(invalid)?;
        let (scale, offset) = settings.affine().map_err(invalid)?;
        let channel_order =
            if family == Family::MobileVit && settings.flag("do_flip_channel_order").map_err(invalid)? {
                ChannelOrder::Bgr
            } else {
                ChannelOrder::Rgb
            };
        Ok(ImageProcessor {
            path: path.to_owned(),
            class: class.to_owned(),
            resample: settings.resample().map_err(invalid)?,
            size: steps.size,
            crop: steps.crop,
            channel_order,
            convert_rgb: settings.flag("do_convert_rgb").map_err(invalid)?,
            scale,
            offset,
        })
    }
}

/// The class `preprocessor_config.json` names, as `AutoImageProcessor` reads it: `image_processor_type`
/// (a `Fast` or `Pil` backend suffix dropped), else `feature_extractor_type` with `FeatureExtractor` read as
/// `ImageProcessor`. Custom code (`auto_map`) is refused.
fn class_named_in(file: &Map<String, Value>) -> Result<Option<String>, String> {
    let auto_map = file.get("auto_map").and_then(Value::as_object);
    if let Some(entry) = ["AutoImageProcessor", "AutoFeatureExtractor"]
        .iter()
        .find(|k| auto_map.is_some_and(|m| m.contains_key(**k)))
    {
        return Err(format!(
            "auto_map.{entry} points at custom image processor code; kiln reproduces only transformers' \
             own classes"
        ));
    }
    let named = |key: &str| match file.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) => Ok(Some(name.clone())),
        Some(other) => Err(format!("{key} is {other}, expected a class name")),
    };
    if let Some(name) = named("image_processor_type")? {
        return Ok(Some(without_backend_suffix(&name)));
    }
    Ok(named("feature_extractor_type")?.map(|name| name.replace("FeatureExtractor", "ImageProcessor")))
}

/// `ViTImageProcessorFast` and `ViTImageProcessorPil` are backends of `ViTImageProcessor`.
fn without_backend_suffix(name: &str) -> String {
    name.strip_suffix("Fast").or_else(|| name.strip_suffix("Pil")).unwrap_or(name).to_owned()
}

/// The class for a `preprocessor_config.json` that names none: `config.json`'s `image_processor_type`, else
/// its `model_type` through transformers' auto mapping.
fn class_for_model(model_config: &Value) -> Result<String, String> {
    if let Some(name) = model_config.get("image_processor_type").and_then(Value::as_str) {
        return Ok(without_backend_suffix(name));
    }
    let model_type = model_config.get("model_type").and_then(Value::as_str).ok_or(
        "names no image processor: preprocessor_config.json has no image_processor_type or \
         feature_extractor_type, and config.json no model_type",
    )?;
    CLASS_FOR_MODEL_TYPE
        .iter()
        .find(|(t, _)| *t == model_type)
        .map(|(_, class)| class.to_string())
        .ok_or_else(|| {
            format!(
                "model_type {model_type:?} has no image processor in transformers' auto mapping for image \
                 classification, and preprocessor_config.json names none (image_processor_type)"
            )
        })
}

/// `config.json`'s `image_size`: one side, `[height, width]`, or 224 (ViT's default) when absent.
fn image_size(model_config: &Value) -> Result<(u32, u32), String> {
    let side = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0);
    match model_config.get("image_size") {
        None | Some(Value::Null) => Ok((224, 224)),
        Some(Value::Array(hw)) if hw.len() == 2 => match (side(&hw[0]), side(&hw[1])) {
            (Some(h), Some(w)) => Ok((h, w)),
            _ => Err(format!("image_size {} is not two positive integers", Value::Array(hw.clone()))),
        },
        Some(v) => side(v).map(|s| (s, s)).ok_or_else(|| format!("image_size {v} is not a positive integer")),
    }
}

/// How a class's `_preprocess` and `resize` differ from `PilBackend`'s; what every class shares is in
/// [`Settings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `PilBackend._preprocess` unchanged: resize, centre crop, rescale, normalize, pad.
    Standard,
    /// CLIP: [`Family::Standard`], plus KOSMOS-2's legacy `use_square_size` (224x224).
    Clip,
    /// Segformer: resize, rescale, normalize; `do_center_crop` and `do_pad` are no steps of it.
    Uncropped,
    /// Gemma3 (ShieldGemma2): [`Family::Uncropped`] unless `do_pan_and_scan` adds crops as extra images.
    Gemma3,
    /// ConvNext (also ResNet, RegNet, CvT, ConvNextV2): below 384 the shortest edge goes to
    /// `int(shortest_edge / crop_pct)` then a `shortest_edge` square is centre-cropped; from 384 up the image
    /// is warped to a square. No pad step.
    ConvNext,
    /// PoolFormer: the size is divided by `crop_pct` before resizing (a square size becomes a shortest edge).
    PoolFormer,
    /// LeViT: a shortest edge becomes `int(256 / 224 * shortest_edge)`.
    Levit,
    /// EfficientNet: `rescale_offset` subtracts 1 after rescaling, `include_top` divides by `image_std` once
    /// more after normalizing. No pad step.
    EfficientNet,
    /// MobileViT: crop after rescale (the same pixels), no normalization step at all, and
    /// `do_flip_channel_order` gives BGR. No pad step.
    MobileVit,
    /// Donut: shortest edge to `min(height, width)`, then thumbnail, pad and rotation, which an artifact
    /// cannot express; only the plain resize (and crop) is accepted.
    Donut,
    /// Perceiver: crops a share of each image *before* resizing, which an artifact cannot express.
    Perceiver,
    /// TextNet: rounds the resized sides up to a multiple of `size_divisor`.
    TextNet,
    /// A class whose output an artifact cannot express at all, and why.
    Unsupported(&'static str),
}

impl Family {
    /// Keys of this family's own `ImagesKwargs` subclass (or `__init__`) on top of [`UNDERSTOOD_KEYS`].
    fn own_keys(self) -> &'static [&'static str] {
        match self {
            Family::Clip => &["use_square_size"],
            Family::Gemma3 => &[
                "do_pan_and_scan",
                "pan_and_scan_min_crop_size",
                "pan_and_scan_max_num_crops",
                "pan_and_scan_min_ratio_to_activate",
            ],
            Family::ConvNext | Family::PoolFormer => &["crop_pct"],
            Family::EfficientNet => &["rescale_offset", "include_top"],
            Family::MobileVit => &["do_flip_channel_order"],
            Family::Donut => &["do_thumbnail", "do_align_long_axis"],
            Family::TextNet => &["size_divisor"],
            _ => &[],
        }
    }

    /// Whether `_preprocess` runs the `do_center_crop` step.
    fn crops(self) -> bool {
        !matches!(self, Family::Uncropped | Family::Gemma3)
    }

    /// Whether `_preprocess` runs `PilBackend.pad` when `do_pad` is set.
    fn pads(self) -> bool {
        matches!(self, Family::Standard | Family::Clip | Family::PoolFormer | Family::Levit)
    }
}

/// The family and class attributes of each class transformers 5.23 maps an image-classification model to
/// (its `*ImageProcessorPil` class), on top of `BaseImageProcessor`'s.
fn processor_class(name: &str) -> Option<(Family, Value)> {
    let square = |side: u32| json!({"height": side, "width": side});
    let plain = |resample: u8, mean: [f64; 3], std: [f64; 3], size: Value| {
        json!({"resample": resample, "image_mean": mean, "image_std": std, "size": size,
               "do_resize": true, "do_rescale": true, "do_normalize": true})
    };
    let with = |mut base: Value, extra: Value| {
        if let (Value::Object(base), Value::Object(extra)) = (&mut base, extra) {
            base.extend(extra);
        }
        base
    };
    let cropped = |resample: u8, mean, std, size: Value, crop: u32| {
        with(plain(resample, mean, std, size), json!({"crop_size": square(crop), "do_center_crop": true}))
    };
    let shortest = |edge: u32| json!({"shortest_edge": edge});
    let (std_mean, std_std) = (IMAGENET_STANDARD, IMAGENET_STANDARD);
    Some(match name {
        "ViTImageProcessor" => (Family::Standard, plain(BILINEAR, std_mean, std_std, square(224))),
        "DeiTImageProcessor" => (Family::Standard, cropped(BICUBIC, std_mean, std_std, square(256), 224)),
        "BeitImageProcessor" => (
            Family::Standard,
            with(
                cropped(BICUBIC, std_mean, std_std, square(224), 224),
                json!({"do_center_crop": false, "default_to_square": true}),
            ),
        ),
        "BitImageProcessor" => (
            Family::Standard,
            with(
                cropped(BICUBIC, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, shortest(224), 224),
                json!({"default_to_square": false, "do_convert_rgb": true}),
            ),
        ),
        "CLIPImageProcessor" => (
            Family::Clip,
            with(
                cropped(BICUBIC, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, shortest(224), 224),
                json!({"default_to_square": false, "do_convert_rgb": true}),
            ),
        ),
        "MobileNetV1ImageProcessor" | "MobileNetV2ImageProcessor" => (
            Family::Standard,
            with(
                cropped(BILINEAR, std_mean, std_std, shortest(256), 224),
                json!({"default_to_square": false}),
            ),
        ),
        "PvtImageProcessor" => (
            Family::Standard,
            with(
                plain(BICUBIC, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, square(224)),
                json!({"default_to_square": true}),
            ),
        ),
        "SiglipImageProcessor" => (
            Family::Standard,
            with(
                plain(BICUBIC, std_mean, std_std, square(224)),
                json!({"default_to_square": false, "do_convert_rgb": true}),
            ),
        ),
        "SegformerImageProcessor" => {
            (Family::Uncropped, plain(BILINEAR, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, square(512)))
        }
        "Gemma3ImageProcessor" => (
            Family::Gemma3,
            with(plain(BILINEAR, std_mean, std_std, square(224)), json!({"do_convert_rgb": true})),
        ),
        "ConvNextImageProcessor" => (
            Family::ConvNext,
            with(
                plain(BICUBIC, std_mean, std_std, shortest(384)),
                json!({"default_to_square": false, "crop_pct": 224.0 / 256.0}),
            ),
        ),
        "PoolFormerImageProcessor" => (
            Family::PoolFormer,
            with(
                cropped(BICUBIC, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, shortest(224), 224),
                json!({"default_to_square": false, "crop_pct": 0.9}),
            ),
        ),
        "LevitImageProcessor" => (
            Family::Levit,
            with(
                cropped(BICUBIC, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, shortest(224), 224),
                json!({"default_to_square": false}),
            ),
        ),
        "EfficientNetImageProcessor" => (
            Family::EfficientNet,
            with(
                cropped(BICUBIC, std_mean, std_std, square(346), 289),
                json!({"do_center_crop": false, "rescale_offset": false, "include_top": true}),
            ),
        ),
        "MobileViTImageProcessor" => (
            Family::MobileVit,
            with(
                cropped(BICUBIC, std_mean, std_std, shortest(224), 256),
                json!({"default_to_square": false, "do_normalize": null, "do_flip_channel_order": true}),
            ),
        ),
        "DonutImageProcessor" => (
            Family::Donut,
            with(
                plain(BILINEAR, std_mean, std_std, json!({"height": 2560, "width": 1920})),
                json!({"do_thumbnail": true, "do_align_long_axis": false, "do_pad": true}),
            ),
        ),
        "PerceiverImageProcessor" => (
            Family::Perceiver,
            cropped(BICUBIC, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, square(224), 256),
        ),
        "TextNetImageProcessor" => (
            Family::TextNet,
            with(
                cropped(BILINEAR, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, shortest(640), 224),
                json!({
                    "default_to_square": false, "do_center_crop": false, "size_divisor": 32, "do_convert_rgb": true
                }),
            ),
        ),
        "ImageGPTImageProcessor" => (
            Family::Unsupported(
                "it turns pixels into colour-cluster ids (input_ids), which ImageGPT takes instead of pixel \
                 values",
            ),
            Value::Null,
        ),
        "Siglip2ImageProcessor" => (
            Family::Unsupported(
                "it resizes each image to fit a patch budget (max_num_patches) and returns patch sequences \
                 with an attention mask, so the input size varies per image",
            ),
            Value::Null,
        ),
        "PPLCNetImageProcessor" => (
            Family::Unsupported(
                "it exists only for transformers' torchvision backend (tensor resize with rounded sizes), \
                 which kiln does not reproduce",
            ),
            Value::Null,
        ),
        "TimmWrapperImageProcessor" => (
            Family::Unsupported(
                "it runs timm's own transforms from config.json's pretrained_cfg, which kiln does not \
                 reproduce",
            ),
            Value::Null,
        ),
        _ => return None,
    })
}

/// A `size`, `crop_size` or `pad_size` as transformers' `get_size_dict` normalizes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeDict {
    HeightWidth(u32, u32),
    ShortestEdge(u32),
    ShortestLongest(u32, u32),
    LongestEdge(u32),
}

impl SizeDict {
    /// Reads `value` (the setting `key`) as `get_size_dict` normalizes it: a `{height, width}`,
    /// `{shortest_edge}`, `{shortest_edge, longest_edge}` or `{longest_edge}` object, a `[height, width]`
    /// list, or a bare integer, a square when `default_to_square` and a shortest edge otherwise.
    fn parse(key: &str, value: &Value, default_to_square: bool) -> Result<SizeDict, String> {
        let side = |v: &Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{key} {value} has a side that is not a positive integer"))
        };
        Ok(match value {
            Value::Number(_) if default_to_square => SizeDict::HeightWidth(side(value)?, side(value)?),
            Value::Number(_) => SizeDict::ShortestEdge(side(value)?),
            Value::Array(hw) if hw.len() == 2 => SizeDict::HeightWidth(side(&hw[0])?, side(&hw[1])?),
            Value::Object(dict) => {
                let mut keys: Vec<&str> = dict.keys().map(String::as_str).collect();
                keys.sort_unstable();
                match keys.as_slice() {
                    ["height", "width"] => {
                        SizeDict::HeightWidth(side(&dict["height"])?, side(&dict["width"])?)
                    }
                    ["shortest_edge"] => SizeDict::ShortestEdge(side(&dict["shortest_edge"])?),
                    ["longest_edge", "shortest_edge"] => {
                        SizeDict::ShortestLongest(side(&dict["shortest_edge"])?, side(&dict["longest_edge"])?)
                    }
                    ["longest_edge"] => SizeDict::LongestEdge(side(&dict["longest_edge"])?),
                    ["max_height", "max_width"] | ["max_pixels", "min_pixels"] => {
                        return Err(format!(
                            "{key} {value} fits each image into a box or pixel budget, so sizes vary; the \
                             graph takes one size"
                        ));
                    }
                    _ => return Err(format!("{key} {value} is none of the size forms transformers accepts")),
                }
            }
            _ => return Err(format!("{key} {value} is none of the size forms transformers accepts")),
        })
    }

    /// The shorter-edge target, where the dict has one (`size.shortest_edge` in Python).
    fn shortest_edge(self) -> Option<u32> {
        match self {
            SizeDict::ShortestEdge(s) | SizeDict::ShortestLongest(s, _) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for SizeDict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeDict::HeightWidth(h, w) => write!(f, "{{height: {h}, width: {w}}}"),
            SizeDict::ShortestEdge(s) => write!(f, "{{shortest_edge: {s}}}"),
            SizeDict::ShortestLongest(s, l) => write!(f, "{{shortest_edge: {s}, longest_edge: {l}}}"),
            SizeDict::LongestEdge(l) => write!(f, "{{longest_edge: {l}}}"),
        }
    }
}

/// The geometric steps: resize, then an optional centre crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Steps {
    size: ResizeSize,
    crop: Option<CropSize>,
}

impl Steps {
    fn resize(size: ResizeSize) -> Steps {
        Steps { size, crop: None }
    }

    /// Adds a centre crop after these steps. Two centre crops are one when the inner one is no larger and
    /// leaves even margins (then the floor of each half-margin adds up); otherwise their offsets can differ
    /// by a pixel and they are refused.
    fn then_crop(self, crop: CropSize) -> Result<Steps, String> {
        match self.crop {
            None => Ok(Steps { crop: Some(crop), ..self }),
            Some(first)
                if crop.height <= first.height
                    && crop.width <= first.width
                    && (first.height - crop.height).is_multiple_of(2)
                    && (first.width - crop.width).is_multiple_of(2) =>
            {
                Ok(Steps { crop: Some(crop), ..self })
            }
            Some(first) => Err(format!(
                "do_center_crop crops {}x{} out of the {}x{} centre the resize already cut; the two crops \
                 are not one centre crop",
                crop.height, crop.width, first.height, first.width
            )),
        }
    }
}

impl fmt::Display for Steps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.size {
            ResizeSize::Exact { height, width } => write!(f, "resizes to {height}x{width}")?,
            ResizeSize::ShortestEdge { shortest_edge, longest_edge: None } => {
                write!(f, "resizes the shortest edge to {shortest_edge}")?
            }
            ResizeSize::ShortestEdge { shortest_edge, longest_edge: Some(l) } => {
                write!(f, "resizes the shortest edge to {shortest_edge} (longest at most {l})")?
            }
        }
        match self.crop {
            Some(CropSize { height, width }) => write!(f, " then centre-crops {height}x{width}"),
            None => Ok(()),
        }
    }
}

/// A class's attributes with a file's values laid over them, as `_set_attributes` does: a `null` in the file
/// keeps the class's value.
struct Settings {
    class: String,
    family: Family,
    values: Map<String, Value>,
}

impl Settings {
    /// Lays `file` over `BaseImageProcessor`'s and `defaults`' attributes, refusing any key that is neither
    /// understood for `family` nor pixel-neutral.
    fn new(
        class: &str,
        family: Family,
        defaults: Value,
        file: &Map<String, Value>,
    ) -> Result<Settings, String> {
        let mut values = Map::new();
        values.insert("default_to_square".into(), Value::Bool(true));
        values.insert("rescale_factor".into(), json!(1.0 / 255.0));
        if let Value::Object(defaults) = defaults {
            values.extend(defaults);
        }
        for (key, value) in file {
            let known = UNDERSTOOD_KEYS.contains(&key.as_str()) || family.own_keys().contains(&key.as_str());
            if !known && !PIXEL_NEUTRAL_KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "{key} is not a setting kiln knows for {class}; it may change pixels, so kiln refuses \
                     rather than guess"
                ));
            }
            if known && !value.is_null() {
                values.insert(key.clone(), value.clone());
            }
        }
        Ok(Settings { class: class.to_owned(), family, values })
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key).filter(|v| !v.is_null())
    }

    /// A `do_*` switch; absent is off, as Python's `None` is.
    fn flag(&self, key: &str) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(on)) => Ok(*on),
            Some(other) => Err(format!("{key} is {other}, expected true or false")),
        }
    }

    /// A required finite number.
    fn number(&self, key: &str) -> Result<f64, String> {
        match self.get(key) {
            None => Err(format!("{} needs {key}, and it is missing", self.class)),
            Some(v) => {
                v.as_f64().filter(|n| n.is_finite()).ok_or_else(|| format!("{key} is {v}, expected a number"))
            }
        }
    }

    /// A required number above zero (a divisor).
    fn positive(&self, key: &str) -> Result<f64, String> {
        let n = self.number(key)?;
        if n > 0.0 { Ok(n) } else { Err(format!("{key} is {n}; it must be above zero")) }
    }

    /// `size` (read with `default_to_square`), `crop_size` or `pad_size` (read as squares), if set.
    fn size_dict(&self, key: &str, default_to_square: bool) -> Result<Option<SizeDict>, String> {
        self.get(key).map(|value| SizeDict::parse(key, value, default_to_square)).transpose()
    }

    /// `resample`, in Pillow's numbering (transformers accepts 0 to 5).
    fn resample(&self) -> Result<ResampleFilter, String> {
        let value = self
            .get("resample")
            .ok_or_else(|| format!("{} needs resample, and it is missing", self.class))?;
        Ok(match value.as_u64() {
            Some(0) => ResampleFilter::Nearest,
            Some(1) => ResampleFilter::Lanczos,
            Some(2) => ResampleFilter::Bilinear,
            Some(3) => ResampleFilter::Bicubic,
            Some(4) => ResampleFilter::Box,
            Some(5) => ResampleFilter::Hamming,
            _ => {
                return Err(format!(
                    "resample {value} is not a Pillow filter transformers accepts (0 nearest, 1 lanczos, 2 \
                     bilinear, 3 bicubic, 4 box, 5 hamming)"
                ));
            }
        })
    }

    /// `image_mean` / `image_std`: three numbers, or one for all channels.
    fn channels(&self, key: &str) -> Result<[f64; 3], String> {
        let value = self.get(key).ok_or_else(|| format!("{} normalizes but {key} is missing", self.class))?;
        let number = |v: &Value| v.as_f64().filter(|n| n.is_finite());
        let values = match value {
            Value::Array(list) if list.len() == 3 => [number(&list[0]), number(&list[1]), number(&list[2])],
            Value::Array(list) => {
                return Err(format!("{key} has {} values; an RGB image needs 3 (or one number)", list.len()));
            }
            single => [number(single); 3],
        };
        match values {
            [Some(r), Some(g), Some(b)] => Ok([r, g, b]),
            _ => Err(format!("{key} {value} is not numbers")),
        }
    }

    /// The resize and crop steps the class's `_preprocess` runs.
    fn steps(&self) -> Result<Steps, String> {
        if !self.flag("do_resize")? {
            return Err("do_resize is false, so images keep their own size; the graph takes one size".into());
        }
        let size = self.size()?;
        let mut steps = self.resize(size)?;
        if self.flag("do_center_crop")? && self.family.crops() {
            if self.family == Family::Perceiver {
                return Err("PerceiverImageProcessor's do_center_crop cuts a share of each image before \
                            resizing, which an artifact cannot express"
                    .into());
            }
            let crop = match self.size_dict("crop_size", true)? {
                Some(SizeDict::HeightWidth(height, width)) => CropSize { height, width },
                Some(other) => return Err(format!("crop_size {other} is no height and width to crop to")),
                None => return Err("do_center_crop is set but crop_size is missing".into()),
            };
            steps = steps.then_crop(crop)?;
        }
        let output = match (steps.crop, steps.size) {
            (Some(crop), _) => (crop.height, crop.width),
            (None, ResizeSize::Exact { height, width }) => (height, width),
            (None, ResizeSize::ShortestEdge { .. }) => {
                return Err(format!(
                    "{} {steps} without a centre crop, so images keep their aspect ratio and vary in size; \
                     the graph takes one size",
                    self.class
                ));
            }
        };
        if self.flag("do_pad")? && self.family.pads() {
            match self.size_dict("pad_size", true)? {
                None => {}
                Some(SizeDict::HeightWidth(h, w)) if (h, w) == output => {}
                Some(pad) => {
                    return Err(format!(
                        "do_pad pads the {}x{} images at the bottom and right to pad_size {pad}, which an \
                         artifact cannot express",
                        output.0, output.1
                    ));
                }
            }
        }
        Ok(steps)
    }

    /// `size`, read the way the class's `__init__` reads it.
    fn size(&self) -> Result<SizeDict, String> {
        if self.family == Family::Clip && self.flag("use_square_size")? {
            // CLIPImageProcessor.__init__ replaces `size` with its class default's shortest edge, squared.
            return Ok(SizeDict::HeightWidth(224, 224));
        }
        let default_to_square = self.flag("default_to_square")?;
        let size = match self.get("size") {
            // DonutImageProcessor.__init__ reverses a list size: the file holds [width, height].
            Some(Value::Array(wh)) if self.family == Family::Donut => {
                let hw = Value::Array(wh.iter().rev().cloned().collect());
                Some(SizeDict::parse("size", &hw, default_to_square)?)
            }
            _ => self.size_dict("size", default_to_square)?,
        };
        size.ok_or_else(|| format!("{} resizes but size is missing", self.class))
    }

    /// The class's `resize`, with whatever crop it does itself.
    fn resize(&self, size: SizeDict) -> Result<Steps, String> {
        let class = &self.class;
        let side = |x: f64, what: &str| {
            // Python's int() truncates; the result must still be a usable side.
            let t = x.trunc();
            if (1.0..=f64::from(u32::MAX)).contains(&t) {
                Ok(t as u32)
            } else {
                Err(format!("{class} would resize to a side of {x} ({what})"))
            }
        };
        let shortest = |edge: u32| ResizeSize::ShortestEdge { shortest_edge: edge, longest_edge: None };
        let needs_shortest_edge =
            || format!("{class} resizes by a shortest edge, but size is {size}, which has none");
        Ok(match self.family {
            Family::ConvNext => {
                let edge = size.shortest_edge().ok_or_else(needs_shortest_edge)?;
                if edge < 384 {
                    let crop_pct = self.positive("crop_pct")?;
                    let resized = side(f64::from(edge) / crop_pct, "shortest_edge / crop_pct")?;
                    Steps { size: shortest(resized), crop: Some(CropSize { height: edge, width: edge }) }
                } else {
                    Steps::resize(ResizeSize::Exact { height: edge, width: edge })
                }
            }
            Family::PoolFormer => {
                let crop_pct = self.positive("crop_pct")?;
                let scaled = |s: u32| side(f64::from(s) / crop_pct, "size / crop_pct");
                Steps::resize(match size {
                    SizeDict::ShortestEdge(s) | SizeDict::ShortestLongest(s, _) => shortest(scaled(s)?),
                    // A square size becomes one integer, which PoolFormer then reads as a shortest edge.
                    SizeDict::HeightWidth(h, w) if h == w => shortest(scaled(h)?),
                    SizeDict::HeightWidth(h, w) => {
                        ResizeSize::Exact { height: scaled(h)?, width: scaled(w)? }
                    }
                    SizeDict::LongestEdge(_) => return Err(needs_shortest_edge()),
                })
            }
            Family::Levit => Steps::resize(match size {
                SizeDict::ShortestEdge(s) | SizeDict::ShortestLongest(s, _) => {
                    shortest(side(256.0 / 224.0 * f64::from(s), "256 / 224 * shortest_edge")?)
                }
                SizeDict::HeightWidth(height, width) => ResizeSize::Exact { height, width },
                SizeDict::LongestEdge(_) => return Err(needs_shortest_edge()),
            }),
            Family::TextNet => {
                let edge = size.shortest_edge().ok_or_else(needs_shortest_edge)?;
                let divisor = self.number("size_divisor")?;
                if divisor != 1.0 {
                    return Err(format!(
                        "size_divisor {divisor} rounds each resized side up to a multiple of it, which an \
                         artifact cannot express (only 1 can be)"
                    ));
                }
                Steps::resize(shortest(edge))
            }
            Family::Donut => {
                for key in ["do_align_long_axis", "do_thumbnail", "do_pad"] {
                    if self.flag(key)? {
                        return Err(format!(
                            "DonutImageProcessor's {key} (rotation, thumbnail or letterbox padding) is not \
                             something an artifact can express; only its plain resize is"
                        ));
                    }
                }
                match size {
                    SizeDict::HeightWidth(h, w) => Steps::resize(shortest(h.min(w))),
                    other => return Err(format!("{class} needs size as height and width, got {other}")),
                }
            }
            Family::Gemma3 if self.flag("do_pan_and_scan")? => {
                return Err("do_pan_and_scan adds crops of each image as extra images, which an artifact \
                            cannot express"
                    .into());
            }
            _ => Steps::resize(match size {
                // `PilBackend.resize`.
                SizeDict::ShortestLongest(s, l) => {
                    ResizeSize::ShortestEdge { shortest_edge: s, longest_edge: Some(l) }
                }
                SizeDict::ShortestEdge(s) => shortest(s),
                SizeDict::HeightWidth(height, width) => ResizeSize::Exact { height, width },
                SizeDict::LongestEdge(_) => {
                    return Err(format!("size {size} alone is not a size transformers' resize accepts"));
                }
            }),
        })
    }

    /// `(scale, offset)` with `pixel_values[c] = u8 * scale[c] + offset[c]`: the class's rescale and
    /// normalize steps folded in f64.
    fn affine(&self) -> Result<([f64; 3], [f64; 3]), String> {
        let mut scale = [1.0; 3];
        let mut offset = [0.0; 3];
        if self.flag("do_rescale")? {
            let factor = self.number("rescale_factor")?;
            if factor == 0.0 {
                return Err("rescale_factor is 0, which makes every image black".into());
            }
            scale = scale.map(|s| s * factor);
            if self.family == Family::EfficientNet && self.flag("rescale_offset")? {
                offset = offset.map(|o| o - 1.0);
            }
        }
        let divide = |scale: &mut [f64; 3], offset: &mut [f64; 3], mean: [f64; 3], std: [f64; 3]| {
            for c in 0..3 {
                scale[c] /= std[c];
                offset[c] = (offset[c] - mean[c]) / std[c];
            }
        };
        let normalizes = self.family != Family::MobileVit && self.flag("do_normalize")?;
        let include_top = self.family == Family::EfficientNet && self.flag("include_top")?;
        if normalizes || include_top {
            let std = self.channels("image_std")?;
            if std.contains(&0.0) {
                return Err(format!("image_std {std:?} has a zero, which divides by zero"));
            }
            if normalizes {
                divide(&mut scale, &mut offset, self.channels("image_mean")?, std);
            }
            if include_top {
                // EfficientNet divides by image_std a second time for classification.
                divide(&mut scale, &mut offset, [0.0; 3], std);
            }
        }
        Ok((scale, offset))
    }
}

#[cfg(test)]
mod tests;
