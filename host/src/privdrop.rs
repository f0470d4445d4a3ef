//! Running unprivileged after binding (`--user USER[:GROUP]`).
//!
//! A DNS service must bind port 53, which takes root (or
//! `CAP_NET_BIND_SERVICE`); nothing after that needs it. With `--user` the
//! host binds every address as root, then sets its supplementary groups
//! (the user's, as `initgroups` lists them), its group and its user, and
//! checks that no thread kept root and that root cannot be taken back. Only
//! then does it open the key-value store and the compile cache and
//! instantiate plugins, so every file it creates belongs to the user and a
//! directory the user cannot write is reported at start, not at the first
//! request.
//!
//! What the user must be able to read or write: the plugin file (read; a
//! reload reads it again), `--data-dir` (write) and `--cache-dir` (write,
//! and owned by the user: a compile cache owned by anyone else is not used).
//! The default directories are under `$HOME`, which stays root's: give
//! `--data-dir` and `--cache-dir` explicitly.

use std::path::Path;

use anyhow::{Context as _, bail};
use nix::unistd::{Gid, Group, Uid, User};

use crate::config::Config;

/// Who to run as, resolved from `USER[:GROUP]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id.
    pub uid: Uid,
    /// The group id: GROUP, else the user's primary group.
    pub gid: Gid,
    /// The user's name, if it has a passwd entry (for its supplementary
    /// groups).
    pub name: Option<String>,
}

impl Identity {
    /// Resolve `USER[:GROUP]` (names or numbers) with the system's user and
    /// group databases.
    pub fn resolve(spec: &str) -> anyhow::Result<Identity> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if user.is_empty() || group.is_some_and(str::is_empty) {
            bail!("--user {spec}: expected USER or USER:GROUP, e.g. --user nobody or --user dns:dns");
        }
        let lookup = |e: nix::Error| anyhow::anyhow!("--user {spec}: cannot look up {user}: {e}");
        let (uid, entry) = match user.parse::<u32>() {
            Ok(n) => (Uid::from_raw(n), User::from_uid(Uid::from_raw(n)).map_err(lookup)?),
            Err(_) => {
                let u =
                    User::from_name(user).map_err(lookup)?.with_context(|| format!("--user {spec}: no user {user}"))?;
                (u.uid, Some(u))
            }
        };
        let gid = match group {
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => Gid::from_raw(gid),
                Err(_) => {
                    Group::from_name(g)
                        .map_err(|e| anyhow::anyhow!("--user {spec}: cannot look up group {g}: {e}"))?
                        .with_context(|| format!("--user {spec}: no group {g}"))?
                        .gid
                }
            },
            None => match &entry {
                Some(u) => u.gid,
                None => bail!("--user {spec}: uid {uid} has no passwd entry, so no primary group: give USER:GROUP"),
            },
        };
        Ok(Identity { uid, gid, name: entry.map(|u| u.name) })
    }
}

/// `--user`: become that user now, after every address is bound and before
/// anything else is opened. Does nothing without `--user`.
pub fn drop_after_bind(config: &Config) -> anyhow::Result<()> {
    let Some(spec) = &config.user else { return Ok(()) };
    let target = Identity::resolve(spec)?;
    let changed = drop_to(spec, &target)?;
    tracing::info!(
        "{} user {} (uid {}, gid {}) (--user)",
        if changed { "running from now on as" } else { "already running as" },
        target.name.as_deref().unwrap_or("-"),
        target.uid,
        target.gid
    );
    if let Some(dir) = config.cache_dir() {
        check_cache_dir(&dir, spec);
    }
    Ok(())
}

