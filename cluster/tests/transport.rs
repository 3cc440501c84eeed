//! Wiring tests of the internode transport (SPEC 5.2): real sockets on 127.0.0.1, port 0, bounded
//! polls with deadlines. Timing never decides an assertion; deadlines only bound how long a test
//! waits for a behaviour.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cohort_cluster::auth::ClusterSecret;
use cohort_cluster::faults::{Direction, FaultRule, FaultRules};
use cohort_cluster::frame::{Frame, FrameDecoder, MAX_FRAME_BYTES, encode_into};
use cohort_cluster::net::transport::{
    Inbound, KIND_HELLO, KIND_HELLO_ACK, KIND_HELLO_BULK, KIND_PROOF, SendError, SendOutcome, Transport,
    TransportConfig,
};
use cohort_cluster::queue::Class;
use cohort_cluster::secure::{Initiator, Keyring, Opener, Responder, Sealer};
use cohort_cluster::{FaultInjector, MemberAddrs, MemberInfo, NodeId};
use prometheus::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::Receiver;

/// How long a test waits for a behaviour before failing.
const DEADLINE: Duration = Duration::from_secs(10);
const CLUSTER: &str = "test-cluster";

fn secret() -> ClusterSecret {
    ClusterSecret::from_bytes(&[7; 32]).unwrap()
}

fn keys() -> Keyring {
    Keyring::new(CLUSTER, &secret(), None)
}

fn fast_config() -> TransportConfig {
    TransportConfig {
        connect_timeout: Duration::from_secs(1),
        handshake_timeout: Duration::from_millis(500),
        reconnect_backoff_min: Duration::from_millis(10),
        reconnect_backoff_max: Duration::from_millis(100),
        reconnect_attempts_per_second: std::num::NonZeroU32::new(1000).unwrap(),
        shutdown_grace: Duration::from_millis(200),
        ..TransportConfig::default()
    }
}

struct Node {
    transport: Transport,
    registry: Registry,
    faults: FaultInjector,
}

impl Node {
    fn member(&self) -> MemberInfo {
        member_at(self.transport.local().clone(), self.transport.local_addr())
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.registry, name, labels)
    }

    fn dropped(&self, class: &str, reason: &str) -> f64 {
        self.metric("cohort_internode_dropped_total", &[("class", class), ("reason", reason)])
    }

    fn handshake_failures(&self, reason: &str) -> f64 {
        self.metric("cohort_internode_handshake_failures_total", &[("reason", reason)])
    }

    fn total_handshake_failures(&self) -> f64 {
        family_sum(&self.registry, "cohort_internode_handshake_failures_total")
    }
}

fn member_at(id: NodeId, internode: SocketAddr) -> MemberInfo {
    let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
    MemberInfo {
        id,
        addrs: MemberAddrs { gossip: unused, internode, http: unused },
        raft_eligible: false,
        failure_domain: String::new(),
    }
}

async fn start_node(name: &str, cluster: &str, secret: ClusterSecret, config: TransportConfig) -> Node {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    start_on(NodeId::new(name, 1), cluster, secret, listener, config).await
}

async fn start_on(
    id: NodeId,
    cluster: &str,
    secret: ClusterSecret,
    listener: std::net::TcpListener,
    config: TransportConfig,
) -> Node {
    let registry = Registry::new();
    let faults = FaultInjector::enabled();
    let transport =
        Transport::start(id, Keyring::new(cluster, &secret, None), listener, faults.clone(), config, &registry)
            .await
            .unwrap();
    Node { transport, registry, faults }
}

fn metric(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let families = registry.gather();
    let Some(family) = families.iter().find(|f| f.name() == name) else { return 0.0 };
    for m in family.get_metric() {
        let matches = labels.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v));
        if matches {
            return m.get_counter().get_value() + m.get_gauge().get_value();
        }
    }
    0.0
}

fn family_sum(registry: &Registry, name: &str) -> f64 {
    let families = registry.gather();
    families
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

/// Polls `condition` until it holds or the deadline passes.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn recv(rx: &mut Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(DEADLINE, rx.recv()).await.expect("timed out waiting for a frame").expect("channel closed")
}

/// Two connected nodes a and b, each knowing the other.
async fn pair() -> (Node, Node) {
    let a = start_node("a", CLUSTER, secret(), fast_config()).await;
    let b = start_node("b", CLUSTER, secret(), fast_config()).await;
    a.transport.peer_up(&b.member());
    b.transport.peer_up(&a.member());
    (a, b)
}

fn connected(node: &Node, peer: &str) -> bool {
    node.transport.snapshot().peers.iter().any(|p| p.node.name == peer && p.connected)
}

/// A port nobody listens on.
fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A connection dialled and authenticated by hand: frames written on it are sealed.
struct ByHand {
    stream: TcpStream,
    sealer: Sealer,
}

impl ByHand {
    /// Seals `plaintext` (encoded frames, or garbage) into one record and writes it.
    async fn write_sealed(&mut self, plaintext: &[u8]) {
        let mut records = BytesMut::new();
        self.sealer.seal(plaintext, &mut records).unwrap();
        self.stream.write_all(&records).await.unwrap();
    }

