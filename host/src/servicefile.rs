//! The services file (`host --config host.toml`): any number of services in
//! one process.
//!
//! The file's keys are the command line's flags, spelled the same without
//! the dashes, so there is one set of names, defaults and checks, not two:
//! each service's table, after the host-wide keys at the top, is turned
//! into the flags it stands for and parsed by the same parser as the
//! command line. A one-service file and `host --plugin ...` with the same
//! flags make the same service.
//!
//! ```toml
//! metrics = "127.0.0.1:9090"      # host-wide keys first
//!
//! [[service]]
//! name = "echo"
//! plugin = "plugins/echo.wasm"    # relative to this file
//! listen = ["127.0.0.1:7000"]
//! timeout = "200ms"
//! vars = { greeting = "hello" }
//! var-files = { zone = "example.zone" }  # the text of a file, relative to this one
//! ```
//!
//! Every error is one line naming the file, line and column: TOML syntax,
//! an unknown key, a host-wide key inside a service, a bad value, two
//! services with one name or one address, a missing plugin.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use clap::{CommandFactory as _, Parser as _};
use toml::Spanned;

use crate::config::Config;
use crate::request::Transport;

/// Keys that apply to the whole host, at the top of the file. Every other
/// flag is a service's.
pub const HOST_KEYS: &[&str] = &[
    "workers",
    "cache-dir",
    "no-cache",
    "cache-max-size",
    "no-watch",
    "data-dir",
    "metrics",
    "log-format",
    "drain-timeout",
    "reuse-port",
    "user",
];

/// Flags that are not keys of the file.
const NOT_KEYS: &[&str] = &["config", "help", "version"];

/// Plural spellings a file may use for a repeatable flag.
const ALIASES: &[(&str, &str)] = &[("kv-buckets", "kv-bucket"), ("vars", "var"), ("var-files", "var-file")];

/// What a services file describes: one [`Config`] per service, each with
/// the host-wide settings filled in.
#[derive(Debug, Clone)]
pub struct ServicesFile {
    /// The file.
    pub path: PathBuf,
    /// The host-wide settings (a [`Config`] with no plugin).
    pub host: Config,
    /// The services, in the file's order.
    pub services: Vec<Config>,
}

/// Read and check a services file.
pub fn load(path: &Path) -> anyhow::Result<ServicesFile> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    parse(path, &text)
}

