//! Mixed chaos under steady traffic: one-on-one pairs and a group send numbered messages
//! the whole time through two gateway processes, while, a few seconds apart, (a) the
//! `INBOX` leader's NATS node is killed (SIGKILL, by PID) and restarted, (b) one gateway
//! process is killed, (c) one of the two fanout worker processes is killed, (d) one of
//! the two receipts and one of the two history worker processes are killed (the history
//! one restarted on its own store), and (e) Redis is restarted empty.
//!
//! It proves, for every fault at once: every message that got `sent` reaches every device
//! of every member (the sender's own device included) exactly once, with the id `sent`
//! named; each device's inbox stream has no gap (what it saw across its reconnects equals
//! a fresh read of its whole inbox); `delivered` receipts reach the sender for every
//! message a device acked on a connection that stayed up, never twice, and `read` marks
//! converge (groups: one `all: true` per message); and history pages every sent message
//! once, in id order, on both history workers.
//!
//! The checker is the clients, not the server's counters: each device task records every
//! frame it got (inbox sequence, message, receipt) and each sender which numbered message
//! got `sent` with which id. Senders wait for each answer before the next message and retry
//! `unavailable`, a lost connection or an unanswered send with the same client id, after
//! reconnecting to whichever gateway answers; a device that loses its socket resumes with
//! `after` = the last sequence it saw. Inbox order against send order is counted and
//! printed, not failed: docs/ARCHITECTURE.md (fanout) allows a message to reach the inbox
//! after later ones around a node or worker failure, and clients order by id.
//!
//! The gateways and workers are this test binary run again as child processes
//! (`chaos_gateway_process`, `chaos_worker_process`); the shared system runs no workers.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream;
use futures_util::{SinkExt, StreamExt};
use natter_e2e::{
    Client, child,
    child::TestProcess,
    client::{Socket, token},
    system::{self, Options, configure, history_settings, nats_settings, with_cluster, with_redis},
    unique,
};
use serde_json::{Value, json};
use tokio::{sync::watch, time::Instant};
use tokio_tungstenite::tungstenite::{self, Message};

const PAIRS: usize = 8;
const GROUP_MEMBERS: usize = 6;
const GROUP_SENDERS: usize = 3;
const ONE_ON_ONE_PACE: Duration = Duration::from_millis(50);
const GROUP_PACE: Duration = Duration::from_millis(150);
/// A bound on each sender, far above what the traffic window lets it send.
const MAX_PER_SENDER: u64 = 2_000;
/// Devices ack the newest sequence they saw this often.
const ACK_EVERY: Duration = Duration::from_millis(250);
/// An `unavailable` send is tried again after this.
const RETRY_AFTER: Duration = Duration::from_millis(250);
/// A send unanswered this long (the gateway retries a publish for 15 s) is sent again on
/// a new connection.
const ANSWER_PATIENCE: Duration = Duration::from_secs(20);
const RECONNECT_PATIENCE: Duration = Duration::from_secs(60);
/// How long each convergence (delivery, receipts, reads, history) may take after traffic.
const CONVERGENCE_PATIENCE: Duration = Duration::from_secs(60);
/// Time between faults.
const FAULT_SPACING: Duration = Duration::from_secs(4);

const URLS_VAR: &str = "NATTER_E2E_CHAOS_URLS";
const REDIS_VAR: &str = "NATTER_E2E_CHAOS_REDIS";
const NAME_VAR: &str = "NATTER_E2E_CHAOS_NAME";
const KIND_VAR: &str = "NATTER_E2E_CHAOS_KIND";
const INDEX_VAR: &str = "NATTER_E2E_CHAOS_INDEX";
const DATA_VAR: &str = "NATTER_E2E_CHAOS_DATA";

/// Runs a gateway (on the test Redis) until killed, when started by the test below.
#[test]
#[ignore = "a child process of the mixed chaos test, not a test"]
fn chaos_gateway_process() {
    let name = std::env::var(NAME_VAR).unwrap_or_default();
    child::gateway_process(URLS_VAR, &name, |config| {
        if let Ok(url) = std::env::var(REDIS_VAR) {
            config.redis.url = url;
        }
    });
}

