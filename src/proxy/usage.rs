//! Token usage as a backend reports it: the top-level `usage` object of a JSON response, or of
//! an event of a stream (the usage chunk of `stream_options.include_usage`), found as the bytes
//! pass. Nothing is buffered but the `usage` object itself, so the relay is never delayed, and an
//! object split across body pieces is read whole.

use serde::Deserialize;

/// The tokens one response reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The fields of `usage` that are read; embeddings report no `completion_tokens`.
#[derive(Deserialize)]
struct UsageFields {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// A `usage` object larger than this is no usage report (OpenAI's, with its details, is a few
/// hundred bytes); it is skipped rather than held.
const MAX_USAGE_BYTES: usize = 4096;

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// One JSON document.
    Json,
    /// Server-sent events, each `data:` line a JSON document of its own. A line break outside a
    /// string ends a document: JSON strings cannot hold one, and OpenAI-style servers put each
    /// event's JSON on one line.
    EventStream,
}

/// Where the scanner is in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Outside any string.
    Structure,
    /// In a string; `key` is how many bytes of `usage` a top-level key has matched so far (none
    /// for other strings, and once a key differs).
    String { escape: bool, key: Option<u8> },
    /// After the top-level key `usage`, before its value.
    UsageValueNext,
}

const USAGE_KEY: &[u8] = b"usage";

/// The bytes outside strings that change the scanner's state: at depth 1 a `,` brings the next
/// key; deeper it does not. Line breaks end an event's document.
const TOP_STOPS: [bool; 256] = stops(b"\"{}[],\n\r");
const NESTED_STOPS: [bool; 256] = stops(b"\"{}[]\n\r");

const fn stops(bytes: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        table[bytes[i] as usize] = true;
        i += 1;
    }
    table
}

/// Reads the last `usage` of a body fed piece by piece (a stream that reports usage cumulatively
/// in every chunk ends with its totals).
#[derive(Debug, Clone)]
pub(crate) struct UsageScanner {
    framing: Framing,
    state: State,
    /// Nesting of objects and arrays; the top-level object's keys are at depth 1.
    depth: u32,
    /// The document is an object, so strings at depth 1 can be its keys.
    top_object: bool,
    /// At depth 1, the next string is a key.
    key_next: bool,
    /// The bytes of the `usage` object being read.
    captured: Option<Vec<u8>>,
    last: Option<Usage>,
}

impl UsageScanner {
    pub(crate) fn new(framing: Framing) -> Self {
        Self {
            framing,
            state: State::Structure,
            depth: 0,
            top_object: false,
            key_next: false,
            captured: None,
            last: None,
        }
    }