/// Check a services file's text; `path` names it in errors and anchors
/// relative plugin paths.
pub fn parse(path: &Path, text: &str) -> anyhow::Result<ServicesFile> {
    let at = |span: Range<usize>, msg: String| {
        let (line, col) = line_col(text, span.start);
        anyhow::anyhow!("{}:{line}:{col}: {msg}", path.display())
    };
    let doc: BTreeMap<Spanned<String>, Spanned<toml::Value>> = toml::from_str(text).map_err(|e| {
        let msg = e.message().trim().to_string();
        match e.span() {
            Some(span) => at(span, msg),
            None => anyhow::anyhow!("{}: {msg}", path.display()),
        }
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let known = service_keys();

    // The host-wide keys, as flags.
    let mut host_args: Vec<(String, Range<usize>)> = Vec::new();
    let mut services = None;
    for (key, value) in &doc {
        let name = key.get_ref().as_str();
        if name == "service" {
            services = Some(value);
            continue;
        }
        if !HOST_KEYS.contains(&name) {
            let hint = if known.iter().any(|k| k == name) {
                format!("`{name}` is a service's key: put it under a [[service]]")
            } else {
                format!("unknown key `{name}` (host-wide keys: {})", HOST_KEYS.join(", "))
            };
            return Err(at(key.span(), hint));
        }
        push_flag(&mut host_args, name, value, dir).map_err(|m| at(value.span(), m))?;
    }
    let host = parse_flags(&host_args, &[], at)?;

    let Some(services) = services else {
        return Err(at(0..0, "no [[service]]: a services file describes at least one service".into()));
    };
    let toml::Value::Array(tables) = services.get_ref() else {
        return Err(at(services.span(), "`service` must be a list of tables: write [[service]]".into()));
    };
    // Spans of the items of an array are not kept by `toml::Value`: parse
    // the services again with spans.
    #[derive(serde::Deserialize)]
    struct WithSpans {
        service: Vec<Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>,
    }
    let spanned: WithSpans = toml::from_str(text).map_err(|e| at(e.span().unwrap_or(0..0), e.message().into()))?;
    debug_assert_eq!(spanned.service.len(), tables.len());

    let mut out = Vec::new();
    let mut names: HashMap<String, Range<usize>> = HashMap::new();
    let mut addresses: HashMap<(Transport, SocketAddr), String> = HashMap::new();
    for table in &spanned.service {
        let mut args: Vec<(String, Range<usize>)> = Vec::new();
        let mut plugin_span = None;
        let mut name_span = table.span();
        for (key, value) in table.get_ref() {
            let name = key.get_ref().as_str();
            let flag = ALIASES.iter().find(|(alias, _)| *alias == name).map_or(name, |(_, flag)| *flag);
            if HOST_KEYS.contains(&flag) {
                return Err(at(key.span(), format!("`{name}` is host-wide: put it at the top of the file")));
            }
            if !known.iter().any(|k| k == flag) {
                return Err(at(key.span(), format!("unknown key `{name}` in a [[service]] (see host --help)")));
            }
            match flag {
                "plugin" => plugin_span = Some(value.span()),
                "name" => name_span = value.span(),
                _ => {}
            }
            push_flag(&mut args, flag, value, dir).map_err(|m| at(value.span(), m))?;
        }
        let Some(plugin_span) = plugin_span else {
            return Err(at(table.span(), "a [[service]] without `plugin`: name its .wasm file".into()));
        };
        let config = parse_flags(&host_args, &args, at)?;
        // The checks between flags (`--framing` without TCP, an address
        // twice, ...), as on the command line.
        config.validate().map_err(|e| at(table.span(), e.to_string()))?;
        let path = config.plugin_path()?;
        if !path.is_file() {
            return Err(at(plugin_span, format!("plugin {}: no such file", path.display())));
        }
        let name = crate::service::service_name(&config).map_err(|e| at(name_span.clone(), e.to_string()))?;
        if let Some(first) = names.get(&name) {
            let (line, _) = line_col(text, first.start);
            return Err(at(name_span, format!("two services named {name} (the first on line {line})")));
        }
        names.insert(name.clone(), name_span.clone());
        for (transport, addr) in config.bind_list() {
            if addr.port() == 0 {
                continue;
            }
            if let Some(other) = addresses.insert((transport, addr), name.clone()) {
                return Err(at(table.span(), format!("services {other} and {name} both serve {transport} {addr}")));
            }
        }
        out.push(config);
    }
    if out.is_empty() {
        return Err(at(services.span(), "no [[service]]: a services file describes at least one service".into()));
    }
    // Every service's instance pool reserves address space in this one
    // process: the sum is bounded like one service's `max-instances`.
    let total: u64 = out.iter().map(|c| u64::from(c.max_instances)).sum();
    let limit = u64::from(crate::config::MAX_INSTANCES_LIMIT);
    if total > limit {
        return Err(at(
            services.span(),
            format!(
                "the services' max-instances add up to {total}, over {limit}: every instance slot reserves 8GiB of \
                 address space in this one process (lower max-instances, or run the services in several hosts)"
            ),
        ));
    }
    Ok(ServicesFile { path: path.to_path_buf(), host, services: out })
}

/// Applies `$apply!(field)` to every host-wide field of [`Config`] (the
/// fields of [`HOST_KEYS`]).
macro_rules! host_fields {
    ($apply:ident) => {
        $apply!(workers);
        $apply!(cache_dir);
        $apply!(no_cache);
        $apply!(cache_max_size);
        $apply!(no_watch);
        $apply!(data_dir);
        $apply!(metrics);
        $apply!(log_format);
        $apply!(drain_timeout);
        $apply!(reuse_port);
        $apply!(user);
    };
}

/// `service` with the host-wide settings of `host`: a reload applies a
/// file's service keys, while its host-wide keys wait for the next start.
pub fn with_host_settings(service: &Config, host: &Config) -> Config {
    let mut out = service.clone();
    macro_rules! copy {
        ($f:ident) => {
            out.$f = host.$f.clone();
        };
    }
    host_fields!(copy);
    out
}

/// Apply the command line's host-wide flags over the file's (the command
/// line wins, as for `--cache-dir` given by a service manager); a
/// per-service flag on the command line beside `--config` is an error,
/// since it would be unclear which service it is for.
pub fn with_command_line(mut file: ServicesFile, cli: &Config) -> anyhow::Result<ServicesFile> {
    let default = Config::try_parse_from(["host", "--config", "-"]).expect("the defaults parse");
    let mut rest = cli.clone();
    rest.config = default.config.clone();
    macro_rules! reset {
        ($f:ident) => {
            rest.$f = default.$f.clone();
        };
    }
    host_fields!(reset);
    if rest != default {
        anyhow::bail!(
            "with --config, a service's flags (--listen, --timeout, ...) go in the services file {}; \
             only host-wide flags ({}) may be given beside it",
            file.path.display(),
            HOST_KEYS.iter().map(|k| format!("--{k}")).collect::<Vec<_>>().join(", ")
        );
    }
    for config in std::iter::once(&mut file.host).chain(file.services.iter_mut()) {
        macro_rules! overlay {
            ($f:ident) => {
                if cli.$f != default.$f {
                    config.$f = cli.$f.clone();
                }
            };
        }
        host_fields!(overlay);
    }
    Ok(file)
}

/// Every flag a service's table may use.
fn service_keys() -> Vec<String> {
    Config::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !NOT_KEYS.contains(l) && !HOST_KEYS.contains(l))
        .map(str::to_string)
        .collect()
}

/// Turn `key = value` into the flag(s) it stands for.
fn push_flag(
    args: &mut Vec<(String, Range<usize>)>,
    key: &str,
    value: &Spanned<toml::Value>,
    dir: &Path,
) -> Result<(), String> {
    use toml::Value;
    let span = value.span();
    let flag = format!("--{key}");
    let scalar = |v: &Value| -> Result<String, String> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Integer(i) => Ok(i.to_string()),
            Value::Float(f) => Ok(f.to_string()),
            other => Err(format!("`{key}`: expected a string or a number, found {}", other.type_str())),
        }
    };
    match value.get_ref() {
        Value::Boolean(true) => args.push((flag, span)),
        Value::Boolean(false) => {}
        Value::Array(items) => {
            for item in items {
                args.push((flag.clone(), span.clone()));
                args.push((scalar(item)?, span.clone()));
            }
        }
        Value::Table(vars) if key == "var" => {
            for (k, v) in vars {
                args.push((flag.clone(), span.clone()));
                args.push((format!("{k}={}", scalar(v)?), span.clone()));
            }
        }
        // Paths relative to the services file, like `plugin`.
        Value::Table(files) if key == "var-file" => {
            for (k, v) in files {
                args.push((flag.clone(), span.clone()));
                args.push((format!("{k}={}", dir.join(scalar(v)?).display()), span.clone()));
            }
        }
        v => {
            let mut s = scalar(v)?;
            if matches!(key, "plugin" | "cache-dir" | "data-dir") {
                s = dir.join(&s).to_string_lossy().into_owned();
            }
            args.push((flag, span));
            args.push((s, value.span()));
        }
    }
    Ok(())
}

