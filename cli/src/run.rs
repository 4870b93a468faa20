//! Dispatch: resolves where to connect, then runs the chosen command.

use clustermesh_certs::dial;

use anyhow::Context as _;

use crate::args::{CertsCommand, Cli, Command, ContextCommand, ListCommand, Peer, ServiceCommand};
use crate::cmd::{self, Conn, records::What};
use crate::config::{self, Inputs};

/// This cluster's connection: flags, --context, environment, current context, defaults.
fn this_cluster(cli: &Cli) -> anyhow::Result<Conn> {
    let inputs = Inputs {
        flag_server: cli.server.clone(),
        flag_tls_dir: cli.tls_dir.clone(),
        context: cli.context.clone(),
        ..Default::default()
    }
    .with_env();
    let conn = config::resolve(&inputs, config::load_default)?;
    let defaulted = conn.server == config::DEFAULT_SERVER
        && conn.tls_dir == std::path::Path::new(config::DEFAULT_TLS_DIR);
    if defaulted && !conn.tls_dir.join(clustermesh_certs::CA_CERT_FILE).exists() {
        anyhow::bail!(
            "no cluster chosen and no ca.crt in the current directory: pass --server ADDR --tls-dir DIR, or --context NAME, or add a context with `clustermesh context add NAME --server ADDR --tls-dir DIR`"
        );
    }
    Ok(conn)
}

fn peer(p: &Peer) -> anyhow::Result<Option<Conn>> {
    Ok(config::resolve_peer(
        p.peer_server.clone(),
        p.peer_tls_dir.clone(),
        p.peer_context.clone(),
        config::load_default,
    )?)
}

/// After a failure at the transport, asks the server directly why it refused
/// us (see `dial::probe`): the HTTP/2 client may have reported only
/// "connection closed" while the TLS alert said exactly what was wrong.
pub async fn diagnose(cli: &Cli, err: &anyhow::Error) -> Option<String> {
    let text = format!("{err:#}");
    let transport = [
        "transport error",
        "connection closed",
        "operation was canceled",
        "broken pipe",
    ];
    if !transport.iter().any(|t| text.contains(t)) {
        return None;
    }
    let conn = this_cluster(cli).ok()?;
    dial::probe_dir(&conn.server, &conn.tls_dir, clustermesh_certs::Role::Admin)
        .await
        .err()
}

pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Certs {
            command:
                CertsCommand::Init {
                    cluster,
                    out,
                    sans,
                    force,
                },
        } => cmd::certs::run_init(cluster.clone(), out.clone(), sans.clone(), *force),
        Command::Context { command } => {
            let path = cmd::context::path()?;
            let msg = match command {
                ContextCommand::Add { name } => {
                    let (Some(server), Some(tls_dir)) = (&cli.server, &cli.tls_dir) else {
                        anyhow::bail!(
                            "`context add {name}` needs both --server ADDR and --tls-dir DIR"
                        );
                    };
                    cmd::context::add(&path, name, server, tls_dir)?
                }
                ContextCommand::Use { name } => cmd::context::use_(&path, name)?,
                ContextCommand::Remove { name } => cmd::context::remove(&path, name)?,
                ContextCommand::List { output } => {
                    print!("{}", cmd::context::list(&path, output.format)?);
                    return Ok(());
                }
            };
            println!("{msg}");
            Ok(())
        }
        Command::Connect {
            peer: p,
            advertise,
            quota,
            import_policies,
        } => {
            let ours = this_cluster(cli)?;
            let theirs = peer(p)?.context(
                "connect needs the peer: --peer-server ADDR --peer-tls-dir DIR, or --peer-context NAME",
            )?;
            if theirs.server == ours.server {
                anyhow::bail!(
                    "--peer-server {} is this cluster's own --server: point it at the other cluster",
                    theirs.server
                );
            }
            let pairing = cmd::connect::Pairing {
                quota: quota.unwrap_or_default(),
                import_policies: *import_policies,
            };
            cmd::connect::run(&ours, &theirs, advertise.as_deref(), &pairing).await
        }
        Command::Disconnect { peer_name, peer: p } => {
            let ours = this_cluster(cli)?;
            let theirs = peer(p)?;
            cmd::disconnect::run(&ours, peer_name, theirs.as_ref()).await
        }
        Command::Status {
            wait,
            agents,
            output,
        } => cmd::status::run(&this_cluster(cli)?, *wait, agents, output.format).await,
        Command::Service { command } => {
            let conn = this_cluster(cli)?;
            match command {
                ServiceCommand::Get { service, output } => {
                    cmd::service::get(&conn, service, output.format).await
                }
                ServiceCommand::List { global, output } => {
                    cmd::service::list(&conn, *global, output.format).await
                }
            }
        }
        Command::Identity { command } => list(cli, command, What::Identities).await,
        Command::Endpoint { command } => list(cli, command, What::Endpoints).await,
        Command::Node { command } => list(cli, command, What::Nodes).await,
        Command::Demo {
            once,
            examples,
            timeout,
        } => cmd::demo::run(*once, examples, *timeout).await,
    }
}

async fn list(cli: &Cli, command: &ListCommand, what: What) -> anyhow::Result<()> {
    let ListCommand::List { cluster, output } = command;
    cmd::records::run(&this_cluster(cli)?, what, cluster.as_deref(), output.format).await
}
