//! vLLM-shaped request validation and response bodies (field sets and order follow the
//! vLLM 0.32 captures in `tests/fixtures/vllm-samples/`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::tooltext::{render_tool_text, split_small};
use super::ToolText;

pub(crate) const SYSTEM_FINGERPRINT: &str = "vllm-0.32.0-be7f631a";
pub(crate) const VERSION: &str = "0.32.0";

/// What a request handler needs from the configuration.
pub(crate) struct Ctx {
    pub served: Vec<String>,
    pub max_model_len: u32,
    pub completion_tokens: u32,
    pub tool_text: Option<ToolText>,
}

impl Ctx {
    fn primary(&self) -> String {
        self.served.first().cloned().unwrap_or_default()
    }
}

/// A vLLM error response (status + JSON body).
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: u16,
    pub body: Value,
}

pub(crate) fn error_type(status: u16) -> &'static str {
    match status {
        400 => "BadRequestError",
        401 => "UnauthorizedError",
        403 => "ForbiddenError",
        404 => "NotFoundError",
        408 => "RequestTimeoutError",
        413 => "RequestEntityTooLargeError",
        422 => "UnprocessableEntityError",
        429 => "TooManyRequestsError",
        501 => "NotImplementedError",
        502 => "BadGatewayError",
        503 => "ServiceUnavailableError",
        504 => "GatewayTimeoutError",
        s if s >= 500 => "InternalServerError",
        _ => "BadRequestError",
    }
}

pub(crate) fn error_body(status: u16, message: &str, ty: &str, param: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": ty, "param": param, "code": status}})
}

pub(crate) fn api_error(status: u16, message: impl Into<String>, param: Option<&str>) -> ApiError {
    let message = message.into();
    ApiError {
        status,
        body: error_body(status, &message, error_type(status), param),
    }
}

/// FastAPI/pydantic request validation error as vLLM renders it (400, type "Bad Request").
fn pydantic_error(kind: &str, loc: &str, msg: &str, input: &str, ctx: Option<&str>) -> ApiError {
    let ctx = ctx
        .map(|c| format!(", 'ctx': {{'error': '{c}'}}"))
        .unwrap_or_default();
    let message = format!("1 validation error:\n  {{'type': '{kind}', 'loc': '{loc}', 'msg': '{msg}', 'input': '{input}'{ctx}}}");
    ApiError {
        status: 400,
        body: error_body(400, &message, "Bad Request", Some(loc)),
    }
}

pub(crate) fn model_not_found(model: &str, served: &[String]) -> ApiError {
    api_error(
        404,
        format!(
            "The model `{model}` does not exist. Valid aliases: {}.",
            served.join(", ")
        ),
        Some("model"),
    )
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn hex_id(bits: u32) -> String {
    let v: u128 = rand::random();
    let width = (bits / 4) as usize;
    let s = format!("{v:032x}");
    s[s.len().saturating_sub(width)..].to_string()
}

/// Python float repr for integers-as-floats (`-1` -> `-1.0`).
fn py_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Rough token count: alphanumeric runs + punctuation characters.
pub(crate) fn count_tokens(text: &str) -> u64 {
    let mut n = 0;
    let mut in_word = false;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if !in_word {
                n += 1;
            }
            in_word = true;
        } else {
            in_word = false;
            if !c.is_whitespace() {
                n += 1;
            }
        }
    }
    n
}

fn value_tokens(v: &Value) -> u64 {
    match v {
        Value::String(s) => count_tokens(s),
        Value::Array(a) => a.iter().map(value_tokens).sum(),
        Value::Object(m) => m.values().map(value_tokens).sum(),
        Value::Null => 0,
        other => count_tokens(&other.to_string()),
    }
}

/// Parse the body as a JSON object, with FastAPI-like errors.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(pydantic_error(
            "model_attributes_type",
            "body",
            "Input should be a valid dictionary or object to extract fields from",
            "<non-object>",
            None,
        )),
        Err(e) => {
            // Byte offset of the error (serde gives line/column, Python gives `pos`).
            let mut offset = 0usize;
            for (i, line) in body.split(|b| *b == b'\n').enumerate() {
                if i + 1 >= e.line() {
                    offset += e.column();
                    break;
                }
                offset += line.len() + 1;
            }
            let offset = offset.min(body.len());
            let loc = format!("body.{offset}");
            Err(pydantic_error(
                "json_invalid",
                &loc,
                "JSON decode error",
                "<dict of 0 items>",
                Some("Expecting value"),
            ))
        }
    }
}