/// Parse host-wide then service flags as the command line would; an error
/// points at the key whose flag clap named.
fn parse_flags(
    host: &[(String, Range<usize>)],
    service: &[(String, Range<usize>)],
    at: impl Fn(Range<usize>, String) -> anyhow::Error,
) -> anyhow::Result<Config> {
    let all: Vec<&(String, Range<usize>)> = host.iter().chain(service).collect();
    let mut argv = vec!["host".to_string()];
    if !service.iter().any(|(a, _)| a == "--plugin") {
        // The host-wide part alone: any plugin path parses.
        argv.extend(["--plugin".to_string(), "-".to_string()]);
    }
    argv.extend(all.iter().map(|(a, _)| a.clone()));
    Config::try_parse_from(&argv).map_err(|e| {
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
        // The flag clap complains about, e.g. "--timeout <DURATION>".
        let span = all
            .iter()
            .find(|(a, _)| a.starts_with("--") && first.contains(&format!("'{a}")))
            .or_else(|| all.iter().find(|(a, _)| a.starts_with("--") && first.contains(a.as_str())))
            .map(|(_, s)| s.clone())
            .unwrap_or(0..0);
        at(span, first.replace("'--", "'"))
    })
}

/// 1-based line and column of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in(dir: &Path, text: &str) -> anyhow::Result<ServicesFile> {
        parse(&dir.join("host.toml"), text)
    }

    fn dir_with_plugins() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.wasm", "b.wasm"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        dir
    }

    #[test]
    fn services_get_flags_defaults_and_host_settings() {
        let dir = dir_with_plugins();
        let file = parse_in(
            dir.path(),
            r#"
workers = 3
metrics = "127.0.0.1:9090"

[[service]]
name = "one"
plugin = "a.wasm"
udp = ["127.0.0.1:7001"]
timeout = "2s"
vars = { greeting = "hi", n = 3 }
var-files = { zone = "zones/example.zone", abs = "/etc/abs.txt" }
kv-buckets = ["x", "y"]

[[service]]
plugin = "b.wasm"
tcp = ["127.0.0.1:7002"]
framing = "u32"
"#,
        )
        .unwrap();
        assert_eq!(file.services.len(), 2);
        let (one, two) = (&file.services[0], &file.services[1]);
        assert_eq!(one.workers, Some(3));
        assert_eq!(one.metrics, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(one.timeout, std::time::Duration::from_secs(2));
        assert_eq!(one.vars(), [("greeting".into(), "hi".into()), ("n".into(), "3".into())]);
        assert_eq!(one.kv_buckets(), ["x", "y"]);
        // Relative to the services file, like `plugin`.
        assert_eq!(
            one.var_files(),
            [("abs".into(), "/etc/abs.txt".into()), ("zone".into(), dir.path().join("zones/example.zone"))]
        );
        assert_eq!(one.plugin.as_deref(), Some(dir.path().join("a.wasm").as_path()));
        assert_eq!(two.timeout, std::time::Duration::from_millis(500), "the command line's default");
        assert_eq!(crate::service::service_name(two).unwrap(), "b");
        assert_eq!(file.host.workers, Some(3));
    }

    #[test]
    fn errors_name_the_line_and_column() {
        let dir = dir_with_plugins();
        let cases = [
            ("bogus = 1\n[[service]]\nplugin = \"a.wasm\"\n", "host.toml:1:1: unknown key `bogus`"),
            ("[[service]]\nplugin = \"a.wasm\"\nworkers = 2\n", "host.toml:3:1: `workers` is host-wide"),
            ("[[service]]\nplugin = \"a.wasm\"\ntimeout = \"soon\"\n", "host.toml:3:11:"),
            ("[[service]]\nplugin = \"a.wasm\"\nlisten = [\"7000\"]\n", "host.toml:3:10:"),
            ("[[service]]\nplugin = \"missing.wasm\"\n", "host.toml:2:10: plugin "),
            ("[[service]]\nplugin = \"a.wasm\"\nflavour = 1\n", "host.toml:3:1: unknown key `flavour`"),
            ("[[service]]\nplugin = \"a.wasm\"\ntimeout = \n", "host.toml:3:"),
            (
                "[[service]]\nplugin = \"a.wasm\"\nudp = [\"127.0.0.1:7001\"]\n[[service]]\nplugin = \"b.wasm\"\nudp = [\"127.0.0.1:7001\"]\n",
                "services a and b both serve udp 127.0.0.1:7001",
            ),
            (
                "[[service]]\nplugin = \"a.wasm\"\n[[service]]\nname = \"a\"\nplugin = \"b.wasm\"\n",
                "two services named a",
            ),
            ("workers = 2\n", "no [[service]]"),
            (
                "[[service]]\nplugin = \"a.wasm\"\nmax-instances = 6000\nudp = [\"127.0.0.1:0\"]\n[[service]]\nplugin = \"b.wasm\"\nmax-instances = 6000\nudp = [\"127.0.0.1:0\"]\n",
                "max-instances add up to 12000, over 10800",
            ),
            (
                "metrics = \"127.0.0.1:7005\"\n[[service]]\nplugin = \"a.wasm\"\ntcp = [\"127.0.0.1:7005\"]\n",
                "host.toml:2:1: --metrics 127.0.0.1:7005 is also a TCP address the service serves",
            ),
            ("[[service]]\nname = \"x\"\n", "without `plugin`"),
        ];
        for (text, want) in cases {
            let err = parse_in(dir.path(), text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
