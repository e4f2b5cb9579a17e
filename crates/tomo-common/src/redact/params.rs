//! What goes into an audit record's `params`: the request's params with secrets redacted by
//! general rules over the whole JSON tree (see [`redact_params`]), and bounded in size.

use std::borrow::Cow;

use serde_json::{Map, Value};
use tomo_proto::methods::{Method as _, StreamWrite};

use super::{REDACTED, is_secret_name, redact_url_credentials};

/// Longest string kept in recorded params; longer ones are cut and marked.
pub const MAX_STRING_BYTES: usize = 1024;
/// Most array items (and object members) kept in recorded params.
pub const MAX_ITEMS: usize = 256;
/// Quoted words are read again inside, this many levels deep.
const MAX_QUOTE_DEPTH: u8 = 3;

/// Params as they go into an audit record, with secrets redacted. The rules, applied to the
/// whole JSON tree whatever the method:
///
/// - A member whose **key** looks secret ([`is_secret_name`]: `password`, `auth`, `token`,
///   `DB_PASSWORD` in an `env` map, …) has its whole value replaced by `***`, objects included
///   (so registry credentials under `auth` are gone entirely).
/// - Every **string** has URL credentials hidden (`scheme://user:***@host`) and secrets of a
///   known shape hidden whatever their name ([`super::redact_known_secrets`]: `ghp_***`,
///   `sk_live_***`, `AKIA***`), and is read as a
///   command line (words split on blanks, quotes grouping, a fully quoted word read again
///   inside): `name=value` and `--name=value` with a secret-looking name keep the name only
///   (`DB_PASSWORD=***`, `--password=***`, `-Djdbc.password=***`); the word after a
///   secret-looking option (`--password X`, `--token X`) or header name (`Authorization:`) is
///   `***`, and so is the one after an authentication scheme (`Bearer X`, `Basic X`); `-p`
///   with a value attached (`-pX`, MySQL's and sshpass's password) is `-p***`; `user:secret`
///   after `-u`/`--user` (curl) keeps the user; secret-looking query parameters in URLs keep
///   their name (`?token=***`). An **array of strings** is read as an argument vector: the
///   element after `--password` is `***` whole.
/// - Strings longer than [`MAX_STRING_BYTES`] are cut and marked, arrays and objects beyond
///   [`MAX_ITEMS`] too.
/// - `stream.write`'s `data_b64` (keystrokes: maybe a password) becomes `"<N bytes>"`.
///
/// It errs toward hiding: `-print` reads as `-p***`, and the word after `--no-auth` is hidden.
/// `-p VALUE` with a blank is kept, since `-p` means many other things (`mkdir -p`, ports).
pub fn redact_params(method: &str, params: &Value) -> Value {
    let mut out = redact_value(params);
    if method == StreamWrite::NAME
        && let (Some(obj), Some(data)) = (
            out.as_object_mut(),
            params.get("data_b64").and_then(Value::as_str),
        )
    {
        let n = crate::unb64(data)
            .map(|b| b.len())
            .unwrap_or(data.len() / 4 * 3);
        obj.insert("data_b64".into(), Value::String(format!("<{n} bytes>")));
    }
    out
}

/// [`redact_params`] over raw params as received; `None` when there were none.
pub fn redact_raw_params(
    method: &str,
    params: Option<&serde_json::value::RawValue>,
) -> Option<Value> {
    let raw = params?;
    Some(match serde_json::from_str::<Value>(raw.get()) {
        Ok(v) => redact_params(method, &v),
        Err(_) => Value::String(format!("<unparseable params, {} bytes>", raw.get().len())),
    })
}

/// One free text (an error message that may quote the request) under the rules for strings of
/// [`redact_params`], cut when long.
pub fn redact_string(s: &str) -> String {
    let text = redact_text(s, 0).0;
    cut(&super::redact_known_secrets(&text)).into_owned()
}

/// Host output (logs, command output) for an operator or an assistant: each line under the rules
/// for strings of [`redact_params`], then [`super::redact_known_secrets`]; nothing is cut.
pub fn redact_output(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.split_inclusive('\n') {
        out.push_str(&redact_text(line, 0).0);
    }
    super::redact_known_secrets(&out).into_owned()
}

