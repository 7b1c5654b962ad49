//! `starling admin ...`: the command-line client of the admin API.
//!
//! The endpoint comes from `--endpoint`, else from `admin.listen` of the
//! configuration; the token from `--token`, else `STARLING_ADMIN_TOKEN`
//! (the override of `admin.token`), else `admin.token` / `admin.token_file`.
//! Output is a table, or JSON with `--json`. Exit codes (sysexits): 0 done,
//! 64 usage (bad arguments, no endpoint or token), 69 the API is unavailable,
//! 77 the token was refused, 1 any other failure (no such user, ...).

use std::fmt;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;
use starling_proto::admin::v1 as proto;
use starling_proto::admin::v1::admin_client::AdminClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use starling_server::Config;

/// EX_USAGE.
pub const EXIT_USAGE: u8 = 64;
/// EX_UNAVAILABLE.
pub const EXIT_UNAVAILABLE: u8 = 69;
/// EX_NOPERM.
pub const EXIT_AUTH_REFUSED: u8 = 77;

/// A failure with the exit status it maps to.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    message: String,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

pub(crate) fn exit(code: u8, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code,
        message: message.into(),
    })
}

fn from_status(status: Status) -> anyhow::Error {
    let code = match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => EXIT_AUTH_REFUSED,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => EXIT_UNAVAILABLE,
        Code::InvalidArgument => EXIT_USAGE,
        _ => 1,
    };
    let message = match status.code() {
        Code::Unauthenticated => format!("the admin api refused the token: {}", status.message()),
        _ => status.message().to_string(),
    };
    exit(code, message)
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The admin API, e.g. http://127.0.0.1:5290 (default: admin.listen of the configuration).
    #[arg(long, env = "STARLING_ADMIN_ENDPOINT")]
    endpoint: Option<String>,
    /// The admin token (default: STARLING_ADMIN_TOKEN, then admin.token or admin.token_file).
    #[arg(long)]
    token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Online sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Close a session (USER@DOMAIN/RESOURCE) or every session of an account (USER@DOMAIN).
    Kick {
        jid: String,
        /// The stream error condition (RFC 6120 section 4.9.3).
        #[arg(long, default_value = "policy-violation")]
        condition: String,
        /// Text sent with the stream error.
        #[arg(long)]
        text: Option<String>,
    },
    /// Send a message from the server to every online session (or those on one node).
    Announce {
        text: String,
        /// Only the sessions on this node.
        #[arg(long)]
        node: Option<String>,
        /// The message type: headline or normal.
        #[arg(long = "type", default_value = "headline")]
        message_type: String,
        #[arg(long)]
        subject: Option<String>,
    },
    /// Accounts (the same as `starling user`, through the admin API).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// The connection-managers of the cluster, their state and sessions.
    Nodes,
    /// The server-to-server streams, one row per remote domain and stream.
    S2s {
        /// Only the streams of this remote domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only the streams on this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Drain a connection-manager: not ready, no new connections, streams closed over the window.
    Drain {
        node: String,
        /// Seconds over which its streams are closed (default: the node's drain.window_secs).
        #[arg(long)]
        window: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// List sessions, ordered by full JID.
    List {
        #[arg(long)]
        node: Option<String>,
        /// Only the sessions of this account (a bare JID).
        #[arg(long)]
        user: Option<String>,
        /// At most this many (default: all).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Count sessions, in total and per node.
    Count,
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    Add {
        jid: String,
        password: String,
    },
    Passwd {
        jid: String,
        password: String,
    },
    Remove {
        jid: String,
    },
    /// Revoke an account's FAST tokens (XEP-0484): of one client (its SASL2
    /// user agent id) with --agent, else of every client.
    FastRevoke {
        jid: String,
        #[arg(long)]
        agent: Option<String>,
    },
    /// The accounts of a domain (default: the server's).
    List {
        domain: Option<String>,
    },
}

/// `http://HOST:PORT` for a listen address; a wildcard address means this host.
fn endpoint_for(listen: std::net::SocketAddr) -> String {
    let host = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}", listen.port())
}

struct Connection {
    client: AdminClient<Channel>,
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Connection {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request
    }
}

async fn connect(args: &AdminArgs, config: &Config) -> anyhow::Result<Connection> {
    let endpoint = match (&args.endpoint, config.admin_addr()) {
        (Some(endpoint), _) => endpoint.clone(),
        (None, Some(listen)) => endpoint_for(listen),
        (None, None) => {
            return Err(exit(
                EXIT_USAGE,
                "no admin endpoint: pass --endpoint URL or a --config with admin.listen",
            ))
        }
    };
    let token = match &args.token {
        Some(token) => token.clone(),
        None => config
            .admin_token()
            .map_err(|error| exit(EXIT_USAGE, error.to_string()))?
            .ok_or_else(|| {
                exit(
                    EXIT_USAGE,
                    "no admin token: pass --token, set STARLING_ADMIN_TOKEN, or a --config with admin.token",
                )
            })?,
    };
    let authorization = format!("Bearer {token}")
        .parse()
        .map_err(|_| exit(EXIT_USAGE, "the admin token must be printable ASCII"))?;
    let channel = Channel::from_shared(endpoint.clone())
        .map_err(|error| exit(EXIT_USAGE, format!("endpoint {endpoint:?}: {error}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .map_err(|error| {
            exit(
                EXIT_UNAVAILABLE,
                format!("cannot reach the admin api at {endpoint}: {error}"),
            )
        })?;
    Ok(Connection {
        client: AdminClient::new(channel),
        authorization,
    })
}

/// Left-aligned columns under a header.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|title| title.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn print_json(value: serde_json::Value) {
    println!("{value:#}");
}

pub async fn run(args: AdminArgs, config: &Config) -> anyhow::Result<()> {
    let mut connection = connect(&args, config).await?;
    let json = args.json;
    match args.command {
        AdminCommand::Sessions { command } => match command {
            SessionsCommand::List { node, user, limit } => {
                let limit = limit.filter(|limit| *limit > 0);
                let mut sessions = Vec::new();
                let mut after = String::new();
                loop {
                    let page_limit = limit.map_or(0, |limit| limit - sessions.len() as u32);
                    let request = connection.request(proto::ListSessionsRequest {
                        node: node.clone().unwrap_or_default(),
                        bare_jid: user.clone().unwrap_or_default(),
                        limit: page_limit,
                        after: after.clone(),
                    });
                    let page = connection
                        .client
                        .list_sessions(request)
                        .await
                        .map_err(from_status)?
                        .into_inner();
                    sessions.extend(page.sessions);
                    if page.next_after.is_empty()
                        || limit.is_some_and(|limit| sessions.len() as u32 >= limit)
                    {
                        break;
                    }
                    after = page.next_after;
                }
                if json {
                    print_json(json!(sessions
                        .iter()
                        .map(|session| json!({
                            "jid": session.full_jid,
                            "node": session.node,
                            "conn": session.conn,
                            "available": session.available,
                            "priority": session.priority,
                        }))
                        .collect::<Vec<_>>()));
                } else {
                    let rows: Vec<Vec<String>> = sessions
                        .iter()
                        .map(|session| {
                            vec![
                                session.full_jid.clone(),
                                session.node.clone(),
                                session.conn.to_string(),
                                if session.available { "yes" } else { "no" }.to_string(),
                                session.priority.to_string(),
                            ]
                        })
                        .collect();
                    print_table(&["JID", "NODE", "CONN", "AVAILABLE", "PRIORITY"], &rows);
                }
            }
            SessionsCommand::Count => {
                let request = connection.request(proto::CountSessionsRequest {});
                let count = connection
                    .client
                    .count_sessions(request)
                    .await
                    .map_err(from_status)?
                    .into_inner();
                if json {
                    print_json(json!({
                        "total": count.total,
                        "nodes": count.nodes.iter().map(|node| (node.node.clone(), json!(node.sessions))).collect::<serde_json::Map<_, _>>(),
                    }));
                } else {
                    let mut rows: Vec<Vec<String>> = count
                        .nodes
                        .iter()
                        .map(|node| vec![node.node.clone(), node.sessions.to_string()])
                        .collect();
                    rows.push(vec!["total".into(), count.total.to_string()]);
                    print_table(&["NODE", "SESSIONS"], &rows);
                }
            }
        },
        AdminCommand::Kick {
            jid,
            condition,
            text,
        } => {
            let request = connection.request(proto::KickSessionRequest {
                jid,
                condition,
                text: text.unwrap_or_default(),
            });
            let kicked = connection
                .client
                .kick_session(request)
                .await
                .map_err(from_status)?
                .into_inner()
                .kicked;
            if json {
                print_json(json!({ "kicked": kicked }));
            } else {
                for jid in kicked {
                    println!("kicked {jid}");
                }
            }
        }
        AdminCommand::Announce {
            text,
            node,
            message_type,
            subject,
        } => {
            let request = connection.request(proto::AnnounceRequest {
                text,
                node: node.unwrap_or_default(),
                r#type: message_type,
                subject: subject.unwrap_or_default(),
            });
            let recipients = connection
                .client
                .announce(request)
                .await
                .map_err(from_status)?
                .into_inner()
                .recipients;
            if json {
                print_json(json!({ "recipients": recipients }));
            } else {
                println!("announced to {recipients} sessions");
            }
        }
        AdminCommand::Users { command } => users(&mut connection, command, json).await?,
        AdminCommand::Nodes => {
            let request = connection.request(proto::ListNodesRequest {});
            let nodes = connection
                .client
                .list_nodes(request)
                .await
                .map_err(from_status)?
                .into_inner()
                .nodes;
            let state = |node: &proto::NodeInfo| match (node.alive, node.draining) {
                (false, _) => "dead",
                (true, true) => "draining",
                (true, false) => "ready",
            };
            if json {
                print_json(json!(nodes
                    .iter()
                    .map(|node| json!({
                        "node": node.node,
                        "alive": node.alive,
                        "draining": node.draining,
                        "draining_since_unix_ms": node.draining.then_some(node.draining_since_unix_ms),
                        "state": state(node),
                        "sessions": node.sessions,
                    }))
                    .collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = nodes
                    .iter()
                    .map(|node| {
                        vec![
                            node.node.clone(),
                            state(node).to_string(),
                            node.sessions.to_string(),
                        ]
                    })
                    .collect();
                print_table(&["NODE", "STATE", "SESSIONS"], &rows);
            }
        }
        AdminCommand::S2s { domain, node } => {
            let request = connection.request(proto::ListS2sStreamsRequest {
                node: node.unwrap_or_default(),
                domain: domain.unwrap_or_default(),
            });
            let streams = connection
                .client
                .list_s2s_streams(request)
                .await
                .map_err(from_status)?
                .into_inner()
                .streams;
            if json {
                print_json(json!(streams
                    .iter()
                    .map(|row| json!({
                        "node": row.node,
                        "domain": row.domain,
                        "direction": row.direction,
                        "authentication": row.authentication,
                        "tls": row.tls,
                        "stanzas_in": row.stanzas_in,
                        "stanzas_out": row.stanzas_out,
                        "queued": row.queued,
                        "since_unix_ms": row.since_unix_ms,
                    }))
                    .collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = streams
                    .iter()
                    .map(|row| {
                        vec![
                            row.domain.clone(),
                            row.direction.clone(),
                            row.node.clone(),
                            row.authentication.clone(),
                            if row.tls { "yes" } else { "no" }.to_string(),
                            row.stanzas_in.to_string(),
                            row.stanzas_out.to_string(),
                            row.queued.to_string(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "DOMAIN", "DIR", "NODE", "AUTH", "TLS", "IN", "OUT", "QUEUED",
                    ],
                    &rows,
                );
            }
        }
        AdminCommand::Drain { node, window } => {
            let request = connection.request(proto::DrainNodeRequest {
                node: node.clone(),
                window_seconds: window.unwrap_or(0),
            });
            connection
                .client
                .drain_node(request)
                .await
                .map_err(from_status)?;
            if json {
                print_json(json!({ "draining": node }));
            } else {
                println!("{node} is draining");
            }
        }
    }
    Ok(())
}

async fn users(
    connection: &mut Connection,
    command: UsersCommand,
    json: bool,
) -> anyhow::Result<()> {
    let done = |message: String, jid: &str| {
        if json {
            print_json(json!({ "jid": jid }));
        } else {
            println!("{message}");
        }
    };
    match command {
        UsersCommand::Add { jid, password } => {
            let request = connection.request(proto::AddUserRequest {
                jid: jid.clone(),
                password,
            });
            connection
                .client
                .add_user(request)
                .await
                .map_err(from_status)?;
            done(format!("created {jid}"), &jid);
        }
        UsersCommand::Passwd { jid, password } => {
            let request = connection.request(proto::SetPasswordRequest {
                jid: jid.clone(),
                password,
            });
            connection
                .client
                .set_password(request)
                .await
                .map_err(from_status)?;
            done(format!("password changed for {jid}"), &jid);
        }
        UsersCommand::Remove { jid } => {
            let request = connection.request(proto::RemoveUserRequest { jid: jid.clone() });
            connection
                .client
                .remove_user(request)
                .await
                .map_err(from_status)?;
            done(format!("removed {jid}"), &jid);
        }
        UsersCommand::FastRevoke { jid, agent } => {
            let request = connection.request(proto::RevokeFastTokensRequest {
                jid: jid.clone(),
                agent_id: agent.unwrap_or_default(),
            });
            let revoked = connection
                .client
                .revoke_fast_tokens(request)
                .await
                .map_err(from_status)?
                .into_inner()
                .revoked;
            done(format!("revoked {revoked} fast tokens of {jid}"), &jid);
        }
        UsersCommand::List { domain } => {
            let request = connection.request(proto::ListUsersRequest {
                domain: domain.unwrap_or_default(),
            });
            let jids = connection
                .client
                .list_users(request)
                .await
                .map_err(from_status)?
                .into_inner()
                .jids;
            if json {
                print_json(json!(jids));
            } else {
                for jid in jids {
                    println!("{jid}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_for_listen_addresses() {
        assert_eq!(
            endpoint_for("0.0.0.0:5290".parse().unwrap()),
            "http://127.0.0.1:5290"
        );
        assert_eq!(
            endpoint_for("[::]:5290".parse().unwrap()),
            "http://[::1]:5290"
        );
        assert_eq!(
            endpoint_for("10.0.0.7:5290".parse().unwrap()),
            "http://10.0.0.7:5290"
        );
    }

    #[test]
    fn statuses_map_to_exit_codes() {
        let code = |status: Status| from_status(status).downcast::<Exit>().unwrap().code;
        assert_eq!(code(Status::unauthenticated("x")), EXIT_AUTH_REFUSED);
        assert_eq!(code(Status::unavailable("x")), EXIT_UNAVAILABLE);
        assert_eq!(code(Status::invalid_argument("x")), EXIT_USAGE);
        assert_eq!(code(Status::not_found("x")), 1);
    }
}
