//! `system.exec` command lines: the strict splitter that turns one into an argument vector, and
//! the allowlist of exact command shapes the vector must match.
//!
//! No shell ever sees the line. The splitter still refuses anything a shell would treat specially
//! (outside quotes), so a line written for a shell is refused rather than run with another meaning.
//! The allowlist is data: entries are written in a tiny spec syntax (`systemctl status <name>`),
//! so host policy can add its own entries in the same form.

use std::borrow::Cow;
use std::fmt;

use serde_json::json;
use tomo_proto::rpc::{RpcError, code};

/// Characters refused outside quotes (unless escaped with a backslash): a shell would give them
/// a meaning (`#` starts a comment).
pub const METACHARACTERS: &[char] = &[
    ';', '&', '|', '$', '`', '(', ')', '<', '>', '*', '?', '[', ']', '{', '}', '~', '!', '#',
];

/// The allowlist built into the agent, one command shape per line (see [`AllowEntry::parse`]).
pub const BUILTIN: &[&str] = &[
    "docker ps",
    "docker ps -a",
    "docker images",
    "docker info",
    "docker version",
    "docker stats --no-stream",
    "docker compose ls",
    "docker compose -p <name> ps",
    "docker compose -p <name> logs",
    "docker compose -p <name> logs --tail <count>",
    "docker-compose ps",
    "docker-compose logs",
    "docker-compose -p <name> ps",
    "docker-compose -p <name> logs",
    "docker-compose -p <name> logs --tail <count>",
    "systemctl status <name>",
    "systemctl is-active <name>",
    "systemctl is-enabled <name>",
    "systemctl is-failed <name>",
    "df",
    "df -h",
    "free",
    "free -m",
    "free -h",
    "uptime",
    "hostname",
    "cat /etc/os-release",
    "uname -a",
    "uname -r",
    "uname -m",
    "id",
    "date",
    "nproc",
    "ip addr",
    "ip route",
];

/// Why a command line was refused: the -32005 error, with `data.reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("shell metacharacter {0:?} outside quotes")]
    Metacharacter(char),
    #[error("control character U+{:04X}", u32::from(*.0))]
    ControlCharacter(char),
    #[error("unbalanced quote")]
    UnbalancedQuote,
    #[error("backslash at the end of the line")]
    DanglingEscape,
    #[error("`{0}` matches no allowlist entry")]
    NotAllowed(String),
}

impl Refusal {
    /// The stable name of the refusal, `data.reason` on the wire.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Metacharacter(_) => "metacharacter",
            Self::ControlCharacter(_) => "control_character",
            Self::UnbalancedQuote => "unbalanced_quote",
            Self::DanglingEscape => "dangling_escape",
            Self::NotAllowed(_) => "not_allowed",
        }
    }
}

impl From<Refusal> for RpcError {
    fn from(r: Refusal) -> Self {
        RpcError::new(code::COMMAND_BLOCKED, format!("Command blocked: {r}"))
            .with_data(json!({ "reason": r.reason() }))
    }
}

/// Splits a command line into words.
///
/// Spaces and tabs separate words. Single quotes take everything up to the next single quote
/// literally. Double quotes group too, and inside them a backslash takes the next character
/// literally; outside quotes a backslash does the same. `''` is an empty word. Control
/// characters (but tab), line and paragraph separators and bidirectional formatting characters
/// are refused anywhere, even quoted: the line must read as it runs.
pub fn split(line: &str) -> Result<Vec<String>, Refusal> {
    if let Some(c) = line.chars().find(|&c| is_forbidden_control(c)) {
        return Err(Refusal::ControlCharacter(c));
    }
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => word.push(chars.next().ok_or(Refusal::UnbalancedQuote)?),
            (Some(_), c) => word.push(c),
            (None, ' ' | '\t') => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                word.push(chars.next().ok_or(Refusal::DanglingEscape)?);
                in_word = true;
            }
            (None, c) if METACHARACTERS.contains(&c) => return Err(Refusal::Metacharacter(c)),
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(Refusal::UnbalancedQuote);
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Characters that could make a line display differently from what runs, or end it early.
fn is_forbidden_control(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// One argument position of an [`AllowEntry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgPattern {
    /// Exactly this word. A flag is allowed only this way, in one exact spelling.
    Literal(Cow<'static, str>),
    /// `<name>`: a unit, project or similar name, `[A-Za-z0-9@._:-]+`, not starting with `-`.
    Name,
    /// `<count>`: a decimal number of 1 to 6 digits.
    Count,
}

impl ArgPattern {
    fn matches(&self, arg: &str) -> bool {
        match self {
            Self::Literal(l) => arg == l,
            Self::Name => is_name(arg),
            Self::Count => (1..=6).contains(&arg.len()) && arg.bytes().all(|b| b.is_ascii_digit()),
        }
    }
}

/// `[A-Za-z0-9@._:-]+`, not starting with `-` (so it is never read as an option).
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@._:-".contains(&b))
}

