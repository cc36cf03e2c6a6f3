//! A TCP proxy between two parties under test. A test can cut it (both sides see the
//! connection drop, e.g. a process losing NATS) or pause it towards the client (the server's
//! writes back up, as with a client that stopped reading).
//!
//! The proxy's socket towards the server has a fixed, small receive buffer. Linux would
//! otherwise grow it (up to `net.ipv4.tcp_rmem`'s maximum, 32 MiB on some machines), and a
//! paused proxy could soak up megabytes that the server believes delivered.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// Receive buffer of the proxy's socket towards the server (the kernel doubles it).
const UPSTREAM_RECEIVE_BUFFER: u32 = 128 * 1024;

pub struct Proxy {
    pub addr: SocketAddr,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    refuse_until: Arc<Mutex<Option<Instant>>>,
    paused: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let refuse_until: Arc<Mutex<Option<Instant>>> = Arc::default();
        let (paused, _) = watch::channel(false);
        let (conns, refuse, pause) = (connections.clone(), refuse_until.clone(), paused.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if refuse
                    .lock()
                    .unwrap()
                    .is_some_and(|until| Instant::now() < until)
                {
                    continue; // dropped: the client sees the connection close
                }
                let paused = pause.subscribe();
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = connect_upstream(upstream).await {
                        forward(inbound, outbound, paused).await;
                    }
                });
                conns.lock().unwrap().push(task);
            }
        });
        Self {
            addr,
            connections,
            refuse_until,
            paused,
            accept,
        }
    }

    /// Drops every proxied connection and refuses new ones for `for_how_long`.
    pub fn cut(&self, for_how_long: Duration) {
        *self.refuse_until.lock().unwrap() = Some(Instant::now() + for_how_long);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Stops (or resumes) forwarding from upstream to the client.
    pub fn pause_downstream(&self, paused: bool) {
        self.paused.send_replace(paused);
    }
}

async fn connect_upstream(upstream: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(UPSTREAM_RECEIVE_BUFFER)?;
    socket.connect(upstream).await
}

/// Copies both ways until either side closes; upstream → client waits while paused.
async fn forward(client: TcpStream, upstream: TcpStream, mut paused: watch::Receiver<bool>) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut upstream_rx, mut upstream_tx) = upstream.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut client_rx, &mut upstream_tx).await;
    };
    let down = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            if paused.wait_for(|p| !*p).await.is_err() {
                return;
            }
            match upstream_rx.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if client_tx.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut(Duration::ZERO);
    }
}
