//! The `natlb` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

mod cli_status;

use natlb::control::api::{AdminAnswer, BackendRef, ReloadAnswer, Status, WeightRequest};
use natlb::control::client::{Client, ClientError};

const DEFAULT_CONFIG: &str = "/etc/natlb/natlb.toml";

#[derive(Parser)]
#[command(
    name = "natlb",
    version,
    about = "Control plane for Linux NAT gateways: TOML services -> one nftables table",
    long_about = "Control plane for Linux NAT gateways. natlb reads virtual services and their \
                  backends from a TOML file, installs DNAT/SNAT rules in one nftables table \
                  through netlink batches, probes every backend and withdraws a failed one's \
                  share of new connections. The kernel forwards every packet. Runtime commands \
                  (status, drain, enable, weight, reload) talk to the running daemon over its \
                  control socket."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the running daemon listens.
#[derive(Args)]
struct Target {
    /// The config file; its daemon.control_socket is the socket to talk to.
    #[arg(short, long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The control socket, instead of the one the config names.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// One line of text per event: time, level, fields, message.
    Text,
    /// One JSON object per line per event, with the event's fields (service, backend, ...).
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (logs to stderr). SIGHUP reloads, SIGTERM/SIGINT stop.
    Run {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// How log lines look on stderr.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate the config: exit 0, or exit 1 with every error as FILE:LINE:COL: message.
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the ruleset the config produces as an nft script (every backend assumed healthy).
    Render {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show services and backends: health, admin state, weights, shares, connections, traffic.
    Status {
        /// Print the status document as JSON (stable; see the README).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Take a backend out of service: no new connections, established ones continue.
    Drain {
        /// The service's name.
        service: String,
        /// The backend's address as in the config (10.0.1.11:8080), or its IP address alone.
        backend: String,
        /// Return only when the backend's live connections reach zero (exit 1 at --timeout).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. 90s, 10m.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        target: Target,
    },
    /// Put a drained backend back into service.
    Enable {
        service: String,
        backend: String,
        #[command(flatten)]
        target: Target,
    },
    /// Set a backend's weight at run time (canaries); the config's weight clears it again.
    Weight {
        service: String,
        backend: String,
        /// 0 to 10000; 0 takes the backend's share away like a drain.
        weight: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Re-read the config and apply the difference (as SIGHUP does), and say how it went.
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Print a shell completion script (e.g. `natlb completions bash > /etc/bash_completion.d/natlb`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print natlb's man page (roff: `natlb man > /usr/local/share/man/man1/natlb.1`), or write
    /// it and one page per subcommand (natlb-status.1, ...) to --dir.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    natlb::config::parse_duration(text).map_err(|e| e.to_string())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NATLB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

impl Target {
    /// The socket: `--socket`, else the config's (read leniently), else the default one when
    /// the default config does not exist.
    fn client(&self) -> Result<Client, String> {
        if let Some(s) = &self.socket {
            return Ok(Client::new(s));
        }
        match natlb::config::control_socket(&self.config) {
            Ok(s) => Ok(Client::new(&s)),
            Err(_) if self.config == std::path::Path::new(DEFAULT_CONFIG) => {
                Ok(Client::new(std::path::Path::new("/run/natlb/control.sock")))
            }
            Err(e) => Err(format!(
                "cannot find the control socket: {e} (name the config with -c, or the socket with --socket)"
            )),
        }
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("natlb: {message}");
    ExitCode::FAILURE
}

/// Runs a control-socket request and prints what it says.
fn talk<T>(
    target: &Target,
    call: impl FnOnce(&Client) -> Result<T, ClientError>,
    show: impl FnOnce(T, &Client) -> ExitCode,
) -> ExitCode {
    let client = match target.client() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match call(&client) {
        Ok(v) => show(v, &client),
        Err(e) => fail(e),
    }
}

fn admin_done(a: AdminAnswer) -> ExitCode {
    println!("{}", a.message);
    ExitCode::SUCCESS
}

/// `drain --wait`: polls the status until the backend has no live connection.
fn wait_for_drain(client: &Client, a: &AdminAnswer, timeout: std::time::Duration) -> ExitCode {
    let started = std::time::Instant::now();
    let mut last = None;
    loop {
        let status: Status = match client.get("/v1/status") {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let backend = status
            .services
            .iter()
            .find(|s| s.name == a.service)
            .and_then(|s| s.backends.iter().find(|b| b.address == a.backend));
        let Some(backend) = backend else {
            return fail(format!(
                "{} {} is no longer in the config (a reload removed it)",
                a.service, a.backend
            ));
        };
        if backend.admin != "drained" {
            return fail(format!(
                "{} {} was enabled again while waiting",
                a.service, a.backend
            ));
        }
        let Some(n) = backend.connections else {
            return fail(format!(
                "natlb cannot count connections: {}",
                status.errors.join("; ")
            ));
        };
        if n == 0 {
            println!(
                "{} {} has no live connection left ({:.0?})",
                a.service,
                a.backend,
                started.elapsed()
            );
            return ExitCode::SUCCESS;
        }
        if last != Some(n) {
            println!(
                "waiting: {n} live connection(s) on {} {}",
                a.service, a.backend
            );
            last = Some(n);
        }
        if started.elapsed() >= timeout {
            return fail(format!(
                "{n} live connection(s) left on {} {} after {timeout:?}; it stays drained",
                a.service, a.backend
            ));
        }
        std::thread::sleep(std::time::Duration::from_secs(1).min(timeout));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match natlb::config::load(&config) {
            Ok(model) => {
                let backends: usize = model.services.iter().map(|s| s.backends.len()).sum();
                println!(
                    "{}: ok ({} service(s), {} backend(s), {} egress rule(s), table inet {})",
                    config.display(),
                    model.services.len(),
                    backends,
                    model.egress.len(),
                    model.daemon.table
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Render { config } => match natlb::config::load(&config) {
            Ok(model) => {
                let rs = natlb::render::render(&model, |_, _| true);
                print!("{}", natlb::render::script::to_script(&rs));
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, log_format } => {
            init_logging(log_format);
            match natlb::daemon::run(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { json, target } => talk(
            &target,
            |c| c.get::<Status>("/v1/status"),
            |s, _| {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&s).expect("plain data serializes")
                    );
                } else {
                    print!("{}", cli_status::table(&s));
                }
                ExitCode::SUCCESS
            },
        ),
        Command::Drain {
            service,
            backend,
            wait,
            timeout,
            target,
        } => talk(
            &target,
            |c| c.post::<AdminAnswer>("/v1/drain", Some(&BackendRef { service, backend })),
            |a, c| {
                println!("{}", a.message);
                if wait {
                    wait_for_drain(c, &a, timeout)
                } else {
                    ExitCode::SUCCESS
                }
            },
        ),
        Command::Enable {
            service,
            backend,
            target,
        } => talk(
            &target,
            |c| c.post::<AdminAnswer>("/v1/enable", Some(&BackendRef { service, backend })),
            |a, _| admin_done(a),
        ),
        Command::Weight {
            service,
            backend,
            weight,
            target,
        } => talk(
            &target,
            |c| {
                c.post::<AdminAnswer>(
                    "/v1/weight",
                    Some(&WeightRequest {
                        service,
                        backend,
                        weight,
                    }),
                )
            },
            |a, _| admin_done(a),
        ),
        Command::Reload { target } => talk(
            &target,
            |c| c.post::<ReloadAnswer>("/v1/reload", None::<&()>),
            |a, _| {
                println!("{}", a.message);
                ExitCode::SUCCESS
            },
        ),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "natlb", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { dir: None } => {
            let man = clap_mangen::Man::new(Cli::command());
            match man.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Man { dir: Some(dir) } => {
            match std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("cannot write man pages to {}: {e}", dir.display())),
            }
        }
    }
}
