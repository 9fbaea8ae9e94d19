//! REST predict bodies: JSON parsing, the row and columnar layouts, `{"b64": ...}` objects and the
//! signature checks (`serve::predict_body_instances`), without a socket or a model.

#![no_main]

use std::sync::LazyLock;

use artifact::Manifest;
use libfuzzer_sys::fuzz_target;

static MANIFEST: LazyLock<Manifest> = LazyLock::new(kiln_fuzz::string_input_manifest);

fuzz_target!(|body: &[u8]| {
    if let Err(error) = serve::predict_body_instances(body, &MANIFEST) {
        // Every refusal is the client's fault: a 4xx, never an internal error.
        assert!(error.http_status().is_client_error(), "{error:?}");
    }
});
