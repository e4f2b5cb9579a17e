//! Property tests of `system.exec`'s splitter and allowlist (issue 4, "Property tests for … the
//! exec parser"): re-quoted words split back to themselves, an unquoted shell metacharacter or
//! any control character refuses the line, quoting never lets a metacharacter act, and an
//! admitted argument vector carries an option only where its allowlist entry spells it.

use proptest::prelude::*;
use tomo_agent::system::command::{
    AllowEntry, Allowlist, ArgPattern, BUILTIN, METACHARACTERS, Refusal, split,
};

/// Words a shell reads as themselves, unquoted.
fn safe_word() -> impl Strategy<Value = String> {
    "[A-Za-z0-9@%+=,._:/-]{1,12}"
}

/// Any word without a control character: spaces, quotes, backslashes and metacharacters
/// included.
fn any_word() -> impl Strategy<Value = String> {
    "[ -~\u{a0}-\u{24f}\u{4e00}-\u{4e0f}]{0,12}"
}

/// Characters refused anywhere on a line, quoted or not: C0 and C1 controls but tab, line and
/// paragraph separators, and bidirectional formatting.
fn control() -> impl Strategy<Value = char> {
    prop_oneof![
        (0u32..0x20).prop_filter("tab is a separator", |c| *c != 0x09),
        0x7fu32..0xa0,
        prop::sample::select(vec![
            0x061c, 0x200e, 0x200f, 0x2028, 0x2029, 0x202a, 0x202e, 0x2066, 0x2069, 0xfeff
        ]),
    ]
    .prop_map(|c| char::from_u32(c).expect("a scalar value"))
}

fn metachar() -> impl Strategy<Value = char> {
    prop::sample::select(METACHARACTERS.to_vec())
}

/// Each word single-quoted, or double-quoted with `"` and `\` escaped when it holds a `'`.
fn quote(word: &str) -> String {
    if word.contains('\'') {
        let mut out = String::from("\"");
        for c in word.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    } else {
        format!("'{word}'")
    }
}

/// Each character of the word escaped with a backslash.
fn escape(word: &str) -> String {
    word.chars().flat_map(|c| ['\\', c]).collect()
}

/// What a `<name>` placeholder admits, stated independently of the code under test.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._:-".contains(c))
}

/// What a `<count>` placeholder admits.
fn is_count(s: &str) -> bool {
    (1..=6).contains(&s.len()) && s.chars().all(|c| c.is_ascii_digit())
}

/// A filler for a placeholder: often a name or a count, often an option or a hostile word.
fn filler() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9@._:-]{1,10}",
        "[0-9]{1,8}",
        "-{1,2}[A-Za-z][A-Za-z=]{0,8}",
        any_word(),
    ]
}

/// An argument vector shaped like an entry, each placeholder filled with `fills` in turn.
fn shaped(entry: &AllowEntry, fills: &[String]) -> Vec<String> {
    let mut argv = vec![entry.program.to_string()];
    for (i, p) in entry.args.iter().enumerate() {
        argv.push(match p {
            ArgPattern::Literal(l) => l.to_string(),
            ArgPattern::Name | ArgPattern::Count => fills[i % fills.len()].clone(),
        });
    }
    argv
}

/// An argument vector the entry admits: a name and a count where it has placeholders.
fn admissible(entry: &AllowEntry) -> Vec<String> {
    let mut argv = vec![entry.program.to_string()];
    for p in &entry.args {
        argv.push(match p {
            ArgPattern::Literal(l) => l.to_string(),
            ArgPattern::Name => "web".to_owned(),
            ArgPattern::Count => "10".to_owned(),
        });
    }
    argv
}