/// Runs one kind of worker until killed, when started by the test below.
#[test]
#[ignore = "a child process of the mixed chaos test, not a test"]
fn chaos_worker_process() {
    let (Ok(urls), Ok(kind), Ok(index), Ok(data)) = (
        std::env::var(URLS_VAR),
        std::env::var(KIND_VAR),
        std::env::var(INDEX_VAR),
        std::env::var(DATA_VAR),
    ) else {
        return;
    };
    natter_fabric::process::init_tracing();
    let index: usize = index.parse().expect("a worker index");
    let settings = natter_workers::Settings {
        kind: match kind.as_str() {
            "fanout" => natter_workers::Kind::Fanout,
            "receipts" => natter_workers::Kind::Receipts,
            "history" => natter_workers::Kind::History,
            other => panic!("no worker kind {other}"),
        },
        nats: nats_settings(&urls, "workers", &format!("chaos-{kind}-{index}")),
        metrics_listen: None,
        canary: None,
        // Each history worker has its own store and consumer (a complete copy).
        history: Some(history_settings(Path::new(&data), index)),
        push: None,
        refused_patience: natter_workers::fanout::REFUSED_PATIENCE,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(natter_workers::run(settings, std::future::pending()))
        .expect("workers");
}

/// A gateway process named `name`, healthy, and its address. Its output goes to
/// `<data>/<name>.log`, where it announces its address: not a pipe, which the child would
/// write to after the reader is gone (libtest's "running for over 60 seconds" notice),
/// and die of.
async fn start_gateway(
    name: &str,
    urls: &str,
    redis: &str,
    data: &Path,
) -> (TestProcess, SocketAddr) {
    let log = data.join(format!("{name}.log"));
    let process = TestProcess::start(
        "chaos_gateway_process",
        &[(URLS_VAR, urls), (REDIS_VAR, redis), (NAME_VAR, name)],
        Some(&log),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr: SocketAddr = loop {
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(addr) = output.lines().find_map(|l| l.strip_prefix("listening ")) {
            break addr.parse().expect("the gateway's address");
        }
        assert!(Instant::now() < deadline, "{name} did not start: {output}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    system::wait_healthy(addr).await;
    (process, addr)
}

/// A worker process of `kind` number `index`, logging to `<data>/<log>.log`.
fn start_worker(kind: &str, index: usize, urls: &str, data: &Path, log: &str) -> TestProcess {
    let data_text = data.to_str().expect("a UTF-8 path");
    TestProcess::start(
        "chaos_worker_process",
        &[
            (URLS_VAR, urls),
            (KIND_VAR, kind),
            (INDEX_VAR, &index.to_string()),
            (DATA_VAR, data_text),
        ],
        Some(&data.join(format!("{log}.log"))),
    )
}

/// Where the test is: devices send only in `Traffic`, mark what they read in `Read`, and
/// close in `Done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Traffic,
    Quiet,
    Read,
    Done,
}

/// Time since the test started.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> Duration {
        self.0.elapsed()
    }
}

/// A message as a device received it.
#[derive(Debug, Clone)]
struct Received {
    conv: String,
    from: String,
    id: String,
    number: u64,
    seq: u64,
    at: Duration,
}

/// A receipt item as a sender's device received it (a watermark: it covers `id` and every
/// earlier message of the sender in `conv`).
#[derive(Debug, Clone)]
struct SeenReceipt {
    conv: String,
    id: String,
    by: String,
    status: String,
    all: Option<bool>,
    at: Duration,
}

/// A message that got `sent`.
#[derive(Debug, Clone)]
struct Sent {
    number: u64,
    id: String,
    conv: String,
    first_try: Duration,
    sent_at: Duration,
    attempts: u32,
}

#[derive(Debug, Clone)]
struct Reconnect {
    lost_at: Duration,
    back_at: Duration,
}

/// What one device saw and did: written by its task, read by the checker.
#[derive(Debug, Clone, Default)]
struct DeviceLog {
    received: Vec<Received>,
    receipts: Vec<SeenReceipt>,
    sent: Vec<Sent>,
    /// Every inbox sequence seen, in arrival order.
    seqs: Vec<u64>,
    /// Sequences that were not above the one before (a duplicate or reordering).
    seq_violations: Vec<String>,
    last_seq: u64,
    /// The `after` of the current connection: what is above it was acked on it.
    connection_after: u64,
    acked: u64,
    reconnects: Vec<Reconnect>,
    failures: Vec<String>,
    /// No new sends and none awaiting an answer.
    sending_done: bool,
    /// The `read` marks sent, conversation → newest message id from someone else.
    read_marks: BTreeMap<String, String>,
    /// The `read` marks went out (at least once): until then there is nothing to await.
    reads_marked: bool,
}

/// A numbered message stream from one device.
struct Plan {
    to: String,
    pace: Duration,
}

struct DeviceSpec {
    user: String,
    device: String,
    /// The gateway tried first (0 or 1); the other when it does not answer.
    home: usize,
    sends: Option<Plan>,
}

enum Attempt {
    Due(Instant),
    Awaiting {
        reference: String,
        deadline: Instant,
    },
}

/// The numbered message being sent, until it is `sent`.
struct Outgoing {
    number: u64,
    first_try: Duration,
    attempts: u32,
    state: Attempt,
}

enum Event {
    Frame(Option<Result<Message, tungstenite::Error>>),
    Timer,
    Stage,
}

/// One device: connects, records every frame, acks, sends its plan, reconnects to any
/// gateway with `after` when its socket dies.
struct DeviceTask {
    spec: DeviceSpec,
    gateways: Vec<SocketAddr>,
    log: Arc<Mutex<DeviceLog>>,
    clock: Clock,
    last_seq: u64,
    acked: u64,
    references: u64,
    outgoing: Option<Outgoing>,
    next_number: u64,
    next_send_at: Instant,
    next_ack_at: Instant,
    lost_at: Option<Duration>,
    reads_sent: bool,
}

impl DeviceTask {
    fn new(
        spec: DeviceSpec,
        gateways: Vec<SocketAddr>,
        log: Arc<Mutex<DeviceLog>>,
        clock: Clock,
    ) -> Self {
        Self {
            spec,
            gateways,
            log,
            clock,
            last_seq: 0,
            acked: 0,
            references: 0,
            outgoing: None,
            next_number: 0,
            next_send_at: Instant::now(),
            next_ack_at: Instant::now() + ACK_EVERY,
            lost_at: None,
            reads_sent: false,
        }
    }

    async fn run(mut self, mut stage: watch::Receiver<Stage>) {
        let mut socket: Option<Socket> = None;
        loop {
            let current = *stage.borrow_and_update();
            if current == Stage::Done {
                if let Some(mut ws) = socket {
                    let _ = ws.close(None).await;
                }
                return;
            }
            if current >= Stage::Quiet && self.outgoing.is_none() {
                self.log.lock().unwrap().sending_done = true;
            }
            let mut ws = match socket.take() {
                Some(ws) => ws,
                None => match self.reconnect().await {
                    Some(ws) => ws,
                    None => return,
                },
            };
            let healthy = if current >= Stage::Read && !self.reads_sent {
                self.send_reads(&mut ws).await
            } else {
                let wake = self.next_wake(current);
                let event = tokio::select! {
                    frame = ws.next() => Event::Frame(frame),
                    () = tokio::time::sleep_until(wake) => Event::Timer,
                    _ = stage.changed() => Event::Stage,
                };
                match event {
                    Event::Frame(Some(Ok(Message::Text(text)))) => {
                        self.on_frame(text.as_str());
                        true
                    }
                    Event::Frame(Some(Ok(Message::Close(_)) | Err(_)) | None) => false,
                    Event::Frame(Some(Ok(_))) | Event::Stage => true,
                    Event::Timer => self.on_timer(&mut ws, current).await,
                }
            };
            if healthy {
                socket = Some(ws);
            } else {
                self.lost_at = Some(self.clock.now());
            }
        }
    }

    /// A connection to the home gateway, else the other, resuming after `last_seq`.
    async fn reconnect(&mut self) -> Option<Socket> {
        let deadline = Instant::now() + RECONNECT_PATIENCE;
        let n = self.gateways.len();
        let (user, device, after) = (&self.spec.user, &self.spec.device, self.last_seq);
        let socket = 'found: loop {
            for k in 0..n {
                let addr = self.gateways[(self.spec.home + k) % n];
                let url = format!(
                    "ws://{addr}/v1/ws?token={}&device={device}&after={after}",
                    token(user)
                );
                let connect = tokio_tungstenite::connect_async_with_config(url, None, true);
                if let Ok(Ok((socket, _))) =
                    tokio::time::timeout(Duration::from_secs(5), connect).await
                {
                    break 'found Some(socket);
                }
            }
            if Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mut log = self.log.lock().unwrap();
        let Some(socket) = socket else {
            log.failures.push(format!(
                "{user}/{device}: no gateway took a connection within {RECONNECT_PATIENCE:?}"
            ));
            return None;
        };
        self.acked = after;
        self.reads_sent = false;
        if let Some(outgoing) = &mut self.outgoing {
            // Sent again with the same client id: answered with the first `sent`.
            outgoing.state = Attempt::Due(Instant::now());
        }
        log.connection_after = after;
        if let Some(lost_at) = self.lost_at.take() {
            log.reconnects.push(Reconnect {
                lost_at,
                back_at: self.clock.now(),
            });
        }
        Some(socket)
    }

    fn sending(&self, current: Stage) -> bool {
        current == Stage::Traffic && self.spec.sends.is_some() && self.next_number < MAX_PER_SENDER
    }

    fn next_wake(&self, current: Stage) -> Instant {
        let send = match &self.outgoing {
            Some(Outgoing {
                state: Attempt::Due(at),
                ..
            }) => Some(*at),
            Some(Outgoing {
                state: Attempt::Awaiting { deadline, .. },
                ..
            }) => Some(*deadline),
            None => self.sending(current).then_some(self.next_send_at),
        };
        send.map_or(self.next_ack_at, |at| at.min(self.next_ack_at))
    }

    fn on_frame(&mut self, text: &str) {
        let frame: Value = serde_json::from_str(text).expect("server sent invalid JSON");
        let at = self.clock.now();
        let mut log = self.log.lock().unwrap();
        let seq = frame["seq"].as_u64();
        if let Some(seq) = seq {
            if seq <= self.last_seq {
                log.seq_violations.push(format!(
                    "{}/{}: seq {seq} after {}: {frame}",
                    self.spec.user, self.spec.device, self.last_seq
                ));
            } else {
                self.last_seq = seq;
                log.last_seq = seq;
            }
            log.seqs.push(seq);
        }
        let text_of = |value: &Value| value.as_str().unwrap_or_default().to_owned();
        match frame["type"].as_str() {
            Some("msg") => log.received.push(Received {
                conv: text_of(&frame["conv"]),
                from: text_of(&frame["from"]),
                id: text_of(&frame["id"]),
                number: text_of(&frame["body"]["text"]).parse().unwrap_or(u64::MAX),
                seq: seq.unwrap_or_default(),
                at,
            }),
            Some("receipt") => log.receipts.push(SeenReceipt {
                conv: text_of(&frame["conv"]),
                id: text_of(&frame["id"]),
                by: text_of(&frame["by"]),
                status: text_of(&frame["status"]),
                all: frame["all"].as_bool(),
                at,
            }),
            Some(kind @ ("sent" | "error")) => {
                let Some(outgoing) = self.outgoing.as_mut() else {
                    return;
                };
                let Attempt::Awaiting { reference, .. } = &outgoing.state else {
                    return;
                };
                if frame["ref"] != reference.as_str() {
                    return;
                }
                if kind == "sent" {
                    log.sent.push(Sent {
                        number: outgoing.number,
                        id: text_of(&frame["id"]),
                        conv: text_of(&frame["conv"]),
                        first_try: outgoing.first_try,
                        sent_at: at,
                        attempts: outgoing.attempts,
                    });
                    self.outgoing = None;
                    self.next_number += 1;
                    let pace = self.spec.sends.as_ref().map_or(Duration::ZERO, |p| p.pace);
                    self.next_send_at = Instant::now() + pace;
                } else if frame["code"] == "unavailable" {
                    outgoing.state = Attempt::Due(Instant::now() + RETRY_AFTER);
                } else {
                    log.failures.push(format!(
                        "{}: send {} refused: {frame}",
                        self.spec.user, outgoing.number
                    ));
                    self.outgoing = None;
                    self.next_number += 1;
                }
            }
            _ => {}
        }
    }

    /// Acks, and starts, sends or gives up on (reconnects for) a message when due. False
    /// when the socket is gone.
    async fn on_timer(&mut self, ws: &mut Socket, current: Stage) -> bool {
        let now = Instant::now();
        if now >= self.next_ack_at {
            self.next_ack_at = now + ACK_EVERY;
            if self.last_seq > self.acked {
                let ack = json!({"type": "ack", "seq": self.last_seq});
                if ws.send(Message::text(ack.to_string())).await.is_err() {
                    return false;
                }
                self.acked = self.last_seq;
                self.log.lock().unwrap().acked = self.acked;
            }
        }
        if self.outgoing.is_none() && self.sending(current) && now >= self.next_send_at {
            self.outgoing = Some(Outgoing {
                number: self.next_number,
                first_try: self.clock.now(),
                attempts: 0,
                state: Attempt::Due(now),
            });
        }
        let (Some(outgoing), Some(plan)) = (self.outgoing.as_mut(), self.spec.sends.as_ref())
        else {
            return true;
        };
        let due = match &outgoing.state {
            Attempt::Due(at) => now >= *at,
            // Unanswered: the connection is suspect; send again on a new one.
            Attempt::Awaiting { deadline, .. } if now >= *deadline => return false,
            Attempt::Awaiting { .. } => false,
        };
        if !due {
            return true;
        }
        self.references += 1;
        let reference = format!("s{}", self.references);
        let send = json!({
            "type": "send", "id": format!("c{}", outgoing.number), "to": plan.to,
            "body": {"kind": "text", "text": outgoing.number.to_string()}, "ref": reference,
        });
        outgoing.attempts += 1;
        outgoing.state = Attempt::Awaiting {
            reference,
            deadline: now + ANSWER_PATIENCE,
        };
        ws.send(Message::text(send.to_string())).await.is_ok()
    }

    /// Marks every conversation read up to the newest message someone else sent in it.
    async fn send_reads(&mut self, ws: &mut Socket) -> bool {
        let mut marks: BTreeMap<String, String> = BTreeMap::new();
        for received in &self.log.lock().unwrap().received {
            if received.from != self.spec.user {
                let mark = marks.entry(received.conv.clone()).or_default();
                if received.id > *mark {
                    mark.clone_from(&received.id);
                }
            }
        }
        for (conv, up_to) in &marks {
            let read = json!({"type": "read", "conv": conv, "up_to": up_to});
            if ws.send(Message::text(read.to_string())).await.is_err() {
                return false;
            }
        }
        let mut log = self.log.lock().unwrap();
        log.read_marks = marks;
        log.reads_marked = true;
        drop(log);
        self.reads_sent = true;
        true
    }
}

struct Device {
    user: String,
    name: String,
    log: Arc<Mutex<DeviceLog>>,
}

/// A device's log at one moment, for the checker.
struct View {
    user: String,
    name: String,
    log: DeviceLog,
}

fn snapshot(devices: &[Device]) -> Vec<View> {
    devices
        .iter()
        .map(|d| View {
            user: d.user.clone(),
            name: d.name.clone(),
            log: d.log.lock().unwrap().clone(),
        })
        .collect()
}

struct Conversation {
    id: String,
    members: Vec<String>,
    group: bool,
}

impl Conversation {
    /// Each sender's `sent` messages in this conversation, in send order.
    fn sent_by<'a>(&self, views: &'a [View]) -> BTreeMap<&'a str, Vec<&'a Sent>> {
        let mut sent: BTreeMap<&str, Vec<&Sent>> = BTreeMap::new();
        for view in views {
            for s in view.log.sent.iter().filter(|s| s.conv == self.id) {
                sent.entry(view.user.as_str()).or_default().push(s);
            }
        }
        sent
    }

    fn devices<'a>(&'a self, views: &'a [View]) -> impl Iterator<Item = &'a View> + 'a {
        views.iter().filter(|v| self.members.contains(&v.user))
    }
}

