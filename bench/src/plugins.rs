//! The repository's plugins, as far as the benchmark needs to know them: the
//! language each is written in (a start-up table is read per language) and
//! the exact reply each gives (a reload is only seen in the replies, so the
//! prober must tell one version's answer from the other's byte for byte).

use std::path::Path;

/// A plugin's file stem, e.g. `json-summary` for `target/plugins/json-summary.wasm`.
pub fn name(path: &Path) -> String {
    path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
}

/// The language a plugin of this repository is written in, from its name;
/// `?` for a plugin the benchmark does not know.
pub fn language(name: &str) -> &'static str {
    match name {
        "echo" | "upper" | "hello" | "hostile" => "Rust",
        "json-summary" | "echo-py" => "Python",
        "reverse" | "echo-js" => "JavaScript",
        "rot13" => "C",
        _ => "?",
    }
}

/// What a plugin replies, for the plugins a reload swaps between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `echo`: the payload.
    Echo,
    /// `upper`: the payload in ASCII upper case.
    Upper,
    /// `reverse`: the payload's bytes in reverse order.
    Reverse,
    /// `json-summary`, for a payload that is a JSON object with one key
    /// free of quotes, backslashes and non-ASCII: the summary it documents
    /// as byte-for-byte predictable, `{"type":"object","keys":[KEY],"bytes":N}`.
    JsonSummary,
}

impl Answer {
    /// The answer of the plugin named `name`, if the benchmark knows it.
    pub fn of(name: &str) -> Option<Self> {
        match name {
            "echo" => Some(Answer::Echo),
            "upper" => Some(Answer::Upper),
            "reverse" => Some(Answer::Reverse),
            "json-summary" => Some(Answer::JsonSummary),
            _ => None,
        }
    }

    /// The reply to `payload`; `None` where this plugin's reply is not
    /// predicted here (a `JsonSummary` payload that is not a one-key object
    /// as described above).
    pub fn reply(self, payload: &[u8]) -> Option<Vec<u8>> {
        match self {
            Answer::Echo => Some(payload.to_vec()),
            Answer::Upper => Some(payload.to_ascii_uppercase()),
            Answer::Reverse => Some(payload.iter().rev().copied().collect()),
            Answer::JsonSummary => {
                let key = one_key(payload)?;
                Some(format!(r#"{{"type":"object","keys":["{key}"],"bytes":{}}}"#, payload.len()).into_bytes())
            }
        }
    }
}

/// The key of `{"KEY":"VALUE"}` when both are plain printable ASCII.
fn one_key(payload: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(payload).ok()?;
    let inner = text.strip_prefix("{\"")?.strip_suffix("\"}")?;
    let (key, value) = inner.split_once("\":\"")?;
    let plain = |s: &str| s.bytes().all(|b| b == b' ' || (b.is_ascii_graphic() && b != b'"' && b != b'\\'));
    (plain(key) && plain(value)).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_what_the_plugins_send() {
        let p = br#"{"seq00000042":"bench reload"}"#;
        assert_eq!(Answer::Echo.reply(p).unwrap(), p);
        assert_eq!(Answer::Upper.reply(p).unwrap(), br#"{"SEQ00000042":"BENCH RELOAD"}"#);
        assert_eq!(Answer::Reverse.reply(p).unwrap(), br#"}"daoler hcneb":"24000000qes"{"#);
        // As served by json-summary.wasm (checked by hand against the host).
        let summary = br#"{"type":"object","keys":["seq00000042"],"bytes":30}"#;
        assert_eq!(Answer::JsonSummary.reply(p).unwrap(), summary);
    }

    #[test]
    fn json_summaries_are_only_predicted_for_plain_one_key_objects() {
        assert_eq!(Answer::JsonSummary.reply(br#"{"a":"b","c":"d"}"#), None);
        assert_eq!(Answer::JsonSummary.reply(br#"{"a\"":"b"}"#), None);
        assert_eq!(Answer::JsonSummary.reply(b"[1]"), None);
    }

    #[test]
    fn languages_and_names() {
        assert_eq!(name(Path::new("target/plugins/json-summary.wasm")), "json-summary");
        assert_eq!(language("rot13"), "C");
        assert_eq!(language("mystery"), "?");
        assert_eq!(Answer::of("rot13"), None);
    }
}
