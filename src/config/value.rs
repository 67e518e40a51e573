//! Parsers for the value of one variable: durations, sizes, whole numbers, and values that
//! may be given in a file instead. Each error names the variable and says what a valid value
//! looks like; none echoes a value read from a file (it may be a secret).

use std::fmt;
use std::time::Duration;

use super::ConfigError;

pub(super) fn duration(variable: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|_| {
        ConfigError::new(
            variable.to_owned(),
            format!("{value:?} is not a duration; use a number with a unit, e.g. 500ms, 30s, 5m"),
        )
    })
}

pub(super) fn positive_duration(variable: &str, value: &str) -> Result<Duration, ConfigError> {
    let d = duration(variable, value)?;
    if d.is_zero() {
        return Err(ConfigError::new(
            variable.to_owned(),
            "must be greater than zero",
        ));
    }
    Ok(d)
}

pub(super) fn at_most(variable: &str, d: Duration, max: Duration) -> Result<Duration, ConfigError> {
    if d > max {
        return Err(ConfigError::new(
            variable.to_owned(),
            format!("must be at most {}", humantime::format_duration(max)),
        ));
    }
    Ok(d)
}

/// A size in bytes: a whole number with an optional unit (`B`, `KiB`, `MiB`, `GiB`, or
/// `KB`/`MB`/`GB` read as the binary ones), from 1 MiB to 4095 MiB.
pub(super) fn byte_size(variable: &str, value: &str) -> Result<usize, ConfigError> {
    const MIB: u64 = 1024 * 1024;
    let invalid = || {
        ConfigError::new(
            variable.to_owned(),
            format!(
                "{value:?} is not a valid size; use a size from 1MiB to 4095MiB, e.g. 64MiB, \
                 512MiB or 1GiB"
            ),
        )
    };
    let text = value.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "kb" | "k" => 1024,
        "mib" | "mb" | "m" => MIB,
        "gib" | "gb" | "g" => 1024 * MIB,
        _ => return Err(invalid()),
    };
    let bytes = number.checked_mul(unit).ok_or_else(invalid)?;
    if !(MIB..=4095 * MIB).contains(&bytes) {
        return Err(invalid());
    }
    usize::try_from(bytes).map_err(|_| invalid())
}

/// A whole number from `min` to `max`.
pub(super) fn count<T: std::str::FromStr + PartialOrd + fmt::Display>(
    variable: &str,
    value: &str,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    let rule = || format!("{value:?} is not valid; use a whole number from {min} to {max}");
    let n: T = value
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(variable.to_owned(), rule()))?;
    if n < min || n > max {
        return Err(ConfigError::new(variable.to_owned(), rule()));
    }
    Ok(n)
}

fn read_secret_file(variable: &str, path: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|e| {
            ConfigError::new(
                variable.to_owned(),
                format!("cannot read file {path:?}: {e}"),
            )
        })
}

/// `true` or `false` (also `1`/`0`, `yes`/`no`, `on`/`off`, any case).
pub(super) fn boolean(variable: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(
            variable.to_owned(),
            format!("{value:?} is not valid; use true or false"),
        )),
    }
}

/// A value given either directly in `variable` or as a file named by `file_variable`, not
/// both. Returns it with the variable it came from (for errors about its content).
pub(super) fn value_or_file<'v>(
    variable: &'v str,
    file_variable: &'v str,
    value: &Option<String>,
    path: &Option<String>,
) -> Result<Option<(&'v str, String)>, ConfigError> {
    match (value, path) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            variable.to_owned(),
            format!("set either {variable} or {file_variable}, not both"),
        )),
        (Some(value), None) => Ok(Some((variable, value.clone()))),
        (None, Some(path)) => Ok(Some((
            file_variable,
            read_secret_file(file_variable, path)?,
        ))),
        (None, None) => Ok(None),
    }
}