    async fn write_frame(&mut self, class: Class, kind: u8, payload: &[u8]) {
        let mut wire = BytesMut::new();
        encode_into(&mut wire, class, kind, payload, MAX_FRAME_BYTES).unwrap();
        self.write_sealed(&wire).await;
    }
}

/// Reads the next handshake frame off `stream` (what was already read stays in `buf`).
async fn read_control(stream: &mut TcpStream, buf: &mut BytesMut) -> Frame {
    let decoder = FrameDecoder::new(1024);
    loop {
        if let Some(frame) = decoder.decode(buf).unwrap() {
            return frame;
        }
        let read = tokio::time::timeout(DEADLINE, stream.read_buf(buf)).await.expect("timed out in the handshake");
        assert!(read.unwrap() > 0, "closed during the handshake");
    }
}

/// Dials `addr` and runs the initiator handshake by hand, as a peer named `name`.
async fn handshake_by_hand(addr: SocketAddr, name: &str) -> ByHand {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (initiator, hello) = Initiator::start(&keys(), &NodeId::new(name, 1), KIND_HELLO).unwrap();
    write_control(&mut stream, KIND_HELLO, &hello).await;
    let ack = read_control(&mut stream, &mut BytesMut::new()).await;
    assert_eq!((ack.class, ack.kind), (Class::Control, KIND_HELLO_ACK));
    let (established, confirm, sealer) = initiator.on_ack(&ack.payload).unwrap();
    assert_eq!(established.peer.name, "b");
    write_control(&mut stream, KIND_PROOF, &confirm).await;
    ByHand { stream, sealer }
}

/// An accepted connection answered by hand: its records are opened as they are read.
struct Accepted {
    stream: TcpStream,
    raw: BytesMut,
    plain: BytesMut,
    opener: Opener,
}

impl Accepted {
    /// Reads the next frame.
    async fn read_frame(&mut self) -> Frame {
        let decoder = FrameDecoder::new(MAX_FRAME_BYTES);
        loop {
            self.opener.open(&mut self.raw, &mut self.plain).unwrap();
            if let Some(frame) = decoder.decode(&mut self.plain).unwrap() {
                return frame;
            }
            let read = tokio::time::timeout(DEADLINE, self.stream.read_buf(&mut self.raw))
                .await
                .expect("timed out waiting for a frame");
            assert!(read.unwrap() > 0, "connection closed");
        }
    }
}

/// Accepts one connection on `listener` and answers its handshake by hand as node "b". Returns
/// the frame kind of the initiator's hello (it names the link) and the connection.
async fn accept_by_hand(listener: &tokio::net::TcpListener) -> (u8, Accepted) {
    let (mut stream, _) = tokio::time::timeout(DEADLINE, listener.accept()).await.expect("no dial").unwrap();
    let mut raw = BytesMut::new();
    let hello = read_control(&mut stream, &mut raw).await;
    assert_eq!(hello.class, Class::Control);
    let (awaiting, ack) = Responder::on_hello(&keys(), &NodeId::new("b", 1), hello.kind, &hello.payload).unwrap();
    write_control(&mut stream, KIND_HELLO_ACK, &ack).await;
    let confirm = read_control(&mut stream, &mut raw).await;
    assert_eq!((confirm.class, confirm.kind), (Class::Control, KIND_PROOF));
    let (peer, opener) = awaiting.on_confirm(&confirm.payload).unwrap();
    assert_eq!(peer.peer.name, "a");
    (hello.kind, Accepted { stream, raw, plain: BytesMut::new(), opener })
}

async fn write_control(stream: &mut TcpStream, kind: u8, message: &[u8]) {
    let mut wire = BytesMut::new();
    encode_into(&mut wire, Class::Control, kind, message, 1024).unwrap();
    stream.write_all(&wire).await.unwrap();
}

/// Waits until the other side closes `stream` (EOF or reset).
async fn closed_by_peer(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection was not closed");
}

fn seq(n: u32) -> Bytes {
    Bytes::copy_from_slice(&n.to_be_bytes())
}