fn redact_value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(redact_string(s)),
        Value::Array(items) => redact_array(items),
        Value::Object(members) => {
            let mut out = Map::new();
            for (k, v) in members.iter().take(MAX_ITEMS) {
                let v = if is_secret_name(k) {
                    Value::String(REDACTED.into())
                } else {
                    redact_value(v)
                };
                out.insert(k.clone(), v);
            }
            if members.len() > MAX_ITEMS {
                out.insert(
                    "…".into(),
                    Value::String(format!("[{} more members]", members.len() - MAX_ITEMS)),
                );
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// An array, read as an argument vector when it holds strings: a secret option's value may be
/// the next element.
fn redact_array(items: &[Value]) -> Value {
    let mut out = Vec::with_capacity(items.len().min(MAX_ITEMS + 1));
    let mut expect = Expect::Nothing;
    for item in items.iter().take(MAX_ITEMS) {
        match item {
            Value::String(s) => {
                let text = match expect {
                    Expect::Secret if !s.starts_with("--") => REDACTED.to_owned(),
                    Expect::UserPass => user_pass(s),
                    _ => {
                        let (text, next) = redact_text(s, 0);
                        expect = next;
                        let text = super::redact_known_secrets(&text);
                        out.push(Value::String(cut(&text).into_owned()));
                        continue;
                    }
                };
                expect = Expect::Nothing;
                out.push(Value::String(text));
            }
            other => {
                expect = Expect::Nothing;
                out.push(redact_value(other));
            }
        }
    }
    if items.len() > MAX_ITEMS {
        out.push(Value::String(format!(
            "…[{} more items]",
            items.len() - MAX_ITEMS
        )));
    }
    Value::Array(out)
}

/// What the next word is, after the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Nothing,
    /// The value of a secret-looking option, header or authentication scheme.
    Secret,
    /// `user:password` (after `-u`/`--user`).
    UserPass,
}

/// Redacts a string read as a command line. Returns the text and what the word after its last
/// word would be (for argument vectors).
fn redact_text(s: &str, depth: u8) -> (String, Expect) {
    let s = redact_url_credentials(s);
    let mut out = String::with_capacity(s.len());
    let mut expect = Expect::Nothing;
    let mut last = 0;
    for (start, end) in words(&s) {
        out.push_str(&s[last..start]);
        let word = &s[start..end];
        match expect {
            // `Authorization: Bearer X`: the secret is after the scheme.
            Expect::Secret if is_auth_scheme(word) => out.push_str(word),
            Expect::Secret if !word.starts_with("--") => {
                out.push_str(REDACTED);
                expect = Expect::Nothing;
            }
            Expect::UserPass => {
                out.push_str(&user_pass(word));
                expect = Expect::Nothing;
            }
            _ => {
                let (text, next) = redact_word(word, depth);
                out.push_str(&text);
                expect = next;
            }
        }
        last = end;
    }
    out.push_str(&s[last..]);
    (out, expect)
}

/// The byte ranges of the words of `s`: blanks separate them, quotes group, a backslash takes the
/// next character (as `system.exec`'s splitter reads a line). Never fails.
fn words(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut quote: Option<char> = None;
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => {
                start.get_or_insert(i);
                chars.next();
            }
            (Some(_), _) => {}
            (None, c) if c.is_whitespace() => {
                if let Some(b) = start.take() {
                    out.push((b, i));
                }
            }
            (None, c) => {
                start.get_or_insert(i);
                if c == '\'' || c == '"' {
                    quote = Some(c);
                }
            }
        }
    }
    if let Some(b) = start {
        out.push((b, s.len()));
    }
    out
}

/// One word: its redacted text and what it says about the next word.
fn redact_word(word: &str, depth: u8) -> (String, Expect) {
    // A fully quoted word is read again inside (`sh -c "mysql --password=x"`, `-H 'Authorization:
    // Bearer x'`), a few levels deep.
    if depth < MAX_QUOTE_DEPTH
        && word.len() >= 2
        && let Some(q) = word.chars().next().filter(|c| *c == '\'' || *c == '"')
        && word.ends_with(q)
    {
        let inner = &word[1..word.len() - 1];
        return (
            format!("{q}{}{q}", redact_text(inner, depth + 1).0),
            Expect::Nothing,
        );
    }
    let dashes = word.len() - word.trim_start_matches('-').len();
    let body = &word[dashes..];
    if let Some((name, _)) = body.split_once('=')
        && is_name(name)
        && is_secret_name(name)
    {
        return (format!("{}{name}=***", &word[..dashes]), Expect::Nothing);
    }
    if dashes > 0 && !body.is_empty() {
        let name = body.split_once('=').map_or(body, |(n, _)| n);
        if dashes == 1 && body.starts_with('p') && body.len() > 1 {
            return ("-p***".into(), Expect::Nothing);
        }
        if dashes == 1 && body.starts_with('u') && body.len() > 1 && body.contains(':') {
            return (format!("-{}", user_pass(body)), Expect::Nothing);
        }
        if !body.contains('=') {
            if is_secret_name(name) {
                return (word.into(), Expect::Secret);
            }
            if name == "u" || name == "user" {
                return (word.into(), Expect::UserPass);
            }
        }
    }
    if let Some(name) = word.strip_suffix(':')
        && is_name(name)
        && is_secret_name(name)
    {
        return (word.into(), Expect::Secret);
    }
    if is_auth_scheme(word) {
        return (word.into(), Expect::Secret);
    }
    (query_secrets(word).into_owned(), Expect::Nothing)
}

