//! The body's top-level `model`: what it names and where its value sits, found in one pass over
//! the bytes, which also checks that the body is JSON. Routing reads the name and the alias
//! rewrite replaces the bytes at the position, so the two cannot disagree about which `model` it
//! is: a top-level `model` sent twice is refused, since readers differ on which copy counts. The
//! same pass notes whether the request streams and sets `stream_options`, for
//! `usage.requestStreamUsage`.

use std::borrow::Cow;
use std::ops::Range;

/// The top-level `model` of a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelField<'a> {
    /// The model named, unescaped; borrowed from the body unless it has escapes.
    pub name: Cow<'a, str>,
    /// The bytes of its value in the body, quotes included.
    pub span: Range<usize>,
    /// The top-level `stream` is `true` (its last copy, as Python's and JavaScript's readers take it).
    pub streams: bool,
    /// The body has a top-level `stream_options`.
    pub has_stream_options: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelFieldError {
    #[error("the body is not valid JSON: {reason} at byte {offset}")]
    Syntax { offset: usize, reason: &'static str },
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("the body's `model` must be a string")]
    ModelNotAString,
    #[error("the body has a top-level `model` twice (at bytes {first} and {second}); send it once")]
    DuplicateModel { first: usize, second: usize },
    #[error("the body has no `model`: name the model to run")]
    MissingModel,
}

/// Finds the top-level `model` of `body`, checking that the whole body is one JSON value.
/// A `model` of `null` or `""` counts as missing.
pub fn locate(body: &[u8]) -> Result<ModelField<'_>, ModelFieldError> {
    let mut scanner = Scanner { bytes: body, pos: 0 };
    let top = scanner.document()?;
    if !top.is_object {
        return Err(ModelFieldError::NotAnObject);
    }
    match top.model {
        Some(Model::Named { name, span }) if !name.is_empty() => {
            Ok(ModelField { name, span, streams: top.streams, has_stream_options: top.has_stream_options })
        }
        _ => Err(ModelFieldError::MissingModel),
    }
}

/// What the top-level `model` key held.
enum Model<'a> {
    Named { name: Cow<'a, str>, span: Range<usize> },
    Null,
}

/// The top-level keys the scan reads the values of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TopKey {
    Model,
    Stream,
}

struct Document<'a> {
    is_object: bool,
    model: Option<Model<'a>>,
    streams: bool,
    has_stream_options: bool,
}

/// The containers open around the scanner's position.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Object,
    Array,
}

