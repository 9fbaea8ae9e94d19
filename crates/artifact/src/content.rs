//! The content digest: one sha256 naming what an artifact holds, so two exports of the same inputs can be
//! recognised as the same artifact even when they were made at different times.
//!
//! It is the sha256 of the manifest as stored, in RFC 8785 canonical JSON, with `provenance.created_unix`
//! left out. The manifest lists every other file by its sha256, so the one hash covers them too. Canonical
//! JSON (not the stored bytes) keeps it a property of the content: another writer's whitespace or key
//! order does not change it, and any RFC 8785 implementation recomputes it (`FORMAT.md` shows how).

use serde_json::Value;

use crate::digest::sha256_bytes;

/// The member of `provenance` the content digest leaves out: when the export ran is not what it holds.
const EXCLUDED_PROVENANCE_FIELD: &str = "created_unix";

/// Lowercase hex content digest of a manifest parsed from the bytes as stored (not re-serialized from
/// [`crate::Manifest`]: an `f32` widened to `f64` prints differently from the decimal that was written).
pub(crate) fn content_digest(manifest: &Value) -> String {
    let mut content = manifest.clone();
    if let Some(provenance) = content.get_mut("provenance").and_then(Value::as_object_mut) {
        provenance.remove(EXCLUDED_PROVENANCE_FIELD);
    }
    let mut canonical = String::new();
    write_canonical(&content, &mut canonical);
    sha256_bytes(canonical.as_bytes())
}

/// Appends `value` in RFC 8785 (JSON Canonicalization Scheme) form: no whitespace, object members sorted
/// by their names' UTF-16 code units, strings escaped as ECMAScript's `JSON.stringify` does, numbers as
/// ECMAScript prints an IEEE double.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        // JSON numbers are IEEE doubles in RFC 8785; every integer a manifest holds is far below 2^53.
        Value::Number(n) => write_number(n.as_f64().unwrap_or(f64::NAN), out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, (name, member)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(name, out);
                out.push(':');
                write_canonical(member, out);
            }
            out.push('}');
        }
    }
}

/// A string as `JSON.stringify` writes it: `"` and `\` escaped, the control characters below U+0020 as
/// `\b \t \n \f \r` or `\u00xx` (lowercase hex), everything else as is.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A double as ECMAScript's `Number.prototype.toString` prints it (ECMA-262, Number::toString): the
/// shortest digits that read back to the same double, in plain notation for decimal exponents from -6 to
/// 20 and as `d.ddde±x` outside. A parsed JSON number is always finite.
fn write_number(value: f64, out: &mut String) {
    if value == 0.0 || !value.is_finite() {
        // -0 prints as 0; a non-finite value cannot come from JSON text.
        out.push('0');
        return;
    }
    if value < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` prints the shortest round-tripping digits, `d.ddde<x>` or `de<x>`.
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exponent: i32 = exponent.parse().unwrap_or(0);
    // ECMA-262's k (number of digits) and n (position of the decimal point).
    let (k, n) = (digits.len() as i32, exponent + 1);
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        let (whole, fraction) = digits.split_at(n as usize);
        out.push_str(whole);
        out.push('.');
        out.push_str(fraction);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push('e');
        out.push(if n - 1 < 0 { '-' } else { '+' });
        out.push_str(&(n - 1).abs().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(json: &str) -> Result<String, serde_json::Error> {
        let mut out = String::new();
        write_canonical(&serde_json::from_str(json)?, &mut out);
        Ok(out)
    }

    /// RFC 8785's own examples (section 3.2.2 and appendix B), which every implementation must reproduce.
    #[test]
    fn canonical_json_matches_the_rfc_examples() -> Result<(), serde_json::Error> {
        let numbers = "[56, 1E30, 4.50, 2e-3, 0.000001, 1e-7, 333333333.33333329, 1e21, 1e20, -0.0, \
                       9007199254740992, 295147905179352830000, 0.1, 123456789012345680000]";
        assert_eq!(
            canonical(numbers)?,
            "[56,1e+30,4.5,0.002,0.000001,1e-7,333333333.3333333,1e+21,100000000000000000000,0,\
             9007199254740992,295147905179352830000,0.1,123456789012345680000]"
        );
        assert_eq!(
            canonical(r#"{"literals": [null, true, false], "string": "€$\u000f\nA'B\"\\\\\"/"}"#)?,
            r#"{"literals":[null,true,false],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        // Sorted by UTF-16 code units: U+1F600 (a surrogate pair, 0xD83D...) sorts before U+FB33.
        assert_eq!(
            canonical(r#"{"\ufb33": 1, "\ud83d\ude00": 2, "\u0080": 3, "1": 4, "\r": 5, "ö": 6}"#)?,
            "{\"\\r\":5,\"1\":4,\"\u{80}\":3,\"ö\":6,\"\u{1f600}\":2,\"\u{fb33}\":1}"
        );
        Ok(())
    }

    #[test]
    fn floats_print_as_ecmascript_does() {
        let cases: [(f64, &str); 12] = [
            (1.0, "1"),
            (-1.5, "-1.5"),
            (0.007843137718737125, "0.007843137718737125"),
            (0.007843138, "0.007843138"),
            (1e-6, "0.000001"),
            (1.5e-7, "1.5e-7"),
            (123e18, "123000000000000000000"),
            (1.25e21, "1.25e+21"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (-0.0, "0"),
            (1_764_000_000.0, "1764000000"),
        ];
        for (value, expected) in cases {
            let mut out = String::new();
            write_number(value, &mut out);
            assert_eq!(out, expected, "{value:e}");
        }
    }

    #[test]
    fn the_digest_ignores_created_unix_whitespace_and_key_order_only() -> Result<(), serde_json::Error> {
        let stored = r#"{"labels": ["a", "b"], "provenance": {"exporter": "x", "created_unix": 1}}"#;
        let reordered =
            "{\"provenance\":{\"created_unix\":2,\n \"exporter\":\"x\"},\"labels\":[\"a\",\"b\"]}";
        let digest = content_digest(&serde_json::from_str(stored)?);
        assert_eq!(digest, content_digest(&serde_json::from_str(reordered)?));
        assert_eq!(digest, sha256_bytes(br#"{"labels":["a","b"],"provenance":{"exporter":"x"}}"#));
        let relabelled = r#"{"labels": ["b", "a"], "provenance": {"exporter": "x", "created_unix": 1}}"#;
        assert_ne!(digest, content_digest(&serde_json::from_str(relabelled)?));
        // Only provenance's created_unix is left out, not a member of that name elsewhere.
        let elsewhere = r#"{"labels": ["a", "b"], "provenance": {"exporter": "x"}, "created_unix": 1}"#;
        assert_ne!(digest, content_digest(&serde_json::from_str(elsewhere)?));
        Ok(())
    }
}
