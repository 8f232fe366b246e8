//! The cores the adapter streams from and reports to: one lazily connected channel per URL
//! of `mesh_adapter.core_url` (several cores sharing one PostgreSQL database: URLs separated
//! by commas). The adapter uses one core until its stream breaks or a report finds it
//! unavailable, then moves to the next: any core of the database can record any report.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// The URLs of a `core_url` setting: one, or several separated by commas.
pub fn core_urls(setting: &str) -> Vec<String> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// The channels, and the one in use.
#[derive(Debug)]
pub struct Cores {
    channels: Vec<Channel>,
    current: AtomicUsize,
}

impl Cores {
    /// Channels for each URL of `setting` (connected on first use).
    pub fn new(
        setting: &str,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Cores, tonic::transport::Error> {
        let mut channels = Vec::new();
        for url in core_urls(setting) {
            let mut endpoint = Endpoint::from_shared(url)?;
            if let Some(tls) = &tls {
                endpoint = endpoint.tls_config(tls.clone())?;
            }
            channels.push(
                endpoint
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_while_idle(true)
                    .connect_lazy(),
            );
        }
        Ok(Cores {
            channels,
            current: AtomicUsize::new(0),
        })
    }

    /// One channel (tests and single-core setups).
    pub fn one(channel: Channel) -> Cores {
        Cores {
            channels: vec![channel],
            current: AtomicUsize::new(0),
        }
    }

    /// The core in use: its index and channel.
    pub fn current(&self) -> (usize, Channel) {
        let n = self.channels.len().max(1);
        let at = self.current.load(Ordering::Relaxed) % n;
        (at, self.channels[at].clone())
    }

    /// Moves on from core `from` to the next (unless another caller already has); true
    /// when there is another core to move to.
    pub fn failed(&self, from: usize) -> bool {
        let n = self.channels.len();
        if n < 2 {
            return false;
        }
        let _ = self.current.compare_exchange(
            from,
            (from + 1) % n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        tracing::warn!(core = from, "core unavailable; moving to the next core");
        true
    }
}
