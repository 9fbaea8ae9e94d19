//! A reader for the protobuf text format subset TF Serving's config files use.
//!
//! `--model_config_file`, `--batching_parameters_file` and `--monitoring_config_file` are text-format
//! protos (`model_config_list { config { name: 'vit' ... } }`). Generated prost types cannot read text
//! format, so this module parses the syntax into a small tree ([`TextMessage`]) and `config` maps that
//! tree onto typed structs, naming the line of every field it rejects.
//!
//! Supported: `#` comments; `name: scalar`; `name { ... }`, `name: { ... }` and `name < ... >`;
//! repeated fields by repetition or `name: [a, b]`; single- or double-quoted strings with C escapes;
//! optional `,` / `;` separators.

use std::fmt;

/// A parsed message: its fields in file order (repeated fields appear once per value).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct TextMessage {
    pub(crate) fields: Vec<TextField>,
}

/// One `name: value` or `name { ... }` occurrence.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TextField {
    pub(crate) name: String,
    /// 1-based line of the field name, for error messages.
    pub(crate) line: usize,
    pub(crate) value: TextValue,
}

/// The value of a field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TextValue {
    /// A quoted string, unescaped.
    Str(String),
    /// An unquoted token: a number, `true`/`false` or an enum name.
    Word(String),
    /// A nested message.
    Message(TextMessage),
}

impl fmt::Display for TextValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextValue::Str(s) => write!(f, "{s:?}"),
            TextValue::Word(w) => f.write_str(w),
            TextValue::Message(_) => f.write_str("a message"),
        }
    }
}

/// A syntax error at a 1-based line and column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) reason: String,
}

/// Parses a whole document (the top-level message's fields).
pub(crate) fn parse(text: &str) -> Result<TextMessage, SyntaxError> {
    let mut parser = Parser { chars: text.chars().collect(), pos: 0, line: 1, column: 1 };
    let message = parser.message(None)?;
    Ok(message)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    column: usize,
}

