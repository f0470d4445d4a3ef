//! Redis keys are bytes; `wasi:keyvalue` keys are strings. A key is stored
//! as it is when it is UTF-8 and does not start with [`MARK`]; any other
//! key is stored as `MARK` followed by the key with every byte that is not
//! part of valid UTF-8, and every `%`, written `%XX`. The mapping is one to
//! one, so `KEYS` gives back the bytes that were set, and the keys of
//! ordinary clients are stored unchanged (another plugin of the service, or
//! `redis-cli` on the Redis backend, sees `user:1` as `user:1`).
//!
//! Also here: Redis's glob patterns, for `KEYS` and `CONFIG GET`.

/// The start of an escaped key.
pub const MARK: &str = "%b:";

/// The store's string for the Redis key `key`.
pub fn encode(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if !text.starts_with(MARK) => text.to_string(),
        _ => {
            let mut out = String::from(MARK);
            for chunk in key.utf8_chunks() {
                for c in chunk.valid().chars() {
                    if c == '%' {
                        out.push_str("%25");
                    } else {
                        out.push(c);
                    }
                }
                for b in chunk.invalid() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out
        }
    }
}

/// The Redis key of the store's string `stored` (the inverse of
/// [`encode`]); a string `encode` cannot have made is returned as it is.
pub fn decode(stored: &str) -> Vec<u8> {
    let Some(rest) = stored.strip_prefix(MARK) else { return stored.as_bytes().to_vec() };
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// Whether `text` matches the glob `pattern` as Redis's `stringmatchlen`
/// matches: `*` any bytes, `?` one byte, `[abc]`, `[^abc]`, `[a-z]`, and
/// `\x` for a literal `x`, with its corner cases: a class left open runs
/// to the end of the pattern (`[a` is `a`), and an empty `text` matches
/// only an empty pattern (`KEYS *` is the exception, see the command).
/// Linear in practice: a `*` is retried at most once per byte of `text`
/// (the classic backtrack to the last star), never recursively.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    if text.is_empty() {
        return pattern.is_empty();
    }
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    let (matched, next) = class(pattern, p, text[t]);
                    if matched {
                        p = next;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The class `[...]` starting at `pattern[open]`, tested against `c`:
/// whether it matched and where the pattern goes on. In the order
/// `stringmatchlen` tests them: `\x` (not as the last byte), `]`, the end
/// of the pattern (the class ends there), `a-z` (any three bytes, so `[a-]`
/// is the range `a` to `]`, left open), a literal byte.
fn class(pattern: &[u8], open: usize, c: u8) -> (bool, usize) {
    let end = pattern.len();
    let mut i = open + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    loop {
        let left = end.saturating_sub(i);
        if left >= 2 && pattern[i] == b'\\' {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if left == 0 {
            return (matched != negate, end);
        } else if pattern[i] == b']' {
            return (matched != negate, i + 1);
        } else if left >= 3 && pattern[i + 1] == b'-' {
            let (lo, hi) = (pattern[i].min(pattern[i + 2]), pattern[i].max(pattern[i + 2]));
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= pattern[i] == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_round_trips_and_plain_keys_are_stored_unchanged() {
        let all: Vec<u8> = (0..=255).collect();
        let keys: Vec<Vec<u8>> = vec![
            b"user:1".to_vec(),
            b"50%".to_vec(),
            b"%b:".to_vec(),
            b"%b:%25".to_vec(),
            "caf\u{e9}".as_bytes().to_vec(),
            b"\xff\xfe%\r\n".to_vec(),
            all.clone(),
            Vec::new(),
        ];
        for key in &keys {
            assert_eq!(&decode(&encode(key)), key, "{key:?}");
        }
        assert_eq!(encode(b"user:1"), "user:1");
        assert_eq!(encode(b"50%"), "50%");
        assert_eq!(encode(b"\xffa%"), "%b:%FFa%25");
        assert_eq!(encode(b"%b:x"), "%b:%25b:x");
        let encoded: std::collections::HashSet<String> = keys.iter().map(|k| encode(k)).collect();
        assert_eq!(encoded.len(), keys.len());
    }

    #[test]
    fn glob_matches_as_redis_does() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "anything", true),
            ("user:*", "user:1", true),
            ("user:*", "users", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("*a*b*c", "xxaxxbxxc", true),
            ("*a*b*c", "xxaxxbxxcx", false),
            ("k*", "k", true),
            // The corner cases, as redis-server 7.0.15 answers KEYS.
            ("[a", "a", true),
            ("[a", "[", false),
            ("a[", "a[", false),
            ("[", "[", false),
            ("[^", "x", true),
            ("[\\", "\\", true),
            ("[a-", "a", true),
            ("[a-", "-", true),
            ("a[-", "a-", true),
            ("[a-]", "a", true),
            ("[a-]", "^", true),
            ("[a-]", "]", true),
            ("[]a]", "a", false),
            ("[\\]", "]", true),
            ("[\\]", "\\", false),
            ("\\", "\\", true),
            ("**", "", false),
            ("*", "", false),
            ("", "", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(glob(pattern.as_bytes(), text.as_bytes()), *want, "{pattern} ~ {text}");
        }
        // Many stars against a long miss: no exponential backtracking.
        let pattern = "*a".repeat(50) + "b";
        assert!(!glob(pattern.as_bytes(), "a".repeat(10_000).as_bytes()));
    }
}
