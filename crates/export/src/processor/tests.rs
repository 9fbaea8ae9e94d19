//! Each class's `save_pretrained` output (transformers 5.23, generated from the class defaults with
//! `/work/pyenv/bin/python`), small variants of it, the older `*FeatureExtractor` files, and the refusals.

use std::path::Path;

use serde_json::{Value, json};

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Largest |difference| accepted between a folded scale or offset and the expected one (f32 rounding of
/// values up to ~10).
const AFFINE_TOLERANCE: f32 = 1e-5;

/// Reads `file` as a `preprocessor_config.json` beside a `config.json` holding `model_config`.
fn read(file: &Value, model_config: &Value) -> Result<ImageProcessor, ExportError> {
    let dir = tempfile::tempdir().map_err(|source| ExportError::Io { path: "tempdir".into(), source })?;
    let path = dir.path().join("preprocessor_config.json");
    std::fs::write(&path, file.to_string())
        .map_err(|source| ExportError::Io { path: path.clone(), source })?;
    ImageProcessor::read(&path, model_config, &dir.path().join("config.json"))
}

fn spec(file: Value) -> Result<PreprocessSpec, ExportError> {
    read(&file, &json!({}))?.spec(ResizeMode::Pil)
}

/// The refusal message for `file`, which must be refused.
fn refusal(file: Value) -> String {
    match spec(file) {
        Ok(spec) => panic!("expected a refusal, got {spec:?}"),
        Err(e) => e.to_string(),
    }
}

fn exact(height: u32, width: u32) -> ResizeSize {
    ResizeSize::Exact { height, width }
}

fn shortest(edge: u32) -> ResizeSize {
    ResizeSize::ShortestEdge { shortest_edge: edge, longest_edge: None }
}

fn crop(height: u32, width: u32) -> Option<CropSize> {
    Some(CropSize { height, width })
}

/// Checks the steps of `spec`: class, filter, resize and crop (RGB unless `bgr`).
fn assert_steps(
    spec: &PreprocessSpec,
    class: &str,
    resample: ResampleFilter,
    size: ResizeSize,
    cropped: Option<CropSize>,
) {
    assert_eq!(
        (spec.processor.as_str(), spec.resample, spec.size, spec.crop),
        (class, resample, size, cropped),
        "steps of {spec:?}"
    );
}

/// Checks the folded affine against `((u8 * rescale) - mean) / std`.
fn assert_normalized(spec: &PreprocessSpec, rescale: f64, mean: [f64; 3], std: [f64; 3]) {
    let scale: [f64; 3] = std::array::from_fn(|c| rescale / std[c]);
    let offset: [f64; 3] = std::array::from_fn(|c| -mean[c] / std[c]);
    assert_affine(spec, scale, offset);
}

fn assert_affine(spec: &PreprocessSpec, scale: [f64; 3], offset: [f64; 3]) {
    for c in 0..3 {
        assert!(
            (spec.scale[c] - scale[c] as f32).abs() <= AFFINE_TOLERANCE
                && (spec.offset[c] - offset[c] as f32).abs() <= AFFINE_TOLERANCE,
            "channel {c}: scale {:?} offset {:?}, expected {scale:?} {offset:?}",
            spec.scale,
            spec.offset
        );
    }
}

const RESCALE: f64 = 1.0 / 255.0;

#[test]
fn vit_defaults_resize_straight_to_the_size() -> TestResult {
    let spec = spec(json!({
        "do_normalize": true, "do_rescale": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "ViTImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 2,
        "rescale_factor": 0.00392156862745098, "size": {"height": 224, "width": 224}
    }))?;
    assert_steps(&spec, "ViTImageProcessor", ResampleFilter::Bilinear, exact(224, 224), None);
    assert_normalized(&spec, RESCALE, IMAGENET_STANDARD, IMAGENET_STANDARD);
    assert_eq!((spec.decoder, spec.exif_orientation, spec.resize), (Decoder::Pillow, true, ResizeMode::Pil));
    assert_eq!(spec.channel_order, ChannelOrder::Rgb);
    assert_eq!(spec.output_size(), Some((224, 224)));
    Ok(())
}

#[test]
fn legacy_feature_extractor_files_read_as_their_image_processor() -> TestResult {
    // google/vit-base-patch16-224 and microsoft/swin-*: ViTFeatureExtractor, `size` a bare int.
    let vit = spec(json!({
        "do_normalize": true, "do_resize": true, "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224
    }))?;
    assert_steps(&vit, "ViTImageProcessor", ResampleFilter::Bilinear, exact(224, 224), None);
    assert_normalized(&vit, RESCALE, IMAGENET_STANDARD, IMAGENET_STANDARD);
    // facebook/deit-*: ints for both `size` and `crop_size`.
    let deit = spec(json!({
        "crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
        "feature_extractor_type": "DeiTFeatureExtractor", "image_mean": IMAGENET_DEFAULT_MEAN,
        "image_std": IMAGENET_DEFAULT_STD, "resample": 3, "size": 256
    }))?;
    assert_steps(&deit, "DeiTImageProcessor", ResampleFilter::Bicubic, exact(256, 256), crop(224, 224));
    assert_normalized(&deit, RESCALE, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD);
    // microsoft/beit-*: the old `reduce_labels` spelling is label-only.
    let beit = spec(json!({
        "crop_size": 224, "do_center_crop": false, "do_normalize": true, "do_resize": true,
        "feature_extractor_type": "BeitFeatureExtractor", "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "reduce_labels": false, "resample": 2, "size": 224
    }))?;
    assert_steps(&beit, "BeitImageProcessor", ResampleFilter::Bilinear, exact(224, 224), None);
    // nvidia/mit-b0: Segformer, a square int size.
    let segformer = spec(json!({
        "do_normalize": true, "do_resize": true, "feature_extractor_type": "SegformerFeatureExtractor",
        "image_mean": IMAGENET_DEFAULT_MEAN, "image_std": IMAGENET_DEFAULT_STD, "reduce_labels": false,
        "resample": 2, "size": 512
    }))?;
    assert_steps(&segformer, "SegformerImageProcessor", ResampleFilter::Bilinear, exact(512, 512), None);
    // A `Fast` backend suffix names the same class.
    let fast =
        spec(json!({"image_processor_type": "ViTImageProcessorFast", "size": {"height": 32, "width": 48}}))?;
    assert_steps(&fast, "ViTImageProcessor", ResampleFilter::Bilinear, exact(32, 48), None);
    Ok(())
}

#[test]
fn deit_and_beit_defaults() -> TestResult {
    let deit = spec(json!({
        "crop_size": {"height": 224, "width": 224}, "do_center_crop": true, "do_normalize": true,
        "do_rescale": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "DeiTImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 3,
        "rescale_factor": 0.00392156862745098, "size": {"height": 256, "width": 256}
    }))?;
    assert_steps(&deit, "DeiTImageProcessor", ResampleFilter::Bicubic, exact(256, 256), crop(224, 224));
    let beit = spec(json!({
        "crop_size": {"height": 224, "width": 224}, "do_center_crop": false, "do_normalize": true,
        "do_reduce_labels": false, "do_rescale": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "BeitImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 3,
        "rescale_factor": 0.00392156862745098, "size": {"height": 224, "width": 224}
    }))?;
    assert_steps(&beit, "BeitImageProcessor", ResampleFilter::Bicubic, exact(224, 224), None);
    Ok(())
}

#[test]
fn bit_and_clip_resize_the_shortest_edge_then_crop() -> TestResult {
    for class in ["BitImageProcessor", "CLIPImageProcessor"] {
        let spec = spec(json!({
            "crop_size": {"height": 224, "width": 224}, "do_center_crop": true, "do_convert_rgb": true,
            "do_normalize": true, "do_rescale": true, "do_resize": true, "image_mean": OPENAI_CLIP_MEAN,
            "image_processor_type": class, "image_std": OPENAI_CLIP_STD, "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224}
        }))?;
        assert_steps(&spec, class, ResampleFilter::Bicubic, shortest(224), crop(224, 224));
        assert_normalized(&spec, RESCALE, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD);
    }
    // Bit reads a bare int as a shortest edge (default_to_square = False) ...
    let bare = spec(json!({"image_processor_type": "BitImageProcessor", "size": 256}))?;
    assert_steps(&bare, "BitImageProcessor", ResampleFilter::Bicubic, shortest(256), crop(224, 224));
    // ... and keeps a longest edge for the runtime.
    let bounded = spec(json!({
        "image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 224, "longest_edge": 300}
    }))?;
    let expected = ResizeSize::ShortestEdge { shortest_edge: 224, longest_edge: Some(300) };
    assert_steps(&bounded, "BitImageProcessor", ResampleFilter::Bicubic, expected, crop(224, 224));
    // KOSMOS-2's use_square_size makes CLIP resize straight to 224x224, whatever `size` says.
    let square =
        spec(json!({"image_processor_type": "CLIPImageProcessor", "use_square_size": true, "size": 300}))?;
    assert_steps(&square, "CLIPImageProcessor", ResampleFilter::Bicubic, exact(224, 224), crop(224, 224));
    Ok(())
}

#[test]
fn convnext_crops_by_crop_pct_below_384_and_warps_above() -> TestResult {
    let convnext = |size: Value, crop_pct: Value| {
        spec(json!({
            "crop_pct": crop_pct, "do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "ConvNextImageProcessor",
            "image_std": [0.5, 0.5, 0.5], "resample": 3, "rescale_factor": 0.00392156862745098, "size": size
        }))
    };
    // The class default: 384 and up is warped to a square, no crop.
    let warp = convnext(json!({"shortest_edge": 384}), json!(0.875))?;
    assert_steps(&warp, "ConvNextImageProcessor", ResampleFilter::Bicubic, exact(384, 384), None);
    assert_normalized(&warp, RESCALE, IMAGENET_STANDARD, IMAGENET_STANDARD);
    // int(shortest_edge / crop_pct), truncated like Python's int().
    for (edge, crop_pct, resized) in [
        (224, 0.875, 256),
        (224, 0.9, 248),
        (288, 0.875, 329),
        (383, 0.875, 437),
        (224, 0.95, 235),
        (56, 0.875, 64),
    ] {
        let spec = convnext(json!({"shortest_edge": edge}), json!(crop_pct))?;
        assert_steps(
            &spec,
            "ConvNextImageProcessor",
            ResampleFilter::Bicubic,
            shortest(resized),
            crop(edge, edge),
        );
    }
    // A null crop_pct keeps the class's 224 / 256.
    let default_pct = convnext(json!({"shortest_edge": 224}), Value::Null)?;
    assert_eq!(default_pct.size, shortest(256));
    // microsoft/resnet-50, facebook/convnext-tiny-224: ConvNextFeatureExtractor with a bare int size.
    let resnet = spec(json!({
        "crop_pct": 0.875, "do_normalize": true, "do_resize": true,
        "feature_extractor_type": "ConvNextFeatureExtractor", "image_mean": IMAGENET_DEFAULT_MEAN,
        "image_std": IMAGENET_DEFAULT_STD, "resample": 3, "size": 224
    }))?;
    assert_steps(&resnet, "ConvNextImageProcessor", ResampleFilter::Bicubic, shortest(256), crop(224, 224));
    assert_normalized(&resnet, RESCALE, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD);
    Ok(())
}

#[test]
fn convnext_second_crop_folds_only_when_it_is_one_centre_crop() -> TestResult {
    let with_crop = |crop_size: Value| {
        spec(json!({
            "image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 224},
            "do_center_crop": true, "crop_size": crop_size
        }))
    };
    assert_eq!(with_crop(json!(224))?.crop, crop(224, 224));
    assert_eq!(with_crop(json!({"height": 200, "width": 220}))?.crop, crop(200, 220));
    let odd = with_crop(json!(201)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(odd.contains("not one centre crop"), "{odd}");
    let larger = with_crop(json!(240)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(larger.contains("not one centre crop"), "{larger}");
    // Above 384 the warp has no crop of its own, so the crop is the only one.
    let warped = spec(json!({
        "image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 384},
        "do_center_crop": true, "crop_size": 320
    }))?;
    assert_eq!((warped.size, warped.crop), (exact(384, 384), crop(320, 320)));
    Ok(())
}

#[test]
fn poolformer_divides_its_size_by_crop_pct() -> TestResult {
    let poolformer = |size: Value| {
        spec(json!({
            "crop_pct": 0.9, "crop_size": {"height": 224, "width": 224}, "do_center_crop": true,
            "do_normalize": true, "do_rescale": true, "do_resize": true, "image_mean": IMAGENET_DEFAULT_MEAN,
            "image_processor_type": "PoolFormerImageProcessor", "image_std": IMAGENET_DEFAULT_STD,
            "resample": 3, "rescale_factor": 0.00392156862745098, "size": size
        }))
    };
    let defaults = poolformer(json!({"shortest_edge": 224}))?;
    assert_steps(
        &defaults,
        "PoolFormerImageProcessor",
        ResampleFilter::Bicubic,
        shortest(248),
        crop(224, 224),
    );
    assert_normalized(&defaults, RESCALE, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD);
    // A square size collapses to one integer, which PoolFormer then reads as a shortest edge.
    assert_eq!(poolformer(json!({"height": 224, "width": 224}))?.size, shortest(248));
    // A non-square one is scaled side by side and resized exactly.
    assert_eq!(poolformer(json!({"height": 224, "width": 256}))?.size, exact(248, 284));
    // sail/poolformer_s12: PoolFormerFeatureExtractor with its old do_resize_and_center_crop switch.
    let legacy = spec(json!({
        "crop_pct": 0.9, "do_center_crop": true, "do_normalize": true, "do_resize_and_center_crop": true,
        "feature_extractor_type": "PoolFormerFeatureExtractor", "image_mean": IMAGENET_DEFAULT_MEAN,
        "image_std": IMAGENET_DEFAULT_STD, "resample": 3, "size": 224
    }))?;
    assert_steps(&legacy, "PoolFormerImageProcessor", ResampleFilter::Bicubic, shortest(248), crop(224, 224));
    let zero = refusal(json!({"image_processor_type": "PoolFormerImageProcessor", "crop_pct": 0}));
    assert!(zero.contains("crop_pct is 0"), "{zero}");
    Ok(())
}

#[test]
fn levit_scales_its_shortest_edge_by_256_over_224() -> TestResult {
    let levit = |size: Value| {
        spec(json!({
            "crop_size": {"height": 224, "width": 224}, "do_center_crop": true, "do_normalize": true,
            "do_rescale": true, "do_resize": true, "image_mean": IMAGENET_DEFAULT_MEAN,
            "image_processor_type": "LevitImageProcessor", "image_std": IMAGENET_DEFAULT_STD, "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": size
        }))
    };
    let defaults = levit(json!({"shortest_edge": 224}))?;
    assert_steps(&defaults, "LevitImageProcessor", ResampleFilter::Bicubic, shortest(256), crop(224, 224));
    assert_normalized(&defaults, RESCALE, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD);
    // int(256 / 224 * 256) = int(292.57...)
    assert_eq!(levit(json!({"shortest_edge": 256}))?.size, shortest(292));
    // facebook/levit-128S: LevitFeatureExtractor, a bare int read as a shortest edge.
    assert_eq!(levit(json!(224))?.size, shortest(256));
    // A height and width is used as is.
    assert_eq!(levit(json!({"height": 240, "width": 230}))?.size, exact(240, 230));
    Ok(())
}

#[test]
fn efficientnet_folds_rescale_offset_and_include_top() -> TestResult {
    let efficientnet = |rescale_offset: bool, include_top: bool| {
        spec(json!({
            "crop_size": {"height": 289, "width": 289}, "do_center_crop": false, "do_normalize": true,
            "do_rescale": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "EfficientNetImageProcessor", "image_std": [0.5, 0.5, 0.5],
            "include_top": include_top, "resample": 3, "rescale_factor": 0.00392156862745098,
            "rescale_offset": rescale_offset, "size": {"height": 346, "width": 346}
        }))
    };
    let defaults = efficientnet(false, true)?;
    assert_steps(&defaults, "EfficientNetImageProcessor", ResampleFilter::Bicubic, exact(346, 346), None);
    // ((u8 / 255 - 0.5) / 0.5) / 0.5
    assert_affine(&defaults, [4.0 / 255.0; 3], [-2.0; 3]);
    // ((u8 / 255 - 1 - 0.5) / 0.5) / 0.5
    assert_affine(&efficientnet(true, true)?, [4.0 / 255.0; 3], [-6.0; 3]);
    assert_affine(&efficientnet(true, false)?, [2.0 / 255.0; 3], [-3.0; 3]);
    // include_top divides by image_std even when do_normalize is off.
    let unnormalized = spec(json!({
        "image_processor_type": "EfficientNetImageProcessor", "do_normalize": false, "image_std": 0.25
    }))?;
    assert_affine(&unnormalized, [4.0 / 255.0; 3], [0.0; 3]);
    // google/efficientnet-b0: nearest-neighbour resampling and its own std.
    let b0_std = [0.47853944, 0.4732864, 0.47434163];
    let b0 = spec(json!({
        "crop_size": {"height": 289, "width": 289}, "do_center_crop": false, "do_normalize": true,
        "do_rescale": true, "do_resize": true, "image_mean": IMAGENET_DEFAULT_MEAN,
        "image_processor_type": "EfficientNetImageProcessor", "image_std": b0_std, "include_top": true,
        "resample": 0, "rescale_factor": 0.00392156862745098, "rescale_offset": false,
        "size": {"height": 224, "width": 224}
    }))?;
    assert_steps(&b0, "EfficientNetImageProcessor", ResampleFilter::Nearest, exact(224, 224), None);
    let scale = std::array::from_fn(|c| RESCALE / b0_std[c] / b0_std[c]);
    let offset = std::array::from_fn(|c| -IMAGENET_DEFAULT_MEAN[c] / b0_std[c] / b0_std[c]);
    assert_affine(&b0, scale, offset);
    Ok(())
}

#[test]
fn mobilevit_flips_to_bgr_and_never_normalizes() -> TestResult {
    let defaults = spec(json!({
        "crop_size": {"height": 256, "width": 256}, "do_center_crop": true, "do_flip_channel_order": true,
        "do_reduce_labels": false, "do_rescale": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "MobileViTImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 3,
        "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224}
    }))?;
    assert_steps(
        &defaults,
        "MobileViTImageProcessor",
        ResampleFilter::Bicubic,
        shortest(224),
        crop(256, 256),
    );
    assert_eq!(defaults.channel_order, ChannelOrder::Bgr);
    assert_affine(&defaults, [RESCALE; 3], [0.0; 3]);
    // Its _preprocess has no normalize step, so do_normalize does nothing.
    let normalize_asked = spec(json!({
        "image_processor_type": "MobileViTImageProcessor", "do_normalize": true, "image_mean": 0.4
    }))?;
    assert_affine(&normalize_asked, [RESCALE; 3], [0.0; 3]);
    // apple/mobilevit-small: MobileViTFeatureExtractor with bare ints.
    let legacy = spec(json!({
        "crop_size": 256, "do_center_crop": true, "do_flip_channel_order": true, "do_resize": true,
        "feature_extractor_type": "MobileViTFeatureExtractor", "resample": 2, "size": 288
    }))?;
    assert_steps(&legacy, "MobileViTImageProcessor", ResampleFilter::Bilinear, shortest(288), crop(256, 256));
    assert_eq!(legacy.channel_order, ChannelOrder::Bgr);
    let rgb =
        spec(json!({"image_processor_type": "MobileViTImageProcessor", "do_flip_channel_order": false}))?;
    assert_eq!(rgb.channel_order, ChannelOrder::Rgb);
    Ok(())
}

#[test]
fn plain_classes_keep_their_own_defaults() -> TestResult {
    let cases = [
        (
            "MobileNetV1ImageProcessor",
            ResampleFilter::Bilinear,
            shortest(256),
            crop(224, 224),
            IMAGENET_STANDARD,
            IMAGENET_STANDARD,
        ),
        (
            "MobileNetV2ImageProcessor",
            ResampleFilter::Bilinear,
            shortest(256),
            crop(224, 224),
            IMAGENET_STANDARD,
            IMAGENET_STANDARD,
        ),
        (
            "PvtImageProcessor",
            ResampleFilter::Bicubic,
            exact(224, 224),
            None,
            IMAGENET_DEFAULT_MEAN,
            IMAGENET_DEFAULT_STD,
        ),
        (
            "SiglipImageProcessor",
            ResampleFilter::Bicubic,
            exact(224, 224),
            None,
            IMAGENET_STANDARD,
            IMAGENET_STANDARD,
        ),
        (
            "SegformerImageProcessor",
            ResampleFilter::Bilinear,
            exact(512, 512),
            None,
            IMAGENET_DEFAULT_MEAN,
            IMAGENET_DEFAULT_STD,
        ),
        (
            "Gemma3ImageProcessor",
            ResampleFilter::Bilinear,
            exact(224, 224),
            None,
            IMAGENET_STANDARD,
            IMAGENET_STANDARD,
        ),
    ];
    for (class, resample, size, cropped, mean, std) in cases {
        let spec = spec(json!({"image_processor_type": class}))?;
        assert_steps(&spec, class, resample, size, cropped);
        assert_normalized(&spec, RESCALE, mean, std);
    }
    // Segformer and Gemma3 have no crop step, so do_center_crop does nothing.
    let segformer = spec(
        json!({"image_processor_type": "SegformerImageProcessor", "do_center_crop": true, "crop_size": 100}),
    )?;
    assert_eq!(segformer.crop, None);
    Ok(())
}

#[test]
fn the_class_comes_from_model_type_when_the_file_names_none() -> TestResult {
    let file = json!({"size": {"shortest_edge": 224}, "crop_pct": 0.875});
    let resnet = read(&file, &json!({"model_type": "resnet"}))?.spec(ResizeMode::Pil)?;
    assert_steps(&resnet, "ConvNextImageProcessor", ResampleFilter::Bicubic, shortest(256), crop(224, 224));
    let swin = read(&json!({}), &json!({"model_type": "swin"}))?;
    assert_eq!(swin.class(), "ViTImageProcessor");
    let dinov2 = read(&json!({}), &json!({"model_type": "dinov2"}))?;
    assert_eq!(dinov2.class(), "BitImageProcessor");
    let unknown =
        read(&json!({}), &json!({"model_type": "dinov2_with_registers"})).err().map(|e| e.to_string());
    let unknown = unknown.unwrap_or_default();
    assert!(unknown.contains("config.json") && unknown.contains("dinov2_with_registers"), "{unknown}");
    let nothing = read(&json!({}), &json!({})).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(nothing.contains("names no image processor"), "{nothing}");
    Ok(())
}

#[test]
fn a_missing_file_means_vit_defaults_at_the_config_image_size() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("preprocessor_config.json");
    let config_path = dir.path().join("config.json");
    let square =
        ImageProcessor::read(&missing, &json!({"model_type": "vit", "image_size": 32}), &config_path)?;
    let spec = square.spec(ResizeMode::Pil)?;
    assert_steps(&spec, "ViTImageProcessor", ResampleFilter::Bilinear, exact(32, 32), None);
    assert_normalized(&spec, RESCALE, IMAGENET_STANDARD, IMAGENET_STANDARD);
    let pair = ImageProcessor::read(&missing, &json!({"image_size": [32, 48]}), &config_path)?;
    assert_eq!(pair.spec(ResizeMode::Pil)?.size, exact(32, 48));
    let absent = ImageProcessor::read(&missing, &json!({}), &config_path)?;
    assert_eq!(absent.spec(ResizeMode::Pil)?.size, exact(224, 224));
    let bad = ImageProcessor::read(&missing, &json!({"image_size": "big"}), &config_path).err();
    let bad = bad.map(|e| e.to_string()).unwrap_or_default();
    assert!(bad.contains("config.json") && bad.contains("image_size"), "{bad}");
    Ok(())
}

#[test]
fn the_processor_size_wins_over_the_config_image_size() -> TestResult {
    let file = json!({"image_processor_type": "ViTImageProcessor", "size": {"height": 64, "width": 64}});
    let spec = read(&file, &json!({"image_size": 224}))?.spec(ResizeMode::Pil)?;
    assert_eq!(spec.output_size(), Some((64, 64)));
    Ok(())
}

#[test]
fn settings_forms_transformers_accepts() -> TestResult {
    // Scalar mean and std apply to every channel.
    let scalar =
        spec(json!({"image_processor_type": "ViTImageProcessor", "image_mean": 0.25, "image_std": 0.5}))?;
    assert_normalized(&scalar, RESCALE, [0.25; 3], [0.5; 3]);
    // No rescale and no normalization: raw u8 values.
    let raw = spec(
        json!({"image_processor_type": "ViTImageProcessor", "do_rescale": false, "do_normalize": false}),
    )?;
    assert_affine(&raw, [1.0; 3], [0.0; 3]);
    // A [height, width] list.
    assert_eq!(
        spec(json!({"image_processor_type": "ViTImageProcessor", "size": [30, 40]}))?.size,
        exact(30, 40)
    );
    // default_to_square from the file turns a bare int into a shortest edge.
    let edge = spec(json!({
        "image_processor_type": "ViTImageProcessor", "size": 256, "default_to_square": false,
        "do_center_crop": true, "crop_size": 224
    }))?;
    assert_eq!((edge.size, edge.crop), (shortest(256), crop(224, 224)));
    // Every Pillow filter transformers accepts, by its Pillow number.
    let filters = [
        ResampleFilter::Nearest,
        ResampleFilter::Lanczos,
        ResampleFilter::Bilinear,
        ResampleFilter::Bicubic,
        ResampleFilter::Box,
        ResampleFilter::Hamming,
    ];
    for (number, filter) in filters.into_iter().enumerate() {
        let spec = spec(json!({"image_processor_type": "ViTImageProcessor", "resample": number}))?;
        assert_eq!(spec.resample, filter, "resample {number}");
    }
    // A pad to the size the images already have is no step.
    let padded =
        spec(json!({"image_processor_type": "DeiTImageProcessor", "do_pad": true, "pad_size": 224}))?;
    assert_eq!(padded.crop, crop(224, 224));
    Ok(())
}

#[test]
fn tf_resize_takes_only_an_exact_bilinear_resize() -> TestResult {
    let vit = read(&json!({"image_processor_type": "ViTImageProcessor", "size": 64}), &json!({}))?;
    let spec = vit.spec(ResizeMode::Tf)?;
    assert_eq!(
        (spec.decoder, spec.exif_orientation, spec.resize),
        (Decoder::Tensorflow, false, ResizeMode::Tf)
    );
    assert_eq!((spec.size, spec.resample, spec.crop), (exact(64, 64), ResampleFilter::Bilinear, None));
    let deit = read(&json!({"image_processor_type": "DeiTImageProcessor", "resample": 2}), &json!({}))?;
    let cropped = deit.spec(ResizeMode::Tf).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        cropped.contains("--resize tf") && cropped.contains("resizes to 256x256 then centre-crops 224x224"),
        "{cropped}"
    );
    let bit = read(&json!({"image_processor_type": "BitImageProcessor", "resample": 2}), &json!({}))?;
    let edge = bit.spec(ResizeMode::Tf).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(edge.contains("resizes the shortest edge to 224"), "{edge}");
    let pvt = read(&json!({"image_processor_type": "PvtImageProcessor"}), &json!({}))?;
    let bicubic = pvt.spec(ResizeMode::Tf).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(bicubic.contains("Bicubic") && bicubic.contains("--resize pil"), "{bicubic}");
    // The same processor is fine with PIL resizing.
    assert_eq!(pvt.spec(ResizeMode::Pil)?.resample, ResampleFilter::Bicubic);
    Ok(())
}

#[test]
fn classes_an_artifact_cannot_express_are_refused_with_the_reason() {
    let cases = [
        (json!({"image_processor_type": "ImageGPTImageProcessor"}), "colour-cluster ids"),
        (json!({"image_processor_type": "Siglip2ImageProcessor"}), "patch budget"),
        (json!({"image_processor_type": "PPLCNetImageProcessor"}), "torchvision backend"),
        (json!({"image_processor_type": "TimmWrapperImageProcessor"}), "timm"),
        (json!({"image_processor_type": "YolosImageProcessor"}), "YolosImageProcessor is not one kiln knows"),
        (json!({"feature_extractor_type": "ViTHybridFeatureExtractor"}), "ViTHybridImageProcessor"),
        (json!({"image_processor_type": "PerceiverImageProcessor"}), "before resizing"),
        (json!({"image_processor_type": "DonutImageProcessor"}), "do_thumbnail"),
        (json!({"image_processor_type": "TextNetImageProcessor"}), "size_divisor 32"),
        (json!({"image_processor_type": "Gemma3ImageProcessor", "do_pan_and_scan": true}), "do_pan_and_scan"),
        (json!({"auto_map": {"AutoImageProcessor": "x.MyProcessor"}}), "custom image processor code"),
    ];
    for (file, expected) in cases {
        let message = refusal(file.clone());
        assert!(message.contains(expected), "{file}: {message}");
        assert!(message.contains("preprocessor_config.json"), "{message} names no file");
    }
}

#[test]
fn expressible_corners_of_otherwise_refused_classes() -> TestResult {
    let perceiver =
        spec(json!({"image_processor_type": "PerceiverImageProcessor", "do_center_crop": false}))?;
    assert_steps(&perceiver, "PerceiverImageProcessor", ResampleFilter::Bicubic, exact(224, 224), None);
    assert_normalized(&perceiver, RESCALE, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD);
    let textnet = spec(json!({
        "image_processor_type": "TextNetImageProcessor", "size_divisor": 1, "do_center_crop": true
    }))?;
    assert_steps(&textnet, "TextNetImageProcessor", ResampleFilter::Bilinear, shortest(640), crop(224, 224));
    // Donut without thumbnail, padding or rotation: shortest edge to min(height, width); a list size is
    // [width, height].
    let donut = spec(json!({
        "image_processor_type": "DonutImageProcessor", "do_thumbnail": false, "do_pad": false,
        "size": [1920, 2560], "do_center_crop": true, "crop_size": {"height": 2560, "width": 1920}
    }))?;
    assert_steps(&donut, "DonutImageProcessor", ResampleFilter::Bilinear, shortest(1920), crop(2560, 1920));
    Ok(())
}

#[test]
fn settings_that_change_pixels_unknowably_are_refused_naming_the_key() {
    let cases = [
        (
            json!({"image_processor_type": "ViTImageProcessor", "crop_pct": 0.9}),
            "crop_pct is not a setting kiln knows for ViTImageProcessor",
        ),
        (
            json!({"image_processor_type": "ViTImageProcessor", "keep_aspect_ratio": true}),
            "keep_aspect_ratio",
        ),
        (json!({"image_processor_type": "ViTImageProcessor", "do_resize": false}), "do_resize is false"),
        (json!({"image_processor_type": "ViTImageProcessor", "resample": 6}), "resample 6"),
        (json!({"image_processor_type": "ViTImageProcessor", "image_std": [0.5, 0.0, 0.5]}), "image_std"),
        (
            json!({"image_processor_type": "ViTImageProcessor", "image_mean": [0.5, 0.5]}),
            "image_mean has 2 values",
        ),
        (
            json!({"image_processor_type": "ViTImageProcessor", "size": {"height": 0, "width": 10}}),
            "positive integer",
        ),
        (
            json!({"image_processor_type": "ViTImageProcessor", "size": {"max_height": 10, "max_width": 10}}),
            "sizes vary",
        ),
        (
            json!({"image_processor_type": "ViTImageProcessor", "size": {"longest_edge": 10}}),
            "longest_edge: 10",
        ),
        (json!({"image_processor_type": "ViTImageProcessor", "do_rescale": "yes"}), "do_rescale is \"yes\""),
        (json!({"image_processor_type": "SiglipImageProcessor", "size": 224}), "vary in size"),
        (json!({"image_processor_type": "DeiTImageProcessor", "do_pad": true, "pad_size": 256}), "pad_size"),
        (
            json!({"image_processor_type": "DeiTImageProcessor", "crop_size": {"shortest_edge": 3}}),
            "crop_size",
        ),
        (
            json!({"image_processor_type": "ConvNextImageProcessor", "size": {"height": 224, "width": 224}}),
            "resizes by a shortest edge",
        ),
        (
            json!({"image_processor_type": "ConvNextImageProcessor", "size": 224, "crop_pct": -1.0}),
            "crop_pct is -1",
        ),
    ];
    for (file, expected) in cases {
        let message = refusal(file.clone());
        assert!(message.contains(expected), "{file}: {message}");
        assert!(message.contains("preprocessor_config.json"), "{message} names no file");
    }
}

/// Every tiny fixture checkpoint's `preprocessor_config.json` gives a spec; the output sizes are what
/// transformers' own processor (PIL backend) returns for a 37x53 and a 90x61 image (`pixel_values.shape`).
#[test]
fn every_fixture_parses_to_a_spec() -> TestResult {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models");
    let expected_output = [
        ("odd-vit", (40, 40)),
        ("tiny-vit", (64, 64)),
        ("tiny-beit", (48, 48)),
        ("tiny-bit", (32, 32)),
        ("tiny-convnext", (56, 56)),
        ("tiny-convnextv2", (36, 36)),
        ("tiny-deit", (40, 40)),
        ("tiny-dinov2", (32, 40)),
        ("tiny-efficientnet", (42, 42)),
        ("tiny-levit", (48, 48)),
        ("tiny-mobilenetv2", (34, 34)),
        ("tiny-mobilevit", (64, 64)),
        ("tiny-poolformer", (40, 40)),
        ("tiny-regnet", (44, 44)),
        ("tiny-resnet", (64, 64)),
        ("tiny-swin", (48, 48)),
    ];
    let mut checked = 0;
    for entry in std::fs::read_dir(&models)? {
        let dir = entry?.path();
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            continue;
        }
        let config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path)?)?;
        let processor = ImageProcessor::read(&dir.join("preprocessor_config.json"), &config, &config_path)?;
        let spec = processor.spec(ResizeMode::Pil)?;
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let size = spec.output_size().ok_or(format!("{name}: no fixed output size"))?;
        if let Some((_, expected)) = expected_output.iter().find(|(fixture, _)| *fixture == name) {
            assert_eq!(size, *expected, "{name}: {spec:?}");
        }
        checked += 1;
    }
    assert!(checked >= expected_output.len(), "only {checked} fixtures found in {}", models.display());
    Ok(())
}
