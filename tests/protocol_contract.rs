//! `signaling-protocol.md` is the contract with clients; this test fails when it and the wire
//! types disagree: message types, error codes (with HTTP statuses), close codes, and every JSON
//! example (each must decode with the same functions the hub and its clients use).
//!
//! What the document must look like for this test to read it:
//! - sections are `## <title>` headings (a leading `7. ` numbering is allowed), found by title;
//! - in "Client messages" and "Hub messages", one ``### `type` `` heading per message type, each
//!   with at least one ```json example frame of that type;
//! - in "Client messages", a ```json block with a `seq` is the hub's reply (`ack`/`error`) to a
//!   request of the same subsection; any other block is a client frame;
//! - "Error codes" has a table whose rows start ``| `code` | status |``, "Close codes" one whose
//!   rows start ``| 4000 | `reason` |``;
//! - in "Example exchange", ```jsonl blocks hold one frame per line (```json blocks one frame);
//!   an info string `session=<name>` names the session whose frames the block shows, in order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;

use serde_json::Value;
use visithub::error::ErrorCode;
use visithub::model::StateSettings;
use visithub::protocol::{ClientMessage, CloseCode, ServerMessage, decode_client, decode_server};

const DOC_NAME: &str = "signaling-protocol.md";
const CLIENT_SECTION: &str = "Client messages";
const HUB_SECTION: &str = "Hub messages";
const ERROR_SECTION: &str = "Error codes";
const CLOSE_SECTION: &str = "Close codes";
const EXCHANGE_SECTION: &str = "Example exchange";

// ---------------------------------------------------------------------------------------------
// Reading the document
// ---------------------------------------------------------------------------------------------

struct Doc {
    lines: Vec<String>,
    /// Whether each line is part of a fenced code block (fences included).
    fenced: Vec<bool>,
}

/// A fenced code block.
struct Block {
    /// 1-based line of the opening fence, for messages.
    line: usize,
    /// The info string's words, e.g. `["jsonl", "session=patient-1"]`.
    info: Vec<String>,
    /// The block's lines with their 1-based line numbers.
    body: Vec<(usize, String)>,
}

impl Block {
    fn lang(&self) -> &str {
        self.info.first().map_or("", String::as_str)
    }

    fn attr(&self, key: &str) -> Option<&str> {
        self.info.iter().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }

    /// The JSON values the block holds, with the line each starts on: a ```json block is one
    /// value, a ```jsonl block one value per non-empty line. `None` for other languages.
    fn json_values(&self) -> Option<Vec<(usize, Result<Value, String>)>> {
        match self.lang() {
            "json" => {
                let text: Vec<&str> = self.body.iter().map(|(_, l)| l.as_str()).collect();
                let line = self.body.first().map_or(self.line, |(n, _)| *n);
                Some(vec![(line, serde_json::from_str(&text.join("\n")).map_err(|e| e.to_string()))])
            }
            "jsonl" => Some(
                self.body
                    .iter()
                    .filter(|(_, l)| !l.trim().is_empty())
                    .map(|(n, l)| (*n, serde_json::from_str(l).map_err(|e| e.to_string())))
                    .collect(),
            ),
            _ => None,
        }
    }
}

impl Doc {
    fn load() -> Doc {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/signaling-protocol.md");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let mut fenced = Vec::with_capacity(lines.len());
        let mut inside = false;
        for line in &lines {
            let fence = line.trim_start().starts_with("```");
            fenced.push(inside || fence);
            if fence {
                inside = !inside;
            }
        }
        Doc { lines, fenced }
    }

    /// The lines of the `## <title>` section, heading excluded, up to the next `## ` heading.
    fn section(&self, title: &str) -> Range<usize> {
        let start = (0..self.lines.len())
            .find(|&i| !self.fenced[i] && heading(&self.lines[i], "## ") == Some(title))
            .unwrap_or_else(|| panic!("{DOC_NAME} has no `## {title}` section"));
        let end = (start + 1..self.lines.len())
            .find(|&i| !self.fenced[i] && self.lines[i].starts_with("## "))
            .unwrap_or(self.lines.len());
        start + 1..end
    }

    /// The `### ` subsections of a range: (1-based heading line, heading text, body lines). Lines
    /// before the first subsection come first, with an empty heading.
    fn subsections(&self, range: Range<usize>) -> Vec<(usize, String, Range<usize>)> {
        let mut out = Vec::new();
        let mut current = (range.start, String::new(), range.start);
        for i in range.clone() {
            if !self.fenced[i]
                && let Some(text) = heading(&self.lines[i], "### ")
            {
                out.push((current.0, current.1, current.2..i));
                current = (i + 1, text.to_owned(), i + 1);
            }
        }
        out.push((current.0, current.1, current.2..range.end));
        out
    }

