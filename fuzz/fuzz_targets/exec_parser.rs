//! `system.exec`'s splitter and allowlist on arbitrary text: the first part is the command line;
//! after a line `---`, each further line is an allowlist spec that a host policy could add.
//!
//! Never panics. Splitting re-quoted words gives the same words. An argument vector the
//! allowlist admits holds no shell metacharacter, quote, backslash, whitespace or control
//! character, and an argument starting with `-` only where the entry spells that exact word.
//! A spec that parses prints back as itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tomo_agent::system::command::{
    AllowEntry, Allowlist, ArgPattern, METACHARACTERS, Refusal, split,
};
use tomo_proto::rpc::{RpcError, code};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (line, specs) = text.split_once("\n---\n").unwrap_or((text, ""));
    let mut list = Allowlist::builtin();
    for spec in specs.lines() {
        if let Ok(entry) = AllowEntry::parse(spec) {
            assert_eq!(AllowEntry::parse(&entry.to_string()).as_ref(), Ok(&entry));
            for a in &entry.args {
                if let ArgPattern::Literal(l) = a {
                    assert!(
                        !l.is_empty() && l.chars().all(plain),
                        "{spec:?}: literal {l:?}"
                    );
                }
            }
            list.push(entry);
        }
    }
    let argv = match split(line) {
        Ok(argv) => argv,
        Err(r) => return refused(r),
    };
    assert_eq!(split(&requote(&argv)).as_ref(), Ok(&argv), "{line:?}");
    match list.check(&argv) {
        Ok(entry) => admitted(&argv, entry),
        Err(r) => refused(r),
    }
});

/// What an admitted vector may hold.
fn admitted(argv: &[String], entry: &AllowEntry) {
    assert!(entry.matches(argv));
    let (program, args) = argv
        .split_first()
        .expect("an admitted vector has a program");
    assert!(
        !program.contains('/') && !program.starts_with(['-', '.']),
        "{argv:?}"
    );
    assert_eq!(args.len(), entry.args.len());
    for (arg, pattern) in args.iter().zip(&entry.args) {
        assert!(
            !arg.is_empty() && arg.chars().all(plain),
            "{argv:?}: {arg:?}"
        );
        if arg.starts_with('-') {
            assert!(
                matches!(pattern, ArgPattern::Literal(l) if l == arg),
                "{argv:?}: option {arg:?} where {entry} has {pattern:?}"
            );
        }
    }
}

/// A character that means nothing to a shell and is visible.
fn plain(c: char) -> bool {
    !(c.is_whitespace()
        || c.is_control()
        || METACHARACTERS.contains(&c)
        || matches!(c, '\'' | '"' | '\\'))
}

fn refused(r: Refusal) {
    let e = RpcError::from(r);
    assert_eq!(e.code, code::COMMAND_BLOCKED);
    assert!(e.data.is_some());
}

/// Each word single-quoted, or double-quoted with `"` and `\` escaped when it holds a `'`.
fn requote(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.contains('\'') {
                let escaped: String = w
                    .chars()
                    .flat_map(|c| match c {
                        '"' | '\\' => vec!['\\', c],
                        c => vec![c],
                    })
                    .collect();
                format!("\"{escaped}\"")
            } else {
                format!("'{w}'")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
