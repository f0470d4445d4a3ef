//! Finding, and installing if missing, the peers and clients of `bench
//! protocols`: the Debian packages through `apt-get`, wasmtime-cli 48 from
//! crates.io into a folder of its own, and the wasi:http hello component
//! built from `bench/peers/wasi-http-hello`.
//!
//! Nothing is installed behind the user's back: every command is printed
//! before it runs, `--no-install` runs none, and a tool that is still
//! missing after that only skips the rows that need it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};
use tokio::process::Command;

/// The Debian packages, and the programs of them the benchmark runs.
pub const PACKAGES: [(&str, &[&str]); 6] = [
    ("nsd", &["nsd"]),
    ("dnsperf", &["dnsperf"]),
    ("wrk", &["wrk"]),
    ("nginx", &["nginx"]),
    ("redis-server", &["redis-server"]),
    ("redis-tools", &["redis-benchmark"]),
];

/// The wasmtime-cli version `wasmtime serve` comes from: the wasmtime the
/// host is built on.
pub const WASMTIME_VERSION: &str = "48.0.8";
/// Where `cargo install` puts it, relative to the workspace root.
pub const WASMTIME_ROOT: &str = "target/tools/wasmtime-cli-48";

/// The programs found, by name.
#[derive(Debug, Default)]
pub struct Tools {
    found: Vec<(&'static str, PathBuf)>,
}

impl Tools {
    /// The path of `program`, or why there is none.
    pub fn get(&self, program: &str) -> Result<&Path, String> {
        self.found
            .iter()
            .find(|(name, _)| *name == program)
            .map(|(_, path)| path.as_path())
            .ok_or_else(|| format!("`{program}` not found (Debian package {})", package_of(program)))
    }
}

fn package_of(program: &str) -> &'static str {
    PACKAGES.iter().find(|(_, programs)| programs.contains(&program)).map_or("?", |(package, _)| package)
}

/// `program` on `PATH`, or in the sbin directories a non-root `PATH` often
/// lacks (nsd and nginx are installed in `/usr/sbin`).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Find the Debian tools; install the missing packages unless `no_install`.
pub async fn debian(no_install: bool) -> Tools {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, programs)| programs.iter().any(|p| find(p).is_none()))
        .map(|(package, _)| *package)
        .collect();
    if !missing.is_empty() {
        let command = format!("apt-get install -y {}", missing.join(" "));
        if no_install {
            eprintln!("missing Debian packages (not installed, --no-install): {command}");
        } else if let Err(e) = apt_install(&missing).await {
            eprintln!("cannot install the missing Debian packages: {e:#}\n  run as root: {command}");
        }
    }
    let mut tools = Tools::default();
    for (_, programs) in PACKAGES {
        for program in programs {
            if let Some(path) = find(program) {
                tools.found.push((program, path));
            }
        }
    }
    tools
}

/// `apt-get install -y PACKAGES`, as root or through `sudo -n`.
async fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let mut command = if nix::unistd::geteuid().is_root() {
        Command::new("apt-get")
    } else if find("sudo").is_some() {
        let mut c = Command::new("sudo");
        // -n: fail rather than wait for a password nobody is asked for.
        c.args(["-n", "apt-get"]);
        c
    } else {
        bail!("not root, and no sudo");
    };
    command.args(["install", "-y"]).args(packages).env("DEBIAN_FRONTEND", "noninteractive");
    eprintln!("installing: {:?}", command.as_std());
    let status = command.stdin(Stdio::null()).status().await.context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get install failed ({status}); `apt-get update` first may help");
    }
    Ok(())
}

/// The wasmtime binary: `given` if it is a file, else the one under
/// [`WASMTIME_ROOT`], installed there now unless `no_install` (10-20
/// minutes on 2 cores). Checked to be version [`WASMTIME_VERSION`].
pub async fn wasmtime(given: Option<&Path>, no_install: bool) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => Path::new(WASMTIME_ROOT).join("bin/wasmtime"),
    };
    if !path.is_file() {
        if given.is_some() {
            bail!("no wasmtime at {} (--wasmtime)", path.display());
        }
        let shown = format!("cargo install --locked --root {WASMTIME_ROOT} wasmtime-cli --version ={WASMTIME_VERSION}");
        if no_install {
            bail!("no wasmtime at {} (--no-install; install it with `{shown}`)", path.display());
        }
        eprintln!("installing wasmtime-cli {WASMTIME_VERSION} (10-20 minutes on 2 cores): {shown}");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["install", "--locked", "--root", WASMTIME_ROOT, "wasmtime-cli", "--version"])
            .arg(format!("={WASMTIME_VERSION}"))
            .stdin(Stdio::null())
            .status()
            .await
            .context("cannot run cargo")?;
        if !status.success() || !path.is_file() {
            bail!("`{shown}` failed ({status})");
        }
    }
    let version = super::clients::version(&path, &["--version"]).await;
    if !version.contains(WASMTIME_VERSION) {
        bail!("{} is `{version}`, not wasmtime {WASMTIME_VERSION}", path.display());
    }
    Ok(path)
}

/// Build the wasi:http hello component of `bench/peers/wasi-http-hello`
/// for wasm32-wasip2 (seconds; its own workspace, its own lock file) and
/// return its path, under `target/peers`.
pub async fn hello_component() -> anyhow::Result<PathBuf> {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = bench.join("peers/wasi-http-hello/Cargo.toml");
    let target = bench.parent().unwrap_or(bench).join("target/peers");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"]).arg(&manifest);
    command.arg("--target-dir").arg(&target);
    let output = command.stdin(Stdio::null()).output().await.context("cannot run cargo")?;
    if !output.status.success() {
        bail!(
            "cannot build {} ({}): {}",
            manifest.display(),
            output.status,
            super::clients::last_lines(&String::from_utf8_lossy(&output.stderr), 3)
        );
    }
    let wasm = target.join("wasm32-wasip2/release/wasi_http_hello.wasm");
    if !wasm.is_file() {
        bail!("cargo built {} but there is no {}", manifest.display(), wasm.display());
    }
    Ok(wasm)
}
