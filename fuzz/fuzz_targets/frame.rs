//! Frame parsing: whatever text arrives on a session, `parse_frame` and `Handshake::parse`
//! classify it without panicking, and every answer the agent or the control plane would build
//! from the result serialises without panicking. A response read from a frame is written back
//! as a frame that reads as the same response, and a handshake message as the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tomo_proto::handshake::Handshake;
use tomo_proto::rpc::{Frame, Id, Message, Response, RpcError, parse_frame};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_frame(text) {
        Frame::Single(m) => message(m),
        Frame::Batch(items) => {
            assert!(!items.is_empty(), "an empty batch is an error, not a batch");
            items.into_iter().for_each(message);
        }
        Frame::Error(e) => answer(Id::Null, e),
    }
    if let Ok(h) = Handshake::parse(text) {
        let again = h.to_json();
        if again.len() <= tomo_proto::MAX_HANDSHAKE_BYTES {
            assert_eq!(Handshake::parse(&again), Ok(h), "{again}");
        }
    }
});

/// What a receiver does with one message: answer it, or read the response.
fn message(m: Message) {
    match m {
        Message::Request(req) => {
            // The raw values are kept verbatim and are valid JSON themselves.
            for raw in [req.params.as_deref(), req.meta.as_deref()]
                .into_iter()
                .flatten()
            {
                assert!(serde_json::from_str::<&serde_json::value::RawValue>(raw.get()).is_ok());
            }
            if let Some(id) = req.id {
                answer(id, RpcError::method_not_found(&req.method));
            }
        }
        Message::Response(r) => {
            let text = r.to_json();
            match parse_frame(&text) {
                Frame::Single(Message::Response(again)) => assert_eq!(again, r, "{text}"),
                other => panic!("{text} reads back as {other:?}"),
            }
        }
        Message::Invalid(id, e) => answer(id, e),
    }
}

/// An error answer must serialise, and read back as itself.
fn answer(id: Id, e: RpcError) {
    let r = Response::err(id, e);
    let text = r.to_json();
    match parse_frame(&text) {
        Frame::Single(Message::Response(again)) => assert_eq!(again, r, "{text}"),
        other => panic!("{text} reads back as {other:?}"),
    }
}