impl Open {
    fn close(self) -> u8 {
        match self {
            Self::Object => b'}',
            Self::Array => b']',
        }
    }
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// The content of a string, between its quotes.
struct RawString {
    content: Range<usize>,
    escaped: bool,
}

impl<'a> Scanner<'a> {
    fn error(&self, reason: &'static str) -> ModelFieldError {
        ModelFieldError::Syntax { offset: self.pos, reason }
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn next_byte(&mut self) -> Option<u8> {
        let byte = self.bytes.get(self.pos).copied();
        self.pos += usize::from(byte.is_some());
        byte
    }

    /// The whole body: one value, then only whitespace. Nesting is tracked on a stack of its own
    /// rather than by recursion, so no depth of nesting can exhaust the thread's stack.
    fn document(&mut self) -> Result<Document<'a>, ModelFieldError> {
        self.skip_whitespace();
        let mut document = Document {
            is_object: self.bytes.get(self.pos) == Some(&b'{'),
            model: None,
            streams: false,
            has_stream_options: false,
        };
        let mut open: Vec<Open> = Vec::new();
        // The next value is that of this top-level key.
        let mut value_of: Option<TopKey> = None;
        let mut first_model_at: Option<usize> = None;
        loop {
            // A value.
            self.skip_whitespace();
            let start = self.pos;
            let key = value_of.take();
            let model_value = key == Some(TopKey::Model);
            if key == Some(TopKey::Stream) {
                document.streams = self.bytes.get(self.pos..).is_some_and(|rest| rest.starts_with(b"true"));
            }
            match self.next_byte() {
                Some(byte @ (b'{' | b'[')) => {
                    if model_value {
                        return Err(ModelFieldError::ModelNotAString);
                    }
                    let container = if byte == b'{' { Open::Object } else { Open::Array };
                    open.push(container);
                    self.skip_whitespace();
                    if self.bytes.get(self.pos) == Some(&container.close()) {
                        self.pos += 1;
                        open.pop();
                    } else {
                        if container == Open::Object {
                            value_of = self.key(open.len() == 1, &mut first_model_at, &mut document)?;
                        }
                        continue;
                    }
                }
                Some(b'"') => {
                    let raw = self.string()?;
                    if model_value {
                        let name = self.decode(&raw)?;
                        document.model = Some(Model::Named { name, span: start..self.pos });
                    }
                }
                Some(b'n') => {
                    self.literal(b"ull")?;
                    if model_value {
                        document.model = Some(Model::Null);
                    }
                }
                Some(byte @ (b't' | b'f' | b'-' | b'0'..=b'9')) => {
                    if model_value {
                        return Err(ModelFieldError::ModelNotAString);
                    }
                    match byte {
                        b't' => self.literal(b"rue")?,
                        b'f' => self.literal(b"alse")?,
                        _ => self.number(byte)?,
                    }
                }
                Some(_) => {
                    self.pos = start;
                    return Err(self.error("expected a value"));
                }
                None => return Err(self.error("the body ends where a value should begin")),
            }
            // After a value: close what it ends, up to the next value.
            loop {
                self.skip_whitespace();
                let Some(&container) = open.last() else {
                    if self.pos != self.bytes.len() {
                        return Err(self.error("unexpected text after the JSON value"));
                    }
                    return Ok(document);
                };
                match self.bytes.get(self.pos) {
                    Some(b',') => {
                        self.pos += 1;
                        if container == Open::Object {
                            self.skip_whitespace();
                            value_of = self.key(open.len() == 1, &mut first_model_at, &mut document)?;
                        }
                        break;
                    }
                    Some(&byte) if byte == container.close() => {
                        self.pos += 1;
                        open.pop();
                    }
                    _ if container == Open::Object => {
                        return Err(self.error("expected `,` or `}` after an object member"))
                    }
                    _ => return Err(self.error("expected `,` or `]` after an array element")),
                }
            }
        }
    }

