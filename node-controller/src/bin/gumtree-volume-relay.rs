//! `gumtree-volume-relay`: relays one EBS volume from a UNIX socket QEMU
//! opens to the storage controller's export. The node controller starts
//! one per attached volume; see `node_controller::volumes`.

use std::path::PathBuf;

use clap::Parser;
use node_controller::volumes::{serve, Connection};

#[derive(Parser, Debug)]
#[command(about = "Relays one EBS volume to QEMU (started by the node controller).")]
struct Args {
    /// The UNIX socket QEMU opens.
    #[arg(long)]
    socket: PathBuf,
    /// The export, `nbd+tls://host:port/vol-...`.
    #[arg(long)]
    connection: String,
    /// The node's trusted CA certificates.
    #[arg(long)]
    ca: PathBuf,
    /// The node's certificate.
    #[arg(long)]
    cert: PathBuf,
    /// The node's private key.
    #[arg(long)]
    key: PathBuf,
    /// The file holding the node controller's pid.
    #[arg(long)]
    node_pid: PathBuf,
}

fn main() -> std::process::ExitCode {
    common::telemetry::init("info");
    let args = Args::parse();
    let run = async {
        let c = Connection::parse(&args.connection)?;
        let tls = common::mtls::Tls::load_files([args.ca, args.cert, args.key])
            .map_err(|e| e.to_string())?;
        tracing::info!(volume = %c.volume_id, socket = %args.socket.display(), "volume relay started");
        serve(&args.socket, c, tls, &args.node_pid).await
    };
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(run));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "volume relay failed");
            std::process::ExitCode::FAILURE
        }
    }
}
