//! Validation of SDP and ICE candidates before they are relayed.
//!
//! The hub does not negotiate media: it refuses what no WebRTC peer could use, so a malformed
//! or oversized message never reaches the other side. Refusal messages say what is wrong and
//! never quote the input (SDP and candidates carry addresses and key fingerprints).

use std::io::Cursor;
use std::net::IpAddr;
use std::str::FromStr;

use sdp::SessionDescription;
use sdp::description::common::Attribute;

use crate::error::{ErrorCode, HubError, HubResult};

/// Longest ICE candidate attribute value accepted, in bytes.
pub const MAX_CANDIDATE_BYTES: usize = 1024;

type Syntax = fn(&str) -> bool;

/// The transport attributes WebRTC requires for every media section in use, with their syntax:
/// ICE credentials (RFC 8839 §5.4) and the DTLS certificate fingerprint (RFC 8122 §5).
const TRANSPORT: [(&str, Syntax); 3] = [
    ("ice-ufrag", |v| is_ice_string(v, 4, 256)),
    ("ice-pwd", |v| is_ice_string(v, 22, 256)),
    ("fingerprint", is_fingerprint),
];

/// Refuses an SDP offer/answer larger than `max_bytes` (SdpTooLarge) or one that does not parse
/// as a session description with at least one media section (InvalidSdp).
///
/// Every media section in use (all but those rejected with port 0) needs an ice-ufrag, ice-pwd
/// and fingerprint, at media or session level; the sections of a BUNDLE group share one
/// transport, so these may sit in any section of the group (RFC 8843).
pub fn check_sdp(sdp: &str, max_bytes: usize) -> HubResult<()> {
    if sdp.len() > max_bytes {
        let message = format!("SDP is larger than {max_bytes} bytes");
        return Err(HubError::new(ErrorCode::SdpTooLarge, message));
    }
    // The parser's errors quote the offending line: only a fixed message goes out. It also
    // insists on `v=0`, then `o=` (six fields), `s=` and `t=`; the checks below restate that.
    let desc = SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes()))
        .map_err(|_| invalid_sdp("SDP does not parse"))?;
    if desc.version != 0 || desc.origin.unicast_address.is_empty() {
        return Err(invalid_sdp("SDP lacks version 0 or an origin"));
    }
    let media = &desc.media_descriptions;
    if media.is_empty() {
        return Err(invalid_sdp("SDP has no media section"));
    }
    let bundles: Vec<Vec<&str>> = (desc.attributes.iter())
        .filter(|a| a.key == "group")
        .filter_map(|a| a.value.as_deref()?.strip_prefix("BUNDLE "))
        .map(|mids| mids.split_ascii_whitespace().collect())
        .collect();
    let mid = |i: usize| attr(&media[i].attributes, "mid");
    let mut in_use = 0;
    for (i, m) in media.iter().enumerate() {
        let bundle_only = m.attributes.iter().any(|a| a.key == "bundle-only");
        if m.media_name.port.value == 0 && !bundle_only {
            continue; // rejected: it has no transport
        }
        in_use += 1;
        let group = mid(i).and_then(|id| bundles.iter().find(|g| g.contains(&id)));
        let in_group = |j: &usize| group.is_some_and(|g| mid(*j).is_some_and(|id| g.contains(&id)));
        let sections: Vec<usize> = std::iter::once(i).chain((0..media.len()).filter(in_group)).collect();
        for (key, valid) in TRANSPORT {
            let value = (sections.iter())
                .find_map(|&j| attr(&media[j].attributes, key))
                .or_else(|| attr(&desc.attributes, key))
                .ok_or_else(|| invalid_sdp(format!("SDP media section has no {key}")))?;
            if !valid(value) {
                return Err(invalid_sdp(format!("SDP {key} is malformed")));
            }
        }
    }
    if in_use == 0 {
        return Err(invalid_sdp("SDP has no media section in use"));
    }
    Ok(())
}

