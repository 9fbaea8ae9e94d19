//! The protobuf codec of kiln's gRPC services: tonic_prost's, except that a body that does not decode
//! as the expected message is the client's error.
//!
//! tonic_prost answers INTERNAL for a body that is not protobuf (grpc's status-code guide files parse
//! failures there), which tells the client the server broke; nothing the server does can fix such a
//! request, so kiln answers INVALID_ARGUMENT naming the message type and what prost found wrong.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The codec `build.rs` puts in every generated service and client (`codec_path`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ProtobufCodec<T, U> {
    types: PhantomData<(T, U)>,
}

impl<T, U> Codec for ProtobufCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtobufDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtobufDecoder(ProstDecoder::default())
    }
}

/// tonic_prost's decoder with its parse failures turned into INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub(crate) struct ProtobufDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for ProtobufDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            Status::invalid_argument(format!(
                "the message is not a valid protobuf {}: {}",
                message_name::<U>(),
                status.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The message type's own name (`PredictRequest`), without its Rust module path.
fn message_name<U>() -> &'static str {
    let path = std::any::type_name::<U>();
    path.rsplit("::").next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tensorflow::serving::PredictRequest;

    #[test]
    fn message_names_drop_the_module_path() {
        assert_eq!(message_name::<PredictRequest>(), "PredictRequest");
    }
}
