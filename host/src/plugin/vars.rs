//! `--var-file KEY=PATH`: `wasi:config` variables whose values are the
//! text of files, read at every load of the plugin (start, reload, `host
//! check`, `host invoke`) so that a SIGHUP picks up an edited file as a new
//! version ([`super::loader::PluginFile::identity`]). The files are small
//! configuration (a DNS zone), so each is bounded and must be UTF-8: a
//! variable is a WIT `string`.

use std::path::{Path, PathBuf};

/// Largest `--var-file`, in bytes.
pub const MAX_VAR_FILE: u64 = 1 << 20;

/// Read every `--var-file` on a blocking thread: at most [`MAX_VAR_FILE`]
/// bytes of UTF-8 text each. The error names the flag, the key and the
/// file.
pub(crate) async fn read_files(files: Vec<(String, PathBuf)>) -> Result<Vec<(String, String)>, String> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    tokio::task::spawn_blocking(move || {
        files
            .into_iter()
            .map(|(key, path)| {
                let what = format!("--var-file {key}={}", path.display());
                read_file(&path).map(|text| (key, text)).map_err(|e| format!("{what}: {e}"))
            })
            .collect()
    })
    .await
    .map_err(|e| e.to_string())?
}

fn read_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it would hold
    // the start, or every later reload, forever); what is not a regular
    // file is then refused.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut bytes = Vec::new();
    file.take(MAX_VAR_FILE + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_VAR_FILE {
        return Err(format!("over the {} limit of a variable's file", bytesize::ByteSize(MAX_VAR_FILE)));
    }
    String::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))
}

/// `vars` (sorted, one value per name) with the values read from files.
pub(crate) fn with_files(vars: &[(String, String)], files: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut all: std::collections::BTreeMap<String, String> = vars.iter().cloned().collect();
    all.extend(files);
    all.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read_and_a_fifo_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("zone.fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert_eq!(read_file(&fifo).unwrap_err(), "not a regular file");
        assert_eq!(read_file(dir.path()).unwrap_err(), "not a regular file");
        assert_eq!(read_file(Path::new("/dev/zero")).unwrap_err(), "not a regular file");
        let file = dir.path().join("zone");
        std::fs::write(&file, "text").unwrap();
        assert_eq!(read_file(&file).unwrap(), "text");
    }

    #[test]
    fn file_values_join_the_vars_sorted() {
        let vars = [("b".to_string(), "1".to_string()), ("d".to_string(), "2".to_string())];
        let files = vec![("c".to_string(), "zone".to_string()), ("a".to_string(), String::new())];
        let all = with_files(&vars, files);
        let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c", "d"]);
    }

    #[test]
    fn a_file_is_bounded_and_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "é\n").unwrap();
        assert_eq!(read_file(&ok).unwrap(), "é\n");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; MAX_VAR_FILE as usize + 1]).unwrap();
        assert_eq!(read_file(&big).unwrap_err(), "over the 1.0 MiB limit of a variable's file");
        std::fs::write(&big, vec![b'a'; MAX_VAR_FILE as usize]).unwrap();
        assert!(read_file(&big).is_ok());
    }
}
