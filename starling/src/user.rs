//! `starling user ...`: account management against the configured storage,
//! with the same code as the admin API's user methods (`starling_admin::users`).

use starling_admin::users;

use starling_server::{connect_storage, Config};

pub async fn add(config: &Config, jid: &str, password: &str) -> anyhow::Result<()> {
    users::parse_account(jid)?;
    users::credentials_for(password)?;
    let storage = connect_storage(config).await?;
    let account = users::add(&storage, jid, password).await?;
    println!("created {account}");
    Ok(())
}

pub async fn passwd(config: &Config, jid: &str, password: &str) -> anyhow::Result<()> {
    users::parse_account(jid)?;
    users::credentials_for(password)?;
    let storage = connect_storage(config).await?;
    let account = users::passwd(&storage, jid, password).await?;
    println!("password changed for {account}");
    Ok(())
}

pub async fn remove(config: &Config, jid: &str) -> anyhow::Result<()> {
    users::parse_account(jid)?;
    let storage = connect_storage(config).await?;
    let account = users::remove(&storage, jid).await?;
    println!("removed {account}");
    Ok(())
}

pub async fn fast_revoke(config: &Config, jid: &str, agent: Option<&str>) -> anyhow::Result<()> {
    users::parse_account(jid)?;
    let storage = connect_storage(config).await?;
    let (account, removed) = users::revoke_fast_tokens(&storage, jid, agent).await?;
    println!("revoked {removed} fast tokens of {account}");
    Ok(())
}

pub async fn list(config: &Config, domain: &str) -> anyhow::Result<()> {
    let storage = connect_storage(config).await?;
    for account in users::list(&storage, domain).await? {
        println!("{account}");
    }
    Ok(())
}
