//! Human durations on the command line: `500ms`, `30s`, `15m`, `2h`, `7d`.

use std::time::Duration;

/// Parses `<number><unit>`; a bare number is seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 30s, 15m, 2h)"))?;
    let ms = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Parses the value of `flag` and checks it lies in `1 s ..= max`; errors name the flag (the
/// API's field name means nothing on the command line).
pub fn parse_lifetime(flag: &str, text: &str, max: Duration) -> Result<Duration, String> {
    let d = parse(text).map_err(|e| format!("{flag}: {e}"))?;
    if d < Duration::from_secs(1) || d > max {
        return Err(format!(
            "{flag} must be between 1s and {} (got {text:?})",
            show(max)
        ));
    }
    Ok(d)
}

/// `7d`, `2h`, `15m`, `30s`: the largest unit that divides `d` whole.
pub fn show(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s > 0 && s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s > 0 && s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        _ if s > 0 && s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse("5y").is_err());
        assert!(parse("m").is_err());
        assert!(parse("-1s").is_err());
    }

    #[test]
    fn lifetimes_name_their_flag() {
        let week = Duration::from_secs(7 * 86_400);
        assert_eq!(
            parse_lifetime("--ttl", "1h", week),
            Ok(Duration::from_secs(3600))
        );
        assert_eq!(parse_lifetime("--ttl", "7d", week), Ok(week));
        let e = parse_lifetime("--ttl", "8d", week).expect_err("too long");
        assert_eq!(e, "--ttl must be between 1s and 7d (got \"8d\")");
        assert!(parse_lifetime("--ttl", "0", week).is_err());
        assert!(parse_lifetime("--ttl", "500ms", week).is_err());
        assert!(
            parse_lifetime("--expires", "x", week)
                .expect_err("bad")
                .starts_with("--expires: ")
        );
        assert_eq!(show(Duration::from_secs(90)), "90s");
    }
}
