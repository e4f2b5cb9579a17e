//! Typed references to Docker objects: the only form in which a container, image, network,
//! volume or exec reaches the agent's Docker calls.
//!
//! Docker puts these references into the request path (`/containers/{ref}/json`), so a reference
//! holding `/`, `?`, `#` or `%` would reach another endpoint (`../../info#` answered Docker's
//! `/info` as a container). Each type is parsed once, when params are deserialized, with
//! Docker's own grammar, and cannot be built any other way: a method whose params take one cannot
//! forget the check. The grammar (docs/protocol.md, "References"):
//!
//! - container, volume, network: a name `[a-zA-Z0-9][a-zA-Z0-9_.-]+` (a leading `/`, as Docker
//!   prints names, is dropped), or an id or id prefix of 1–64 lowercase hex digits;
//! - image: Docker's reference grammar `[domain[:port]/]path[:tag][@digest]` (path components
//!   lowercase, separated by `.`, `_`, `__` or dashes), or an id `sha256:<64 hex>`;
//! - exec: the 64 hex digits Docker made it with.
//!
//! Every reference is at most [`MAX_REF_LEN`] bytes.

use serde::{Deserialize, Serialize};

/// Longest reference of any kind, bytes (Docker's limit on a repository name is 255).
pub const MAX_REF_LEN: usize = 255;

/// A reference that does not follow its kind's grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {kind} reference: {why}")]
pub struct RefError {
    /// `container`, `image`, `network`, `volume` or `exec`.
    pub kind: &'static str,
    /// The refused value, cut to 80 characters.
    pub value: String,
    pub why: &'static str,
}

impl RefError {
    fn new(kind: &'static str, value: &str, why: &'static str) -> Self {
        Self {
            kind,
            value: value.chars().take(80).collect(),
            why,
        }
    }
}

macro_rules! reference {
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $parse:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        #[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
        pub struct $ty(String);

        impl $ty {
            /// Parses `value` with this kind's grammar (see the module doc).
            pub fn parse(value: &str) -> Result<Self, RefError> {
                $parse(value)
                    .map(|v| Self(v.to_owned()))
                    .map_err(|why| RefError::new($kind, value, why))
            }

            /// The reference as Docker takes it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = RefError;
            fn try_from(value: String) -> Result<Self, RefError> {
                Self::parse(&value)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = RefError;
            fn from_str(value: &str) -> Result<Self, RefError> {
                Self::parse(value)
            }
        }

        impl From<$ty> for String {
            fn from(r: $ty) -> String {
                r.0
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

reference!(
    /// A container: its name, id or id prefix.
    ContainerRef,
    "container",
    name_or_id
);
reference!(
    /// A network: its name, id or id prefix.
    NetworkRef,
    "network",
    name_or_id
);
reference!(
    /// A volume, by name (Docker's volumes have no other id).
    VolumeRef,
    "volume",
    name_or_id
);
reference!(
    /// An image: a reference (`name[:tag][@digest]`) or an id (`sha256:…`, hex prefix).
    ImageRef,
    "image",
    image
);
reference!(
    /// An exec instance, by the id Docker gave it.
    ExecId,
    "exec",
    exec_id
);

fn length(value: &str) -> Result<(), &'static str> {
    match value.len() {
        0 => Err("it is empty"),
        n if n > MAX_REF_LEN => Err("it is longer than 255 bytes"),
        _ => Ok(()),
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Docker's name rule `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, or a hex id (prefix); a leading `/` dropped.
fn name_or_id(value: &str) -> Result<&str, &'static str> {
    let bare = value.strip_prefix('/').unwrap_or(value);
    length(bare)?;
    if bare.len() <= 64 && is_hex(bare) {
        return Ok(bare);
    }
    let mut bytes = bare.bytes();
    let first = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest = bare.len() >= 2
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if first && rest {
        Ok(bare)
    } else {
        Err("names are [a-zA-Z0-9][a-zA-Z0-9_.-]+, ids are hex")
    }
}

fn exec_id(value: &str) -> Result<&str, &'static str> {
    if value.len() == 64 && is_hex(value) {
        Ok(value)
    } else {
        Err("exec ids are 64 hex digits")
    }
}

const IMAGE_GRAMMAR: &str = "images are [domain[:port]/]path[:tag][@digest] or sha256:<id>";

/// Docker's reference grammar (distribution/reference), or an image id.
fn image(value: &str) -> Result<&str, &'static str> {
    length(value)?;
    if let Some(id) = value.strip_prefix("sha256:") {
        return if id.len() == 64 && is_hex(id) {
            Ok(value)
        } else {
            Err("an image id is sha256: and 64 hex digits")
        };
    }
    let (rest, digest) = match value.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (value, None),
    };
    let (name, tag) = match rest.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (rest, None),
    };
    let ok = digest.is_none_or(is_digest) && tag.is_none_or(is_tag) && is_image_name(name);
    if ok { Ok(value) } else { Err(IMAGE_GRAMMAR) }
}

