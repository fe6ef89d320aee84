//! `ChannelId` and `ChannelPattern` against the grammar of CONTRACT.md section 5, checked by an
//! independent reference predicate over generated strings.

use cortex_protocol::{ChannelId, ChannelKind, ChannelPattern};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};

const KINDS: [&str; 5] = ["agent", "swarm", "project", "org", "task"];

/// Near misses of a kind.
const NEAR_KINDS: &[&str] = &[
    "Agent", "agents", "", "org ", " task", "TASK", "proj", "org:", "*", "swarm\0",
];

/// Near misses of the `:` separator.
const NEAR_SEPARATORS: &[&str] = &["", "::", ";", ": ", " :", "\u{ff1a}"];

/// The contract's channel grammar, written out by hand: `<kind>:<id>` with kind one of the five.
fn reference_is_channel(s: &str) -> bool {
    KINDS.iter().any(|kind| {
        s.strip_prefix(kind)
            .and_then(|rest| rest.strip_prefix(':'))
            .is_some_and(reference_is_id)
    })
}

/// `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`, written out by hand.
fn reference_is_id(id: &str) -> bool {
    let alphanumeric = |c: char| matches!(c, 'A'..='Z' | 'a'..='z' | '0'..='9');
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(alphanumeric);
    first_ok
        && id.chars().count() <= 128
        && chars.all(|c| alphanumeric(c) || matches!(c, '.' | '_' | '-'))
}

/// A token allowlist entry: a channel id or `<kind>:*`.
fn reference_is_pattern(s: &str) -> bool {
    reference_is_channel(s) || KINDS.iter().any(|kind| s.strip_prefix(kind) == Some(":*"))
}

fn kind() -> impl Strategy<Value = ChannelKind> {
    select(ChannelKind::ALL.to_vec())
}

fn valid_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
}

fn valid_channel() -> impl Strategy<Value = (ChannelKind, String)> {
    (kind(), valid_id())
}

/// One of the five kinds, or a near miss.
fn kind_ish() -> impl Strategy<Value = &'static str> {
    prop_oneof![3 => select(KINDS.to_vec()), 1 => select(NEAR_KINDS)]
}

/// `:`, or a near miss.
fn separator_ish() -> impl Strategy<Value = &'static str> {
    prop_oneof![3 => Just(":"), 1 => select(NEAR_SEPARATORS)]
}

/// `<kind-ish><separator><id-ish>`: near the grammar on every side, so that both outcomes are common.
fn near_grammar() -> impl Strategy<Value = String> {
    let id = prop_oneof![
        3 => "[A-Za-z0-9][A-Za-z0-9._-]{0,127}",
        2 => "[A-Za-z0-9._-]{0,130}",
        2 => "[A-Za-z0-9._ /:é*\n-]{0,130}",
        2 => "[A-Za-z0-9][A-Za-z0-9._-]{126,129}",
        1 => "[._-][A-Za-z0-9._-]{0,8}",
        1 => "[a-z0-9]{0,3}[^A-Za-z0-9._-][a-z0-9]{0,3}",
    ];
    (kind_ish(), separator_ish(), id).prop_map(|(k, sep, id)| format!("{k}{sep}{id}"))
}

