//! Deployment files: the `Dockerfile` and the Kubernetes manifests under
//! `deploy/` use only flags, paths and ports the host has. No image can be
//! built and no cluster reached from here: these checks, and the reload
//! path run locally in [`configmap`], are what is verified of them.

mod configmap;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::{CommandFactory as _, Parser as _};
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::*;

/// The admin endpoint's probe paths, as the README documents them.
const HEALTHZ: &str = "/healthz";
const READYZ: &str = "/readyz";

/// Every YAML document under `deploy/`, with its file.
fn manifests() -> Vec<(PathBuf, Yaml)> {
    let mut files = Vec::new();
    let mut dirs = vec![root().join("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no YAML under deploy/");
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        docs.extend(parsed.into_iter().filter(|d| !d.is_null()).map(|d| (file.clone(), d)));
    }
    docs
}

/// The one document of `kind`.
fn one<'a>(docs: &'a [(PathBuf, Yaml)], kind: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = docs.iter().filter(|(_, d)| d["kind"].as_str() == Some(kind)).map(|(_, d)| d).collect();
    assert_eq!(found.len(), 1, "expected one {kind} under deploy/");
    found[0]
}

fn text<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str().unwrap_or_else(|| panic!("{what} is not a string: {y:?}"))
}

fn list<'a>(y: &'a Yaml, what: &str) -> &'a [Yaml] {
    y.as_vec().unwrap_or_else(|| panic!("{what} is not a list: {y:?}"))
}

/// Every label of `selector` is on `labels`.
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    let selector = selector.as_hash().filter(|h| !h.is_empty()).expect("an empty or missing selector");
    selector.iter().all(|(k, v)| labels[text(k, "a label")] == *v)
}

/// The flags `host --help` lists.
fn help_flags() -> BTreeSet<String> {
    let (code, out) = run_host_stdout(&["--help"]);
    assert_eq!(code, Some(0), "host --help failed");
    out.lines()
        .filter_map(|line| {
            // Option headings (`  -h, --help`, `      --plugin <PATH>`);
            // their descriptions are indented deeper and also name flags.
            let trimmed = line.trim_start();
            if line.len() - trimmed.len() > 6 || !trimmed.starts_with('-') {
                return None;
            }
            trimmed.split([' ', ',', '=']).find(|w| w.starts_with("--")).map(str::to_string)
        })
        .collect()
}

fn run_host_stdout(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(host_bin()).args(args).output().expect("run host");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Check that every flag in `args` is one `host --help` lists, and parse
/// them as the host does (values included).
fn host_args(args: &[String], what: &str) -> host::Config {
    let known = help_flags();
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        let name = flag.split('=').next().unwrap_or(flag);
        assert!(known.contains(name), "{what}: {name} is not a flag of host --help");
    }
    host::Config::try_parse_from(std::iter::once("host").chain(args.iter().map(String::as_str)))
        .unwrap_or_else(|e| panic!("{what}: host refuses {args:?}: {e}"))
}

/// A services file key as the host flag it stands for: the flag's long
/// name, or its field's (`kv-buckets` for `--kv-bucket`, `vars` for `--var`).
fn flag_for_key(key: &str) -> Option<String> {
    let command = host::Config::command();
    let arg =
        command.get_arguments().find(|a| a.get_long() == Some(key) || a.get_id().as_str().replace('_', "-") == key)?;
    arg.get_long().map(|long| format!("--{long}"))
}

/// A services file table as the command-line flags it stands for.
fn table_args(table: &toml::Table, skip: &str, what: &str) -> Vec<String> {
    fn values(flag: &str, value: &toml::Value, what: &str) -> Vec<String> {
        match value {
            toml::Value::String(s) => vec![flag.into(), s.clone()],
            toml::Value::Integer(n) => vec![flag.into(), n.to_string()],
            toml::Value::Boolean(on) => {
                if *on {
                    vec![flag.into()]
                } else {
                    vec![]
                }
            }
            toml::Value::Array(items) => items.iter().flat_map(|v| values(flag, v, what)).collect(),
            // `vars = { greeting = "hello" }`: `--var greeting=hello`.
            toml::Value::Table(t) => t
                .iter()
                .flat_map(|(k, v)| {
                    vec![flag.into(), format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_string))]
                })
                .collect(),
            other => panic!("{what}: {flag} = {other} is not a value the flag takes"),
        }
    }
    let mut args = Vec::new();
    for (key, value) in table.iter().filter(|(k, _)| *k != skip) {
        let flag = flag_for_key(key).unwrap_or_else(|| panic!("{what}: `{key}` is no flag of the host"));
        args.extend(values(&flag, value, what));
    }
    args
}

