//! Core as a child process for crash tests: `nems-test-core DATA_DIR DIRECTORY_FILE
//! [SERVICE_ADDR]`. Binds the service listener on `SERVICE_ADDR` (default `127.0.0.1:0`;
//! a fixed one lets adapters reconnect to a restarted core) and the operator listener on
//! `127.0.0.1:0`, prints one line `READY <service addr> <operator addr>` on stdout, and
//! serves until killed. With `NEMS_DATABASE_URL` set, the store is that PostgreSQL database
//! instead of redb under `DATA_DIR`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use nems_core::{Core, CoreConfig, CoreListeners};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let data_dir = PathBuf::from(
        args.next()
            .ok_or("usage: nems-test-core DATA_DIR DIRECTORY_FILE")?,
    );
    let directory = PathBuf::from(
        args.next()
            .ok_or("usage: nems-test-core DATA_DIR DIRECTORY_FILE")?,
    );
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let service_addr: SocketAddr = match args.next() {
        Some(addr) => addr.to_str().ok_or("SERVICE_ADDR is not text")?.parse()?,
        None => loopback,
    };
    let config = CoreConfig {
        listen: loopback,
        operator_listen: loopback,
        data_dir,
        #[allow(clippy::disallowed_methods, reason = "the child's one setting")]
        database_url: std::env::var("NEMS_DATABASE_URL").ok(),
        directory_file: Some(directory),
        ..Default::default()
    };
    let listeners = CoreListeners {
        service: TcpListener::bind(service_addr).await?,
        operator: TcpListener::bind(loopback).await?,
    };
    let (service, operator) = listeners.addrs()?;
    let core = Core::open(config).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY {service} {operator}")?;
        out.flush()?;
    }
    core.serve(listeners, std::future::pending()).await?;
    Ok(())
}