/// Refuses an ICE candidate attribute value that is not an RFC 8839 candidate (InvalidCandidate).
///
/// The `candidate:` prefix is optional. After `typ <type>` come name/value pairs: `raddr`,
/// `rport` and `tcptype` (RFC 6544) are checked, other extensions need only be tokens.
pub fn check_candidate(candidate: &str) -> HubResult<()> {
    if candidate.len() > MAX_CANDIDATE_BYTES {
        let message = format!("ICE candidate is longer than {MAX_CANDIDATE_BYTES} bytes");
        return Err(invalid_candidate(message));
    }
    let body = candidate.trim_ascii_start();
    let body = body.strip_prefix("candidate:").unwrap_or(body);
    // Browsers separate the fields with single spaces and write only visible ASCII. Checked
    // for the whole text at once (a fold without early exit, open to vectorizing), the fields
    // are then found with `split(' ')` (a `memchr` search) and extension values need no second
    // look. Anything else takes the byte-by-byte path, with the same result.
    let plain = body.bytes().fold(true, |plain, b| plain & (b' '..=b'~').contains(&b));
    if plain {
        check_fields(body.split(' ').filter(|f| !f.is_empty()), true)
    } else {
        check_fields(body.split_ascii_whitespace(), false)
    }
}

/// The fields of a candidate after `candidate:`; `visible` when every byte is known to be a
/// visible ASCII character already.
fn check_fields<'a>(mut fields: impl Iterator<Item = &'a str>, visible: bool) -> HubResult<()> {
    // Read in place: a browser's candidate is a dozen fields, a padded one hundreds, and
    // collecting them cost an allocation and its regrowths on every relayed candidate.
    let mut head = [""; 8];
    let found = head.iter_mut().zip(&mut fields).map(|(slot, field)| *slot = field).count();
    if found < head.len() {
        return Err(invalid_candidate(match found {
            0 => "ICE candidate is empty",
            _ if !head[..found].contains(&"typ") => "ICE candidate has no typ",
            _ => "ICE candidate is incomplete",
        }));
    }
    let [foundation, comp, transport, prio, addr, port, typ, kind] = head;
    if typ != "typ" {
        return Err(invalid_candidate("ICE candidate has no typ"));
    }
    let is_transport = |t: &str| t.eq_ignore_ascii_case("udp") || t.eq_ignore_ascii_case("tcp");
    let component = number::<u16>(comp, 3).unwrap_or(0);
    let fixed = [
        ("foundation", is_ice_string(foundation, 1, 32)),
        ("component-id", (1..=256).contains(&component)),
        ("transport", is_transport(transport)),
        ("priority", number::<u32>(prio, 10).is_some()),
        ("connection-address", is_address(addr)),
        ("port", is_port(port)),
        ("type", ["host", "srflx", "prflx", "relay"].contains(&kind)),
    ];
    let vchars = |s: &str| visible || s.bytes().all(|b| b.is_ascii_graphic());
    let pairs = std::iter::from_fn(|| {
        let name = fields.next()?;
        Some(match fields.next() {
            Some(value) => match name {
                "raddr" => ("raddr", is_address(value)),
                "rport" => ("rport", is_port(value)),
                "tcptype" => ("tcptype", ["active", "passive", "so"].contains(&value)),
                _ => ("extension", is_token(name) && vchars(value)),
            },
            None => ("extension value", false),
        })
    });
    match fixed.into_iter().chain(pairs).find(|(_, ok)| !ok) {
        Some((field, _)) => Err(invalid_field(field)),
        None => Ok(()),
    }
}

fn invalid_sdp(message: impl Into<String>) -> HubError {
    HubError::new(ErrorCode::InvalidSdp, message)
}

fn invalid_candidate(message: impl Into<String>) -> HubError {
    HubError::new(ErrorCode::InvalidCandidate, message)
}

fn invalid_field(field: &str) -> HubError {
    invalid_candidate(format!("ICE candidate {field} is invalid"))
}

/// The value of the first `a=<key>:<value>` among `attrs`.
fn attr<'a>(attrs: &'a [Attribute], key: &str) -> Option<&'a str> {
    attrs.iter().find(|a| a.key == key)?.value.as_deref()
}

