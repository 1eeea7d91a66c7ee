//! The `sluice` command.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::config::{Config, LogFormat};
use tokio::net::{TcpListener, UdpSocket};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// Sluice: a WebRTC SFU for WHIP ingest and WHEP playback.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (defaults: HTTP on 127.0.0.1:8080, media on UDP 127.0.0.1:50000).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (see config/sluice.toml).
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, env = "SLUICE_HTTP")]
    http: Option<SocketAddr>,
    /// UDP address for all media.
    #[arg(long, env = "SLUICE_UDP")]
    udp: Option<SocketAddr>,
    /// Address put into ICE candidates (needed when --udp binds 0.0.0.0).
    #[arg(long, env = "SLUICE_PUBLIC_IP")]
    public_ip: Option<IpAddr>,
    /// Log format.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// Defaults, then the file, then environment and flags.
    fn resolve(&self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(http) = self.http {
            config.http.listen = http;
        }
        if let Some(udp) = self.udp {
            config.media.udp = udp;
        }
        if let Some(ip) = self.public_ip {
            config.media.public_ip = Some(ip);
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        Ok(config)
    }
}

fn init_logging(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    info!("shutting down");
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let config = args.resolve()?;
    init_logging(&config);
    let listener = TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (HTTP): {e}", config.http.listen))?;
    let socket = UdpSocket::bind(config.media.udp)
        .await
        .map_err(|e| format!("cannot bind {} (UDP media): {e}", config.media.udp))?;
    let http = listener.local_addr().map_err(|e| e.to_string())?;
    info!(
        udp = %config.media.udp,
        "Sluice is running: open http://{http}/ to publish and watch"
    );
    sluice::serve(&config, listener, socket, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}
