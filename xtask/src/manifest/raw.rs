//! The manifest as written: the serde types the top level, `[settings]` and each
//! `[[instance]]` table are deserialized into, before any check of ours.
//!
//! Every field is optional here, so that a missing one becomes a located message of ours (see
//! [`super::check`]) rather than serde's first-and-only error. Tables are `deny_unknown_fields`,
//! and fields that a later check points at are [`Spanned`], so their place survives.

use std::fmt;

use serde::de::IgnoredAny;
use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a manifest with [settings] and [[instance]] tables")]
pub(super) struct RawTop {
    #[allow(dead_code)]
    settings: Option<IgnoredAny>,
    #[allow(dead_code)]
    instance: Option<IgnoredAny>,
    #[allow(dead_code)]
    channel: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[channel]] table")]
pub(super) struct RawChannel {
    pub(super) name: Option<Spanned<String>>,
    pub(super) between: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) size: Option<Spanned<Number>>,
    pub(super) base: Option<Spanned<Number>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [settings] table")]
pub(super) struct RawSettings {
    pub(super) boot_timeout_ms: Option<Spanned<u32>>,
    pub(super) run_ms: Option<u32>,
    pub(super) log_level: Option<LogLevel>,
    pub(super) image_store: Option<Spanned<Number>>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum LogLevel {
    // The values are the bundle's (`platform::bundle::Settings::log_level`).
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
    Trace = 4,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [[instance]] table")]
pub(super) struct RawInstance {
    pub(super) name: Option<Spanned<String>>,
    pub(super) payload: Option<Spanned<String>>,
    pub(super) image: Option<Spanned<String>>,
    pub(super) cpu: Option<Spanned<u32>>,
    pub(super) memory: Option<Spanned<Number>>,
    pub(super) base: Option<Spanned<Number>>,
    pub(super) args: Option<Spanned<String>>,
    pub(super) restart: Option<RestartPolicy>,
    pub(super) max_restarts: Option<Spanned<u32>>,
    pub(super) heartbeat_timeout_ms: Option<Spanned<u32>>,
    pub(super) boot_protocol: Option<Spanned<bool>>,
    pub(super) protocol_version: Option<Spanned<u32>>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) cpus: Option<Spanned<CpusValue>>,
    pub(super) devices: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) initrd: Option<Spanned<String>>,
    pub(super) cmdline: Option<Spanned<String>>,
}

/// `cpus`: a list of APIC IDs, or how many free CPUs.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged, expecting = "a list of APIC IDs such as [2, 3] or a count such as 2")]
pub(super) enum CpusValue {
    Count(i64),
    List(Vec<i64>),
}

#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RestartPolicy {
    Never,
    OnFailure,
}

/// A size or address: an integer, or text such as `"32M"` or `"0x4000000"`. Parsed after
/// deserializing, so that a bad one gets a message that says what the field wants.
#[derive(Clone, Debug)]
pub(super) enum Number {
    Integer(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumberVisitor;
        impl serde::de::Visitor<'_> for NumberVisitor {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string such as \"32M\" or \"0x4000000\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Number, E> {
                Ok(Number::Integer(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Number, E> {
                Ok(i64::try_from(v).map_or_else(|_| Number::Text(v.to_string()), Number::Integer))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Number, E> {
                Ok(Number::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(NumberVisitor)
    }
}

impl Number {
    pub(super) fn value(&self) -> Option<u64> {
        match self {
            Number::Integer(i) => u64::try_from(*i).ok(),
            Number::Text(t) => loader::parse_number(t).ok(),
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Integer(i) => write!(f, "{i}"),
            Number::Text(t) => write!(f, "{t:?}"),
        }
    }
}
