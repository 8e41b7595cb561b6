//! Micro-benchmarks of the per-message hot path: envelope decode and encode, SDP and
//! candidate validation, routing an event to a local session, and encoding one fan-out once
//! for many sockets. `cargo bench --bench hot_path`; figures go to BENCHMARKS.md.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use visithub::bus::{BusEvent, Signal, Topic};
use visithub::hub::alarm::Alarm;
use visithub::hub::sdp_check::{check_candidate, check_sdp};
use visithub::hub::{Router, SessionLink};
use visithub::model::{Role, UsState};
use visithub::protocol::{
    ClientMessage, QueuePosition, ServerMessage, SharedFrame, SignalCandidate, decode_client, encode_client,
    encode_server,
};

const VISIT: &str = "01a226bf-5ce5-70c6-a6a3-a4506513270e";

/// A trickled candidate padded like the load generator's: the relayed frame is ~600 bytes.
fn candidate() -> SignalCandidate {
    let mut c = String::from(
        "candidate:1467250027 1 udp 2122260223 192.0.2.33 54400 typ host generation 0 ufrag Ks8d network-id 1 \
         network-cost 10 x-loadtest-pad ",
    );
    c.push_str(&"p".repeat(400 - c.len()));
    SignalCandidate {
        visit_id: VISIT.into(),
        candidate: c,
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: Some("Ks8d".into()),
        from: None,
    }
}

/// The data-channel offer of signaling-protocol.md's example.
const OFFER: &str = "v=0\r\no=- 3914263581079430657 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
a=msid-semantic: WMS\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Ks8d\r\na=ice-pwd:Tq2vHn7LcR4wXe9ZbM1pY6fJ\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 87:7D:48:E1:F3:77:B5:BB:25:47:BE:C4:84:24:F7:73:27:6E:32:51:08:9B:D4:2D:A1:82:7C:F4:F0:2E:03:69\r\n\
a=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n";

fn envelope(c: &mut Criterion) {
    let text = encode_client("r42", &ClientMessage::SignalCandidate(candidate()));
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("decode_client_candidate_600B", |b| b.iter(|| decode_client(std::hint::black_box(&text))));
    let mut relayed = candidate();
    relayed.from = Some(Role::Provider);
    let msg = ServerMessage::SignalCandidate(relayed);
    g.bench_function("encode_server_candidate_600B", |b| {
        b.iter(|| encode_server(std::hint::black_box(123_456), None, &msg))
    });
    g.finish();
}

fn validation(c: &mut Criterion) {
    let cand = candidate().candidate;
    let mut g = c.benchmark_group("validation");
    g.bench_function("check_sdp_datachannel_offer", |b| b.iter(|| check_sdp(std::hint::black_box(OFFER), 16 * 1024)));
    g.bench_function("check_candidate", |b| b.iter(|| check_candidate(std::hint::black_box(&cand))));
    g.finish();
}

fn routing(c: &mut Criterion) {
    let router = Router::default();
    let topic = Topic::Signal(VISIT.into());
    let alarm = Arc::new(Alarm::new(1024));
    let link = SessionLink { id: 1, subject: "dr-1".into(), alarm: alarm.clone() };
    router.add(topic.clone(), link);
    let event = Arc::new(BusEvent::Signal {
        from_subject: "dr-0042".into(),
        signal: Signal::Candidate(candidate()),
        received_at_us: 0,
    });
    c.bench_function("routing/dispatch_to_local_session", |b| {
        b.iter(|| {
            router.dispatch(&topic, event.clone());
            alarm.try_event().expect("delivered")
        })
    });
}

fn fanout(c: &mut Criterion) {
    let msg = ServerMessage::QueuePosition(QueuePosition {
        visit_id: VISIT.into(),
        state: UsState::parse("WA").expect("a state"),
        position: 12,
        queue_length: 15_000,
        estimated_wait_secs: 540,
    });
    let mut g = c.benchmark_group("fanout");
    for sockets in [100u64, 1000] {
        g.throughput(Throughput::Elements(sockets));
        g.bench_with_input(BenchmarkId::new("encode_per_socket", sockets), &sockets, |b, &n| {
            b.iter(|| (0..n).map(|seq| encode_server(seq + 1, None, &msg).len()).sum::<usize>())
        });
        g.bench_with_input(BenchmarkId::new("encode_once_shared", sockets), &sockets, |b, &n| {
            b.iter(|| {
                let shared = SharedFrame::new(&msg);
                (0..n).map(|seq| shared.with_seq(seq + 1).len()).sum::<usize>()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, envelope, validation, routing, fanout);
criterion_main!(benches);
