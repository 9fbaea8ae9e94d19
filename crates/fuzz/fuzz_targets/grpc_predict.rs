//! gRPC Predict requests: prost decoding of `PredictRequest` (TensorProto, ModelSpec, maps) and the
//! conversion of each input tensor into instance strings (`serve::string_instances`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use serve::proto::tensorflow::serving::PredictRequest;

/// The per-request instance limit the target passes (a server passes its queue's capacity): large
/// enough to exercise broadcasting, small enough that broadcasting any input stays within libFuzzer's
/// memory limit.
const MAX_INSTANCES: usize = 10_000;

fuzz_target!(|message: &[u8]| {
    let Ok(request) = PredictRequest::decode(message) else {
        return;
    };
    for (alias, tensor) in &request.inputs {
        if let Ok(instances) = serve::string_instances(alias, tensor, MAX_INSTANCES) {
            let dims = tensor.tensor_shape.as_ref().map(|shape| shape.dim.as_slice()).unwrap_or_default();
            assert_eq!(dims.len(), 1);
            assert_eq!(instances.len() as i64, dims[0].size);
        }
    }
});
