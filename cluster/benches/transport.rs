//! Internode transport benchmark (docs/BENCHMARKS.md): run with
//! `cargo bench -p cohort-cluster --bench transport`.
//!
//! Two transports on loopback in one process, each on its own single-worker tokio runtime (two
//! nodes on a 2-core machine). Measures:
//! 1. `user`-class throughput for 64 B and 4 KiB payloads, next to a plain tokio TCP socket doing
//!    the same length-prefixed writes (64 KiB `BufWriter`, the same `FrameDecoder` on the reader)
//!    in the same run; the ratio is the figure.
//! 2. `raft`-class round-trip latency (A sends, B echoes on `raft`), p50/p99, unloaded and with a
//!    saturating `user` flood from A to B running at the same time.
//! 3. Handshake cost: `BENCH_HANDSHAKES` (default 100) peers dial one transport at the same time
//!    and run the whole Noise handshake; the time until every one is established (a peer refused
//!    as `busy`, beyond the 64 handshakes in progress, dials again 5 ms later, as a link's backoff
//!    would).
//!
//! Environment: `BENCH_SECONDS` (throughput window per case, default 2), `BENCH_PINGS` (round
//! trips per latency case, default 5000); tuning: `BENCH_SNDBUF` (`SO_SNDBUF` of both links),
//! `BENCH_RCVBUF` (`SO_RCVBUF` of accepted links), each in bytes with 0 for the kernel's
//! autotuning, and `BENCH_BATCH_BYTES`; `BENCH_DEBUG` prints the snapshots after each throughput
//! case; `BENCH_ONLY=transport:4096` (or `plain:4096`) runs only that throughput case and
//! prints each busy thread's CPU time per payload byte; `BENCH_ONLY=raft:4096` runs only the raft
//! round trips, unloaded and under that flood.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cohort_cluster::auth::ClusterSecret;
use cohort_cluster::frame::{FrameDecoder, MAX_FRAME_BYTES, encode_into};
use cohort_cluster::net::transport::{KIND_HELLO, KIND_HELLO_ACK, KIND_PROOF};
use cohort_cluster::net::transport::{SendError, Transport, TransportConfig};
use cohort_cluster::queue::Class;
use cohort_cluster::secure::{Initiator, Keyring};
use cohort_cluster::{FaultInjector, MemberAddrs, MemberInfo, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::runtime::Runtime;

const CLUSTER: &str = "bench";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime")
}

fn member(transport: &Transport) -> MemberInfo {
    let unused: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    MemberInfo {
        id: transport.local().clone(),
        addrs: MemberAddrs { gossip: unused, internode: transport.local_addr(), http: unused },
        raft_eligible: true,
        failure_domain: String::new(),
    }
}

/// `Some(None)` for `NAME=0` (kernel autotuning), `Some(Some(n))` for `NAME=n`, `None` if unset.
fn buffer_override(name: &str) -> Option<Option<u32>> {
    let bytes: u32 = std::env::var(name).ok()?.parse().ok()?;
    Some((bytes > 0).then_some(bytes))
}

/// The transport config, with `BENCH_SNDBUF`, `BENCH_RCVBUF` and `BENCH_BATCH_BYTES` overrides
/// for tuning runs.
fn bench_config() -> TransportConfig {
    let mut config = TransportConfig::default();
    if let Some(bytes) = buffer_override("BENCH_SNDBUF") {
        config.socket_send_buffer_bytes = bytes;
    }
    if let Some(bytes) = buffer_override("BENCH_RCVBUF") {
        config.socket_recv_buffer_bytes = bytes;
    }
    if let Some(bytes) = std::env::var("BENCH_BATCH_BYTES").ok().and_then(|v| v.parse().ok()) {
        config.write_batch_max_bytes = bytes;
    }
    config
}

struct Pair {
    rt_a: Runtime,
    rt_b: Runtime,
    a: Transport,
    b: Transport,
}