/// An admitted vector's arguments: shell-inert, and an option only where the entry has that
/// literal word.
fn assert_admitted_is_inert(argv: &[String], entry: &AllowEntry) -> Result<(), TestCaseError> {
    prop_assert_eq!(argv.len(), entry.args.len() + 1);
    for (arg, pattern) in argv[1..].iter().zip(&entry.args) {
        prop_assert!(!arg.is_empty());
        for c in arg.chars() {
            prop_assert!(
                !c.is_control() && !c.is_whitespace(),
                "{:?} in {:?}",
                c,
                argv
            );
            prop_assert!(!METACHARACTERS.contains(&c), "{:?} in {:?}", c, argv);
            prop_assert!(!matches!(c, '\'' | '"' | '\\'), "{:?} in {:?}", c, argv);
        }
        if arg.starts_with('-') {
            prop_assert!(
                matches!(pattern, ArgPattern::Literal(l) if l == arg),
                "option {:?} of {:?} where {} has {:?}",
                arg,
                argv,
                entry,
                pattern
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn safe_words_round_trip_bare_and_quoted(words in prop::collection::vec(safe_word(), 0..8)) {
        prop_assert_eq!(split(&words.join(" ")), Ok(words.clone()));
        let quoted: Vec<String> = words.iter().map(|w| quote(w)).collect();
        prop_assert_eq!(split(&quoted.join(" \t ")), Ok(words));
    }

    #[test]
    fn quoted_or_escaped_words_come_back_literally(words in prop::collection::vec(any_word(), 1..6)) {
        // Quoting smuggles nothing: metacharacters, quotes and backslashes inside quotes are
        // part of one word, and the line is not refused for them.
        let quoted: Vec<String> = words.iter().map(|w| quote(w)).collect();
        prop_assert_eq!(split(&quoted.join(" ")), Ok(words.clone()));
        let nonempty: Vec<String> = words.into_iter().filter(|w| !w.is_empty()).collect();
        let escaped: Vec<String> = nonempty.iter().map(|w| escape(w)).collect();
        prop_assert_eq!(split(&escaped.join(" ")), Ok(nonempty));
    }

    #[test]
    fn an_unquoted_metacharacter_refuses_the_line(
        before in prop::collection::vec(any_word(), 0..4),
        glued in safe_word(),
        m in metachar(),
        after in "[ -~]{0,16}",
    ) {
        // Whatever precedes it is balanced; whatever follows cannot take it back.
        let before: Vec<String> = before.iter().map(|w| quote(w)).collect();
        for line in [
            format!("{} {m}{after}", before.join(" ")),
            format!("{} {glued}{m}{after}", before.join(" ")),
        ] {
            prop_assert_eq!(split(&line), Err(Refusal::Metacharacter(m)), "{:?}", line);
        }
    }

    #[test]
    fn a_control_character_refuses_the_line_even_quoted(
        before in "[ -~]{0,16}",
        c in control(),
        after in "[ -~]{0,16}",
    ) {
        for line in [
            format!("{before}{c}{after}"),
            format!("'{before}{c}{after}'"),
            format!("\"{c}\" {after}"),
            format!("{before}\\{c}"),
        ] {
            prop_assert_eq!(split(&line), Err(Refusal::ControlCharacter(c)), "{:?}", line);
        }
    }

    #[test]
    fn whatever_is_admitted_is_inert(line in "[ -~\t]{0,40}") {
        let list = Allowlist::builtin();
        if let Ok(argv) = split(&line)
            && let Ok(entry) = list.check(&argv)
        {
            assert_admitted_is_inert(&argv, entry)?;
        }
    }

    #[test]
    fn placeholders_never_admit_options(
        index in 0..BUILTIN.len(),
        fills in prop::collection::vec(filler(), 1..3),
    ) {
        let list = Allowlist::builtin();
        let entry = &list.entries()[index];
        let argv = shaped(entry, &fills);
        // The rule, stated apart: each placeholder's value is a name or a count.
        let fits = entry.args.iter().zip(&argv[1..]).all(|(p, a)| match p {
            ArgPattern::Literal(l) => a == l.as_ref(),
            ArgPattern::Name => is_name(a),
            ArgPattern::Count => is_count(a),
        });
        match list.check(&argv) {
            Ok(admitting) => {
                assert_admitted_is_inert(&argv, admitting)?;
                prop_assert!(fits || admitting != entry, "{:?}", argv);
            }
            Err(e) => {
                prop_assert!(!fits, "{:?} refused: {}", argv, e);
                prop_assert_eq!(e.reason(), "not_allowed");
            }
        }
        // And through the splitter, quoted as a client would send it.
        let line: Vec<String> = argv.iter().map(|w| quote(w)).collect();
        let split_back = split(&line.join(" "));
        prop_assert_eq!(split_back.as_ref(), Ok(&argv));
    }

    #[test]
    fn an_added_option_or_argument_is_refused(
        index in 0..BUILTIN.len(),
        extra in prop_oneof!["-[A-Za-z]", "--[a-z]{1,8}(=[a-z/]{0,6})?", "[a-z/]{1,8}"],
        at in 0usize..8,
    ) {
        let list = Allowlist::builtin();
        let entry = &list.entries()[index];
        let mut argv = admissible(entry);
        prop_assert!(list.check(&argv).is_ok(), "{:?}", argv);
        argv.insert(1 + at % argv.len(), extra.clone());
        if let Ok(admitting) = list.check(&argv) {
            // Only an entry that spells the added word literally, at that place, may take it.
            assert_admitted_is_inert(&argv, admitting)?;
        }
    }

    #[test]
    fn policy_entries_parse_back_and_admit_only_their_literals(
        program in "[a-z][a-z0-9._+-]{0,8}",
        args in prop::collection::vec(prop_oneof![
            Just("<name>".to_owned()),
            Just("<count>".to_owned()),
            "-{0,2}[a-z][a-z0-9=._/-]{0,6}",
        ], 0..4),
        fills in prop::collection::vec(filler(), 1..3),
    ) {
        let spec = std::iter::once(program).chain(args).collect::<Vec<_>>().join(" ");
        let entry = AllowEntry::parse(&spec).expect("a well-formed spec");
        prop_assert_eq!(entry.to_string(), spec.clone());
        prop_assert_eq!(AllowEntry::parse(&entry.to_string()), Ok(entry.clone()));
        let mut list = Allowlist::default();
        list.push(entry.clone());
        let argv = shaped(&entry, &fills);
        if let Ok(admitting) = list.check(&argv) {
            assert_admitted_is_inert(&argv, admitting)?;
        }
    }

    #[test]
    fn specs_that_would_need_quoting_are_refused(
        word in "[a-z]{0,3}",
        bad in prop_oneof![metachar(), Just('\''), Just('"'), Just('\\'), control()],
        rest in "[a-z]{0,3}",
    ) {
        let spec = format!("cmd {word}{bad}{rest}");
        prop_assert!(AllowEntry::parse(&spec).is_err(), "{:?}", spec);
    }
}