/// Valid UTF-8 made from arbitrary bytes (invalid sequences become U+FFFD).
fn lossy_bytes() -> impl Strategy<Value = String> {
    vec(any::<u8>(), 0..256).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Each byte as the char of the same value: control characters, NUL, `:` and Latin-1.
fn latin1_bytes() -> impl Strategy<Value = String> {
    vec(any::<u8>(), 0..256).prop_map(|b| b.into_iter().map(char::from).collect())
}

fn arbitrary_chars(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

fn assert_parse_matches_reference(s: &str) -> Result<(), TestCaseError> {
    let parsed = ChannelId::parse(s);
    prop_assert_eq!(parsed.is_ok(), reference_is_channel(s), "input {:?}", s);
    if let Ok(c) = parsed {
        prop_assert_eq!(c.as_str(), s);
    }
    Ok(())
}

proptest! {
    #[test]
    fn parse_agrees_with_the_grammar_on_arbitrary_strings(s in any::<String>()) {
        assert_parse_matches_reference(&s)?;
    }

    #[test]
    fn parse_agrees_with_the_grammar_on_arbitrary_unicode(s in arbitrary_chars(64)) {
        assert_parse_matches_reference(&s)?;
    }

    #[test]
    fn parse_agrees_with_the_grammar_on_byte_strings(s in prop_oneof![lossy_bytes(), latin1_bytes()]) {
        assert_parse_matches_reference(&s)?;
    }

    #[test]
    fn parse_agrees_with_the_grammar_on_very_long_strings(
        s in prop_oneof![
            arbitrary_chars(8192),
            (kind_ish(), "[A-Za-z0-9._-]{120,4096}").prop_map(|(k, id)| format!("{k}:{id}")),
        ]
    ) {
        assert_parse_matches_reference(&s)?;
    }


    #[test]
    fn valid_channel_ids_round_trip_through_every_view((kind, id) in valid_channel()) {
        let s = format!("{}:{id}", kind.as_str());
        let c = ChannelId::parse(&s).expect("valid by construction");
        prop_assert_eq!(c.as_str(), &s);
        prop_assert_eq!(c.kind(), kind);
        prop_assert_eq!(c.id(), &id);
        prop_assert_eq!(format!("{}:{}", c.kind().as_str(), c.id()), s.clone());
        prop_assert_eq!(c.to_string(), s.clone());
        prop_assert_eq!(&s.parse::<ChannelId>().expect("FromStr agrees"), &c);
        prop_assert_eq!(&ChannelId::new(kind, &id).expect("new agrees"), &c);

        let json = serde_json::to_string(&c).expect("serializes");
        prop_assert_eq!(&json, &serde_json::to_string(&s).expect("a string serializes"));
        prop_assert_eq!(&serde_json::from_str::<ChannelId>(&json).expect("deserializes"), &c);
    }

    #[test]
    fn json_deserialization_accepts_exactly_the_grammar(
        s in prop_oneof![near_grammar(), any::<String>()]
    ) {
        let from_text = serde_json::from_str::<ChannelId>(&json!(s).to_string());
        let from_value = serde_json::from_value::<ChannelId>(Value::String(s.clone()));
        prop_assert_eq!(from_text.is_ok(), reference_is_channel(&s), "input {:?}", s);
        prop_assert_eq!(from_value.is_ok(), reference_is_channel(&s), "input {:?}", s);
        if let (Ok(a), Ok(b)) = (from_text, from_value) {
            prop_assert_eq!(a.as_str(), &s);
            prop_assert_eq!(b.as_str(), &s);
        }
    }

    #[test]
    fn pattern_parse_agrees_with_the_grammar(
        s in prop_oneof![
            any::<String>(),
            near_grammar(),
            (kind_ish(), separator_ish(), select(&["*", "**", "*x", "x*", "* ", ""][..]))
                .prop_map(|(k, sep, star)| format!("{k}{sep}{star}")),
        ]
    ) {
        let parsed = ChannelPattern::parse(&s);
        prop_assert_eq!(parsed.is_ok(), reference_is_pattern(&s), "input {:?}", s);
        if let Ok(p) = parsed {
            prop_assert_eq!(p.to_string(), s);
        }
    }

    #[test]
    fn kind_pattern_matches_every_channel_of_its_kind_only(
        pattern_kind in kind(),
        (kind, id) in valid_channel(),
    ) {
        let pattern = ChannelPattern::parse(&format!("{}:*", pattern_kind.as_str()))
            .expect("kind:* is a pattern");
        prop_assert_eq!(&pattern, &ChannelPattern::Kind(pattern_kind));
        let channel = ChannelId::new(kind, &id).expect("valid by construction");
        prop_assert_eq!(pattern.matches(&channel), kind == pattern_kind);
    }

    #[test]
    fn exact_pattern_matches_only_its_own_channel(
        (a_kind, a_id) in (kind(), "[ab][.]?"),
        (b_kind, b_id) in (kind(), "[ab][.]?"),
    ) {
        let a = ChannelId::new(a_kind, &a_id).expect("valid by construction");
        let b = ChannelId::new(b_kind, &b_id).expect("valid by construction");
        let pattern = ChannelPattern::parse(a.as_str()).expect("a channel id is a pattern");
        prop_assert_eq!(&pattern, &ChannelPattern::Exact(a.clone()));
        prop_assert!(pattern.matches(&a));
        prop_assert_eq!(pattern.matches(&b), a.as_str() == b.as_str());
    }
}

proptest! {
    // Most failures of a grammar live at its edges: spend more cases there.
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn parse_agrees_with_the_grammar_near_the_grammar(s in near_grammar()) {
        assert_parse_matches_reference(&s)?;
    }
}

#[test]
fn id_of_128_bytes_is_accepted_and_129_refused() {
    for kind in KINDS {
        let longest = format!("{kind}:{}", "a".repeat(128));
        let too_long = format!("{kind}:{}", "a".repeat(129));
        assert!(ChannelId::parse(&longest).is_ok(), "{longest}");
        assert!(ChannelId::parse(&too_long).is_err(), "{too_long}");
    }
}

#[test]
fn only_the_five_kinds_are_accepted() {
    for kind in KINDS {
        assert!(ChannelId::parse(&format!("{kind}:x")).is_ok(), "{kind}");
    }
    for kind in [
        "Agent", "agents", "", "org ", " org", "TASK", "user", "projects", "*", "org\0",
    ] {
        let s = format!("{kind}:x");
        assert!(ChannelId::parse(&s).is_err(), "{s:?} should be refused");
    }
}

#[test]
fn id_refuses_leading_punctuation_and_characters_outside_the_set() {
    for id in [
        "", ".a", "_a", "-a", "a b", "a/b", "a:b", "é", "aé", "a*", "a\n", "a\0", "ä", "a+b",
    ] {
        let s = format!("task:{id}");
        assert!(ChannelId::parse(&s).is_err(), "{s:?} should be refused");
    }
    for id in ["a", "A", "0", "a.b_c-d", "a-", "a.", "9__", "p_4"] {
        let s = format!("task:{id}");
        assert!(ChannelId::parse(&s).is_ok(), "{s:?} should be accepted");
    }
}

#[test]
fn json_deserialization_refuses_values_that_are_not_strings() {
    for value in [
        json!(1),
        json!(null),
        json!(true),
        json!(["agent:x"]),
        json!({"agent": "x"}),
    ] {
        assert!(
            serde_json::from_value::<ChannelId>(value.clone()).is_err(),
            "{value} should be refused"
        );
    }
}

#[test]
fn wildcard_is_only_a_whole_id_after_a_known_kind() {
    for kind in KINDS {
        let s = format!("{kind}:*");
        let pattern = ChannelPattern::parse(&s).expect("kind:* is a pattern");
        assert_eq!(pattern.to_string(), s);
    }
    for bad in [
        "*:*",
        "*",
        "agent*",
        "Agent:*",
        "agent:**",
        "agent:*x",
        "agent:x*",
        "agent:* ",
        "agent:*:*",
        "agent;*",
        "",
    ] {
        assert!(
            ChannelPattern::parse(bad).is_err(),
            "{bad:?} should be refused"
        );
    }
}
