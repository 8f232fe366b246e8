//! Configuration helpers shared by the services' configuration sections.

/// Serde support for human-readable durations (`humantime`): `#[serde(with = "duration")]`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as `nems config` prints it, in the largest unit that divides it exactly:
    /// `"90days"`, `"36h"`, `"5m"`, `"90s"`, `"1500ms"` (read back by [`deserialize`]).
    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*value))
    }

    /// See [`serialize`].
    pub fn format(value: Duration) -> String {
        let ms = value.as_millis();
        if !value.subsec_nanos().is_multiple_of(1_000_000) {
            return format!("{}ns", value.as_nanos());
        }
        for (unit, size) in [
            ("days", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms >= size && ms.is_multiple_of(size) {
                return format!("{}{unit}", ms / size);
            }
        }
        format!("{ms}ms")
    }

    /// Deserializes `"500ms"`, `"90s"`, `"5m"`, `"3days"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}); write e.g. 500ms, 30s, 5m, 12h, 3days"
            ))
        })
    }
}

#[cfg(test)]
mod duration_tests {
    use std::time::Duration;

    #[test]
    fn durations_print_in_their_largest_exact_unit_and_read_back() {
        for (value, text) in [
            (Duration::from_secs(90 * 86_400), "90days"),
            (Duration::from_secs(36 * 3600), "36h"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::ZERO, "0ms"),
            (Duration::from_nanos(1_500), "1500ns"),
        ] {
            assert_eq!(super::duration::format(value), text);
            assert_eq!(humantime::parse_duration(text).unwrap(), value, "{text}");
        }
    }
}

/// Serializes a secret as whether it is set (`"set"` or `"not set"`), never its value: for
/// `nems config`, which prints the effective configuration.
pub mod secret {
    use serde::Serializer;

    /// A secret string: empty is not set.
    pub fn serialize<S: Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if value.is_empty() { "not set" } else { "set" })
    }

    /// An optional secret string.
    pub fn optional<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        serialize(value.as_deref().unwrap_or_default(), s)
    }
}

/// Describes a TOML error in `text` without quoting the document.
///
/// The `Display` of `toml::de::Error` prints the offending source line, so a typo such as
/// `pasword = "hunter2"` or an unquoted `password = hunter2` would put the secret on
/// stderr. This text is built from the error's message, the key it concerns and the line
/// and column instead. The message itself may quote a value that failed to deserialize
/// (`` invalid type: integer `1234` ``); for keys that hold secrets such quotes are blanked.
pub fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim();
    let keys = toml_keys(error);
    let key = keys.clone().or_else(|| {
        error
            .span()
            .and_then(|span| key_on_line_of(text, span.start))
    });
    let message = match &keys {
        Some(path) if is_secret_key(path) => blank_quotes(message),
        _ => message.to_string(),
    };
    let mut context = Vec::new();
    if let Some(key) = key {
        context.push(format!("in `{key}`"));
    }
    if let Some(span) = error.span() {
        let (line, column) = position(text, span.start);
        context.push(format!("line {line}, column {column}"));
    }
    if context.is_empty() {
        message
    } else {
        format!("{message} ({})", context.join(", "))
    }
}

/// The key path toml recorded for a value error (`core.lease_timeout`), if any. Without its
/// input the error's `Display` is the message plus ``in `a.b` `` and never a source line.
fn toml_keys(error: &toml::de::Error) -> Option<String> {
    let mut bare = error.clone();
    bare.set_input(None);
    let shown = bare.to_string();
    let rest = shown.trim().strip_prefix(error.message().trim())?.trim();
    let path = rest.strip_prefix("in `")?.strip_suffix('`')?;
    (!path.is_empty()).then(|| path.to_string())
}

