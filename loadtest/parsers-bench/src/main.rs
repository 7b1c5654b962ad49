//! Conversion cost per stanza: Starling's element and typed stanzas against
//! xmpp-parsers on minidom (docs/adr/0004). Prints nanoseconds per stanza,
//! the median of several rounds.

use std::hint::black_box;
use std::time::Instant;

use starling_xmpp::{parse_element, Iq, Limits, Message};

const CHAT: &str = "<message xmlns='jabber:client' from='juliet@example.com/balcony' to='romeo@example.net' type='chat' id='m1'><body>Wherefore art thou, Romeo?</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>";
const DISCO_RESULT: &str = "<iq xmlns='jabber:client' from='example.com' to='juliet@example.com/balcony' type='result' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='server' type='im' name='Starling'/><feature var='http://jabber.org/protocol/disco#info'/><feature var='http://jabber.org/protocol/disco#items'/><feature var='urn:xmpp:ping'/><feature var='jabber:iq:version'/><feature var='jabber:iq:roster'/><feature var='urn:xmpp:carbons:2'/><feature var='urn:xmpp:mam:2'/><feature var='vcard-temp'/></query></iq>";
const ROSTER_PUSH: &str = "<iq xmlns='jabber:client' to='juliet@example.com/balcony' type='set' id='r1'><query xmlns='jabber:iq:roster' ver='ver7'><item jid='nurse@example.com' name='Nurse' subscription='both'><group>Servants</group></item></query></iq>";

fn median_ns(rounds: usize, iterations: u32, mut work: impl FnMut()) -> f64 {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..iterations {
            work();
        }
        samples.push(start.elapsed().as_nanos() as f64 / f64::from(iterations));
    }
    samples.sort_by(f64::total_cmp);
    samples[rounds / 2]
}

fn report(name: &str, ns: f64) {
    println!("{name:<62} {ns:>9.0} ns");
}

fn main() {
    let limits = Limits::default();
    let (rounds, iterations) = (15, 20_000);
    for (label, xml) in [
        ("chat message", CHAT),
        ("disco#info result", DISCO_RESULT),
        ("roster push", ROSTER_PUSH),
    ] {
        println!("== {label} ({} bytes)", xml.len());
        let ours = parse_element(xml.as_bytes(), &limits).unwrap();
        report(
            "starling: parse bytes -> Element",
            median_ns(rounds, iterations, || {
                black_box(parse_element(black_box(xml.as_bytes()), &limits).unwrap());
            }),
        );
        report(
            "starling: Element -> typed (Message/Iq), owned, no copy",
            median_ns(rounds, iterations, || {
                let element = black_box(ours.clone());
                if element.name() == "message" {
                    black_box(Message::try_from(element).unwrap());
                } else {
                    black_box(Iq::try_from(element).unwrap());
                }
            }),
        );
        report(
            "  (of which: cloning the Element for the loop)",
            median_ns(rounds, iterations, || {
                black_box(black_box(&ours).clone());
            }),
        );
        report(
            "starling: Element -> XML",
            median_ns(rounds, iterations, || {
                black_box(ours.to_xml());
            }),
        );
        report(
            "minidom: parse str -> minidom::Element",
            median_ns(rounds, iterations, || {
                black_box(black_box(xml).parse::<minidom::Element>().unwrap());
            }),
        );
        let theirs: minidom::Element = xml.parse().unwrap();
        report(
            "xmpp-parsers: minidom::Element -> typed (Message/Iq)",
            median_ns(rounds, iterations, || {
                let element = black_box(theirs.clone());
                if element.name() == "message" {
                    black_box(xmpp_parsers::message::Message::try_from(element).unwrap());
                } else {
                    black_box(xmpp_parsers::iq::Iq::try_from(element).unwrap());
                }
            }),
        );
        report(
            "bridge: starling Element -> XML -> minidom -> xmpp-parsers type",
            median_ns(rounds, iterations, || {
                let text = black_box(&ours).to_xml();
                let element: minidom::Element = text.parse().unwrap();
                if element.name() == "message" {
                    black_box(xmpp_parsers::message::Message::try_from(element).unwrap());
                } else {
                    black_box(xmpp_parsers::iq::Iq::try_from(element).unwrap());
                }
            }),
        );
    }
}
