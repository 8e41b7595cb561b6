//! Unit tests of the browser client library (`examples/web/visithub-client.js`), written for
//! node's test runner in `tests/e2e/client.test.mjs` against a scripted WebSocket: replies and
//! timeouts, resume with replay, offline requests, pacing and retries. Fails (never skips) when
//! node is missing.

use std::path::Path;
use std::process::Command;

#[test]
fn client_library_unit_tests_pass_in_node() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("node")
        .args(["--test", "tests/e2e/client.test.mjs"])
        .current_dir(root)
        .output()
        .expect("node is missing: install Node.js 18+ (scripts/test installs Debian's nodejs)");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "node --test failed:\n{text}");
    assert!(text.contains("# fail 0") && !text.contains("# pass 0"), "no test ran:\n{text}");
}
