//! The `ravel` front (src/front.rs) as release builds make it: compiled here without the
//! standard library (`--cfg ravel_lean`, `panic=abort`, linked static as build.rs links it),
//! placed beside `ravel-main`, and run against a real daemon. Debug builds (every other test)
//! use the same file as an ordinary std program.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

// The front's own unit tests (its `tests` module), built as part of this test crate.
#[allow(dead_code)]
#[path = "../src/front.rs"]
mod front;

use ravel_test_support::TestDaemon;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ravel");
const MAIN: &str = env!("CARGO_BIN_EXE_ravel-main");

/// The lean front, built into `dir` with `ravel-main` beside it.
fn lean_front(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/front.rs");
    let out = dir.join("ravel");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut cmd = std::process::Command::new(rustc);
    cmd.args(["--edition", "2024", "--crate-type", "bin", "--crate-name", "ravel", "-C", "panic=abort"])
        .args(["-C", "opt-level=2", "--cfg", "ravel_lean"])
        .args(
            ["-nostartfiles", "-nostdlib", "-static", "-no-pie"]
                .iter()
                .flat_map(|a| ["-C".into(), format!("link-arg={a}")]),
        )
        .arg("-o")
        .arg(&out)
        .arg(&src);
    let built = cmd.output().expect("run rustc");
    assert!(built.status.success(), "rustc failed: {}", String::from_utf8_lossy(&built.stderr));
    std::os::unix::fs::symlink(MAIN, dir.join("ravel-main")).unwrap();
    // Built without the C library: nothing for the dynamic loader to do.
    let elf = std::fs::read(&out).unwrap();
    assert!(!elf.windows(9).any(|w| w == b"libc.so.6"), "the lean front links the C library");
    out
}

fn output(cmd: &mut std::process::Command) -> (i32, String, String) {
    let out = cmd.output().expect("run");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn the_lean_front_submits_what_ravel_main_submits() {
    let d = TestDaemon::builder(BIN).start();
    let lean = lean_front(&d.scratch("lean"));
    let args = ["run", "--gpus", "1", "--cpus=2", "--priority", "-4", "--name", "n \"1\"", "--", "sh", "-c"];
    let script = "umask; pwd; printf '%s|' \"$FRONT_X\" \"$RAVEL_TOKEN\"";
    let cwd = d.scratch("work");
    let submit = |bin: &Path| {
        let mut cmd = d.cmd_of(bin);
        cmd.args(args).arg(script).current_dir(&cwd).env("FRONT_X", "a\"b\\c\t\u{1}é").env("RAVEL_TOKEN", "secret");
        // SAFETY: umask is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o027);
                Ok(())
            });
        }
        let (code, out, err) = output(&mut cmd);
        assert_eq!(code, 0, "{bin:?}: {err}");
        out.trim().parse::<i64>().unwrap_or_else(|_| panic!("{bin:?} printed {out:?}"))
    };
    let by_front = submit(&lean);
    let by_main = submit(Path::new(MAIN));
    assert_eq!(by_main, by_front + 1);
    let mut seen = vec![];
    for id in [by_front, by_main] {
        let job = d.wait_for(id, Duration::from_secs(30), |j| j["state"] == "succeeded");
        let spec: Vec<String> =
            ["command", "name", "priority", "gpus", "cpus", "cwd", "user"].iter().map(|k| job[k].to_string()).collect();
        seen.push((spec, d.ok(&["logs", &id.to_string(), "--stdout"])));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].1, format!("0027\n{}\na\"b\\c\t\u{1}é||", cwd.display()));
}

#[test]
fn the_lean_front_hands_everything_else_to_ravel_main() {
    let d = TestDaemon::builder(BIN).prepare();
    let lean = lean_front(&d.scratch("lean"));
    // No daemon yet: ravel-main starts one, as `ravel run` does.
    let (code, out, err) = output(d.cmd_of(&lean).args(["run", "--", "true"]));
    assert_eq!((code, out.as_str()), (0, "1\n"), "{err}");
    let (_, version, _) = output(d.cmd_of(&lean).arg("--version"));
    assert_eq!(version, output(d.cmd_of(Path::new(MAIN)).arg("--version")).1);
    // Refused before sending, and by the daemon after: ravel-main's words, nothing queued.
    let (code, _, err) = output(d.cmd_of(&lean).args(["run", "--cpus", "0", "--", "true"]));
    assert_eq!((code, err.as_str()), (1, "ravel: --cpus must be at least 1\n"));
    let mut big = d.cmd_of(&lean);
    big.args(["run", "--", "true"]);
    for i in 0..10 {
        big.env(format!("FRONT_BIG_{i}"), "x".repeat(110 * 1024));
    }
    let (code, _, err) = output(&mut big);
    assert_eq!(code, 1);
    assert!(err.starts_with("ravel: environment is ") && err.contains("the limit is 1048576"), "{err}");
    let jobs: serde_json::Value = serde_json::from_str(&d.ok(&["queue", "--all", "--json"])).unwrap();
    assert_eq!(jobs.as_array().map(Vec::len), Some(1), "{jobs}");
    // A flag the front does not take goes to ravel-main whole.
    let (code, out, _) = output(d.cmd_of(&lean).args(["run", "--json", "--", "true"]));
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"], 2);
}
