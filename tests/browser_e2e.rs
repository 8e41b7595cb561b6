//! The browser demo in a real browser: Debian's Chromium, driven by `playwright-core` from
//! `tests/e2e/` (`npm ci` there; `scripts/test` does it), against this build's `visithub serve
//! --demo`. Each test runs one script of `tests/e2e/` inside a loopback-only network namespace
//! (`unshare -n`), where the script starts its own hub and browser; the script exits non-zero
//! on any failed check and prints why. Screenshots go to `<target>/e2e-artifacts/`.
//!
//! These tests fail, never skip, when node, the npm packages or Chromium are missing: a browser
//! test that quietly does nothing would hide a broken demo.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One browser at a time: two Chromiums decoding video would compete for the machine's cores.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

const CHROMIUM: &str = "/usr/bin/chromium";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `<target>/e2e-artifacts`, beside the `tmp` folder cargo gives integration tests.
fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join("e2e-artifacts")
}

fn require_tools() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is missing: install Node.js 18+ (scripts/test installs Debian's nodejs)"
    );
    let package = root().join("tests/e2e/node_modules/playwright-core/package.json");
    assert!(
        package.exists(),
        "playwright-core is missing: run `PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci` in tests/e2e (scripts/test does)"
    );
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: `apt-get install chromium` (scripts/test does)");
}

/// Runs `tests/e2e/<script>` in its own network namespace; panics with its output on failure.
fn run_script(script: &str) {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    require_tools();
    let log = artifacts().join(format!("{script}.log"));
    std::fs::create_dir_all(artifacts()).expect("artifacts folder");
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let started = Instant::now();
    let mut child = Command::new("unshare")
        .args(["-n", "sh", "-c", &format!("ip link set lo up && exec node tests/e2e/{script}")])
        .current_dir(root())
        .env("E2E_VISITHUB_BIN", env!("CARGO_BIN_EXE_visithub"))
        .env("E2E_ARTIFACTS", artifacts())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group, so that a script over time goes with its hub and browser.
        .process_group(0)
        .spawn()
        .expect("unshare runs (util-linux, as root)");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Whatever the script left running in its group (a browser still closing, a hub) goes
    // too, and is gone before the next script starts: a lingering Chromium kept the next
    // call from ever negotiating.
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    let gone_by = std::time::Instant::now() + Duration::from_secs(10);
    while Command::new("kill")
        .args(["-0", "--", &group])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && std::time::Instant::now() < gone_by
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    println!("{output}");
    println!("{script}: {:.1} s", started.elapsed().as_secs_f64());
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("{script} failed ({s}); its output is above and in {}", log.display()),
        None => panic!("{script} did not finish within {SCRIPT_TIMEOUT:?}; output:\n{output}"),
    }
}

/// Intake in WA (and a refused intake that names the opening time), support chat both ways,
/// a provider's claim, both RTCPeerConnections connected and decoding each other's video, and
/// the end of the visit on both pages.
#[test]
fn a_whole_visit_in_the_browser() {
    run_script("visit.mjs");
}

/// The patient's socket dies mid-visit: the page resumes its session with every chat message
/// written meanwhile (from both sides), once each, and the call stays up (and survives an ICE
/// restart); then the patient reloads the page, which rejoins the call on a new session.
#[test]
fn the_patient_page_resumes_mid_visit() {
    run_script("resume.mjs");
}
