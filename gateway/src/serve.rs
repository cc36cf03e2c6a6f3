//! The accept loop: HTTP/1.1 over plain TCP or TLS, with deadlines on everything that
//! happens before a request exists.
//!
//! `axum::serve` has no TLS and no header-read timeout, so a client that opens a TCP
//! connection and never finishes its request (or its TLS handshake) would hold a socket
//! and a task forever. Here each connection gets `handshake_timeout` for its TLS handshake
//! and again for its request head (hyper's `header_read_timeout`); WebSocket upgrades work
//! as with axum (`with_upgrades`). One address may hold at most `max_per_address` of the
//! connections that have not become sockets yet: one host's stalled requests cannot take
//! every slot of `max_connections` from everyone else. At shutdown the loop stops accepting, asks every
//! connection to finish gracefully, and waits for them (sockets close themselves with 1001).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{mpsc, watch},
};
use tokio_rustls::TlsAcceptor;

/// How long shutdown waits for open connections (and sockets) to finish.
pub(crate) const DRAIN: Duration = Duration::from_secs(10);

/// Bounds on what connections may hold.
pub(crate) struct Limits {
    pub handshake_timeout: Duration,
    /// HTTP connections open at once (a socket leaves the count at its upgrade); beyond it
    /// accepting waits (the kernel's backlog queues).
    pub max_connections: usize,
    /// Of those, how many one address may hold (0: no cap); beyond it a new connection
    /// from that address is closed at once.
    pub max_per_address: usize,
}

/// Connections per client address that have not become sockets yet.
struct PerAddress {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PerAddress`], given back when the connection ends or
/// becomes a socket.
struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    fn admit(table: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut open = table.open.lock().expect("not poisoned");
        let count = open.entry(ip).or_default();
        if table.cap > 0 && *count >= table.cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().expect("not poisoned");
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let handshake_timeout = limits.handshake_timeout;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress {
        cap: limits.max_per_address,
        open: Mutex::default(),
    });
    // Every connection task holds a sender; when all are gone, `open` yields None.
    let (alive, mut open) = mpsc::channel::<()>(1);
    loop {
        let slot = tokio::select! {
            _ = stopped(&mut stop) => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    metrics::counter!("natter_gateway_accept_errors_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(address_slot) = PerAddress::admit(&per_address, peer.ip()) else {
            metrics::counter!("natter_gateway_handshake_failures_total", "reason" => "per_address")
                .increment(1);
            continue;
        };
        // Frames are small and latency matters: no Nagle delay on client sockets.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let (router, tls, stop, alive) = (router.clone(), tls.clone(), stop.clone(), alive.clone());
        tokio::spawn(async move {
            let _alive = alive;
            let _slots = (slot, address_slot);
            match tls {
                None => connection(tcp, router, handshake_timeout, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => connection(stream, router, handshake_timeout, stop).await,
                        Ok(Err(err)) => handshake_failed("tls", &err),
                        Err(_) => handshake_failed("tls_timeout", &"no TLS handshake in time"),
                    }
                }
            }
        });
    }
    drop(alive);
    let _ = tokio::time::timeout(DRAIN, open.recv()).await;
}

/// One HTTP/1.1 connection, with upgrades (WebSocket), until it ends or shutdown.
async fn connection<I>(
    io: I,
    router: Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                if err.is_timeout() {
                    handshake_failed("http_timeout", &err);
                } else {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
            }
        }
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}

/// Resolves when `stop` turns true (without holding its lock across awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn handshake_failed(reason: &'static str, err: &dyn std::fmt::Display) {
    metrics::counter!("natter_gateway_handshake_failures_total", "reason" => reason).increment(1);
    tracing::debug!(reason, error = %err, "connection dropped before a request");
}

/// A TLS acceptor for the certificate chain and key in these PEM files.
pub(crate) fn tls_acceptor(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("certificate {}: {e}", cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("private key {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