fn dm(a: &str, b: &str) -> String {
    if a <= b {
        format!("dm:{a}:{b}")
    } else {
        format!("dm:{b}:{a}")
    }
}

/// Every device of every member against what was `sent`.
#[derive(Default)]
struct Delivery {
    /// (message, device) pairs expected and found.
    expected: usize,
    delivered: usize,
    lost: Vec<String>,
    doubled: Vec<String>,
    /// Received but never `sent` (or not with that number).
    unsent: Vec<String>,
    wrong_id: Vec<String>,
    /// One-on-one copies that reached a device after a message sent later by the same
    /// sender (the sender waits for `sent` before the next send, so there must be none).
    out_of_send_order: Vec<String>,
    /// The same in the group (reordering windows left around failures: ARCHITECTURE.md).
    group_out_of_send_order: usize,
}

impl Delivery {
    fn complete(&self) -> bool {
        self.lost.is_empty()
    }
}

fn check_delivery(convs: &[Conversation], views: &[View]) -> Delivery {
    let mut report = Delivery::default();
    for conv in convs {
        for (from, sent) in conv.sent_by(views) {
            let by_number: HashMap<u64, &Sent> = sent.iter().map(|s| (s.number, *s)).collect();
            for view in conv.devices(views) {
                let device = format!("{}/{}", view.user, view.name);
                let got: Vec<&Received> = view
                    .log
                    .received
                    .iter()
                    .filter(|r| r.conv == conv.id && r.from == from)
                    .collect();
                let mut copies: HashMap<u64, usize> = HashMap::new();
                let mut highest: Option<u64> = None;
                for r in &got {
                    *copies.entry(r.number).or_default() += 1;
                    match by_number.get(&r.number) {
                        None => report
                            .unsent
                            .push(format!("{device}: {from}'s {}", r.number)),
                        Some(s) if s.id != r.id => report.wrong_id.push(format!(
                            "{device}: {from}'s {} has id {}, sent as {}",
                            r.number, r.id, s.id
                        )),
                        Some(_) => {}
                    }
                    if let Some(h) = highest.filter(|h| r.number < *h) {
                        if conv.group {
                            report.group_out_of_send_order += 1;
                        } else {
                            report.out_of_send_order.push(format!(
                                "{device}: {from}'s {} after {h} in {}",
                                r.number, conv.id
                            ));
                        }
                    }
                    highest = highest.max(Some(r.number));
                }
                for s in &sent {
                    report.expected += 1;
                    match copies.get(&s.number).copied().unwrap_or(0) {
                        0 => report
                            .lost
                            .push(format!("{device}: {from}'s {} in {}", s.number, conv.id)),
                        1 => report.delivered += 1,
                        n => {
                            report.delivered += 1;
                            report
                                .doubled
                                .push(format!("{device}: {from}'s {} {n} times", s.number));
                        }
                    }
                }
            }
        }
    }
    report
}