    /// An object key and its `:`; says which top-level key it is, when its value is read.
    fn key(
        &mut self,
        top_level: bool,
        first_model_at: &mut Option<usize>,
        document: &mut Document<'a>,
    ) -> Result<Option<TopKey>, ModelFieldError> {
        let at = self.pos;
        self.expect(b'"', "expected a string as object key")?;
        let raw = self.string()?;
        let decoded;
        let name: &[u8] = match top_level {
            false => b"",
            true if raw.escaped => {
                decoded = self.decode(&raw)?;
                decoded.as_bytes()
            }
            true => self.bytes.get(raw.content.clone()).unwrap_or_default(),
        };
        self.skip_whitespace();
        self.expect(b':', "expected `:` after an object key")?;
        match name {
            b"model" => {
                if let Some(first) = *first_model_at {
                    return Err(ModelFieldError::DuplicateModel { first, second: at });
                }
                *first_model_at = Some(at);
                Ok(Some(TopKey::Model))
            }
            b"stream" => Ok(Some(TopKey::Stream)),
            b"stream_options" => {
                document.has_stream_options = true;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), ModelFieldError> {
        if self.bytes.get(self.pos) != Some(&byte) {
            return Err(self.error(reason));
        }
        self.pos += 1;
        Ok(())
    }

    /// A string, from after its opening quote to after its closing one, its escapes and UTF-8
    /// checked (not decoded).
    fn string(&mut self) -> Result<RawString, ModelFieldError> {
        let start = self.pos;
        let mut escaped = false;
        loop {
            self.skip_plain_string_bytes();
            match self.next_byte() {
                Some(b'"') => return Ok(RawString { content: start..self.pos - 1, escaped }),
                Some(b'\\') => {
                    escaped = true;
                    match self.next_byte() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                        Some(b'u') => {
                            self.hex4()?;
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.error("invalid escape in a string"));
                        }
                    }
                }
                Some(0..=0x1f) => {
                    self.pos -= 1;
                    return Err(self.error("control character in a string (escape it)"));
                }
                Some(_) => {
                    self.pos -= 1;
                    let width =
                        self.bytes.get(self.pos..).and_then(utf8_width).ok_or_else(|| self.error("invalid UTF-8"))?;
                    self.pos += width;
                }
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    /// Skips the bytes that stand for themselves in a string (printable ASCII but `"` and `\\`),
    /// a word at a time: the long text of a chat body is almost all such bytes.
    fn skip_plain_string_bytes(&mut self) {
        let word = |bytes: &[u8; 8]| stop_bytes(u64::from_le_bytes(*bytes));
        // Two words a turn while no stop byte is near: on long runs it halves the branches.
        while let Some((low, high)) =
            self.bytes.get(self.pos..).and_then(<[u8]>::first_chunk::<16>).map(|b| b.split_at(8))
        {
            let halves = low.first_chunk().zip(high.first_chunk());
            if halves.is_none_or(|(low, high)| word(low) | word(high) != 0) {
                break;
            }
            self.pos += 16;
        }
        while let Some(eight) = self.bytes.get(self.pos..).and_then(<[u8]>::first_chunk::<8>) {
            let stops = word(eight);
            if stops != 0 {
                // Read little-endian, the lowest flagged byte comes first.
                self.pos += (stops.trailing_zeros() / 8) as usize;
                return;
            }
            self.pos += 8;
        }
        while let Some(&byte) = self.bytes.get(self.pos) {
            if !(0x20..0x80).contains(&byte) || byte == b'"' || byte == b'\\' {
                return;
            }
            self.pos += 1;
        }
    }

    /// Four hex digits of a `\u` escape, as a code unit.
    fn hex4(&mut self) -> Result<u16, ModelFieldError> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or_else(|| self.error("unterminated \\u escape"))?;
        let mut unit = 0u16;
        for &digit in digits {
            let value = (digit as char).to_digit(16).ok_or_else(|| self.error("invalid \\u escape"))?;
            unit = unit << 4 | value as u16;
        }
        self.pos += 4;
        Ok(unit)
    }

    /// The text of a string already checked by [`Self::string`].
    fn decode(&self, raw: &RawString) -> Result<Cow<'a, str>, ModelFieldError> {
        let invalid = |reason| ModelFieldError::Syntax { offset: raw.content.start, reason };
        let bytes: &'a [u8] = self.bytes;
        let content = bytes.get(raw.content.clone()).ok_or(invalid("unterminated string"))?;
        if !raw.escaped {
            return std::str::from_utf8(content).map(Cow::Borrowed).map_err(|_| invalid("invalid UTF-8"));
        }
        let mut text = Vec::with_capacity(content.len());
        let mut units = Scanner { bytes: content, pos: 0 };
        while let Some(byte) = units.next_byte() {
            if byte != b'\\' {
                text.push(byte);
                continue;
            }
            let unescaped = match units.next_byte() {
                Some(b'b') => '\u{8}',
                Some(b'f') => '\u{c}',
                Some(b'n') => '\n',
                Some(b'r') => '\r',
                Some(b't') => '\t',
                Some(b'u') => {
                    let unit = units.hex4().map_err(|_| invalid("invalid \\u escape"))?;
                    let code = match unit {
                        0xd800..=0xdbff => {
                            let low = match (units.next_byte(), units.next_byte()) {
                                (Some(b'\\'), Some(b'u')) => units.hex4().map_err(|_| invalid("invalid \\u escape"))?,
                                _ => return Err(invalid("lone surrogate in a \\u escape")),
                            };
                            if !(0xdc00..=0xdfff).contains(&low) {
                                return Err(invalid("lone surrogate in a \\u escape"));
                            }
                            0x10000 + ((u32::from(unit) - 0xd800) << 10) + (u32::from(low) - 0xdc00)
                        }
                        0xdc00..=0xdfff => return Err(invalid("lone surrogate in a \\u escape")),
                        _ => u32::from(unit),
                    };
                    char::from_u32(code).ok_or_else(|| invalid("invalid \\u escape"))?
                }
                Some(other) => char::from(other),
                None => return Err(invalid("invalid escape in a string")),
            };
            text.extend_from_slice(unescaped.encode_utf8(&mut [0; 4]).as_bytes());
        }
        String::from_utf8(text).map(Cow::Owned).map_err(|_| invalid("invalid UTF-8"))
    }

    /// The rest of `true`, `false` or `null`, after its first letter.
    fn literal(&mut self, rest: &[u8]) -> Result<(), ModelFieldError> {
        if self.bytes.get(self.pos..self.pos + rest.len()) != Some(rest) {
            self.pos -= 1;
            return Err(self.error("expected a value"));
        }
        self.pos += rest.len();
        Ok(())
    }

    /// The rest of a number after its `first` byte: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self, first: u8) -> Result<(), ModelFieldError> {
        let leading = if first == b'-' { self.next_byte() } else { Some(first) };
        match leading {
            Some(b'0') => {}
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("expected a digit")),
        }
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            self.at_least_one_digit()?;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            self.at_least_one_digit()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
    }

