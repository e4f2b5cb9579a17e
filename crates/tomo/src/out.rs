//! Standard output for the CLI ([`outln!`], [`out!`]): a closed pipe is the reader saying it
//! has seen enough, so the process exits at once with status 0 and says nothing, as `docker`
//! and the usual Unix tools do (Rust ignores `SIGPIPE`, so `println!` would panic instead).

use std::io::Write as _;

/// Writes `args` and a newline to standard output.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    let written = o.write_fmt(args).and_then(|()| o.write_all(b"\n"));
    done_if_closed(written);
}

/// Writes `args` to standard output.
pub fn text(args: std::fmt::Arguments<'_>) {
    let written = std::io::stdout().lock().write_fmt(args);
    done_if_closed(written);
}

/// Exits quietly when the reader is gone; other errors (a full disk behind a redirection) are
/// not this module's to judge and are ignored like `print!` would not.
pub fn done_if_closed(r: std::io::Result<()>) {
    if let Err(e) = r
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// [`terminal_safe`] as an owned `String`: a host's string ready for a table cell or a line.
pub fn safe(s: &str) -> String {
    terminal_safe(s).into_owned()
}

/// An RFC 3339 time as a table shows it, relative to `now_ms` (Unix milliseconds): `12s ago`,
/// `5m ago`, `3h ago`, `2d ago`, or `in 14m` for a time to come; `-` for none. Tables show
/// this, `-o json` the absolute time (issue 17). Text that is not a time is shown as it is
/// (made terminal-safe).
pub fn ago(rfc3339: Option<&str>, now_ms: i64) -> String {
    let Some(text) = rfc3339 else {
        return "-".into();
    };
    let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    else {
        return terminal_safe(text).into_owned();
    };
    let at_ms = (t.unix_timestamp_nanos() / 1_000_000) as i64;
    let (secs, future) = if at_ms > now_ms {
        ((at_ms - now_ms) / 1000, true)
    } else {
        ((now_ms - at_ms) / 1000, false)
    };
    let span = match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// `s` made safe to print on a terminal: control characters (C0, DEL, C1, among them ESC, so
/// no colour, title, cursor or hyperlink sequence) and bidirectional overrides are shown
/// escaped (`\x1b`, `\u{202e}`) rather than acted upon. Everything a host or a container
/// controls (names, labels, errors) goes through this before it reaches a terminal.
pub fn terminal_safe(s: &str) -> std::borrow::Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if unsafe_char(c) && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::{ago, terminal_safe};

    #[test]
    fn times_read_relative_to_now() {
        let now = 1_700_000_000_000;
        let at = |ms: i64| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .expect("a time")
                .format(&time::format_description::well_known::Rfc3339)
                .expect("formatted")
        };
        assert_eq!(ago(Some(&at(now - 12_000)), now), "12s ago");
        assert_eq!(ago(Some(&at(now - 300_000)), now), "5m ago");
        assert_eq!(ago(Some(&at(now - 3 * 3_600_000)), now), "3h ago");
        assert_eq!(ago(Some(&at(now - 2 * 86_400_000)), now), "2d ago");
        assert_eq!(ago(Some(&at(now + 14 * 60_000)), now), "in 14m");
        assert_eq!(ago(None, now), "-");
        assert_eq!(ago(Some("never\u{1b}[2J"), now), "never\\x1b[2J");
    }

    #[test]
    fn terminal_safe_escapes_what_a_terminal_would_act_on() {
        assert_eq!(terminal_safe("web-1 (ok)"), "web-1 (ok)");
        assert_eq!(
            terminal_safe("\u{1b}]0;pwned\u{7}name"),
            "\\x1b]0;pwned\\x07name"
        );
        assert_eq!(terminal_safe("a\r\nb\u{9b}31m"), "a\\x0d\\x0ab\\x9b31m");
        assert_eq!(terminal_safe("txt\u{202e}gpj.exe"), "txt\\u{202e}gpj.exe");
        assert_eq!(terminal_safe("日本語 ✓"), "日本語 ✓");
    }
}
