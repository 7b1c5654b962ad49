//! The connection-manager on the real storage service (SQLite in memory):
//! accounts made by the CLI's credential derivation and by in-band
//! registration authenticate with every mechanism.

mod common;

use std::sync::Arc;

use common::*;
use starling_storage::{Storage, StorageConfig};

async fn server_on_sqlite() -> TestServer {
    let storage = Storage::connect(&StorageConfig {
        url: "sqlite::memory:".into(),
        ..StorageConfig::default()
    })
    .await
    .unwrap();
    TestServer::start_with_storage(Arc::new(storage), |_| {}).await
}

#[tokio::test]
async fn accounts_from_the_cli_authenticate_with_every_mechanism() {
    let server = server_on_sqlite().await;
    server.add_user("juliet", "pencil").await;
    let mut client = Client::connect(&server).await;
    client.secure().await;
    assert!(client
        .scram(ScramTestHash::Sha256, "juliet", "crayon")
        .await
        .is_err());
    client
        .scram(ScramTestHash::Sha256, "juliet", "pencil")
        .await
        .unwrap();

    let mut client = Client::connect(&server).await;
    client.secure().await;
    client
        .scram(ScramTestHash::Sha1, "juliet", "pencil")
        .await
        .unwrap();

    let mut client = Client::connect(&server).await;
    client.secure().await;
    assert!(client.plain("nobody", "pencil").await.is_err());
    client.plain("juliet", "pencil").await.unwrap();
    client.open().await;
    assert_eq!(
        client.bind(Some("balcony")).await,
        "juliet@example.com/balcony"
    );
}

#[tokio::test]
async fn in_band_registration_and_password_change() {
    let server = server_on_sqlite().await;
    let mut client = Client::connect(&server).await;
    client.secure().await;
    client
        .send("<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>bill</username><password>Calliope</password></query></iq>")
        .await;
    assert_eq!(client.read_until("/>").await, "<iq type='result' id='r1'/>");
    client
        .send("<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>BILL</username><password>other</password></query></iq>")
        .await;
    assert!(client
        .read_until("</iq>")
        .await
        .contains("<conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"));
    client
        .scram(ScramTestHash::Sha256, "bill", "Calliope")
        .await
        .unwrap();
    client.open().await;
    let jid = client.bind(None).await;
    client
        .send("<iq type='set' id='p1'><query xmlns='jabber:iq:register'><username>bill</username><password>Euterpe</password></query></iq>")
        .await;
    assert_eq!(
        client.read_until("/>").await,
        format!("<iq type='result' id='p1' to='{jid}'/>")
    );
    let mut again = Client::connect(&server).await;
    again.secure().await;
    again.plain("bill", "Euterpe").await.unwrap();
}