fn missing(field: &str, obj: &Map<String, Value>) -> ApiError {
    pydantic_error(
        "missing",
        &format!("body.{field}"),
        "Field required",
        &format!("<dict of {} items>", obj.len()),
        None,
    )
}

/// Checks shared by all inference routes: the model must be served (absent = primary).
fn check_model(obj: &Map<String, Value>, ctx: &Ctx) -> Result<(), ApiError> {
    match obj.get("model") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(m)) if ctx.served.iter().any(|s| s == m) => Ok(()),
        Some(Value::String(m)) => Err(model_not_found(m, &ctx.served)),
        Some(_) => Err(pydantic_error(
            "string_type",
            "body.model",
            "Input should be a valid string",
            "<non-string>",
            None,
        )),
    }
}

fn opt_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            pydantic_error(
                "float_parsing",
                &format!("body.{key}"),
                "Input should be a valid number",
                &v.to_string(),
                None,
            )
        }),
    }
}

fn opt_i64(obj: &Map<String, Value>, key: &str) -> Result<Option<i64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            pydantic_error(
                "int_parsing",
                &format!("body.{key}"),
                "Input should be a valid integer",
                &v.to_string(),
                None,
            )
        }),
    }
}

/// Sampling parameters common to chat and completions.
struct Sampling {
    stream: bool,
    include_usage: bool,
    continuous_usage: bool,
    n: u32,
    max_tokens: Option<u64>,
    stop: Vec<String>,
}

