//! Link settings for the `ravel` binary, which every CLI call and every supervisor starts.
//!
//! - Not position-independent: a PIE start-up spends most of its page faults relocating
//!   `.data.rel.ro` (bench/README.md, "Start-up page faults").
//! - No `libgcc_s.so` at run time: a shared library costs the loader a mapping and relocations
//!   on every start, and `libgcc_s`'s constructor identifies the CPU (`cpuid`, which traps to
//!   the hypervisor on a VM). Its static twin `libgcc_eh.a` (the same unwinder) is linked
//!   instead: a directory on the search path holds a linker script named `libgcc_s.so` that
//!   names the archive. Where the compiler has no such archive, the shared library stays.
//!   (`libm.a` cannot stand in for `libm.so` the same way: it needs glibc-private symbols.)

//! - The `ravel` front (src/front.rs) is built lean in release builds on x86-64 Linux: without
//!   the standard library or the C library (`cfg(ravel_lean)`), static, its own `_start`. This
//!   needs `panic = "abort"`, which the release profile sets; a release build told to unwind
//!   (`CARGO_PROFILE_RELEASE_PANIC=unwind`) gets the ordinary std front instead.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_PROFILE_RELEASE_PANIC");
    println!("cargo::rustc-check-cfg=cfg(ravel_lean)");
    println!("cargo:rustc-link-arg-bins=-no-pie");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let lean = var("PROFILE") == "release"
        && var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_PROFILE_RELEASE_PANIC") != "unwind";
    if lean {
        println!("cargo:rustc-cfg=ravel_lean");
        for arg in ["-nostartfiles", "-nostdlib", "-static"] {
            println!("cargo:rustc-link-arg-bin=ravel={arg}");
        }
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = out.join("static-libs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create OUT_DIR/static-libs");
    if let Some(path) = archive_path("libgcc_eh.a") {
        let script =
            format!("/* ravel build.rs: the static unwinder instead of libgcc_s.so */\nINPUT({})\n", path.display());
        std::fs::write(dir.join("libgcc_s.so"), script).expect("write linker script");
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
}

/// The compiler's own path for a static archive, when it has one.
fn archive_path(name: &str) -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = std::process::Command::new(cc).arg(format!("-print-file-name={name}")).output().ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // Asked for a file it does not have, the compiler prints the bare name back.
    (path.is_absolute() && Path::new(&path).exists()).then_some(path)
}