impl Parser {
    fn error(&self, reason: impl Into<String>) -> SyntaxError {
        SyntaxError { line: self.line, column: self.column, reason: reason.into() }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    /// Skips whitespace and `#` comments.
    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            if c == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.bump();
                }
            } else if c.is_whitespace() {
                self.bump();
            } else {
                break;
            }
        }
    }

    /// Fields until `close` (or end of input when `close` is `None`).
    fn message(&mut self, close: Option<char>) -> Result<TextMessage, SyntaxError> {
        let mut fields = Vec::new();
        loop {
            self.skip_space();
            match (self.peek(), close) {
                (None, None) => return Ok(TextMessage { fields }),
                (None, Some(c)) => {
                    return Err(self.error(format!("expected `{c}` before the end of the file")));
                }
                (Some(c), Some(close)) if c == close => {
                    self.bump();
                    return Ok(TextMessage { fields });
                }
                _ => {}
            }
            let line = self.line;
            let name = self.word().ok_or_else(|| self.error("expected a field name"))?;
            self.skip_space();
            let colon = self.peek() == Some(':');
            if colon {
                self.bump();
                self.skip_space();
            }
            match self.peek() {
                Some(open @ ('{' | '<')) => {
                    self.bump();
                    let inner = self.message(Some(if open == '{' { '}' } else { '>' }))?;
                    fields.push(TextField { name, line, value: TextValue::Message(inner) });
                }
                Some('[') if colon => {
                    self.bump();
                    for value in self.list()? {
                        fields.push(TextField { name: name.clone(), line, value });
                    }
                }
                _ if colon => {
                    let value = self.scalar()?;
                    fields.push(TextField { name, line, value });
                }
                _ => return Err(self.error(format!("expected `:` or `{{` after field `{name}`"))),
            }
            self.skip_space();
            if matches!(self.peek(), Some(',' | ';')) {
                self.bump();
            }
        }
    }

    /// `[a, b, ...]` after the opening bracket.
    fn list(&mut self) -> Result<Vec<TextValue>, SyntaxError> {
        let mut values = Vec::new();
        loop {
            self.skip_space();
            if self.peek() == Some(']') {
                self.bump();
                return Ok(values);
            }
            if !values.is_empty() {
                if self.peek() != Some(',') {
                    return Err(self.error("expected `,` or `]` in a list"));
                }
                self.bump();
                self.skip_space();
            }
            if self.peek() == Some('{') {
                self.bump();
                values.push(TextValue::Message(self.message(Some('}'))?));
            } else {
                values.push(self.scalar()?);
            }
        }
    }

    fn scalar(&mut self) -> Result<TextValue, SyntaxError> {
        match self.peek() {
            Some(quote @ ('"' | '\'')) => {
                // Adjacent string literals concatenate, as in C and protobuf.
                let mut text = self.string(quote)?;
                loop {
                    self.skip_space();
                    match self.peek() {
                        Some(q @ ('"' | '\'')) => text.push_str(&self.string(q)?),
                        _ => return Ok(TextValue::Str(text)),
                    }
                }
            }
            _ => self.word().map(TextValue::Word).ok_or_else(|| self.error("expected a value")),
        }
    }

    /// An unquoted token: identifier, number (with sign, dot, exponent) or enum name.
    fn word(&mut self) -> Option<String> {
        let mut word = String::new();
        while let Some(c) = self.peek() {
            let continues = c.is_ascii_alphanumeric()
                || matches!(c, '_' | '.' | '/')
                || (matches!(c, '-' | '+') && (word.is_empty() || word.ends_with(['e', 'E'])));
            if !continues {
                break;
            }
            word.push(c);
            self.bump();
        }
        (!word.is_empty()).then_some(word)
    }

    fn string(&mut self, quote: char) -> Result<String, SyntaxError> {
        self.bump();
        let mut text = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => return Err(self.error("unterminated string")),
                Some(c) if c == quote => return Ok(text),
                Some('\\') => {
                    let escaped = match self.bump() {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some(c @ ('\\' | '\'' | '"')) => c,
                        Some(c) => return Err(self.error(format!("unsupported escape `\\{c}`"))),
                        None => return Err(self.error("unterminated string")),
                    };
                    text.push(escaped);
                }
                Some(c) => text.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(w: &str) -> TextValue {
        TextValue::Word(w.into())
    }

    #[test]
    fn parses_nested_messages_lists_comments_and_both_quotes() -> Result<(), SyntaxError> {
        let doc = parse(
            "# a comment\nmodel_config_list {\n  config: { name: 'vit' base_path: \"/m/v\\\"it\" }\n}\n\
             allowed: [8, 16]; flag: true, neg: -1e-3\nangle < x: 1 >\n",
        )?;
        let names: Vec<&str> = doc.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["model_config_list", "allowed", "allowed", "flag", "neg", "angle"]);
        let TextValue::Message(list) = &doc.fields[0].value else { panic!("not a message") };
        let TextValue::Message(config) = &list.fields[0].value else { panic!("not a message") };
        assert_eq!(list.fields[0].line, 3);
        assert_eq!(config.fields[0].value, TextValue::Str("vit".into()));
        assert_eq!(config.fields[1].value, TextValue::Str("/m/v\"it".into()));
        assert_eq!(doc.fields[1].value, word("8"));
        assert_eq!(doc.fields[2].value, word("16"));
        assert_eq!(doc.fields[3].value, word("true"));
        assert_eq!(doc.fields[4].value, word("-1e-3"));
        assert_eq!(doc.fields[5].line, 6);
        Ok(())
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let err = parse("a {\n  b: 1\n").err();
        assert_eq!(
            err.map(|e| (e.line, e.reason)),
            Some((3, "expected `}` before the end of the file".into()))
        );
        let err = parse("x: 'open\n").err();
        assert_eq!(err.map(|e| e.reason), Some("unterminated string".into()));
        let err = parse("name 'v'").err();
        assert_eq!(err.map(|e| (e.line, e.column)), Some((1, 6)));
    }
}
