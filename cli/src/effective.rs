//! `nems config`: the effective configuration as TOML that `nems --config` reads back:
//! every key with the value in force, keys that are not set as comments, secrets as
//! `"set"` or `"not set"`, and where it came from (the file, the environment variables).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Value};

use crate::config::{ENV_OVERRIDES, NemsConfig, Source};

/// Renders `config` (read from `file`, then changed by `source`) as TOML.
pub fn render(
    config: &NemsConfig,
    file: Option<&Path>,
    source: &dyn Source,
) -> anyhow::Result<String> {
    let mut out = String::new();
    out.push_str("# nems: the effective configuration (built-in defaults, then the file, then the environment)\n");
    match file {
        Some(path) => {
            let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            let _ = writeln!(out, "# file: {}", shown.display());
        }
        None => out.push_str("# file: none (no --config or NEMS_CONFIG): built-in defaults\n"),
    }
    let overriding: Vec<&str> = ENV_OVERRIDES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| source.get(name).is_some_and(|v| !v.is_empty()))
        .collect();
    if overriding.is_empty() {
        out.push_str("# environment: no NEMS_* setting\n");
    } else {
        let _ = writeln!(out, "# environment: {}", overriding.join(", "));
    }
    out.push_str(
        "# keys that are not set, and secrets (\"(set)\" or \"(not set)\"), are comments\n\n",
    );
    let value = serde_json::to_value(config)?;
    let Value::Object(map) = &value else {
        anyhow::bail!("the configuration did not serialize as a table");
    };
    table(&mut out, "", map);
    out.push_str("\n# Environment variables that override the file:\n");
    for (name, key) in ENV_OVERRIDES {
        let _ = writeln!(out, "#   {name:28} {key}");
    }
    Ok(out)
}

/// The keys whose values are secrets (serialized as `set` / `not set` only).
const SECRET_KEYS: [&str; 3] = ["password", "shared_key", "bearer_token"];