fn sampling(obj: &Map<String, Value>, ctx: &Ctx, max_keys: &[&str]) -> Result<Sampling, ApiError> {
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let so = obj.get("stream_options").filter(|v| !v.is_null());
    if so.is_some() && !stream {
        return Err(api_error(
            400,
            "Stream options can only be defined when stream=True.",
            Some("stream_options"),
        ));
    }
    let include_usage = so
        .map(|s| {
            s.get("include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(true)
        })
        .unwrap_or(false);
    let continuous_usage = so
        .and_then(|s| s.get("continuous_usage_stats"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut max_tokens = None;
    for key in max_keys {
        if let Some(m) = opt_i64(obj, key)? {
            if m < 1 {
                return Err(api_error(
                    400,
                    format!("max_tokens must be at least 1, got {m}."),
                    Some(key),
                ));
            }
            if m > i64::from(ctx.max_model_len) {
                return Err(api_error(
                    400,
                    format!(
                        "{key}={m} cannot be greater than max_model_len={}. Please request fewer output tokens. (parameter={key}, value={m})",
                        ctx.max_model_len
                    ),
                    Some(key),
                ));
            }
            max_tokens = Some(m as u64);
            break;
        }
    }
    if let Some(t) = opt_f64(obj, "temperature")? {
        if t < 0.0 {
            let t = py_float(t);
            return Err(api_error(
                400,
                format!(
                    "temperature must be non-negative, got {t}. (parameter=temperature, value={t})"
                ),
                Some("temperature"),
            ));
        }
    }
    if let Some(p) = opt_f64(obj, "top_p")? {
        if !(p > 0.0 && p <= 1.0) {
            let p = py_float(p);
            return Err(api_error(
                400,
                format!("top_p must be in (0, 1], got {p}. (parameter=top_p, value={p})"),
                Some("top_p"),
            ));
        }
    }
    let n = opt_i64(obj, "n")?.unwrap_or(1);
    if !(1..=128).contains(&n) {
        return Err(api_error(
            400,
            format!("n must be at least 1, got {n}. (parameter=n, value={n})"),
            Some("n"),
        ));
    }
    let stop = match obj.get("stop") {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    Ok(Sampling {
        stream,
        include_usage,
        continuous_usage,
        n: n as u32,
        max_tokens,
        stop,
    })
}

fn prompt_too_long(prompt_tokens: u64, ctx: &Ctx) -> Result<(), ApiError> {
    let m = u64::from(ctx.max_model_len);
    if prompt_tokens > m {
        let v = m + 1;
        return Err(api_error(
            400,
            format!(
                "This model's maximum context length is {m} tokens. However, your prompt contains at least {v} input tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input prompt. (parameter=input_tokens, value={v})"
            ),
            Some("input_tokens"),
        ));
    }
    Ok(())
}

/// Generated output of one choice.
pub(crate) struct Generation {
    pieces: Vec<String>,
    finish_reason: &'static str,
    stop_reason: Option<String>,
    /// Tokens counted in usage (pieces + EOS/stop token where applicable).
    tokens: u64,
}

fn generate(all_pieces: Vec<String>, limit: u64, stop: &[String]) -> Generation {
    let capped = (all_pieces.len() as u64) > limit;
    let pieces: Vec<String> = all_pieces.into_iter().take(limit as usize).collect();
    // Stop strings: cut the text at the earliest match.
    let text: String = pieces.concat();
    let hit = stop
        .iter()
        .filter_map(|s| text.find(s.as_str()).map(|p| (p, s)))
        .min_by_key(|(p, _)| *p);
    if let Some((pos, s)) = hit {
        let mut out = Vec::new();
        let mut used = 0usize;
        for p in pieces {
            if used >= pos {
                break;
            }
            let take = (pos - used).min(p.len());
            let mut cut = take;
            while !p.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push(p[..cut].to_string());
            used += p.len();
        }
        let tokens = out.len() as u64 + 1;
        return Generation {
            pieces: out,
            finish_reason: "stop",
            stop_reason: Some(s.clone()),
            tokens,
        };
    }
    let tokens = pieces.len() as u64;
    let finish_reason = if capped { "length" } else { "stop" };
    Generation {
        pieces,
        finish_reason,
        stop_reason: None,
        tokens,
    }
}

fn text_pieces(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i == 0 {
                "tok0".to_string()
            } else {
                format!(" tok{i}")
            }
        })
        .collect()
}

/// One SSE event plus its role in the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EvKind {
    /// Sent right after the headers (role chunk).
    Head,
    /// Generated token.
    Token,
    /// Finish / usage / `[DONE]`.
    Tail,
}

pub(crate) struct Ev {
    pub kind: EvKind,
    pub data: String,
}

pub(crate) enum Output {
    Json(Value),
    Sse(Vec<Ev>),
}

pub(crate) struct Produced {
    pub output: Output,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

fn sse(v: &Value) -> String {
    format!("data: {}\n\n", serde_json::to_string(v).unwrap_or_default())
}

pub(crate) fn sse_done() -> String {
    "data: [DONE]\n\n".to_string()
}

pub(crate) fn stream_error_event(message: &str, status: u16) -> String {
    sse(&error_body(status, message, error_type(status), None))
}

fn usage_full(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
           "prompt_tokens_details": null, "completion_tokens_details": null})
}

fn usage_chunk_usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion})
}

fn usage_continuous(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
           "completion_tokens_details": null})
}

fn logprob_entry(token: &str, i: usize, top: u64) -> Value {
    let lp = -0.0001 * ((i % 7) as f64 + 1.0);
    let bytes: Vec<u8> = token.as_bytes().to_vec();
    let mut tops = Vec::new();
    for j in 0..top {
        if j == 0 {
            tops.push(json!({"token": token, "logprob": lp, "bytes": bytes}));
        } else {
            let alt = format!("alt{j}");
            tops.push(json!({"token": alt, "logprob": -5.0 - j as f64, "bytes": alt.as_bytes()}));
        }
    }
    json!({"token": token, "logprob": lp, "bytes": bytes, "top_logprobs": tops})
}

fn chat_prompt_tokens(obj: &Map<String, Value>) -> u64 {
    let msgs = obj
        .get("messages")
        .and_then(Value::as_array)
        .map(|m| m.as_slice())
        .unwrap_or(&[]);
    let mut n = 3;
    for m in msgs {
        n += 4 + m.get("content").map(value_tokens).unwrap_or(0);
        n += m.get("tool_calls").map(value_tokens).unwrap_or(0);
    }
    n + obj.get("tools").map(value_tokens).unwrap_or(0)
}

