//! The signed envelope, from raw text: an agent trusting the fuzzers' fixed command key reads
//! arbitrary frames and runs every request through its admission pipeline (`Guard::admit`).
//!
//! It never panics, and it never admits anything: arbitrary input cannot carry a valid signature
//! of the fixed key. The only requests whose signature verifies are the corpus's own signed seeds
//! (`tomo_fuzz::SIGNED_SEEDS`), and they are signed far outside the replay window, so they are
//! refused too — but only after the signature, so a request that gets past the signature check
//! must be one of them, part for part.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tomo_agent::pipeline::Guard;
use tomo_fuzz::{SIGNED_SEEDS, Signer, admit, refused_before_verification, signed_parts};
use tomo_proto::rpc::{Frame, Message, Request, parse_frame};

struct Fixture {
    guard: Guard,
    seeds: Vec<(String, String, String, String)>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let signer = Signer::new();
    let guard = signer.guard();
    check_seed_files(&signer);
    let seeds = SIGNED_SEEDS
        .iter()
        .map(|(id, method, meta, params)| {
            (
                (*id).to_owned(),
                (*method).to_owned(),
                (*meta).to_owned(),
                params.unwrap_or("").to_owned(),
            )
        })
        .collect();
    Fixture { guard, seeds }
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_frame(text) {
        Frame::Single(Message::Request(req)) => check(&req),
        Frame::Batch(items) => {
            for m in items {
                if let Message::Request(req) = m {
                    check(&req);
                }
            }
        }
        _ => {}
    }
});

fn check(req: &Request) {
    let f = &*FIXTURE;
    match admit(&f.guard, req) {
        Ok(a) => panic!("admitted an unsigned or replayed request: {req:?} → {a:?}"),
        Err(d) if refused_before_verification(&d) => {}
        Err(d) => {
            let parts = signed_parts(req);
            assert!(
                f.seeds.contains(&parts),
                "the signature of {parts:?} verified, yet it is not a seed ({})",
                d.reason
            );
            assert_eq!(
                d.reason, "stale",
                "a seed is refused as stale: {:?}",
                d.error
            );
        }
    }
}

/// The corpus's signed seeds are what the fixed key signs today; `TOMO_FUZZ_WRITE_SEEDS=1`
/// rewrites them (after a change to the signed payload).
fn check_seed_files(signer: &Signer) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/signed_envelope");
    let write = std::env::var_os("TOMO_FUZZ_WRITE_SEEDS").is_some();
    for (i, (id, method, meta, params)) in SIGNED_SEEDS.iter().enumerate() {
        let text = signer.request_text(id, method, meta, *params);
        let path = dir.join(format!("signed-{}.json", i + 1));
        if write {
            std::fs::write(&path, format!("{text}\n")).expect("write a seed");
        } else if let Ok(found) = std::fs::read_to_string(&path) {
            assert_eq!(
                found.trim_end(),
                text,
                "{} is stale: rerun with TOMO_FUZZ_WRITE_SEEDS=1",
                path.display()
            );
        }
    }
}