/// The services file in the ConfigMap, each service as the single-service
/// command line it stands for (host-wide settings included).
fn services(config_map: &Yaml, key: &str) -> Vec<host::Config> {
    let what = format!("ConfigMap data {key}");
    let file: toml::Table = text(&config_map["data"][key], &what).parse().unwrap_or_else(|e| panic!("{what}: {e}"));
    let host_wide = table_args(&file, "service", &what);
    let services = file.get("service").and_then(toml::Value::as_array).expect("no [[service]] in the services file");
    assert!(!services.is_empty(), "{what}: no service");
    services
        .iter()
        .map(|service| {
            let table = service.as_table().expect("a [[service]] table");
            let args: Vec<String> = host_wide.iter().cloned().chain(table_args(table, "", &what)).collect();
            host_args(&args, &what)
        })
        .collect()
}

/// The volume mounted where `path` is (the longest mount path above it):
/// (its mount, its volume, `path` relative to the mount).
fn mount_of<'a>(pod: &'a Yaml, container: &'a Yaml, path: &'a Path) -> (&'a Yaml, &'a Yaml, PathBuf) {
    let mounts = list(&container["volumeMounts"], "volumeMounts");
    let mount = mounts
        .iter()
        .filter(|m| path.starts_with(text(&m["mountPath"], "mountPath")))
        .max_by_key(|m| text(&m["mountPath"], "mountPath").len())
        .unwrap_or_else(|| panic!("nothing is mounted at {} (the root filesystem is read-only)", path.display()));
    let name = &mount["name"];
    let volume = list(&pod["volumes"], "volumes").iter().find(|v| v["name"] == *name).expect("a mount of no volume");
    assert!(mount["subPath"].is_badvalue(), "{name:?} uses subPath: ConfigMap updates would never reach it");
    let rest = path.strip_prefix(text(&mount["mountPath"], "mountPath")).unwrap().to_path_buf();
    (mount, volume, rest)
}

/// The manifests under `deploy/`, and the pod they run.
struct Kube {
    docs: Vec<(PathBuf, Yaml)>,
}

impl Kube {
    fn load() -> Kube {
        Kube { docs: manifests() }
    }

    fn one(&self, kind: &str) -> &Yaml {
        one(&self.docs, kind)
    }

