//! `starling-load-sink`: a minimal XMPP reflector, to measure the ceiling of
//! `starling-load` itself (sessions held, messages/s) without a real server.
//!
//! It accepts any PLAIN login, binds any resource, answers every IQ with an
//! empty result, ignores presence, and writes every `<message>` straight back
//! to the connection it came from. It is not a server: no routing, no
//! validation. Loopback only.

use std::net::SocketAddr;

use clap::Parser;
use starling_loadtest::xml::{self, Event, Scanner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
#[command(
    name = "starling-load-sink",
    about = "A minimal XMPP reflector for measuring starling-load itself"
)]
struct Args {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:25999")]
    listen: SocketAddr,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
}

const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='localhost' id='sink' version='1.0'>";
const FEATURES_AUTH: &[u8] = b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>";
const FEATURES_BIND: &[u8] =
    b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen).await?;
        eprintln!("sink listening on {}", args.listen);
        let accept = async {
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let _ = serve(stream).await;
                });
            }
            #[allow(unreachable_code, reason = "names the type that `?` returns")]
            Ok::<(), anyhow::Error>(())
        };
        tokio::select! {
            result = accept => result,
            _ = tokio::time::sleep(std::time::Duration::from_secs(args.max_seconds)) => Ok(()),
        }
    })
}

async fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buffer = Vec::with_capacity(4096);
    let mut scanner = Scanner::new();
    let mut out = Vec::with_capacity(4096);
    let mut authenticated = false;
    loop {
        scanner.compact(&mut buffer);
        if buffer.capacity() - buffer.len() < 2048 {
            buffer.reserve(4096);
        }
        if stream.read_buf(&mut buffer).await? == 0 {
            return Ok(());
        }
        let mut restart = false;
        while let Some(event) = scanner.next(&buffer) {
            match event {
                Event::StreamHeader(_) => {
                    out.extend_from_slice(HEADER);
                    out.extend_from_slice(if authenticated {
                        FEATURES_BIND
                    } else {
                        FEATURES_AUTH
                    });
                }
                Event::StreamEnd => {
                    out.extend_from_slice(b"</stream:stream>");
                    stream.write_all(&out).await?;
                    return Ok(());
                }
                Event::Element(range) => {
                    let element = &buffer[range];
                    match xml::name(element) {
                        b"message" => out.extend_from_slice(element),
                        b"auth" => {
                            out.extend_from_slice(
                                b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
                            );
                            authenticated = true;
                            restart = true;
                        }
                        b"iq" => {
                            let id = xml::attribute(element, "id").unwrap_or(b"");
                            out.extend_from_slice(b"<iq type='result' id='");
                            out.extend_from_slice(id);
                            if xml::find_child(element, "bind").is_some() {
                                out.extend_from_slice(b"'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>sink@localhost/load</jid></bind></iq>");
                            } else if xml::find_child(element, "query").is_some() {
                                out.extend_from_slice(b"'><query xmlns='jabber:iq:roster'/></iq>");
                            } else {
                                out.extend_from_slice(b"'/>");
                            }
                        }
                        _ => {}
                    }
                }
            }
            if restart {
                break;
            }
        }
        if restart {
            // The client sends nothing more before it sees <success/>.
            buffer.clear();
            scanner.reset();
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
    }
}
