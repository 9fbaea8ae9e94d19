//! `#[serde(default = ...)]` values shared by the families' configs: transformers' defaults that several
//! config classes have in common (ViT-B's shape), written once.

/// A count: `#[serde(default = "defaults::count::<768>")]`.
pub fn count<const N: usize>() -> usize {
    N
}

/// `hidden_act`'s default in every ViT-family config.
pub fn gelu() -> String {
    "gelu".into()
}

/// A flag that defaults on (`qkv_bias`, `use_mean_pooling`).
pub fn on() -> bool {
    true
}