/// `POST /v1/chat/completions`.
pub(crate) fn chat(body: &[u8], ctx: &Ctx) -> Result<Produced, ApiError> {
    let obj = parse_object(body)?;
    match obj.get("messages") {
        None => return Err(missing("messages", &obj)),
        Some(Value::Array(_)) => {}
        Some(_) => {
            return Err(pydantic_error(
                "list_type",
                "body.messages",
                "Input should be a valid list",
                "<non-list>",
                None,
            ))
        }
    }
    let s = sampling(&obj, ctx, &["max_completion_tokens", "max_tokens"])?;
    check_model(&obj, ctx)?;
    let tools: Vec<Value> = obj
        .get("tools")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let tool_choice = obj.get("tool_choice").filter(|v| !v.is_null());
    if tool_choice.is_some_and(|c| c.as_str() != Some("none")) && tools.is_empty() {
        return Err(api_error(
            400,
            "When using `tool_choice`, `tools` must be set. (parameter=tool_choice)",
            Some("tool_choice"),
        ));
    }
    let logprobs = obj
        .get("logprobs")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let top = opt_i64(&obj, "top_logprobs")?.unwrap_or(0).clamp(0, 20) as u64;
    if top > 0 && !logprobs {
        return Err(api_error(
            400,
            "when using `top_logprobs`, `logprobs` must be set to true.",
            Some("top_logprobs"),
        ));
    }
    let prompt_tokens = chat_prompt_tokens(&obj);
    prompt_too_long(prompt_tokens, ctx)?;

    let min_tokens = opt_i64(&obj, "min_tokens")?.unwrap_or(0).max(0) as u32;
    let tool_text = match ctx.tool_text {
        Some(f) if !tools.is_empty() => render_tool_text(f, &tools, tool_choice),
        _ => None,
    };
    let all = match &tool_text {
        Some(t) => split_small(t),
        None => text_pieces(ctx.completion_tokens.max(min_tokens)),
    };
    let room = u64::from(ctx.max_model_len).saturating_sub(prompt_tokens);
    let limit = s.max_tokens.unwrap_or(u64::MAX).min(room);
    let gen = generate(all, limit, &s.stop);
    let completion_tokens = gen.tokens * u64::from(s.n);
    let id = format!("chatcmpl-{}", hex_id(128));
    let created = now();
    let model = ctx.primary();

    if !s.stream {
        let content: String = gen.pieces.concat();
        let lp = if logprobs {
            json!({"content": gen.pieces.iter().enumerate().map(|(i, p)| logprob_entry(p, i, top)).collect::<Vec<_>>()})
        } else {
            Value::Null
        };
        let choices: Vec<Value> = (0..s.n)
            .map(|i| {
                json!({"index": i, "message": {"role": "assistant", "content": content, "refusal": null,
                    "annotations": null, "audio": null, "function_call": null, "reasoning": null},
                    "logprobs": lp, "finish_reason": gen.finish_reason, "stop_reason": gen.stop_reason,
                    "token_ids": null, "routed_experts": null})
            })
            .collect();
        let v = json!({"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "service_tier": null, "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": usage_full(prompt_tokens, completion_tokens), "prompt_logprobs": null,
            "prompt_token_ids": null, "prompt_text": null, "kv_transfer_params": null,
            "ec_transfer_params": null, "metrics": null});
        return Ok(Produced {
            output: Output::Json(v),
            prompt_tokens,
            completion_tokens,
        });
    }

    let mut evs = Vec::new();
    let head = |choices: Value| {
        let mut m = Map::new();
        m.insert("id".into(), Value::from(id.clone()));
        m.insert("object".into(), Value::from("chat.completion.chunk"));
        m.insert("created".into(), Value::from(created));
        m.insert("model".into(), Value::from(model.clone()));
        m.insert("choices".into(), choices);
        m
    };
    for i in 0..s.n {
        let mut m = head(
            json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
        );
        if s.continuous_usage {
            m.insert("usage".into(), usage_continuous(prompt_tokens, 0));
        }
        m.insert("prompt_token_ids".into(), Value::Null);
        m.insert("prompt_text".into(), Value::Null);
        evs.push(Ev {
            kind: EvKind::Head,
            data: sse(&Value::Object(m)),
        });
    }
    let last = gen.pieces.len();
    let finish_in_last = gen.finish_reason == "length" && last > 0;
    for (t, piece) in gen.pieces.iter().enumerate() {
        for i in 0..s.n {
            let lp = if logprobs {
                json!({"content": [logprob_entry(piece, t, top)]})
            } else {
                Value::Null
            };
            let is_final = finish_in_last && t + 1 == last;
            let mut c = Map::new();
            c.insert("index".into(), Value::from(i));
            c.insert("delta".into(), json!({"content": piece}));
            c.insert("logprobs".into(), lp);
            if is_final {
                c.insert("finish_reason".into(), Value::from(gen.finish_reason));
                c.insert("stop_reason".into(), Value::Null);
            } else {
                c.insert("finish_reason".into(), Value::Null);
            }
            c.insert("token_ids".into(), Value::Null);
            let mut m = head(Value::Array(vec![Value::Object(c)]));
            if s.continuous_usage {
                m.insert(
                    "usage".into(),
                    usage_continuous(prompt_tokens, t as u64 + 1),
                );
            }
            if is_final && !s.include_usage {
                m.insert("system_fingerprint".into(), Value::from(SYSTEM_FINGERPRINT));
            }
            evs.push(Ev {
                kind: EvKind::Token,
                data: sse(&Value::Object(m)),
            });
        }
    }
    if !finish_in_last {
        for i in 0..s.n {
            let mut m = head(
                json!([{"index": i, "delta": {}, "logprobs": null, "finish_reason": gen.finish_reason,
                "stop_reason": gen.stop_reason, "token_ids": null}]),
            );
            if s.continuous_usage {
                m.insert("usage".into(), usage_continuous(prompt_tokens, gen.tokens));
            }
            if !s.include_usage {
                m.insert("system_fingerprint".into(), Value::from(SYSTEM_FINGERPRINT));
            }
            evs.push(Ev {
                kind: EvKind::Tail,
                data: sse(&Value::Object(m)),
            });
        }
    }
    if s.include_usage {
        let mut m = head(json!([]));
        m.insert(
            "usage".into(),
            usage_chunk_usage(prompt_tokens, completion_tokens),
        );
        m.insert("system_fingerprint".into(), Value::from(SYSTEM_FINGERPRINT));
        evs.push(Ev {
            kind: EvKind::Tail,
            data: sse(&Value::Object(m)),
        });
    }
    evs.push(Ev {
        kind: EvKind::Tail,
        data: sse_done(),
    });
    Ok(Produced {
        output: Output::Sse(evs),
        prompt_tokens,
        completion_tokens,
    })
}

