//! Human-written durations: `500ms`, `2s`, `30m`, `1h30m`, `2d`.
//!
//! Whole numbers only, each followed by a unit, largest unit first. Fractions (`1.5s`) are
//! refused rather than rounded because every unit has a smaller one to write them exactly, and a
//! bare number is refused because "is `30` seconds or milliseconds?" is exactly the ambiguity a
//! unit removes. Zero is refused too: every duration in the config (probe interval, timeout,
//! persistence) is meaningless or harmful at zero.

use std::time::Duration;

/// Units from largest to smallest, with their length in milliseconds.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a duration such as `500ms`, `1s`, `30m`, `1h30m` or `2d`. Errors are full sentences
/// that quote the input and say how to write it instead.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d.is_zero() {
        return Err(format!(
            "duration \"{s}\" is zero; use a positive duration such as \"1s\""
        ));
    }
    Ok(d)
}

/// [`parse_duration`] for the few settings where zero means "not at all".
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration; write a number with a unit, e.g. \"2s\" or \"500ms\"".into());
    }
    if text.starts_with('-') {
        return Err(format!(
            "duration \"{s}\" is negative; durations must be positive"
        ));
    }

    let mut total_ms: u64 = 0;
    // Index into UNITS of the last unit seen; each next unit must be strictly smaller.
    let mut last_unit: Option<usize> = None;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, after) = rest.split_at(digits_end);
        let unit_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);

        if digits.is_empty() {
            let bad = rest.chars().next().unwrap_or(' ');
            return Err(if bad.is_ascii_alphabetic() {
                format!("duration \"{s}\" is missing a number before \"{unit}\"")
            } else {
                format!(
                    "duration \"{s}\" contains \"{bad}\"; write whole numbers with units and \
                     nothing else, e.g. \"1h30m\" or \"500ms\""
                )
            });
        }
        if unit.is_empty() {
            return Err(match after.chars().next() {
                Some('.') | Some(',') => format!(
                    "duration \"{s}\" has a fraction; use whole numbers of a smaller unit, \
                     e.g. \"1500ms\" for 1.5s"
                ),
                Some(c) => format!(
                    "duration \"{s}\" contains \"{c}\"; write whole numbers with units and \
                     nothing else, e.g. \"1h30m\" or \"500ms\""
                ),
                None => format!(
                    "duration \"{s}\" has no unit; write e.g. \"{digits}s\" (units: ms, s, m, h, d)"
                ),
            });
        }
        let Some(index) = UNITS.iter().position(|&(name, _)| name == unit) else {
            return Err(format!(
                "duration \"{s}\" has an unknown unit \"{unit}\"; use ms, s, m, h or d"
            ));
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(format!(
                "duration \"{s}\" repeats a unit or lists units out of order; write the largest \
                 unit first, each once, e.g. \"1h30m\""
            ));
        }
        last_unit = Some(index);

        let too_large = || format!("duration \"{s}\" is too large");
        let n: u64 = digits.parse().map_err(|_| too_large())?;
        total_ms = n
            .checked_mul(UNITS[index].1)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(too_large)?;
        rest = after;
    }

    Ok(Duration::from_millis(total_ms))
}

/// Writes a duration the way the config spells it (`1h30m`, `500ms`), for messages.
pub(super) fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (name, len) in UNITS {
        let len = u128::from(len);
        if ms >= len {
            out.push_str(&format!("{}{name}", ms / len));
            ms %= len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> u128 {
        parse_duration(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .as_millis()
    }

    #[test]
    fn accepts_units_and_combinations() {
        assert_eq!(ok("500ms"), 500);
        assert_eq!(ok("1s"), 1_000);
        assert_eq!(ok("30m"), 1_800_000);
        assert_eq!(ok("1h"), 3_600_000);
        assert_eq!(ok("1h30m"), 5_400_000);
        assert_eq!(ok("2d"), 172_800_000);
        assert_eq!(ok("1m30s"), 90_000);
        assert_eq!(ok("1s500ms"), 1_500);
        assert_eq!(ok("0h5m"), 300_000);
        assert_eq!(ok(" 2s "), 2_000);
    }

    #[test]
    fn rejects_with_reasons() {
        let err = |s: &str| parse_duration(s).unwrap_err();
        assert!(err("").contains("empty"));
        assert!(err("   ").contains("empty"));
        assert!(err("0s").contains("is zero"));
        assert!(err("0").contains("no unit"));
        assert!(err("-1s").contains("negative"));
        assert_eq!(
            err("30"),
            "duration \"30\" has no unit; write e.g. \"30s\" (units: ms, s, m, h, d)"
        );
        assert_eq!(
            err("5x"),
            "duration \"5x\" has an unknown unit \"x\"; use ms, s, m, h or d"
        );
        assert!(err("5sec").contains("unknown unit \"sec\""));
        assert!(err("1.5s").contains("fraction"));
        assert!(err("30m1h").contains("out of order"));
        assert!(err("1s1s").contains("repeats"));
        assert!(err("s").contains("missing a number"));
        assert!(err("1 s").contains("contains \" \""));
        assert!(err("99999999999999999999s").contains("too large"));
        assert!(err("9999999999999999d").contains("too large"));
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_secs(5_400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(1_500)), "1s500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