/// `user:secret` → `user:***`; a word without a colon is kept (a user alone).
fn user_pass(word: &str) -> String {
    match word.split_once(':') {
        Some((user, _)) => format!("{user}:{REDACTED}"),
        None => word.into(),
    }
}

/// Whether `name` can be a variable or option name (not a URL or a sentence).
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn is_auth_scheme(word: &str) -> bool {
    ["bearer", "basic", "digest", "token"]
        .iter()
        .any(|s| word.eq_ignore_ascii_case(s))
}

/// Hides the values of secret-looking `name=value` pairs after `?`, `&` or `;` (query strings).
fn query_secrets(word: &str) -> Cow<'_, str> {
    if !word.contains('=') || !word.contains(['?', '&', ';']) {
        return Cow::Borrowed(word);
    }
    let mut out = String::with_capacity(word.len());
    let mut changed = false;
    let mut rest = word;
    while let Some(sep) = rest.find(['?', '&', ';']) {
        out.push_str(&rest[..=sep]);
        rest = &rest[sep + 1..];
        let end = rest.find(['&', ';', '#']).unwrap_or(rest.len());
        let pair = &rest[..end];
        match pair.split_once('=') {
            Some((name, _)) if is_secret_name(name) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
                changed = true;
            }
            _ => out.push_str(pair),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(word)
    }
}

