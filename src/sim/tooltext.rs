//! Tool calls rendered as plain text, the way models emit them when no tool parser
//! (or the wrong one) runs on the server. See protocol.md section 3.

use serde_json::{Map, Value};

use super::ToolText;

/// Render a call to the tool chosen from `tools` (named `tool_choice` if it names a
/// declared function, else the first declared tool) as text in `family`'s format.
/// Returns None when `tools` is empty or malformed.
pub fn render_tool_text(
    family: ToolText,
    tools: &[Value],
    tool_choice: Option<&Value>,
) -> Option<String> {
    let named = tool_choice
        .and_then(|c| c.get("function"))
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str);
    let func = |t: &Value| t.get("function").cloned().unwrap_or(Value::Null);
    let chosen = named
        .and_then(|n| {
            tools
                .iter()
                .map(func)
                .find(|f| f.get("name").and_then(Value::as_str) == Some(n))
        })
        .or_else(|| tools.first().map(func))?;
    let name = chosen.get("name").and_then(Value::as_str)?.to_string();
    let args = example_arguments(chosen.get("parameters"));
    let args_py = py_json(&args);
    Some(match family {
        ToolText::GptOssJson => format!("{{\"name\": {}, \"arguments\": {args_py}}}", py_json(&Value::String(name))),
        ToolText::GptOssHarmony => format!(
            "<|channel|>analysis<|message|>The user needs {name}; call it.<|end|><|start|>assistant<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>{}",
            compact(&args)
        ),
        ToolText::Hermes => format!(
            "<tool_call>\n{{\"name\": {}, \"arguments\": {args_py}}}\n</tool_call>",
            py_json(&Value::String(name))
        ),
        ToolText::Llama3Json => format!("{{\"name\": {}, \"parameters\": {args_py}}}", py_json(&Value::String(name))),
        ToolText::Mistral => format!(
            "[TOOL_CALLS][{{\"name\": {}, \"arguments\": {args_py}}}]",
            py_json(&Value::String(name))
        ),
        ToolText::Pythonic => {
            let kw: Vec<String> = match &args {
                Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={}", py_literal(v))).collect(),
                _ => Vec::new(),
            };
            format!("[{name}({})]", kw.join(", "))
        }
    })
}

/// Arguments object built from the JSON schema's `required` properties.
pub(crate) fn example_arguments(schema: Option<&Value>) -> Value {
    let mut out = Map::new();
    let Some(schema) = schema else {
        return Value::Object(out);
    };
    let props = schema.get("properties").and_then(Value::as_object);
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for key in required {
        let prop = props.and_then(|p| p.get(key));
        out.insert(key.to_string(), example_value(key, prop));
    }
    Value::Object(out)
}

fn example_value(key: &str, prop: Option<&Value>) -> Value {
    if let Some(first) = prop
        .and_then(|p| p.get("enum"))
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    let ty = prop.and_then(|p| p.get("type")).map(|t| match t {
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .find(|s| *s != "null")
            .unwrap_or("string"),
        other => other.as_str().unwrap_or("string"),
    });
    match ty.unwrap_or("string") {
        "number" | "integer" => Value::from(1),
        "boolean" => Value::Bool(true),
        "array" => Value::Array(Vec::new()),
        "object" => Value::Object(Map::new()),
        "null" => Value::Null,
        _ => {
            let k = key.to_ascii_lowercase();
            if k.contains("zone") || k == "tz" || k.contains("time") {
                Value::from("UTC")
            } else {
                Value::from("Paris")
            }
        }
    }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".to_string())
}

/// Python `json.dumps` style: `", "` and `": "` separators.
pub(crate) fn py_json(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("[{}]", a.iter().map(py_json).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", compact(&Value::String(k.clone())), py_json(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => compact(other),
    }
}

/// Python literal for the pythonic format.
fn py_literal(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(py_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", compact(&Value::String(k.clone())), py_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => compact(other),
    }
}

/// Split text into small pieces (3, 4, 5 chars cyclically) on char boundaries, so a
/// consumer must reassemble markers across chunk boundaries.
pub(crate) fn split_small(text: &str) -> Vec<String> {
    let sizes = [3usize, 4, 5];
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut k = 0;
    while i < chars.len() {
        let n = sizes[k % sizes.len()].min(chars.len() - i);
        out.push(chars[i..i + n].iter().collect());
        i += n;
        k += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<Value> {
        vec![
            json!({"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}),
        ]
    }

    #[test]
    fn families() {
        let t = tools();
        let r = |f| render_tool_text(f, &t, None).unwrap_or_default();
        assert_eq!(
            r(ToolText::Hermes),
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
        );
        assert_eq!(
            r(ToolText::Llama3Json),
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}"
        );
        assert_eq!(
            r(ToolText::Mistral),
            "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]"
        );
        assert_eq!(r(ToolText::Pythonic), "[get_weather(city=\"Paris\")]");
        assert_eq!(
            r(ToolText::GptOssJson),
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"
        );
        assert!(r(ToolText::GptOssHarmony).ends_with(
            "to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}"
        ));
    }

    #[test]
    fn split_roundtrip() {
        let s = "añb<tool_call>xyz€";
        assert_eq!(split_small(s).concat(), s);
        assert!(split_small(s).iter().all(|p| p.chars().count() <= 5));
    }
}