    fn at_least_one_digit(&mut self) -> Result<(), ModelFieldError> {
        let start = self.pos;
        self.digits();
        if self.pos == start {
            return Err(self.error("expected a digit"));
        }
        Ok(())
    }
}

/// The high bit of each byte of `word` that ends a run of plain string bytes: one below 0x20 or
/// above 0x7f, a quote or a backslash. A borrow can flag a byte above a flagged one, never below
/// it, so the lowest flag is exact.
fn stop_bytes(word: u64) -> u64 {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x;
    let below_space = word.wrapping_sub(ONES * 0x20);
    (below_space | word | zero_bytes(word ^ (ONES * u64::from(b'"'))) | zero_bytes(word ^ (ONES * u64::from(b'\\'))))
        & HIGHS
}

/// The length of the UTF-8 sequence `bytes` begins with, if it is a valid one (RFC 3629: no
/// overlong forms, no surrogates, nothing past U+10FFFF).
fn utf8_width(bytes: &[u8]) -> Option<usize> {
    let continuation = |i: usize, range: std::ops::RangeInclusive<u8>| bytes.get(i).is_some_and(|b| range.contains(b));
    let tail = |from: usize, to: usize| (from..to).all(|i| continuation(i, 0x80..=0xbf));
    let width = match *bytes.first()? {
        0xc2..=0xdf => 2,
        0xe0 => 3 * usize::from(continuation(1, 0xa0..=0xbf)),
        0xe1..=0xec | 0xee..=0xef => 3 * usize::from(continuation(1, 0x80..=0xbf)),
        0xed => 3 * usize::from(continuation(1, 0x80..=0x9f)),
        0xf0 => 4 * usize::from(continuation(1, 0x90..=0xbf)),
        0xf1..=0xf3 => 4 * usize::from(continuation(1, 0x80..=0xbf)),
        0xf4 => 4 * usize::from(continuation(1, 0x80..=0x8f)),
        _ => 0,
    };
    (width > 0 && tail(if width == 2 { 1 } else { 2 }, width)).then_some(width)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(body: &[u8]) -> String {
        locate(body).unwrap().name.into_owned()
    }

    fn value(body: &[u8]) -> &[u8] {
        &body[locate(body).unwrap().span]
    }

    #[test]
    fn only_the_top_level_model_counts() {
        let body = br#"{"metadata":{"model":"a"},"tools":[{"model":"b"}],"messages":[{"content":"\"model\":\"c\""}],"model":"top"}"#;
        assert_eq!(name(body), "top");
        assert_eq!(value(body), br#""top""#);
        assert_eq!(name(br#"{"model":"first","x":{"model":"nested"}}"#), "first");
    }

    #[test]
    fn the_top_level_stream_flags_are_noted() {
        let flags = |body: &[u8]| {
            let field = locate(body).unwrap();
            (field.streams, field.has_stream_options)
        };
        assert_eq!(flags(br#"{"model":"m","stream":true}"#), (true, false));
        assert_eq!(flags(br#"{"stream" : true ,"model":"m","stream_options":{"include_usage":false}}"#), (true, true));
        assert_eq!(flags(br#"{"model":"m","stream":false}"#), (false, false));
        assert_eq!(flags(br#"{"model":"m","stream":"true"}"#), (false, false));
        assert_eq!(flags(br#"{"model":"m","stream":true,"stream":false}"#), (false, false));
        assert_eq!(flags(br#"{"model":"m","stream":true}"#), (true, false));
        assert_eq!(flags(br#"{"model":"m","x":{"stream":true,"stream_options":{}}}"#), (false, false));
    }

    #[test]
    fn escapes_in_the_key_and_the_value_are_read() {
        let body = br#"{"mod\u0065l":"m\u00e9ta\/llama \ud83e\udd99"}"#;
        assert_eq!(name(body), "méta/llama 🦙");
        assert_eq!(value(body), br#""m\u00e9ta\/llama \ud83e\udd99""#);
        assert_eq!(name(r#"{"model":"méta"}"#.as_bytes()), "méta");
        // Borrowed when there is nothing to unescape.
        assert!(matches!(locate(br#"{"model":"plain"}"#).unwrap().name, Cow::Borrowed("plain")));
    }

    #[test]
    fn whitespace_anywhere_json_allows_it() {
        let body = b" \r\n{ \t\"stream\" :\ttrue ,\r\n  \"model\"\n:\r\n \"m\" \t}\n ";
        assert_eq!(name(body), "m");
        assert_eq!(value(body), b"\"m\"");
    }

    #[test]
    fn every_kind_of_value_is_scanned() {
        let body = br#"{"a":[1,-0.5e+3,0,2E7,true,false,null,[],{},"x",[{"y":[[]]}]],"b":{},"model":"m","c":-12.25}"#;
        assert_eq!(name(body), "m");
    }

    #[test]
    fn a_second_top_level_model_is_refused() {
        let error = locate(br#"{"model":"a","x":1,"model":"b"}"#).unwrap_err();
        assert_eq!(error, ModelFieldError::DuplicateModel { first: 1, second: 19 });
        // Escaped or null, a second one is still a second one; nested ones are not.
        assert!(matches!(locate(br#"{"model":"a","mod\u0065l":"b"}"#), Err(ModelFieldError::DuplicateModel { .. })));
        assert!(matches!(locate(br#"{"model":null,"model":"b"}"#), Err(ModelFieldError::DuplicateModel { .. })));
        assert_eq!(name(br#"{"model":"a","x":{"model":"b","model":"c"}}"#), "a");
    }

    #[test]
    fn missing_and_wrongly_typed_models() {
        use ModelFieldError::*;
        for (body, expected) in [
            (&br#"{"messages":[]}"#[..], MissingModel),
            (br#"{"model":""}"#, MissingModel),
            (br#"{"model":null}"#, MissingModel),
            (br#"{}"#, MissingModel),
            (br#"{"model":5}"#, ModelNotAString),
            (br#"{"model":["a"]}"#, ModelNotAString),
            (br#"{"model":{"id":"a"}}"#, ModelNotAString),
            (br#"{"model":true}"#, ModelNotAString),
            (br#"[{"model":"a"}]"#, NotAnObject),
            (br#""model""#, NotAnObject),
            (b"42", NotAnObject),
        ] {
            assert_eq!(locate(body).unwrap_err(), expected, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn malformed_json_is_a_syntax_error_with_its_offset() {
        let cases: &[&[u8]] = &[
            b"",
            b"   ",
            b"{",
            b"{not json",
            b"{\"model\"",
            b"{\"model\":",
            b"{\"model\":\"a\"",
            b"{\"model\":\"a\",}",
            b"{\"model\":\"a\"} x",
            b"{\"model\":\"a\"}}",
            b"{\"model\" \"a\"}",
            b"{\"model\":\"a\" \"b\":1}",
            b"{\"a\":[1,]}",
            b"{\"a\":[1 2]}",
            b"{\"a\":01}",
            b"{\"a\":1.}",
            b"{\"a\":1e}",
            b"{\"a\":-}",
            b"{\"a\":+1}",
            b"{\"a\":tru}",
            b"{\"a\":nul}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":\"\\u12\"}",
            b"{\"a\":\"\\u12g4\"}",
            b"{\"a\":\"line\nbreak\"}",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":\"\xc3\"}",
            b"{\"a\":\"\xed\xa0\x80\"}",
            b"{\"a\":\"\xc0\xaf\"}",
            b"{\"model\":\"\\ud800\"}",
            b"{\"model\":\"\\udc00x\"}",
            b"{\"model\":\"\\ud800\\u0041\"}",
            b"{1:2}",
            b"{\"a\":1 \xc3\xa9}",
            b"\xef\xbb\xbf{\"model\":\"a\"}",
        ];
        for body in cases {
            let error = locate(body).unwrap_err();
            assert!(
                matches!(error, ModelFieldError::Syntax { offset, .. } if offset <= body.len()),
                "{}: {error:?}",
                String::from_utf8_lossy(body)
            );
        }
        let message = locate(b"{\"model\":\"a\",}").unwrap_err().to_string();
        assert_eq!(message, "the body is not valid JSON: expected a string as object key at byte 13");
    }

    #[test]
    fn no_prefix_of_a_body_panics() {
        let body = "{\"a\":[1,-2.5e3,{\"b\":null}],\"mod\\u0065l\":\"m\\ud83e\\udd99é\",\"c\":\"\\\"\"}".as_bytes();
        assert_eq!(name(body), "m🦙é");
        for end in 0..body.len() {
            assert!(locate(&body[..end]).is_err(), "prefix {end}");
        }
        // Nesting far deeper than any recursion would survive.
        let deep = format!("{{\"model\":\"m\",\"x\":{}{}}}", "[".repeat(1_000_000), "]".repeat(1_000_000));
        assert_eq!(name(deep.as_bytes()), "m");
    }

    #[test]
    fn the_first_stop_byte_of_a_word_is_found_exactly() {
        let plain = *b"abcdefgh";
        assert_eq!(stop_bytes(u64::from_le_bytes(plain)), 0);
        for at in 0..8 {
            for stop in [0x00, 0x1f, b'"', b'\\', 0x80, 0xff] {
                // Stops and plain bytes (0x20, 0x7f included) above it must not move the first flag.
                for above in [0x00, 0x20, 0x21, b'"', 0x7f, 0xc3] {
                    let mut word = plain;
                    word[at] = stop;
                    word[at + 1..].fill(above);
                    let first = stop_bytes(u64::from_le_bytes(word)).trailing_zeros() / 8;
                    assert_eq!(first as usize, at, "{word:x?}");
                }
            }
        }
        assert_eq!(stop_bytes(u64::from_le_bytes(*b" ~\x7f!#[]}")), 0);
    }

    #[test]
    fn utf8_is_checked_as_rfc_3629_says() {
        for (bytes, width) in [
            (&b"\xc2\x80"[..], Some(2)),
            (b"\xe0\xa0\x80", Some(3)),
            (b"\xed\x9f\xbf", Some(3)),
            (b"\xf0\x90\x80\x80", Some(4)),
            (b"\xf4\x8f\xbf\xbf", Some(4)),
            (b"\xc1\xbf", None),
            (b"\xe0\x9f\x80", None),
            (b"\xed\xa0\x80", None),
            (b"\xf4\x90\x80\x80", None),
            (b"\xf5\x80\x80\x80", None),
            (b"\x80", None),
            (b"\xe1\x80", None),
        ] {
            assert_eq!(utf8_width(bytes), width, "{bytes:x?}");
        }
        // Every valid char agrees with std.
        for code in (0..0x11_0000).step_by(7).filter_map(char::from_u32) {
            let mut buffer = [0; 4];
            let encoded = code.encode_utf8(&mut buffer).as_bytes();
            if code as u32 >= 0x80 {
                assert_eq!(utf8_width(encoded), Some(encoded.len()), "{code:?}");
            }
        }
    }
}
