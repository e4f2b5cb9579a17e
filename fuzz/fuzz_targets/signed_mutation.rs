//! The signed envelope, structurally: a request genuinely signed with the trusted key, fresh
//! (nonce and timestamp of now) and addressed to this agent, then edited the way a proxy or a
//! compromised terminator could — bytes flipped, replaced, inserted or removed in its id, method,
//! meta, params or signature, parts dropped or swapped, the signature of another request or of
//! another key put in its place, or the whole text edited.
//!
//! The agent admits it exactly when what the signature covers (id, method, raw meta, raw params)
//! and the signature itself are unchanged: an edit that survives parsing must be refused, and
//! the untouched request must go through.

#![no_main]

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ring::signature::Ed25519KeyPair;
use tomo_fuzz::{AGENT_ID, SIGNED_SEEDS, Signer, admit, signed_parts};
use tomo_proto::rpc::{Frame, Message, Request, parse_frame};

#[derive(Debug, Arbitrary, Clone, Copy, PartialEq, Eq)]
enum Part {
    Id,
    Method,
    Meta,
    Params,
    Sig,
    Whole,
}

#[derive(Debug, Arbitrary)]
enum Edit {
    Flip {
        part: Part,
        at: u16,
        bit: u8,
    },
    Replace {
        part: Part,
        at: u16,
        len: u8,
        with: String,
    },
    Insert {
        part: Part,
        at: u16,
        text: String,
    },
    Truncate {
        part: Part,
        at: u16,
    },
    Drop {
        part: Part,
    },
    Swap {
        a: Part,
        b: Part,
    },
    /// The signature of another fresh request of the same key.
    SigOfOther {
        base: u8,
    },
    /// A signature of the current parts by another key (a proxy that re-signs).
    ResignWithOtherKey,
}

#[derive(Debug, Arbitrary)]
struct Input {
    base: u8,
    edits: Vec<Edit>,
}

/// The parts of a request being built, as bytes so that edits may break UTF-8.
#[derive(Debug, Clone, Default)]
struct Parts {
    id: Option<Vec<u8>>,
    method: Option<Vec<u8>>,
    meta: Option<Vec<u8>>,
    params: Option<Vec<u8>>,
    sig: Option<Vec<u8>>,
}

static SIGNER: LazyLock<Signer> = LazyLock::new(Signer::new);
static OTHER_KEY: LazyLock<Ed25519KeyPair> = LazyLock::new(|| {
    Ed25519KeyPair::from_seed_unchecked(b"another-key-not-the-pinned-one!!").expect("a seed")
});