/// Receipts at the senders against what the recipients acked and read. Receipts are
/// watermarks: one-on-one, a receipt `by` the peer covers every message of the sender up
/// to its id; in groups only receipts saying `all` come, and one covers every message of
/// the sender up to its id for every other member.
#[derive(Default)]
struct Receipts {
    /// (message, recipient) pairs acked on a connection that stayed up (in groups: by
    /// every other member): must be covered by a `delivered` (or `read`) receipt.
    expected: usize,
    missing: Vec<String>,
    /// Pairs acked only on connections that later died (the ack may not have reached the
    /// gateway; PROTOCOL.md: ack before you reconnect), not covered.
    missing_after_lost_connection: usize,
    duplicates: Vec<String>,
    missing_reads: Vec<String>,
    /// Group receipts that do not say `all` (none should come).
    wrong_all: Vec<String>,
}

impl Receipts {
    fn complete(&self, reads: bool) -> bool {
        self.missing.is_empty()
            && self.wrong_all.is_empty()
            && (!reads || self.missing_reads.is_empty())
    }
}

fn check_receipts(convs: &[Conversation], views: &[View], reads: bool) -> Receipts {
    let mut report = Receipts::default();
    // Per sender: every receipt their devices got.
    let mut seen: HashMap<&str, Vec<&SeenReceipt>> = HashMap::new();
    for view in views {
        let mut copies: HashMap<(&str, &str, &str, &str), usize> = HashMap::new();
        for r in &view.log.receipts {
            *copies
                .entry((&r.conv, &r.id, &r.by, &r.status))
                .or_default() += 1;
        }
        for ((conv, id, by, status), n) in copies.into_iter().filter(|(_, n)| *n > 1) {
            report.duplicates.push(format!(
                "{}/{}: {status} of {conv} up to {id} by {by} {n} times",
                view.user, view.name
            ));
        }
        seen.entry(view.user.as_str())
            .or_default()
            .extend(view.log.receipts.iter());
    }
    for conv in convs {
        for (from, sent) in conv.sent_by(views) {
            let at_sender: Vec<&SeenReceipt> = seen
                .get(from)
                .map(|all| all.iter().filter(|r| r.conv == conv.id).copied().collect())
                .unwrap_or_default();
            if conv.group {
                for r in at_sender.iter().filter(|r| r.all != Some(true)) {
                    report
                        .wrong_all
                        .push(format!("{from} got a group receipt without all: {r:?}"));
                }
            }
            // Whether a receipt covers message `id` with `status` (from `by`, one-on-one).
            let covered = |id: &str, by: Option<&str>, statuses: &[&str]| {
                at_sender.iter().any(|r| {
                    r.id.as_str() >= id
                        && statuses.contains(&r.status.as_str())
                        && by.is_none_or(|by| r.by == by)
                })
            };
            let others: Vec<&String> = conv.members.iter().filter(|m| *m != from).collect();
            for s in &sent {
                let acked_live = |other: &str| {
                    conv.devices(views).any(|v| {
                        v.user == other
                            && v.log.received.iter().any(|r| {
                                r.id == s.id
                                    && r.seq > v.log.connection_after
                                    && r.seq <= v.log.acked
                            })
                    })
                };
                let group = if conv.group { " (group)" } else { "" };
                let waits_for: Vec<&String> = if conv.group {
                    // `all` needs every other member.
                    if others.iter().all(|o| acked_live(o)) {
                        vec![]
                    } else {
                        others.iter().copied().filter(|o| !acked_live(o)).collect()
                    }
                } else {
                    others.iter().copied().filter(|o| !acked_live(o)).collect()
                };
                for &other in &others {
                    let by = (!conv.group).then_some(other.as_str());
                    let has = covered(&s.id, by, &["delivered", "read"]);
                    if waits_for.is_empty() || (!conv.group && !waits_for.contains(&other)) {
                        report.expected += 1;
                        if !has {
                            report.missing.push(format!(
                                "delivered of {from}'s {} (sent @{:.1?}) to {other}{group}",
                                s.number, s.sent_at
                            ));
                        }
                    } else if !has {
                        report.missing_after_lost_connection += 1;
                    }
                    if conv.group {
                        break; // one `all` receipt speaks for every member
                    }
                }
                if reads && conv.group {
                    let read_by_all = others.iter().all(|o| {
                        conv.devices(views).any(|v| {
                            v.user == o.as_str()
                                && v.log.read_marks.get(&conv.id).is_some_and(|m| *m >= s.id)
                        })
                    });
                    if read_by_all && waits_for.is_empty() && !covered(&s.id, None, &["read"]) {
                        report
                            .missing_reads
                            .push(format!("read of {from}'s {} by all", s.number));
                    }
                }
            }
            if reads && !conv.group {
                for view in conv.devices(views).filter(|v| v.user != from) {
                    if let Some(up_to) = view.log.read_marks.get(&conv.id)
                        && !covered(up_to, Some(view.user.as_str()), &["read"])
                    {
                        report.missing_reads.push(format!(
                            "read of {} up to {up_to} by {}",
                            conv.id, view.user
                        ));
                    }
                }
            }
        }
    }
    report
}

