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
    use super::terminal_safe;

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