/// A string cut to [`MAX_STRING_BYTES`] (at a character boundary), marked with its full size.
pub fn cut(s: &str) -> Cow<'_, str> {
    if s.len() <= MAX_STRING_BYTES {
        return Cow::Borrowed(s);
    }
    let mut end = MAX_STRING_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…[cut: {} bytes]", &s[..end], s.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One row per rule: method, params, what the redacted params must be.
    #[test]
    fn redaction_table() {
        let long = "a".repeat(3000);
        let cases: Vec<(&str, Value, Value)> = vec![
            // env maps, by key; URL credentials in the other values.
            (
                "docker.containers.run",
                json!({"image": "app", "env": {"DB_PASSWORD": "hunter2", "DATABASE_URL": "postgres://app:hunter2@db/app", "TZ": "UTC"}}),
                json!({"image": "app", "env": {"DB_PASSWORD": "***", "DATABASE_URL": "postgres://app:***@db/app", "TZ": "UTC"}}),
            ),
            // Registry credentials: gone entirely.
            (
                "docker.images.pull",
                json!({"image": "r.example/app", "auth": {"username": "u", "password": "p"}}),
                json!({"image": "r.example/app", "auth": "***"}),
            ),
            // Nested objects and arrays of objects.
            (
                "x.y",
                json!({"a": {"b": [{"api_key": "k", "url": "https://u:p@h/x"}]}, "labels": {"traefik.basicauth.users": "u:$apr1$"}}),
                json!({"a": {"b": [{"api_key": "***", "url": "https://u:***@h/x"}]}, "labels": {"traefik.basicauth.users": "***"}}),
            ),
            // Command lines.
            (
                "system.exec",
                json!({"command": "mysql -uroot -phunter2 --host db"}),
                json!({"command": "mysql -uroot -p*** --host db"}),
            ),
            (
                "system.exec",
                json!({"command": "tool --password=hunter2 --token abc --user x --verbose"}),
                json!({"command": "tool --password=*** --token *** --user x --verbose"}),
            ),
            (
                "system.exec",
                json!({"command": "git clone https://bob:hunter2@git.example/r.git"}),
                json!({"command": "git clone https://bob:***@git.example/r.git"}),
            ),
            (
                "system.exec",
                json!({"command": "curl -u bob:hunter2 -H 'Authorization: Bearer abc' 'https://h/x?a=1&access_token=abc'"}),
                json!({"command": "curl -u bob:*** -H 'Authorization: Bearer ***' 'https://h/x?a=1&access_token=***'"}),
            ),
            (
                "system.exec",
                json!({"command": "app --secret \"two words\" DB_PASS='x y' -Djdbc.password=x"}),
                json!({"command": "app --secret *** DB_PASS=*** -Djdbc.password=***"}),
            ),
            // Argument vectors: the value may be the next element.
            (
                "docker.containers.exec",
                json!({"container": "db", "cmd": ["mysql", "--password", "hunter2", "-e", "select 1"], "env": {"TZ": "UTC"}}),
                json!({"container": "db", "cmd": ["mysql", "--password", "***", "-e", "select 1"], "env": {"TZ": "UTC"}}),
            ),
            (
                "docker.containers.exec",
                json!({"container": "db", "cmd": ["sh", "-c", "PGPASSWORD=hunter2 psql -h db"]}),
                json!({"container": "db", "cmd": ["sh", "-c", "PGPASSWORD=*** psql -h db"]}),
            ),
            (
                "docker.containers.run",
                json!({"image": "app", "command": ["--api-key", "k1", "--port", "80"], "env_list": ["API_TOKEN=t", "A=b"]}),
                json!({"image": "app", "command": ["--api-key", "***", "--port", "80"], "env_list": ["API_TOKEN=***", "A=b"]}),
            ),
            // Keystrokes.
            (
                "stream.write",
                json!({"stream": "s1", "data_b64": "aHVudGVyMgo="}),
                json!({"stream": "s1", "data_b64": "<8 bytes>"}),
            ),
            // Harmless values stay as they are.
            (
                "system.exec",
                json!({"command": "df -h /srv", "timeout": 5}),
                json!({"command": "df -h /srv", "timeout": 5}),
            ),
            (
                "docker.containers.run",
                json!({"image": "nginx:1", "ports": [{"host": 8080, "container": 80}], "volumes": ["/srv/a:/a:ro"], "tty": true}),
                json!({"image": "nginx:1", "ports": [{"host": 8080, "container": 80}], "volumes": ["/srv/a:/a:ro"], "tty": true}),
            ),
            (
                "docker.containers.exec",
                json!({"cmd": ["sh", "-c", "su -c 'app \"--token x\"'"]}),
                json!({"cmd": ["sh", "-c", "su -c 'app \"--token ***\"'"]}),
            ),
            // Issue 12.8: secrets under innocent names, recognised by their shape (the
            // known-token patterns of `redact_known_secrets`), in env maps, lists and commands.
            (
                "docker.containers.run",
                json!({"image": "app", "env": {"GITHUB": "ghp_abcdefghijklmnopqrstuvwxyz0123", "STRIPE": "sk_live_abcdefghijklmnop1234"}, "env_list": ["GH=ghp_abcdefghijklmnopqrstuvwxyz0123"]}),
                json!({"image": "app", "env": {"GITHUB": "ghp_***", "STRIPE": "sk_live_***"}, "env_list": ["GH=ghp_***"]}),
            ),
            (
                "system.exec",
                json!({"command": "deploy --to prod glpat-abcdefghijklmnopqrstu AKIAABCDEFGHIJKLMNOP"}),
                json!({"command": "deploy --to prod glpat-*** AKIA***"}),
            ),
            // Long strings are cut and marked.
            (
                "x.y",
                json!({"note": long}),
                json!({"note": format!("{}…[cut: 3000 bytes]", "a".repeat(MAX_STRING_BYTES))}),
            ),
        ];
        for (method, params, want) in cases {
            assert_eq!(redact_params(method, &params), want, "{method} {params}");
        }
    }

    #[test]
    fn long_arrays_and_objects_are_cut() {
        let arr: Vec<Value> = (0..MAX_ITEMS + 10).map(|i| json!(i)).collect();
        let out = redact_params("x", &json!({ "a": arr }));
        let a = out["a"].as_array().expect("array");
        assert_eq!(a.len(), MAX_ITEMS + 1);
        assert_eq!(a[MAX_ITEMS], "…[10 more items]");
        let obj: Map<String, Value> = (0..MAX_ITEMS + 3)
            .map(|i| (format!("k{i:04}"), json!(i)))
            .collect();
        let out = redact_params("x", &Value::Object(obj));
        assert_eq!(out["…"], "[3 more members]");
    }

    #[test]
    fn raw_params() {
        let raw =
            serde_json::value::RawValue::from_string(r#"{"password":"x"}"#.into()).expect("raw");
        assert_eq!(
            redact_raw_params("x", Some(&raw)),
            Some(json!({"password": "***"}))
        );
        assert_eq!(redact_raw_params("x", None), None);
    }
}