/// Polls `done` every 250 ms until it holds; how long that took, or None after `patience`.
async fn converge(patience: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if done() {
            return Some(started.elapsed());
        }
        if started.elapsed() >= patience {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn inbox_leader(js: &jetstream::Context) -> String {
    let mut stream = js.get_stream(natter_fabric::streams::INBOX).await.unwrap();
    let info = stream.info().await.unwrap();
    info.cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("INBOX has a leader")
}

/// A fresh device of `user` that has read its whole inbox from the start: its sequences.
async fn read_whole_inbox(gateway: SocketAddr, user: &str) -> (Client, Vec<u64>) {
    let mut client = Client::connect_to(gateway, user, "audit", 0).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(1_500), client.receive()).await {
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    client.pending.clear();
    let seqs = client.seqs.clone();
    (client, seqs)
}

/// Pages `conv` until two page-throughs in a row are exactly `expected` (the gateways ask
/// either history worker, so both have it); how long that took, or what was found.
async fn history_converges(
    client: &mut Client,
    conv: &str,
    expected: &[String],
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut in_a_row = 0;
    loop {
        let found = client.page_back(conv, 100).await;
        if found.as_deref() == Ok(expected) {
            in_a_row += 1;
            if in_a_row == 2 {
                return Ok(started.elapsed());
            }
            continue;
        }
        in_a_row = 0;
        if started.elapsed() >= CONVERGENCE_PATIENCE {
            return Err(match found {
                Ok(ids) => format!(
                    "history of {conv}: {} ids, expected {} (first difference at {:?})",
                    ids.len(),
                    expected.len(),
                    ids.iter().zip(expected).position(|(a, b)| a != b)
                ),
                Err(error) => format!("history of {conv}: {error}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Per phase (from one fault to the next): messages first tried in it, how many needed
/// more than one attempt, the longest wait for `sent`, the longest `sent` → last device,
/// and the longest `sent` → last `delivered` receipt.
fn print_phases(faults: &[(&str, Duration)], views: &[View]) {
    let mut arrived: HashMap<&str, Duration> = HashMap::new();
    let mut receipted: HashMap<&str, Duration> = HashMap::new();
    for view in views {
        for r in &view.log.received {
            let latest = arrived.entry(r.id.as_str()).or_default();
            *latest = (*latest).max(r.at);
        }
    }
    // A delivered receipt covers its id and the sender's earlier messages in its
    // conversation: each message's time is that of the first receipt covering it.
    for view in views {
        for s in &view.log.sent {
            let first = views
                .iter()
                .filter(|v| v.user == view.user)
                .flat_map(|v| &v.log.receipts)
                .filter(|r| r.status == "delivered" && r.conv == s.conv && r.id >= s.id)
                .map(|r| r.at)
                .min();
            if let Some(first) = first {
                receipted.insert(s.id.as_str(), first);
            }
        }
    }
    eprintln!(
        "{:<44} {:>6} {:>7} {:>10} {:>12} {:>12}",
        "phase (from)", "sent", "retried", "max wait", "max deliver", "max receipt"
    );
    for phase in 0..=faults.len() {
        let (label, from) = if phase == 0 {
            ("steady traffic", Duration::ZERO)
        } else {
            faults[phase - 1]
        };
        let until = faults.get(phase).map_or(Duration::MAX, |f| f.1);
        let sent: Vec<&Sent> = views
            .iter()
            .flat_map(|v| &v.log.sent)
            .filter(|s| s.first_try >= from && s.first_try < until)
            .collect();
        let longest = |f: &dyn Fn(&Sent) -> Duration| sent.iter().map(|s| f(s)).max();
        let wait = longest(&|s| s.sent_at - s.first_try);
        let deliver = longest(&|s| {
            arrived
                .get(s.id.as_str())
                .map_or(Duration::ZERO, |a| a.saturating_sub(s.sent_at))
        });
        let receipt = longest(&|s| {
            receipted
                .get(s.id.as_str())
                .map_or(Duration::ZERO, |a| a.saturating_sub(s.sent_at))
        });
        let retried = sent.iter().filter(|s| s.attempts > 1).count();
        eprintln!(
            "{:<44} {:>6} {:>7} {:>10.2?} {:>12.2?} {:>12.2?}",
            format!("{label} @{:.1?}", from),
            sent.len(),
            retried,
            wait.unwrap_or_default(),
            deliver.unwrap_or_default(),
            receipt.unwrap_or_default()
        );
    }
}

/// Copies the gateway and worker logs out of the cluster's directory (deleted at exit).
fn keep_logs(data: &Path) -> std::path::PathBuf {
    let kept = std::env::temp_dir().join(format!("natter-chaos-mixed-{}", std::process::id()));
    std::fs::create_dir_all(&kept).unwrap();
    for entry in std::fs::read_dir(data).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
        }
    }
    kept
}

fn first_few(items: &[String]) -> String {
    let shown: Vec<&String> = items.iter().take(8).collect();
    format!("{} (first: {shown:?})", items.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sent_message_arrives_once_through_node_gateway_worker_and_redis_failures() {
    configure(Options {
        workers: 0,
        ..Options::default()
    });
    let shared = system::system();
    let (urls, redis) = (shared.nats_urls.clone(), shared.redis_url.clone());
    let data = with_cluster(|c| c.dir().to_path_buf());
    let clock = Clock(Instant::now());

    // Processes, all spawned from this (the test's) thread, so they live as long as it.
    let (mut gateway_a, addr_a) = start_gateway("chaos-gateway-a", &urls, &redis, &data).await;
    let (_gateway_b, addr_b) = start_gateway("chaos-gateway-b", &urls, &redis, &data).await;
    let gateways = vec![addr_a, addr_b];
    let mut fanout =
        [0, 1].map(|i| start_worker("fanout", i, &urls, &data, &format!("fanout-{i}")));
    let mut receipts =
        [0, 1].map(|i| start_worker("receipts", i, &urls, &data, &format!("receipts-{i}")));
    let mut history =
        [0, 1].map(|i| start_worker("history", i, &urls, &data, &format!("history-{i}")));

    let pairs: Vec<(String, String)> = (0..PAIRS)
        .map(|_| (unique("alice"), unique("bob")))
        .collect();
    let members: Vec<String> = (0..GROUP_MEMBERS)
        .map(|i| unique(&format!("member{i}")))
        .collect();
    // The group, and readiness: its event fanned out, a history worker answering.
    let mut setup = Client::connect_to(addr_b, &members[0], "setup", 0).await;
    let group = setup
        .request(json!({"type": "group_create", "name": "Chaos", "members": members[1..]}))
        .await;
    let gid = group["id"].as_str().expect("group created").to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, setup.receive()).await {
            Ok(Some(frame)) if frame["type"] == "group_event" => break,
            Ok(Some(_)) => {}
            _ => panic!("no fanout worker delivered the group's event within 60 s"),
        }
    }
    loop {
        let page = setup
            .request(json!({"type": "history", "conv": format!("group:{gid}"), "limit": 1}))
            .await;
        if page["type"] == "history" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no history worker answered: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    setup.close().await;

    let mut specs = Vec::new();
    let mut convs = Vec::new();
    for (i, (alice, bob)) in pairs.iter().enumerate() {
        let to = format!("user:{bob}");
        let plan = Plan {
            to,
            pace: ONE_ON_ONE_PACE,
        };
        specs.push(DeviceSpec {
            user: alice.clone(),
            device: "phone".into(),
            home: (i + 1) % 2,
            sends: Some(plan),
        });
        specs.push(DeviceSpec {
            user: bob.clone(),
            device: "phone".into(),
            home: i % 2,
            sends: None,
        });
        if i < PAIRS / 2 {
            specs.push(DeviceSpec {
                user: bob.clone(),
                device: "laptop".into(),
                home: (i + 1) % 2,
                sends: None,
            });
        }
        convs.push(Conversation {
            id: dm(alice, bob),
            members: vec![alice.clone(), bob.clone()],
            group: false,
        });
    }
    for (i, member) in members.iter().enumerate() {
        let sends = (i < GROUP_SENDERS).then(|| Plan {
            to: format!("group:{gid}"),
            pace: GROUP_PACE,
        });
        specs.push(DeviceSpec {
            user: member.clone(),
            device: "phone".into(),
            home: i % 2,
            sends,
        });
    }
    convs.push(Conversation {
        id: format!("group:{gid}"),
        members: members.clone(),
        group: true,
    });

    let (stage, stage_rx) = watch::channel(Stage::Traffic);
    let mut devices = Vec::new();
    let mut tasks = Vec::new();
    for spec in specs {
        let log = Arc::new(Mutex::new(DeviceLog::default()));
        devices.push(Device {
            user: spec.user.clone(),
            name: spec.device.clone(),
            log: log.clone(),
        });
        let task = DeviceTask::new(spec, gateways.clone(), log, clock);
        tasks.push(tokio::spawn(task.run(stage_rx.clone())));
    }

    eprintln!(
        "[{:.1?}] {} devices sending and receiving",
        clock.now(),
        devices.len()
    );

    // The faults, a few seconds apart, while everyone sends.
    let admin = system::nats_as("workers", "chaos-mixed-admin").await;
    let js = jetstream::new(admin);
    let mut faults: Vec<(&str, Duration)> = Vec::new();
    tokio::time::sleep(FAULT_SPACING).await;
    let leader = inbox_leader(&js).await;
    let victim = with_cluster(|c| (0..c.len()).find(|i| c.name(*i) == leader))
        .expect("leader is a test node");
    with_cluster(|c| c.kill(victim));
    faults.push(("(a) NATS node of the INBOX leader killed", clock.now()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    with_cluster(|c| c.restart(victim));
    faults.push(("(a) that NATS node restarted", clock.now()));
    tokio::time::sleep(FAULT_SPACING).await;
    gateway_a.kill();
    faults.push(("(b) gateway A killed", clock.now()));
    tokio::time::sleep(FAULT_SPACING).await;
    fanout[0].kill();
    faults.push(("(c) fanout worker 0 killed", clock.now()));
    tokio::time::sleep(FAULT_SPACING).await;
    receipts[0].kill();
    history[0].kill();
    faults.push(("(d) receipts 0 and history 0 killed", clock.now()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    history[0] = start_worker("history", 0, &urls, &data, "history-0-restarted");
    faults.push(("(d) history 0 restarted on its store", clock.now()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    with_redis(|r| r.restart());
    faults.push(("(e) Redis restarted empty", clock.now()));
    tokio::time::sleep(FAULT_SPACING).await;
    stage.send_replace(Stage::Quiet);
    let traffic_end = clock.now();
    eprintln!("[{traffic_end:.1?}] faults done, sending stopped: {faults:?}");

    // Convergence, each step bounded.
    let sending = converge(CONVERGENCE_PATIENCE, || {
        snapshot(&devices)
            .iter()
            .all(|v| v.log.sending_done || !v.log.failures.is_empty())
    })
    .await;
    let delivery_time = converge(CONVERGENCE_PATIENCE, || {
        check_delivery(&convs, &snapshot(&devices)).complete()
    })
    .await;
    let acked = converge(Duration::from_secs(10), || {
        snapshot(&devices)
            .iter()
            .all(|v| v.log.acked == v.log.last_seq)
    })
    .await;
    let receipt_time = converge(CONVERGENCE_PATIENCE, || {
        check_receipts(&convs, &snapshot(&devices), false).complete(false)
    })
    .await;
    stage.send_replace(Stage::Read);
    // Complete only once every device has sent its marks: before that nothing is missing.
    let read_time = converge(CONVERGENCE_PATIENCE, || {
        let views = snapshot(&devices);
        views.iter().all(|v| v.log.reads_marked)
            && check_receipts(&convs, &views, true).complete(true)
    })
    .await;
    let views = snapshot(&devices);
    let delivery = check_delivery(&convs, &views);
    let receipt_report = check_receipts(&convs, &views, true);
    let sent: usize = views.iter().map(|v| v.log.sent.len()).sum();
    let reconnects: Vec<&Reconnect> = views.iter().flat_map(|v| &v.log.reconnects).collect();
    let longest_reconnect = reconnects.iter().map(|r| r.back_at - r.lost_at).max();
    eprintln!(
        "mixed chaos ({} build): {} devices, traffic for {traffic_end:.1?}",
        natter_e2e::build_profile(),
        views.len()
    );
    print_phases(&faults, &views);
    eprintln!(
        "sent {sent}; device copies expected {}, delivered {}, lost {}, doubled {}, unsent {}, \
         wrong id {}, out of send order {} one-on-one and {} in the group; {} reconnects \
         (longest {longest_reconnect:.2?})",
        delivery.expected,
        delivery.delivered,
        delivery.lost.len(),
        delivery.doubled.len(),
        delivery.unsent.len(),
        delivery.wrong_id.len(),
        delivery.out_of_send_order.len(),
        delivery.group_out_of_send_order,
        reconnects.len()
    );
    eprintln!(
        "after traffic: senders done in {sending:.2?}, all delivered in {delivery_time:.2?}, \
         acks in {acked:.2?}, delivered receipts in {receipt_time:.2?}, reads in {read_time:.2?}"
    );
    eprintln!(
        "receipts: {} (message, recipient) pairs acked on live connections, {} without a \
         receipt ({} of them in the group); {} acked only on connections that died without \
         one; {} duplicates; {} reads missing; {} wrong `all`",
        receipt_report.expected,
        receipt_report.missing.len(),
        receipt_report
            .missing
            .iter()
            .filter(|m| m.ends_with("(group)"))
            .count(),
        receipt_report.missing_after_lost_connection,
        receipt_report.duplicates.len(),
        receipt_report.missing_reads.len(),
        receipt_report.wrong_all.len()
    );

    // No gap: each live device saw exactly the sequences a fresh read of its inbox finds.
    let mut users: Vec<String> = devices.iter().map(|d| d.user.clone()).collect();
    users.dedup();
    let audits =
        futures_util::future::join_all(users.iter().map(|u| read_whole_inbox(addr_b, u))).await;
    let mut gaps = Vec::new();
    let views = snapshot(&devices);
    for (user, (_, audit)) in users.iter().zip(&audits) {
        let newest = audit.last().copied().unwrap_or(0);
        let whole: HashSet<u64> = audit.iter().copied().collect();
        for view in views.iter().filter(|v| v.user == *user) {
            let live: HashSet<u64> = view.log.seqs.iter().copied().collect();
            let unseen = audit.iter().filter(|s| !live.contains(s)).count();
            let unknown = (view.log.seqs.iter())
                .filter(|s| **s <= newest && !whole.contains(s))
                .count();
            if unseen + unknown > 0 {
                gaps.push(format!(
                    "{user}/{}: {unseen} inbox items never seen, {unknown} seen but not in the inbox",
                    view.name
                ));
            }
        }
    }
    eprintln!(
        "[{:.1?}] inboxes of {} users read again from the start",
        clock.now(),
        users.len()
    );

    // History: every sent message once, in id order, on both workers.
    let mut clients: HashMap<String, Client> = users
        .iter()
        .cloned()
        .zip(audits.into_iter().map(|(c, _)| c))
        .collect();
    let mut history_failures = Vec::new();
    let mut history_time = Duration::ZERO;
    for conv in &convs {
        let mut expected: Vec<String> = conv
            .sent_by(&views)
            .values()
            .flatten()
            .map(|s| s.id.clone())
            .collect();
        expected.sort();
        let client = clients.get_mut(&conv.members[0]).expect("an audit client");
        match history_converges(client, &conv.id, &expected).await {
            Ok(took) => history_time = history_time.max(took),
            Err(failure) => history_failures.push(failure),
        }
    }
    eprintln!(
        "[{:.1?}] history of {} conversations paged; the slowest complete on both workers after \
         {history_time:.2?} of polling",
        clock.now(),
        convs.len()
    );
    for (_, client) in clients {
        client.close().await;
    }
    stage.send_replace(Stage::Done);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }

    let verdict = [
        (
            "device failures",
            views.iter().flat_map(|v| v.log.failures.clone()).collect(),
        ),
        (
            "inbox sequences not increasing",
            views
                .iter()
                .flat_map(|v| v.log.seq_violations.clone())
                .collect(),
        ),
        ("lost", delivery.lost),
        ("doubled", delivery.doubled),
        ("received but never sent", delivery.unsent),
        ("ids other than `sent` named", delivery.wrong_id),
        ("one-on-one out of send order", delivery.out_of_send_order),
        ("inbox gaps", gaps),
        ("delivered receipts missing", receipt_report.missing),
        ("duplicate receipts", receipt_report.duplicates),
        ("read receipts missing", receipt_report.missing_reads),
        ("group `all` wrong", receipt_report.wrong_all),
        ("history", history_failures),
    ];
    let problems: Vec<String> = verdict
        .into_iter()
        .filter(|(_, found)| !found.is_empty())
        .map(|(what, found): (&str, Vec<String>)| format!("{what}: {}", first_few(&found)))
        .collect();
    if !problems.is_empty() {
        let kept = keep_logs(&data);
        panic!(
            "{}\nprocess logs kept in {}",
            problems.join("\n"),
            kept.display()
        );
    }
}