/// `POST /v1/completions`.
pub(crate) fn completions(body: &[u8], ctx: &Ctx) -> Result<Produced, ApiError> {
    let obj = parse_object(body)?;
    let prompts: Vec<u64> = match obj.get("prompt") {
        Some(Value::String(p)) => vec![count_tokens(p)],
        Some(Value::Array(a)) if !a.is_empty() => {
            if a.iter().all(Value::is_number) {
                vec![a.len() as u64]
            } else {
                a.iter().map(value_tokens).collect()
            }
        }
        _ => {
            return Err(api_error(
                400,
                "Either prompt or prompt_embeds must be provided and non-empty.",
                None,
            ));
        }
    };
    let s = sampling(&obj, ctx, &["max_tokens"])?;
    check_model(&obj, ctx)?;
    let prompt_max = prompts.iter().copied().max().unwrap_or(0);
    prompt_too_long(prompt_max, ctx)?;
    let prompt_tokens: u64 = prompts.iter().sum();
    let room = u64::from(ctx.max_model_len).saturating_sub(prompt_max);
    let limit = s.max_tokens.unwrap_or(u64::MAX).min(room);
    let gen = generate(text_pieces(ctx.completion_tokens), limit, &s.stop);
    let n_choices = prompts.len() as u32 * s.n;
    let completion_tokens = gen.tokens * u64::from(n_choices);
    let id = format!("cmpl-{}", hex_id(128));
    let created = now();
    let model = ctx.primary();
    if !s.stream {
        let text = gen.pieces.concat();
        let choices: Vec<Value> = (0..n_choices)
            .map(|i| {
                json!({"index": i, "text": text, "logprobs": null, "finish_reason": gen.finish_reason,
                    "stop_reason": gen.stop_reason, "token_ids": null, "prompt_logprobs": null,
                    "prompt_token_ids": null, "routed_experts": null})
            })
            .collect();
        let v = json!({"id": id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "service_tier": null, "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": usage_full(prompt_tokens, completion_tokens), "kv_transfer_params": null,
            "ec_transfer_params": null, "metrics": null});
        return Ok(Produced {
            output: Output::Json(v),
            prompt_tokens,
            completion_tokens,
        });
    }
    let chunk = |i: u32, text: &str, fr: Option<&str>, sr: Option<&str>| {
        sse(
            &json!({"id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": i, "text": text, "logprobs": null, "finish_reason": fr, "stop_reason": sr,
                         "prompt_token_ids": null, "token_ids": null}]}),
        )
    };
    let mut evs = Vec::new();
    let last = gen.pieces.len();
    let finish_in_last = gen.finish_reason == "length" && last > 0;
    for (t, piece) in gen.pieces.iter().enumerate() {
        for i in 0..n_choices {
            let fr = (finish_in_last && t + 1 == last).then_some(gen.finish_reason);
            evs.push(Ev {
                kind: EvKind::Token,
                data: chunk(i, piece, fr, None),
            });
        }
    }
    if !finish_in_last {
        for i in 0..n_choices {
            evs.push(Ev {
                kind: EvKind::Tail,
                data: chunk(i, "", Some(gen.finish_reason), gen.stop_reason.as_deref()),
            });
        }
    }
    if s.include_usage {
        evs.push(Ev {
            kind: EvKind::Tail,
            data: sse(
                &json!({"id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [], "usage": usage_chunk_usage(prompt_tokens, completion_tokens),
                "system_fingerprint": SYSTEM_FINGERPRINT}),
            ),
        });
    }
    evs.push(Ev {
        kind: EvKind::Tail,
        data: sse_done(),
    });
    Ok(Produced {
        output: Output::Sse(evs),
        prompt_tokens,
        completion_tokens,
    })
}

