//! Redaction of secrets in what the agent reports: container environments, event attributes,
//! audit records.
//!
//! The rule errs toward redacting: hiding a harmless value costs an operator a look at the host,
//! showing a password costs much more.
//!
//! - A **name** is secret-looking ([`is_secret_name`]) when, in upper case and with its words
//!   (split on anything that is not a letter or a digit) joined by `_`, it contains one of
//!   [`SECRET_MARKERS`] (`PASSWORD`, `PASSWD`, `PASS`, `SECRET`, `TOKEN`, `PRIVATE`, `CREDENTIAL`,
//!   `AUTH`, `CERT`, `APIKEY`, `API_KEY`, `ACCESS_KEY`, `SALT`, `DSN`), or when one of its words
//!   is `KEYS` or ends in `KEY` (`SSH_KEY`, `KEY_FILE`, `MASTERKEY`, `db.key`, but not
//!   `KEYBOARD_LAYOUT` or `KEYCLOAK_URL`). The words `AUTHOR` and `AUTHORS` alone do not count
//!   (`org.opencontainers.image.authors`). Its value becomes [`REDACTED`]. Substrings catch
//!   some harmless names (`COMPASS_URL`); that is the price of catching `MYSQL_ROOT_PASSWORD`,
//!   `PGPASS` and `apiKey` alike.
//! - In **any other value**, credentials in URLs are hidden: `scheme://user:pass@host` becomes
//!   `scheme://user:***@host`, for every URL in the value (`redis://:pw@a,redis://:pw@b`). A
//!   user without a password is kept (`postgres://postgres@db`).

pub mod params;
pub mod review;

use std::borrow::Cow;
use std::collections::BTreeMap;

/// What a redacted value is replaced by.
pub const REDACTED: &str = "***";

/// Substrings (upper case) that make a name secret-looking.
pub const SECRET_MARKERS: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "PASS",
    "SECRET",
    "TOKEN",
    "PRIVATE",
    "CREDENTIAL",
    "AUTH",
    "CERT",
    "APIKEY",
    "API_KEY",
    "ACCESS_KEY",
    "SALT",
    "DSN",
];

/// Well-known token shapes: prefix, the characters the secret is made of, and its shortest length
/// after the prefix. A match keeps the prefix: `ghp_***`.
type TokenShape = (&'static str, fn(u8) -> bool, usize);

const TOKEN_SHAPES: &[TokenShape] = &[
    ("tomo_", is_token_char, 16),
    ("rc_", is_token_char, 16),
    ("ghp_", is_token_char, 20),
    ("gho_", is_token_char, 20),
    ("ghs_", is_token_char, 20),
    ("github_pat_", is_token_char, 20),
    ("glpat-", is_token_char, 20),
    ("xoxb-", is_token_char, 10),
    ("xoxp-", is_token_char, 10),
    ("sk-", is_token_char, 20),
    // Stripe secret and restricted keys, webhook secrets; npm and PyPI publish tokens.
    ("sk_live_", is_token_char, 16),
    ("sk_test_", is_token_char, 16),
    ("rk_live_", is_token_char, 16),
    ("rk_test_", is_token_char, 16),
    ("whsec_", is_token_char, 16),
    ("npm_", is_token_char, 30),
    ("pypi-", is_token_char, 30),
    ("AKIA", is_upper_alnum, 16),
    ("ASIA", is_upper_alnum, 16),
];

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn is_upper_alnum(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

/// Hides secrets recognisable by their shape wherever they appear in a text: PEM private key
/// blocks (`-----BEGIN … PRIVATE KEY-----` to the matching end line, or to the end of the text)
/// and tokens of well-known formats (tomo tokens and registration codes, GitHub, GitLab, Slack,
/// OpenAI-style `sk-` keys, Stripe `sk_live_`/`rk_live_` keys and `whsec_` secrets, npm and PyPI
/// tokens, AWS access key ids). A token counts only at a word start and when
/// long enough, so `risk-free` and `desk-lamp` stay.
pub fn redact_known_secrets(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut last = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'-' && text[i..].starts_with("-----BEGIN ") {
            let header_end = text[i..].find('\n').map_or(text.len(), |n| i + n);
            if text[i..header_end].contains("PRIVATE KEY-----") {
                let end = text[header_end..]
                    .find("-----END ")
                    .and_then(|e| {
                        let from = header_end + e;
                        text[from + 9..].find("-----").map(|f| from + 9 + f + 5)
                    })
                    .unwrap_or(text.len());
                let o = out.get_or_insert_with(String::new);
                o.push_str(&text[last..i]);
                o.push_str("-----BEGIN PRIVATE KEY----- *** -----END PRIVATE KEY-----");
                last = end;
                i = end;
                continue;
            }
        }
        let at_word_start = i == 0 || !is_token_char(bytes[i - 1]);
        if at_word_start
            && let Some((prefix, len)) = TOKEN_SHAPES.iter().find_map(|(p, ok, min)| {
                if !text[i..].starts_with(p) {
                    return None;
                }
                let rest = &bytes[i + p.len()..];
                let n = rest.iter().take_while(|b| ok(**b)).count();
                (n >= *min).then_some((*p, p.len() + n))
            })
        {
            let o = out.get_or_insert_with(String::new);
            o.push_str(&text[last..i]);
            o.push_str(prefix);
            o.push_str(REDACTED);
            last = i + len;
            i = last;
            continue;
        }
        i += 1;
        while i < bytes.len() && !text.is_char_boundary(i) {
            i += 1;
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[last..]);
            Cow::Owned(o)
        }
    }
}

