//! A fuzz driver that needs only stable Rust: mutates the seed corpus at random
//! (havoc-style: bit flips, interesting bytes, XML tokens, deletions,
//! duplications, splices) and runs `check_stream_parser` on each input for a
//! given time. There is no coverage feedback; inputs that end the parse in a way
//! not seen before (a new error condition and text) join the pool as a crude
//! substitute.
//!
//! Usage: `cargo run --release --bin stable_fuzz -- [SECONDS] [SEED]`.
//! A failing input is written to `artifacts/stable_fuzz/` and the process exits 1.

use std::collections::HashSet;
use std::panic;
use std::path::Path;
use std::time::{Duration, Instant};

use starling_xmpp_fuzz::{check_stream_parser, XorShift};

const TOKENS: &[&[u8]] = &[
    b"<",
    b">",
    b"/>",
    b"</",
    b"&",
    b";",
    b"&amp;",
    b"&lt;",
    b"&#0;",
    b"&#x10FFFF;",
    b"&#xD800;",
    b"&foo;",
    b"'",
    b"\"",
    b"=",
    b":",
    b" ",
    b"\r\n",
    b"]]>",
    b"<![CDATA[",
    b"<!--",
    b"-->",
    b"<?xml version='1.0'?>",
    b"<?",
    b"?>",
    b"<!DOCTYPE",
    b"<!ENTITY",
    b"xmlns='jabber:client'",
    b"xmlns=''",
    b"xmlns:p='urn:p'",
    b" p:a='1'",
    b"xmlns:stream='http://etherx.jabber.org/streams'",
    b"<stream:stream>",
    b"</stream:stream>",
    b"xml:lang='en'",
    b"\xC3\xA9",
    b"\xF0\x9F\x98\x80",
    b"\xEF\xBF\xBE",
    b"\xC3",
    b"\xED\xA0\x80",
    b"\xFF",
    b"\0",
    b"\xEF\xBB\xBF",
];

const INTERESTING_BYTES: &[u8] = b"<>&;/'\"=: #x]?!-\t\n\r\0\x80\xBF\xC3\xE2\xF0\xFF";

fn main() {
    let mut arguments = std::env::args().skip(1);
    let seconds: u64 = arguments
        .next()
        .and_then(|value| value.parse().ok())
        .unwrap_or(60);
    let seed: u64 = arguments
        .next()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |elapsed| elapsed.as_nanos() as u64)
        });

    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/stream_parser");
    let mut entries: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", corpus.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    entries.sort();
    let seeds: Vec<Vec<u8>> = entries
        .iter()
        .filter_map(|path| std::fs::read(path).ok())
        .collect();
    assert!(!seeds.is_empty(), "no seed in {}", corpus.display());

    let mut pool = seeds.clone();
    let mut signatures = HashSet::new();
    let mut rng = XorShift::new(seed);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut runs: u64 = 0;
    let mut bytes: u64 = 0;

    for input in &seeds {
        if let Some(outcome) = run_one(input, runs) {
            signatures.insert(outcome);
        }
        runs += 1;
    }
    while Instant::now() < deadline {
        let mut input = pool[rng.below(pool.len())].clone();
        for _ in 0..1 + rng.below(6) {
            mutate(&mut input, &seeds, &mut rng);
        }
        input.truncate(4096);
        bytes += input.len() as u64;
        if let Some(signature) = run_one(&input, runs) {
            if pool.len() < 20_000 && signatures.insert(signature) {
                pool.push(input);
            }
        }
        runs += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "stable_fuzz: {runs} inputs ({bytes} bytes) in {elapsed:.0} s, seed {seed}, {} distinct outcomes, no failure",
        signatures.len()
    );
}

/// Run the checks; on a failure save the input and exit.
fn run_one(input: &[u8], run: u64) -> Option<String> {
    match panic::catch_unwind(|| check_stream_parser(input)) {
        Ok(outcome) => outcome.map(|outcome| outcome.signature()),
        Err(_) => {
            let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/stable_fuzz");
            let _ = std::fs::create_dir_all(&directory);
            let path = directory.join(format!("crash-{run}"));
            let _ = std::fs::write(&path, input);
            eprintln!(
                "stable_fuzz: failure on input {run}, saved to {}",
                path.display()
            );
            std::process::exit(1);
        }
    }
}

fn mutate(input: &mut Vec<u8>, seeds: &[Vec<u8>], rng: &mut XorShift) {
    let position = |rng: &mut XorShift, input: &Vec<u8>| rng.below(input.len() + 1);
    match rng.below(9) {
        0 if !input.is_empty() => {
            let index = rng.below(input.len());
            input[index] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let index = rng.below(input.len());
            input[index] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
        }
        2 | 3 => {
            let at = position(rng, input);
            let token = TOKENS[rng.below(TOKENS.len())];
            input.splice(at..at, token.iter().copied());
        }
        4 if !input.is_empty() => {
            let start = rng.below(input.len());
            let end = (start + 1 + rng.below(16)).min(input.len());
            input.drain(start..end);
        }
        5 if !input.is_empty() => {
            let start = rng.below(input.len());
            let end = (start + 1 + rng.below(64)).min(input.len());
            let copy = input[start..end].to_vec();
            let at = position(rng, input);
            input.splice(at..at, copy);
        }
        6 => {
            let other = &seeds[rng.below(seeds.len())];
            if other.len() > 1 {
                let start = 1 + rng.below(other.len() - 1);
                let end = (start + 1 + rng.below(128)).min(other.len());
                let at = position(rng, input).max(1);
                let at = at.min(input.len());
                input.splice(at..at, other[start..end].iter().copied());
            }
        }
        7 if !input.is_empty() => {
            // The control byte: mode, limits and chunking.
            input[0] = rng.next_u64() as u8;
        }
        _ => {
            let at = position(rng, input);
            input.insert(at, rng.next_u64() as u8);
        }
    }
}