    fn blocks(&self, range: Range<usize>) -> Vec<Block> {
        let mut out = Vec::new();
        let mut open: Option<Block> = None;
        for i in range {
            let line = &self.lines[i];
            let trimmed = line.trim_start();
            match open.as_mut() {
                None if trimmed.starts_with("```") => {
                    let info = trimmed.trim_start_matches('`').split_whitespace().map(str::to_owned).collect();
                    open = Some(Block { line: i + 1, info, body: Vec::new() });
                }
                None => {}
                Some(_) if trimmed.starts_with("```") => out.extend(open.take()),
                Some(block) => block.body.push((i + 1, line.clone())),
            }
        }
        if let Some(block) = open {
            panic!("{DOC_NAME}:{}: code block is never closed", block.line);
        }
        out
    }

    /// Table rows (separator rows skipped) as trimmed cells, with their 1-based line.
    fn table_rows(&self, range: Range<usize>) -> Vec<(usize, Vec<String>)> {
        range
            .filter(|&i| !self.fenced[i] && self.lines[i].trim_start().starts_with('|'))
            .filter_map(|i| {
                let row = self.lines[i].trim();
                let inner = row.strip_prefix('|').unwrap_or(row);
                let inner = inner.strip_suffix('|').unwrap_or(inner);
                let cells: Vec<String> = inner.split('|').map(|c| c.trim().to_owned()).collect();
                let separator =
                    cells.iter().all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')));
                (!separator).then_some((i + 1, cells))
            })
            .collect()
    }
}

/// The text of a heading with this prefix, without a leading `7. ` numbering.
fn heading<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    let text = line.strip_prefix(prefix)?.trim();
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    Some(match text[digits..].strip_prefix(". ") {
        Some(rest) if digits > 0 => rest.trim(),
        _ => text,
    })
}

/// `name` from a cell or heading written exactly as `` `name` ``.
fn backticked(text: &str) -> Option<&str> {
    let inner = text.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.is_empty() && !inner.contains('`')).then_some(inner)
}

/// Compares what the document lists with what the code has, describing every difference.
fn compare(what: &str, documented: &[(usize, String)], in_code: &[&str], failures: &mut Vec<String>) {
    let mut seen = BTreeMap::new();
    for (line, name) in documented {
        if let Some(first) = seen.insert(name.as_str(), *line) {
            failures.push(format!("{what}: `{name}` is documented twice ({DOC_NAME}:{first} and :{line})"));
        }
    }
    let doc: BTreeSet<&str> = seen.keys().copied().collect();
    let code: BTreeSet<&str> = in_code.iter().copied().collect();
    let missing: Vec<&str> = code.difference(&doc).copied().collect();
    let extra: Vec<&str> = doc.difference(&code).copied().collect();
    if !missing.is_empty() {
        failures.push(format!("{what}: in the code but not documented in {DOC_NAME}: {missing:?}"));
    }
    if !extra.is_empty() {
        failures.push(format!("{what}: documented in {DOC_NAME} but not in the code: {extra:?}"));
    }
}

fn finish(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{DOC_NAME} and the code disagree ({what}), {} problem(s):\n  - {}\n",
        failures.len(),
        failures.join("\n  - ")
    );
}

