//! A TCP proxy between a process under test and one NATS server, which a test can cut to
//! make that process lose its NATS connection (and reconnect) on demand.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{net::TcpListener, task::JoinHandle};

pub struct Proxy {
    pub addr: SocketAddr,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    refuse_until: Arc<Mutex<Option<Instant>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let refuse_until: Arc<Mutex<Option<Instant>>> = Arc::default();
        let (conns, refuse) = (connections.clone(), refuse_until.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if refuse
                    .lock()
                    .unwrap()
                    .is_some_and(|until| Instant::now() < until)
                {
                    continue; // dropped: the client sees the connection close
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(task);
            }
        });
        Self {
            addr,
            connections,
            refuse_until,
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
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut(Duration::ZERO);
    }
}
