//! Signaling payloads of realistic size: an audio + video + data channel offer and answer as a
//! browser writes them (about 3 KiB each), and trickled ICE candidates padded so the relayed
//! frame is about 600 bytes, the payload the relay targets are stated for.

use visithub::protocol::{SignalCandidate, SignalSdp};

const FINGERPRINT: &str =
    "sha-256 87:7D:48:E1:F3:77:B5:BB:25:47:BE:C4:84:24:F7:73:27:6E:32:51:08:9B:D4:2D:A1:82:7C:F4:F0:2E:03:69";

/// A BUNDLEd offer (`setup:actpass`) or answer (`setup:active`) with Opus audio, VP8/VP9/H264
/// video with RTX and feedback lines, and an SCTP data channel.
pub fn sdp(visit_id: &str, answer: bool, session: u64) -> SignalSdp {
    let setup = if answer { "active" } else { "actpass" };
    let ufrag = if answer { "q9Tb" } else { "Ks8d" };
    let mut s = String::with_capacity(4096);
    s.push_str(&format!("v=0\r\no=- {session} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"));
    s.push_str("a=group:BUNDLE 0 1 2\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS stream0\r\n");
    let transport = format!(
        "c=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:Tq2vHn7LcR4wXe9ZbM1pY6fJ\r\n\
         a=ice-options:trickle\r\na=fingerprint:{FINGERPRINT}\r\na=setup:{setup}\r\n"
    );
    s.push_str("m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n");
    s.push_str(&transport);
    s.push_str(
        "a=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
         a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
         a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
         a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=sendrecv\r\na=msid:stream0 audio0\r\na=rtcp-mux\r\n\
         a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
         a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:110 telephone-event/48000\r\n\
         a=rtpmap:126 telephone-event/8000\r\na=ssrc:1001 cname:loadtestcname\r\n",
    );
    s.push_str("m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 100 101 127\r\n");
    s.push_str(&transport);
    s.push_str(
        "a=mid:1\r\na=extmap:14 urn:ietf:params:rtp-hdrext:toffset\r\n\
         a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
         a=extmap:13 urn:3gpp:video-orientation\r\n\
         a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
         a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=sendrecv\r\na=msid:stream0 video0\r\na=rtcp-mux\r\n\
         a=rtcp-rsize\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 goog-remb\r\na=rtcp-fb:96 transport-cc\r\n\
         a=rtcp-fb:96 ccm fir\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\n\
         a=fmtp:97 apt=96\r\na=rtpmap:98 VP9/90000\r\na=rtcp-fb:98 goog-remb\r\na=rtcp-fb:98 transport-cc\r\n\
         a=rtcp-fb:98 ccm fir\r\na=rtcp-fb:98 nack\r\na=rtcp-fb:98 nack pli\r\na=fmtp:98 profile-id=0\r\n\
         a=rtpmap:99 rtx/90000\r\na=fmtp:99 apt=98\r\na=rtpmap:100 H264/90000\r\na=rtcp-fb:100 goog-remb\r\n\
         a=rtcp-fb:100 transport-cc\r\na=rtcp-fb:100 ccm fir\r\na=rtcp-fb:100 nack\r\na=rtcp-fb:100 nack pli\r\n\
         a=fmtp:100 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
         a=rtpmap:101 rtx/90000\r\na=fmtp:101 apt=100\r\na=rtpmap:127 ulpfec/90000\r\n\
         a=ssrc-group:FID 2001 2002\r\na=ssrc:2001 cname:loadtestcname\r\na=ssrc:2002 cname:loadtestcname\r\n",
    );
    s.push_str("m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n");
    s.push_str(&transport);
    s.push_str("a=mid:2\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n");
    SignalSdp { visit_id: visit_id.to_string(), sdp: s, ice_restart: false, from: None }
}

/// The `n`th trickled host candidate, padded with an extension so the relayed frame is
/// about 600 bytes.
pub fn candidate(visit_id: &str, answer: bool, n: u32) -> SignalCandidate {
    let ufrag = if answer { "q9Tb" } else { "Ks8d" };
    let mut c = format!(
        "candidate:{} 1 udp 2122260223 192.0.2.{} {} typ host generation 0 ufrag {ufrag} network-id 1 network-cost 10",
        1_467_250_027u64 + n as u64,
        1 + n % 250,
        50_000 + n % 10_000,
    );
    c.push_str(" x-loadtest-pad ");
    // 400 characters of candidate make a relayed frame of about 600 bytes.
    c.push_str(&"p".repeat(400usize.saturating_sub(c.len()).max(1)));
    SignalCandidate {
        visit_id: visit_id.to_string(),
        candidate: c,
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: Some(ufrag.to_string()),
        from: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use visithub::hub::sdp_check::{check_candidate, check_sdp};
    use visithub::protocol::{ClientMessage, ServerMessage, encode_client, encode_server};

    const VISIT: &str = "01a226bf-5ce5-70c6-a6a3-a4506513270e";

    #[test]
    fn the_relayed_candidate_is_about_600_bytes() {
        let mut c = candidate(VISIT, false, 7);
        check_candidate(&c.candidate).expect("the hub accepts the candidate");
        c.from = Some(visithub::model::Role::Provider);
        let relayed = encode_server(12345, None, &ServerMessage::SignalCandidate(c));
        assert!((560..=640).contains(&relayed.len()), "{} bytes", relayed.len());
    }

    #[test]
    fn offers_are_browser_sized() {
        for answer in [false, true] {
            check_sdp(&sdp(VISIT, answer, 42).sdp, 16 * 1024).expect("the hub accepts the SDP");
        }
        let offer = encode_client("r1", &ClientMessage::SignalOffer(sdp(VISIT, false, 42)));
        assert!((2500..=5000).contains(&offer.len()), "{} bytes", offer.len());
    }
}