/// Whether a variable, label or attribute name looks like it holds a secret (see the module doc).
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let words: Vec<&str> = upper
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty() && *w != "AUTHOR" && *w != "AUTHORS")
        .collect();
    if words.iter().any(|w| *w == "KEYS" || w.ends_with("KEY")) {
        return true;
    }
    let joined = words.join("_");
    SECRET_MARKERS.iter().any(|m| joined.contains(m))
}

/// The value to show for `name=value`: [`REDACTED`] for a secret-looking name, else the value
/// with URL credentials and secrets of a known shape hidden ([`redact_known_secrets`]: a
/// `GITHUB=ghp_…` has an innocent name).
pub fn redact_value(name: &str, value: &str) -> String {
    if is_secret_name(name) {
        REDACTED.to_owned()
    } else {
        redact_known_secrets(&redact_url_credentials(value)).into_owned()
    }
}

/// Hides the password of every `scheme://user:password@host` in `value`.
pub fn redact_url_credentials(value: &str) -> Cow<'_, str> {
    if !value.contains("://") {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut changed = false;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the path, query, fragment, whitespace or the next list item.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | ',' | ';') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str(REDACTED);
                        out.push_str(&authority[userinfo_end..]);
                        changed = true;
                    }
                    None => out.push_str(authority),
                }
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(value)
    }
}

/// Docker's `NAME=value` environment entries as a map, redacted. An entry without `=` has an
/// empty value; of repeated names the last wins, as in the container.
pub fn redact_env<I, S>(entries: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    entries
        .into_iter()
        .map(|entry| {
            let entry = entry.as_ref();
            let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
            (name.to_owned(), redact_value(name, value))
        })
        .collect()
}