/// Deterministic unit vector for a text.
pub(crate) fn embed(text: &str, dim: usize) -> Vec<f64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut v: Vec<f64> = (0..dim)
        .map(|i| {
            let mut x = h ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            x ^= x >> 33;
            x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
            x ^= x >> 33;
            (x % 2_000_001) as f64 / 1_000_000.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    for x in &mut v {
        *x = (*x / norm * 1e6).round() / 1e6;
    }
    v
}

fn inputs(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_number) && !a.is_empty() => {
            vec![Value::Array(a.clone()).to_string()]
        }
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect(),
        Some(other) if !other.is_null() => vec![other.to_string()],
        _ => Vec::new(),
    }
}

fn simple(obj: Value, prompt_tokens: u64) -> Produced {
    Produced {
        output: Output::Json(obj),
        prompt_tokens,
        completion_tokens: 0,
    }
}

fn pool_usage(p: u64) -> Value {
    json!({"prompt_tokens": p, "total_tokens": p, "completion_tokens": 0, "prompt_tokens_details": null})
}

/// `POST /v1/embeddings`.
pub(crate) fn embeddings(body: &[u8], ctx: &Ctx) -> Result<Produced, ApiError> {
    let obj = parse_object(body)?;
    if !obj.contains_key("input") {
        return Err(missing("input", &obj));
    }
    check_model(&obj, ctx)?;
    let dim = opt_i64(&obj, "dimensions")?.unwrap_or(32).clamp(1, 4096) as usize;
    let ins = inputs(obj.get("input"));
    let pt: u64 = ins.iter().map(|s| count_tokens(s)).sum();
    let data: Vec<Value> = ins
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"index": i, "object": "embedding", "embedding": embed(s, dim)}))
        .collect();
    Ok(simple(
        json!({"id": format!("embd-{}", hex_id(128)), "object": "list", "created": now(), "model": ctx.primary(),
               "data": data, "usage": pool_usage(pt)}),
        pt,
    ))
}

