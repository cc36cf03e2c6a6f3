//! Scenario `xmpp`: the `dm` workload against an XMPP server (ejabberd, started by
//! `bench/peer/ejabberd.sh`), so Natter and a mature chat server are measured by the same
//! harness, clock and histograms.
//!
//! The client is a minimal XMPP c2s client over plain TCP, written here rather than taken
//! from a library because it needs so little and must cost the server nothing a real
//! client would not: stream open, SASL PLAIN, stream restart, resource bind, stream
//! management (XEP-0198), initial presence, then `<message type='chat'>` stanzas whose body
//! is the send time. The XML is split into top-level elements by tracking tag depth; the
//! only XML in play is the server's own, so a full parser would buy nothing.
//!
//! What is measured, next to `dm`:
//! - send → confirmed: every message is followed by an ack request `<r/>`; the server's
//!   `<a h=…/>` comes once its session process has handled the message: run it through
//!   its hooks (with `mod_mam`, the synchronous archive write) and routed it to the
//!   recipient's session. That is the closest XMPP analogue of Natter's `sent`.
//! - send → deliver: the body carries the send time in µs since a shared origin; the
//!   receiver records the latency when the message reaches its socket. Receivers also use
//!   stream management and answer the server's `<r/>` at most every 20 ms, as `dm`'s
//!   receivers ack: ejabberd keeps one ack request outstanding, so the acks batch.
//!
//! Users are `{users_prefix}{2i}` (sender of pair `i`) and `{users_prefix}{2i+1}` (its
//! receiver), all with one password, as `ejabberd.sh` registers them.

use std::{
    collections::{HashSet, VecDeque},
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::Engine;
use futures_util::{StreamExt, TryStreamExt, stream};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
    sync::watch,
};

use crate::{
    net::{self, Sources},
    report::{DmReport, DmStats, RunShape},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Address of the server's c2s listener.
    #[arg(long, default_value = "127.0.0.1:5232")]
    pub server: String,
    /// XMPP domain of the users.
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// Password of every user.
    #[arg(long, default_value = "bench")]
    pub password: String,
    /// Users are `<prefix>0`, `<prefix>1`, …: pair `i` is `2i` → `2i+1`.
    #[arg(long, default_value = "u")]
    pub users_prefix: String,
    /// Conversations (a sender and a receiver connection each).
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// Offered messages per second, over all pairs.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Name of the system in the report, e.g. `ejabberd-nomam`.
    #[arg(long, default_value = "ejabberd")]
    pub system: String,
}

/// After the sending window, how long the tool waits for the last deliveries (as `dm`).
const DRAIN_LIMIT: Duration = Duration::from_secs(45);
/// A receiver answers the server's ack requests at most this often (as `dm` acks).
const ACK_EVERY: Duration = Duration::from_millis(20);
/// Longest wait for any one step of the login.
const LOGIN_STEP: Duration = Duration::from_secs(10);
/// Logins in flight at once.
const LOGINS_IN_FLIGHT: usize = 64;
/// Stanzas a sender sends after enabling stream management and before its first message
/// (the initial presence): the server's `h` counts them too.
const STANZAS_BEFORE_MESSAGES: u64 = 1;
const SM: &str = "urn:xmpp:sm:3";

