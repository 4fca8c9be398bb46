//! `switchboard-control`: the control-plane binary.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};
use control_plane::{app, launcher};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "switchboard-control",
    version,
    about = "Switchboard control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry to gateway replicas.
    Serve(ControlArgs),
    /// Run the control plane and one local gateway replica (the quick start).
    Up {
        #[command(flatten)]
        control: ControlArgs,
        /// Where the gateway serves MCP.
        #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8787")]
        gateway_listen: SocketAddr,
    },
}

#[derive(clap::Args)]
struct ControlArgs {
    /// Directory of McpServer YAML files.
    #[arg(
        long,
        env = "SWITCHBOARD_REGISTRY",
        default_value = "deploy/local/registry"
    )]
    registry: PathBuf,
    /// gRPC address replicas connect to.
    #[arg(
        long,
        env = "SWITCHBOARD_GRPC_LISTEN",
        default_value = "127.0.0.1:8788"
    )]
    grpc_listen: SocketAddr,
    /// HTTP status API address.
    #[arg(
        long,
        env = "SWITCHBOARD_HTTP_LISTEN",
        default_value = "127.0.0.1:8789"
    )]
    http_listen: SocketAddr,
}

impl From<ControlArgs> for app::Config {
    fn from(args: ControlArgs) -> Self {
        Self {
            registry_dir: args.registry,
            grpc_listen: args.grpc_listen,
            http_listen: args.http_listen,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => {
            let bound = app::run(args.into()).await?;
            shutdown_signal().await;
            bound.shutdown_trigger().cancel();
            bound.wait().await;
            Ok(())
        }
        Command::Up {
            control,
            gateway_listen,
        } => {
            let config = launcher::UpConfig {
                control_plane: control.into(),
                gateway_listen,
            };
            launcher::up(config, shutdown_signal()).await
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler at start-up");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