fn start_pair(config: &TransportConfig) -> Pair {
    let secret = ClusterSecret::from_bytes(&[7; 32]).expect("secret");
    let (rt_a, rt_b) = (runtime(), runtime());
    let start = |rt: &Runtime, name: &str| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let registry = prometheus::Registry::new();
        rt.block_on(Transport::start(
            NodeId::new(name, 1),
            Keyring::new(CLUSTER, &secret, None),
            listener,
            FaultInjector::disabled(),
            config.clone(),
            &registry,
        ))
        .expect("start")
    };
    let a = start(&rt_a, "a");
    let b = start(&rt_b, "b");
    a.peer_up(&member(&b));
    b.peer_up(&member(&a));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(connected(&a, "b") && connected(&b, "a")) {
        assert!(Instant::now() < deadline, "pair did not connect");
        std::thread::sleep(Duration::from_millis(5));
    }
    Pair { rt_a, rt_b, a, b }
}

fn connected(t: &Transport, peer: &str) -> bool {
    t.snapshot().peers.iter().any(|p| p.node.name == peer && p.connected)
}

impl Pair {
    fn shutdown(self) {
        self.rt_a.block_on(self.a.shutdown());
        self.rt_b.block_on(self.b.shutdown());
    }
}

/// A `user` flood from A to B: sends `payload` until `stop`, yielding when the queue is
/// saturated and every 256 sends (a cooperative sender, like an actor).
fn spawn_flood(pair: &Pair, payload: Bytes, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let a = pair.a.clone();
    pair.rt_a.spawn(async move {
        let mut sent = 0u64;
        let mut since_yield = 0u32;
        while !stop.load(Ordering::Relaxed) {
            match a.send("b", Class::User, 0, payload.clone()) {
                Ok(_) => {
                    sent += 1;
                    since_yield += 1;
                    if since_yield >= 256 {
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
                Err(SendError::QueueSaturated { .. }) => tokio::task::yield_now().await,
                Err(other) => panic!("flood send: {other}"),
            }
        }
        sent
    })
}

/// Counts `user` frames delivered at B.
fn spawn_user_sink(pair: &Pair, received: Arc<AtomicU64>) {
    let mut rx = pair.b.subscribe(Class::User).expect("user receiver");
    pair.rt_b.spawn(async move {
        while rx.recv().await.is_some() {
            received.fetch_add(1, Ordering::Relaxed);
        }
    });
}

struct Throughput {
    msgs_per_sec: f64,
    mb_per_sec: f64,
}

/// Per thread of this process: (name, ns on a CPU, ns waiting for one), from
/// `/proc/self/task/*/schedstat`; empty where that does not exist.
fn thread_times() -> Vec<(String, u64, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default().trim().to_owned();
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().unwrap_or(0));
        let (run, wait) = (fields.next().unwrap_or(0), fields.next().unwrap_or(0));
        out.push((format!("{name}/{}", task.file_name().to_string_lossy()), run, wait));
    }
    out
}

