//! A lean client-side XML stream scanner (RFC 6120 section 4): it only finds
//! where each top-level element of the server's stream ends, and offers a few
//! byte-level look-ups (element name, attribute, text) over one element.
//!
//! It trusts the server: no well-formedness checks, no entity expansion. That
//! is what a load generator needs: it must cost far less than the server it
//! drives. The server's own parser (`starling-xmpp`) is the strict one.

use memchr::memmem;

/// What the scanner found next in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The `<stream:stream ...>` opening tag (byte range of the tag).
    StreamHeader(std::ops::Range<usize>),
    /// One complete top-level element: a stanza or a nonza.
    Element(std::ops::Range<usize>),
    /// `</stream:stream>`.
    StreamEnd,
}

/// A resumable scanner over a growing buffer. Positions are indexes into the
/// caller's buffer; [`Scanner::consumed`] says how much of it may be dropped.
#[derive(Debug, Default, Clone)]
pub struct Scanner {
    /// Next byte to look at.
    scan: usize,
    /// Open elements, the stream element included.
    depth: usize,
    /// Where the current top-level element starts (valid when depth >= 2).
    element_start: usize,
}

impl Scanner {
    pub fn new() -> Self {
        Scanner::default()
    }

    /// A scanner that is already inside a stream: every top-level element is
    /// an [`Event::Element`]. It splits a sequence of complete elements (what
    /// the generator writes) into one element per WebSocket message.
    pub fn inside_stream() -> Self {
        Scanner {
            depth: 1,
            ..Scanner::default()
        }
    }

    /// Forget everything (after STARTTLS or SASL success the stream restarts).
    pub fn reset(&mut self) {
        *self = Scanner::default();
    }

    /// How many leading bytes of the buffer are no longer needed.
    pub fn consumed(&self) -> usize {
        if self.depth >= 2 {
            self.element_start
        } else {
            self.scan
        }
    }

    /// Tell the scanner that the caller dropped `count` leading bytes.
    pub fn shift(&mut self, count: usize) {
        self.scan -= count;
        if self.depth >= 2 {
            self.element_start -= count;
        }
    }

    /// Drop the consumed prefix of `buffer` and shift the positions.
    pub fn compact(&mut self, buffer: &mut Vec<u8>) {
        let consumed = self.consumed();
        if consumed == 0 {
            return;
        }
        buffer.drain(..consumed);
        self.shift(consumed);
    }

