//! Architecture checks (see ARCHITECTURE.md): crate boundaries that code review alone would miss.

use std::path::{Path, PathBuf};

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn normal_dependencies(krate: &str) -> Vec<String> {
    let toml = std::fs::read_to_string(crates_dir().join(krate).join("Cargo.toml")).unwrap();
    let mut in_deps = false;
    let mut deps = vec![];
    for line in toml.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        // Optional dependencies are features' (ravel-core's `openapi`: schema derives only).
        if in_deps
            && !line.contains("optional = true")
            && let Some((name, _)) = line.split_once('=')
        {
            deps.push(name.trim().trim_end_matches(".workspace").to_string());
        }
    }
    deps
}

#[test]
fn ravel_core_is_pure() {
    assert_eq!(normal_dependencies("ravel-core"), vec!["serde"], "ravel-core may depend on serde only");
    let manifest = std::fs::read_to_string(crates_dir().join("ravel-core/Cargo.toml")).unwrap();
    assert!(
        manifest.contains("utoipa = { workspace = true, optional = true }"),
        "utoipa only behind ravel-core's `openapi` feature"
    );
    let mut files = vec![];
    rust_files(&crates_dir().join("ravel-core/src"), &mut files);
    assert!(!files.is_empty());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for banned in ["std::fs", "std::net", "std::process", "std::thread", "SystemTime", "Instant::now", "std::env"] {
            assert!(!text.contains(banned), "{} uses {banned}: ravel-core does no I/O and reads no clock", f.display());
        }
    }
}

#[test]
fn sql_lives_only_in_ravel_store() {
    for entry in std::fs::read_dir(crates_dir()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "ravel-store" {
            continue;
        }
        for dep in ["rusqlite", "sqlx", "tokio-postgres", "postgres"] {
            assert!(!normal_dependencies(&name).contains(&dep.to_string()), "{name} depends on {dep}");
        }
        let mut files = vec![];
        rust_files(&entry.path(), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            // Spelled in pieces so this file does not match itself.
            for sql in [
                concat!("SEL", "ECT "),
                concat!("INSERT ", "INTO"),
                concat!("CREATE ", "TABLE"),
                concat!("DELETE ", "FROM"),
            ] {
                assert!(!text.contains(sql), "{} contains SQL ({sql:?}); only ravel-store may", f.display());
            }
        }
    }
}

#[test]
fn only_ravel_gpu_names_nvml() {
    for entry in std::fs::read_dir(crates_dir()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "ravel-gpu" {
            assert!(
                !normal_dependencies(&name).contains(&"nvml-wrapper".to_string()),
                "{name} depends on nvml-wrapper"
            );
        }
    }
}
