//! Call-object validation and argument canonicalisation (R3, R4, R5).

use super::config::RequestTools;
use serde_json::{Map, Value};

/// One extracted tool call (id assigned when emitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Call {
    pub name: String,
    pub arguments: String,
}

const ALLOWED_KEYS: [&str; 5] = ["name", "arguments", "parameters", "type", "id"];

/// R4 shape check only (no name check): `name` string, at most one of
/// `arguments`/`parameters`, optional `type: "function"` and `id`, nothing else.
pub(crate) fn is_call_shaped(m: &Map<String, Value>) -> bool {
    m.get("name").is_some_and(Value::is_string)
        && m.keys().all(|k| ALLOWED_KEYS.contains(&k.as_str()))
        && !(m.contains_key("arguments") && m.contains_key("parameters"))
        && m.get("type").is_none_or(|t| t.as_str() == Some("function"))
}

/// R5: canonical compact argument string, or `None` when not acceptable.
pub(crate) fn canonical_args(v: Option<&Value>) -> Option<String> {
    match v {
        None | Some(Value::Null) => Some("{}".to_owned()),
        Some(o @ Value::Object(_)) => serde_json::to_string(o).ok(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(o @ Value::Object(_)) => serde_json::to_string(&o).ok(),
            _ => None,
        },
        Some(_) => None,
    }
}

/// A complete call object per R3–R5, or `None`.
pub(crate) fn call_from_object(v: &Value, tools: &RequestTools) -> Option<Call> {
    let m = v.as_object()?;
    if !is_call_shaped(m) {
        return None;
    }
    let name = m.get("name")?.as_str()?;
    if !tools.allows(name) {
        return None;
    }
    let args = m.get("arguments").or_else(|| m.get("parameters"));
    Some(Call {
        name: name.to_owned(),
        arguments: canonical_args(args)?,
    })
}

/// An object (one call) or a non-empty array where every element is a call
/// (all-or-nothing, R4).
pub(crate) fn calls_from_value(v: &Value, tools: &RequestTools) -> Option<Vec<Call>> {
    match v {
        Value::Object(_) => call_from_object(v, tools).map(|c| vec![c]),
        Value::Array(items) if !items.is_empty() => {
            items.iter().map(|it| call_from_object(it, tools)).collect()
        }
        _ => None,
    }
}

/// gptoss bare JSON under a named `tool_choice` (`wrap_named_args`, on for
/// gptoss): a call-shaped object or array is judged as calls; any other object
/// is the arguments of the named function.
pub(crate) fn calls_named_wrap(v: &Value, tools: &RequestTools) -> Option<Vec<Call>> {
    let named = tools.named()?;
    match v {
        Value::Object(m) if !is_call_shaped(m) => {
            if !tools.allows(named) {
                return None;
            }
            Some(vec![Call {
                name: named.to_owned(),
                arguments: serde_json::to_string(v).ok()?,
            }])
        }
        _ => calls_from_value(v, tools),
    }
}
