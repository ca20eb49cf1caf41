//! End to end: a simulated vLLM server writes tool calls as text in each family's format;
//! the real `openai` Python SDK, talking to the gateway, must see proper `tool_calls`,
//! streamed and not. The interpreter comes from `LLMMUX_PYTHON` (set by `.ci/test`, which
//! creates the venv); without it the test fails with a clear message instead of skipping.

mod common;

use common::*;
use llmmux::sim::ToolText;

const SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
base, key, model = sys.argv[1], sys.argv[2], sys.argv[3]
c = OpenAI(base_url=base, api_key=key, max_retries=0)
tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
msgs = [{"role": "user", "content": "Weather in Paris?"}]
r = c.chat.completions.create(model=model, messages=msgs, tools=tools)
m = r.choices[0].message
assert m.tool_calls, f"non-stream: no tool_calls, content={m.content!r}"
call = m.tool_calls[0]
assert call.function.name == "get_weather", call
assert json.loads(call.function.arguments)["city"], call.function.arguments
assert r.choices[0].finish_reason == "tool_calls", r.choices[0].finish_reason
names, args, finish = {}, {}, None
for chunk in c.chat.completions.create(model=model, messages=msgs, tools=tools, stream=True):
    for ch in chunk.choices:
        for tc in (ch.delta.tool_calls or []):
            if tc.function and tc.function.name:
                names[tc.index] = tc.function.name
            if tc.function and tc.function.arguments:
                args[tc.index] = args.get(tc.index, "") + tc.function.arguments
        finish = ch.finish_reason or finish
assert names.get(0) == "get_weather", f"stream: {names} {args}"
assert json.loads(args[0])["city"], args
assert finish == "tool_calls", finish
print("ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_sees_tool_calls_for_every_family() {
    let python = std::env::var("LLMMUX_PYTHON").expect(
        "LLMMUX_PYTHON must point to a Python with the `openai` package (bash .ci/test sets it up)",
    );
    let families = [
        ("gpt-oss-20b", ToolText::GptOssJson),
        ("qwen3-8b", ToolText::Hermes),
        ("llama-3.1-8b-instruct", ToolText::Llama3Json),
        ("mistral-7b-instruct", ToolText::Mistral),
        ("llama-4-scout", ToolText::Pythonic),
    ];
    let mut sims = Vec::new();
    let mut backends = Vec::new();
    for (model, text) in families {
        let s = sim_with(&[model], |c| c.tool_text = Some(text)).await;
        backends.push(format!("{model}:{}", s.addr()));
        sims.push(s);
    }
    let app = gateway(&[
        ("BACKENDS", backends.join(",")),
        (
            "TOOL_CALL_FORMATS",
            "gpt-oss-*=gptoss,qwen*=hermes,llama-3*=llama3_json,mistral*=mistral,llama-4*=pythonic"
                .into(),
        ),
    ])
    .await;
    let base = url(&app, "/v1");
    for (model, _) in families {
        let out = tokio::process::Command::new(&python)
            .args(["-c", SCRIPT, &base, KEY, model])
            .output()
            .await
            .expect("python runs");
        assert!(
            out.status.success(),
            "{model}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let counters = app.state.proxy.toolcalls.snapshot().to_string();
    assert!(counters.contains("converted"), "{counters}");
    app.shutdown().await;
}