/// `[domain/]path-component[/path-component]*`; the first component is a domain when it holds
/// `.` or `:`, is `localhost`, or has an upper-case letter (Docker's rule).
fn is_image_name(name: &str) -> bool {
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains(['.', ':'])
            || first == "localhost"
            || first.bytes().any(|b| b.is_ascii_uppercase())
        {
            if !is_domain(first) {
                return false;
            }
            parts.remove(0);
        }
    }
    parts.iter().all(|p| is_path_component(p))
}

/// `host[:port]`: dot-separated `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`, or `[ipv6]`.
fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (domain, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        })
}

/// `[a-z0-9]+` runs joined by one `.`, one `_`, `__`, or any number of `-`.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let dashes = sep.bytes().all(|x| x == b'-');
        if !(sep == "." || sep == "_" || sep == "__" || dashes) {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`.
fn is_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// `algorithm:hex` with at least 32 hex digits.
fn is_digest(d: &str) -> bool {
    let Some((alg, hex)) = d.split_once(':') else {
        return false;
    };
    let alg_ok = alg.split(['+', '.', '-', '_']).all(|c| {
        let b = c.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(|x| x.is_ascii_alphanumeric())
    });
    alg_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        for good in [
            "web-1",
            "a.b_c",
            "ab",
            "0",
            "abc123",
            "/web",
            &"f".repeat(64),
        ] {
            assert!(ContainerRef::parse(good).is_ok(), "{good:?}");
        }
        assert_eq!(
            ContainerRef::parse("/web").map(String::from),
            Ok("web".into())
        );
        let long = "a".repeat(256);
        for bad in [
            "",
            "/",
            "z",
            "-x",
            ".x",
            "_x",
            "a/b",
            "../../info#",
            "x?y",
            "x#",
            "x%2F",
            "a b",
            "é1",
            "x\n",
            "//x",
            &long,
        ] {
            assert!(ContainerRef::parse(bad).is_err(), "{bad:?}");
            assert!(VolumeRef::parse(bad).is_err(), "{bad:?}");
            assert!(NetworkRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn images_follow_dockers_reference_grammar() {
        for good in [
            "nginx",
            "nginx:1.27",
            "library/nginx",
            "docker.io/library/nginx:latest",
            "127.0.0.1:5055/tomo-test/busybox:latest",
            "localhost/app",
            "localhost:5000/a/b__c/d-e--f:v1_2.3-x",
            "GHCR.IO/acme/app",
            "[::1]:5000/app",
            "nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "nginx:1@sha256:0123456789abcdef0123456789abcdef",
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "0123456789ab",
        ] {
            assert!(ImageRef::parse(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "x//y",
            "@sha256:1",
            "../../info#",
            "busybox#x",
            "busybox%23",
            "busybox?force=1",
            "a/../b",
            "a..b",
            "a b",
            "nginx@sha256:short",
            "sha256:abc",
            "-a",
            "a-",
            "host:port/x",
            ":tag",
            "x:-tag",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exec_ids_are_full_hex_ids() {
        assert!(ExecId::parse(&"a".repeat(64)).is_ok());
        assert!(ExecId::parse("abc").is_err());
        assert!(ExecId::parse(&format!("{}/x", "a".repeat(62))).is_err());
    }

    #[test]
    fn deserializing_is_parsing() {
        let r: Result<ContainerRef, _> = serde_json::from_str(r#""../../info#""#);
        let e = r.expect_err("refused");
        assert!(
            e.to_string().contains("not a valid container reference"),
            "{e}"
        );
        let ok: ContainerRef = serde_json::from_str(r#""web""#).expect("a name");
        assert_eq!(serde_json::to_string(&ok).ok().as_deref(), Some(r#""web""#));
    }
}
