//! `GET /v1/models` and `GET /v1/models/{id}`: models some healthy server serves, in the
//! OpenAI list shape with vLLM's extra fields, plus configured aliases. `created` is the
//! first time the gateway saw the id, so it is stable across calls.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::body::Body;
use crate::error::{json_response, GatewayError};
use crate::principal::Principal;
use crate::state::AppState;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// id → card for every model with at least one routable server.
pub fn available(state: &AppState) -> BTreeMap<String, Value> {
    let table = state.proxy.registry.table.load();
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for entry in table.backends.values().filter(|e| e.routable()) {
        for m in &entry.models {
            if out.contains_key(&*m.id) {
                continue;
            }
            let card = m
                .card
                .as_deref()
                .and_then(|c| serde_json::from_str::<Value>(c).ok())
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({"id": &*m.id, "object": "model", "owned_by": "vllm"}));
            out.insert(m.id.to_string(), card);
        }
    }
    for (alias, target) in &state.config.load().model_aliases {
        if let Some(card) = out.get(target).cloned() {
            let mut card = card;
            card["id"] = json!(alias);
            out.entry(alias.clone()).or_insert(card);
        }
    }
    let mut seen = state.first_seen.lock().unwrap_or_else(|p| p.into_inner());
    for (id, card) in out.iter_mut() {
        let created = *seen.entry(id.clone()).or_insert_with(now);
        card["created"] = json!(created);
        card["object"] = json!("model");
        // vLLM's `root` is the model's path on the server's disk: never show it.
        if card.get("root").is_some() {
            card["root"] = json!(id);
        }
    }
    out
}

pub fn list(state: &AppState, caller: &Principal) -> Response<Body> {
    let data: Vec<Value> = available(state)
        .into_iter()
        .filter(|(id, _)| caller.may_use(id))
        .map(|(_, card)| card)
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

pub fn one(state: &AppState, caller: &Principal, id: &str) -> Response<Body> {
    if !caller.may_use(id) {
        return GatewayError::ModelNotFound(id.to_owned()).into_response();
    }
    match available(state).remove(id) {
        Some(card) => json_response(StatusCode::OK, &card),
        None => GatewayError::ModelNotFound(id.to_owned()).into_response(),
    }
}
