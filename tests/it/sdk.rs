//! The Rust SDK outside this repository, as a new user takes it: a copy of
//! `plugins/sdk` next to a plugin project of their own, built for
//! `wasm32-wasip2` and served by the real host.
//!
//! The SDK binds the WIT in its own `wit/` directories, copies of the
//! top-level `wit/` (a copy of the directory has no `../../wit`, and
//! `cargo package` ships only what is inside the package): the first test
//! fails while the copies differ. The project is `tests/it/sdk-project`,
//! the one the README shows; the last test checks that the README shows it
//! as it is.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A cold build compiles `wit-bindgen` (half a minute on 2 idle cores);
/// a warm one takes seconds.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// Every file under `dir`, symlinks followed, by its path relative to `dir`.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.insert(path.strip_prefix(base).unwrap().to_path_buf(), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The paths of `a` and `b` whose contents differ or that only one has.
fn differences(a: &BTreeMap<PathBuf, Vec<u8>>, b: &BTreeMap<PathBuf, Vec<u8>>) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = a.keys().chain(b.keys()).filter(|p| a.get(*p) != b.get(*p)).cloned().collect();
    paths.dedup();
    paths
}

/// Copy the directory `from` to `to` as `cp -r` does, refusing symlinks: a
/// symlink in the SDK would point back into this repository.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        assert!(!kind.is_symlink(), "{} is a symlink: the SDK must hold real files", src.display());
        if kind.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

#[test]
fn the_sdk_carries_a_copy_of_the_top_level_wit() {
    let sync = "run scripts/sync-sdk-wit.sh";
    let wit = files(&root().join("wit"));
    let sdk = files(&root().join("plugins/sdk/wit"));
    assert_eq!(differences(&wit, &sdk), Vec::<PathBuf>::new(), "plugins/sdk/wit differs from wit/: {sync}");

    let handler = files(&root().join("plugins/sdk/handler/wit"));
    let want: BTreeMap<_, _> = [(PathBuf::from("plugin.wit"), wit[Path::new("plugin.wit")].clone())].into();
    assert_eq!(
        differences(&want, &handler),
        Vec::<PathBuf>::new(),
        "plugins/sdk/handler/wit is not wit/plugin.wit: {sync}"
    );
}

/// `cargo build --release --target wasm32-wasip2 --offline` in `project`,
/// into a directory of this workspace's target dir kept for it (so a warm
/// run rebuilds nothing, and nothing else is touched). Panics with cargo's
/// output if it fails or runs past `BUILD_TIMEOUT`.
fn build_for_wasm(project: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--offline"])
        .current_dir(project)
        .env("CARGO_TARGET_DIR", root().join("target/sdk-standalone"))
        // A build dir shared with other workspaces would mix this build
        // into theirs.
        .env_remove("CARGO_BUILD_BUILD_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cargo");
    let mut stderr = child.stderr.take().unwrap();
    let output = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = output.join().unwrap();
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!("cargo build of the standalone project failed ({status}):\n{output}"),
        None => panic!("cargo build of the standalone project ran past {BUILD_TIMEOUT:?}:\n{output}"),
    }
}

#[test]
fn a_project_outside_the_repository_builds_against_a_copy_of_the_sdk() {
    let dir = tempfile::Builder::new().prefix("sdk-standalone-").tempdir().unwrap();
    assert!(!dir.path().starts_with(root()), "the project must be outside the repository");
    let project = dir.path().join("adder");
    // What the README says to do: the project's two files, and `cp -r
    // plugins/sdk sockets-plugin` in it.
    copy_tree(&root().join("tests/it/sdk-project"), &project);
    copy_tree(&root().join("plugins/sdk"), &project.join("sockets-plugin"));

    build_for_wasm(&project);
    let wasm = root().join("target/sdk-standalone/wasm32-wasip2/release/adder.wasm");
    let wasm = wasm.display().to_string();

    let host = Host::start(&["--plugin", &wasm, "--listen", "127.0.0.1:0", "--no-watch"]);
    assert_eq!(udp_roundtrip(host.udp(), b"2 + 3 + 4\n"), b"9");
    assert_eq!(line_roundtrip(&mut tcp_connect(host.tcp()), b"40 + 2"), b"42\n");
    // `Err(..)`: logged by the host, no reply.
    host.assert_no_udp_reply(b"2 + x", &["plugin_errors"]);
    let logged = host.logs.wait_for(r#"plugin returned an error: not a number: " x""#, 1, REPLY_TIMEOUT);
    assert_eq!(logged, 1, "{:#?}", host.logs.lines());
}

#[test]
fn the_readme_shows_the_standalone_project() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for file in ["Cargo.toml", "src/lib.rs"] {
        let text = std::fs::read_to_string(root().join("tests/it/sdk-project").join(file)).unwrap();
        assert!(readme.contains(&text), "README's standalone Rust project differs from tests/it/sdk-project/{file}");
    }
    assert!(readme.contains("rustup target add wasm32-wasip2"), "README does not say to add the wasm32-wasip2 target");
}