/// A name → value map (labels, event attributes), redacted.
pub fn redact_map<I, K, V>(pairs: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: AsRef<str>,
{
    pairs
        .into_iter()
        .map(|(k, v)| {
            let k = k.into();
            let v = redact_value(&k, v.as_ref());
            (k, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Red team, 2026-12-03: `GITHUB=ghp_…` and `FOO=AKIA…` in a container's environment were
    /// shown to read tokens in clear (innocent names).
    #[test]
    fn values_of_innocent_names_lose_secrets_of_a_known_shape() {
        let v = redact_value("GITHUB", "ghp_abcdefghijklmnopqrstuvwxyz0123456789");
        assert!(!v.contains("abcdefghij"), "{v}");
        let v = redact_value("FOO", "AKIAIOSFODNN7EXAMPLE");
        assert!(!v.contains("IOSFODNN7"), "{v}");
        assert_eq!(redact_value("MODE", "prod"), "prod");
    }

    #[test]
    fn known_secret_shapes_are_hidden_wherever_they_appear() {
        let cases = [
            (
                "token=tomo_AbCdEfGhIjKlMnOpQrSt done",
                "token=tomo_*** done",
            ),
            (
                "push with ghp_0123456789abcdefghijKLMNOP now",
                "push with ghp_*** now",
            ),
            ("id AKIAIOSFODNN7EXAMPLE.", "id AKIA***."),
            ("key sk-proj-abcdefghijklmnopqrstuvwx", "key sk-***"),
            ("code rc_0123456789abcdef0123_ab12", "code rc_***"),
            (
                "a\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nxyz\n-----END RSA PRIVATE KEY-----\nb",
                "a\n-----BEGIN PRIVATE KEY----- *** -----END PRIVATE KEY-----\nb",
            ),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\ncut off",
                "-----BEGIN PRIVATE KEY----- *** -----END PRIVATE KEY-----",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact_known_secrets(input), want, "{input:?}");
        }
    }

    #[test]
    fn ordinary_words_with_token_prefixes_stay() {
        for text in [
            "risk-free desk-lamp task-runner",
            "tomo_short",
            "ask-me-anything",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            "über grüße ✓ sk-",
            "mask-abcdefghijklmnopqrstuvwxyz",
        ] {
            assert_eq!(redact_known_secrets(text), text);
        }
    }

    #[test]
    fn secret_names() {
        let cases = [
            ("DB_PASSWORD", true),
            ("db_password", true),
            ("MYSQL_ROOT_PASSWD", true),
            ("PGPASS", true),
            ("PASSPHRASE", true),
            ("CLIENT_SECRET", true),
            ("GITHUB_TOKEN", true),
            ("accessToken", true),
            ("PRIVATE_KEY_PEM", true),
            ("AWS_ACCESS_KEY_ID", true),
            ("AWS_SECRET_ACCESS_KEY", true),
            ("API_KEY", true),
            ("STRIPE_APIKEY", true),
            ("apiKey", true),
            ("SSH_KEY", true),
            ("KEY", true),
            ("KEY_FILE", true),
            ("MASTERKEY", true),
            ("tls.key", true),
            ("ENCRYPTION_KEYS", true),
            ("GOOGLE_APPLICATION_CREDENTIALS", true),
            ("BASIC_AUTH", true),
            ("OAUTH_CLIENT", true),
            ("TLS_CERT", true),
            ("PASSWORD_SALT", true),
            ("SENTRY_DSN", true),
            ("HTTP_AUTHORIZATION", true),
            ("api-key", true),
            ("org.opencontainers.image.authors", false),
            ("AUTHOR", false),
            ("JWT_SIGNING_ALG", false),
            ("SESSION_TIMEOUT", false),
            ("PATH", false),
            ("HOME", false),
            ("TZ", false),
            ("LANG", false),
            ("KEYBOARD_LAYOUT", false),
            ("KEYCLOAK_URL", false),
            ("DATABASE_URL", false),
            ("POSTGRES_USER", false),
            ("com.docker.compose.project", false),
            ("", false),
        ];
        for (name, secret) in cases {
            assert_eq!(is_secret_name(name), secret, "{name}");
        }
    }

    #[test]
    fn url_credentials() {
        let cases = [
            (
                "postgres://app:s3cret@db:5432/app",
                "postgres://app:***@db:5432/app",
            ),
            ("redis://:pw@cache", "redis://:***@cache"),
            ("https://u:p@h?x=1", "https://u:***@h?x=1"),
            ("amqp://u:p:q@mq", "amqp://u:***@mq"),
            ("amqp://u:p@x@mq/v", "amqp://u:***@mq/v"),
            (
                "redis://:a@one:6379,redis://:b@two:6379",
                "redis://:***@one:6379,redis://:***@two:6379",
            ),
            (
                "see http://a:b@h and ftp://c:d@i",
                "see http://a:***@h and ftp://c:***@i",
            ),
            ("postgres://postgres@db", "postgres://postgres@db"),
            ("https://example.com/a@b:c", "https://example.com/a@b:c"),
            ("http://host:8080", "http://host:8080"),
            ("plain", "plain"),
            ("trailing://", "trailing://"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url_credentials(input), want, "{input}");
        }
        assert!(matches!(
            redact_url_credentials("http://h/p"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn env_entries() {
        let env = redact_env([
            "DB_PASSWORD=hunter2",
            "DATABASE_URL=postgres://app:hunter2@db/app",
            "PATH=/usr/bin:/bin",
            "EMPTY=",
            "NOVALUE",
            "EQ=a=b",
        ]);
        assert_eq!(env["DB_PASSWORD"], REDACTED);
        assert_eq!(env["DATABASE_URL"], "postgres://app:***@db/app");
        assert_eq!(env["PATH"], "/usr/bin:/bin");
        assert_eq!(env["EMPTY"], "");
        assert_eq!(env["NOVALUE"], "");
        assert_eq!(env["EQ"], "a=b");
        let labels = redact_map([("traefik.http.middlewares.x.basicauth.users", "u:$apr1$h")]);
        assert_eq!(labels.values().next().map(String::as_str), Some(REDACTED));
    }
}
