//! TF text-format config files: `--model_config_file`, `--batching_parameters_file` and
//! `--monitoring_config_file` (`serve::read_*`), through a real file as the server reads them.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &[u8]| {
    let path = kiln_fuzz::scratch_dir().join("config.pbtxt");
    std::fs::write(&path, text).expect("write the config file");
    if let Ok(models) = serve::read_model_config(&path) {
        assert!(!models.is_empty());
    }
    if let Ok(params) = serve::read_batching_parameters(&path) {
        assert!(params.max_batch_size > 0);
    }
    let _ = serve::read_monitoring_config(&path);
});