/// `/pooling`.
pub(crate) fn pooling(body: &[u8], ctx: &Ctx) -> Result<Produced, ApiError> {
    let obj = parse_object(body)?;
    check_model(&obj, ctx)?;
    let ins = inputs(obj.get("input").or_else(|| obj.get("messages")));
    let pt: u64 = ins.iter().map(|s| count_tokens(s)).sum();
    let data: Vec<Value> = ins
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"index": i, "object": "pooling", "data": embed(s, 8)}))
        .collect();
    Ok(simple(
        json!({"id": format!("pool-{}", hex_id(128)), "object": "list", "created": now(), "model": ctx.primary(),
               "data": data, "usage": pool_usage(pt)}),
        pt,
    ))
}

/// `/classify`.
pub(crate) fn classify(body: &[u8], ctx: &Ctx) -> Result<Produced, ApiError> {
    let obj = parse_object(body)?;
    check_model(&obj, ctx)?;
    let ins = inputs(obj.get("input"));
    let pt: u64 = ins.iter().map(|s| count_tokens(s)).sum();
    let data: Vec<Value> = ins
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let p = (embed(s, 1).first().copied().unwrap_or(0.0).abs() * 1e6).round() / 1e6;
            let label = if p >= 0.5 { "LABEL_1" } else { "LABEL_0" };
            json!({"index": i, "label": label, "probs": [1.0 - p, p], "num_classes": 2})
        })
        .collect();
    Ok(simple(
        json!({"id": format!("classify-{}", hex_id(128)), "object": "list", "created": now(), "model": ctx.primary(),
               "data": data, "usage": pool_usage(pt)}),
        pt,
    ))
}

fn relevance(a: &str, b: &str) -> f64 {
    let x = embed(&format!("{a}\u{0}{b}"), 1)
        .first()
        .copied()
        .unwrap_or(0.0);
    ((x.abs()) * 1e6).round() / 1e6
}

/// `/v1/score`, `/score`.
pub(crate) fn score(body: &[u8], ctx: &Ctx) -> Result<Produced, ApiError> {
    let obj = parse_object(body)?;
    check_model(&obj, ctx)?;
    let q = inputs(obj.get("text_1").or_else(|| obj.get("queries")));
    let d = inputs(obj.get("text_2").or_else(|| obj.get("documents")));
    let q0 = q.first().cloned().unwrap_or_default();
    let pt: u64 = q.iter().chain(d.iter()).map(|s| count_tokens(s)).sum();
    let data: Vec<Value> = d
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"index": i, "object": "score", "score": relevance(&q0, s)}))
        .collect();
    Ok(simple(
        json!({"id": format!("score-{}", hex_id(128)), "object": "list", "created": now(), "model": ctx.primary(),
               "data": data, "usage": pool_usage(pt)}),
        pt,
    ))
}

/// `/v1/rerank`, `/rerank`, `/v2/rerank`.
pub(crate) fn rerank(body: &[u8], ctx: &Ctx) -> Result<Produced, ApiError> {
    let obj = parse_object(body)?;
    if !obj.contains_key("query") {
        return Err(missing("query", &obj));
    }
    if !obj.contains_key("documents") {
        return Err(missing("documents", &obj));
    }
    check_model(&obj, ctx)?;
    let q = obj
        .get("query")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let docs = inputs(obj.get("documents"));
    let pt: u64 = docs
        .iter()
        .map(|s| count_tokens(s) + count_tokens(&q))
        .sum();
    let mut results: Vec<(usize, f64, &String)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (i, relevance(&q, d), d))
        .collect();
    results.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let Some(top) = opt_i64(&obj, "top_n")? {
        results.truncate(top.max(0) as usize);
    }
    let results: Vec<Value> = results
        .into_iter()
        .map(|(i, s, d)| json!({"index": i, "document": {"text": d}, "relevance_score": s}))
        .collect();
    Ok(simple(
        json!({"id": format!("rerank-{}", hex_id(128)), "model": ctx.primary(), "usage": {"total_tokens": pt},
               "results": results}),
        pt,
    ))
}

/// `/tokenize`.
pub(crate) fn tokenize(body: &[u8], ctx: &Ctx) -> Result<Produced, ApiError> {
    let obj = parse_object(body)?;
    check_model(&obj, ctx)?;
    let n = if obj.contains_key("messages") {
        chat_prompt_tokens(&obj)
    } else {
        match obj.get("prompt") {
            Some(p) => value_tokens(p),
            None => return Err(missing("prompt", &obj)),
        }
    };
    let tokens: Vec<u64> = (0..n).map(|i| 1000 + (i * 7919) % 50000).collect();
    Ok(simple(
        json!({"count": n, "max_model_len": ctx.max_model_len, "tokens": tokens, "token_strs": null}),
        n,
    ))
}