    /// The next event, or `None` when more bytes are needed.
    pub fn next(&mut self, buffer: &[u8]) -> Option<Event> {
        loop {
            let rest = buffer.get(self.scan..)?;
            let lt = memchr::memchr(b'<', rest)?;
            let tag_start = self.scan + lt;
            let second = *buffer.get(tag_start + 1)?;
            match second {
                b'?' => {
                    let end = memmem::find(&buffer[tag_start..], b"?>")?;
                    self.scan = tag_start + end + 2;
                }
                b'!' => {
                    let tail = &buffer[tag_start..];
                    let (close, skip): (&[u8], usize) = if tail.starts_with(b"<![CDATA[") {
                        (b"]]>", 3)
                    } else if tail.starts_with(b"<!--") {
                        (b"-->", 3)
                    } else if tail.len() < 9 {
                        return None;
                    } else {
                        (b">", 1)
                    };
                    let end = memmem::find(tail, close)?;
                    self.scan = tag_start + end + skip;
                }
                b'/' => {
                    let end = memchr::memchr(b'>', &buffer[tag_start..])?;
                    self.scan = tag_start + end + 1;
                    self.depth = self.depth.saturating_sub(1);
                    match self.depth {
                        0 => return Some(Event::StreamEnd),
                        1 => return Some(Event::Element(self.element_start..self.scan)),
                        _ => {}
                    }
                }
                _ => {
                    let end = find_tag_end(&buffer[tag_start..])?;
                    let tag_end = tag_start + end + 1;
                    self.scan = tag_end;
                    let self_closing = buffer[tag_end - 2] == b'/';
                    if self_closing {
                        if self.depth == 1 {
                            return Some(Event::Element(tag_start..tag_end));
                        }
                        if self.depth == 0 {
                            // A stream that opens and closes at once.
                            return Some(Event::StreamEnd);
                        }
                        continue;
                    }
                    self.depth += 1;
                    match self.depth {
                        1 => return Some(Event::StreamHeader(tag_start..tag_end)),
                        2 => self.element_start = tag_start,
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Index of the `>` closing a start tag, honouring quoted attribute values.
fn find_tag_end(tag: &[u8]) -> Option<usize> {
    let mut quote = 0u8;
    for (index, &byte) in tag.iter().enumerate().skip(1) {
        if quote != 0 {
            if byte == quote {
                quote = 0;
            }
        } else if byte == b'\'' || byte == b'"' {
            quote = byte;
        } else if byte == b'>' {
            return Some(index);
        }
    }
    None
}

/// The qualified name of an element (`stream:features`, `message`).
pub fn name(element: &[u8]) -> &[u8] {
    let body = &element[1..];
    let end = body
        .iter()
        .position(|&byte| {
            byte == b' '
                || byte == b'>'
                || byte == b'/'
                || byte == b'\t'
                || byte == b'\n'
                || byte == b'\r'
        })
        .unwrap_or(body.len());
    &body[..end]
}

/// The local name (after any prefix).
pub fn local_name(element: &[u8]) -> &[u8] {
    let qualified = name(element);
    match memchr::memchr(b':', qualified) {
        Some(colon) => &qualified[colon + 1..],
        None => qualified,
    }
}

/// The start tag of an element, `<` to `>` included.
pub fn start_tag(element: &[u8]) -> &[u8] {
    match find_tag_end(element) {
        Some(end) => &element[..=end],
        None => element,
    }
}

/// An attribute of the element's start tag (raw, entities not expanded).
pub fn attribute<'a>(element: &'a [u8], attribute_name: &str) -> Option<&'a [u8]> {
    let tag = start_tag(element);
    let wanted = attribute_name.as_bytes();
    let mut from = 0;
    while let Some(found) = memmem::find(&tag[from..], wanted) {
        let at = from + found;
        from = at + wanted.len();
        let before = tag[at - 1];
        if !(before == b' ' || before == b'\t' || before == b'\n' || before == b'\r') {
            continue;
        }
        let mut cursor = at + wanted.len();
        while cursor < tag.len() && tag[cursor].is_ascii_whitespace() {
            cursor += 1;
        }
        if tag.get(cursor) != Some(&b'=') {
            continue;
        }
        cursor += 1;
        while cursor < tag.len() && tag[cursor].is_ascii_whitespace() {
            cursor += 1;
        }
        let quote = *tag.get(cursor)?;
        if quote != b'\'' && quote != b'"' {
            return None;
        }
        let value_start = cursor + 1;
        let value_end = memchr::memchr(quote, &tag[value_start..])? + value_start;
        return Some(&tag[value_start..value_end]);
    }
    None
}

/// The text directly inside an element with no children (`<x>TEXT</x>`).
pub fn text(element: &[u8]) -> &[u8] {
    let tag = start_tag(element);
    if tag.len() == element.len() {
        return b"";
    }
    let inner = &element[tag.len()..];
    match memchr::memrchr(b'<', inner) {
        Some(end) => &inner[..end],
        None => inner,
    }
}

/// The text of the first descendant `<child>`, found by name with or without prefix.
pub fn child_text<'a>(element: &'a [u8], child: &str) -> Option<&'a [u8]> {
    let start = find_child(element, child)?;
    let rest = &element[start..];
    let tag = start_tag(rest);
    if tag.ends_with(b"/>") {
        return Some(b"");
    }
    let inner = &rest[tag.len()..];
    let end = memchr::memchr(b'<', inner)?;
    Some(&inner[..end])
}

/// Where the first descendant start tag named `child` begins.
pub fn find_child(element: &[u8], child: &str) -> Option<usize> {
    let wanted = child.as_bytes();
    let mut from = 1;
    while let Some(found) = memchr::memchr(b'<', &element[from..]) {
        let at = from + found;
        from = at + 1;
        let candidate = &element[at..];
        if candidate.get(1) == Some(&b'/') {
            continue;
        }
        if local_name(candidate) == wanted {
            return Some(at);
        }
    }
    None
}

/// Every `<mechanism>` offered in `<stream:features>`.
pub fn mechanisms(features: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(found) = memmem::find(&features[from..], b"<mechanism>") {
        let start = from + found + b"<mechanism>".len();
        let Some(end) = memchr::memchr(b'<', &features[start..]) else {
            break;
        };
        names.push(
            String::from_utf8_lossy(&features[start..start + end])
                .trim()
                .to_string(),
        );
        from = start + end;
    }
    names
}

/// The framing namespace of XMPP over WebSocket (RFC 7395 section 3.3).
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// Append one WebSocket message of the server (RFC 7395: each message is one
/// complete element) to the read buffer in the shape of a TCP stream, so that
/// the same [`Scanner`] reads both transports: `<open .../>` becomes the
/// stream header `<open ...>`, `<close/>` becomes `</stream:stream>`, any
/// other element is appended as it is.
pub fn append_framed_message(buffer: &mut Vec<u8>, message: &[u8]) {
    let start = message
        .iter()
        .position(|byte| !byte.is_ascii_whitespace())
        .unwrap_or(message.len());
    let end = message
        .iter()
        .rposition(|byte| !byte.is_ascii_whitespace())
        .map_or(start, |last| last + 1);
    let element = &message[start..end.max(start)];
    if element.first() != Some(&b'<') {
        return;
    }
    match name(element) {
        b"open" => {
            let tag = start_tag(element);
            match tag.strip_suffix(b"/>") {
                Some(open) => {
                    buffer.extend_from_slice(open);
                    buffer.push(b'>');
                }
                None => buffer.extend_from_slice(tag),
            }
        }
        b"close" => buffer.extend_from_slice(b"</stream:stream>"),
        _ => buffer.extend_from_slice(element),
    }
}

/// The ranges of the complete top-level elements in `data` (a sequence of
/// elements without a stream header), and whether anything but whitespace
/// is left over after the last one.
pub fn split_elements(data: &[u8]) -> (Vec<std::ops::Range<usize>>, bool) {
    let mut scanner = Scanner::inside_stream();
    let mut ranges = Vec::new();
    while let Some(Event::Element(range)) = scanner.next(data) {
        ranges.push(range);
    }
    let end = ranges.last().map_or(0, |range| range.end);
    let leftover = data[end..].iter().any(|byte| !byte.is_ascii_whitespace());
    (ranges, leftover)
}

/// The elements of `data` as WebSocket messages (RFC 7395 section 3.3.3):
/// one element each, and every element declares its namespace, so a stanza
/// written without `xmlns` (as on TCP, where the stream declares
/// `jabber:client`) gets `xmlns='jabber:client'`. Returns the bytes of all
/// messages and each one's range in them; `None` when `data` ends in an
/// incomplete element.
pub fn websocket_messages(data: &[u8]) -> Option<(Vec<u8>, Vec<std::ops::Range<usize>>)> {
    const DEFAULT_NS: &[u8] = b" xmlns='jabber:client'";
    let (ranges, leftover) = split_elements(data);
    if leftover {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() + ranges.len() * DEFAULT_NS.len());
    let mut messages = Vec::with_capacity(ranges.len());
    for range in ranges {
        let element = &data[range];
        let start = out.len();
        if attribute(element, "xmlns").is_some() {
            out.extend_from_slice(element);
        } else {
            let name_end = 1 + name(element).len();
            out.extend_from_slice(&element[..name_end]);
            out.extend_from_slice(DEFAULT_NS);
            out.extend_from_slice(&element[name_end..]);
        }
        messages.push(start..out.len());
    }
    Some((out, messages))
}

/// Escape text for an XML attribute value or text node.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '\'' => escaped.push_str("&apos;"),
            '"' => escaped.push_str("&quot;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(input: &[u8], chunk: usize) -> Vec<(String, String)> {
        let mut scanner = Scanner::new();
        let mut buffer = Vec::new();
        let mut found = Vec::new();
        for piece in input.chunks(chunk) {
            buffer.extend_from_slice(piece);
            while let Some(event) = scanner.next(&buffer) {
                match event {
                    Event::StreamHeader(range) => found.push((
                        "header".into(),
                        String::from_utf8_lossy(&buffer[range]).into_owned(),
                    )),
                    Event::Element(range) => found.push((
                        "element".into(),
                        String::from_utf8_lossy(&buffer[range]).into_owned(),
                    )),
                    Event::StreamEnd => found.push(("end".into(), String::new())),
                }
            }
            scanner.compact(&mut buffer);
        }
        found
    }

    const STREAM: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='a>b' version='1.0'>\
<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms></stream:features>\n \
<message from='a@b/c' to='d@e' type=\"chat\"><body>LT:1&lt;2</body><x xmlns='y'/></message><presence/><!-- c --><iq type='result' id='r'><![CDATA[<x>]]></iq></stream:stream>";

    #[test]
    fn finds_top_level_elements_whatever_the_split() {
        let whole = events(STREAM, STREAM.len());
        assert_eq!(whole.len(), 6);
        assert_eq!(whole[0].0, "header");
        assert!(
            whole[1].1.starts_with("<stream:features>")
                && whole[1].1.ends_with("</stream:features>")
        );
        assert!(whole[2].1.starts_with("<message") && whole[2].1.ends_with("</message>"));
        assert_eq!(whole[3].1, "<presence/>");
        assert_eq!(whole[4].1, "<iq type='result' id='r'><![CDATA[<x>]]></iq>");
        assert_eq!(whole[5].0, "end");
        for chunk in 1..40 {
            assert_eq!(events(STREAM, chunk), whole, "chunk size {chunk}");
        }
    }

    /// What the server sends over WebSocket (RFC 7395 section 3.4 and 3.6),
    /// one message at a time, read back as a TCP stream would be.
    #[test]
    fn websocket_messages_read_as_a_stream() {
        let messages: [&[u8]; 6] = [
            b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='s1' from='localhost' version='1.0' xml:lang='en'/>",
            b"<stream:features xmlns:stream='http://etherx.jabber.org/streams'><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism></mechanisms></stream:features>",
            b" <message xmlns='jabber:client' from='a@b/c' type='chat'><body>LT:1</body></message>\n",
            b"<presence xmlns='jabber:client' from='a@b/c'/>",
            b"  ",
            b"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
        ];
        let mut buffer = Vec::new();
        let mut scanner = Scanner::new();
        let mut found = Vec::new();
        for message in messages {
            append_framed_message(&mut buffer, message);
            while let Some(event) = scanner.next(&buffer) {
                found.push(match event {
                    Event::StreamHeader(range) => {
                        format!("header {}", String::from_utf8_lossy(&buffer[range]))
                    }
                    Event::Element(range) => String::from_utf8_lossy(&buffer[range]).into_owned(),
                    Event::StreamEnd => "end".into(),
                });
            }
            scanner.compact(&mut buffer);
        }
        assert_eq!(found.len(), 5, "{found:?}");
        assert_eq!(
            found[0],
            "header <open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='s1' from='localhost' version='1.0' xml:lang='en'>"
        );
        assert!(found[1].starts_with("<stream:features "));
        assert_eq!(
            mechanisms(found[1].as_bytes()),
            vec!["SCRAM-SHA-256".to_string()]
        );
        assert_eq!(local_name(found[1].as_bytes()), b"features");
        assert_eq!(
            found[2],
            "<message xmlns='jabber:client' from='a@b/c' type='chat'><body>LT:1</body></message>"
        );
        assert_eq!(found[3], "<presence xmlns='jabber:client' from='a@b/c'/>");
        assert_eq!(found[4], "end");
    }

    /// A stream error arrives as its own message, then `<close/>`; after a
    /// restart (SASL success) the new `<open/>` is a header again.
    #[test]
    fn websocket_error_close_and_restart() {
        let mut buffer = Vec::new();
        let mut scanner = Scanner::new();
        append_framed_message(
            &mut buffer,
            b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='1' version='1.0'/>",
        );
        append_framed_message(
            &mut buffer,
            b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
        );
        assert!(matches!(
            scanner.next(&buffer),
            Some(Event::StreamHeader(_))
        ));
        let Some(Event::Element(range)) = scanner.next(&buffer) else {
            panic!("no success element");
        };
        assert_eq!(local_name(&buffer[range]), b"success");
        scanner.reset();
        buffer.clear();
        append_framed_message(
            &mut buffer,
            b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='2' version='1.0'></open>",
        );
        append_framed_message(&mut buffer, b"<stream:error xmlns:stream='http://etherx.jabber.org/streams'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>");
        append_framed_message(
            &mut buffer,
            b"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
        );
        let Some(Event::StreamHeader(range)) = scanner.next(&buffer) else {
            panic!("no header");
        };
        assert_eq!(attribute(&buffer[range], "id"), Some(&b"2"[..]));
        let Some(Event::Element(range)) = scanner.next(&buffer) else {
            panic!("no error");
        };
        assert_eq!(name(&buffer[range.clone()]), b"stream:error");
        assert!(find_child(&buffer[range], "conflict").is_some());
        assert_eq!(scanner.next(&buffer), Some(Event::StreamEnd));
    }

    /// What the generator writes in one batch becomes one message per
    /// element, each with its namespace.
    #[test]
    fn splits_a_batch_into_namespaced_messages() {
        let batch = b"<message to='a@b' type='chat' id='lt'><body>LT:0000000000000000:0000000000:00</body></message><presence type='subscribe' to='c@d'/><presence/>\n<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth><iq type='result' id='x' to='e@f/g'/>";
        let (ranges, leftover) = split_elements(batch);
        assert!(!leftover);
        assert_eq!(ranges.len(), 5);
        let (bytes, messages) = websocket_messages(batch).expect("complete elements");
        let parts: Vec<&[u8]> = messages.iter().map(|range| &bytes[range.clone()]).collect();
        assert_eq!(
            parts,
            vec![
                &b"<message xmlns='jabber:client' to='a@b' type='chat' id='lt'><body>LT:0000000000000000:0000000000:00</body></message>"[..],
                b"<presence xmlns='jabber:client' type='subscribe' to='c@d'/>",
                b"<presence xmlns='jabber:client'/>",
                b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
                b"<iq xmlns='jabber:client' type='result' id='x' to='e@f/g'/>",
            ]
        );
        let open =
            b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>";
        let (bytes, messages) = websocket_messages(open).expect("complete");
        assert_eq!(&bytes[messages[0].clone()], &open[..]);
        assert!(websocket_messages(b"<presence/><message><body>cut").is_none());
        assert!(websocket_messages(b"").expect("nothing").1.is_empty());
    }

    #[test]
    fn looks_up_names_attributes_and_text() {
        let message = b"<message from='a@b/c' xml:lang='en' to=\"d@e\" type='chat'><body>hello</body></message>";
        assert_eq!(name(message), b"message");
        assert_eq!(attribute(message, "to"), Some(&b"d@e"[..]));
        assert_eq!(attribute(message, "from"), Some(&b"a@b/c"[..]));
        assert_eq!(attribute(message, "lang"), None);
        assert_eq!(attribute(message, "id"), None);
        assert_eq!(child_text(message, "body"), Some(&b"hello"[..]));
        assert_eq!(local_name(b"<stream:features>"), b"features");
        assert_eq!(text(b"<challenge xmlns='x'>abc=</challenge>"), b"abc=");
        assert_eq!(text(b"<success xmlns='x'/>"), b"");
        let features = b"<stream:features><mechanisms><mechanism>SCRAM-SHA-256</mechanism><mechanism>PLAIN</mechanism></mechanisms></stream:features>";
        assert_eq!(
            mechanisms(features),
            vec!["SCRAM-SHA-256".to_string(), "PLAIN".to_string()]
        );
        assert!(find_child(features, "mechanisms").is_some());
        assert!(find_child(features, "starttls").is_none());
    }
}