fn seq_of(inbound: &Inbound) -> u32 {
    u32::from_be_bytes(inbound.payload[..4].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_every_class_flow_both_ways_in_order_tagged_with_sender() {
    let (a, b) = pair().await;
    let mut at_a: Vec<_> = Class::ALL.iter().map(|c| a.transport.subscribe(*c).unwrap()).collect();
    let mut at_b: Vec<_> = Class::ALL.iter().map(|c| b.transport.subscribe(*c).unwrap()).collect();
    assert!(a.transport.subscribe(Class::User).is_none(), "one consumer per class");

    const N: u32 = 200;
    for i in 0..N {
        for (k, class) in Class::ALL.into_iter().enumerate() {
            assert_eq!(a.transport.send("b", class, k as u8, seq(i)), Ok(SendOutcome::Queued));
            assert_eq!(b.transport.send("a", class, k as u8, seq(i)), Ok(SendOutcome::Queued));
        }
    }
    for (k, class) in Class::ALL.into_iter().enumerate() {
        for i in 0..N {
            let got = recv(&mut at_b[k]).await;
            assert_eq!((got.from.clone(), got.kind, seq_of(&got)), (NodeId::new("a", 1), k as u8, i), "{class}");
            let got = recv(&mut at_a[k]).await;
            assert_eq!((got.from.clone(), got.kind, seq_of(&got)), (NodeId::new("b", 1), k as u8, i), "{class}");
        }
    }
    let frame_bytes = (N as u64) * (4 + 2 + 4);
    // A writer counts its batch out after `write_all` returns, which can be after the peer has
    // read it; the receiving side counts before delivering.
    eventually("a's write counters caught up", || {
        a.transport.snapshot().peers[0].classes[Class::User.code() as usize].bytes_out == frame_bytes
            && a.metric("cohort_internode_frames_total", &[("class", "raft"), ("direction", "out")]) == N as f64
    })
    .await;
    let snapshot = a.transport.snapshot();
    let row = &snapshot.peers[0].classes[Class::User.code() as usize];
    assert_eq!((row.bytes_out, row.bytes_in, row.depth, row.dropped), (frame_bytes, frame_bytes, 0, 0));
    assert_eq!(a.metric("cohort_internode_frames_total", &[("class", "raft"), ("direction", "out")]), N as f64);
    assert_eq!(b.metric("cohort_internode_frames_total", &[("class", "raft"), ("direction", "in")]), N as f64);
    // Two links each way: priority (control + raft) and bulk (pg + registry + user).
    assert_eq!(a.metric("cohort_internode_connections", &[("state", "connected")]), 2.0);
    assert_eq!(a.metric("cohort_internode_connections", &[("state", "accepted")]), 2.0);
    a.transport.shutdown().await;
    b.transport.shutdown().await;
}

/// Frames of every size around a record's (65,519 bytes of frames): packed whole into records,
/// cut across records when larger, and a small frame behind a large one: all arrive whole and
/// in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_smaller_and_larger_than_a_record_arrive_whole_and_in_order() {
    let (a, b) = pair().await;
    let mut at_b = b.transport.subscribe(Class::User).unwrap();
    let record = cohort_cluster::secure::MAX_RECORD_PLAINTEXT;
    // Payload lengths; each frame adds 6 bytes of header.
    let sizes =
        [0, 1, 4096, record - 6, record - 5, record - 4096, 4096, 70_000, 3, 1 << 20, record - 6, 2 * record, 10];
    for round in 0..3u8 {
        for (i, len) in sizes.iter().enumerate() {
            let payload: Bytes = (0..*len).map(|j| (j as u8) ^ (i as u8) ^ round).collect::<Vec<_>>().into();
            assert_eq!(a.transport.send("b", Class::User, i as u8, payload), Ok(SendOutcome::Queued));
        }
    }
    for round in 0..3u8 {
        for (i, len) in sizes.iter().enumerate() {
            let got = recv(&mut at_b).await;
            assert_eq!((got.kind, got.payload.len()), (i as u8, *len), "round {round}");
            assert!(
                got.payload.iter().enumerate().all(|(j, b)| *b == (j as u8) ^ (i as u8) ^ round),
                "round {round}, frame {i}"
            );
        }
    }
    a.transport.shutdown().await;
    b.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_serializes_with_the_admin_field_names_and_send_errors_are_typed() {
    let a = start_node("a", CLUSTER, secret(), fast_config()).await;
    a.transport.peer_up(&member_at(NodeId::new("b", 1), dead_addr()));
    a.transport.peer_up(&a.member()); // itself: ignored
    assert_eq!(a.transport.send("b", Class::Pg, 1, Bytes::from_static(b"x")), Ok(SendOutcome::Queued));
    let json = serde_json::to_value(a.transport.snapshot()).unwrap();
    let peer = &json["peers"][0];
    assert_eq!(json["peers"].as_array().unwrap().len(), 1);
    assert_eq!(peer["node"]["name"], "b");
    assert_eq!(peer["connected"], false);
    let pg = &peer["classes"][2];
    assert_eq!(pg["class"], "pg");
    for field in ["depth", "capacity", "dropped", "bytes_out", "bytes_in"] {
        assert!(pg[field].is_u64(), "{field}");
    }
    assert_eq!((pg["depth"].as_u64(), pg["capacity"].as_u64()), (Some(1), Some(2048)));

    assert_eq!(a.transport.send("nobody", Class::User, 0, Bytes::new()), Err(SendError::UnknownPeer));
    let huge = Bytes::from(vec![0u8; MAX_FRAME_BYTES]);
    assert_eq!(
        a.transport.send("b", Class::User, 0, huge),
        Err(SendError::TooLarge { len: MAX_FRAME_BYTES + 2, max: MAX_FRAME_BYTES })
    );
    assert_eq!(a.dropped("user", "too_large"), 1.0);
    a.transport.shutdown().await;
    assert_eq!(a.transport.send("b", Class::User, 0, Bytes::new()), Err(SendError::ShuttingDown));
    assert_eq!(a.dropped("pg", "shutdown"), 1.0, "frames still queued at shutdown are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused_on_both_sides_as_bad_proof() {
    let a = start_node("a", CLUSTER, secret(), fast_config()).await;
    let b = start_node("b", CLUSTER, ClusterSecret::from_bytes(&[8; 32]).unwrap(), fast_config()).await;
    let mut at_b = b.transport.subscribe(Class::User).unwrap();
    a.transport.peer_up(&b.member());
    b.transport.peer_up(&a.member());
    a.transport.send("b", Class::User, 0, seq(1)).unwrap();
    eventually("both sides count bad_proof", || {
        a.handshake_failures("bad_proof") >= 1.0 && b.handshake_failures("bad_proof") >= 1.0
    })
    .await;
    assert!(!connected(&a, "b") && !connected(&b, "a"));
    assert!(at_b.try_recv().is_err(), "nothing crosses a refused handshake");
    assert_eq!(b.metric("cohort_internode_frames_total", &[("class", "user"), ("direction", "in")]), 0.0);
    eventually("the link keeps retrying", || a.metric("cohort_internode_reconnects_total", &[]) >= 1.0).await;
    a.transport.shutdown().await;
    b.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cluster_name_is_refused_as_cluster_mismatch() {
    let a = start_node("a", "cluster-one", secret(), fast_config()).await;
    let b = start_node("b", "cluster-two", secret(), fast_config()).await;
    a.transport.peer_up(&b.member());
    b.transport.peer_up(&a.member());
    eventually("both sides count cluster_mismatch", || {
        a.handshake_failures("cluster_mismatch") >= 1.0 && b.handshake_failures("cluster_mismatch") >= 1.0
    })
    .await;
    assert!(!connected(&a, "b") && !connected(&b, "a"));
    a.transport.shutdown().await;
    b.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_listener_is_refused_counted_and_good_peers_still_work() {
    let (a, b) = pair().await;
    let mut at_b = b.transport.subscribe(Class::User).unwrap();
    let addr = b.transport.local_addr();

    // Random bytes.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    let _ = stream.write_all(&noise).await;
    closed_by_peer(&mut stream).await;

    // A length prefix of 2 GiB: refused before anything is allocated for it.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, KIND_HELLO]).await.unwrap();
    closed_by_peer(&mut stream).await;
    eventually("oversized counted", || b.handshake_failures("oversized") >= 1.0).await;

    // Half a hello, then the connection closes.
    let (_, hello) = Initiator::start(&keys(), &NodeId::new("x", 1), KIND_HELLO).unwrap();
    let mut wire = BytesMut::new();
    encode_into(&mut wire, Class::Control, KIND_HELLO, &hello, 1024).unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&wire[..wire.len() / 2]).await.unwrap();
    drop(stream);
    eventually("truncated handshake counted", || b.handshake_failures("closed") >= 1.0).await;

    // Half a hello, then silence: the handshake timeout closes it.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&wire[..wire.len() / 2]).await.unwrap();
    closed_by_peer(&mut stream).await;
    assert!(b.handshake_failures("timeout") >= 1.0);
    assert!(b.total_handshake_failures() >= 4.0);

    // The good peer is unaffected.
    a.transport.send("b", Class::User, 9, seq(42)).unwrap();
    let got = recv(&mut at_b).await;
    assert_eq!((got.from.name.as_str(), got.kind, seq_of(&got)), ("a", 9, 42));
    a.transport.shutdown().await;
    b.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frame_after_handshake_closes_the_connection_and_the_peer_reconnects() {
    let b = start_node("b", CLUSTER, secret(), fast_config()).await;
    let mut at_b = b.transport.subscribe(Class::Raft).unwrap();
    let addr = b.transport.local_addr();

    let mut conn = handshake_by_hand(addr, "mallory").await;
    conn.write_frame(Class::Raft, 1, b"first").await;
    let got = recv(&mut at_b).await;
    assert_eq!((got.from.name.as_str(), &got.payload[..]), ("mallory", &b"first"[..]));
    eventually("accepted", || b.metric("cohort_internode_connections", &[("state", "accepted")]) == 1.0).await;

    // Oversized frame: 16 MiB + 1.
    conn.write_sealed(&((MAX_FRAME_BYTES as u32) + 1).to_be_bytes()).await;
    closed_by_peer(&mut conn.stream).await;
    eventually("too_large counted", || {
        b.metric("cohort_internode_frame_errors_total", &[("reason", "too_large")]) == 1.0
    })
    .await;

    // The peer reconnects; an unknown class code closes that connection too.
    let mut conn = handshake_by_hand(addr, "mallory").await;
    conn.write_frame(Class::Raft, 1, b"second").await;
    assert_eq!(&recv(&mut at_b).await.payload[..], b"second");
    conn.write_sealed(&[0, 0, 0, 2, 9, 0]).await;
    closed_by_peer(&mut conn.stream).await;
    eventually("unknown_class counted", || {
        b.metric("cohort_internode_frame_errors_total", &[("reason", "unknown_class")]) == 1.0
    })
    .await;

    let mut conn = handshake_by_hand(addr, "mallory").await;
    conn.write_frame(Class::Raft, 1, b"third").await;
    assert_eq!(&recv(&mut at_b).await.payload[..], b"third");
    b.transport.shutdown().await;
}

/// Wire security (issue 14): frames that are not sealed records of this connection are refused
/// and counted, and close the connection: a plaintext frame, a record replayed on the same
/// connection, a record with one bit flipped, and a record captured on one connection and
/// replayed on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_replayed_tampered_and_transplanted_records_are_refused_and_counted() {
    let b = start_node("b", CLUSTER, secret(), fast_config()).await;
    let mut at_b = b.transport.subscribe(Class::Raft).unwrap();
    let addr = b.transport.local_addr();
    let auth_failures = || b.metric("cohort_internode_frame_errors_total", &[("reason", "record_auth")]);

    // A plaintext frame after the handshake (the old protocol's traffic): not a record.
    let mut conn = handshake_by_hand(addr, "mallory").await;
    let mut wire = BytesMut::new();
    encode_into(&mut wire, Class::Raft, 1, b"plain", MAX_FRAME_BYTES).unwrap();
    conn.stream.write_all(&wire).await.unwrap();
    closed_by_peer(&mut conn.stream).await;
    eventually("plaintext counted", || {
        b.metric("cohort_internode_frame_errors_total", &[("reason", "record_length")]) == 1.0
    })
    .await;

    // A record replayed on its own connection: its nonce has passed.
    let mut conn = handshake_by_hand(addr, "mallory").await;
    let mut frame = BytesMut::new();
    encode_into(&mut frame, Class::Raft, 1, b"once", MAX_FRAME_BYTES).unwrap();
    let mut record = BytesMut::new();
    conn.sealer.seal(&frame, &mut record).unwrap();
    conn.stream.write_all(&record).await.unwrap();
    assert_eq!(&recv(&mut at_b).await.payload[..], b"once");
    conn.stream.write_all(&record).await.unwrap();
    closed_by_peer(&mut conn.stream).await;
    eventually("replay counted", || auth_failures() >= 1.0).await;

    // One bit flipped in a record.
    let mut conn = handshake_by_hand(addr, "mallory").await;
    let mut record = BytesMut::new();
    conn.sealer.seal(&frame, &mut record).unwrap();
    let last = record.len() - 1;
    record[last] ^= 0x01;
    conn.stream.write_all(&record).await.unwrap();
    closed_by_peer(&mut conn.stream).await;
    eventually("tampering counted", || auth_failures() >= 2.0).await;

    // A record captured on one connection, replayed on a fresh one (other session keys).
    let mut captured = BytesMut::new();
    handshake_by_hand(addr, "mallory").await.sealer.seal(&frame, &mut captured).unwrap();
    let mut conn = handshake_by_hand(addr, "mallory").await;
    conn.stream.write_all(&captured).await.unwrap();
    closed_by_peer(&mut conn.stream).await;
    eventually("transplant counted", || auth_failures() >= 3.0).await;
    assert!(at_b.try_recv().is_err(), "nothing but the one honest frame was delivered");
    b.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_queue_to_an_unreachable_peer_saturates_while_raft_and_control_drop_oldest() {
    let a = start_node("a", CLUSTER, secret(), fast_config()).await;
    a.transport.peer_up(&member_at(NodeId::new("b", 1), dead_addr()));
    let payload = Bytes::from_static(b"m");

    for _ in 0..8192 {
        assert_eq!(a.transport.send("b", Class::User, 0, payload.clone()), Ok(SendOutcome::Queued));
    }
    assert_eq!(
        a.transport.send("b", Class::User, 0, payload.clone()),
        Err(SendError::QueueSaturated { class: Class::User })
    );
    assert_eq!(a.dropped("user", "queue_full_refused"), 1.0);

    for (class, capacity) in [(Class::Raft, 4096), (Class::Control, 256)] {
        for _ in 0..capacity {
            assert_eq!(a.transport.send("b", class, 0, payload.clone()), Ok(SendOutcome::Queued));
        }
        assert_eq!(a.transport.send("b", class, 0, payload.clone()), Ok(SendOutcome::QueuedDroppedOldest));
        assert_eq!(a.dropped(class.as_str(), "queue_full_drop_oldest"), 1.0);
    }
    for _ in 0..2048 {
        a.transport.send("b", Class::Pg, 0, payload.clone()).unwrap();
    }
    assert_eq!(a.transport.send("b", Class::Pg, 0, payload.clone()), Ok(SendOutcome::DroppedNewest { resync: true }));
    assert!(a.transport.take_resync("b"));
    assert!(!a.transport.take_resync("b"));

    let snapshot = a.transport.snapshot();
    let user = &snapshot.peers[0].classes[Class::User.code() as usize];
    assert_eq!((user.depth, user.capacity, user.dropped), (8192, 8192, 1));
    assert!(!snapshot.peers[0].connected);
    assert_eq!(a.metric("cohort_internode_queue_depth", &[("class", "user")]), 8192.0);
    assert_eq!(a.metric("cohort_internode_queue_capacity", &[("class", "raft")]), 4096.0);
    eventually("the link keeps redialling", || a.metric("cohort_internode_reconnects_total", &[]) >= 2.0).await;
    assert_eq!(a.metric("cohort_internode_connections", &[("state", "connecting")]), 2.0, "both links redial");
    a.transport.shutdown().await;
}

/// Byte budgets (issue 14): large frames fill a class queue in bytes long before in frames. With
/// 1 MiB payloads the user queue (32 MiB) refuses its 32nd frame, and raft (32 MiB) drops its
/// oldest; the depth gauge and the drop counters follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_fill_class_queues_by_bytes_and_the_policies_apply() {
    let a = start_node("a", CLUSTER, secret(), fast_config()).await;
    a.transport.peer_up(&member_at(NodeId::new("b", 1), dead_addr()));
    let payload = Bytes::from(vec![0u8; 1 << 20]);
    let mut queued = 0;
    let refused = loop {
        match a.transport.send("b", Class::User, 0, payload.clone()) {
            Ok(SendOutcome::Queued) => queued += 1,
            other => break other,
        }
        assert!(queued <= 64, "the user queue never filled");
    };
    assert_eq!(refused, Err(SendError::QueueSaturated { class: Class::User }));
    assert_eq!(queued, 31, "31 frames of 1 MiB and their headers fit in 32 MiB");
    assert_eq!(a.metric("cohort_internode_queue_depth", &[("class", "user")]), 31.0);
    assert_eq!(a.dropped("user", "queue_full_refused"), 1.0);
    for _ in 0..31 {
        assert_eq!(a.transport.send("b", Class::Raft, 0, payload.clone()), Ok(SendOutcome::Queued));
    }
    assert_eq!(a.transport.send("b", Class::Raft, 0, payload.clone()), Ok(SendOutcome::QueuedDroppedOldest));
    assert_eq!(a.dropped("raft", "queue_full_drop_oldest"), 1.0);
    assert_eq!(a.metric("cohort_internode_queue_depth", &[("class", "raft")]), 31.0);
    a.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_frames_are_delivered_during_a_user_flood() {
    let (a, b) = pair().await;
    let mut raft_at_b = b.transport.subscribe(Class::Raft).unwrap();
    let mut user_at_b = b.transport.subscribe(Class::User).unwrap();
    let user_received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = user_received.clone();
    let consumer = tokio::spawn(async move {
        while user_at_b.recv().await.is_some() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood_stop = stop.clone();
    let flood_transport = a.transport.clone();
    let flood = tokio::spawn(async move {
        let payload = Bytes::from(vec![0u8; 1024]);
        let (mut sent, mut saturated) = (0u64, 0u64);
        while !flood_stop.load(std::sync::atomic::Ordering::Relaxed) {
            match flood_transport.send("b", Class::User, 0, payload.clone()) {
                Ok(_) => sent += 1,
                Err(SendError::QueueSaturated { .. }) => {
                    saturated += 1;
                    tokio::task::yield_now().await;
                }
                Err(other) => panic!("{other}"),
            }
            if sent % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        (sent, saturated)
    });
    eventually("the flood is flowing", || user_received.load(std::sync::atomic::Ordering::Relaxed) > 1000).await;

    for i in 0..200 {
        a.transport.send("b", Class::Raft, 1, seq(i)).unwrap();
    }
    for i in 0..200 {
        let got = recv(&mut raft_at_b).await;
        assert_eq!(seq_of(&got), i, "raft frames arrive in order");
    }
    assert!(!flood.is_finished(), "raft got through while the flood was still running");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, _saturated) = flood.await.unwrap();
    assert!(sent > 1000);
    assert_eq!(a.dropped("raft", "queue_full_drop_oldest"), 0.0);
    a.transport.shutdown().await;
    b.transport.shutdown().await;
    consumer.await.unwrap();
}

/// "b" is played by hand: it accepts both of a's links and never reads the bulk one, so the bulk
/// link stalls with its kernel buffers full and `user` frames queued behind them. Raft and
/// control frames must still arrive, on the priority link, and nothing else may use that link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_and_control_use_the_priority_link_and_arrive_while_the_bulk_link_is_stalled() {
    let a = start_node("a", CLUSTER, secret(), fast_config()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    a.transport.peer_up(&member_at(NodeId::new("b", 1), listener.local_addr().unwrap()));
    let (mut priority, mut bulk) = (None, None);
    while priority.is_none() || bulk.is_none() {
        let (kind, accepted) = accept_by_hand(&listener).await;
        match kind {
            KIND_HELLO => priority = Some(accepted),
            KIND_HELLO_BULK => bulk = Some(accepted),
            other => panic!("hello of unknown kind {other}"),
        }
    }
    let (mut priority, mut bulk) = (priority.unwrap(), bulk.unwrap());
    eventually("both links connected", || connected(&a, "b")).await;

    a.transport.send("b", Class::Pg, 1, seq(0)).unwrap();
    a.transport.send("b", Class::Registry, 2, seq(0)).unwrap();
    // Nobody reads the bulk link: its writer blocks once the socket buffers are full, then the
    // user queue fills up and refuses.
    let payload = Bytes::from(vec![0u8; 1024]);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match a.transport.send("b", Class::User, 3, payload.clone()) {
            Ok(_) => {}
            Err(SendError::QueueSaturated { .. }) => break,
            Err(other) => panic!("{other}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "the user queue never saturated");
        tokio::task::yield_now().await;
    }

    const N: u32 = 100;
    for i in 0..N {
        a.transport.send("b", Class::Raft, 4, seq(i)).unwrap();
        a.transport.send("b", Class::Control, 5, seq(i)).unwrap();
    }
    let (mut next_raft, mut next_control) = (0, 0);
    while next_raft < N || next_control < N {
        let frame = priority.read_frame().await;
        let n = u32::from_be_bytes(frame.payload[..4].try_into().unwrap());
        match (frame.class, frame.kind) {
            (Class::Raft, 4) => {
                assert_eq!(n, next_raft, "raft in order");
                next_raft += 1;
            }
            (Class::Control, 5) => {
                assert_eq!(n, next_control, "control in order");
                next_control += 1;
            }
            other => panic!("{other:?} on the priority link"),
        }
    }
    // 8 MiB of user frames were queued, far more than the bulk link's socket buffers hold
    // (128 KiB each side: nobody reads, so the receive window never grows): the bulk link cannot
    // have drained, so raft and control did not travel behind it.
    let user = &a.transport.snapshot().peers[0].classes[Class::User.code() as usize];
    assert!(user.depth > 0, "the bulk link drained although nobody read it");

    // The bulk link carries the weighted classes, in their drain order.
    let mut classes = Vec::new();
    for _ in 0..3 {
        classes.push(bulk.read_frame().await.class);
    }
    assert_eq!(classes, [Class::Pg, Class::Registry, Class::User]);
    a.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_reconnects_after_the_peer_restarts_on_the_same_port() {
    let (a, b) = pair().await;
    let addr = b.transport.local_addr();
    let mut at_b = b.transport.subscribe(Class::User).unwrap();
    a.transport.send("b", Class::User, 0, seq(0)).unwrap();
    assert_eq!(seq_of(&recv(&mut at_b).await), 0);
    b.transport.shutdown().await;
    eventually("a notices the lost connection", || !connected(&a, "b")).await;

    // The same name restarts on the same port, as a new incarnation.
    let listener = std::net::TcpListener::bind(addr).unwrap();
    let b2 = start_on(NodeId::new("b", 2), CLUSTER, secret(), listener, fast_config()).await;
    let mut at_b2 = b2.transport.subscribe(Class::User).unwrap();
    eventually("a reconnects", || connected(&a, "b")).await;
    // A frame written into the dying connection may be lost (at most once), so probe until one
    // lands rather than assuming the first does.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let got = loop {
        a.transport.send("b", Class::User, 0, seq(1)).unwrap();
        if let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(50), at_b2.recv()).await {
            break got;
        }
        assert!(tokio::time::Instant::now() < deadline, "no frame after the restart");
    };
    assert_eq!((got.from.clone(), seq_of(&got)), (NodeId::new("a", 1), 1));
    assert!(a.metric("cohort_internode_reconnects_total", &[]) >= 1.0);

    // Membership then reports the new incarnation: it replaces the old peer entry.
    a.transport.peer_up(&b2.member());
    eventually("new incarnation connected", || {
        a.transport.snapshot().peers.iter().any(|p| p.node == NodeId::new("b", 2) && p.connected)
    })
    .await;
    a.transport.send("b", Class::User, 0, seq(2)).unwrap();
    loop {
        if seq_of(&recv(&mut at_b2).await) == 2 {
            break;
        }
    }
    a.transport.shutdown().await;
    b2.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_down_drops_queued_frames_and_counts_them() {
    let a = start_node("a", CLUSTER, secret(), fast_config()).await;
    let b = member_at(NodeId::new("b", 1), dead_addr());
    a.transport.peer_up(&b);
    for i in 0..10 {
        a.transport.send("b", Class::User, 0, seq(i)).unwrap();
        a.transport.send("b", Class::Raft, 0, seq(i)).unwrap();
    }
    // A down event for an older incarnation does not remove the current one.
    a.transport.peer_down(&member_at(NodeId::new("b", 0), b.addrs.internode));
    assert_eq!(a.transport.snapshot().peers.len(), 1);

    a.transport.peer_down(&b);
    assert_eq!(a.dropped("user", "peer_down"), 10.0);
    assert_eq!(a.dropped("raft", "peer_down"), 10.0);
    assert!(a.transport.snapshot().peers.is_empty());
    assert_eq!(a.transport.send("b", Class::User, 0, seq(0)), Err(SendError::UnknownPeer));
    assert_eq!(a.metric("cohort_internode_queue_depth", &[("class", "user")]), 0.0);
    assert_eq!(a.metric("cohort_internode_queue_capacity", &[("class", "user")]), 0.0);
    eventually("the link task is gone", || a.metric("cohort_internode_connections", &[("state", "connecting")]) == 0.0)
        .await;
    a.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injected_drop_stops_delivery_and_clearing_restores_it() {
    let (a, b) = pair().await;
    let mut at_b = b.transport.subscribe(Class::User).unwrap();
    a.transport.send("b", Class::User, 0, seq(0)).unwrap();
    assert_eq!(seq_of(&recv(&mut at_b).await), 0);

    let mut rule = FaultRule::new("b", Direction::Out);
    rule.drop = 1.0;
    a.faults.install(FaultRules { rules: vec![rule] }).unwrap();
    for i in 1..=20 {
        a.transport.send("b", Class::User, 0, seq(i)).unwrap();
    }
    eventually("20 drops counted", || a.dropped("user", "fault_injected") == 20.0).await;

    a.faults.clear().unwrap();
    a.transport.send("b", Class::User, 0, seq(99)).unwrap();
    assert_eq!(seq_of(&recv(&mut at_b).await), 99, "none of the dropped frames arrived; delivery resumed");

    // The inbound direction, filtered at the receiver.
    let mut rule = FaultRule::new("a", Direction::In);
    rule.drop = 1.0;
    b.faults.install(FaultRules { rules: vec![rule] }).unwrap();
    a.transport.send("b", Class::User, 0, seq(100)).unwrap();
    eventually("inbound drop counted", || b.dropped("user", "fault_injected") == 1.0).await;
    b.faults.clear().unwrap();
    a.transport.send("b", Class::User, 0, seq(101)).unwrap();
    assert_eq!(seq_of(&recv(&mut at_b).await), 101);
    a.transport.shutdown().await;
    b.transport.shutdown().await;
}

/// A delay fault models a slow link, not a throttled one: every frame arrives `delay` late, in
/// order, while the frames behind it keep moving (a writer or reader sleeping per frame would
/// need frames x delay). In both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_fault_delays_every_frame_in_order_without_throttling_the_link() {
    const FRAMES: u32 = 100;
    const DELAY: Duration = Duration::from_millis(300);
    let (a, b) = pair().await;
    let mut at_b = b.transport.subscribe(Class::User).unwrap();
    a.transport.send("b", Class::User, 0, seq(0)).unwrap();
    assert_eq!(seq_of(&recv(&mut at_b).await), 0, "the link is up before the fault");

    for (node, peer, direction) in [(&a, "b", Direction::Out), (&b, "a", Direction::In)] {
        let mut rule = FaultRule::new(peer, direction);
        rule.delay_ms = DELAY.as_millis() as u64;
        rule.jitter_ms = 100;
        node.faults.install(FaultRules { rules: vec![rule] }).unwrap();
        let sent = tokio::time::Instant::now();
        for i in 1..=FRAMES {
            a.transport.send("b", Class::User, 0, seq(i)).unwrap();
        }
        for i in 1..=FRAMES {
            let frame = recv(&mut at_b).await;
            assert_eq!(seq_of(&frame), i, "frames arrive in the order they were sent ({direction:?})");
            if i == 1 {
                assert!(sent.elapsed() >= DELAY, "the first frame waited the delay ({direction:?})");
            }
        }
        // Serialised delays would take FRAMES x 300 ms = 30 s; overlapping ones take about 0.4 s.
        let took = sent.elapsed();
        assert!(took < Duration::from_secs(5), "{FRAMES} delayed frames took {took:?} ({direction:?})");
        node.faults.clear().unwrap();
    }
    assert_eq!(a.dropped("user", "fault_injected") + b.dropped("user", "fault_injected"), 0.0);
    a.transport.shutdown().await;
    b.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_frames_without_a_subscriber_or_room_are_dropped_and_counted() {
    let a = start_node("a", CLUSTER, secret(), fast_config()).await;
    let mut config = fast_config();
    config.inbound_capacity.pg = 1;
    let b = start_node("b", CLUSTER, secret(), config).await;
    a.transport.peer_up(&b.member());
    let _pg = b.transport.subscribe(Class::Pg).unwrap(); // never read
    for _ in 0..3 {
        a.transport.send("b", Class::Registry, 0, seq(0)).unwrap();
        a.transport.send("b", Class::Pg, 0, seq(0)).unwrap();
    }
    eventually("no_subscriber and inbound_full counted", || {
        b.dropped("registry", "no_subscriber") == 3.0 && b.dropped("pg", "inbound_full") == 2.0
    })
    .await;
    a.transport.shutdown().await;
    b.transport.shutdown().await;
}

/// Random byte streams, raw or after a valid handshake, fed to the responder over an in-memory
/// duplex: every one ends in a counted refusal or a clean close, never a panic.
#[test]
fn random_byte_streams_never_panic_the_handshake_or_frame_reader() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let b = runtime.block_on(start_node("b", CLUSTER, secret(), fast_config()));
    let strategy = (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..4096));
    let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
    runner
        .run(&strategy, |(authenticate, bytes)| {
            runtime.block_on(async {
                let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
                let transport = b.transport.clone();
                let served = tokio::spawn(async move { transport.serve_inbound(theirs).await });
                if authenticate {
                    let (initiator, hello) = Initiator::start(&keys(), &NodeId::new("fuzz", 1), KIND_HELLO).unwrap();
                    let mut wire = BytesMut::new();
                    encode_into(&mut wire, Class::Control, KIND_HELLO, &hello, 1024).unwrap();
                    ours.write_all(&wire).await.unwrap();
                    let mut buf = BytesMut::new();
                    let ack = loop {
                        if let Some(frame) = FrameDecoder::new(1024).decode(&mut buf).unwrap() {
                            break frame.payload;
                        }
                        ours.read_buf(&mut buf).await.unwrap();
                    };
                    let (_, confirm, mut sealer) = initiator.on_ack(&ack).unwrap();
                    wire.clear();
                    encode_into(&mut wire, Class::Control, KIND_PROOF, &confirm, 1024).unwrap();
                    ours.write_all(&wire).await.unwrap();
                    // Random frames inside valid records reach the frame decoder; random bytes
                    // outside records are refused as records.
                    if bytes.first().is_some_and(|b| b % 2 == 0) {
                        wire.clear();
                        sealer.seal(&bytes, &mut wire).unwrap();
                        let _ = ours.write_all(&wire).await;
                    }
                }
                let _ = ours.write_all(&bytes).await;
                drop(ours);
                let result = tokio::time::timeout(DEADLINE, served).await.expect("served connection ended");
                prop_assert!(result.is_ok(), "the reader panicked");
                Ok(())
            })
        })
        .unwrap();
    assert!(b.total_handshake_failures() >= 1.0);
    runtime.block_on(b.transport.shutdown());
}