/// Writes the keys of one table: its values first, then its sub-tables and arrays of
/// tables under their own headers.
fn table(out: &mut String, path: &str, map: &Map<String, Value>) {
    for (name, value) in map {
        match value {
            Value::Null => {
                let _ = writeln!(out, "# {} = (not set)", key(name));
            }
            // A secret is a comment saying whether it is set (its serializer gives only
            // that), so that the output read back takes it from the environment again.
            Value::String(state) if SECRET_KEYS.contains(&name.as_str()) => {
                let _ = writeln!(out, "# {} = ({state})", key(name));
            }
            Value::Object(_) => {}
            Value::Array(items) if items.iter().any(Value::is_object) => {}
            other => {
                let _ = writeln!(out, "{} = {}", key(name), inline(other));
            }
        }
    }
    for (name, value) in map {
        let full = if path.is_empty() {
            key(name)
        } else {
            format!("{path}.{}", key(name))
        };
        match value {
            Value::Object(sub) => {
                let _ = writeln!(out, "\n[{full}]");
                table(out, &full, sub);
            }
            Value::Array(items) if items.iter().any(Value::is_object) => {
                for item in items {
                    if let Value::Object(sub) = item {
                        let _ = writeln!(out, "\n[[{full}]]");
                        table(out, &full, sub);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A bare key, or a quoted one.
fn key(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        name.to_owned()
    } else {
        Value::String(name.to_owned()).to_string()
    }
}

/// A value on one line: JSON's strings, numbers and booleans are TOML's too.
fn inline(value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{} = {}", key(k), inline(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        Value::Number(n) if n.is_f64() => {
            let text = n.to_string();
            if text.contains(['.', 'e', 'E']) {
                text
            } else {
                format!("{text}.0")
            }
        }
        // JSON leaves DEL (U+007F) as it is; TOML wants it escaped.
        Value::String(_) => value.to_string().replace('\u{7f}', "\\u007F"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The text without its comment lines.
    fn body(text: &str) -> String {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_output_reads_back_as_the_same_configuration() {
        let config = NemsConfig::load(None, &env(&[])).unwrap();
        let text = render(&config, None, &env(&[])).unwrap();
        let again = NemsConfig::parse(&text).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
        assert_eq!(body(&render(&again, None, &env(&[])).unwrap()), body(&text));
        assert!(text.contains("# file: none"), "{text}");
        // Optional keys that are not set show as comments in their table.
        let core = &text[text.find("\n[core]\n").unwrap()..];
        assert!(core.contains("# tls = (not set)"), "{text}");
        assert!(text.contains("# operator_url = (not set)"), "{text}");
        assert!(text.contains("lease_timeout = \"5m\""), "{text}");
        assert!(text.contains("max_shrink_percent = 10.0"), "{text}");
        // The list the unknown-variable warning points to.
        assert!(
            text.contains("#   NEMS_OPERATOR_URL            operator_url"),
            "{text}"
        );
    }

    #[test]
    fn an_ops_endpoint_turned_off_stays_off_when_read_back() {
        let source = env(&[("NEMS_OPS_LISTEN", "off")]);
        let config = NemsConfig::load(None, &source).unwrap();
        let text = render(&config, None, &source).unwrap();
        assert!(text.contains("\nlisten = \"off\"\n"), "{text}");
        let again = NemsConfig::parse(&text).unwrap();
        assert_eq!(again.ops.listen, None);
        assert_eq!(again.ops.core_listen, None);
    }

    #[test]
    fn secrets_print_as_set_never_their_value() {
        let source = env(&[
            ("NEMS_MESH_PASSWORD", "hunter2-pw"),
            ("NEMS_CORE_LISTEN", "127.0.0.1:7070"),
            ("NEMS_PDS_URL", "https://pds.example"),
            ("NEMS_PDS_TOKEN", "hunter2-token"),
        ]);
        let config = NemsConfig::load(None, &source).unwrap();
        let text = render(&config, None, &source).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        let mesh = &text[text.find("[mesh_adapter.mesh]").unwrap()..];
        assert!(mesh.contains("\n# password = (set)\n"), "{text}");
        assert!(mesh.contains("\n# shared_key = (not set)\n"), "{text}");
        // Read back, a secret comes from the environment again, never from the word "set".
        let again = NemsConfig::parse(&text).unwrap();
        assert_eq!(again.mesh_adapter.mesh.password, "");
        assert!(text.contains("\n# bearer_token = (set)\n"), "{text}");
        assert_eq!(again.core.pds.and_then(|p| p.bearer_token), None);
        assert!(
            text.contains(
                "# environment: NEMS_CORE_LISTEN, NEMS_MESH_PASSWORD, NEMS_PDS_URL, NEMS_PDS_TOKEN"
            ),
            "{text}"
        );
        assert!(text.contains("listen = \"127.0.0.1:7070\""), "{text}");
    }

    /// Every key the example file sets shows in the output with the value it read.
    #[test]
    fn every_key_of_the_example_file_is_printed() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/nems.example.toml");
        let example = std::fs::read_to_string(&path).unwrap();
        let config = NemsConfig::parse(&example).unwrap();
        let text = render(&config, Some(&path), &env(&[])).unwrap();
        assert!(text.contains("nems.example.toml"), "the file read is named");
        let printed: toml::Table = toml::from_str(&text).unwrap();
        let read: toml::Table = toml::from_str(&example).unwrap();
        let mut checked = 0;
        compare(&read, &printed, "", &mut checked);
        assert!(checked > 60, "only {checked} keys compared");
    }

    fn compare(read: &toml::Table, printed: &toml::Table, path: &str, checked: &mut usize) {
        for (name, value) in read {
            let at = format!("{path}{name}");
            if SECRET_KEYS.contains(&name.as_str()) {
                // A comment: not read back.
                assert!(printed.get(name).is_none(), "{at} is printed as a value");
                continue;
            }
            let Some(shown) = printed.get(name) else {
                panic!("{at} is not printed");
            };
            match (value, shown) {
                (toml::Value::Table(a), toml::Value::Table(b)) => {
                    compare(a, b, &format!("{at}."), checked);
                }
                // Durations print in one canonical form ("90days" reads as "3months").
                (toml::Value::String(a), toml::Value::String(b))
                    if humantime::parse_duration(a).is_ok() =>
                {
                    assert_eq!(
                        humantime::parse_duration(a).ok(),
                        humantime::parse_duration(b).ok(),
                        "{at}"
                    );
                    *checked += 1;
                }
                (a, b) => {
                    assert_eq!(a, b, "{at}");
                    *checked += 1;
                }
            }
        }
    }
}