fuzz_target!(|input: Input| {
    let original = fresh(input.base);
    let mut parts = original.clone();
    let mut whole: Vec<&Edit> = Vec::new();
    for e in &input.edits {
        if touches_whole(e) {
            whole.push(e);
        } else {
            apply(&mut parts, e);
        }
    }
    let mut text = assemble(&parts);
    for e in whole {
        edit_bytes(&mut text, e);
    }
    let Ok(text) = String::from_utf8(text) else {
        return;
    };
    let want = signed_of(&original);
    let want_sig = original
        .sig
        .as_deref()
        .and_then(|s| tomo_common::unb64(&utf8(s)));
    let guard = SIGNER.guard();
    let single = matches!(parse_frame(&text), Frame::Single(_));
    let requests: Vec<Request> = match parse_frame(&text) {
        Frame::Single(Message::Request(r)) => vec![r],
        Frame::Batch(items) => items
            .into_iter()
            .filter_map(|m| match m {
                Message::Request(r) => Some(r),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    for req in &requests {
        let unchanged = signed_parts(req) == want
            && req.sig.as_deref().and_then(tomo_common::unb64) == want_sig;
        match admit(&guard, req) {
            Ok(_) => assert!(unchanged, "an edited request was admitted: {text}"),
            Err(d) => assert!(
                !(unchanged && single),
                "the untouched request was refused ({}: {:?}): {text}",
                d.reason,
                d.error
            ),
        }
    }
});

/// A fresh request signed by the trusted key, one of the seed shapes.
fn fresh(base: u8) -> Parts {
    let (_, method, _, params) = SIGNED_SEEDS[usize::from(base) % SIGNED_SEEDS.len()];
    // Each input gets a fresh guard, so a counter is nonce enough (and keeps runs reproducible).
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nonce = format!("nonce-mut-{:016x}", NEXT.fetch_add(1, Ordering::Relaxed));
    let now = tomo_common::now_ms();
    let meta = format!(
        r#"{{"principal":"admin","role":"admin","aud":"{AGENT_ID}","nonce":"{nonce}","ts":{now},"exp":{}}}"#,
        now + 30_000
    );
    let id = format!("{}", u16::from(base) + 1);
    let sig = SIGNER.sign(&id, method, &meta, params);
    Parts {
        id: Some(id.into_bytes()),
        method: Some(method.as_bytes().to_vec()),
        meta: Some(meta.into_bytes()),
        params: params.map(|p| p.as_bytes().to_vec()),
        sig: Some(sig.into_bytes()),
    }
}

fn touches_whole(e: &Edit) -> bool {
    match e {
        Edit::Flip { part, .. }
        | Edit::Replace { part, .. }
        | Edit::Insert { part, .. }
        | Edit::Truncate { part, .. }
        | Edit::Drop { part } => *part == Part::Whole,
        Edit::Swap { a, b } => *a == Part::Whole || *b == Part::Whole,
        Edit::SigOfOther { .. } | Edit::ResignWithOtherKey => false,
    }
}

fn slot(p: &mut Parts, part: Part) -> &mut Option<Vec<u8>> {
    match part {
        Part::Id => &mut p.id,
        Part::Method => &mut p.method,
        Part::Meta => &mut p.meta,
        Part::Params => &mut p.params,
        Part::Sig | Part::Whole => &mut p.sig,
    }
}

fn apply(p: &mut Parts, e: &Edit) {
    match e {
        Edit::Drop { part } => *slot(p, *part) = None,
        Edit::Swap { a, b } => {
            let x = slot(p, *a).take();
            let y = std::mem::replace(slot(p, *b), x);
            *slot(p, *a) = y;
        }
        Edit::SigOfOther { base } => {
            let other = fresh(*base);
            p.sig = other.sig;
        }
        Edit::ResignWithOtherKey => {
            let (id, method, meta, params) = (
                p.id.as_deref().map(utf8).unwrap_or_default(),
                p.method.as_deref().map(utf8).unwrap_or_default(),
                p.meta.as_deref().map(utf8).unwrap_or_default(),
                p.params.as_deref().map(utf8).unwrap_or_default(),
            );
            let payload = tomo_proto::rpc::command_payload(&id, &method, &meta, &params);
            p.sig = Some(tomo_common::b64(OTHER_KEY.sign(&payload).as_ref()).into_bytes());
        }
        Edit::Flip { part, .. }
        | Edit::Replace { part, .. }
        | Edit::Insert { part, .. }
        | Edit::Truncate { part, .. } => {
            if let Some(bytes) = slot(p, *part) {
                edit_bytes(bytes, e);
            }
        }
    }
}

/// A byte-level edit of `bytes`; positions wrap around its length.
fn edit_bytes(bytes: &mut Vec<u8>, e: &Edit) {
    let at = |at: u16, len: usize| usize::from(at) % (len + 1);
    match e {
        Edit::Flip { at: i, bit, .. } => {
            if !bytes.is_empty() {
                let i = usize::from(*i) % bytes.len();
                bytes[i] ^= 1 << (bit % 8);
            }
        }
        Edit::Replace {
            at: i, len, with, ..
        } => {
            let start = at(*i, bytes.len());
            let end = (start + usize::from(*len)).min(bytes.len());
            bytes.splice(start..end, with.bytes());
        }
        Edit::Insert { at: i, text, .. } => {
            let start = at(*i, bytes.len());
            bytes.splice(start..start, text.bytes());
        }
        Edit::Truncate { at: i, .. } => bytes.truncate(at(*i, bytes.len())),
        Edit::Drop { .. } => bytes.clear(),
        Edit::Swap { .. } | Edit::SigOfOther { .. } | Edit::ResignWithOtherKey => {}
    }
}

/// The request's text, as the control plane lays it out (parts that were dropped are absent).
fn assemble(p: &Parts) -> Vec<u8> {
    let mut out = br#"{"jsonrpc":"2.0""#.to_vec();
    if let Some(id) = &p.id {
        out.extend_from_slice(br#","id":"#);
        out.extend_from_slice(id);
    }
    if let Some(m) = &p.method {
        out.extend_from_slice(br#","method":"#);
        out.extend_from_slice(json_string(m).as_bytes());
    }
    if let Some(params) = &p.params {
        out.extend_from_slice(br#","params":"#);
        out.extend_from_slice(params);
    }
    if let Some(meta) = &p.meta {
        out.extend_from_slice(br#","meta":"#);
        out.extend_from_slice(meta);
    }
    if let Some(sig) = &p.sig {
        out.extend_from_slice(br#","sig":"#);
        out.extend_from_slice(json_string(sig).as_bytes());
    }
    out.push(b'}');
    out
}

fn json_string(bytes: &[u8]) -> String {
    serde_json::to_string(&utf8(bytes)).unwrap_or_default()
}

fn utf8(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What the signature of the untouched request covers, as the agent will compute it.
fn signed_of(p: &Parts) -> (String, String, String, String) {
    let text = String::from_utf8(assemble(p)).expect("the untouched request is UTF-8");
    match parse_frame(&text) {
        Frame::Single(Message::Request(req)) => signed_parts(&req),
        other => panic!("the untouched request does not parse: {other:?}"),
    }
}
