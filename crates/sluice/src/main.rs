//! The `sluice` command.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::config::{Config, LogFormat};
use sluice_http::auth::{Claims, Grants, mint, now_secs};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{error, info, warn};
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
    /// Print a signed access token (on the last line of stdout).
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// Key id (the token's `iss`; must be in the server's [auth] keys).
    #[arg(long)]
    key: String,
    /// The key's secret.
    #[arg(long, env = "SLUICE_TOKEN_SECRET", hide_env_values = true)]
    secret: String,
    /// Room the token is for ("*" for every room, admin tokens only).
    #[arg(long)]
    room: String,
    /// Identity of the holder (the token's `sub`).
    #[arg(long)]
    identity: String,
    /// Allow publishing (WHIP).
    #[arg(long)]
    publish: bool,
    /// Allow watching (WHEP).
    #[arg(long)]
    subscribe: bool,
    /// Allow the admin API and acting on anyone's sessions.
    #[arg(long)]
    admin: bool,
    /// Lifetime: seconds, or a number with s, m, h or d (e.g. 1h).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: u64,
}

/// `90`, `90s`, `15m`, `1h`, `7d` as seconds.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 1h or 7d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(scale)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("{text:?} is not a usable lifetime"))
}

fn token(args: TokenArgs) -> Result<(), String> {
    if args.room == "*" && !args.admin {
        return Err("room \"*\" is only valid with --admin".into());
    }
    let claims = Claims {
        iss: args.key,
        sub: args.identity,
        exp: now_secs() + args.ttl,
        nbf: None,
        grants: Grants {
            room: args.room,
            publish: args.publish,
            subscribe: args.subscribe,
            admin: args.admin,
        },
    };
    let token = mint(&claims, args.secret.as_bytes())?;
    println!("{token}");
    Ok(())
}

#[derive(clap::Args)]
#[command(
    after_help = "Every other setting (consent timeout, keyframe interval, [auth] leeway, \
[limits], [shutdown] drain timeout, [webhooks], log filter) is read from the --config file; \
config/sluice.toml lists them all with their defaults. Precedence: flags, then SLUICE_* \
environment variables, then the file, then the built-in defaults."
)]
struct ServeArgs {
    /// TOML configuration file (see config/sluice.toml).
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, env = "SLUICE_HTTP")]
    http: Option<SocketAddr>,
    /// UDP address of the first media shard (shard i uses the port + i).
    #[arg(long, env = "SLUICE_UDP")]
    udp: Option<SocketAddr>,
    /// Media shards, one core and one UDP port each (0: one per core).
    #[arg(long, env = "SLUICE_SHARDS")]
    shards: Option<usize>,
    /// Address put into ICE candidates (needed when --udp binds 0.0.0.0).
    #[arg(long, env = "SLUICE_PUBLIC_IP")]
    public_ip: Option<IpAddr>,
    /// Log format.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Token keys as kid:secret[,kid:secret] (prefer the environment
    /// variable: command lines are visible to other users).
    #[arg(long, env = "SLUICE_AUTH_KEYS", hide_env_values = true)]
    auth_keys: Option<String>,
    /// Serve without authentication on a non-loopback address.
    #[arg(long)]
    insecure: bool,
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
        if let Some(shards) = self.shards {
            config.media.shards = shards;
        }
        if let Some(ip) = self.public_ip {
            config.media.public_ip = Some(ip);
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        if let Some(keys) = &self.auth_keys {
            config.auth.add_keys(keys)?;
        }
        config.check_exposure(self.insecure)?;
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

/// Forward every SIGTERM and Ctrl-C to `stop`: the first drains, the
/// second stops at once.
async fn forward_signals(stop: mpsc::Sender<()>) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        error!("cannot install a SIGTERM handler");
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        info!("stop signal received");
        if stop.send(()).await.is_err() {
            return;
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let config = args.resolve()?;
    init_logging(&config);
    let listener = TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (HTTP): {e}", config.http.listen))?;
    let sockets = sluice::bind_media(&config.media).await?;
    let udp: Vec<String> = sockets
        .iter()
        .filter_map(|s| s.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    let http = listener.local_addr().map_err(|e| e.to_string())?;
    if config.auth.keys.is_empty() {
        warn!(
            "authentication is off: no [auth] keys, so anyone who reaches the HTTP port may publish and watch"
        );
    } else {
        info!(
            keys = config.auth.keys.len(),
            "authentication is on: WHIP and WHEP need a bearer token"
        );
    }
    info!(
        udp = udp.join(" "),
        "Sluice is running: open http://{http}/ to publish and watch"
    );
    let (stop, stopped) = mpsc::channel(2);
    tokio::spawn(forward_signals(stop));
    sluice::serve(&config, listener, sockets, stopped)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Token(args) => token(args),
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
