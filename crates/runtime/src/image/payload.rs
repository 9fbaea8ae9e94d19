//! From one input string to image bytes: raw bytes of a format kiln decodes pass through, anything else
//! is base64.
//!
//! TF Serving's seed model ran `tf.io.decode_base64` (URL-safe alphabet, padding optional) on the string,
//! while REST clients often send the standard alphabet. Accepting both alphabets, optional padding and
//! embedded whitespace (MIME-style line breaks) makes kiln a strict superset of the seed: every string the
//! seed accepted decodes to the same bytes here.

use std::borrow::Cow;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{DecodeError, Engine as _};

use super::InstanceError;
use super::decode::{ImageFormat, unsupported_format};

/// Standard-alphabet decoder that takes padding or its absence and ignores non-zero trailing bits, as
/// `tf.io.decode_base64` does; URL-safe symbols are mapped onto this alphabet before decoding.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The encoded image inside `input`: borrowed when the input already is image bytes, decoded
/// from base64 otherwise. Errors name the byte offset in `input` of the first character that is wrong.
pub(super) fn image_bytes(input: &[u8]) -> Result<Cow<'_, [u8]>, InstanceError> {
    if input.is_empty() {
        return Err(InstanceError::Empty);
    }
    if ImageFormat::sniff(input).is_some() {
        return Ok(Cow::Borrowed(input));
    }
    match decode_base64(input) {
        Ok(bytes) if bytes.is_empty() => Err(InstanceError::Empty),
        Ok(bytes) => Ok(Cow::Owned(bytes)),
        // Raw bytes of a format we do not take (AVIF, QOI, ...) are not base64 either; naming the format
        // is more helpful than pointing at the first binary byte.
        Err(error) => match ::image::guess_format(input) {
            Ok(_) => Err(unsupported_format(input)),
            Err(_) => Err(error),
        },
    }
}

/// Decodes standard or URL-safe base64 (mixed freely), padded or not, skipping ASCII whitespace.
fn decode_base64(text: &[u8]) -> Result<Vec<u8>, InstanceError> {
    let symbols: Vec<u8> = text
        .iter()
        .filter(|byte| !byte.is_ascii_whitespace())
        .map(|&byte| match byte {
            b'-' => b'+',
            b'_' => b'/',
            other => other,
        })
        .collect();
    // The decoder reports where *it* stopped, which for binary input can be far past the first byte that
    // is not base64 at all; name that byte instead.
    let outside_alphabet = symbols
        .iter()
        .position(|&byte| !(byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'=')));
    if let Some(index) = outside_alphabet {
        return Err(invalid_symbol(text, text_offset(text, index)));
    }
    LENIENT.decode(&symbols).map_err(|error| match error {
        DecodeError::InvalidByte(index, _) | DecodeError::InvalidLastSymbol(index, _) => {
            invalid_symbol(text, text_offset(text, index))
        }
        DecodeError::InvalidLength(_) => {
            InstanceError::Base64Length { symbols: symbols.iter().filter(|&&s| s != b'=').count() }
        }
        DecodeError::InvalidPadding => {
            let offset = text.iter().position(|&byte| byte == b'=').unwrap_or(text.len() - 1);
            invalid_symbol(text, offset)
        }
    })
}

fn invalid_symbol(text: &[u8], offset: usize) -> InstanceError {
    InstanceError::InvalidBase64 { offset, byte: text[offset] }
}

/// Offset in `text` of the `index`-th non-whitespace byte: the decoder only saw those.
fn text_offset(text: &[u8], index: usize) -> usize {
    text.iter()
        .enumerate()
        .filter(|(_, byte)| !byte.is_ascii_whitespace())
        .nth(index)
        .map_or(text.len() - 1, |(offset, _)| offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Bytes whose base64 uses both alphabet-specific symbols: standard `+/`, URL-safe `-_`.
    const PAYLOAD: &[u8] = b"\xfb\xff\xbf\xfb\xef\xfe!";

    #[test]
    fn both_alphabets_with_and_without_padding_decode_to_the_same_bytes() -> TestResult {
        let standard = base64::engine::general_purpose::STANDARD.encode(PAYLOAD);
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode(PAYLOAD);
        assert!(standard.contains('+') && standard.contains('/') && standard.ends_with('='));
        assert!(url_safe.contains('-') && url_safe.contains('_'));
        for text in [
            standard.clone(),
            standard.trim_end_matches('=').to_owned(),
            url_safe.clone(),
            url_safe.trim_end_matches('=').to_owned(),
        ] {
            assert_eq!(decode_base64(text.as_bytes())?, PAYLOAD, "decoding {text}");
        }
        Ok(())
    }

    #[test]
    fn line_breaks_and_spaces_are_skipped() -> TestResult {
        let text = base64::engine::general_purpose::STANDARD.encode(PAYLOAD);
        let wrapped = format!("  {}\r\n{}\n\t{} \n", &text[..4], &text[4..9], &text[9..]);
        assert_eq!(decode_base64(wrapped.as_bytes())?, PAYLOAD);
        Ok(())
    }

    #[test]
    fn raw_jpeg_and_png_bytes_pass_through_unchanged() -> TestResult {
        for raw in [&b"\xff\xd8\xff\xe0 rest of a jpeg"[..], b"\x89PNG\r\n\x1a\n rest of a png"] {
            let bytes = image_bytes(raw)?;
            assert!(matches!(bytes, Cow::Borrowed(_)));
            assert_eq!(&*bytes, raw);
        }
        Ok(())
    }

    #[test]
    fn empty_and_whitespace_only_inputs_are_empty() {
        assert_eq!(image_bytes(b""), Err(InstanceError::Empty));
        assert_eq!(image_bytes(b" \r\n"), Err(InstanceError::Empty));
    }

    #[test]
    fn invalid_base64_names_the_offset_of_the_first_bad_character() {
        assert_eq!(image_bytes(b"QUJD\nRE*GRw"), Err(InstanceError::InvalidBase64 { offset: 7, byte: b'*' }));
        assert_eq!(
            image_bytes(b"QQ==QUJD").map_err(|error| error.to_string()),
            Err("invalid base64 at byte 2: unexpected '='".to_owned())
        );
    }

    #[test]
    fn a_dangling_final_symbol_is_a_length_error() {
        assert_eq!(image_bytes(b"QUJDR"), Err(InstanceError::Base64Length { symbols: 5 }));
    }

    #[test]
    fn random_binary_bytes_are_invalid_base64() {
        let random: Vec<u8> = (0u32..4096).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let first = random
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b"+/=-_".contains(&b) || b.is_ascii_whitespace()))
            .expect("random bytes contain a non-base64 byte");
        assert_eq!(
            image_bytes(&random),
            Err(InstanceError::InvalidBase64 { offset: first, byte: random[first] })
        );
    }

    #[test]
    fn raw_bytes_of_another_image_format_are_named() {
        assert_eq!(
            image_bytes(b"qoif\x00\x00\x00\x01\x00\x00\x00\x01\x03\x00").map_err(|error| error.to_string()),
            Err("unsupported image format qoi (JPEG, PNG, WebP, GIF, BMP and TIFF are accepted)".to_owned())
        );
    }
}
