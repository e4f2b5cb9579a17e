//! Tidy (issue 14): the workspace's layering rules, checked on its sources, so that a change
//! that breaks one fails here instead of in a review.
//!
//! - the control plane's `core/` knows no HTTP (no axum, no `http`, no status codes);
//! - only the control plane's `store/` speaks SQL (sqlx);
//! - only the agent's `docker/` talks to bollard (one named exception below);
//! - method names are written once, in `tomo-proto`: the control plane and the CLI name a
//!   method by its type (`DockerContainersList::NAME`), never by a string literal;
//! - every module opens with a `//!` doc;
//! - every path ARCHITECTURE.md names exists;
//! - `core/`, `agents/`, `store/`, the approval flow and the audit trail never name the surfaces (`crate::http`, `crate::mcp`), and
//!   the store names neither `core` nor `agents`.

use std::path::{Path, PathBuf};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    if dir.is_file() {
        return vec![dir.to_path_buf()];
    }
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for e in entries {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The code of a file without its tests: up to its `#[cfg(test)]` module (by this workspace's
/// convention the last item), nothing of a `tests.rs`; comments dropped.
fn shipping_code(p: &Path) -> String {
    if p.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = read(p);
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// Files under `dir` (minus `except`) whose shipping code contains one of `needles`.
fn offenders(dir: &str, except: &[&str], needles: &[&str]) -> Vec<String> {
    rust_files(&root().join(dir))
        .into_iter()
        .filter(|p| !except.iter().any(|e| rel(p).starts_with(e)))
        .filter_map(|p| {
            let code = shipping_code(&p);
            let hits: Vec<_> = needles.iter().filter(|n| code.contains(*n)).collect();
            (!hits.is_empty()).then(|| format!("{} ({hits:?})", rel(&p)))
        })
        .collect()
}

#[test]
fn the_control_planes_core_knows_no_http() {
    let found = offenders(
        "crates/tomo-server/src/core",
        &[],
        &["axum", "http::", "StatusCode"],
    );
    assert!(found.is_empty(), "HTTP in core/: {found:?}");
}

/// Issue 14's layering, as far as it holds today: the surfaces (`http/`, `mcp`) sit on top; the
/// control plane's core, the agents' sessions and the store never reach up into them.
#[test]
fn the_layers_below_the_surfaces_do_not_reach_up() {
    for dir in ["core", "agents", "store", "approvals"] {
        let found = offenders(
            &format!("crates/tomo-server/src/{dir}"),
            &[],
            &["crate::http", "crate::mcp"],
        );
        assert!(
            found.is_empty(),
            "{dir}/ reaches up to a surface: {found:?}"
        );
    }
    // The approval flow's domain (`approvals.rs`; its `approvals/` is covered above) answers
    // the core's refusals, not HTTP errors; the audit trail (`audit.rs`) has its HTTP side in
    // `http/audit.rs`.
    for file in ["approvals.rs", "audit.rs"] {
        let found = offenders(
            &format!("crates/tomo-server/src/{file}"),
            &[],
            &["crate::http", "crate::mcp", "axum", "StatusCode"],
        );
        assert!(found.is_empty(), "{file} reaches up: {found:?}");
    }
    // The agents' sessions speak WebSocket, not HTTP: the upgrade is `http/agent_upgrade.rs`.
    let found = offenders(
        "crates/tomo-server/src/agents",
        &[],
        &["axum", "StatusCode"],
    );
    assert!(found.is_empty(), "HTTP in agents/: {found:?}");
    let found = offenders(
        "crates/tomo-server/src/store",
        &[],
        &["crate::core", "crate::agents"],
    );
    assert!(found.is_empty(), "store/ reaches up: {found:?}");
}

#[test]
fn only_the_store_speaks_sql() {
    let found = offenders(
        "crates/tomo-server/src",
        &["crates/tomo-server/src/store/"],
        &["sqlx"],
    );
    assert!(found.is_empty(), "SQL outside store/: {found:?}");
}

#[test]
fn only_the_agents_docker_module_talks_to_bollard() {
    let found = offenders(
        "crates/tomo-agent/src",
        &[
            "crates/tomo-agent/src/docker/",
            // The one exception: validation judges the engine's own inspect types (a running
            // container's HostConfig and mounts) as the engine reports them.
            "crates/tomo-agent/src/validate.rs",
        ],
        &["bollard"],
    );
    assert!(found.is_empty(), "bollard outside docker/: {found:?}");
}

#[test]
fn method_names_are_written_only_in_tomo_proto() {
    let mut found = Vec::new();
    for dir in ["crates/tomo-server/src", "crates/tomo/src"] {
        for p in rust_files(&root().join(dir)) {
            let code = shipping_code(&p);
            for spec in tomo_proto::methods::ALL {
                let name = spec.name;
                if code.contains(&format!("\"{name}\"")) {
                    found.push(format!("{}: \"{name}\"", rel(&p)));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "method-name literals (use the method's type, `X::NAME`):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_module_opens_with_its_doc() {
    let mut found = Vec::new();
    for krate in std::fs::read_dir(root().join("crates")).expect("crates/") {
        let src = krate.expect("entry").path().join("src");
        if !src.is_dir() {
            continue;
        }
        for p in rust_files(&src) {
            if !read(&p).trim_start().starts_with("//!") {
                found.push(rel(&p));
            }
        }
    }
    assert!(found.is_empty(), "modules without a `//!` doc: {found:?}");
}

#[test]
fn every_path_architecture_md_names_exists() {
    let root = root();
    let text = read(&root.join("ARCHITECTURE.md"));
    // Where a bare file name may live: the repository, each crate, each crate's `src/`.
    let mut bases = vec![root.clone(), root.join("scripts"), root.join("docs")];
    for krate in std::fs::read_dir(root.join("crates")).expect("crates/") {
        let k = krate.expect("entry").path();
        bases.push(k.join("src"));
        bases.push(k.join("tests"));
        bases.push(k.clone());
    }
    let mut missing = Vec::new();
    let mut checked = 0;
    for (i, quoted) in text.split('`').enumerate() {
        // Odd pieces are inside backticks.
        let looks_like_path = i % 2 == 1
            && !quoted.contains([' ', '(', '<', '*', '{', ':', '='])
            && (quoted.ends_with(".rs") || quoted.ends_with(".md") || quoted.ends_with(".toml"));
        if !looks_like_path {
            continue;
        }
        checked += 1;
        let found = bases.iter().any(|b| b.join(quoted).exists())
            || rust_files(&root.join("crates"))
                .iter()
                .any(|p| p.to_string_lossy().ends_with(&format!("/{quoted}")));
        if !found {
            missing.push(quoted.to_owned());
        }
    }
    assert!(checked > 40, "only {checked} paths found: the parser broke");
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}
