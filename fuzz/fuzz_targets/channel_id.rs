//! `ChannelId::parse` and `ChannelPattern::parse` on arbitrary text: never panic; what they
//! accept keeps its text exactly, re-parses to the same value and rebuilds from its parts.

#![no_main]

use cortex_protocol::channel::{ChannelId, ChannelPattern, is_valid_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Lossy, so that invalid UTF-8 still reaches the parsers as replacement characters.
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    let id = ChannelId::parse(text);
    if let Ok(channel) = &id {
        assert_eq!(channel.as_str(), text);
        assert_eq!(channel.to_string(), text);
        assert_eq!(ChannelId::parse(channel.as_str()).as_ref(), Ok(channel));
        assert_eq!(
            format!("{}:{}", channel.kind().as_str(), channel.id()),
            text
        );
        assert!(is_valid_id(channel.id()), "{:?}", channel.id());
        assert_eq!(
            ChannelId::new(channel.kind(), channel.id()).as_ref(),
            Ok(channel)
        );
        let json = serde_json::to_string(channel).expect("a channel id serializes");
        let back: ChannelId = serde_json::from_str(&json).expect("and deserializes");
        assert_eq!(&back, channel);
    }

    match ChannelPattern::parse(text) {
        Ok(pattern) => {
            assert_eq!(pattern.to_string(), text);
            assert_eq!(
                ChannelPattern::parse(&pattern.to_string()),
                Ok(pattern.clone())
            );
            match &pattern {
                ChannelPattern::Exact(channel) => {
                    assert_eq!(id.as_ref(), Ok(channel), "an exact pattern is a channel id");
                    assert!(pattern.matches(channel));
                }
                ChannelPattern::Kind(kind) => {
                    assert!(id.is_err(), "`*` is not a channel id");
                    let any = ChannelId::new(*kind, "x").expect("x is a valid id");
                    assert!(pattern.matches(&any));
                }
            }
        }
        Err(_) => assert!(id.is_err(), "every channel id is a pattern: {text:?}"),
    }
});
