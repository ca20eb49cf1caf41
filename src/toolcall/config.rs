//! Per-deployment options and the per-request facts the transform needs (R1, R3, R9).

use serde_json::Value;

/// The two optional rules of protocol.md 3.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `TOOL_CALL_CODE_FENCE`: accept a ```` ``` ```` fence around bare JSON (gptoss). Default on.
    pub accept_code_fence: bool,
    /// `TOOL_CALL_HARMONY_STRIPPED`: R14 recovery of harmony output whose special
    /// tokens were stripped. Default off.
    pub harmony_stripped_recovery: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            accept_code_fence: true,
            harmony_stripped_recovery: false,
        }
    }
}

/// `tool_choice` values that allow a transform (`none` never gets here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Choice {
    Auto,
    Required,
    Named(String),
}

/// What the transform needs from the request: declared tool names, the tool
/// choice and whether structured output was requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTools {
    pub(crate) names: Vec<String>,
    pub(crate) choice: Choice,
    pub(crate) structured: bool,
}

impl RequestTools {
    /// `None` when the request must not be transformed (R1 b/c): no non-empty
    /// `tools` array with named functions, `tool_choice: "none"`, or an
    /// unrecognised `tool_choice`. Legacy `functions`/`function_call` requests
    /// have no `tools`, so they are forwarded untouched (protocol.md 1.2).
    pub fn from_request(body: &Value) -> Option<RequestTools> {
        let tools = body.get("tools")?.as_array()?;
        let names: Vec<String> = tools
            .iter()
            .filter(|t| {
                t.get("type")
                    .and_then(Value::as_str)
                    .is_none_or(|ty| ty == "function")
            })
            .filter_map(|t| t.get("function")?.get("name")?.as_str().map(str::to_owned))
            .collect();
        if names.is_empty() {
            return None;
        }
        let choice = match body.get("tool_choice") {
            None | Some(Value::Null) => Choice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "auto" => Choice::Auto,
                "required" => Choice::Required,
                _ => return None, // "none" and unknown values
            },
            Some(obj @ Value::Object(_)) => {
                let name = obj.get("function")?.get("name")?.as_str()?;
                Choice::Named(name.to_owned())
            }
            Some(_) => return None,
        };
        let rf_json = matches!(
            body.get("response_format")
                .and_then(|r| r.get("type"))
                .and_then(Value::as_str),
            Some("json_object" | "json_schema")
        );
        let so_json = body
            .get("structured_outputs")
            .and_then(|s| s.get("json"))
            .is_some_and(|v| !v.is_null());
        let guided = body.get("guided_json").is_some_and(|v| !v.is_null());
        Some(RequestTools {
            names,
            choice,
            structured: rf_json || so_json || guided,
        })
    }

    /// R3: the name must be declared and, under a named choice, equal to it.
    pub(crate) fn allows(&self, name: &str) -> bool {
        match &self.choice {
            Choice::Named(n) if n != name => false,
            _ => self.names.iter().any(|n| n == name),
        }
    }

    /// The forced function name under a named `tool_choice`.
    pub(crate) fn named(&self) -> Option<&str> {
        match &self.choice {
            Choice::Named(n) => Some(n),
            _ => None,
        }
    }
}
