//! Network faults through `noxious` (a Rust port of Toxiproxy), run in-process as a library:
//! one proxy per server, listening on a loopback port, toxics added and removed at runtime.
//!
//! Two defects of noxious 1.0.4 shape how the scenarios use it:
//! - adding a toxic re-links the connections already open, but swaps their directions
//!   (`recreate_links` takes the downstream link's halves as the client's), so a toxic
//!   meant for open connections is added in both directions ([`Toxiproxy::add_both`]), and
//!   toxics meant for one direction are installed before the first connection
//!   ([`Toxiproxy::start`]'s `downstream` list);
//! - its bandwidth toxic subtracts 100 ms per 100-byte slice from a budget of
//!   `len / rate` ms and panics (Duration underflow) on chunks over `rate × 100` bytes, so
//!   the bandwidth scenario slices chunks to 100 bytes first.

use noxious::proxy::{ProxyConfig, ProxyRunner, Runner, Toxics};
use noxious::signal::{Close, Stop, Stopper};
use noxious::toxic::{StreamDirection, Toxic, ToxicEvent, ToxicEventKind, ToxicEventResult};

pub use noxious::toxic::ToxicKind;

use crate::error::{ChaosError, Result};
use crate::harness::free_port;

/// A running noxious proxy in front of one upstream address.
pub struct Toxiproxy {
    name: String,
    pub port: u16,
    events: bmrng::RequestSender<ToxicEvent, ToxicEventResult>,
    stopper: Option<Stopper>,
}

impl Toxiproxy {
    /// Listen on a free loopback port and forward to `upstream` (`host:port`), with
    /// `downstream` toxics (server → gateway) on every connection from the first.
    pub async fn start(
        name: &str,
        upstream: &str,
        downstream: &[(&str, ToxicKind)],
    ) -> Result<Toxiproxy> {
        let port = free_port()?;
        let config = ProxyConfig {
            name: name.to_owned(),
            listen: format!("127.0.0.1:{port}"),
            upstream: upstream.to_owned(),
            enabled: true,
            rand_seed: None,
        };
        let (listener, info) = ProxyRunner::initialize_proxy::<noxious::socket::TcpListener>(
            config,
            Toxics {
                upstream: Vec::new(),
                downstream: downstream
                    .iter()
                    .map(|(n, kind)| Toxic {
                        kind: *kind,
                        name: (*n).to_owned(),
                        toxicity: 1.0,
                        direction: StreamDirection::Downstream,
                    })
                    .collect(),
            },
        )
        .await?;
        let (stop, stopper) = Stop::new();
        let (_close, closer) = Close::new();
        let (events, receiver) = bmrng::channel(16);
        tokio::spawn(async move {
            if let Err(e) = ProxyRunner::run_proxy(listener, info, receiver, stop, closer).await {
                eprintln!("noxious proxy stopped: {e}");
            }
        });
        Ok(Toxiproxy {
            name: name.to_owned(),
            port,
            events,
            stopper: Some(stopper),
        })
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn event(&self, kind: ToxicEventKind) -> Result<()> {
        self.events
            .send_receive(ToxicEvent::new(self.name.clone(), kind))
            .await
            .map_err(|e| ChaosError::Proxy(format!("{e:?}")))?
            .map_err(|e| ChaosError::Proxy(e.to_string()))
    }

    /// Add a toxic to the open connections and the next ones, in both directions (see the
    /// module comment: a one-direction toxic lands on the wrong side of open connections).
    pub async fn add_both(&self, name: &str, kind: ToxicKind) -> Result<()> {
        self.add(&format!("{name}_down"), kind, StreamDirection::Downstream)
            .await?;
        self.add(&format!("{name}_up"), kind, StreamDirection::Upstream)
            .await
    }

    pub async fn add(&self, name: &str, kind: ToxicKind, direction: StreamDirection) -> Result<()> {
        self.event(ToxicEventKind::AddToxic(Toxic {
            kind,
            name: name.to_owned(),
            toxicity: 1.0,
            direction,
        }))
        .await
    }

    pub async fn clear(&self) -> Result<()> {
        self.event(ToxicEventKind::RemoveAllToxics).await
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        if let Some(s) = self.stopper.take() {
            s.stop();
        }
    }
}