/// Set the process's groups, group and user to `target`, and check.
/// `Ok(false)` if it already ran as `target` (nothing to do).
pub fn drop_to(spec: &str, target: &Identity) -> anyhow::Result<bool> {
    use nix::unistd::{getegid, geteuid, getgid, getuid};
    let (uid, euid) = (getuid(), geteuid());
    if uid == target.uid && euid == target.uid && getgid() == target.gid && getegid() == target.gid {
        return Ok(false);
    }
    if !euid.is_root() {
        bail!(
            "--user {spec}: switching user takes root, and the host runs as uid {euid} (start it as root, or leave --user out)"
        );
    }
    let fail = |what: &str, e: nix::Error| anyhow::anyhow!("--user {spec}: cannot {what}: {e}");
    // The supplementary groups first: root's (0 among them) must not stay.
    match &target.name {
        Some(name) => {
            let name = std::ffi::CString::new(name.as_str()).map_err(|_| anyhow::anyhow!("--user {spec}: bad name"))?;
            nix::unistd::initgroups(&name, target.gid).map_err(|e| fail("set the supplementary groups", e))?;
        }
        None => nix::unistd::setgroups(&[target.gid]).map_err(|e| fail("set the supplementary groups", e))?,
    }
    // Group before user: once the user is not root, the group cannot change.
    // As root, setgid and setuid set the real, effective and saved ids, and
    // glibc applies them to every thread of the process.
    nix::unistd::setgid(target.gid).map_err(|e| fail("set the group", e))?;
    nix::unistd::setuid(target.uid).map_err(|e| fail("set the user", e))?;
    verify(spec, target).map(|()| true)
}

/// Every thread runs as `target`, and root cannot be taken back.
fn verify(spec: &str, target: &Identity) -> anyhow::Result<()> {
    let (ruid, euid, suid) = nix::unistd::getresuid().map(|r| (r.real, r.effective, r.saved))?;
    let (rgid, egid, sgid) = nix::unistd::getresgid().map(|r| (r.real, r.effective, r.saved))?;
    if [ruid, euid, suid] != [target.uid; 3] || [rgid, egid, sgid] != [target.gid; 3] {
        bail!("--user {spec}: the ids did not change as asked (uids {ruid} {euid} {suid}, gids {rgid} {egid} {sgid})");
    }
    if !target.uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        bail!("--user {spec}: root could be taken back after the switch; refusing to run");
    }
    // glibc changes every thread's ids; check it did (Linux keeps ids per
    // thread, and a thread left as root would undo the point).
    let want = target.uid.to_string();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
            let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
            if uids.split_whitespace().any(|id| id != want) {
                bail!(
                    "--user {spec}: thread {} still runs with uids {}",
                    task.file_name().to_string_lossy(),
                    uids.trim()
                );
            }
        }
    }
    Ok(())
}

/// Warn if the compile cache will not work as the new user: it is then not
/// used, and every start compiles every plugin (and `host rollback` has no
/// history).
fn check_cache_dir(dir: &Path, spec: &str) {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let usable = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::metadata(dir))
        .map(|m| m.uid() == nix::unistd::geteuid().as_raw());
    match usable {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "compile cache {} is owned by another user than --user {spec}: it is not used (give --cache-dir a \
             directory the user owns)",
            dir.display()
        ),
        Err(e) => tracing::warn!(
            "compile cache {}: {e} as --user {spec}: it is not used (give --cache-dir a directory the user owns)",
            dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve_and_bad_ones_are_one_line() {
        let root = Identity::resolve("root").unwrap();
        assert_eq!((root.uid.as_raw(), root.gid.as_raw(), root.name.as_deref()), (0, 0, Some("root")));
        assert_eq!(Identity::resolve("0:0").unwrap(), root);
        let numeric = Identity::resolve("4242:4243").unwrap();
        assert_eq!((numeric.uid.as_raw(), numeric.gid.as_raw(), numeric.name), (4242, 4243, None));
        for (spec, want) in [
            ("no-such-user-here", "--user no-such-user-here: no user no-such-user-here"),
            ("root:no-such-group", "no group no-such-group"),
            ("4242", "uid 4242 has no passwd entry, so no primary group: give USER:GROUP"),
            ("root:", "expected USER or USER:GROUP"),
            (":root", "expected USER or USER:GROUP"),
        ] {
            let e = Identity::resolve(spec).unwrap_err().to_string();
            assert!(e.contains(want) && !e.contains('\n'), "{spec}: {e}");
        }
    }

    #[test]
    fn already_that_user_is_a_no_op() {
        let me = Identity { uid: nix::unistd::getuid(), gid: nix::unistd::getgid(), name: None };
        assert!(!drop_to("me", &me).unwrap());
        assert_eq!(nix::unistd::getuid(), me.uid);
    }
}
