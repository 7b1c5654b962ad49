//! What the stream-parser fuzz targets check, shared by the libFuzzer target
//! (`fuzz_targets/stream_parser.rs`) and the stable-Rust driver (`src/bin/stable_fuzz.rs`).
//!
//! A fuzz input is a control byte followed by the bytes fed to the parser.
//! Control bits: bit 0 selects the WebSocket framing (`StreamParser::new_framed`,
//! RFC 7395) instead of a TCP stream, bit 1 selects small limits (so the limit
//! paths are reached by short inputs), the rest seed how the input is chunked.
//! The seed corpus files therefore start with `0` (stream), `1` (framed), `2`
//! (stream, small limits) or `3` (framed, small limits).
//!
//! Checked for every input:
//! - no panic, in the stream parser or in `parse_element`;
//! - the outcome (events, then the error that ended them) is the same whether
//!   the input is fed in one chunk, one byte at a time, or in random chunks;
//! - every element the parser returns, serialised with `Element::to_xml` and
//!   parsed again, gives the same element (modulo the two documented
//!   properties of the serialiser, see [`as_serialised`]);
//! - when `parse_element` accepts the input, the framed parser returns exactly
//!   that one element.

use starling_xmpp::{
    ns, parse_element, Element, Limits, Node, ParseError, StreamEvent, StreamParser,
};

/// The events a parser produced, then the error that ended them, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<StreamEvent>,
    pub error: Option<ParseError>,
}

impl Outcome {
    /// A short description of how the parse ended, used by the stable driver as
    /// a crude novelty signal in place of coverage.
    pub fn signature(&self) -> String {
        match &self.error {
            Some(error) => {
                // The text up to the first detail (a position, a name) that would make every input new.
                let text = error.0.text.as_deref().unwrap_or("");
                let kind = text.split([':', '\'', '(']).next().unwrap_or("");
                format!(
                    "{} {kind} after {}",
                    error.condition(),
                    self.events.len().min(4)
                )
            }
            None => format!("ok after {}", self.events.len().min(4)),
        }
    }
}

/// Feed `chunks` the way a connection manager does: feed, then drain `next_event`.
pub fn run<'a>(mut parser: StreamParser, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut events = Vec::new();
    for chunk in chunks {
        if let Err(error) = parser.feed(chunk) {
            return Outcome {
                events,
                error: Some(error),
            };
        }
        loop {
            match parser.next_event() {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(error) => {
                    return Outcome {
                        events,
                        error: Some(error),
                    }
                }
            }
        }
    }
    Outcome {
        events,
        error: None,
    }
}

/// The small limits selected by control bit 1.
pub const SMALL_LIMITS: Limits = Limits {
    max_stanza_bytes: 512,
    max_depth: 4,
    max_attributes: 4,
};

/// Run every check on one fuzz input; panics when a property does not hold.
/// Returns the one-shot outcome.
pub fn check_stream_parser(data: &[u8]) -> Option<Outcome> {
    let (&control, input) = data.split_first()?;
    let framed = control & 1 == 1;
    let limits = if control & 2 == 2 {
        SMALL_LIMITS
    } else {
        Limits::default()
    };
    let new_parser = || {
        if framed {
            StreamParser::new_framed(limits)
        } else {
            StreamParser::new(limits)
        }
    };

    let one_shot = run(new_parser(), [input]);
    assert_eq!(
        run(new_parser(), input.chunks(1)),
        one_shot,
        "feeding one byte at a time changed the outcome"
    );
    let mut rng = XorShift::new(u64::from(control >> 2) << 32 ^ input.len() as u64);
    let chunks = random_chunks(input, &mut rng);
    assert_eq!(
        run(new_parser(), chunks),
        one_shot,
        "feeding random chunks changed the outcome"
    );

    for event in &one_shot.events {
        if let StreamEvent::Element(element) = event {
            check_round_trip(element, limits.max_depth);
        }
    }

    if let Ok(element) = parse_element(input, &limits) {
        let framed_outcome = run(StreamParser::new_framed(limits), [input]);
        assert_eq!(
            framed_outcome,
            Outcome {
                events: vec![StreamEvent::Element(element)],
                error: None
            }
        );
    }
    Some(one_shot)
}

/// Split `input` into chunks of random sizes, mostly tiny, sometimes large.
pub fn random_chunks<'a>(input: &'a [u8], rng: &mut XorShift) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let most = if rng.below(4) == 0 { 512 } else { 8 };
        let length = 1 + rng.below(most.min(rest.len()));
        let (chunk, tail) = rest.split_at(length);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

fn check_round_trip(element: &Element, max_depth: usize) {
    let xml = element.to_xml();
    // Serialising may add bytes (escapes, namespace declarations) and attributes
    // (a prefix declaration copied beside each attribute that uses it).
    let limits = Limits {
        max_stanza_bytes: usize::MAX,
        max_depth,
        max_attributes: usize::MAX,
    };
    let reparsed = match parse_element(xml.as_bytes(), &limits) {
        Ok(reparsed) => reparsed,
        Err(error) => panic!("the serialised element was rejected: {error}\n{xml}"),
    };
    assert_eq!(
        reparsed,
        as_serialised(element, ""),
        "the round trip changed the element\n{xml}"
    );
}

/// What `element.to_xml()` means when read back, given two properties of the
/// serialiser in `element.rs`: `jabber:client` and `jabber:server` count as one
/// namespace (a child in the other one gets no declaration, so it is read in its
/// parent's), and a carriage return in text is written raw, which XML reads as
/// a line feed (XML 1.0 section 2.11).
pub fn as_serialised(element: &Element, parent_namespace: &str) -> Element {
    let stanza_namespace = |namespace: &str| namespace == ns::CLIENT || namespace == ns::SERVER;
    let namespace = if stanza_namespace(element.namespace()) && stanza_namespace(parent_namespace) {
        parent_namespace
    } else {
        element.namespace()
    };
    let mut copy = Element::new(element.name(), namespace);
    for (name, value) in element.attrs() {
        copy.set_attr(name, value);
    }
    for node in element.nodes() {
        match node {
            Node::Element(child) => {
                copy.append_child(as_serialised(child, namespace));
            }
            Node::Text(text) => copy.append_text(text.replace('\r', "\n")),
        }
    }
    copy
}

/// A small deterministic random number generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed file passes the checks and ends the way its name says.
    #[test]
    fn seed_corpus_passes_and_ends_as_named() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/stream_parser");
        let mut count = 0;
        for entry in std::fs::read_dir(corpus).expect("corpus") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default()
                .to_string();
            let data = std::fs::read(&path).expect("seed");
            let outcome = check_stream_parser(&data).expect("control byte");
            let expect_error = name.starts_with("malformed") || name.starts_with("small_limits");
            assert_eq!(outcome.error.is_some(), expect_error, "{name}: {outcome:?}");
            count += 1;
        }
        assert!((10..=20).contains(&count), "{count} seeds");
    }
}