/// One `xmpp` run.
pub async fn run(options: &Options) -> anyhow::Result<DmReport> {
    net::raise_fd_limit();
    let server = net::addr(&options.server)?;
    let sources = Sources::new(0, options.pairs * 2);
    let origin = Instant::now();
    let stats = Arc::new(DmStats::default());
    let interval = Duration::from_secs_f64(options.pairs as f64 / options.rate.max(1) as f64);

    // Log everyone in first: unlike a WebSocket upgrade, an XMPP login takes several
    // round trips, and the sending window should not pay for them.
    let logins = stream::iter(0..options.pairs * 2)
        .map(|i| {
            let user = format!("{}{i}", options.users_prefix);
            login(
                server,
                sources.pick(),
                &options.domain,
                user,
                &options.password,
            )
        })
        .buffered(LOGINS_IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;

    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.seconds);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut logins = logins.into_iter();
    let pairs = std::iter::from_fn(|| Some((logins.next()?, logins.next()?)));
    for (i, (tx, rx)) in pairs.enumerate() {
        let to = format!("{}{}@{}", options.users_prefix, 2 * i + 1, options.domain);
        let sender = Sender {
            pair: i,
            to,
            origin,
            // Spread the senders' phases evenly over one interval: started together,
            // they would send in bursts of `pairs` messages, which no real load does.
            first: started + interval.mul_f64(i as f64 / options.pairs as f64),
            interval,
            deadline,
        };
        tasks.push(tokio::spawn(receive(
            rx,
            origin,
            stats.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(send(
            tx,
            sender,
            stats.clone(),
            stop_rx.clone(),
        )));
    }

    // A task that ends early has failed; stop waiting and report its error below.
    let failed = |tasks: &[tokio::task::JoinHandle<anyhow::Result<()>>]| {
        tasks.iter().any(|t| t.is_finished())
    };
    while stats.senders_done.load(Ordering::Relaxed) < options.pairs as u64 && !failed(&tasks) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Wait until every send was confirmed and delivered, or give up after DRAIN_LIMIT:
    // what is still missing then is reported as lost.
    let drain_start = Instant::now();
    loop {
        let sends = stats.sends.load(Ordering::Relaxed);
        let done = stats.deliveries.load(Ordering::Relaxed) >= sends
            && stats.confirmed.load(Ordering::Relaxed) >= sends;
        if done || drain_start.elapsed() >= DRAIN_LIMIT || failed(&tasks) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await??;
    }

    let started_us = started.duration_since(origin).as_micros() as u64;
    Ok(stats
        .report(RunShape {
            system: options.system.clone(),
            pairs: options.pairs,
            offered_per_s: options.rate as f64,
            seconds: options.seconds as f64,
            started_us,
            deadline_us: deadline.duration_since(origin).as_micros() as u64,
        })
        .await)
}

/// What one sender needs besides its connection.
struct Sender {
    pair: usize,
    to: String,
    origin: Instant,
    first: Instant,
    interval: Duration,
    deadline: Instant,
}

/// Sends open loop until the deadline, each message followed by an ack request, and
/// matches the server's acks to the send times; then keeps reading acks until stopped.
async fn send(
    mut conn: Conn,
    sender: Sender,
    stats: Arc<DmStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // Send times of the messages the server has not acked yet, oldest first.
    let mut unacked = VecDeque::new();
    let mut acked = 0u64;
    let mut seq = 0u64;
    let mut sending = true;
    let mut ticks = tokio::time::interval_at(sender.first.into(), sender.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = ticks.tick(), if sending => {
                if Instant::now() >= sender.deadline {
                    sending = false;
                    stats.senders_done.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let at = sender.origin.elapsed().as_micros() as u64;
                let stanza = format!(
                    "<message to='{}' type='chat' id='{}-{seq}'><body>{at}</body></message><r xmlns='{SM}'/>",
                    sender.to, sender.pair
                );
                conn.tx.write_all(stanza.as_bytes()).await?;
                unacked.push_back(at);
                seq += 1;
                stats.sends.fetch_add(1, Ordering::Relaxed);
            }
            _ = stop.changed() => return conn.close().await,
            element = conn.rx.next() => {
                let element = element?;
                match name(&element) {
                    "r" => conn.ack().await?,
                    "a" => {
                        let h: u64 = attr(&element, "h").and_then(|h| h.parse().ok()).unwrap_or(0);
                        let now = sender.origin.elapsed().as_micros() as u64;
                        while acked < h.saturating_sub(STANZAS_BEFORE_MESSAGES) {
                            let Some(at) = unacked.pop_front() else { break };
                            acked += 1;
                            stats.confirmed.fetch_add(1, Ordering::Relaxed);
                            stats.confirm_latency.record(now.saturating_sub(at)).await;
                        }
                    }
                    "message" if attr(&element, "type") == Some("error") => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Receives messages, answers the server's ack requests every [`ACK_EVERY`], records
/// delivery latencies and counts messages delivered twice (by id).
async fn receive(
    mut conn: Conn,
    origin: Instant,
    stats: Arc<DmStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    let mut ack_requested = false;
    let mut ticks = tokio::time::interval(ACK_EVERY);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if ack_requested {
                    conn.ack().await?;
                    ack_requested = false;
                }
            }
            _ = stop.changed() => return conn.close().await,
            element = conn.rx.next() => {
                let element = element?;
                match name(&element) {
                    "r" => ack_requested = true,
                    "message" if attr(&element, "type") == Some("error") => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    "message" => {
                        let Some(body) = text(&element, "body") else { continue };
                        if !seen.insert(attr(&element, "id").unwrap_or_default().to_owned()) {
                            stats.doubled.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let at: u64 = body.parse().unwrap_or(0);
                        let now = origin.elapsed().as_micros() as u64;
                        stats.deliveries.fetch_add(1, Ordering::Relaxed);
                        stats.last_delivery_us.fetch_max(now, Ordering::Relaxed);
                        stats.deliver_latency.record(now.saturating_sub(at)).await;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A logged-in XMPP session: reading and writing halves apart, so one task can wait for
/// input while it writes.
struct Conn {
    rx: Reader,
    tx: OwnedWriteHalf,
}

impl Conn {
    async fn write(&mut self, xml: &str) -> anyhow::Result<()> {
        Ok(self.tx.write_all(xml.as_bytes()).await?)
    }

    /// Answers an ack request with the number of stanzas received so far.
    async fn ack(&mut self) -> anyhow::Result<()> {
        let h = self.rx.stanzas;
        self.write(&format!("<a xmlns='{SM}' h='{h}'/>")).await
    }

    async fn close(mut self) -> anyhow::Result<()> {
        self.write("</stream:stream>").await
    }

    async fn open_stream(&mut self, domain: &str) -> anyhow::Result<String> {
        self.rx.xml.restart();
        self.write(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
        ))
        .await?;
        let features = self.rx.next_step().await?;
        if name(&features) != "stream:features" {
            bail!("expected stream features, got {features}");
        }
        Ok(features)
    }
}

/// Connects from `source` and logs `user` in: SASL PLAIN, bind, stream management,
/// initial presence. Returns once the server has handled the presence, so messages sent
/// to this user from then on find an available resource.
async fn login(
    server: SocketAddr,
    source: Ipv4Addr,
    domain: &str,
    user: String,
    password: &str,
) -> anyhow::Result<Conn> {
    let tcp = net::tcp_from(source, server).await?;
    let (read, tx) = tcp.into_split();
    let mut conn = Conn {
        rx: Reader {
            half: read,
            xml: Splitter::default(),
            stanzas: 0,
        },
        tx,
    };

    let features = conn.open_stream(domain).await?;
    if !features.contains("<mechanism>PLAIN</mechanism>") {
        bail!("server does not offer SASL PLAIN: {features}");
    }
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    conn.write(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{credentials}</auth>"
    ))
    .await?;
    let outcome = conn.rx.next_step().await?;
    if name(&outcome) != "success" {
        bail!("{user}: authentication failed: {outcome}");
    }

    conn.open_stream(domain).await?;
    conn.write(
        "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>bench</resource></bind></iq>",
    )
    .await?;
    let bound = conn.rx.next_step().await?;
    if name(&bound) != "iq" || attr(&bound, "type") != Some("result") {
        bail!("{user}: bind failed: {bound}");
    }

    // From `<enable/>` on, both sides count stanzas; the presence is the first one the
    // server counts, so its `<a h='1'/>` says the presence has been handled.
    conn.rx.stanzas = 0;
    conn.write(&format!(
        "<enable xmlns='{SM}'/><presence/><r xmlns='{SM}'/>"
    ))
    .await?;
    let mut enabled = false;
    loop {
        let element = conn.rx.next_step().await?;
        match name(&element) {
            "enabled" => enabled = true,
            "r" => conn.ack().await?,
            "a" if enabled => return Ok(conn),
            "failed" | "a" => bail!("{user}: stream management not enabled: {element}"),
            _ => {}
        }
    }
}

/// The reading half of a session: bytes → top-level elements, counting stanzas for
/// stream management.
struct Reader {
    half: OwnedReadHalf,
    xml: Splitter,
    /// Stanzas received since stream management was enabled (the `h` of our acks).
    stanzas: u64,
}

impl Reader {
    /// The next top-level element. Cancel-safe: bytes read are kept in the splitter.
    async fn next(&mut self) -> anyhow::Result<String> {
        loop {
            match self.xml.next()? {
                Some(Event::Element(element)) => {
                    if matches!(name(&element), "message" | "presence" | "iq") {
                        self.stanzas += 1;
                    }
                    if name(&element) == "stream:error" {
                        bail!("stream error: {element}");
                    }
                    return Ok(element);
                }
                Some(Event::Header) => continue,
                Some(Event::End) => bail!("the server closed the stream"),
                None => {}
            }
            let mut chunk = [0u8; 4096];
            let n = self.half.read(&mut chunk).await?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.xml.feed(&chunk[..n]);
        }
    }

    /// [`Reader::next`] with the login step timeout.
    async fn next_step(&mut self) -> anyhow::Result<String> {
        tokio::time::timeout(LOGIN_STEP, self.next())
            .await
            .context("login step timed out")?
    }
}

enum Event {
    /// `<stream:stream …>` opened.
    Header,
    /// A complete top-level element (stanza, nonza, features), as text.
    Element(String),
    /// `</stream:stream>`.
    End,
}

/// Splits a stream into top-level elements by tracking tag depth (quotes respected, so a
/// `>` inside an attribute value does not end a tag).
#[derive(Default)]
struct Splitter {
    buf: Vec<u8>,
    /// Where scanning resumes; everything before it has been scanned.
    scan: usize,
    /// 0 outside the stream, 1 inside `<stream:stream>`, more inside an element.
    depth: usize,
    /// Start of the top-level element being read.
    start: usize,
}

impl Splitter {
    fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// A new stream follows (after SASL success the server opens a fresh one).
    fn restart(&mut self) {
        self.depth = 0;
    }

    fn next(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            let Some(open) = self.buf[self.scan..].iter().position(|&b| b == b'<') else {
                self.scan = self.buf.len();
                return Ok(None);
            };
            let open = self.scan + open;
            let Some(close) = tag_end(&self.buf[open..]) else {
                self.scan = open;
                return Ok(None);
            };
            let close = open + close;
            self.scan = close + 1;
            let tag = &self.buf[open..=close];
            match tag.get(1) {
                Some(b'?' | b'!') => {}
                Some(b'/') => match self.depth {
                    0 => bail!("unbalanced XML from the server"),
                    1 => {
                        self.depth = 0;
                        self.consume();
                        return Ok(Some(Event::End));
                    }
                    _ => {
                        self.depth -= 1;
                        if self.depth == 1 {
                            return Ok(Some(self.take()));
                        }
                    }
                },
                _ if tag.ends_with(b"/>") => {
                    if self.depth == 1 {
                        self.start = open;
                        return Ok(Some(self.take()));
                    }
                }
                _ => {
                    if self.depth == 0 {
                        self.depth = 1;
                        self.consume();
                        return Ok(Some(Event::Header));
                    }
                    if self.depth == 1 {
                        self.start = open;
                    }
                    self.depth += 1;
                }
            }
        }
    }

    /// The element from `start` to the scan position; drops what precedes it.
    fn take(&mut self) -> Event {
        let element = String::from_utf8_lossy(&self.buf[self.start..self.scan]).into_owned();
        self.consume();
        Event::Element(element)
    }

    fn consume(&mut self) {
        self.buf.drain(..self.scan);
        self.scan = 0;
        self.start = 0;
    }
}

/// Index of the `>` that ends the tag starting at `tag[0] == b'<'`, outside quotes.
fn tag_end(tag: &[u8]) -> Option<usize> {
    let mut quote = None;
    for (i, &b) in tag.iter().enumerate().skip(1) {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(b),
            (None, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// The qualified name of an element: `message`, `stream:features`, …
fn name(element: &str) -> &str {
    element[1..]
        .split(|c: char| c.is_whitespace() || c == '/' || c == '>')
        .next()
        .unwrap_or_default()
}

/// An attribute of the element's start tag.
fn attr<'a>(element: &'a str, key: &str) -> Option<&'a str> {
    let head = &element[..tag_end(element.as_bytes())?];
    ['\'', '"'].into_iter().find_map(|quote| {
        let pattern = format!(" {key}={quote}");
        let value = &head[head.find(&pattern)? + pattern.len()..];
        Some(&value[..value.find(quote)?])
    })
}

/// The text of the first `<child>` (no attributes, no markup inside).
fn text<'a>(element: &'a str, child: &str) -> Option<&'a str> {
    let open = format!("<{child}>");
    let from = element.find(&open)? + open.len();
    let len = element[from..].find('<')?;
    Some(&element[from..from + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elements(chunks: &[&str]) -> Vec<String> {
        let mut splitter = Splitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.feed(chunk.as_bytes());
            while let Some(event) = splitter.next().unwrap() {
                out.push(match event {
                    Event::Header => "HEADER".to_owned(),
                    Event::Element(e) => e,
                    Event::End => "END".to_owned(),
                });
            }
        }
        out
    }

    #[test]
    fn splits_top_level_elements_across_chunk_boundaries() {
        let stream = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' id='1'>\
            <stream:features><mechanisms><mechanism>PLAIN</mechanism></mechanisms></stream:features>\
            <r xmlns='urn:xmpp:sm:3'/><message id='a>b' type=\"chat\"><body>42</body></message>\
            </stream:stream>";
        let whole = elements(&[stream]);
        let bytewise: Vec<String> = {
            let chunks: Vec<String> = stream.chars().map(String::from).collect();
            elements(&chunks.iter().map(String::as_str).collect::<Vec<_>>())
        };
        assert_eq!(whole, bytewise);
        assert_eq!(whole.len(), 5);
        assert_eq!(whole[0], "HEADER");
        assert_eq!(name(&whole[1]), "stream:features");
        assert_eq!(name(&whole[2]), "r");
        assert_eq!(attr(&whole[3], "id"), Some("a>b"));
        assert_eq!(attr(&whole[3], "type"), Some("chat"));
        assert_eq!(text(&whole[3], "body"), Some("42"));
        assert_eq!(whole[4], "END");
    }

    #[test]
    fn restart_reads_a_new_stream_header() {
        let mut splitter = Splitter::default();
        splitter.feed(b"<stream:stream><success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        assert!(matches!(splitter.next().unwrap(), Some(Event::Header)));
        assert!(
            matches!(splitter.next().unwrap(), Some(Event::Element(e)) if name(&e) == "success")
        );
        splitter.restart();
        splitter.feed(b"<?xml version='1.0'?><stream:stream id='2'><stream:features/>");
        assert!(matches!(splitter.next().unwrap(), Some(Event::Header)));
        assert!(
            matches!(splitter.next().unwrap(), Some(Event::Element(e)) if name(&e) == "stream:features")
        );
    }
}
