//! The `natlb` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "natlb",
    version,
    about = "Control plane for Linux NAT gateways: TOML services -> one nftables table"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (logs to stderr). SIGHUP reloads, SIGTERM/SIGINT stop.
    Run {
        #[arg(short, long, default_value = "/etc/natlb/natlb.toml")]
        config: PathBuf,
    },
    /// Validate the config: exit 0, or exit 1 with every error as FILE:LINE:COL: message.
    Check {
        #[arg(short, long, default_value = "/etc/natlb/natlb.toml")]
        config: PathBuf,
    },
    /// Print the ruleset the config produces as an nft script (every backend assumed healthy).
    Render {
        #[arg(short, long, default_value = "/etc/natlb/natlb.toml")]
        config: PathBuf,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NATLB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
        Command::Run { config } => {
            init_logging();
            match natlb::daemon::run(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
