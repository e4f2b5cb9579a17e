//! Output caps: a response never exceeds the agent's limit, and cut output says it was cut.

/// Collects bytes up to a limit, remembering whether anything was dropped.
#[derive(Debug, Clone)]
pub struct Capped {
    buf: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl Capped {
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            truncated: false,
        }
    }

    /// Appends what fits; returns `false` once the cap is reached.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        let room = self.limit.saturating_sub(self.buf.len());
        if bytes.len() > room {
            self.buf.extend_from_slice(&bytes[..room]);
            self.truncated = true;
            return false;
        }
        self.buf.extend_from_slice(bytes);
        true
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The text, decoded lossily (a cut in the middle of a UTF-8 sequence becomes U+FFFD).
    pub fn into_text(self) -> (String, bool) {
        (
            String::from_utf8_lossy(&self.buf).into_owned(),
            self.truncated,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_the_limit_and_says_so() {
        let mut c = Capped::new(5);
        assert!(c.push(b"abc"));
        assert!(!c.truncated());
        assert!(!c.push(b"defg"));
        assert_eq!(c.into_text(), ("abcde".into(), true));
        let mut exact = Capped::new(3);
        assert!(exact.push(b"abc"));
        assert_eq!(exact.into_text(), ("abc".into(), false));
    }
}