/// One allowed command shape: a program, named bare and looked up in the agent's safe `PATH`,
/// and one pattern per argument. Every argument must be there; none may be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    pub program: Cow<'static, str>,
    pub args: Vec<ArgPattern>,
}

/// A spec that [`AllowEntry::parse`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad allowlist entry {spec:?}: {why}")]
pub struct SpecError {
    pub spec: String,
    pub why: &'static str,
}

impl AllowEntry {
    /// Parses `program arg…`: words separated by spaces; `<name>` and `<count>` are
    /// placeholders, every other word is literal. The program is a bare name
    /// (`[A-Za-z0-9._+-]+`, not starting with `-` or `.`). Literals cannot hold quotes,
    /// backslashes, metacharacters or control characters, so a spec means what it shows.
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        let err = |why| SpecError {
            spec: spec.to_owned(),
            why,
        };
        let mut words = spec.split(' ').filter(|w| !w.is_empty());
        let program = words.next().ok_or_else(|| err("empty"))?;
        let program_ok = !program.starts_with(['-', '.'])
            && program
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
        if !program_ok {
            return Err(err("the program must be a bare name"));
        }
        let args = words
            .map(|w| match w {
                "<name>" => Ok(ArgPattern::Name),
                "<count>" => Ok(ArgPattern::Count),
                w if w.chars().any(|c| {
                    c.is_whitespace()
                        || is_forbidden_control(c)
                        || METACHARACTERS.contains(&c)
                        || matches!(c, '\'' | '"' | '\\')
                }) =>
                {
                    Err(err("a literal holds a character that would need quoting"))
                }
                w => Ok(ArgPattern::Literal(Cow::Owned(w.to_owned()))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            program: Cow::Owned(program.to_owned()),
            args,
        })
    }

    /// Whether `argv` (program first) has exactly this shape.
    pub fn matches(&self, argv: &[String]) -> bool {
        match argv.split_first() {
            Some((program, args)) => {
                *program == self.program
                    && args.len() == self.args.len()
                    && self.args.iter().zip(args).all(|(p, a)| p.matches(a))
            }
            None => false,
        }
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for a in &self.args {
            match a {
                ArgPattern::Literal(l) => write!(f, " {l}")?,
                ArgPattern::Name => f.write_str(" <name>")?,
                ArgPattern::Count => f.write_str(" <count>")?,
            }
        }
        Ok(())
    }
}

/// The command shapes `system.exec` runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<AllowEntry>,
}

impl Allowlist {
    /// The agent's built-in entries, [`BUILTIN`].
    pub fn builtin() -> Self {
        // Every spec of BUILTIN parses; a unit test holds it to that.
        Self {
            entries: BUILTIN
                .iter()
                .filter_map(|s| AllowEntry::parse(s).ok())
                .collect(),
        }
    }

    /// Adds an entry (host policy).
    pub fn push(&mut self, entry: AllowEntry) {
        self.entries.push(entry);
    }

    pub fn entries(&self) -> &[AllowEntry] {
        &self.entries
    }

    /// The entry `argv` matches, or [`Refusal::NotAllowed`].
    pub fn check(&self, argv: &[String]) -> Result<&AllowEntry, Refusal> {
        self.entries
            .iter()
            .find(|e| e.matches(argv))
            .ok_or_else(|| Refusal::NotAllowed(shown(argv)))
    }
}

