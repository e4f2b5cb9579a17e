//! Image references in the normal form the host policy's `images` patterns are written in:
//! `registry/repository:tag` (`nginx` is `docker.io/library/nginx:latest`,
//! `ghcr.io/acme/app` is `ghcr.io/acme/app:latest`, a digest is kept as `…@sha256:…`).

use crate::policy::glob;

/// Docker Hub's canonical name and its aliases.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_ALIASES: &[&str] = &["index.docker.io", "registry-1.docker.io"];

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `registry/path`, e.g. `docker.io/library/nginx`.
    pub repository: String,
    /// `:tag` and/or `@digest` as written, `:latest` when neither was.
    pub suffix: String,
}

impl ImageRef {
    /// `registry/path:tag[@digest]`.
    pub fn full(&self) -> String {
        format!("{}{}", self.repository, self.suffix)
    }
}

/// Whether `image` is an image id (`sha256:…` or 12–64 hex digits) rather than a reference.
pub fn is_id(image: &str) -> bool {
    let hex = image.strip_prefix("sha256:").unwrap_or(image);
    (image.starts_with("sha256:") || (12..=64).contains(&hex.len()))
        && !hex.is_empty()
        && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// Normalises a reference: Docker Hub's registry and `library/` made explicit, the registry
/// lower-cased, `:latest` added when there is neither tag nor digest.
pub fn normalize(reference: &str) -> Result<ImageRef, String> {
    let r = reference.trim();
    if r.is_empty() || r.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("is not an image reference".into());
    }
    let (name, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    let (name, tag) = match name.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (name, None),
    };
    let repository = repository(name);
    let path = repository.split_once('/').map_or("", |(_, p)| p);
    let path_ok = !path.is_empty()
        && path.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    if !path_ok || tag == Some("") || digest == Some("") {
        return Err("is not a valid image reference".into());
    }
    let mut suffix = String::new();
    if let Some(t) = tag {
        suffix.push(':');
        suffix.push_str(t);
    }
    if let Some(d) = digest {
        suffix.push('@');
        suffix.push_str(d);
    }
    if suffix.is_empty() {
        suffix.push_str(":latest");
    }
    Ok(ImageRef { repository, suffix })
}

/// `registry/path` of a name without tag or digest: the first component is a registry when it
/// holds `.` or `:` or is `localhost` (for a pattern, also when it holds `*`).
fn repository(name: &str) -> String {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':', '*']) || first == "localhost" => {
            let registry = first.to_ascii_lowercase();
            let registry = if DOCKER_HUB_ALIASES.contains(&registry.as_str()) {
                DOCKER_HUB.to_owned()
            } else {
                registry
            };
            if registry == DOCKER_HUB && !rest.contains('/') {
                format!("{DOCKER_HUB}/library/{rest}")
            } else {
                format!("{registry}/{rest}")
            }
        }
        Some(_) => format!("{DOCKER_HUB}/{name}"),
        None => format!("{DOCKER_HUB}/library/{name}"),
    }
}

/// Normalises a policy pattern the way references are (`nginx` → `docker.io/library/nginx`,
/// `acme/*` → `docker.io/acme/*`); `*` alone stays `*`. No tag is added: a pattern without one
/// matches every tag.
pub fn normalize_pattern(pattern: &str) -> Result<String, String> {
    let p = pattern.trim();
    if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be an image reference pattern".into());
    }
    if p == "*" {
        return Ok(p.to_owned());
    }
    let (name, rest) = match p.find(['@']).or_else(|| {
        // A `:` after the last `/` starts the tag part.
        let last_slash = p.rfind('/').map_or(0, |i| i + 1);
        p[last_slash..].find(':').map(|i| last_slash + i)
    }) {
        Some(i) => (&p[..i], &p[i..]),
        None => (p, ""),
    };
    Ok(format!("{}{rest}", repository(name)))
}

/// Whether a normalised reference matches one normalised pattern: the pattern matches the full
/// reference, or the repository alone (so a pattern without a tag allows every tag).
pub fn matches(pattern: &str, image: &ImageRef) -> bool {
    glob(pattern, &image.full()) || glob(pattern, &image.repository)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalized() {
        let cases = [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.27", "docker.io/library/nginx:1.27"),
            ("library/nginx", "docker.io/library/nginx:latest"),
            ("docker.io/nginx", "docker.io/library/nginx:latest"),
            (
                "index.docker.io/library/nginx",
                "docker.io/library/nginx:latest",
            ),
            ("acme/app:2", "docker.io/acme/app:2"),
            ("GHCR.IO/acme/app", "ghcr.io/acme/app:latest"),
            (
                "127.0.0.1:5055/tomo-test/busybox",
                "127.0.0.1:5055/tomo-test/busybox:latest",
            ),
            ("localhost/app", "localhost/app:latest"),
            ("nginx@sha256:0123", "docker.io/library/nginx@sha256:0123"),
            (
                "nginx:1@sha256:0123",
                "docker.io/library/nginx:1@sha256:0123",
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(
                normalize(raw).map(|r| r.full()),
                Ok(want.to_owned()),
                "{raw}"
            );
        }
        for bad in ["", "a b", "Nginx", "nginx:", "x//y", "@sha256:1"] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patterns_match_normalized_references() {
        let allowed = |pattern: &str, image: &str| {
            let p = normalize_pattern(pattern).expect("pattern");
            matches(&p, &normalize(image).expect("image"))
        };
        assert!(allowed("docker.io/library/*", "nginx"));
        assert!(allowed("docker.io/library/*", "nginx:1.27"));
        assert!(allowed("nginx", "nginx:1.27"));
        assert!(allowed("nginx:1.*", "nginx:1.27"));
        assert!(!allowed("nginx:1.*", "nginx:2"));
        assert!(allowed("ghcr.io/acme/*", "ghcr.io/acme/app:3"));
        assert!(!allowed("ghcr.io/acme/*", "ghcr.io/acme-evil/app:3"));
        assert!(!allowed("ghcr.io/acme/*", "ghcr.io.evil.com/acme/app"));
        assert!(!allowed("docker.io/library/*", "acme/app"));
        assert!(allowed("acme/*", "docker.io/acme/app"));
        assert!(allowed("*", "anything/at:all"));
        assert!(allowed(
            "127.0.0.1:5055/*",
            "127.0.0.1:5055/tomo-test/busybox"
        ));
    }

    #[test]
    fn image_ids_are_told_apart() {
        assert!(is_id("sha256:0123456789ab"));
        assert!(is_id("0123456789ab"));
        assert!(!is_id("nginx"));
        assert!(!is_id("abc"));
        assert!(!is_id("sha256:"));
    }
}