    /// The last usage read, if the body carried one.
    pub(crate) fn usage(&self) -> Option<Usage> {
        self.last
    }

    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.state == (State::String { escape: false, key: None }) && self.captured.is_none() {
                // The long runs of a body are string contents: skip to what can end them.
                let rest = &chunk[pos..];
                let end = match self.framing {
                    Framing::Json => memchr::memchr2(b'"', b'\\', rest),
                    Framing::EventStream => memchr::memchr3(b'"', b'\\', b'\n', rest),
                };
                match end {
                    Some(offset) => pos += offset,
                    None => return,
                }
            }
            if self.state == State::Structure && self.captured.is_none() {
                // Outside strings, numbers (an embedding's floats) and whitespace are most bytes.
                let stops = if self.depth >= 2 { &NESTED_STOPS } else { &TOP_STOPS };
                match chunk[pos..].iter().position(|&byte| stops[usize::from(byte)]) {
                    Some(offset) => pos += offset,
                    None => return,
                }
            }
            let byte = chunk[pos];
            pos += 1;
            if self.framing == Framing::EventStream && matches!(byte, b'\n' | b'\r') {
                // The event's document ended (or was cut short): the next one starts afresh.
                self.reset_document();
                continue;
            }
            self.capture(byte);
            self.step(byte);
        }
    }

    fn reset_document(&mut self) {
        self.state = State::Structure;
        self.depth = 0;
        self.top_object = false;
        self.key_next = false;
        self.captured = None;
    }

    fn capture(&mut self, byte: u8) {
        if let Some(captured) = &mut self.captured {
            if captured.len() == MAX_USAGE_BYTES {
                self.captured = None;
            } else {
                captured.push(byte);
            }
        }
    }

    fn step(&mut self, byte: u8) {
        match self.state {
            // An escaped key is never matched: no server escapes the letters of `usage`.
            State::String { escape: true, .. } => self.state = State::String { escape: false, key: None },
            State::String { escape: false, key } => match byte {
                b'\\' => self.state = State::String { escape: true, key },
                b'"' => {
                    let is_usage = key == Some(USAGE_KEY.len() as u8);
                    self.state = if is_usage { State::UsageValueNext } else { State::Structure };
                }
                _ => {
                    let key = key.filter(|&matched| USAGE_KEY.get(usize::from(matched)) == Some(&byte));
                    self.state = State::String { escape: false, key: key.map(|matched| matched + 1) };
                }
            },
            State::UsageValueNext => match byte {
                b':' | b' ' | b'\t' => {}
                b'{' => {
                    self.captured = Some(Vec::from([b'{']));
                    self.state = State::Structure;
                    self.structure(byte);
                }
                // `null` (a chunk before the usage chunk) or anything else: not a report.
                _ => {
                    self.state = State::Structure;
                    self.structure(byte);
                }
            },
            State::Structure => self.structure(byte),
        }
    }

    fn structure(&mut self, byte: u8) {
        match byte {
            b'"' => {
                let key = (self.depth == 1 && self.key_next).then_some(0);
                self.key_next = false;
                self.state = State::String { escape: false, key };
            }
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth == 1 {
                    self.top_object = byte == b'{';
                    self.key_next = self.top_object;
                }
            }
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 1 {
                    self.finish_capture();
                }
            }
            b',' => self.key_next = self.depth == 1 && self.top_object,
            _ => {}
        }
    }

    fn finish_capture(&mut self) {
        if let Some(captured) = self.captured.take() {
            if let Ok(fields) = serde_json::from_slice::<UsageFields>(&captured) {
                self.last =
                    Some(Usage { prompt_tokens: fields.prompt_tokens, completion_tokens: fields.completion_tokens });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(framing: Framing, pieces: &[&[u8]]) -> Option<Usage> {
        let mut scanner = UsageScanner::new(framing);
        for piece in pieces {
            scanner.feed(piece);
        }
        scanner.usage()
    }

    fn usage(prompt_tokens: u64, completion_tokens: u64) -> Option<Usage> {
        Some(Usage { prompt_tokens, completion_tokens })
    }

    #[test]
    fn the_top_level_usage_of_a_json_body_is_read() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"a \"usage\": {\"prompt_tokens\": 9}","usage":{"prompt_tokens":8}}}],
            "usage" : {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42,
                       "prompt_tokens_details": {"cached_tokens": 4}}}"#;
        assert_eq!(scanned(Framing::Json, &[body]), usage(12, 30));
        // Embeddings report prompt tokens only.
        assert_eq!(
            scanned(Framing::Json, &[br#"{"data":[],"usage":{"prompt_tokens":3,"total_tokens":3}}"#]),
            usage(3, 0)
        );
    }

    #[test]
    fn a_body_split_anywhere_reads_the_same() {
        let body: &[u8] =
            br#"{"choices":[{"text":"say \\\"hi\\\""}],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#;
        for split in 0..=body.len() {
            let (head, tail) = body.split_at(split);
            assert_eq!(scanned(Framing::Json, &[head, tail]), usage(5, 7), "split at {split}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scanned(Framing::Json, &bytes), usage(5, 7));
    }

    #[test]
    fn bodies_without_a_usage_object_report_none() {
        for body in [
            &br#"{"usage":null,"choices":[]}"#[..],
            br#"{"error":{"message":"usage: model is required"}}"#,
            br#"{"usages":{"prompt_tokens":1}}"#,
            br#"{"usage":{"prompt_tokens":"many"}}"#,
            br#"[{"usage":{"prompt_tokens":1}}]"#,
            b"not json {",
            b"",
        ] {
            assert_eq!(scanned(Framing::Json, &[body]), None, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn an_oversized_usage_object_is_skipped() {
        let padding = "x".repeat(MAX_USAGE_BYTES);
        let body = format!(r#"{{"usage":{{"prompt_tokens":1,"note":"{padding}"}}}}"#);
        assert_eq!(scanned(Framing::Json, &[body.as_bytes()]), None);
    }

    #[test]
    fn the_usage_chunk_of_a_stream_is_read_across_pieces() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"{\\\"usage\\\":\"}}],\"usage\":null}\n\n",
            ": keep-alive\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":4,\"total_tokens\":15}}\n\n",
            "data: [DONE]\n\n"
        )
        .as_bytes();
        for split in 0..=stream.len() {
            let (head, tail) = stream.split_at(split);
            assert_eq!(scanned(Framing::EventStream, &[head, tail]), usage(11, 4), "split at {split}");
        }
    }

    #[test]
    fn a_stream_reporting_usage_in_every_chunk_ends_with_its_totals() {
        let stream = b"data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n\
                       data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n";
        assert_eq!(scanned(Framing::EventStream, &[stream]), usage(3, 2));
    }

    #[test]
    fn a_broken_event_does_not_spoil_the_next() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"unterminated\n\n\
                       data: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":6}}\n\n";
        assert_eq!(scanned(Framing::EventStream, &[stream]), usage(2, 6));
        assert_eq!(scanned(Framing::EventStream, &[b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n"]), None);
    }
}