/// The argument vector for a message: the program and how many arguments, never the arguments
/// themselves (they may hold a password, and errors travel to the API and the logs).
fn shown(argv: &[String]) -> String {
    let program: String = argv
        .first()
        .map(|p| {
            p.chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect()
        })
        .unwrap_or_default();
    match argv.len().saturating_sub(1) {
        0 => program,
        1 => format!("{program} (1 argument)"),
        n => format!("{program} ({n} arguments)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Result<Vec<String>, Refusal> {
        split(line)
    }

    fn v(ws: &[&str]) -> Vec<String> {
        ws.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn splits_words_quotes_and_escapes() {
        let cases: &[(&str, &[&str])] = &[
            ("df -h", &["df", "-h"]),
            ("  df \t -h  ", &["df", "-h"]),
            ("", &[]),
            ("   ", &[]),
            ("a 'b c' d", &["a", "b c", "d"]),
            (r#"a "b c" d"#, &["a", "b c", "d"]),
            ("'a'\"b\"c", &["abc"]),
            ("''", &[""]),
            (r#"a "" b"#, &["a", "", "b"]),
            (r"a\ b", &["a b"]),
            (r"a\;b", &["a;b"]),
            (r#""a\"b""#, &["a\"b"]),
            (r#""a\\b""#, &["a\\b"]),
            (r"'a\b'", &["a\\b"]),
            (
                "'; & | $ ` ( ) < > * ? [ ] { } ~ ! #'",
                &["; & | $ ` ( ) < > * ? [ ] { } ~ ! #"],
            ),
            ("\"$(reboot)\"", &["$(reboot)"]),
            (
                "systemctl status nginx.service",
                &["systemctl", "status", "nginx.service"],
            ),
        ];
        for (line, want) in cases {
            assert_eq!(words(line), Ok(v(want)), "line {line:?}");
        }
    }

    #[test]
    fn refuses_every_metacharacter_outside_quotes() {
        for &m in METACHARACTERS {
            for line in [format!("df {m}"), format!("df{m}x"), format!("{m}df")] {
                assert_eq!(words(&line), Err(Refusal::Metacharacter(m)), "{line:?}");
            }
        }
        assert_eq!(words("uptime; reboot"), Err(Refusal::Metacharacter(';')));
        assert_eq!(words("df && reboot"), Err(Refusal::Metacharacter('&')));
        assert_eq!(
            words("cat /etc/os-release | sh"),
            Err(Refusal::Metacharacter('|'))
        );
        assert_eq!(words("echo `id`"), Err(Refusal::Metacharacter('`')));
        assert_eq!(words("cat ~/x"), Err(Refusal::Metacharacter('~')));
    }

    #[test]
    fn refuses_control_characters_even_quoted() {
        for c in [
            '\n', '\r', '\0', '\u{1b}', '\u{7f}', '\u{85}', '\u{2028}', '\u{202E}',
        ] {
            for line in [
                format!("df{c}-h"),
                format!("'df{c}'"),
                format!("df \"{c}\""),
            ] {
                assert_eq!(words(&line), Err(Refusal::ControlCharacter(c)), "{line:?}");
            }
        }
        assert_eq!(
            words("uptime\nreboot"),
            Err(Refusal::ControlCharacter('\n'))
        );
    }

    #[test]
    fn refuses_unbalanced_quotes_and_dangling_escapes() {
        for line in ["'df", "df \"-h", "'a'\"", r#""a\""#, "it's"] {
            assert_eq!(words(line), Err(Refusal::UnbalancedQuote), "{line:?}");
        }
        assert_eq!(words(r"df \"), Err(Refusal::DanglingEscape));
    }

    #[test]
    fn builtin_specs_all_parse_and_print_back() {
        let list = Allowlist::builtin();
        assert_eq!(list.entries().len(), BUILTIN.len());
        for (entry, spec) in list.entries().iter().zip(BUILTIN) {
            assert_eq!(entry.to_string(), *spec);
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        for spec in [
            "", "/bin/df", "-df", ".df", "df $HOME", "df 'a'", "df a\\b", "df a;b",
        ] {
            assert!(AllowEntry::parse(spec).is_err(), "{spec:?}");
        }
        assert_eq!(
            AllowEntry::parse("journalctl -u <name> -n <count>"),
            Ok(AllowEntry {
                program: "journalctl".into(),
                args: vec![
                    ArgPattern::Literal("-u".into()),
                    ArgPattern::Name,
                    ArgPattern::Literal("-n".into()),
                    ArgPattern::Count,
                ],
            })
        );
    }

    #[test]
    fn allowlist_accepts_and_refuses() {
        // (command line, allowed)
        let cases: &[(&str, bool)] = &[
            ("docker ps", true),
            ("docker ps -a", true),
            ("docker images", true),
            ("docker info", true),
            ("docker version", true),
            ("docker stats --no-stream", true),
            ("docker stats", false),
            ("docker run alpine", false),
            ("docker ps --format '{{.Names}}'", false),
            ("docker rm -f x", false),
            ("docker compose ls", true),
            ("docker compose -p web ps", true),
            ("docker compose -p web logs --tail 100", true),
            ("docker compose -p web logs -f", false),
            ("docker compose -p web down", false),
            ("docker compose -p -f ps", false),
            ("docker-compose ps", true),
            ("docker-compose logs", true),
            ("docker-compose -p web_1 logs --tail 50", true),
            ("docker-compose logs --tail 1234567", false),
            ("docker-compose logs --tail -1", false),
            ("docker-compose logs -f", false),
            ("docker-compose up -d", false),
            ("systemctl status nginx", true),
            ("systemctl status 'getty@tty1.service'", true),
            ("systemctl is-active docker.service", true),
            ("systemctl is-enabled docker", true),
            ("systemctl is-failed docker", true),
            ("systemctl status -H host", false),
            ("systemctl status --host=x nginx", false),
            ("systemctl status nginx -H host", false),
            ("systemctl status", false),
            ("systemctl status a b", false),
            ("systemctl status 'a/b'", false),
            ("systemctl status ''", false),
            ("systemctl restart nginx", false),
            ("systemctl stop nginx", false),
            ("df", true),
            ("df -h", true),
            ("df --output=source", false),
            ("df --output=…", false),
            ("df -h /", false),
            ("df -H", false),
            ("free", true),
            ("free -m", true),
            ("free -h", true),
            ("free -s 1", false),
            ("uptime", true),
            ("uptime -p", false),
            ("hostname", true),
            ("hostname evil", false),
            ("cat /etc/os-release", true),
            ("cat /etc/shadow", false),
            ("cat /etc/os-release /etc/shadow", false),
            ("cat /etc/../etc/os-release", false),
            ("uname -a", true),
            ("uname -r", true),
            ("uname -m", true),
            ("id", true),
            ("date", true),
            ("date -s 2020-01-01", false),
            ("nproc", true),
            ("ip addr", true),
            ("ip route", true),
            ("ip link set eth0 down", false),
            ("/usr/bin/df", false),
            ("./df", false),
            ("DF", false),
            ("sh -c uptime", false),
            ("bash", false),
            ("reboot", false),
        ];
        let list = Allowlist::builtin();
        for (line, allowed) in cases {
            let argv = split(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            let got = list.check(&argv);
            assert_eq!(got.is_ok(), *allowed, "{line:?}: {got:?}");
            if let Err(e) = got {
                assert_eq!(e.reason(), "not_allowed");
            }
        }
        assert!(list.check(&[]).is_err());
    }

    #[test]
    fn names_never_look_like_options() {
        for ok in [
            "nginx",
            "nginx.service",
            "getty@tty1.service",
            "a:b",
            "a-b_c",
        ] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in ["", "-H", "--host=x", "a b", "a/b", "a=b", "é", "a\\x2d"] {
            assert!(!is_name(bad), "{bad}");
        }
    }

    #[test]
    fn refusals_are_command_blocked_with_a_reason() {
        let e = RpcError::from(Refusal::Metacharacter(';'));
        assert_eq!(e.code, code::COMMAND_BLOCKED);
        assert_eq!(e.data, Some(json!({"reason": "metacharacter"})));
        let e = RpcError::from(Refusal::NotAllowed(shown(&v(&[
            "mysql",
            "--password=hunter2",
            "-e",
            "status",
        ]))));
        assert!(e.message.contains("mysql (3 arguments)"), "{}", e.message);
        assert!(!e.message.contains("hunter2"), "{}", e.message);
    }
}