/// The key assigned on the line holding byte `at` (`name = …`), prefixed with the table
/// header above it; only bare or dotted keys, so that no other text of the line is shown.
fn key_on_line_of(text: &str, at: usize) -> Option<String> {
    let at = floor_char_boundary(text, at);
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = bare_key(key)?;
    let table = text[..line_start].lines().rev().find_map(|l| {
        let header = l.trim().strip_prefix('[')?;
        let header = header.strip_prefix('[').unwrap_or(header);
        Some(header.split(']').next().and_then(bare_key))
    });
    Some(match table.flatten() {
        Some(table) => format!("{table}.{key}"),
        None => key,
    })
}

fn bare_key(s: &str) -> Option<String> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b' '));
    ok.then(|| s.split('.').map(str::trim).collect::<Vec<_>>().join("."))
}

fn is_secret_key(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path).to_ascii_lowercase();
    ["password", "secret", "token", "shared_key", "private_key"]
        .iter()
        .any(|word| last.contains(word))
}

/// `message` with every `` `quoted` `` and `"quoted"` part replaced.
fn blank_quotes(message: &str) -> String {
    let blank = |text: &str, quote: char| -> String {
        text.split(quote)
            .enumerate()
            .map(|(i, part)| {
                if i % 2 == 1 {
                    "(value not shown)"
                } else {
                    part
                }
            })
            .collect()
    };
    blank(&blank(message, '`'), '"')
}

/// 1-based line and column (in characters) of byte `at`.
fn position(text: &str, at: usize) -> (usize, usize) {
    let at = floor_char_boundary(text, at);
    let before = &text[..at];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only deserialized")]
    struct Mesh {
        #[serde(default)]
        mailbox: String,
        #[serde(default)]
        password: String,
        #[serde(default)]
        retries: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only deserialized")]
    struct File {
        #[serde(default)]
        name: String,
        mesh: Option<Mesh>,
    }

    fn describe(text: &str) -> String {
        let error = toml::from_str::<File>(text).expect_err("refused");
        describe_toml_error(text, &error)
    }

    #[test]
    fn errors_name_the_key_and_position_but_never_quote_the_document() {
        for (text, needles) in [
            // A misspelt secret key: the unknown key is named, its value is not shown.
            (
                "name = \"x\"\n[mesh]\npasword = \"hunter2\"\n",
                &["unknown field `pasword`", "in `mesh`", "line 3, column 1"][..],
            ),
            // An unquoted secret: a syntax error naming the key it belongs to.
            (
                "[mesh]\nmailbox = \"MB\"\npassword = hunter2\n",
                &["in `mesh.password`", "line 3, column 12"][..],
            ),
            // A secret of the wrong type: the value serde quotes is blanked.
            (
                "[mesh]\npassword = 20252025\n",
                &["in `mesh.password`", "(value not shown)", "line 2"][..],
            ),
            (
                "[mesh]\npassword = 2025.2025\n",
                &["in `mesh.password`", "(value not shown)", "line 2"][..],
            ),
            // Other values stay quoted, so the error says what was wrong.
            (
                "[mesh]\nretries = \"many\"\n",
                &["\"many\"", "in `mesh.retries`", "line 2, column 11"][..],
            ),
            (
                "colour = 1\n",
                &["unknown field `colour`", "line 1, column 1"][..],
            ),
        ] {
            let described = describe(text);
            for needle in needles {
                assert!(described.contains(needle), "{described:?} lacks {needle:?}");
            }
            for secret in ["hunter2", "2025"] {
                assert!(!described.contains(secret), "{described:?} shows {secret}");
            }
            assert!(!described.contains('\n'), "{described:?}");
        }
    }

    #[test]
    fn positions_count_characters_from_one() {
        assert_eq!(position("a = 1\nbé = x\n", 11), (2, 5));
        assert_eq!(position("", 3), (1, 1));
        assert_eq!(
            blank_quotes("a `x` b \"y\""),
            "a (value not shown) b (value not shown)"
        );
        assert!(is_secret_key("mesh_adapter.mesh.shared_key"));
        assert!(is_secret_key("core.pds.bearer_token"));
        assert!(!is_secret_key("mesh_adapter.mesh"));
    }
}
