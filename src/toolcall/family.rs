//! Tool-call families and the `TOOL_CALL_FORMATS` model-id → family rules.

use std::fmt;
use std::str::FromStr;

/// The text format a model uses when it writes tool calls into `content`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// gpt-oss: harmony markup and bare JSON (protocol.md 3.1).
    GptOss,
    /// Hermes / Qwen: `<tool_call>{json}</tool_call>` (3.2).
    Hermes,
    /// Llama 3.x: bare JSON object(s) at content start, optional `<|python_tag|>` (3.3).
    Llama3Json,
    /// Mistral: `[TOOL_CALLS]` marker formats, bare JSON array at start (3.4).
    Mistral,
    /// Pythonic call list `[f(a=1), g()]` (3.5).
    Pythonic,
    /// No transform.
    None,
}

impl Family {
    /// Every family that transforms (everything but `None`), in display order.
    pub const TRANSFORMING: [Family; 5] = [
        Family::GptOss,
        Family::Hermes,
        Family::Llama3Json,
        Family::Mistral,
        Family::Pythonic,
    ];

    /// The configuration name (`gptoss`, `hermes`, `llama3_json`, `mistral`, `pythonic`, `none`).
    pub fn as_str(self) -> &'static str {
        match self {
            Family::GptOss => "gptoss",
            Family::Hermes => "hermes",
            Family::Llama3Json => "llama3_json",
            Family::Mistral => "mistral",
            Family::Pythonic => "pythonic",
            Family::None => "none",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for an unknown family name or a malformed `TOOL_CALL_FORMATS` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatRulesError {
    /// The family name is not one of the known names.
    #[error("unknown tool-call family {0:?} (expected gptoss, hermes, llama3_json, mistral, pythonic or none)")]
    UnknownFamily(String),
    /// An entry is not of the form `GLOB=FAMILY` with a non-empty glob.
    #[error("malformed TOOL_CALL_FORMATS entry {0:?} (expected GLOB=FAMILY)")]
    MalformedEntry(String),
}

impl FromStr for Family {
    type Err = FormatRulesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        [
            Family::GptOss,
            Family::Hermes,
            Family::Llama3Json,
            Family::Mistral,
            Family::Pythonic,
            Family::None,
        ]
        .into_iter()
        .find(|f| f.as_str().eq_ignore_ascii_case(t))
        .ok_or_else(|| FormatRulesError::UnknownFamily(t.to_owned()))
    }
}

/// Built-in defaults, consulted after the configured rules (first match wins).
/// Globs are matched case-insensitively against the whole model id, so they are
/// written to also match HF-style ids with an organisation prefix.
const DEFAULT_RULES: &[(&str, Family)] = &[
    ("*gpt-oss*", Family::GptOss),
    ("*qwen*", Family::Hermes),
    ("*hermes*", Family::Hermes),
    // Llama 4 before the generic Llama/meta-llama rules: pythonic with
    // <|python_start|> wrapper (protocol.md 3.5, vLLM `llama4_pythonic`).
    ("*llama-4*", Family::Pythonic),
    ("*llama4*", Family::Pythonic),
    ("*llama-3*", Family::Llama3Json),
    ("*llama3*", Family::Llama3Json),
    ("meta-llama/*", Family::Llama3Json),
    ("*mistral*", Family::Mistral),
    ("*mixtral*", Family::Mistral),
    ("*ministral*", Family::Mistral),
    ("*magistral*", Family::Mistral),
    ("*devstral*", Family::Mistral),
];

/// Model id → family rules: configured globs first (first match wins), then
/// built-in defaults, `none` for everything else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormatRules {
    rules: Vec<(String, Family)>,
}

impl FormatRules {
    /// Parses `TOOL_CALL_FORMATS`, e.g. `"gpt-oss-*=gptoss,qwen*=hermes"`.
    /// Empty entries are ignored; an empty spec means "defaults only".
    pub fn parse(spec: &str) -> Result<Self, FormatRulesError> {
        let mut rules = Vec::new();
        for entry in spec.split(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let (glob, fam) = entry
                .split_once('=')
                .ok_or_else(|| FormatRulesError::MalformedEntry(entry.to_owned()))?;
            let glob = glob.trim();
            if glob.is_empty() {
                return Err(FormatRulesError::MalformedEntry(entry.to_owned()));
            }
            rules.push((glob.to_owned(), fam.parse()?));
        }
        Ok(FormatRules { rules })
    }

    /// The family for a model id: the served name (after `MODEL_ALIASES`), not
    /// necessarily the id the client sent.
    pub fn family_for(&self, model: &str) -> Family {
        self.rules()
            .find(|(g, _)| crate::glob::matches(g, model, true))
            .map_or(Family::None, |(_, f)| f)
    }

    /// Effective rules in evaluation order: configured, then built-in defaults.
    pub fn rules(&self) -> impl Iterator<Item = (&str, Family)> {
        self.rules
            .iter()
            .map(|(g, f)| (g.as_str(), *f))
            .chain(DEFAULT_RULES.iter().map(|(g, f)| (*g, *f)))
    }
}