fn measure(received: &AtomicU64, payload_len: usize, warmup: Duration, window: Duration) -> Throughput {
    std::thread::sleep(warmup);
    let before = thread_times();
    let (start_count, start) = (received.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(window);
    let n = received.load(Ordering::Relaxed) - start_count;
    let secs = start.elapsed().as_secs_f64();
    if std::env::var("BENCH_ONLY").is_ok() {
        // CPU cost per payload byte of each busy thread: unlike throughput, hardly moved by other
        // load on the machine (the wait column says how much of that there was).
        let bytes = (n as f64 * payload_len as f64).max(1.0);
        for (name, run, wait) in thread_times() {
            let Some((_, run0, wait0)) = before.iter().find(|(other, _, _)| *other == name) else { continue };
            let (run, wait) = (run - run0, wait - wait0);
            if run as f64 > 0.05 * secs * 1e9 {
                println!(
                    "  {name:<24} on cpu {:>5.1} %, {:.3} ns per payload byte, waited {:.1} % of the window",
                    run as f64 / secs / 1e7,
                    run as f64 / bytes,
                    wait as f64 / secs / 1e7
                );
            }
        }
    }
    let msgs_per_sec = n as f64 / secs;
    // Payload bytes only (the same for both sides of the comparison).
    Throughput { msgs_per_sec, mb_per_sec: msgs_per_sec * payload_len as f64 / 1e6 }
}

fn transport_throughput(config: &TransportConfig, payload_len: usize, window: Duration) -> Throughput {
    let pair = start_pair(config);
    let received = Arc::new(AtomicU64::new(0));
    spawn_user_sink(&pair, Arc::clone(&received));
    let stop = Arc::new(AtomicBool::new(false));
    let flood = spawn_flood(&pair, Bytes::from(vec![0xab; payload_len]), Arc::clone(&stop));
    let result = measure(&received, payload_len, Duration::from_millis(300), window);
    stop.store(true, Ordering::Relaxed);
    let sent = pair.rt_a.block_on(flood).unwrap_or(0);
    if std::env::var("BENCH_DEBUG").is_ok() {
        let a = &pair.a.snapshot().peers[0].classes[4];
        let b = &pair.b.snapshot().peers[0].classes[4];
        eprintln!("debug: sent {sent} a->b {a:?} b {b:?} received {}", received.load(Ordering::Relaxed));
    }
    pair.shutdown();
    result
}

/// The same frames over a plain socket: a writer task encoding into a 64 KiB `BufWriter`, a
/// reader task decoding with the same `FrameDecoder` and counting.
fn plain_socket_throughput(payload_len: usize, window: Duration) -> Throughput {
    let (rt_a, rt_b) = (runtime(), runtime());
    let listener = rt_b.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    rt_b.spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        stream.set_nodelay(true).expect("nodelay");
        let decoder = FrameDecoder::new(MAX_FRAME_BYTES);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            while let Ok(Some(_frame)) = decoder.decode(&mut buf) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            if buf.capacity() - buf.len() < 32 * 1024 {
                buf.reserve(64 * 1024);
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writer_stop = Arc::clone(&stop);
    let payload = Bytes::from(vec![0xab; payload_len]);
    let writer = rt_a.spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut writer = BufWriter::with_capacity(64 * 1024, stream);
        let mut frame = BytesMut::with_capacity(payload.len() + 6);
        while !writer_stop.load(Ordering::Relaxed) {
            for _ in 0..256 {
                frame.clear();
                encode_into(&mut frame, Class::User, 0, &payload, MAX_FRAME_BYTES).expect("encode");
                writer.write_all(&frame).await.expect("write");
            }
        }
        let _ = writer.flush().await;
    });
    let result = measure(&received, payload_len, Duration::from_millis(300), window);
    stop.store(true, Ordering::Relaxed);
    let _ = rt_a.block_on(writer);
    result
}