    fn pod(&self) -> &Yaml {
        &self.one("Deployment")["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Yaml {
        let containers = list(&self.pod()["containers"], "containers");
        assert_eq!(containers.len(), 1, "one container per pod");
        &containers[0]
    }

    /// The container's arguments as the host parses them.
    fn cli(&self) -> host::Config {
        let args: Vec<String> =
            list(&self.container()["args"], "args").iter().map(|a| text(a, "arg").to_string()).collect();
        host_args(&args, "the container's args")
    }

    /// The services in the ConfigMap mounted where `--config` points.
    fn services(&self) -> Vec<host::Config> {
        let path = self.cli().config.expect("the container runs --config FILE");
        let (_, volume, key) = mount_of(self.pod(), self.container(), &path);
        let (_, config_map) = self
            .docs
            .iter()
            .find(|(_, d)| {
                d["kind"].as_str() == Some("ConfigMap") && d["metadata"]["name"] == volume["configMap"]["name"]
            })
            .expect("--config is not on a mounted ConfigMap of deploy/");
        services(config_map, key.to_str().unwrap())
    }

    /// The container's ports: (name, number, protocol).
    fn ports(&self) -> Vec<(&str, i64, &str)> {
        list(&self.container()["ports"], "ports")
            .iter()
            .map(|p| {
                let number = p["containerPort"].as_i64().expect("containerPort");
                (text(&p["name"], "port name"), number, p["protocol"].as_str().unwrap_or("TCP"))
            })
            .collect()
    }
}

#[test]
fn every_manifest_parses_and_names_its_kind() {
    let kube = Kube::load();
    for (file, doc) in &kube.docs {
        for field in ["apiVersion", "kind"] {
            assert!(doc[field].as_str().is_some_and(|s| !s.is_empty()), "{}: no {field}", file.display());
        }
        let name = doc["metadata"]["name"].as_str();
        assert!(name.is_some_and(|n| !n.is_empty()), "{}: no metadata.name", file.display());
    }
    // kubectl apply -k: every resource is a file beside the kustomization.
    let kustomization = kube.one("Kustomization");
    let dir = root().join("deploy/kubernetes");
    let listed: Vec<&str> =
        list(&kustomization["resources"], "resources").iter().map(|r| text(r, "resource")).collect();
    for kind in ["Deployment", "Service", "PodDisruptionBudget", "ConfigMap"] {
        let (file, _) = kube.docs.iter().find(|(_, d)| d["kind"].as_str() == Some(kind)).unwrap();
        assert!(listed.iter().any(|r| dir.join(r) == *file), "{kind} is not in kustomization.yaml");
    }
    for resource in listed {
        assert!(dir.join(resource).is_file(), "kustomization.yaml lists {resource}, which is missing");
    }
    let image = text(&kube.container()["image"], "image");
    let image_name = image.split(':').next().unwrap();
    assert!(
        list(&kustomization["images"], "images").iter().any(|i| i["name"].as_str() == Some(image_name)),
        "kustomization.yaml's images: does not name {image_name}"
    );
}

#[test]
fn the_pods_are_selected_and_can_be_drained() {
    let kube = Kube::load();
    let (deployment, pdb) = (kube.one("Deployment"), kube.one("PodDisruptionBudget"));
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (what, selector) in [
        ("Deployment", &deployment["spec"]["selector"]["matchLabels"]),
        ("Service", &kube.one("Service")["spec"]["selector"]),
        ("PodDisruptionBudget", &pdb["spec"]["selector"]["matchLabels"]),
    ] {
        assert!(selects(selector, labels), "the {what} selector does not select the pods");
    }
    let replicas = deployment["spec"]["replicas"].as_i64().expect("replicas");
    assert!(replicas >= 2, "one replica cannot be drained without an outage");
    assert!(pdb["spec"]["minAvailable"].as_i64().is_some_and(|m| m < replicas), "the PDB would block every drain");
}

#[test]
fn the_container_uses_only_flags_and_paths_the_host_has() {
    let kube = Kube::load();
    let (pod, container) = (kube.pod(), kube.container());
    // `services` parses the container's args, then the services file.
    for service in kube.services() {
        // The plugin comes from a mounted ConfigMap directory, never a
        // subPath (checked by `mount_of`).
        let plugin = service.plugin.clone().expect("every service names its plugin");
        let (_, volume, _) = mount_of(pod, container, &plugin);
        assert!(!volume["configMap"].is_badvalue(), "{}: not on a ConfigMap volume", plugin.display());
        // The root filesystem is read-only: the cache and data are volumes.
        for dir in [service.cache_dir.clone(), service.data_dir.clone()] {
            let dir = dir.expect("cache-dir and data-dir are set: the home directory is read-only");
            let (mount, volume, _) = mount_of(pod, container, &dir);
            let writable = mount["readOnly"].as_bool() != Some(true) && !volume["emptyDir"].is_badvalue();
            assert!(writable, "{} is not on a writable emptyDir", dir.display());
        }
        // An emptyDir is mode 0777, which the compile cache refuses: the
        // cache is a directory the host makes inside it.
        let cache = service.cache_dir.clone().unwrap();
        let (_, _, inside) = mount_of(pod, container, &cache);
        assert!(!inside.as_os_str().is_empty(), "cache-dir {} is a volume's mount point", cache.display());
    }
}

#[test]
fn the_ports_are_the_services_addresses() {
    let kube = Kube::load();
    let (services, ports) = (kube.services(), kube.ports());
    let port_named =
        |name: &str| ports.iter().find(|p| p.0 == name).unwrap_or_else(|| panic!("no container port {name}"));
    let metrics = services[0].metrics.expect("the services file sets metrics: the probes need it");
    assert!(metrics.ip().is_unspecified(), "metrics on {metrics}: the kubelet probes the pod's address");
    assert_eq!(port_named("metrics").1, i64::from(metrics.port()), "the metrics port");
    let mut bound = BTreeSet::new();
    for (transport, addr) in services.iter().flat_map(host::Config::bind_list) {
        assert!(addr.ip().is_unspecified(), "{addr}: unreachable through the Service");
        let protocol = match transport {
            host::Transport::Udp => "UDP",
            host::Transport::Tcp => "TCP",
        };
        bound.insert((i64::from(addr.port()), protocol));
    }
    let declared: BTreeSet<(i64, &str)> = ports.iter().filter(|p| p.0 != "metrics").map(|p| (p.1, p.2)).collect();
    assert_eq!(bound, declared, "the services' addresses and the container ports differ");
    let service_ports = list(&kube.one("Service")["spec"]["ports"], "Service ports");
    for p in service_ports {
        let target = port_named(text(&p["targetPort"], "targetPort"));
        let protocol = p["protocol"].as_str().unwrap_or("TCP");
        assert_eq!((p["port"].as_i64(), protocol), (Some(target.1), target.2), "Service port {p:?}");
    }
    assert_eq!(service_ports.len(), ports.len(), "a container port the Service does not expose");
    let both = ports.iter().any(|(_, n, p)| *p == "UDP" && ports.iter().any(|(_, m, q)| m == n && *q == "TCP"));
    assert!(both, "no port serves both UDP and TCP");
    let annotations = &kube.one("Deployment")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some(metrics.port().to_string().as_str()));
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
}

