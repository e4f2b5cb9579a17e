//! Finding a host: [`resolve`] is the only way from what a caller typed to a host record.

use super::{Principal, Refusal};
use crate::AppState;
use crate::store::{HostRecord, StoreError};

/// The host a key names: its id, its hostname or a unique id prefix. A token's scope applies:
/// hosts outside it are invisible, by exact id too, and answer the same as a host that does not
/// exist (a different answer would tell a scoped token which ids exist). Every route that names
/// a host goes through here.
pub async fn resolve(state: &AppState, who: &Principal, key: &str) -> Result<HostRecord, Refusal> {
    match state.store.host(key).await {
        // Out of scope: looked up like an unknown key below, where it is filtered out.
        Ok(h) if !who.may_see(&h) => {}
        Ok(h) if h.removed_at.is_none() => return Ok(h),
        Ok(_) => return Err(Refusal::NotFound(format!("host {key} was removed"))),
        Err(StoreError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    let hosts = state.store.hosts().await?;
    // A hostname is whatever the host reports: it must not capture calls meant for another host
    // by id prefix. Both kinds of match count, and more than one host is ambiguous.
    let candidates: Vec<_> = hosts
        .iter()
        .filter(|h| who.may_see(h))
        .filter(|h| h.hostname == key || (!key.is_empty() && h.id.starts_with(key)))
        .collect();
    match candidates.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Refusal::NotFound(format!(
            "no host matches {key:?} (by id, hostname or id prefix)"
        ))),
        many => {
            let ids: Vec<_> = many
                .iter()
                .map(|h| format!("{} ({})", h.id, h.hostname))
                .collect();
            Err(Refusal::Ambiguous(format!(
                "{key:?} matches several hosts: {}; use the id",
                ids.join(", ")
            )))
        }
    }
}

/// The host with exactly this id, in the token's scope and not removed; anything else answers
/// as unknown.
pub async fn by_id(state: &AppState, who: &Principal, id: &str) -> Result<HostRecord, Refusal> {
    match state.store.host(id).await {
        Ok(h) if h.removed_at.is_some() => Err(Refusal::NotFound(format!("host {id} was removed"))),
        Ok(h) if who.may_see(&h) => Ok(h),
        Ok(_) | Err(StoreError::NotFound) => {
            Err(Refusal::NotFound(format!("no host with id {id}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// The hosts a fan-out names, each by its exact id (not removed, in scope: anything else
/// answers as unknown), or, without names, every online host in scope.
pub async fn fan_out_targets(
    state: &AppState,
    who: &Principal,
    named: Option<&[String]>,
) -> Result<Vec<String>, Refusal> {
    let unscoped = who.token.scope.is_empty();
    match named {
        // The common case needs no store read: the hub knows who is online.
        None if unscoped => Ok(state.hub.online_hosts()),
        None => Ok(state
            .store
            .hosts()
            .await?
            .iter()
            .filter(|h| who.may_see(h) && state.hub.is_online(&h.id))
            .map(|h| h.id.clone())
            .collect()),
        Some(ids) => {
            let hosts = state.store.hosts().await?;
            ids.iter()
                .map(
                    |id| match hosts.iter().find(|h| &h.id == id && h.removed_at.is_none()) {
                        Some(h) if who.may_see(h) => Ok(h.id.clone()),
                        // Out of scope answers as unknown: nothing tells which ids exist.
                        _ => Err(Refusal::NotFound(format!("no host with id {id}"))),
                    },
                )
                .collect()
        }
    }
}