/// Round trips of one `raft` frame A → B → A, with or without a `user` flood A → B.
fn raft_round_trips(config: &TransportConfig, pings: usize, flood_payload: Option<usize>) -> Vec<Duration> {
    let pair = start_pair(config);
    let mut raft_at_b = pair.b.subscribe(Class::Raft).expect("raft at b");
    let b = pair.b.clone();
    pair.rt_b.spawn(async move {
        while let Some(inbound) = raft_at_b.recv().await {
            let _ = b.send(&inbound.from.name, Class::Raft, inbound.kind, inbound.payload);
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    spawn_user_sink(&pair, Arc::clone(&received));
    let flood = flood_payload.map(|len| spawn_flood(&pair, Bytes::from(vec![0xcd; len]), Arc::clone(&stop)));
    if flood.is_some() {
        // Let the flood fill the queues and socket buffers first.
        let deadline = Instant::now() + Duration::from_secs(5);
        while received.load(Ordering::Relaxed) < 10_000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut raft_at_a = pair.a.subscribe(Class::Raft).expect("raft at a");
    let a = pair.a.clone();
    let samples = pair.rt_a.block_on(async move {
        let mut samples = Vec::with_capacity(pings);
        for i in 0..(pings + pings / 10) as u64 {
            let start = Instant::now();
            a.send("b", Class::Raft, 1, Bytes::copy_from_slice(&i.to_be_bytes())).expect("raft send");
            loop {
                let echo = tokio::time::timeout(Duration::from_secs(10), raft_at_a.recv())
                    .await
                    .expect("raft echo timed out")
                    .expect("raft channel");
                if echo.payload[..] == i.to_be_bytes() {
                    break;
                }
            }
            // The first 10% warm up.
            if i as usize >= pings / 10 {
                samples.push(start.elapsed());
            }
        }
        samples
    });
    stop.store(true, Ordering::Relaxed);
    if let Some(flood) = flood {
        let _ = pair.rt_a.block_on(flood);
    }
    pair.shutdown();
    samples
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn buffer_label(bytes: Option<u32>) -> String {
    bytes.map_or_else(|| "autotuned".to_owned(), |bytes| format!("{bytes} B"))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep that short.
    let quick = std::env::args().all(|arg| arg != "--bench");
    let window =
        Duration::from_secs(if quick { 0 } else { env_or("BENCH_SECONDS", 2) }).max(Duration::from_millis(200));
    let pings = if quick { 200 } else { env_or("BENCH_PINGS", 5000) as usize };
    let config = bench_config();

    println!("cohort internode transport benchmark (two single-worker runtimes, loopback)");
    println!(
        "config: write batch {} frames / {} B, SO_SNDBUF {}, accepted SO_RCVBUF {}",
        config.write_batch_max_frames,
        config.write_batch_max_bytes,
        buffer_label(config.socket_send_buffer_bytes),
        buffer_label(config.socket_recv_buffer_bytes),
    );
    println!();
    println!(
        "{:<10} {:>16} {:>12} {:>16} {:>12} {:>8}",
        "payload", "transport msg/s", "MB/s", "plain msg/s", "MB/s", "ratio"
    );
    // `BENCH_ONLY=transport:4096` (or `plain:N`) runs that one throughput case and exits: for
    // profiling one side with `perf`.
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let (side, len) = only.split_once(':').unwrap_or((&only, "4096"));
        let len: usize = len.parse().expect("BENCH_ONLY payload length");
        if side == "raft" {
            // Round trips unloaded, then under a flood of `len`-byte frames.
            let mut p99s = Vec::new();
            for flood in [None, Some(len)] {
                let mut samples = raft_round_trips(&config, pings, flood);
                samples.sort_unstable();
                let (p50, p99) = (percentile(&samples, 0.50), percentile(&samples, 0.99));
                p99s.push(p99);
                println!("raft {flood:?}: p50 {:.0} µs, p99 {:.0} µs", micros(p50), micros(p99));
            }
            println!("raft p99 under {len} B flood / unloaded: {:.2}x", p99s[1].as_secs_f64() / p99s[0].as_secs_f64());
            return;
        }
        let t = if side == "plain" {
            plain_socket_throughput(len, window)
        } else {
            transport_throughput(&config, len, window)
        };
        println!("{side} {len} B: {:.0} msg/s, {:.1} MB/s", t.msgs_per_sec, t.mb_per_sec);
        return;
    }
    for payload_len in [64usize, 4096] {
        let ours = transport_throughput(&config, payload_len, window);
        let plain = plain_socket_throughput(payload_len, window);
        println!(
            "{:<10} {:>16.0} {:>12.1} {:>16.0} {:>12.1} {:>7.0}%",
            format!("{payload_len} B"),
            ours.msgs_per_sec,
            ours.mb_per_sec,
            plain.msgs_per_sec,
            plain.mb_per_sec,
            100.0 * ours.msgs_per_sec / plain.msgs_per_sec
        );
    }
    println!();
    println!("{:<34} {:>10} {:>10} {:>10}", "raft round trip", "p50 µs", "p99 µs", "max µs");
    let mut p99s = Vec::new();
    for (label, flood) in
        [("unloaded", None), ("under 4 KiB user flood", Some(4096)), ("under 64 B user flood", Some(64))]
    {
        let mut samples = raft_round_trips(&config, pings, flood);
        samples.sort_unstable();
        let p99 = percentile(&samples, 0.99);
        p99s.push(p99);
        println!(
            "{:<34} {:>10.0} {:>10.0} {:>10.0}",
            label,
            micros(percentile(&samples, 0.50)),
            micros(p99),
            micros(*samples.last().unwrap_or(&Duration::ZERO))
        );
    }
    println!();
    for (label, p99) in [("4 KiB flood", p99s[1]), ("64 B flood", p99s[2])] {
        println!("raft p99 {label} / unloaded: {:.2}x", p99.as_secs_f64() / p99s[0].as_secs_f64());
    }
    println!();
    let peers = if quick { 10 } else { env_or("BENCH_HANDSHAKES", 100) as usize };
    let (took, redials) = simultaneous_handshakes(peers);
    println!(
        "{peers} simultaneous handshakes: all established in {:.0} ms ({redials} redials after busy)",
        took.as_secs_f64() * 1e3
    );
}

/// `peers` tasks dial one transport at once and run the initiator handshake by hand; the time
/// until the transport has accepted every one (after its confirm) and how many dials were
/// refused as busy.
fn simultaneous_handshakes(peers: usize) -> (Duration, u64) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let secret = ClusterSecret::from_bytes(&[7; 32]).expect("secret");
    let keys = Keyring::new(CLUSTER, &secret, None);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let registry = prometheus::Registry::new();
    let b = rt
        .block_on(Transport::start(
            NodeId::new("b", 1),
            keys.clone(),
            listener,
            FaultInjector::disabled(),
            bench_config(),
            &registry,
        ))
        .expect("start");
    let addr = b.local_addr();
    let redials = Arc::new(AtomicU64::new(0));
    let accepted = || {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == "cohort_internode_connections")
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.value() == "accepted"))
            .map(|m| m.get_gauge().get_value())
            .sum::<f64>()
    };
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..peers {
            let (keys, redials) = (keys.clone(), Arc::clone(&redials));
            tasks.spawn(async move {
                loop {
                    if let Some(stream) = handshake_once(addr, &keys, &format!("p{i}")).await {
                        return stream;
                    }
                    redials.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
        // Connections stay open until the transport has accepted every one.
        let mut open = Vec::with_capacity(peers);
        while let Some(Ok(stream)) = tasks.join_next().await {
            open.push(stream);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while accepted() < peers as f64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(open);
    });
    let took = started.elapsed();
    rt.block_on(b.shutdown());
    (took, redials.load(Ordering::Relaxed))
}

/// One dial and handshake as peer `name`: the connection, or `None` if it was refused or closed.
async fn handshake_once(addr: SocketAddr, keys: &Keyring, name: &str) -> Option<tokio::net::TcpStream> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (initiator, hello) = Initiator::start(keys, &NodeId::new(name, 1), KIND_HELLO).ok()?;
    let mut wire = BytesMut::new();
    encode_into(&mut wire, Class::Control, KIND_HELLO, &hello, 1024).ok()?;
    stream.write_all(&wire).await.ok()?;
    let decoder = FrameDecoder::new(1024);
    let mut buf = BytesMut::new();
    let ack = loop {
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) if frame.kind == KIND_HELLO_ACK => break frame.payload,
            Ok(None) => {}
            _ => return None,
        }
        if stream.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
    };
    let (_, confirm, _) = initiator.on_ack(&ack).ok()?;
    wire.clear();
    encode_into(&mut wire, Class::Control, KIND_PROOF, &confirm, 1024).ok()?;
    stream.write_all(&wire).await.ok()?;
    Some(stream)
}
