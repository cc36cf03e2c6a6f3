//! The accept loop: HTTP/1.1 over plain TCP or TLS, with deadlines on everything that
//! happens before a request exists.
//!
//! `axum::serve` has no TLS and no header-read timeout, so a client that opens a TCP
//! connection and never finishes its request (or its TLS handshake) would hold a socket
//! and a task forever. Here each connection gets `handshake_timeout` for its TLS handshake
//! and again for its request head (hyper's `header_read_timeout`); WebSocket upgrades work
//! as with axum (`with_upgrades`). Each exchange on a connection (request body, answer,
//! response body) must be over by its [`Deadline`]: a client that reads its answer (or
//! sends its upload) at a trickle is cut off. One address (an IPv6 client: its /64) may
//! hold at most `max_per_address` of the connections that have not become sockets yet:
//! one host's stalled requests cannot take every slot of `max_connections` from everyone
//! else. At shutdown the loop stops accepting, asks every connection to finish
//! gracefully, and waits for them (sockets close themselves with 1001).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::mpsc,
    time::Instant,
};
use tokio_rustls::TlsAcceptor;

use crate::exchange::Deadline;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for open connections (and sockets) to finish.
pub(crate) const DRAIN: Duration = Duration::from_secs(10);

/// Bounds on what connections may hold.
pub(crate) struct Limits {
    pub handshake_timeout: Duration,
    /// An exchange's deadline from its request head, unless its handler moves it.
    pub request_timeout: Duration,
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

/// The address a connection counts against: an IPv6 client has a /64 to pick addresses
/// from, so all of it is one address; an IPv4 client seen through IPv6 is itself.
fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

impl PerAddress {
    fn admit(table: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let ip = counted_as(ip);
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

/// Serves `router` on `listener` until `stop` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let Limits {
        handshake_timeout,
        request_timeout,
        ..
    } = limits;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress {
        cap: limits.max_per_address,
        open: Mutex::default(),
    });
    // Every connection task holds a sender; when all are gone, `open` yields None.
    let (alive, mut open) = mpsc::channel::<()>(1);
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
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
            let timeouts = (handshake_timeout, request_timeout);
            match tls {
                None => connection(tcp, router, timeouts, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => connection(stream, router, timeouts, stop).await,
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

/// One HTTP/1.1 connection, with upgrades (WebSocket), until it ends, its exchange's
/// deadline passes, or shutdown. Every request carries the connection's [`Deadline`] (an
/// extension) for its handler to move.
async fn connection<I>(
    io: I,
    router: Router,
    (header_timeout, request_timeout): (Duration, Duration),
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Until the first request head, hyper's header timeout is the bound.
    let deadline = Deadline::new(Instant::now() + header_timeout + request_timeout);
    let service = hyper::service::service_fn({
        let deadline = deadline.clone();
        move |mut request: hyper::Request<hyper::body::Incoming>| {
            deadline.set(Instant::now() + request_timeout);
            request.extensions_mut().insert(deadline.clone());
            // A router is always ready; each request gets its own handle, as axum's does.
            tower_service::Service::call(&mut router.clone(), request)
        }
    });
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
        () = deadline.passed() => {
            metrics::counter!("natter_gateway_exchanges_cut_off_total").increment(1);
            tracing::debug!("an exchange outlived its deadline; connection closed");
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::counted_as;

    #[test]
    fn an_ipv6_client_counts_as_its_slash_64_and_a_mapped_ipv4_as_itself() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(counted_as(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            counted_as(ip("2001:db8:1:2:ffff:1:2:3")),
            counted_as(ip("2001:db8:1:2::9"))
        );
        assert_ne!(counted_as(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(counted_as(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(counted_as(ip("192.0.2.7")), ip("192.0.2.7"));
    }
}
