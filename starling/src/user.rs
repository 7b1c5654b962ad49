//! `starling user ...`: account management against the configured storage.

use anyhow::{bail, Context};
use starling_api::{ApiError, StorageApi, StoredCredentials};
use starling_jid::BareJid;

use crate::config::Config;
use crate::serve::connect_storage;

fn parse_account(jid: &str) -> anyhow::Result<BareJid> {
    let account: BareJid = jid
        .parse()
        .with_context(|| format!("{jid:?} is not a valid bare JID"))?;
    if account.node().is_none() {
        bail!("{jid:?} has no localpart: expected USER@DOMAIN");
    }
    Ok(account)
}

/// Salted SCRAM keys for both hashes; the password itself is never stored.
pub fn credentials_for(password: &str) -> anyhow::Result<StoredCredentials> {
    if password.is_empty() {
        bail!("the password must not be empty");
    }
    Ok(StoredCredentials::for_password(password))
}

pub async fn add(config: &Config, jid: &str, password: &str) -> anyhow::Result<()> {
    let account = parse_account(jid)?;
    let storage = connect_storage(config).await?;
    match storage
        .create_account(&account, &credentials_for(password)?)
        .await
    {
        Ok(()) => {
            println!("created {account}");
            Ok(())
        }
        Err(ApiError::AlreadyExists(_)) => bail!("{account} already exists"),
        Err(error) => Err(error).context("cannot create the account"),
    }
}

pub async fn passwd(config: &Config, jid: &str, password: &str) -> anyhow::Result<()> {
    let account = parse_account(jid)?;
    let storage = connect_storage(config).await?;
    match storage
        .set_credentials(&account, &credentials_for(password)?)
        .await
    {
        Ok(()) => {
            println!("password changed for {account}");
            Ok(())
        }
        Err(ApiError::NotFound(_)) => bail!("{account} does not exist"),
        Err(error) => Err(error).context("cannot change the password"),
    }
}

pub async fn remove(config: &Config, jid: &str) -> anyhow::Result<()> {
    let account = parse_account(jid)?;
    let storage = connect_storage(config).await?;
    match storage.remove_account(&account).await {
        Ok(()) => {
            println!("removed {account}");
            Ok(())
        }
        Err(ApiError::NotFound(_)) => bail!("{account} does not exist"),
        Err(error) => Err(error).context("cannot remove the account"),
    }
}

pub async fn list(config: &Config, domain: &str) -> anyhow::Result<()> {
    let domain =
        BareJid::domain_jid(domain).with_context(|| format!("{domain:?} is not a valid domain"))?;
    let storage = connect_storage(config).await?;
    for account in storage
        .list_accounts(domain.domain())
        .await
        .context("cannot list accounts")?
    {
        println!("{account}");
    }
    Ok(())
}