/// `/detokenize`.
pub(crate) fn detokenize(body: &[u8], ctx: &Ctx) -> Result<Produced, ApiError> {
    let obj = parse_object(body)?;
    let Some(tokens) = obj.get("tokens").and_then(Value::as_array) else {
        return Err(missing("tokens", &obj));
    };
    check_model(&obj, ctx)?;
    let text = text_pieces(tokens.len() as u32).concat();
    Ok(simple(json!({"prompt": text}), 0))
}

/// `/v1/responses` (non-streaming shape only; `stream: true` gets the same JSON).
pub(crate) fn responses(body: &[u8], ctx: &Ctx) -> Result<Produced, ApiError> {
    let obj = parse_object(body)?;
    if !obj.contains_key("input") {
        return Err(missing("input", &obj));
    }
    check_model(&obj, ctx)?;
    let pt = obj.get("input").map(value_tokens).unwrap_or(0) + 3;
    let limit = opt_i64(&obj, "max_output_tokens")?
        .map(|m| m.max(1) as u64)
        .unwrap_or(u64::MAX);
    let gen = generate(text_pieces(ctx.completion_tokens), limit, &[]);
    let status = if gen.finish_reason == "length" {
        "incomplete"
    } else {
        "completed"
    };
    let ct = gen.tokens;
    let v = json!({"id": format!("resp_{}", hex_id(128)), "created_at": now(), "incomplete_details": null,
        "instructions": null, "metadata": null, "model": ctx.primary(), "object": "response",
        "output": [{"id": format!("msg_{}", hex_id(64)), "content": [{"annotations": [], "text": gen.pieces.concat(),
            "type": "output_text", "logprobs": null}], "role": "assistant", "status": "completed", "type": "message"}],
        "parallel_tool_calls": true, "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_p": 1.0,
        "background": false, "max_output_tokens": null, "previous_response_id": null, "reasoning": null,
        "service_tier": "auto", "status": status, "text": null, "top_logprobs": null, "truncation": "disabled",
        "usage": {"input_tokens": pt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": ct,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": pt + ct},
        "user": null});
    Ok(Produced {
        output: Output::Json(v),
        prompt_tokens: pt,
        completion_tokens: ct,
    })
}

/// `/v1/models` listing.
pub(crate) fn models(served: &[String], max_model_len: u32) -> Value {
    let created = now();
    let root = format!("/models/{}", served.first().cloned().unwrap_or_default());
    let data: Vec<Value> = served
        .iter()
        .map(|m| {
            json!({"id": m, "object": "model", "created": created, "owned_by": "vllm", "root": root,
                "parent": null, "max_model_len": max_model_len,
                "permission": [{"id": format!("modelperm-{}", hex_id(64)), "object": "model_permission",
                    "created": created, "allow_create_engine": false, "allow_sampling": true,
                    "allow_logprobs": true, "allow_search_indices": false, "allow_view": true,
                    "allow_fine_tuning": false, "organization": "*", "group": null, "is_blocking": false}]})
        })
        .collect();
    json!({"object": "list", "data": data})
}

/// Model name in a request body, for `model_not_found` faults.
pub(crate) fn requested_model(body: &[u8], served: &[String]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| served.first().cloned().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_json_offset_matches_python() {
        let e = parse_object(b"{\"model\": \"tiny-qwen\", \"messages\": [\n").err();
        let msg = e.map(|e| {
            e.body["error"]["param"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
        assert_eq!(msg.as_deref(), Some("body.37"));
    }

    #[test]
    fn stop_string_cuts() {
        let g = generate(text_pieces(8), 100, &["tok3".to_string()]);
        assert_eq!(g.pieces.concat(), "tok0 tok1 tok2 ");
        assert_eq!(g.finish_reason, "stop");
        assert_eq!(g.stop_reason.as_deref(), Some("tok3"));
    }

    #[test]
    fn length_cap() {
        let g = generate(text_pieces(8), 3, &[]);
        assert_eq!(g.pieces.len(), 3);
        assert_eq!(g.finish_reason, "length");
    }
}