/// Message types from the ``### `type` `` headings of a section.
fn documented_types(doc: &Doc, section: &str, failures: &mut Vec<String>) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (line, title, _) in doc.subsections(doc.section(section)) {
        if title.is_empty() {
            continue;
        }
        match backticked(&title) {
            Some(name) => out.push((line, name.to_owned())),
            None => failures.push(format!(
                "{DOC_NAME}:{line}: heading `### {title}` in \"{section}\" is not of the form ### `message.type`"
            )),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------

enum Frame {
    Client { id: String, kind: &'static str },
    Hub { seq: Option<u64>, id: Option<String>, kind: &'static str, data: Value },
}

/// Decodes an example frame as the hub would (no `seq`) or as a client would (`seq`).
fn decode_frame(value: &Value) -> Result<Frame, String> {
    let obj = value.as_object().ok_or("not a JSON object")?;
    let text = value.to_string();
    if obj.contains_key("seq") {
        if obj.get("v") != Some(&Value::from(1)) {
            return Err("a hub frame must carry \"v\":1".into());
        }
        let frame = decode_server(&text).map_err(|e| format!("decode_server: {e}"))?;
        match frame.seq {
            Some(seq) if seq >= 1 => {}
            _ => return Err("`seq` must be a number starting at 1".into()),
        }
        let kind = frame.msg.kind();
        if ServerMessage::TYPES.get(frame.msg.index()) != Some(&kind) {
            return Err(format!("{kind}'s index does not name it (metrics would count it as another type)"));
        }
        if frame.id.is_some() && !matches!(kind, "ack" | "error") {
            return Err(format!("only ack and error carry an `id`, not {kind}"));
        }
        let data = obj.get("data").cloned().unwrap_or_else(|| Value::Object(Default::default()));
        Ok(Frame::Hub { seq: frame.seq, id: frame.id, kind, data })
    } else {
        let frame = decode_client(&text).map_err(|e| format!("decode_client: {} ({})", e.code.as_str(), e.message))?;
        let kind = frame.msg.kind();
        if ClientMessage::TYPES.get(frame.msg.index()) != Some(&kind) {
            return Err(format!("{kind}'s index does not name it (metrics would count it as another type)"));
        }
        Ok(Frame::Client { id: frame.id, kind })
    }
}

/// What the document promises about an ack's `data` for some request types.
fn check_ack_data(request: &str, data: &Value) -> Result<(), String> {
    match request {
        "ping" => {
            let time =
                data.get("server_time").and_then(Value::as_str).ok_or("ack data needs a `server_time` string")?;
            chrono::DateTime::parse_from_rfc3339(time).map_err(|e| format!("`server_time` is not RFC 3339: {e}"))?;
        }
        "session.refresh" => {
            data.get("expires_at").and_then(Value::as_i64).ok_or("ack data needs an integer `expires_at`")?;
        }
        "state.set_busy" => {
            serde_json::from_value::<StateSettings>(data.clone())
                .map_err(|e| format!("ack data is not a state settings object: {e}"))?;
        }
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

#[test]
fn message_types_match_the_code() {
    let doc = Doc::load();
    let mut failures = Vec::new();
    let client = documented_types(&doc, CLIENT_SECTION, &mut failures);
    compare("client message types (ClientMessage::TYPES)", &client, ClientMessage::TYPES, &mut failures);
    let hub = documented_types(&doc, HUB_SECTION, &mut failures);
    compare("hub message types (ServerMessage::TYPES)", &hub, ServerMessage::TYPES, &mut failures);
    finish("message types", failures);
}

#[test]
fn error_codes_and_statuses_match_the_code() {
    let doc = Doc::load();
    let mut failures = Vec::new();
    let mut documented = Vec::new();
    for (line, cells) in doc.table_rows(doc.section(ERROR_SECTION)) {
        let Some(code) = cells.first().and_then(|c| backticked(c)) else {
            continue;
        };
        documented.push((line, code.to_owned()));
        let Some(known) = ErrorCode::parse(code) else {
            continue;
        };
        match cells.get(1).and_then(|c| c.parse::<u16>().ok()) {
            Some(status) if status == known.http_status() => {}
            Some(status) => failures.push(format!(
                "{DOC_NAME}:{line}: `{code}` is documented with HTTP {status}, the code answers {}",
                known.http_status()
            )),
            None => failures.push(format!("{DOC_NAME}:{line}: `{code}` has no HTTP status in its second column")),
        }
    }
    if documented.is_empty() {
        failures.push(format!("no error-code table (rows starting | `code` | status |) in \"{ERROR_SECTION}\""));
    }
    let in_code: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    compare("error codes (ErrorCode::ALL)", &documented, &in_code, &mut failures);
    finish("error codes", failures);
}

#[test]
fn close_codes_match_the_code() {
    let doc = Doc::load();
    let mut failures = Vec::new();
    let mut documented = Vec::new();
    for (line, cells) in doc.table_rows(doc.section(CLOSE_SECTION)) {
        let Some(code) = cells.first().and_then(|c| c.parse::<u16>().ok()) else {
            continue;
        };
        documented.push((line, code.to_string()));
        let Some(reason) = cells.get(1).and_then(|c| backticked(c)) else {
            failures.push(format!("{DOC_NAME}:{line}: close code {code} has no `reason` in its second column"));
            continue;
        };
        match CloseCode::from_code(code) {
            Some(known) if known.reason() != reason => failures.push(format!(
                "{DOC_NAME}:{line}: close code {code} is documented as `{reason}`, the code sends `{}`",
                known.reason()
            )),
            _ => {}
        }
    }
    if documented.is_empty() {
        failures.push(format!("no close-code table (rows starting | 4000 | `reason` |) in \"{CLOSE_SECTION}\""));
    }
    let in_code: Vec<String> = CloseCode::ALL.iter().map(|c| c.code().to_string()).collect();
    let in_code: Vec<&str> = in_code.iter().map(String::as_str).collect();
    compare("close codes (CloseCode::ALL)", &documented, &in_code, &mut failures);
    finish("close codes", failures);
}

#[test]
fn client_message_examples_decode() {
    let doc = Doc::load();
    let mut failures = Vec::new();
    for (heading_line, title, range) in doc.subsections(doc.section(CLIENT_SECTION)) {
        let expected = backticked(&title);
        let mut requests: BTreeMap<String, &'static str> = BTreeMap::new();
        let mut replies = Vec::new();
        for block in doc.blocks(range) {
            if block.lang() != "json" {
                continue;
            }
            for (line, value) in block.json_values().unwrap_or_default() {
                let at = format!("{DOC_NAME}:{line} (client example under ### {title})");
                let frame = value.and_then(|v| decode_frame(&v));
                match frame {
                    Err(e) => failures.push(format!("{at}: {e}")),
                    Ok(Frame::Client { id, kind }) => {
                        if expected.is_some_and(|t| t != kind) {
                            failures
                                .push(format!("{at}: a `{kind}` request under the heading of `{}`", expected.unwrap()));
                        }
                        requests.insert(id, kind);
                    }
                    Ok(Frame::Hub { id, kind, data, .. }) => replies.push((at, id, kind, data)),
                }
            }
        }
        // Replies shown with the requests answer one of them, and say what its ack carries.
        for (at, id, kind, data) in replies {
            if !matches!(kind, "ack" | "error") {
                failures.push(format!("{at}: only the ack or error replying to a request belongs here, not `{kind}`"));
                continue;
            }
            match id.as_deref().and_then(|id| requests.get(id)) {
                None => failures.push(format!("{at}: the {kind} answers no request id shown in this subsection")),
                Some(request) if kind == "ack" => {
                    if let Err(e) = check_ack_data(request, &data) {
                        failures.push(format!("{at}: {e}"));
                    }
                }
                Some(_) => {
                    let code = data.get("code").and_then(Value::as_str).unwrap_or_default();
                    if ErrorCode::parse(code).is_none() {
                        failures.push(format!("{at}: error code {code:?} is not an ErrorCode"));
                    }
                }
            }
        }
        if let Some(name) = expected
            && !requests.values().any(|k| *k == name)
        {
            failures
                .push(format!("{DOC_NAME}:{heading_line}: ### `{name}` has no ```json example request of that type"));
        }
    }
    finish("client message examples", failures);
}

#[test]
fn hub_message_examples_decode() {
    let doc = Doc::load();
    let mut failures = Vec::new();
    for (heading_line, title, range) in doc.subsections(doc.section(HUB_SECTION)) {
        let expected = backticked(&title);
        let mut examples = 0;
        for block in doc.blocks(range) {
            if block.lang() != "json" {
                continue;
            }
            for (line, value) in block.json_values().unwrap_or_default() {
                let at = format!("{DOC_NAME}:{line} (hub example under ### {title})");
                let value = match value {
                    Ok(v) => v,
                    Err(e) => {
                        failures.push(format!("{at}: not JSON: {e}"));
                        continue;
                    }
                };
                // Only hub frames are checked here; other JSON (a payload on its own) may appear.
                if value.get("seq").is_none() {
                    continue;
                }
                match decode_frame(&value) {
                    Err(e) => failures.push(format!("{at}: {e}")),
                    Ok(Frame::Hub { kind, data, .. }) => {
                        if let Some(name) = expected {
                            if name == kind {
                                examples += 1;
                            } else {
                                failures.push(format!("{at}: a `{kind}` frame under the heading of `{name}`"));
                            }
                        }
                        if kind == "error" {
                            let code = data.get("code").and_then(Value::as_str).unwrap_or_default();
                            if ErrorCode::parse(code).is_none() {
                                failures.push(format!("{at}: error code {code:?} is not an ErrorCode"));
                            }
                        }
                    }
                    Ok(Frame::Client { .. }) => {
                        unreachable!("a frame with `seq` decodes as a hub frame")
                    }
                }
            }
        }
        if let Some(name) = expected
            && examples == 0
        {
            failures.push(format!("{DOC_NAME}:{heading_line}: ### `{name}` has no ```json example frame of that type"));
        }
    }
    finish("hub message examples", failures);
}

/// Per session shown in the exchange: the next `seq` expected and the requests not yet answered.
#[derive(Default)]
struct SessionTrace {
    next_seq: u64,
    pending: VecDeque<(String, &'static str)>,
}

#[test]
fn example_exchange_decodes_and_is_consistent() {
    let doc = Doc::load();
    let mut failures = Vec::new();
    let mut sessions: BTreeMap<String, SessionTrace> = BTreeMap::new();
    let mut frames = 0;
    for block in doc.blocks(doc.section(EXCHANGE_SECTION)) {
        let Some(values) = block.json_values() else {
            continue;
        };
        let session = block.attr("session").map(str::to_owned);
        for (line, value) in values {
            let at = format!("{DOC_NAME}:{line} (example exchange)");
            let value = match value {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!("{at}: not JSON: {e}"));
                    continue;
                }
            };
            if value.get("type").is_none() {
                continue;
            }
            frames += 1;
            let frame = match decode_frame(&value) {
                Ok(f) => f,
                Err(e) => {
                    failures.push(format!("{at}: {e}"));
                    continue;
                }
            };
            let Some(name) = &session else { continue };
            let trace =
                sessions.entry(name.clone()).or_insert_with(|| SessionTrace { next_seq: 1, ..Default::default() });
            match frame {
                Frame::Client { id, kind } => trace.pending.push_back((id, kind)),
                Frame::Hub { seq, id, kind, data } => {
                    let seq = seq.unwrap_or_default();
                    if seq != trace.next_seq {
                        failures.push(format!("{at}: session {name}: seq {seq}, expected {}", trace.next_seq));
                    }
                    trace.next_seq = seq + 1;
                    if seq == 1 && kind != "welcome" {
                        failures.push(format!("{at}: session {name}: the first frame must be `welcome`, not `{kind}`"));
                    }
                    if matches!(kind, "ack" | "error") {
                        // Replies come in the order of the requests.
                        match trace.pending.pop_front() {
                            Some((req_id, req_kind)) if Some(&req_id) == id.as_ref() => {
                                if kind == "ack"
                                    && let Err(e) = check_ack_data(req_kind, &data)
                                {
                                    failures.push(format!("{at}: {e}"));
                                }
                            }
                            Some((req_id, _)) => failures.push(format!(
                                "{at}: session {name}: {kind} with id {id:?}, but the oldest unanswered request is {req_id:?}"
                            )),
                            None => failures.push(format!("{at}: session {name}: {kind} with id {id:?} answers no request")),
                        }
                    }
                }
            }
        }
    }
    for (name, trace) in &sessions {
        for (id, kind) in &trace.pending {
            failures.push(format!("example exchange, session {name}: request {id:?} ({kind}) is never answered"));
        }
    }
    if frames == 0 {
        failures.push(format!("\"{EXCHANGE_SECTION}\" shows no frames (```json or ```jsonl blocks)"));
    }
    finish("example exchange", failures);
}

/// JSON elsewhere (the envelope, the handshake refusal): frames decode, problem details name a
/// real code with its status.
#[test]
fn other_json_examples_are_valid() {
    let doc = Doc::load();
    let special: Vec<Range<usize>> =
        [CLIENT_SECTION, HUB_SECTION, EXCHANGE_SECTION].iter().map(|s| doc.section(s)).collect();
    let mut failures = Vec::new();
    for block in doc.blocks(0..doc.lines.len()) {
        if special.iter().any(|r| r.contains(&(block.line - 1))) {
            continue;
        }
        for (line, value) in block.json_values().unwrap_or_default() {
            let at = format!("{DOC_NAME}:{line}");
            let value = match value {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!("{at}: not JSON: {e}"));
                    continue;
                }
            };
            let Some(kind) = value.get("type").and_then(Value::as_str) else {
                continue;
            };
            if let Some(code) = kind.strip_prefix("urn:visithub:error:") {
                match ErrorCode::parse(code) {
                    None => failures.push(format!("{at}: problem type names unknown code {code:?}")),
                    Some(known) => {
                        if value.get("code").and_then(Value::as_str) != Some(code) {
                            failures.push(format!("{at}: problem `code` must repeat the code of its `type`"));
                        }
                        if value.get("status").and_then(Value::as_u64) != Some(known.http_status().into()) {
                            failures.push(format!("{at}: `{code}` is answered with HTTP {}", known.http_status()));
                        }
                    }
                }
            } else if let Err(e) = decode_frame(&value) {
                failures.push(format!("{at}: {e}"));
            }
        }
    }
    finish("other JSON examples", failures);
}