#[test]
fn probes_shutdown_and_privileges_are_as_documented() {
    let kube = Kube::load();
    let (pod, container) = (kube.pod(), kube.container());
    // Probes: the documented paths, on the admin endpoint's port.
    for (probe, path) in [("readinessProbe", READYZ), ("livenessProbe", HEALTHZ), ("startupProbe", HEALTHZ)] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some("metrics"), "{probe}");
    }
    // Shutdown: the preStop pause and the drain fit in the grace period.
    let grace = pod["terminationGracePeriodSeconds"].as_i64().expect("terminationGracePeriodSeconds");
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"].as_i64().expect("a preStop sleep");
    for service in kube.services() {
        let drain = service.drain_timeout.as_secs_f64();
        assert!((pause as f64) + drain < grace as f64, "preStop {pause}s + drain {drain}s >= grace {grace}s");
    }
    // Least privilege, as the image's user.
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(security["capabilities"]["drop"], Yaml::Array(vec![Yaml::String("ALL".into())]));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(pod["securityContext"]["runAsUser"].as_i64(), Some(dockerfile_uid()));
}

/// The Dockerfile's instructions, continuation lines joined, comments left out.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut pending = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()) {
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                let (op, rest) = pending.split_once(' ').unwrap_or((&pending, ""));
                out.push((op.to_uppercase(), rest.trim().to_string()));
                pending.clear();
            }
        }
    }
    out
}

fn dockerfile_last(op: &str) -> String {
    dockerfile().into_iter().rev().find(|(o, _)| o == op).unwrap_or_else(|| panic!("the Dockerfile has no {op}")).1
}

fn dockerfile_uid() -> i64 {
    let user = dockerfile_last("USER");
    user.split(':').next().unwrap().parse().unwrap_or_else(|_| panic!("USER {user}: not numeric"))
}

#[test]
fn the_dockerfile_runs_the_host_with_flags_it_has() {
    let exec_form = |op: &str| -> Vec<String> {
        let value = dockerfile_last(op);
        serde_json::from_str(&value).unwrap_or_else(|e| panic!("{op} {value}: not the exec (JSON) form: {e}"))
    };
    assert_eq!(exec_form("ENTRYPOINT"), ["/usr/local/bin/host"]);
    let cmd = exec_form("CMD");
    let cli = host_args(&cmd, "the Dockerfile's CMD");
    // What the default command binds is exposed.
    let exposed: BTreeSet<String> = dockerfile_last("EXPOSE").split_whitespace().map(str::to_string).collect();
    let mut needed: BTreeSet<String> =
        cli.bind_list().into_iter().map(|(t, a)| format!("{}/{}", a.port(), format!("{t:?}").to_lowercase())).collect();
    needed.extend(cli.metrics.map(|m| format!("{}/tcp", m.port())));
    assert!(needed.is_subset(&exposed), "EXPOSE {exposed:?} misses some of {needed:?}");
    assert!(cli.bind_list().iter().all(|(_, a)| a.ip().is_unspecified()), "the CMD serves on loopback only");
    // The binary links glibc dynamically: the runtime's Debian release must
    // be the builder's.
    let froms: Vec<String> = dockerfile().into_iter().filter(|(o, _)| o == "FROM").map(|(_, v)| v).collect();
    assert_eq!(froms.len(), 2, "a builder and a runtime stage");
    let release = |image: &str| ["bookworm", "debian12", "trixie", "debian13"].iter().position(|r| image.contains(r));
    let (build, run) = (release(&froms[0]).map(|i| i / 2), release(&froms[1]).map(|i| i / 2));
    assert!(build.is_some() && build == run, "builder {} and runtime {} differ in Debian release", froms[0], froms[1]);
    assert_ne!(dockerfile_uid(), 0, "the image runs as root");
}