fn is_ice_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

/// `min..=max` ice-chars (RFC 8839): a foundation, ice-ufrag or ice-pwd.
fn is_ice_string(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(is_ice_char)
}

/// `<hash-func> <16 to 64 hex pairs separated by colons>`.
fn is_fingerprint(value: &str) -> bool {
    let Some((hash, hex)) = value.split_once(' ') else {
        return false;
    };
    let pairs = hex.split(':');
    let hex_pair = |p: &str| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit());
    is_token(hash) && (16..=64).contains(&pairs.clone().count()) && pairs.into_iter().all(hex_pair)
}

/// A token per RFC 3261 §25.1.
fn is_token(s: &str) -> bool {
    let token_char = |b: u8| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b);
    !s.is_empty() && s.bytes().all(token_char)
}

/// 1..=`max_digits` ASCII digits whose value fits `T`.
fn number<T: FromStr>(s: &str, max_digits: usize) -> Option<T> {
    let digits = (1..=max_digits).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| s.parse().ok()).flatten()
}

fn is_port(s: &str) -> bool {
    number::<u16>(s, 5).is_some()
}

/// An IPv4 or IPv6 address, or an FQDN such as an mDNS `<uuid>.local` name (RFC 1123 labels).
fn is_address(s: &str) -> bool {
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    // Only digits and dots is a broken IPv4 address, not a name.
    let dotted = s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    s.parse::<IpAddr>().is_ok() || (s.len() <= 253 && !dotted && s.split('.').all(label))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\na=extmap-allow-mixed\r\n\
        a=msid-semantic: WMS 3c6b2f3e-5b7a-4d8e-9f10-2a3b4c5d6e7f\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 126\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
        a=ice-ufrag:sS4V\r\na=ice-pwd:Xw0vD7qP2mR9kL4nB8cF1hJ6\r\na=ice-options:trickle\r\n\
        a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3A:C4:1C:6F:2C:0A:E4:8D:9A:B6:A1:AE\r\na=setup:actpass\r\na=mid:0\r\n\
        a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
        a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=sendrecv\r\na=msid:3c6b2f3e-5b7a-4d8e-9f10-2a3b4c5d6e7f 8e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b\r\n\
        a=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\n\
        a=fmtp:63 111/111\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:126 telephone-event/8000\r\n\
        a=ssrc:3735928559 cname:Yq6rG0v+Jx3kS1bA\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:sS4V\r\n\
        a=ice-pwd:Xw0vD7qP2mR9kL4nB8cF1hJ6\r\na=ice-options:trickle\r\n\
        a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3A:C4:1C:6F:2C:0A:E4:8D:9A:B6:A1:AE\r\na=setup:actpass\r\na=mid:1\r\n\
        a=extmap:14 urn:ietf:params:rtp-hdrext:toffset\r\na=sendrecv\r\na=msid:3c6b2f3e-5b7a-4d8e-9f10-2a3b4c5d6e7f 1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d\r\n\
        a=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 goog-remb\r\na=rtcp-fb:96 transport-cc\r\na=rtcp-fb:96 ccm fir\r\na=rtcp-fb:96 nack\r\n\
        a=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\na=ssrc-group:FID 1204567890 2904567891\r\na=ssrc:1204567890 cname:Yq6rG0v+Jx3kS1bA\r\n\
        a=ssrc:2904567891 cname:Yq6rG0v+Jx3kS1bA\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:sS4V\r\n\
        a=ice-pwd:Xw0vD7qP2mR9kL4nB8cF1hJ6\r\na=ice-options:trickle\r\n\
        a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3A:C4:1C:6F:2C:0A:E4:8D:9A:B6:A1:AE\r\na=setup:actpass\r\na=mid:2\r\n\
        a=sctp-port:5000\r\na=max-message-size:262144\r\n";
    const FIREFOX_OFFER: &str = "v=0\r\no=mozilla...THIS_IS_SDPARTA-120.0 6537287014356367426 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=sendrecv\r\n\
        a=fingerprint:sha-256 D2:7A:0C:94:5E:33:8B:1F:AA:06:C4:19:7E:52:E8:3D:60:B1:2F:9C:47:D5:8E:03:71:BA:6C:E9:15:4F:28:93\r\na=group:BUNDLE 0 1 2\r\n\
        a=ice-options:trickle\r\na=msid-semantic:WMS *\r\nm=audio 9 UDP/TLS/RTP/SAVPF 109 9 0 8 101\r\nc=IN IP4 0.0.0.0\r\na=sendrecv\r\n\
        a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=extmap:2/recvonly urn:ietf:params:rtp-hdrext:csrc-audio-level\r\n\
        a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1\r\na=fmtp:101 0-15\r\n\
        a=ice-pwd:4f2b8c1d9e7a6b5c3d2e1f0a9b8c7d6e\r\na=ice-ufrag:9a3c7e1f\r\na=mid:0\r\n\
        a=msid:{5b2e6f1a-3c4d-4e5f-8a9b-0c1d2e3f4a5b} {7c1d2e3f-4a5b-4c6d-9e8f-1a2b3c4d5e6f}\r\na=rtcp-mux\r\na=rtpmap:109 opus/48000/2\r\na=rtpmap:9 G722/8000/1\r\n\
        a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000/1\r\na=setup:actpass\r\n\
        a=ssrc:2183648137 cname:{0d7c3a2e-9b1f-4c8d-a6e5-3f2b1c0d9e8a}\r\nm=video 9 UDP/TLS/RTP/SAVPF 120 124\r\nc=IN IP4 0.0.0.0\r\na=sendrecv\r\n\
        a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=extmap:5 urn:ietf:params:rtp-hdrext:toffset\r\na=fmtp:120 max-fs=12288;max-fr=60\r\na=fmtp:124 apt=120\r\n\
        a=ice-pwd:4f2b8c1d9e7a6b5c3d2e1f0a9b8c7d6e\r\na=ice-ufrag:9a3c7e1f\r\na=mid:1\r\n\
        a=msid:{5b2e6f1a-3c4d-4e5f-8a9b-0c1d2e3f4a5b} {9e8f7a6b-5c4d-4e3f-a2b1-c0d9e8f7a6b5}\r\na=rtcp-fb:120 nack\r\na=rtcp-fb:120 nack pli\r\n\
        a=rtcp-fb:120 transport-cc\r\na=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:120 VP8/90000\r\na=rtpmap:124 rtx/90000\r\na=setup:actpass\r\n\
        a=ssrc:1585212473 cname:{0d7c3a2e-9b1f-4c8d-a6e5-3f2b1c0d9e8a}\r\na=ssrc-group:FID 1585212473 3126534018\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
        c=IN IP4 0.0.0.0\r\na=sendrecv\r\na=ice-pwd:4f2b8c1d9e7a6b5c3d2e1f0a9b8c7d6e\r\na=ice-ufrag:9a3c7e1f\r\na=mid:2\r\na=setup:actpass\r\na=sctp-port:5000\r\n\
        a=max-message-size:1073741823\r\n";
    const WEBRTC_RS_OFFER: &str = "v=0\r\no=- 8235361034236146470 753218346 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:D2:14:3F:C5:9E:31:7A:08:BD:C2:4E:91:66:F0:1A:D8:37:AC:52:E4:09:7B:F3:28:C6\r\na=extmap-allow-mixed\r\n\
        a=group:BUNDLE 0 1\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=setup:actpass\r\na=mid:0\r\na=ice-ufrag:EsAmuAFXqPBnkJOQ\r\n\
        a=ice-pwd:jHyxDBaZyVsQxWBnKHwnSsgNSKuTaZEX\r\na=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 goog-remb \r\na=rtcp-fb:96 nack \r\n\
        a=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\na=ssrc:2630563624 cname:webrtc-rs\r\na=ssrc:2630563624 msid:webrtc-rs video\r\n\
        a=msid:webrtc-rs video\r\na=sendrecv\r\na=candidate:167090039 1 udp 2130706431 192.0.2.10 50374 typ host\r\n\
        a=candidate:2938512866 1 udp 1694498815 203.0.113.20 50374 typ srflx raddr 0.0.0.0 rport 50374\r\na=end-of-candidates\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=setup:actpass\r\na=mid:1\r\na=sendrecv\r\na=sctp-port:5000\r\n\
        a=ice-ufrag:EsAmuAFXqPBnkJOQ\r\na=ice-pwd:jHyxDBaZyVsQxWBnKHwnSsgNSKuTaZEX\r\n";
    /// Firefox answering the Chrome offer, declining video (port 0, no transport attributes).
    const FIREFOX_ANSWER: &str = "v=0\r\no=mozilla...THIS_IS_SDPARTA-120.0 2750212834291373870 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        a=fingerprint:sha-256 D2:7A:0C:94:5E:33:8B:1F:AA:06:C4:19:7E:52:E8:3D:60:B1:2F:9C:47:D5:8E:03:71:BA:6C:E9:15:4F:28:93\r\na=group:BUNDLE 0 2\r\n\
        a=ice-options:trickle\r\na=msid-semantic:WMS *\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0 126\r\nc=IN IP4 0.0.0.0\r\na=sendrecv\r\n\
        a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=fmtp:111 maxplaybackrate=48000;stereo=1;useinbandfec=1\r\na=ice-pwd:0a1b2c3d4e5f60718293a4b5c6d7e8f9\r\n\
        a=ice-ufrag:5e6f7a8b\r\na=mid:0\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:126 telephone-event/8000\r\na=setup:active\r\n\
        a=ssrc:402719283 cname:{4c3b2a19-0f8e-4d7c-b6a5-948372615fe0}\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=inactive\r\na=mid:1\r\n\
        a=rtpmap:96 VP8/90000\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=sendrecv\r\na=ice-pwd:0a1b2c3d4e5f60718293a4b5c6d7e8f9\r\n\
        a=ice-ufrag:5e6f7a8b\r\na=mid:2\r\na=setup:active\r\na=sctp-port:5000\r\na=max-message-size:1073741823\r\n";
    const MAX: usize = 16 * 1024;
    /// What a refusal must never quote: addresses, fingerprints and ICE credentials.
    const SECRETS: &str = "192.0.2 203.0.113 198.51.100 2001:db8 4A:AD EsAmu jHyx sS4V";

    /// `sdp` keeping the lines for which `keep(section, line)` holds (section 0 is the session).
    fn edit(sdp: &str, keep: impl Fn(usize, &str) -> bool) -> String {
        let mut section = 0;
        let kept = sdp.lines().filter(|l| {
            section += usize::from(l.starts_with("m="));
            keep(section, l)
        });
        kept.map(|l| format!("{l}\r\n")).collect()
    }

    fn without(sdp: &str, prefix: &str) -> String {
        edit(sdp, |_, l| !l.starts_with(prefix))
    }

    /// The refusal's message, checked for its code and for quoting nothing of the input.
    fn refusal(result: HubResult<()>, code: ErrorCode) -> String {
        let err = result.unwrap_err();
        let message = err.message;
        assert_eq!(err.code, code, "{message}");
        for secret in SECRETS.split(' ') {
            assert!(!message.contains(secret), "{message:?} quotes {secret}");
        }
        message
    }

    fn refused(sdp: &str) -> String {
        refusal(check_sdp(sdp, MAX), ErrorCode::InvalidSdp)
    }

    #[test]
    fn browser_and_webrtc_rs_sdp_pass() {
        for sdp in [CHROME_OFFER, FIREFOX_OFFER, WEBRTC_RS_OFFER, FIREFOX_ANSWER] {
            check_sdp(sdp, MAX).unwrap();
            check_sdp(&sdp.replace("\r\n", "\n"), MAX).unwrap();
        }
        // RFC 8843: the transport attributes may sit only in the BUNDLE-tagged section.
        let tagged_only = edit(CHROME_OFFER, |s, l| s <= 1 || !l.starts_with("a=ice-"));
        check_sdp(&tagged_only, MAX).unwrap();
    }

    #[test]
    fn unparsable_sdp_is_refused() {
        for sdp in [
            String::new(),
            "hello, I am not an SDP\r\n".into(),
            without(CHROME_OFFER, "v="),
            CHROME_OFFER.replacen("v=0", "v=1", 1),
        ] {
            assert_eq!(refused(&sdp), "SDP does not parse");
        }
    }

    /// Every refusal in these tests goes through `refusal`, which also checks this; here are
    /// the inputs whose offending line the parser's own error would quote.
    #[test]
    fn refusals_do_not_quote_the_input() {
        for sdp in [
            WEBRTC_RS_OFFER.replace("IN IP4 0.0.0.0\r\ns=", "IN 192.0.2.10\r\ns="),
            WEBRTC_RS_OFFER.replacen("c=IN IP4 0.0.0.0", "c=IN 203.0.113.20", 1),
            CHROME_OFFER.replace("m=audio 9 UDP/TLS/RTP/SAVPF", "m=audio 9 4A:AD:B9"),
            CHROME_OFFER.replace("s=-\r\n", "s=-\r\n192.0.2.10 sS4V\r\n"),
            CHROME_OFFER.replacen("4A:AD:B9", "4A:AD:XX", 1),
        ] {
            refusal(check_sdp(&sdp, MAX), ErrorCode::InvalidSdp);
        }
        for candidate in
            ["1 1 udp 1 198.51.100.7 70000 typ host", "1 1 udp 1 2001:db8::1 9 typ srflx raddr 203.0.113.5:1 rport 9"]
        {
            refusal(check_candidate(candidate), ErrorCode::InvalidCandidate);
        }
    }

    #[test]
    fn sdp_without_media_or_transport_is_refused() {
        let no_media = edit(CHROME_OFFER, |s, _| s == 0);
        assert_eq!(refused(&no_media), "SDP has no media section");
        let all_rejected = edit(FIREFOX_ANSWER, |s, _| s != 1 && s != 3);
        assert_eq!(refused(&all_rejected), "SDP has no media section in use");
        let no_ufrag = without(CHROME_OFFER, "a=ice-ufrag");
        assert_eq!(refused(&no_ufrag), "SDP media section has no ice-ufrag");
        let no_pwd = edit(FIREFOX_OFFER, |s, l| s != 3 || !l.starts_with("a=ice-pwd"));
        check_sdp(&no_pwd, MAX).unwrap(); // the data channel shares the bundle's transport
        let unbundled = without(&no_pwd, "a=group");
        assert_eq!(refused(&unbundled), "SDP media section has no ice-pwd");
        for sdp in [CHROME_OFFER, FIREFOX_OFFER, WEBRTC_RS_OFFER] {
            let message = refused(&without(sdp, "a=fingerprint"));
            assert_eq!(message, "SDP media section has no fingerprint");
        }
        let bad_fp = CHROME_OFFER.replacen("4A:AD:B9", "4A:AD:ZZ", 1);
        assert_eq!(refused(&bad_fp), "SDP fingerprint is malformed");
        let short_pwd = CHROME_OFFER.replace("Xw0vD7qP2mR9kL4nB8cF1hJ6", "short");
        assert_eq!(refused(&short_pwd), "SDP ice-pwd is malformed");
    }

    #[test]
    fn size_is_checked_before_parsing() {
        let oversize = check_sdp(&"x".repeat(MAX + 1), MAX);
        let message = refusal(oversize, ErrorCode::SdpTooLarge);
        assert_eq!(message, "SDP is larger than 16384 bytes");
        let one_short = check_sdp(CHROME_OFFER, CHROME_OFFER.len() - 1);
        refusal(one_short, ErrorCode::SdpTooLarge);
        check_sdp(CHROME_OFFER, CHROME_OFFER.len()).unwrap();
    }

    #[test]
    fn browser_candidates_pass() {
        for c in [
            "candidate:842163049 1 udp 1677729535 192.0.2.1 3478 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag sS4V network-cost 999",
            "candidate:1467250027 1 udp 2122260223 192.168.1.20 54400 typ host generation 0 ufrag sS4V network-id 1",
            "candidate:1 1 UDP 2122252543 4f3a6c52-7d1b-4b1e-9c84-1f0a3c2b5e6d.local 54400 typ host",
            "candidate:3 1 UDP 92217087 203.0.113.9 61002 typ relay raddr 198.51.100.4 rport 61002",
            "candidate:2 1 tcp 1518280447 192.168.1.20 9 typ host tcptype passive generation 0 network-id 1",
            "candidate:4 2 TCP 2105458943 192.168.1.20 9 typ host tcptype active",
            "candidate:5 1 udp 2122197247 2001:db8::1c2:3d4 51515 typ host generation 0",
            "6 1 udp 1686052607 198.51.100.7 40000 typ prflx raddr 10.0.0.2 rport 40000",
        ] {
            check_candidate(c).unwrap_or_else(|e| panic!("{c}: {}", e.message));
        }
    }

    #[test]
    fn broken_candidates_are_refused() {
        let refused = |c: &str| refusal(check_candidate(c), ErrorCode::InvalidCandidate);
        assert_eq!(refused(""), "ICE candidate is empty");
        assert_eq!(refused("candidate:"), "ICE candidate is empty");
        let incomplete = refused("1 1 udp 1 192.0.2.1 3478 typ");
        assert_eq!(incomplete, "ICE candidate is incomplete");
        for tail in ["3478", "3478 host", "3478 host generation 0"] {
            let message = refused(&format!("candidate:1 1 udp 1 192.0.2.1 {tail}"));
            assert_eq!(message, "ICE candidate has no typ");
        }
        for (candidate, field) in [
            ("1 1 udp 1 192.0.2.1 65536 typ host", "port"),
            ("1 1 udp 1 192.0.2.1 -1 typ host", "port"),
            ("1 1 sctp 1 192.0.2.1 9 typ host", "transport"),
            ("1 0 udp 1 192.0.2.1 9 typ host", "component-id"),
            ("1 1 udp 4294967296 192.0.2.1 9 typ host", "priority"),
            ("1 1 udp 1 999.0.2.1 9 typ host", "connection-address"),
            ("1 1 udp 1 -bad-.local 9 typ host", "connection-address"),
            ("a:b 1 udp 1 192.0.2.1 9 typ host", "foundation"),
            ("1 1 udp 1 192.0.2.1 9 typ magic", "type"),
            ("1 1 tcp 1 192.0.2.1 9 typ host tcptype up", "tcptype"),
            ("1 1 udp 1 192.0.2.1 9 typ host x", "extension value"),
            ("1 1 udp 1 192.0.2.1 9 typ srflx raddr ::zz", "raddr"),
            ("1 1 udp 1 192.0.2.1 9 typ srflx rport 99999", "rport"),
        ] {
            let message = refused(candidate);
            assert_eq!(message, format!("ICE candidate {field} is invalid"));
        }
        // Other whitespace than single spaces, or a control character, takes the other path:
        // the verdicts are the same.
        let tabbed = "1\t1 udp  1 192.0.2.1 9 typ host\tgeneration 0";
        check_candidate(tabbed).unwrap_or_else(|e| panic!("{tabbed}: {}", e.message));
        assert_eq!(refused("1\t1 udp 1 192.0.2.1 65536 typ host"), "ICE candidate port is invalid");
        assert_eq!(refused("1 1 udp 1 192.0.2.1 9 typ host x-ext a\u{7f}b"), "ICE candidate extension is invalid");
        assert_eq!(refused("1 1 udp 1 192.0.2.1 9 typ host x-ext é"), "ICE candidate extension is invalid");
        let long = format!("1 1 udp 1 192.0.2.1 9 typ host x {}", "9".repeat(1024));
        assert_eq!(refused(&long), "ICE candidate is longer than 1024 bytes");
    }
}
