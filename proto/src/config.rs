//! Configuration helpers shared by the services' configuration sections.

/// Serde support for human-readable durations (`humantime`): `#[serde(with = "duration")]`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

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
